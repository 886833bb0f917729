"""ProgressBar in a real Jupyter kernel: live widget bars (one per pass), or text redrawn in place
without ipywidgets; the messages a fit sends are bounded by time, never one per batch."""

from __future__ import annotations

import re

import pytest

from tests.support.notebook_kernel import KernelRun, run_cells

# a kernel starts and imports torch: several seconds; the tests share the module's kernels,
# started once per xdist worker, so they all run on one
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("progress_kernels")]

N_TRAIN, N_VALID, EPOCHS = 500, 50, 3
N_BATCHES = EPOCHS * (N_TRAIN + N_VALID)
# the shortest time between two redraws of a bar (the default is 0.1 s): long enough that a
# machine slowed to 100 batches a second still redraws far less than once per batch
MININTERVAL = 0.5

SETUP = f"""
import time
import torch
from torch import nn
from pluglearn import CancelFitException, DataLoaders, Learner, ProgressBar, hookimpl

g, n = torch.Generator().manual_seed(0), {2 * N_TRAIN}
x, y = torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g)
train = [(x[i : i + 2], y[i : i + 2]) for i in range(0, n, 2)]  # {N_TRAIN} batches
bar = ProgressBar(mininterval={MININTERVAL})  # replaces the default one
learn = Learner(nn.Linear(3, 2), DataLoaders(train, train[:{N_VALID}]), plugins=[bar])
"""
FIT = f"start = time.monotonic()\nlearn.fit({EPOCHS})\nelapsed = time.monotonic() - start"
ELAPSED = "print(elapsed)"
CANCEL = """
class StopEarly:
    @hookimpl
    def after_batch(self, learn):
        if learn.iter == 10:
            raise CancelFitException()

learn.fit(3, plugins=[StopEarly()])
"""
ERROR = """
class Boom:
    @hookimpl
    def after_batch(self, learn):
        if learn.iter == 10:
            raise RuntimeError("boom")

try:
    learn.fit(3, plugins=[Boom()])
except RuntimeError as error:
    print("caught", error)
"""
EPOCH_LINE = re.compile(r"epoch (\d)/3  train_loss \d\.\d{4}  valid_loss \d\.\d{4}  time \S+s")


def shown(text: str) -> list[str]:
    """The lines a notebook shows for stream text: a ``\\r`` starts the line over, a later
    write overwrites it from its start (as Jupyter's output area renders it)."""
    lines, line, column = [], [], 0
    for char in text:
        if char == "\n":
            lines.append("".join(line).rstrip())
            line, column = [], 0
        elif char == "\r":
            column = 0
        else:
            if column < len(line):
                line[column] = char
            else:
                line.append(char)
            column += 1
    if "".join(line).strip():
        lines.append("".join(line).rstrip())
    return lines


def assert_epoch_lines(lines: list[str]) -> None:
    assert len(lines) == EPOCHS
    for number, line in enumerate(lines, start=1):
        match = EPOCH_LINE.fullmatch(line.strip())
        assert match and int(match.group(1)) == number, line


def allowed(run: KernelRun, n_bars: int, per_redraw: int) -> float:
    """The most messages a fit may send: a few when each bar opens, on its first update (tqdm
    redraws a bar at once the first time it moves) and when it closes, and a few per redraw,
    which comes at most once per ``MININTERVAL`` per bar (one bar redraws at a time)."""
    elapsed = float(run.stream_text(2))
    return per_redraw * (3 * n_bars + elapsed / MININTERVAL)


@pytest.fixture(scope="module")
def widgets(tmp_path_factory) -> KernelRun:
    return run_cells([SETUP, FIT, ELAPSED, CANCEL, ERROR], tmp_path_factory.mktemp("widgets"))


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> KernelRun:
    no_widgets = 'import sys\nsys.modules["ipywidgets"] = None  # import ipywidgets fails\n'
    return run_cells([no_widgets + SETUP, FIT, ELAPSED], tmp_path_factory.mktemp("text"))


def test_in_a_notebook_each_pass_draws_one_widget_bar_and_the_epochs_print_one_line_each(widgets):
    bars = widgets.widget_bars(1)
    assert len(bars) == 1 + 2 * EPOCHS  # the epoch bar, then a train and a valid bar per epoch
    epoch_bar, passes = bars[0], bars[1:]
    assert (epoch_bar["value"], epoch_bar["max"], epoch_bar["bar_style"]) == (3, 3, "success")
    assert not epoch_bar["hidden"]
    assert [b["max"] for b in passes] == [N_TRAIN, N_VALID] * EPOCHS
    assert all(b["value"] == b["max"] and b["hidden"] for b in passes)  # done, then hidden
    assert_epoch_lines(widgets.stream_text(1).splitlines())
    assert "\r" not in widgets.stream_text(1) and not widgets.stream_text(1, "stderr")


def test_a_fit_in_a_notebook_sends_messages_bounded_by_time_not_one_per_batch(widgets):
    counts = widgets.counts[1]
    updates = counts["comm_msg"]  # a widget's new value, text or style
    sent = updates + counts["comm_open"] + counts["display_data"] + counts["stream"]
    assert updates <= allowed(widgets, n_bars=1 + 2 * EPOCHS, per_redraw=4)
    assert sent < N_BATCHES / 4


def test_a_pass_cancelled_in_a_notebook_hides_its_bar_and_nothing_turns_red(widgets):
    epoch_bar, train_bar = widgets.widget_bars(3)
    assert train_bar["value"] == 11 and train_bar["hidden"]  # the bar counted batch 10 first
    assert epoch_bar["value"] == 0 and not epoch_bar["hidden"]
    assert "danger" not in (epoch_bar["bar_style"], train_bar["bar_style"])


def test_an_error_in_a_notebook_leaves_the_bars_red_where_they_stopped(widgets):
    epoch_bar, train_bar = widgets.widget_bars(4)
    assert train_bar["value"] == 11 and not train_bar["hidden"]
    assert epoch_bar["bar_style"] == train_bar["bar_style"] == "danger"
    assert widgets.stream_text(4) == "caught boom\n"


def test_without_ipywidgets_each_pass_redraws_one_text_line_in_place(text):
    written = text.stream_text(1)
    assert not text.widget_bars(1) and not text.stream_text(1, "stderr")
    assert written.count("train:") >= EPOCHS and "\x1b[" not in written  # no cursor moves
    assert written.count("\n") == EPOCHS  # the epoch lines: a redraw never adds a line
    assert_epoch_lines(shown(written))  # the bars were wiped when their passes ended


def test_without_ipywidgets_a_fit_writes_bounded_by_time_not_once_per_batch(text):
    streams = text.counts[1]["stream"]
    assert streams <= allowed(text, n_bars=2 * EPOCHS, per_redraw=2)
    assert streams < N_BATCHES / 4
