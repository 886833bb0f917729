"""StepBudget at its edges: a budget of one step, one that ends exactly at an epoch's end one
epoch early, a budget in a Learner that has trained before (counted from the fit's start, also
across a resume), the plugin used directly, and the refusals' exact messages."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pluglearn import Checkpoint, DataLoaders, Learner, Recorder, hookimpl
from pluglearn.plugins.budget import StepBudget
from tests.helpers import CrashAt, batches, tiny_data


def test_a_budget_of_one_step_trains_one_batch(budget_learner):
    learn = budget_learner()
    learn.fit(max_steps=1)
    assert (learn.n_epochs, learn.opt_steps, learn.train_iter) == (1, 1, 1)


def test_a_budget_spent_at_the_end_of_the_second_to_last_epoch_stops_there(budget_learner):
    learn = budget_learner()
    learn.fit(3, max_steps=10)  # two whole epochs of 5 steps
    assert len(learn.plugin("Recorder").epochs) == 2
    assert (learn.epoch, learn.opt_steps) == (1, 10)
    assert learn.stop_reason == "StepBudget: max_steps=10 optimizer steps done"


def test_a_budget_counts_from_where_its_fit_starts(budget_learner):
    learn = budget_learner()
    learn.fit(1)
    learn.fit(max_steps=3)
    assert (learn.opt_steps, learn.train_iter) == (8, 8)


def test_a_budget_resumed_in_a_learner_that_trained_before_ends_at_the_same_step(
    tmp_path, budget_learner
):
    learn = budget_learner()
    learn.fit(1)
    with pytest.raises(RuntimeError, match="killed"):
        learn.fit(max_steps=7, plugins=[Checkpoint(tmp_path, every_n_batches=1), CrashAt(1, 0)])
    resumed = budget_learner()
    resumed.fit(max_steps=7, resume_from=tmp_path)
    assert resumed.opt_steps == 5 + 7
    done = budget_learner()
    done.fit(1)
    done.fit(max_steps=7)
    for p, q in zip(done.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_the_plugin_alone_keeps_the_epochs_asked_for(budget_learner):
    learn = budget_learner()
    learn.fit(3, plugins=[StepBudget(100)])
    assert (learn.n_epochs, learn.opt_steps) == (3, 15)


def test_a_resume_with_another_budget_names_both(tmp_path, budget_learner):
    with pytest.raises(RuntimeError, match="killed"):
        budget_learner([Checkpoint(tmp_path, every_n_batches=1), CrashAt(1, 1)]).fit(max_steps=8)
    with pytest.raises(ValueError) as refused:
        budget_learner([Checkpoint(tmp_path, every_n_batches=1)]).fit(
            max_steps=9, resume_from=tmp_path
        )
    assert str(refused.value).endswith(
        "fit(max_steps=9) resumes a run started with max_steps=8: pass the run's own max_steps."
    )


def test_a_budget_over_a_loader_without_length_is_refused_naming_the_fix():
    class Stream:  # an iterable without __len__
        def __iter__(self):
            yield from batches(x, y, 4)

    x, y = tiny_data(8)
    learn = Learner(nn.Linear(4, 3), DataLoaders(Stream(), batches(x, y, 4)), defaults=False)
    with pytest.raises(ValueError) as refused:
        learn.fit(max_steps=3)
    assert str(refused.value).startswith(
        "cannot count the optimizer steps of an epoch: the training loader has no length. "
        "Give n_epochs (and no max_steps), or a loader with a __len__."
    )


def test_a_plugin_that_decides_when_to_step_is_named_with_the_way_out(budget_learner):
    class EveryOther:
        @hookimpl
        def should_step(self, learn):
            return learn.iter % 2 == 1

    with pytest.raises(ValueError) as refused:
        budget_learner([EveryOther(), Recorder()]).fit(max_steps=3)
    assert str(refused.value).startswith(
        "cannot count the optimizer steps of an epoch: plugin 'EveryOther' decides when to step "
        "(should_step). Give n_epochs and build the schedule yourself: "
        "Scheduler(lambda opt: OneCycleLR(opt, lr, total_steps=...))."
    )
