"""All four recipes together, killed mid-epoch and resumed in a fresh Learner: bit-identical.

The kill is a Crash plugin raising RuntimeError after a training batch (before that batch's
checkpoint is written), with Checkpoint(every_n_batches=1); the resume builds a new Learner
from scratch, as a restarted process would.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pluglearn import (
    Checkpoint,
    DataLoaders,
    GradientAccumulation,
    GradientClipping,
    Learner,
    MixedPrecision,
    Recorder,
)
from tests.helpers import CrashAt, tiny_data


def learner(plugins=()):
    torch.manual_seed(0)
    x, y = tiny_data(100, seed=11)
    dls = DataLoaders.from_datasets((x[:88], y[:88]), (x[88:], y[88:]), batch_size=8)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3))
    recipes = [
        GradientClipping(0.3),
        MixedPrecision(torch.bfloat16),
        GradientAccumulation(3),
        Recorder(),
    ]
    return Learner(model, dls, plugins=[*recipes, *plugins])


# 11 batches an epoch in groups of 3: cuts inside a group, at a group's end, in the tail
@pytest.mark.parametrize("cut", [(0, 4), (1, 5), (1, 9), (2, 10)])
def test_all_four_recipes_resume_bit_identical(tmp_path, cut):
    done = learner()
    done.fit_one_cycle(3, 0.4)
    with pytest.raises(RuntimeError, match="killed"):
        learner([Checkpoint(tmp_path, every_n_batches=1), CrashAt(*cut)]).fit_one_cycle(3, 0.4)
    resumed = learner([Checkpoint(tmp_path, every_n_batches=1)])
    resumed.fit_one_cycle(3, 0.4, resume_from=tmp_path)
    a, b = done.plugin("Recorder"), resumed.plugin("Recorder")
    assert (a.lrs, a.moms, a.losses) == (b.lrs, b.moms, b.losses)
    assert [e["valid_loss"] for e in a.epochs] == [e["valid_loss"] for e in b.epochs]
    assert (done.opt_steps, resumed.opt_steps) == (12, 12)
    for p, q in zip(done.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
