"""restore's checks and warnings: what the mutation survivors of pluglearn.checkpoint.resume showed
untested, each on a real checkpoint (of a crashed run) altered in one place."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from pluglearn import CheckpointError, DataLoaders, Learner, hookimpl
from pluglearn.checkpoint.files import checkpoints_in, load_checkpoint, save_checkpoint
from pluglearn.checkpoint.plugin import Checkpoint
from tests.helpers import CrashAt, tiny_data


def learner(plugins=(), ready=False):
    torch.manual_seed(0)
    x, y = tiny_data(48)
    if ready:  # ready batches: a loader without state_dict
        dls = DataLoaders([(x[i : i + 8], y[i : i + 8]) for i in range(0, 40, 8)])
    else:
        dls = DataLoaders.from_datasets((x[:40], y[:40]), (x[40:], y[40:]), batch_size=8, seed=3)
    return Learner(nn.Linear(4, 3), dls, lr=0.1, plugins=list(plugins))


def checkpoint(tmp_path, ready=False, plugins=(), **loop):
    """The checkpoint after batch 1 of epoch 1 of a 3-epoch run, its loop altered by ``loop``."""
    with pytest.raises(RuntimeError, match="killed"):
        learner([Checkpoint(tmp_path / "run", every_n_batches=1), *plugins], ready).fit(
            3, plugins=[CrashAt(1, 2)]
        )
    state = load_checkpoint(checkpoints_in(tmp_path / "run")[-1])
    state["loop"].update(loop)
    return state


def refused(tmp_path, state, n_epochs=3, learn=None, **fit):
    path = save_checkpoint(state, tmp_path / "altered.pt")
    with pytest.raises(CheckpointError) as error:
        (learn or learner()).fit(n_epochs, resume_from=path, **fit)
    return str(error.value).split("\n")[0].replace(str(path), "<path>")


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


def test_a_loader_without_state_replays_to_the_cut_with_a_warning(tmp_path):
    state = checkpoint(tmp_path, ready=True)
    path = save_checkpoint(state, tmp_path / "ready.pt")
    with pytest.warns(UserWarning, match=re.escape(
        "the training loader (list) has no state_dict, so the resume replays 2 batches to reach "
        "the cut (their order drawn again from the random states the epoch started from); "
        "DataLoaders.from_datasets or torchdata's StatefulDataLoader resume in O(1)."
    )):  # fmt: skip
        learner(ready=True).fit(3, resume_from=path)


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
    import random

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


def test_a_checkpoint_of_two_processes_whose_loaders_differ_is_refused_naming_it(tmp_path):
    state = checkpoint(tmp_path)
    other_loader = {**state["loader"], "cursor": state["loader"]["cursor"] + 8}
    state["ranks"] = [
        {"rng": state["rng"], "plugins": state["plugins"], "loader": state["loader"]},
        {"rng": state["rng"], "plugins": state["plugins"], "loader": other_loader},
    ]
    assert refused(tmp_path, state) == (
        "checkpoint <path> was written by 2 process(es) and this run has 1: the ranks' loader "
        "states differ, so they cannot be split across 1 process(es). Resume with 2 process(es)."
    )
