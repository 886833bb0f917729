"""fit(max_steps=...): an optimizer-step budget, a partial last epoch, exact across a resume."""

from __future__ import annotations

import pytest
import torch

from pluglearn import Checkpoint, GradientAccumulation, hookimpl
from tests.helpers import CrashAt


def test_max_steps_alone_runs_the_epochs_it_needs_the_last_one_partial(budget_learner):
    learn = budget_learner()
    learn.fit(max_steps=7)
    rec = learn.plugin("Recorder")
    assert (learn.n_epochs, learn.opt_steps, len(rec.losses)) == (2, 7, 7)
    assert [e["epoch"] for e in rec.epochs] == [0, 1]  # the partial epoch is validated, reported
    assert learn.stop_reason is None
    # the same 7 steps by hand, over the loader's own batches
    ref = budget_learner()
    ref.fit(2, plugins=[Stop(7)])
    for p, q in zip(learn.model.parameters(), ref.model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "max_steps, accumulate, epochs",
    [(10, 1, 2), (5, 1, 1), (15, 1, 3), (11, 1, 3), (6, 2, 2), (3, 2, 1)],
)  # 5 batches an epoch; with accumulation of 2, 3 steps an epoch
def test_a_budget_plans_exactly_the_epochs_it_needs(max_steps, accumulate, epochs, budget_learner):
    plugins = [GradientAccumulation(accumulate)] if accumulate > 1 else []
    learn = budget_learner(plugins)
    learn.fit(max_steps=max_steps)
    rec = learn.plugin("Recorder")
    assert (learn.n_epochs, len(rec.epochs), learn.opt_steps) == (epochs, epochs, max_steps)
    assert learn.stop_reason is None  # it ended with its last planned epoch, not cut short


class Stop:
    """A hand-made budget: skip the training batches after the n-th."""

    def __init__(self, n: int) -> None:
        self.n = n

    @hookimpl(tryfirst=True)
    def before_batch(self, learn):
        from pluglearn import CancelTrainException

        if learn.training and learn.train_iter >= self.n:
            raise CancelTrainException


def test_the_budget_counts_optimizer_steps_not_batches(budget_learner):
    learn = budget_learner([GradientAccumulation(2)])  # 3 steps an epoch (2 + 2 + 1 batches)
    learn.fit(max_steps=4)
    assert (learn.n_epochs, learn.opt_steps, learn.train_iter) == (2, 4, 7)


def test_with_more_epochs_than_the_budget_the_fit_stops_saying_why(budget_learner):
    learn = budget_learner()
    learn.fit(5, max_steps=7)
    assert (learn.epoch, learn.opt_steps) == (1, 7)
    assert "max_steps=7" in learn.stop_reason
    learn = budget_learner()
    learn.fit(1, max_steps=100)  # the epochs end first
    assert (learn.opt_steps, learn.stop_reason) == (5, None)


class CrashInValidation:
    @hookimpl
    def before_validate(self, learn):
        if learn.epoch == 1:
            raise RuntimeError("killed")


# inside the partial epoch (its 3 batches: 0, 1, 2), and in its validation: the newest
# checkpoint is then the one after the last step, and the resume starts at the budget's end
@pytest.mark.parametrize("batch", [0, 2, "validation"])
def test_a_resume_across_the_partial_epoch_is_exact(tmp_path, batch, budget_learner):
    done = budget_learner()
    done.fit_one_cycle(None, 0.5, max_steps=8)
    with pytest.raises(RuntimeError, match="killed"):
        crash = CrashInValidation() if batch == "validation" else CrashAt(1, batch)
        budget_learner([Checkpoint(tmp_path, every_n_batches=1), crash]).fit_one_cycle(
            None, 0.5, max_steps=8
        )
    resumed = budget_learner([Checkpoint(tmp_path, every_n_batches=1)])
    resumed.fit_one_cycle(None, 0.5, max_steps=8, resume_from=tmp_path)
    assert resumed.opt_steps == done.opt_steps == 8
    a, b = done.plugin("Recorder"), resumed.plugin("Recorder")
    assert (a.lrs, a.moms, a.losses) == (b.lrs, b.moms, b.losses)
    assert [e["valid_loss"] for e in a.epochs] == [e["valid_loss"] for e in b.epochs]
    for p, q in zip(done.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_resume_with_another_budget_is_refused(tmp_path, budget_learner):
    with pytest.raises(RuntimeError, match="killed"):
        budget_learner([Checkpoint(tmp_path, every_n_batches=1), CrashAt(1, 1)]).fit(max_steps=8)
    with pytest.raises(ValueError, match="pass the run's own max_steps"):
        budget_learner([Checkpoint(tmp_path, every_n_batches=1)]).fit(
            max_steps=9, resume_from=tmp_path
        )


def test_one_cycle_spans_the_budget(budget_learner):
    learn = budget_learner()
    learn.fit_one_cycle(None, 0.5, max_steps=8)
    lrs = learn.plugin("Recorder").lrs
    assert len(lrs) == 8 and lrs[-1] < 1e-4  # the cycle ended at the last step


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "needs n_epochs and/or max_steps"),
        ({"max_steps": 0}, "max_steps must be an int >= 1"),
        ({"max_steps": 2.5}, "max_steps must be an int >= 1"),
    ],
)
def test_bad_budgets_are_refused(kwargs, match, budget_learner):
    with pytest.raises(ValueError, match=match):
        budget_learner().fit(**kwargs)


def test_a_loader_that_steps_itself_cannot_be_counted(budget_learner):
    class EveryOther:
        @hookimpl
        def should_step(self, learn):
            return learn.iter % 2 == 1

    with pytest.raises(ValueError, match="decides when to step"):
        budget_learner([EveryOther()]).fit(max_steps=3)
