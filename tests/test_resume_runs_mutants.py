"""restore, continued: what a resumed run takes back (its optimizer steps, its base lr) and
when it starts no fit, on real checkpoints of crashed runs."""

from __future__ import annotations

import re
import warnings

import pytest

from pluglearn import hookimpl
from pluglearn.checkpoint.files import checkpoints_in, load_checkpoint, save_checkpoint
from pluglearn.checkpoint.plugin import Checkpoint
from tests.helpers import CrashAt
from tests.test_resume_checks_mutants import checkpoint, learner


class Fits:
    def __init__(self) -> None:
        self.started = 0

    @hookimpl
    def before_fit(self, learn):
        self.started += 1


def test_a_finished_run_starts_no_fit_and_a_stateless_cut_at_an_epoch_end_replays_nothing(
    tmp_path,
):
    with pytest.raises(RuntimeError, match="killed"):
        learner([Checkpoint(tmp_path, every_n_batches=1)], ready=True).fit(
            3, plugins=[CrashAt(2, 0)]
        )
    last_batch = next(p for p in checkpoints_in(tmp_path) if p.name.endswith("s000000010-e0001.pt"))
    assert load_checkpoint(last_batch)["loop"]["position"] == 5  # all 5 batches of epoch 1 done
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "replays 5 batches" warning: there is none to replay
        learner(ready=True).fit(3, resume_from=last_batch)
    fits = Fits()
    finished = {**load_checkpoint(last_batch), "loop": {**load_checkpoint(last_batch)["loop"],
                                                         "epoch": 3, "position": 0}}  # fmt: skip
    path = save_checkpoint(finished, tmp_path / "finished.pt")
    with pytest.warns(UserWarning, match="finished its 3 epoch"):
        learner([fits]).fit(3, resume_from=path)
    assert fits.started == 0


@pytest.mark.slow
def test_a_resumed_accumulating_run_counts_its_steps_on_from_the_saved_ones(tmp_path):
    from pluglearn import GradientAccumulation

    done = learner([GradientAccumulation(2)])
    done.fit(3)
    state = checkpoint(tmp_path, plugins=[GradientAccumulation(2)])
    assert state["loop"]["opt_steps"] < state["loop"]["train_iter"]
    resumed = learner([GradientAccumulation(2)])
    resumed.fit(3, resume_from=save_checkpoint(state, tmp_path / "acc.pt"))
    assert resumed.opt_steps == done.opt_steps == 9


@pytest.mark.slow
def test_the_run_base_lr_comes_back_not_the_scheduled_one(tmp_path):
    from torch.optim.lr_scheduler import StepLR

    from pluglearn import Scheduler

    def sched():
        return Scheduler(lambda opt: StepLR(opt, 1, gamma=0.5), interval="epoch")

    state = checkpoint(tmp_path, plugins=[sched()])  # in epoch 1: the lr is halved once
    assert state["opt"]["param_groups"][0]["lr"] == 0.05
    resumed = learner([sched()])
    resumed.fit(3, resume_from=save_checkpoint(state, tmp_path / "s.pt"))
    assert resumed.lr == 0.1
    del state["loop"]["lr"]  # an older file: the scheduler's initial_lr is the base lr
    older = learner([sched()])
    older.fit(3, resume_from=save_checkpoint(state, tmp_path / "old.pt"))
    assert older.lr == 0.1


@pytest.mark.slow
def test_a_one_cycle_run_resumes_with_its_lr_max_not_the_scheduler_starting_lr(tmp_path):
    with pytest.raises(RuntimeError, match="killed"):
        learner([Checkpoint(tmp_path, every_n_batches=1)]).fit_one_cycle(
            3, 0.5, plugins=[CrashAt(1, 2)]
        )

    class BaseLr:
        @hookimpl
        def before_fit(self, learn):
            self.lr = learn.lr

    resumed, base = learner(), BaseLr()
    resumed.fit_one_cycle(3, 0.5, plugins=[base], resume_from=tmp_path)
    assert base.lr == 0.5  # OneCycleLR's initial_lr is 0.5 / 25
    assert resumed.lr == 0.1  # after the cycle: the Learner's own lr again


