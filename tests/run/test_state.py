"""The run state has one owner: plugins read it and change it through named transitions only,
and what a hook assigns to the run is honoured or refused, never ignored."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from pluglearn import CancelFitException, Recorder, Scheduler, hookimpl
from pluglearn.hooks.specs import HOOKS
from pluglearn.run.state import Position
from tests.helpers import tiny_learner

SRC = Path(__file__).parents[2] / "src" / "pluglearn"
#: the modules that own the run state: the Learner, its loop and the run package
OWNERS = {"learner.py", "loop.py"}
POSITION = "|".join(f.name for f in Position.__dataclass_fields__.values())
WRITES = [
    (r"\blearn\._\w+\s*=[^=]", "a private attribute of the Learner"),
    (r"\blearn\.run\.(?!(?:stop|extend)\()\w+\s*=[^=]", "a field of learn.run"),
    (rf"\.pos\.(?:{POSITION})\s*=[^=]", "the position"),
    (rf"\blearn\.(?:{POSITION}|stop_reason)\s*=[^=]", "a read-only run attribute"),
]


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """Source lines without comments (docstrings may show assignments as examples: the
    patterns need ``learn.`` at the start of an expression, which prose rarely has)."""
    return [(n, line.split("#")[0]) for n, line in enumerate(path.read_text().splitlines(), 1)]


def test_no_module_but_the_learner_loop_and_run_package_assigns_the_run_state():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "run" or str(rel) in OWNERS:
            continue
        for n, line in _code_lines(path):
            for pattern, what in WRITES:
                if re.search(pattern, line):
                    offenders.append(f"{rel}:{n} assigns {what}: {line.strip()}")
    assert offenders == []


def test_the_grep_finds_an_assignment_it_should_refuse():
    line = "        learn.run.stop_reason = 'x'"
    assert re.search(WRITES[1][0], line)
    assert not re.search(WRITES[1][0], "learn.run.stop('x')")
    assert re.search(WRITES[0][0], "learn._opt = None")
    assert re.search(WRITES[3][0], "learn.n_epochs = 3")


def test_one_capture_and_restore_routine_takes_every_random_state():
    """rng_state / set_rng_state are called only by the run package (capture, restore,
    replay), so there is one routine that snapshots a run."""
    callers = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "run":
            continue
        for n, line in _code_lines(path):
            if re.search(r"\b(?:set_)?rng_state\(", line):
                callers.append(f"{rel}:{n}")
    assert callers == []


@pytest.mark.parametrize("name", ["epoch", "iter", "n_epochs", "train_iter", "stop_reason"])
def test_the_run_attributes_are_read_only_naming_what_changes_them(name):
    learn = tiny_learner()
    with pytest.raises(AttributeError, match="read-only") as error:
        setattr(learn, name, 3)
    assert "learn.run.stop(" in str(error.value) or "CancelFitException" in str(error.value)


def test_a_cancel_records_the_plugin_and_its_message_as_the_stop_reason():
    class Enough:
        @hookimpl
        def after_epoch(self, learn):
            raise CancelFitException("loss is low enough")

    learn = tiny_learner([Enough()])
    learn.fit(3)
    assert (learn.epoch, learn.stop_reason) == (0, "Enough: loss is low enough")


def test_extending_the_run_from_a_hook_is_honoured():
    class OneMore:
        def __init__(self):
            self.epochs = []

        @hookimpl
        def after_epoch(self, learn):
            self.epochs.append(learn.epoch)
            if learn.epoch == 0:
                learn.run.extend(3)

    more = OneMore()
    learn = tiny_learner([more])
    learn.fit(2)
    assert more.epochs == [0, 1, 2]
    assert learn.n_epochs == 3


def test_learn_lr_assigned_in_a_hook_is_refused():
    class SetsLr:
        @hookimpl
        def before_batch(self, learn):
            learn.lr = 0.5

    learn = tiny_learner([setter := SetsLr()])
    with pytest.raises(RuntimeError, match=r"learn.lr = 0.5 during fit\(\): the base lr is fixed"):
        learn.fit(1)
    learn.remove_plugin(setter)
    learn.lr = 0.5  # between fits it sets the next fit's lr
    learn.fit(1)
    assert learn.opt.param_groups[0]["lr"] == 0.5


def test_replacing_the_optimizer_after_the_run_is_set_up_is_refused():
    class Swaps:
        @hookimpl
        def before_fit(self, learn):
            learn.opt = torch.optim.SGD(learn.model.parameters(), lr=1.0)

    with pytest.raises(RuntimeError, match=r"learn\.opt was replaced during fit"):
        tiny_learner([Swaps()]).fit(1)


def test_an_optimizer_replaced_in_after_create_opt_is_the_one_the_scheduler_steps():
    class Swaps:
        @hookimpl(tryfirst=True)
        def after_create_opt(self, learn):
            learn.opt = torch.optim.SGD(learn.model.parameters(), lr=learn.lr, momentum=0.5)

    def halve(opt):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    learn = tiny_learner([Swaps(), Scheduler(halve)])
    learn.fit(1)
    assert learn.opt.param_groups[0]["momentum"] == 0.5
    assert learn.opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)  # 2 steps


def test_every_hook_a_plugin_can_write_through_is_declared():
    """The transitions a plugin may call are methods of RunState, and no hook is named like one
    (a plugin could not tell the two apart)."""
    from pluglearn.run.state import RunState

    assert callable(RunState.stop) and callable(RunState.extend)
    assert not {"stop", "extend"} & set(HOOKS)


class ValidateEvery:
    """The README's "validate every n batches", from a training hook."""

    def __init__(self, n):
        self.n, self.results = n, []

    @hookimpl
    def after_batch(self, learn):
        if learn.training and learn.train_iter % self.n == 0:
            self.results.append(learn.validate())


def test_a_nested_validate_leaves_every_recorded_batch_of_the_plugins_after_it(tmp_path):
    tb = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from pluglearn import TensorBoardLogger

    def run(nested: bool):
        recorder, logger = Recorder(), TensorBoardLogger(tmp_path / ("n" if nested else "p"))
        plugins = [ValidateEvery(5)] if nested else []
        learn = tiny_learner([*plugins, recorder, logger], n_train=46, bs=1)
        learn.fit(1)
        events = tb.EventAccumulator(str(tmp_path / ("n" if nested else "p")))
        events.Reload()
        return recorder, [e.step for e in events.Scalars("train/loss")], learn

    recorder, steps, learn = run(nested=True)
    plain, plain_steps, plain_learn = run(nested=False)
    assert len(recorder.losses) == len(steps) == 46
    assert recorder.losses == plain.losses and recorder.lrs == plain.lrs
    assert steps == plain_steps == list(range(46))
    assert all(torch.equal(a, b) for a, b in zip(
        learn.model.parameters(), plain_learn.model.parameters(), strict=True))  # fmt: skip
