"""Checkpoint keys without wrapper prefixes: a fit on ``torch.compile(model)`` resumes into the
plain model and the reverse, bit-identical to an uninterrupted run."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from pluglearn import Checkpoint, CheckpointError, DataLoaders, Learner
from pluglearn.checkpoint.files import checkpoints_in, load_checkpoint, save_checkpoint
from tests.helpers import CrashAt, tiny_data

N_EPOCHS = 3
X, Y = tiny_data(48)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def eager(model: nn.Module) -> nn.Module:
    return torch.compile(model, backend="eager")


# Not the shared make_learner: the data in the test's dtype, its model.
def learner(model: nn.Module, dtype: torch.dtype = torch.float32) -> Learner:
    x = X.to(dtype)
    dls = DataLoaders.from_datasets((x[:40], Y[:40]), (x[40:], Y[40:]), batch_size=8, seed=3)
    momentum = functools.partial(torch.optim.SGD, momentum=0.9)  # optimizer state by index
    return Learner(model, dls, opt_func=momentum, lr=0.1, defaults=False)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    inner = getattr(model, "_orig_mod", model)
    return {k: v.detach().clone() for k, v in inner.state_dict().items()}


def uninterrupted() -> dict[str, torch.Tensor]:
    learn = learner(make_model())
    learn.fit(N_EPOCHS)
    return weights(learn.model)


def crash(model: nn.Module, directory, dtype: torch.dtype = torch.float32) -> None:
    with pytest.raises(RuntimeError, match="killed"):
        learner(model, dtype).fit(
            N_EPOCHS, plugins=[Checkpoint(directory, every_n_batches=1), CrashAt(1, 2)]
        )


@pytest.mark.parametrize(
    ("saved_from", "resumed_into"), [(eager, lambda m: m), (lambda m: m, eager)]
)
@pytest.mark.slow
def test_a_compiled_fit_and_its_plain_model_resume_each_others_checkpoints(
    tmp_path, saved_from, resumed_into
):
    crash(saved_from(make_model()), tmp_path)
    state = load_checkpoint(checkpoints_in(tmp_path)[-1])
    assert sorted(state["model"]) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert state["opt"]["state"][0]["momentum_buffer"].shape == (8, 4)  # keyed by index
    resumed = learner(resumed_into(make_model()))
    resumed.fit(N_EPOCHS, resume_from=tmp_path)
    expected = uninterrupted()
    got = weights(resumed.model)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_a_checkpoint_with_prefixed_keys_resumes_into_the_plain_model(tmp_path):
    """Checkpoints written before keys were normalised hold ``_orig_mod.`` keys."""
    crash(make_model(), tmp_path)
    newest = checkpoints_in(tmp_path)[-1]
    state = load_checkpoint(newest)
    state["model"] = {f"_orig_mod.{k}": v for k, v in state["model"].items()}
    old = save_checkpoint(state, tmp_path / "old" / newest.name)
    resumed = learner(make_model())
    resumed.fit(N_EPOCHS, resume_from=old)
    expected = uninterrupted()
    assert all(torch.equal(weights(resumed.model)[k], v) for k, v in expected.items())


def test_a_checkpoint_of_another_dtype_that_would_lose_values_is_refused(tmp_path):
    crash(make_model().double(), tmp_path, torch.float64)
    learn = learner(make_model())
    before = weights(learn.model)
    with pytest.raises(CheckpointError, match=r"0.weight float64 -> float32.*model.to\("):
        learn.fit(N_EPOCHS, resume_from=tmp_path)
    assert all(torch.equal(weights(learn.model)[k], v) for k, v in before.items())


@pytest.mark.slow
def test_a_fit_compiled_by_inductor_resumes_into_the_plain_model(tmp_path):
    """The default backend: its fused kernels may round differently from eager ones, so the
    plain continuation is compared with an uninterrupted compiled run within float32 rounding
    (the exact comparisons are the eager tests above)."""
    crash(torch.compile(make_model()), tmp_path)
    assert "0.weight" in load_checkpoint(checkpoints_in(tmp_path)[-1])["model"]
    whole = learner(torch.compile(make_model()))
    whole.fit(N_EPOCHS)
    plain = learner(make_model())
    plain.fit(N_EPOCHS, resume_from=tmp_path)
    expected = weights(whole.model)
    assert all(torch.allclose(weights(plain.model)[k], v, atol=1e-6) for k, v in expected.items())
