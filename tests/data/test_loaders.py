"""DataLoaders.from_datasets as users meet it: reproducible without a seed, numpy arrays, bad
arguments named, and a resume that refuses loader settings other than the checkpoint's."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import pluglearn
from pluglearn import DataLoaders, Learner, hookimpl
from pluglearn.checkpoint.plugin import Checkpoint
from pluglearn.data.loaders import TensorBatchLoader
from tests import processes

# ----------------------------------------------------------------------------- no seed given

SCRIPT = textwrap.dedent(
    """
    import hashlib, torch
    from torch import nn
    from pluglearn import DataLoaders, Learner

    torch.manual_seed(0)
    x, y = torch.randn(48, 4), torch.randint(0, 3, (48,))
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 3))
    dls = DataLoaders.from_datasets((x[:40], y[:40]), (x[40:], y[40:]), 8)  # no seed
    Learner(model, dls, defaults=False).fit(2)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    print(hashlib.sha256(flat.numpy().tobytes()).hexdigest())
    """
)


def _run_script() -> str:
    env = {**os.environ, "PYTHONPATH": str(Path(pluglearn.__file__).parents[1])}
    done = processes.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.slow
def test_a_seeded_script_without_a_loader_seed_gives_the_same_weights_in_two_processes():
    first, second = _run_script(), _run_script()
    assert len(first) == 64
    assert first == second


def _fit_without_loader_seed() -> list[torch.Tensor]:
    torch.manual_seed(0)
    x, y = torch.randn(48, 4), torch.randint(0, 3, (48,))
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 3))
    dls = DataLoaders.from_datasets((x[:40], y[:40]), (x[40:], y[40:]), 8)
    Learner(model, dls, defaults=False).fit(2)
    return [p.detach().clone() for p in model.parameters()]


def test_the_same_script_twice_in_one_process_gives_the_same_weights():
    first, second = _fit_without_loader_seed(), _fit_without_loader_seed()
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_from_datasets_without_a_seed_does_not_reseed_the_global_generator():
    torch.manual_seed(123)
    DataLoaders.from_datasets((torch.zeros(4, 2), torch.zeros(4)), batch_size=2)
    assert torch.initial_seed() == 123  # torch.seed() would have replaced it


# ----------------------------------------------------------------------------- numpy arrays


def _blobs(n: int = 60, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 4)) + y[:, None]
    return x.astype(dtype), y


def _fit(train, valid, model: nn.Module) -> Learner:
    dls = DataLoaders.from_datasets(train, valid, 8, seed=0)
    learn = Learner(model, dls, defaults=False)
    learn.fit(2)
    return learn


def test_numpy_arrays_train_exactly_like_the_same_tensors():
    x, y = _blobs()
    torch.manual_seed(0)
    from_numpy = _fit((x[:48], y[:48]), (x[48:], y[48:]), nn.Linear(4, 3))
    torch.manual_seed(0)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    from_tensors = _fit((tx[:48], ty[:48]), (tx[48:], ty[48:]), nn.Linear(4, 3))
    for a, b in zip(from_numpy.model.parameters(), from_tensors.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(from_numpy.get_preds()[0], from_tensors.get_preds()[0])


def test_numpy_float64_keeps_its_precision_with_a_float64_model():
    x, y = _blobs(dtype="float64")
    model = nn.Linear(4, 3).double()
    learn = _fit((x, y), None, model)
    inputs, labels = learn.dls.train_ds
    assert inputs.dtype == torch.float64 and labels.dtype == torch.int64
    assert np.array_equal(inputs.numpy(), x)  # the very values, not rounded to float32


def test_numpy_float64_with_a_float32_model_names_the_fix_before_training():
    x, y = _blobs(dtype="float64")
    model = nn.Linear(4, 3)
    before = [p.detach().clone() for p in model.parameters()]
    dls = DataLoaders.from_datasets((x, y), None, 8, seed=0)
    with pytest.raises(TypeError, match=r"float64.*float32") as info:
        Learner(model, dls, defaults=False).fit(1)
    assert "X.astype('float32')" in str(info.value) and "model.double()" in str(info.value)
    for a, b in zip(before, model.parameters(), strict=True):
        assert torch.equal(a, b)  # refused before any step


@pytest.mark.parametrize(
    ("train", "error", "match"),
    [
        (np.zeros((8, 4), "float32"), TypeError, r"single array.*\(X, y\)"),
        (torch.zeros(8, 4), TypeError, r"single tensor.*\(X, y\)"),
        ((np.zeros((8, 4), "float32"), [0] * 8), TypeError, r"train_ds\[1\] is a list.*asarray"),
        ((np.zeros((8, 4), "float32"), np.zeros(7, "int64")), ValueError, "different lengths"),
        ((np.array([["a"]] * 8, dtype=object), np.zeros(8)), TypeError, "dtype object"),
        ((np.array(1.0), np.zeros(8)), ValueError, "single number"),
    ],
)
def test_bad_dataset_shapes_are_refused_when_the_loaders_are_made(train, error, match):
    with pytest.raises(error, match=match):
        DataLoaders.from_datasets(train, batch_size=4)


# ----------------------------------------------------------------------------- bad settings


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"valid_batch_size": 0}, r"valid_batch_size must be a positive int, got 0.*None"),
        ({"valid_batch_size": -2}, r"valid_batch_size must be a positive int"),
        ({"seed": "0"}, r"seed must be an int, got '0'.*int\(seed\)"),
        ({"seed": 1.5}, r"seed must be an int, got 1.5"),
        ({"seed": True}, r"seed must be an int, got True"),
        ({"seed": 2**64}, r"seed must lie in"),
        ({"drop_last": "yes"}, r"drop_last must be True or False"),
    ],
)
def test_bad_loader_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataLoaders.from_datasets((torch.zeros(8, 2), torch.zeros(8)), None, 4, **kwargs)


def test_a_numpy_integer_seed_is_the_same_seed():
    data = (torch.arange(10.0).unsqueeze(1), torch.arange(10))
    a = DataLoaders.from_datasets(data, seed=np.int64(3))
    b = DataLoaders.from_datasets(data, seed=3)
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


# ----------------------------------------------------------------------------- resume settings


class _Preempted:
    """Dies after training batch ``at`` (0-based) of the first epoch, like a killed job."""

    def __init__(self, at: int) -> None:
        self.at = at

    @hookimpl
    def after_batch(self, learn):
        if learn.training and learn.epoch == 0 and learn.iter == self.at:
            raise RuntimeError("preempted")


# Not the shared make_learner: blob data of its own and a dropout MLP.
def _learner(directory: Path, bs: int, drop_last: bool = False, n: int = 60) -> Learner:
    torch.manual_seed(0)
    x, y = map(torch.from_numpy, _blobs(n + 12))
    dls = DataLoaders.from_datasets((x[:n], y[:n]), (x[n:], y[n:]), bs, drop_last=drop_last, seed=1)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.25), nn.Linear(8, 3))
    return Learner(model, dls, plugins=[Checkpoint(directory, every_n_batches=1)], defaults=False)


def test_resume_with_the_same_settings_is_bit_identical(tmp_path):
    reference = _learner(tmp_path / "reference", 8)
    reference.fit(2)
    with pytest.raises(RuntimeError, match="preempted"):
        _learner(tmp_path / "run", 8).fit(2, plugins=[_Preempted(3)])
    resumed = _learner(tmp_path / "run", 8)
    resumed.fit(2, resume_from=tmp_path / "run")
    for a, b in zip(reference.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("saved", "now", "match"),
    [
        (
            {"bs": 8},
            {"bs": 16},
            r"batch_size=8 \(this one has batch_size=16\).*Resume with batch_size=8",
        ),
        ({"bs": 8}, {"bs": 16, "drop_last": True}, r"batch_size=8 .*drop_last=False"),
        (
            {"bs": 8},
            {"bs": 8, "drop_last": True},
            r"drop_last=False \(this one has drop_last=True\)",
        ),
    ],
)
def test_resume_with_other_loader_settings_is_refused(tmp_path, saved, now, match):
    with pytest.raises(RuntimeError, match="preempted"):
        _learner(tmp_path, saved["bs"]).fit(2, plugins=[_Preempted(3)])
    other = _learner(tmp_path, now["bs"], now.get("drop_last", False))
    with pytest.raises(ValueError, match=match) as info:
        other.fit(2, resume_from=tmp_path)
    assert "start a new run" in str(info.value)


def test_loader_state_records_its_order_settings_and_an_item_cursor():
    loader = TensorBatchLoader((torch.arange(20.0), torch.arange(20)), 8, shuffle=True)
    batches = iter(loader)
    next(batches)
    state = loader.state_dict()
    assert (state["cursor"], state["batch_size"], state["drop_last"], state["shuffle"]) == (
        8,
        8,
        False,
        True,
    )
    assert state["n"] == 20


def test_an_old_loader_state_in_batches_still_resumes():
    def loader():
        return TensorBatchLoader((torch.arange(20.0), torch.arange(20)), 4, shuffle=True)

    whole = loader()
    want = [yb for _, yb in whole]
    cut = loader()
    batches = iter(cut)
    next(batches), next(batches)
    state = cut.state_dict()
    old = {k: state[k] for k in ("n", "epoch_rng", "rng")} | {"position": 2}
    resumed = loader()
    resumed.load_state_dict(old)
    assert all(torch.equal(a, b) for a, b in zip([yb for _, yb in resumed], want[2:], strict=True))


def test_a_refused_loader_state_changes_nothing():
    loader = TensorBatchLoader((torch.arange(20.0), torch.arange(20)), 4, shuffle=True)
    iter_ = iter(loader)
    next(iter_)
    state = loader.state_dict()
    fresh = TensorBatchLoader((torch.arange(20.0), torch.arange(20)), 4, shuffle=True)
    before = fresh.state_dict()
    for bad in (
        {**state, "batch_size": 5},
        {k: v for k, v in state.items() if k != "rng"},
        {**state, "cursor": 20},
    ):
        with pytest.raises(ValueError, match=r"batch_size=5|generator states|outside 0\.\.19"):
            fresh.load_state_dict(bad)
        after = fresh.state_dict()
        assert after["cursor"] == before["cursor"] == 0
        assert torch.equal(after["rng"], before["rng"])


# ----------------------------------------------------------------------------- no data at all


def test_dataloaders_for_inference_predict_by_the_item_shape_and_refuse_to_fit():
    learn = Learner(nn.Linear(4, 2), DataLoaders.for_inference(item_shape=[4]), defaults=False)
    x = torch.randn(3, 4)
    with torch.no_grad():
        one, batch = learn.model(x[:1])[0], learn.model(x)
    assert torch.equal(learn.predict(x[0]), one)  # one item: no batch dimension
    assert torch.equal(learn.predict(x), batch)
    with pytest.raises(ValueError, match="no training data"):
        learn.fit(1)
    for bad in ((4.0,), 4, (-1,), (True,)):
        with pytest.raises(ValueError, match=r"item_shape must be a sequence of ints >= 0"):
            DataLoaders.for_inference(item_shape=bad)
