"""ConsoleReport: a header, then one table row per epoch whose cells are the reported metrics."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import Accuracy, AvgLoss, ConsoleReport, DataLoaders, Learner, ProgressBar, hookimpl


class Keep:
    """Keeps every epoch's reported metrics (the oracle of what the table must show)."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    @hookimpl
    def report(self, metrics):
        self.epochs.append(dict(metrics))


# Not the shared make_learner: 3-feature data in ragged batches of 5.
def make_learner(plugins, lr: float = 0.3) -> tuple[Learner, list]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 3, generator=g), torch.randint(0, 3, (12,), generator=g)
    train = [(x[i : i + 5], y[i : i + 5]) for i in range(0, 12, 5)]
    valid = [(x[:7], y[:7])]
    torch.manual_seed(0)
    learn = Learner(
        nn.Linear(3, 3), DataLoaders(train, valid), lr=lr, plugins=plugins, defaults=False
    )
    return learn, valid


def parse(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def test_header_then_one_row_per_epoch_with_the_reported_values():
    out, keep = io.StringIO(), Keep()
    learn, _ = make_learner([AvgLoss(), Accuracy(), ConsoleReport(file=out), keep])
    learn.fit(3)
    header, *rows = parse(out.getvalue())
    assert header == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    assert len(rows) == 3
    for i, (row, metrics) in enumerate(zip(rows, keep.epochs, strict=True)):
        cells = dict(zip(header, row, strict=True))
        assert cells["epoch"] == f"{i + 1}/3"  # for people, from 1
        assert metrics["epoch"] == i  # for data, from 0
        for key in ("train_loss", "valid_loss", "accuracy"):
            assert len(cells[key].split(".")[1]) == 4  # four decimals
            assert float(cells[key]) == pytest.approx(metrics[key], abs=5e-5)
        assert cells["time"].endswith("s")
        assert float(cells["time"][:-1]) == pytest.approx(metrics["time"], abs=0.05)


def test_the_row_values_are_the_hand_computed_losses():
    out = io.StringIO()
    learn, valid = make_learner([AvgLoss(), ConsoleReport(file=out)], lr=0.0)
    learn.fit(1)
    ((xv, yv),) = valid
    with torch.no_grad():
        valid_loss = F.cross_entropy(learn.model(xv), yv).item()
    header, row = parse(out.getvalue())
    assert float(row[header.index("valid_loss")]) == pytest.approx(valid_loss, abs=5e-5)


def test_columns_are_right_aligned_in_ten_characters():
    out = io.StringIO()
    learn, _ = make_learner([AvgLoss(), ConsoleReport(file=out)])
    learn.fit(2)
    lines = out.getvalue().splitlines()
    assert lines[0] == "  ".join(f"{c:>10}" for c in ["epoch", "train_loss", "valid_loss", "time"])
    assert all(len(line) == len(lines[0]) for line in lines)


class LateMetric:
    """Reports ``extra`` at epoch 1 only: the table gains a column, then misses a value."""

    @hookimpl
    def collect_metrics(self, learn, phase):
        if phase == "valid" and learn.epoch == 1:
            return {"extra": 1.5}
        return None


def test_a_new_metric_reprints_the_header_and_a_missing_one_shows_a_dash():
    out = io.StringIO()
    learn, _ = make_learner([AvgLoss(), LateMetric(), ConsoleReport(file=out)])
    learn.fit(3)
    lines = parse(out.getvalue())
    assert lines[0] == ["epoch", "train_loss", "valid_loss", "time"]
    assert lines[1][0] == "1/3"
    assert lines[2] == ["epoch", "train_loss", "valid_loss", "time", "extra"]
    assert lines[3][0] == "2/3" and lines[3][-1] == "1.5000"
    assert lines[4][0] == "3/3" and lines[4][-1] == "-"
    assert len(lines) == 5

    out2 = io.StringIO()
    report = ConsoleReport(file=out2)
    learn.fit(1, plugins=[report])  # epoch 0 of this fit has no 'extra' yet: a fresh header
    assert parse(out2.getvalue())[0] == ["epoch", "train_loss", "valid_loss", "time"]


def test_each_fit_prints_its_own_header_and_default_output_is_stdout(capsys):
    learn, _ = make_learner([AvgLoss(), ConsoleReport()])
    learn.fit(1)
    learn.fit(1)
    lines = parse(capsys.readouterr().out)
    assert [line[0] for line in lines] == ["epoch", "1/1", "epoch", "1/1"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("out", [io.StringIO, Terminal], ids=["log file", "terminal"])
def test_next_to_the_default_progress_bar_each_epoch_is_printed_once(out):
    out = out()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 3, generator=g), torch.randint(0, 3, (12,), generator=g)
    data = DataLoaders([(x[:6], y[:6]), (x[6:], y[6:])], [(x, y)])
    learn = Learner(nn.Linear(3, 3), data, plugins=[ConsoleReport(file=out), ProgressBar(file=out)])
    learn.fit(2)
    text = out.getvalue()
    assert "epoch 1/2" not in text and "epoch 2/2" not in text  # the bar yielded its lines
    rows = [line.split() for line in text.replace("\r", "\n").splitlines()]
    assert [r[0] for r in rows if r and r[0] in ("1/2", "2/2")] == ["1/2", "2/2"]
    if isinstance(out, Terminal):
        assert "train:" in text  # the bars still move on a terminal
