"""What a resume checks before it changes anything, each on a real checkpoint (of a crashed run)
altered in one place: its records, its position against this fit, its model, optimizer, lr and
plugins against this Learner's; each refusal names the file and the fix, and leaves the Learner
as it was."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from pluglearn import CheckpointError, DataLoaders, Learner, hookimpl
from pluglearn.checkpoint.files import (
    checkpoints_in,
    load_checkpoint,
    save_checkpoint,
)
from pluglearn.checkpoint.plugin import Checkpoint
from pluglearn.checkpoint.resume import capture
from tests.helpers import CrashAt, batches, raised_by, tiny_data
from tests.jobs import resume_job
from tests.support.checkpoints import checkpoint, learner, refused


class Positions:
    def __init__(self):
        self.seen = []

    @hookimpl
    def before_batch(self, learn):
        if learn.training:
            self.seen.append((learn.epoch, learn.iter))


def crashed_run(tmp_path, epoch=2, batch=2, **kwargs):
    with pytest.raises(RuntimeError, match="killed"):
        learner(**kwargs).fit(
            4, plugins=[Checkpoint(tmp_path, every_n_batches=1), CrashAt(epoch, batch)]
        )


def weights(learn):
    return [p.detach().clone() for p in learn.model.parameters()]


@pytest.mark.slow
def test_a_checkpoint_past_the_epochs_asked_for_is_refused_and_leaves_no_position(tmp_path):
    crashed_run(tmp_path)  # the newest checkpoint is at epoch 2, batch 3
    learn = learner()
    before = weights(learn)
    with pytest.raises(CheckpointError, match=r"past the 1 epoch\(s\) this fit asks for"):
        learn.fit(1, resume_from=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(learn), strict=True))
    positions = Positions()
    learn.fit(
        1, plugins=[positions, Checkpoint(tmp_path / "next", every_n_batches=1, keep_last=None)]
    )
    assert positions.seen == [(0, i) for i in range(5)]  # starts at batch 0, not 3
    loops = [load_checkpoint(f)["loop"] for f in checkpoints_in(tmp_path / "next")]
    assert [(lp["epoch"], lp["position"]) for lp in loops][:3] == [(0, 1), (0, 2), (0, 3)]


@pytest.mark.slow
def test_resume_keeps_the_run_lr_and_refuses_another(tmp_path):
    crashed_run(tmp_path, lr=0.05)
    with pytest.raises(CheckpointError, match=r"fit\(lr=0.2\).*started with lr=0.05"):
        learner(lr=0.1).fit(4, lr=0.2, resume_from=tmp_path)
    learn = learner(lr=0.1)
    learn.fit(4, resume_from=tmp_path)
    assert learn.lr == 0.05 and learn.opt.param_groups[0]["lr"] == 0.05
    same = learner(lr=0.1)
    same.fit(4, lr=0.05, resume_from=tmp_path)  # the run's own lr is accepted
    assert all(torch.equal(a, b) for a, b in zip(weights(learn), weights(same), strict=True))


@pytest.mark.slow
def test_a_checkpoint_missing_a_record_is_refused_before_the_model_changes(tmp_path):
    crashed_run(tmp_path)
    newest = checkpoints_in(tmp_path)[-1]
    for damage in ("opt", "rng", "loop"):
        state = load_checkpoint(newest)
        del state[damage]
        bad = save_checkpoint(state, tmp_path / "bad" / f"no-{damage}.pt")
        learn = learner()
        before = weights(learn)
        with pytest.raises(CheckpointError, match=f"lacks a valid '{damage}' record"):
            learn.fit(4, resume_from=bad)
        assert all(torch.equal(a, b) for a, b in zip(before, weights(learn), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize(("key", "value"), [("epoch", -1), ("position", -3), ("train_iter", 1.5)])
def test_a_crafted_loop_position_is_refused(tmp_path, key, value):
    crashed_run(tmp_path)
    state = load_checkpoint(checkpoints_in(tmp_path)[-1])
    state["loop"][key] = value
    bad = save_checkpoint(state, tmp_path / "bad" / "crafted.pt")
    with pytest.raises(CheckpointError, match=rf"loop\['{key}'\] = {value}, not an int >= 0"):
        learner().fit(4, resume_from=bad)


@pytest.mark.slow
def test_a_resume_refused_by_the_loader_changes_nothing(tmp_path):
    crashed_run(tmp_path)
    learn = learner(bs=16)
    before = weights(learn)
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match="batch_size=8"):
        learn.fit(4, resume_from=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(learn), strict=True))
    assert torch.equal(rng, torch.get_rng_state())
    assert learn.epoch == 0 and learn.train_iter == 0


@pytest.mark.slow
def test_a_resume_without_a_stateful_plugin_of_the_saved_run_is_refused_naming_it(tmp_path):
    from pluglearn import EarlyStopping

    with pytest.raises(RuntimeError, match="killed"):
        learner().fit(
            4,
            plugins=[
                Checkpoint(tmp_path, every_n_batches=1),
                EarlyStopping("valid_loss", patience=9),
                CrashAt(2, 2),
            ],
        )
    with pytest.raises(CheckpointError, match=r"holds the state of EarlyStopping, which this"):
        learner().fit(4, resume_from=tmp_path)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the Checkpoint plugin's own state is no reason to warn
        learner().fit(4, resume_from=tmp_path, plugins=[EarlyStopping("valid_loss", patience=9)])


@pytest.mark.slow
def test_damaged_random_states_and_stop_reasons_are_refused(tmp_path):
    state = checkpoint(tmp_path)
    del state["rng"]["torch"]
    assert refused(tmp_path, state) == "checkpoint <path> lacks the python or torch random state."
    state = checkpoint(tmp_path, stop_reason=3)
    assert refused(tmp_path, state) == "checkpoint <path> has a stop_reason that is not a string."
    state = checkpoint(tmp_path)
    state["plugins"] = []
    assert refused(tmp_path, state).startswith("checkpoint <path> lacks a valid 'plugins' record")


def test_a_checkpoint_inside_the_last_epoch_asked_for_is_past_it(tmp_path):
    state = checkpoint(tmp_path)  # epoch 1, batch 2 of the run's 3 epochs
    assert refused(tmp_path, state, n_epochs=1) == (
        "checkpoint <path> is at epoch 1, batch 2 of its run, past the 1 epoch(s) this fit asks "
        "for, so nothing would train: pass n_epochs=3 (the run's own), or more to train further."
    )
    path = save_checkpoint({**state, "loop": {**state["loop"], "position": 0}}, tmp_path / "e.pt")
    learn = learner()
    with pytest.warns(UserWarning, match=re.escape(
        f"checkpoint {path} is of a run that finished its 1 epoch(s): nothing to train. Pass a "
        "larger n_epochs to train further."
    )):  # fmt: skip
        learn.fit(1, resume_from=path)
    assert learn.train_iter == state["loop"]["train_iter"]  # restored, and nothing trained


def test_an_optimizer_state_that_does_not_fit_is_refused_naming_the_fix(tmp_path):
    state = checkpoint(tmp_path)
    assert refused(tmp_path, {**state, "opt": None}) == (
        "checkpoint <path> has no optimizer state, but this Learner's optimizer (SGD) has one: "
        "resume with the optimizer the run used."
    )
    groups = state["opt"]["param_groups"]
    named = {**state["opt"], "param_groups": [{**groups[0], "params": ["weight", "bias"]}]}
    assert refused(tmp_path, {**state, "opt": named}) == (
        "checkpoint <path> was written under FSDP() (its optimizer state is keyed by parameter "
        "name), and this Learner's model is not sharded: resume with FSDP()."
    )
    split = {**state["opt"], "param_groups": [{**groups[0], "params": [0]},
                                               {**groups[0], "params": [1]}]}  # fmt: skip
    assert refused(tmp_path, {**state, "opt": split}) == (
        "checkpoint <path> holds an optimizer with parameter groups of sizes [1, 1], this "
        "Learner's has [2]: build the optimizer the run used (same opt_func, same parameter "
        "groups)."
    )
    assert refused(tmp_path, state, lr=0.5) == (
        "fit(lr=0.5) with resume_from=<path>: the checkpointed run was started with lr=0.1, and "
        "a resume continues that run exactly. Drop lr= (learn.lr then becomes the run's), or "
        "start a new run without resume_from to use another lr."
    )


class Extra:
    @hookimpl
    def state_dict(self):
        return {"n": 1}


class Other(Extra):
    pass


def test_a_resume_without_the_saved_runs_plugins_is_refused_naming_them(tmp_path):
    state = checkpoint(tmp_path, plugins=[Other(), Extra()])
    assert refused(tmp_path, state) == (
        "checkpoint <path> holds the state of Extra, Other, which this Learner does not have: a "
        "resume continues the saved run exactly, so it needs the same plugins (a MixedPrecision "
        "left out would train on in float32, a scheduler left out at a constant lr). Give fit the "
        "plugins the saved run had, or start a new run without resume_from."
    )  # the saved Checkpoint's run id is not named: it names files, it trains nothing
    state = checkpoint(tmp_path / "plain")
    assert refused(tmp_path, state, learn=learner([Extra()])).startswith(
        "checkpoint <path> holds no state for Extra, which this Learner has: "
    )


@pytest.mark.parametrize("record", ["model", "plugins", "rng", "loop"])
def test_a_record_of_the_wrong_kind_is_refused_listing_what_the_file_has(tmp_path, record):
    state = checkpoint(tmp_path)
    state[record] = []
    assert refused(tmp_path, state) == (
        f"checkpoint <path> lacks a valid '{record}' record (has: {', '.join(state)}): it is "
        "damaged or not a pluglearn checkpoint; resume from another checkpoint."
    )


@pytest.mark.parametrize("key", ["epoch", "position", "train_iter"])
def test_a_crafted_position_is_refused_naming_the_file(tmp_path, key):
    assert refused(tmp_path, checkpoint(tmp_path, **{key: -1})) == (
        f"checkpoint <path> has loop[{key!r}] = -1, not an int >= 0: the file was not written by "
        "pluglearn's Checkpoint or was altered; resume from another checkpoint."
    )


def test_one_batch_into_the_last_epoch_is_past_it_and_the_run_epochs_are_guessed(tmp_path):
    state = checkpoint(tmp_path, position=1)
    del state["loop"]["n_epochs"]  # an older file: the run's epochs are not recorded
    assert refused(tmp_path, state, n_epochs=1) == (
        "checkpoint <path> is at epoch 1, batch 1 of its run, past the 1 epoch(s) this fit asks "
        "for, so nothing would train: pass n_epochs=2 (the run's own), or more to train further."
    )


def test_another_model_is_refused_naming_the_file_and_the_fix(tmp_path):
    state = checkpoint(tmp_path)
    learn = Learner(nn.Linear(4, 5), learner().dls, lr=0.1)
    message = refused(tmp_path, state, learn=learn)
    assert message.startswith("checkpoint <path> is of a different model; ")
    assert message.endswith(
        ". Build the model the checkpoint was saved from, or start without resume_from."
    )


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


def test_checkpoint_of_another_model_names_the_keys(tmp_path):
    learn = resume_job.make_learner(str(tmp_path))
    learn.fit(1)
    x, y = tiny_data(8, n_in=20)
    other = Learner(
        nn.Sequential(nn.Linear(20, 32), nn.Linear(32, 3)), DataLoaders(batches(x, y, 4))
    )
    with pytest.raises(CheckpointError, match=r"different model.*missing keys: 1.weight") as info:
        other.fit(1, resume_from=tmp_path)
    assert "unexpected keys: 3.weight" in str(info.value)
    assert "shape mismatches" in str(info.value) and "0.weight (64, 20) != (32, 20)" in str(
        info.value
    )


@pytest.fixture
def one_epoch_checkpoint(tmp_path, make_learner) -> Path:
    """A real checkpoint of one epoch of the tiny learner."""
    learn = make_learner()
    learn.fit(1)
    return save_checkpoint(capture(learn, epoch_end=True), tmp_path / "ckpt.pt")


def test_a_checkpoint_of_another_model_names_the_keys_and_shapes(
    one_epoch_checkpoint, make_learner
):
    wider = make_learner(model=nn.Linear(4, 5))
    text = raised_by(lambda: wider.fit(2, resume_from=one_epoch_checkpoint), CheckpointError)
    assert f"checkpoint {one_epoch_checkpoint} is of a different model" in text
    assert "shape mismatches (saved != model): weight (3, 4) != (5, 4), bias (3,) != (5,)" in text
    deeper = make_learner(model=nn.Sequential(nn.Linear(4, 3)))
    text = raised_by(lambda: deeper.fit(2, resume_from=one_epoch_checkpoint), CheckpointError)
    assert "missing keys: 0.weight, 0.bias" in text and "unexpected keys: weight, bias" in text
    assert "Build the model the checkpoint was saved from" in text
