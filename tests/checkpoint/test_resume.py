"""Resume: a run captured as a checkpoint record and restored from one, exactly: where it starts
(at the cut, nothing replayed; a finished or stopped run starts no fit), what it takes back (its
optimizer steps, its base lr, its stop reason), the optimizers and loaders it resumes with, what
is refused when saving, and a failure while applying that puts the Learner back as it was."""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pluglearn import CancelFitException, DataLoaders, Learner, hookimpl
from pluglearn.checkpoint.files import (
    checkpoints_in,
    load_checkpoint,
    save_checkpoint,
)
from pluglearn.checkpoint.plugin import Checkpoint
from pluglearn.checkpoint.resume import capture, check_safe_state
from tests.helpers import CrashAt, DieAtStep, EventLog, tiny_data
from tests.jobs import resume_job
from tests.support.checkpoints import checkpoint, learner

BATCHES_PER_EPOCH, EPOCHS = 20, 3


def saved_at(directory: Path) -> int:
    """The training step of the newest checkpoint in ``directory``."""
    return load_checkpoint(checkpoints_in(directory)[-1])["loop"]["train_iter"]


def test_resume_starts_at_the_cut_without_replaying_batches(tmp_path):
    class StopAt:
        @hookimpl
        def after_batch(self, learn):
            if learn.training and learn.train_iter == 25:
                raise RuntimeError("die")

    learn = resume_job.make_learner(str(tmp_path))
    with pytest.raises(RuntimeError, match="die"):
        learn.fit(EPOCHS, plugins=[StopAt()])
    saved_at = load_checkpoint(checkpoints_in(tmp_path)[-1])["loop"]["train_iter"]
    assert saved_at == 24  # batch 25 raised before its checkpoint (Checkpoint runs trylast)
    resumed = resume_job.make_learner(str(tmp_path))
    log = EventLog()
    resumed.fit(EPOCHS, resume_from=tmp_path, plugins=[log])
    train_batches = sum(1 for e in log.events if e == "after_backward")
    assert train_batches == BATCHES_PER_EPOCH * EPOCHS - saved_at  # nothing before the cut
    assert resumed.train_iter == BATCHES_PER_EPOCH * EPOCHS


def test_stop_reason_survives_a_resume(tmp_path):
    class StopAfterOne:
        @hookimpl
        def after_epoch(self, learn):
            raise CancelFitException("enough after one epoch")

    learn = resume_job.make_learner(str(tmp_path))
    learn.fit(EPOCHS, plugins=[StopAfterOne()])
    assert learn.stop_reason == "StopAfterOne: enough after one epoch"
    resumed = resume_job.make_learner(str(tmp_path))
    with pytest.warns(UserWarning, match="had stopped"):
        resumed.fit(EPOCHS, resume_from=tmp_path)
    assert resumed.stop_reason == "StopAfterOne: enough after one epoch"
    assert resumed.train_iter == BATCHES_PER_EPOCH  # it did not train past the stop


