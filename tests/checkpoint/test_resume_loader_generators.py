"""A resume puts back the torch.Generator a loader shuffles with (DataLoader(generator=g), torch's
reproducibility recipe) as it was at the cut, so the epochs after the resumed one draw the
uninterrupted run's orders; a Learner whose loaders draw from other generators is refused; the
warning that a replay reads batches again comes exactly when there are batches to read. In
process, with the crash of a real fit (the kill-and-resume jobs test the same in a fresh one)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pluglearn import Checkpoint, CheckpointError, DataLoaders, Learner
from pluglearn.checkpoint.files import checkpoints_in, load_checkpoint
from pluglearn.run.replay import loader_generators
from tests.helpers import CrashAt, tiny_data
from tests.support.checkpoints import checkpoint, learner, refused

EPOCHS = 3


def _learner(plugins=(), generator=True) -> Learner:
    torch.manual_seed(0)
    x, y = tiny_data(24)
    train = TensorDataset(x[:16], y[:16])
    g = torch.Generator().manual_seed(7) if generator else None
    loader = DataLoader(train, batch_size=4, shuffle=generator, generator=g)
    dls = DataLoaders(loader, DataLoader(TensorDataset(x[16:], y[16:]), batch_size=4))
    return Learner(nn.Linear(4, 3), dls, lr=0.1, plugins=list(plugins), defaults=False)


def test_a_resume_mid_epoch_with_a_loaders_generator_trains_the_uninterrupted_runs_epochs(
    tmp_path,
):
    done = _learner()
    done.fit(EPOCHS)
    with pytest.raises(RuntimeError, match="killed"):
        _learner([Checkpoint(tmp_path, every_n_batches=1)]).fit(EPOCHS, plugins=[CrashAt(0, 2)])
    resumed = _learner()
    with pytest.warns(UserWarning, match="replays 2 batches"):
        resumed.fit(EPOCHS, resume_from=tmp_path)
    for p, q in zip(done.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_learner_whose_loaders_draw_from_other_generators_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="killed"):
        _learner([Checkpoint(tmp_path, every_n_batches=1)]).fit(EPOCHS, plugins=[CrashAt(0, 2)])
    plain = _learner(generator=False)
    saved, own = len(loader_generators(_learner())), len(loader_generators(plain))
    assert saved > own
    with pytest.raises(CheckpointError) as refused_:
        plain.fit(EPOCHS, resume_from=tmp_path)
    assert str(refused_.value).endswith(
        f"the checkpoint's loaders drew from {saved} torch.Generator(s), this Learner's draw "
        f"from {own}: build the loaders (their samplers and datasets) as the saved run did."
    )


def test_the_replay_warning_comes_from_the_first_batch_read_again_and_not_before(tmp_path):
    with pytest.raises(RuntimeError, match="killed"):
        learner([Checkpoint(tmp_path, every_n_batches=1)], ready=True).fit(
            EPOCHS, plugins=[CrashAt(1, 1)]
        )
    after_one = next(
        p for p in checkpoints_in(tmp_path) if load_checkpoint(p)["loop"]["position"] == 1
    )
    with pytest.warns(UserWarning, match="replays 1 batches"):
        learner(ready=True).fit(EPOCHS, resume_from=after_one)
    epoch_start = next(
        p
        for p in checkpoints_in(tmp_path)
        if load_checkpoint(p)["loop"]["position"] == 0 and load_checkpoint(p)["loop"]["epoch"] == 1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to read again at an epoch's start: no warning
        learner(ready=True).fit(EPOCHS, resume_from=epoch_start)


def test_a_model_state_whose_keys_collide_without_prefixes_is_refused_naming_the_checkpoint(
    tmp_path,
):
    state = checkpoint(tmp_path)
    state["model"]["module.weight"] = state["model"]["weight"].clone()
    assert refused(tmp_path, state) == (
        "checkpoint <path>: keys 'module.weight' and another both become 'weight' without their "
        "wrapper prefixes ('_orig_mod.', 'module.'): save the unwrapped model's state dict."
    )


def test_plugins_missing_and_added_are_both_named(tmp_path):
    from pluglearn import hookimpl

    class Saved:
        @hookimpl
        def state_dict(self):
            return {"n": 1}

    class Added(Saved):
        pass

    class Also(Saved):
        pass

    state = checkpoint(tmp_path, plugins=[Saved()])
    assert refused(tmp_path, state, learn=learner([Added(), Also()])) == (
        "checkpoint <path> holds the state of Saved, which this Learner does not have and no "
        "state for Added, Also, which this Learner has: a resume continues the saved run "
        "exactly, so it needs the same plugins (a MixedPrecision left out would train on in "
        "float32, a scheduler left out at a constant lr). Give fit the plugins the saved run "
        "had, or start a new run without resume_from."
    )
