"""Real checkpoints of a crashed run, altered in one place, and the first line of the error a
resume from one raises: shared by the resume and compatibility tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pluglearn import CheckpointError, DataLoaders, Learner
from pluglearn.checkpoint.files import checkpoints_in, load_checkpoint, save_checkpoint
from pluglearn.checkpoint.plugin import Checkpoint
from tests.helpers import CrashAt, tiny_data, tiny_learner


def learner(plugins=(), ready=False, **kwargs) -> Learner:
    """The crashed runs' Learner: ``nn.Linear(4, 3)`` on 40 training items of ``tiny_data(48)``
    in batches of 8, the last 8 items validating (``DataLoaders.from_datasets``, seed 3; other
    keywords go to ``tiny_learner``: ``lr=``, ``bs=``, ...). With ``ready=True`` the same 40
    items as ready batches and no validation set: a loader without ``state_dict``.

        learn = learner([Checkpoint(tmp_path, every_n_batches=1)], lr=0.05)
    """
    if ready:  # the 40 items of tiny_data(48), as tiny_learner's ready batches never are
        torch.manual_seed(0)
        x, y = tiny_data(48)
        dls = DataLoaders([(x[i : i + 8], y[i : i + 8]) for i in range(0, 40, 8)])
        return Learner(nn.Linear(4, 3), dls, lr=0.1, plugins=list(plugins))
    kwargs.setdefault("bs", 8)
    return tiny_learner(
        plugins, n_train=40, n_valid=8, defaults=True, from_datasets=True, loader_seed=3, **kwargs
    )


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