def test_a_one_process_capture_is_mid_epoch_by_default_and_has_no_per_rank_records():
    import torch

    from pluglearn.checkpoint.files import VERSION
    from pluglearn.checkpoint.resume import capture

    learn = learner()
    learn.fit(1)
    state = capture(learn)
    assert (state["version"], state["loop"]["epoch"]) == (VERSION, learn.epoch)
    assert "ranks" not in state and "world_size" not in state
    assert isinstance(state["rng"]["torch"], torch.Tensor)


class UnsafeState:
    @hookimpl
    def state_dict(self):
        import numpy as np

        return {"sums": np.zeros(2)}


def test_a_plugin_state_a_safe_load_would_refuse_is_refused_when_saving(tmp_path):
    with pytest.raises(TypeError, match=re.escape(
        "plugin 'UnsafeState': state['sums'] is a numpy.ndarray, which a safe load "
        "(weights_only=True) refuses"
    )):  # fmt: skip
        learner([UnsafeState(), Checkpoint(tmp_path, every_n_batches=1)]).fit(1)


@pytest.mark.slow
def test_an_optimizer_state_the_learner_cannot_take_or_lacks_is_refused(tmp_path):
    from torch import nn

    from pluglearn import CheckpointError, Learner
    from pluglearn.scratch.optim import SGD

    state = checkpoint(tmp_path)
    scratch = Learner(nn.Linear(4, 3), learner().dls, lr=0.1, opt_func=SGD)
    path = save_checkpoint(state, tmp_path / "torch-opt.pt")
    with pytest.raises(CheckpointError, match=re.escape(
        f"checkpoint {path} has an optimizer state, but this Learner's optimizer (SGD) has none: "
        "resume with the optimizer the run used."
    )):  # fmt: skip
        scratch.fit(3, resume_from=path)
    for opt, sizes in [({}, "[]"), ({"param_groups": [{}]}, "[0]")]:
        path = save_checkpoint({**state, "opt": opt}, tmp_path / "odd-opt.pt")
        with pytest.raises(CheckpointError, match=re.escape(
            f"holds an optimizer with parameter groups of sizes {sizes}, this Learner's has [2]"
        )):  # fmt: skip
            learner().fit(3, resume_from=path)


@pytest.mark.slow
def test_a_run_with_the_scratch_optimizer_resumes_exactly(tmp_path):
    import torch
    from torch import nn

    from pluglearn import Learner
    from pluglearn.scratch.optim import SGD

    def scratch(plugins=()):
        torch.manual_seed(0)
        return Learner(nn.Linear(4, 3), learner().dls, lr=0.1, opt_func=SGD, plugins=plugins)

    done = scratch()
    done.fit(3)
    with pytest.raises(RuntimeError, match="killed"):
        scratch([Checkpoint(tmp_path, every_n_batches=1)]).fit(3, plugins=[CrashAt(1, 2)])
    assert load_checkpoint(checkpoints_in(tmp_path)[-1])["opt"] is None  # it has no state
    resumed = scratch()
    resumed.fit(3, resume_from=tmp_path)
    for p, q in zip(done.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.slow
def test_a_stateless_loader_without_a_length_replays_to_the_cut_with_a_warning(tmp_path):
    from pluglearn import DataLoaders, Learner

    batches = list(learner(ready=True).dls.train)

    class NoLen:
        def __iter__(self):
            return iter(batches)

    def no_len(plugins=()):
        import torch
        from torch import nn

        torch.manual_seed(0)
        return Learner(nn.Linear(4, 3), DataLoaders(NoLen()), lr=0.1, plugins=plugins)

    with pytest.raises(RuntimeError, match="killed"):
        no_len([Checkpoint(tmp_path, every_n_batches=1)]).fit(3, plugins=[CrashAt(1, 2)])
    with pytest.warns(UserWarning, match=re.escape(
        "the training loader (NoLen) has no state_dict, so the resume replays 2 batches"
    )):  # fmt: skip
        no_len().fit(3, resume_from=tmp_path)
