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


@pytest.fixture
def learner(make_learner):
    """The shared tiny Learner with the default plugins, the recipes and a Recorder: a dropout
    MLP on 88 shuffled training items of ``tiny_data(100, seed=11)`` in batches of 8, 12
    validating."""

    def build(plugins=()):
        recipes = [
            GradientClipping(0.3),
            MixedPrecision(torch.bfloat16),
            GradientAccumulation(3),
            Recorder(),
        ]
        return make_learner(
            [*recipes, *plugins],
            n_train=88,
            n_valid=12,
            bs=8,
            defaults=True,
            data_seed=11,
            from_datasets=True,
            model=lambda: nn.Sequential(
                nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3)
            ),
        )

    return build


# 11 batches an epoch in groups of 3: cuts inside a group, at a group's end, in the tail
@pytest.mark.parametrize("cut", [(0, 4), (1, 5), (1, 9), (2, 10)])
@pytest.mark.slow
def test_all_four_recipes_resume_bit_identical(tmp_path, cut, learner):
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


@pytest.fixture
def fp16_learner(make_learner):
    """float16 on the CPU with a GradScaler whose scale moves during the run: it starts too
    high (overflows: skipped steps, backoff) and grows every 3 good steps. The shared tiny
    Learner with the default plugins and a Recorder, an MLP on the data of ``learner``."""

    def build(plugins=(), dtype=torch.float16):
        scaling = {"init_scale": 2.0**30, "growth_interval": 3} if dtype == torch.float16 else {}
        precision = MixedPrecision(dtype, **scaling)
        return make_learner(
            [precision, Recorder(), *plugins],
            n_train=88,
            n_valid=12,
            bs=8,
            defaults=True,
            data_seed=11,
            from_datasets=True,
            lr=0.3,
            model=lambda: nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3)),
        )

    return build


@pytest.mark.parametrize("cut", [(0, 3), (1, 6)])
@pytest.mark.slow
def test_float16_with_its_scaler_resumes_bit_identical(tmp_path, cut, fp16_learner):
    done = fp16_learner()
    done.fit(3)
    scales = done.plugin("MixedPrecision").scaler.state_dict()
    assert scales["scale"] not in (2.0**30,)  # the scale moved: a resume must carry it
    with pytest.raises(RuntimeError, match="killed"):
        fp16_learner([Checkpoint(tmp_path, every_n_batches=1), CrashAt(*cut)]).fit(3)
    resumed = fp16_learner([Checkpoint(tmp_path, every_n_batches=1)])
    resumed.fit(3, resume_from=tmp_path)
    assert resumed.plugin("MixedPrecision").scaler.state_dict() == scales
    a, b = done.plugin("Recorder"), resumed.plugin("Recorder")
    assert a.losses == b.losses
    for p, q in zip(done.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_the_scalers_state_round_trips_through_the_plugins_state(fp16_learner):
    learn = fp16_learner()
    learn.fit(1)
    saved = dict(learn.hooks.call("state_dict", learn=learn))["MixedPrecision"]
    fresh = fp16_learner()
    fresh.fit(0)  # makes the scaler
    fresh.hooks.call("load_state_dict", learn=fresh, state={"MixedPrecision": saved})
    assert fresh.plugin("MixedPrecision").scaler.state_dict() == saved["scaler"]
    assert saved["scaler"]["scale"] != 2.0**30


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.slow
def test_a_mixed_precision_checkpoint_resumed_without_mixed_precision_is_refused(
    tmp_path, dtype, fp16_learner
):
    from pluglearn import CheckpointError

    with pytest.raises(RuntimeError, match="killed"):
        fp16_learner([Checkpoint(tmp_path, every_n_batches=1), CrashAt(1, 2)], dtype).fit(3)
    torch.manual_seed(0)
    x, y = tiny_data(100, seed=11)
    dls = DataLoaders.from_datasets((x[:88], y[:88]), (x[88:], y[88:]), batch_size=8)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3))
    plain = Learner(model, dls, lr=0.3, plugins=[Recorder()])
    with pytest.raises(CheckpointError, match="holds the state of MixedPrecision"):
        plain.fit(3, resume_from=tmp_path)