class _TrainSteps:
    """The training steps a fit ran (``train_iter`` after each training batch)."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    @hookimpl
    def after_batch(self, learn):
        if learn.training:
            self.steps.append(learn.train_iter)


# Not the shared make_learner: a map-style dataset of its own.
def _map_style_learner(directory: Path) -> Learner:
    """A generic map-style dataset, so the default loader is the scratch DataLoader."""
    from pluglearn.scratch.data import Dataset

    torch.manual_seed(0)
    x, y = tiny_data(50, n_in=4)
    dls = DataLoaders.from_datasets(Dataset(x[:40], y[:40]), Dataset(x[40:], y[40:]), 8, seed=3)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.25), nn.Linear(8, 3))
    return Learner(model, dls, plugins=[Checkpoint(directory, every_n_batches=1)])


@pytest.mark.parametrize("cut", [2, 5, 6, 11])  # 5 batches an epoch: 5 ends epoch 0
def test_resume_with_the_scratch_dataloader_is_bit_identical(tmp_path, cut):
    reference = _map_style_learner(tmp_path / "reference")
    reference.fit(3)
    with pytest.raises(RuntimeError, match="die"):
        _map_style_learner(tmp_path / "run").fit(3, plugins=[DieAtStep(cut)])
    step = saved_at(tmp_path / "run")
    assert step == cut - 1  # batch `cut` raised before its own checkpoint
    resumed, ran = _map_style_learner(tmp_path / "run"), _TrainSteps()
    resumed.fit(3, resume_from=tmp_path / "run", plugins=[ran])
    for a, b in zip(reference.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert resumed.metrics["train_loss"] == reference.metrics["train_loss"]
    assert ran.steps == list(range(step + 1, 16))  # not from scratch: 15 steps in 3 epochs


def weights(learn):
    return [p.detach().clone() for p in learn.model.parameters()]


@pytest.mark.slow
def test_missing_ok_starts_fresh_then_resumes_once_a_checkpoint_exists(tmp_path):
    fresh = learner()
    with pytest.warns(UserWarning, match="starting a fresh run"):
        fresh.fit(4, resume_from=tmp_path / "ckpt", missing_ok=True)
    whole = learner()
    whole.fit(4)
    assert all(torch.equal(a, b) for a, b in zip(weights(fresh), weights(whole), strict=True))
    with pytest.raises(ValueError, match="missing_ok=True goes with resume_from"):
        learner().fit(1, missing_ok=True)


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


@pytest.mark.slow
def test_a_plugin_state_a_safe_load_would_refuse_is_refused_when_saving(tmp_path):
    with pytest.raises(TypeError, match=re.escape(
        "plugin 'UnsafeState': state['sums'] is a numpy.ndarray, which a safe load "
        "(weights_only=True) refuses"
    )):  # fmt: skip
        learner([UnsafeState(), Checkpoint(tmp_path, every_n_batches=1)]).fit(1)


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


def test_only_what_a_safe_load_reads_back_is_saved():
    check_safe_state({"a": [1, 2.0, "s", b"b", None, True, (torch.zeros(1),)], 3: {}}, "x")
    with pytest.raises(TypeError, match=re.escape("x has a key 1.5 of type float: use str.")):
        check_safe_state({1.5: 0}, "x")
    with pytest.raises(TypeError, match=re.escape(
        "x['a'][1] is a numpy.ndarray, which a safe load (weights_only=True) refuses: a "
        "state_dict hook must return tensors, numbers, strings, lists and dicts (e.g. "
        "torch.from_numpy(array), or array.tolist())."
    )):  # fmt: skip
        check_safe_state({"a": [0, np.zeros(2)]}, "x")


def test_a_run_that_had_stopped_is_not_resumed(tmp_path):
    path = save_checkpoint(checkpoint(tmp_path, stop_reason="EarlyStopping"), tmp_path / "s.pt")
    learn = learner()
    with pytest.warns(UserWarning, match=re.escape(
        f"checkpoint {path} is of a run that had stopped (EarlyStopping): nothing to resume. "
        "Call fit() without resume_from to train further."
    )):  # fmt: skip
        learn.fit(3, resume_from=path)
    assert learn.stop_reason == "EarlyStopping"


def test_an_older_loop_record_takes_the_lr_and_steps_from_what_it_has(tmp_path):
    state = checkpoint(tmp_path)
    del state["loop"]["lr"], state["loop"]["opt_steps"]
    path = save_checkpoint(state, tmp_path / "old.pt")
    learn = Learner(nn.Linear(4, 3), learner().dls, lr=0.7)
    learn.fit(3, resume_from=path)
    assert learn.lr == 0.1  # the lr the saved optimizer ran with
    assert learn.opt_steps == learn.train_iter  # counted on from train_iter


class FailsToLoad:
    """Cannot load the state of the saved run (n=1); loads its own (n=0) back."""

    def __init__(self, n: int) -> None:
        self.n = n

    @hookimpl
    def state_dict(self):
        return {"n": self.n}

    @hookimpl
    def load_state_dict(self, state):
        if state["n"] == 1:
            raise RuntimeError("cannot load")


def test_a_failure_while_applying_puts_the_learner_back(tmp_path):
    state = checkpoint(tmp_path, plugins=[FailsToLoad(1)], stop_reason="x")
    path = save_checkpoint(state, tmp_path / "f.pt")
    learn = learner([FailsToLoad(0)])
    before = [p.detach().clone() for p in learn.model.parameters()]
    rng = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="cannot load"):
        learn.fit(3, resume_from=path)
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters(), strict=True))
    assert torch.equal(rng, torch.get_rng_state())
    assert (learn.epoch, learn.train_iter, learn.stop_reason) == (0, 0, None)


class NeverLoads:
    def __init__(self):
        self.given = []  # the learn each load_state_dict call was given

    @hookimpl
    def state_dict(self):
        return {}

    @hookimpl
    def load_state_dict(self, learn, state):
        self.given.append(learn)
        raise RuntimeError("never loads")


def test_a_roll_back_that_fails_too_puts_back_the_rest_and_says_the_learner_is_half_restored(
    tmp_path,
):
    state = checkpoint(tmp_path, plugins=[NeverLoads()], stop_reason="x")
    path = save_checkpoint(state, tmp_path / "f.pt")
    plugin = NeverLoads()
    learn = learner([plugin])
    before = [p.detach().clone() for p in learn.model.parameters()]
    rng = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="never loads") as failure:
        learn.fit(3, resume_from=path)
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters(), strict=True))
    assert torch.equal(rng, torch.get_rng_state())
    # the checkpoint's stop_reason was in place when the plugin failed; the roll-back, which
    # stopped at the plugins' second failure, left it there
    assert (learn.epoch, learn.train_iter, learn.stop_reason) == (0, 0, None)
    assert plugin.given == [learn, learn]  # applying, then rolling back
    assert (
        "pluglearn: putting the Learner back as it was failed too for the plugins (RuntimeError: "
        "never loads): it is half-restored; build a new Learner before training it."
    ) in failure.value.__notes__


def test_a_failure_in_the_random_state_puts_back_the_random_states_already_set(tmp_path):
    state = checkpoint(tmp_path)
    state["rng"]["torch"] = torch.zeros(3, dtype=torch.uint8)  # python's is set before it fails
    path = save_checkpoint(state, tmp_path / "f.pt")
    learn = learner()
    random.seed(11)
    python = random.getstate()
    with pytest.raises(RuntimeError):
        learn.fit(3, resume_from=path)
    assert random.getstate() == python  # not the checkpoint's
    assert (learn.epoch, learn.train_iter, learn.stop_reason) == (0, 0, None)


def test_a_failure_while_applying_also_puts_back_the_optimizer_and_a_ready_loader(tmp_path):
    from pluglearn.data.loaders import TensorBatchLoader

    state = checkpoint(tmp_path, plugins=[FailsToLoad(1)])
    del state["generators"]  # saved from other loaders: as an older checkpoint, without them
    x, y = tiny_data(48)
    loader = TensorBatchLoader(
        (x[:40], y[:40]), 8, True, generator=torch.Generator().manual_seed(3)
    )
    before = loader.state_dict()

    def opt_func(params, lr):
        return torch.optim.SGD(params, lr=lr, momentum=0.9)

    torch.manual_seed(0)
    learn = Learner(nn.Linear(4, 3), DataLoaders(loader), lr=0.1, opt_func=opt_func,
                    plugins=[FailsToLoad(0)])  # fmt: skip
    state["opt"]["param_groups"][0]["momentum"] = 0.9  # and momentum buffers to load:
    state["opt"]["state"] = {0: {"momentum_buffer": torch.ones(3, 4)},
                             1: {"momentum_buffer": torch.ones(3)}}  # fmt: skip
    path = save_checkpoint(state, tmp_path / "f.pt")
    with pytest.raises(RuntimeError, match="cannot load"):
        learn.fit(3, resume_from=path)
    assert learn.opt.state_dict()["state"] == {}  # no momentum loaded from the checkpoint
    after = loader.state_dict()
    assert after["cursor"] == before["cursor"] == 0
    assert torch.equal(after["rng"], before["rng"])


def test_a_numpy_array_deep_in_a_plugin_state_is_refused_when_saving_naming_its_path(
    tmp_path, make_learner
):
    import numpy as np

    from pluglearn import hookimpl
    from pluglearn.checkpoint.plugin import Checkpoint

    class NumpyState:
        @hookimpl
        def state_dict(self):
            return {"seen": [1, np.zeros(3)]}

    learn = make_learner()
    learn.add_plugin(NumpyState())
    with pytest.raises(TypeError, match=r"plugin 'NumpyState': state\['seen'\]\[1\] is a numpy"):
        learn.fit(1, plugins=[Checkpoint(tmp_path)])
