"""Resume bookkeeping as a user meets it: positions, lr, checks before any change, bad losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import CheckpointError, DataLoaders, Learner, hookimpl
from pluglearn.checkpoint.files import checkpoints_in, load_checkpoint, save_checkpoint
from pluglearn.checkpoint.plugin import Checkpoint
from tests.helpers import CrashAt, tiny_data

N, BS = 40, 8  # 5 training batches an epoch


def learner(plugins=(), lr=0.1, bs=BS):
    torch.manual_seed(0)
    x, y = tiny_data(N + 8)
    dls = DataLoaders.from_datasets((x[:N], y[:N]), (x[N:], y[N:]), batch_size=bs, seed=3)
    return Learner(nn.Linear(4, 3), dls, lr=lr, plugins=plugins)


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


@pytest.mark.parametrize(("key", "value"), [("epoch", -1), ("position", -3), ("train_iter", 1.5)])
@pytest.mark.slow
def test_a_crafted_loop_position_is_refused(tmp_path, key, value):
    crashed_run(tmp_path)
    state = load_checkpoint(checkpoints_in(tmp_path)[-1])
    state["loop"][key] = value
    bad = save_checkpoint(state, tmp_path / "bad" / "crafted.pt")
    with pytest.raises(CheckpointError, match=rf"loop\['{key}'\] = {value}, not an int >= 0"):
        learner().fit(4, resume_from=bad)


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
def test_missing_ok_starts_fresh_then_resumes_once_a_checkpoint_exists(tmp_path):
    fresh = learner()
    with pytest.warns(UserWarning, match="starting a fresh run"):
        fresh.fit(4, resume_from=tmp_path / "ckpt", missing_ok=True)
    whole = learner()
    whole.fit(4)
    assert all(torch.equal(a, b) for a, b in zip(weights(fresh), weights(whole), strict=True))
    with pytest.raises(ValueError, match="missing_ok=True goes with resume_from"):
        learner().fit(1, missing_ok=True)


def test_a_loss_that_is_not_one_number_is_named_as_such_not_blamed_on_a_metric():
    learn = learner()
    learn.loss_func = lambda preds, y: F.cross_entropy(preds, y, reduction="none")
    with pytest.raises(ValueError, match=r"the loss has shape \(8,\).*reduction='mean'") as info:
        learn.fit(1)
    assert "AvgLoss" not in "\n".join(info.value.__notes__)


def test_regression_targets_that_would_broadcast_are_refused():
    torch.manual_seed(0)
    x = torch.randn(32, 3)
    y = x.sum(1)  # shape (32,), the model returns (32, 1)
    learn = Learner(nn.Linear(3, 1), DataLoaders.from_datasets((x, y), batch_size=8), F.mse_loss)
    with pytest.raises(ValueError, match=r"\(8, 1\) and float targets of shape \(8,\).*\(8, 8\)"):
        learn.fit(1)
    ok = Learner(
        nn.Linear(3, 1), DataLoaders.from_datasets((x, y[:, None]), batch_size=8), F.mse_loss
    )
    ok.fit(1)  # the same data with matching shapes trains


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
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the Checkpoint plugin's own state is no reason to warn
        learner().fit(4, resume_from=tmp_path, plugins=[EarlyStopping("valid_loss", patience=9)])
