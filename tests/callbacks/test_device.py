"""Device and to_device: nested batches and the model move; a clear error without CUDA; a GPU fit.

On a CPU-only machine the ``meta`` device stands in for an accelerator: moving to it really
changes every tensor's device, so the tests can tell a moved batch from one left in place.
"""

from __future__ import annotations

import copy
import io
from collections import namedtuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import Accuracy, DataLoaders, Device, Learner, ProgressBar, hookimpl
from pluglearn.batches import to_device

META = torch.device("meta")
Pair = namedtuple("Pair", ["left", "right"])
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")


def tensors_in(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from tensors_in(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from tensors_in(o)


# ----------------------------------------------------------------------------------- to_device


def test_to_device_moves_tensors_nested_in_tuples_lists_dicts_and_namedtuples():
    a, b, c, d = torch.ones(2), torch.zeros(3, dtype=torch.long), torch.arange(4.0), torch.eye(2)
    batch = {"x": (a, [b, 7, "label"]), "pair": Pair(c, {"deep": d}), "none": None}
    moved = to_device(batch, META)

    assert all(t.device == META for t in tensors_in(moved))
    assert len(list(tensors_in(moved))) == 4
    assert type(moved["x"]) is tuple and type(moved["x"][1]) is list
    assert type(moved["pair"]) is Pair and moved["pair"]._fields == ("left", "right")
    assert moved["x"][1][1:] == [7, "label"] and moved["none"] is None
    for before, after in zip(tensors_in(batch), tensors_in(moved), strict=True):
        assert (before.shape, before.dtype) == (after.shape, after.dtype)
        assert before.device.type == "cpu"  # the input is left as it was


def test_to_device_keeps_values():
    x = torch.randn(3, 2)
    moved = to_device([(x, {"y": x * 2})], torch.device("cpu"))
    assert torch.equal(moved[0][0], x) and torch.equal(moved[0][1]["y"], x * 2)


# -------------------------------------------------------------------------------------- Device


class DictModel(nn.Module):
    """A model whose input is a dict, to check that nested batches reach it moved."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 2)

    def forward(self, inputs):
        return self.lin(inputs["x"])


class Probe:
    """Records where the batch and the predictions are."""

    def __init__(self) -> None:
        self.batch_devices: list[torch.device] = []
        self.pred_devices: list[torch.device] = []

    @hookimpl
    def before_batch(self, learn):
        self.batch_devices += [t.device for t in tensors_in(learn.batch)]

    @hookimpl
    def after_pred(self, learn):
        self.pred_devices.append(learn.preds.device)


def dict_batches(n: int = 8, bs: int = 4):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g)
    return [({"x": x[i : i + bs]}, y[i : i + bs]) for i in range(0, n, bs)]


def test_device_moves_the_model_and_every_batch_before_other_plugins_see_it():
    probe = Probe()  # listed first: Device's before_batch is tryfirst, so the probe sees moved data
    learn = Learner(
        DictModel(),
        DataLoaders(dict_batches(), dict_batches()),
        plugins=[probe, Device("meta")],
        defaults=False,
    )
    learn.fit(1)
    assert all(p.device == META for p in learn.model.parameters())
    assert probe.batch_devices and all(d == META for d in probe.batch_devices)
    assert probe.pred_devices == [META] * 4  # 2 training and 2 validation batches


def test_device_moves_the_model_for_a_standalone_validation():
    probe = Probe()
    learn = Learner(
        DictModel(),
        DataLoaders(dict_batches(), dict_batches()),
        plugins=[probe, Device("meta")],
        defaults=False,
    )
    learn.validate()
    assert all(p.device == META for p in learn.model.parameters())
    assert probe.pred_devices == [META] * 2


def test_device_cpu_fit_matches_a_plain_fit():
    probe = Probe()
    model = DictModel()
    ref = copy.deepcopy(model)
    silent = ProgressBar(file=io.StringIO())
    learn = Learner(
        model,
        DataLoaders(dict_batches(), dict_batches()),
        plugins=[probe, Device("cpu"), Accuracy(), silent],
    )
    learn.fit(2)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(d.type == "cpu" for d in probe.batch_devices + probe.pred_devices)

    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(2):
        for xb, yb in dict_batches():
            F.cross_entropy(ref(xb), yb).backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_device_cuda_without_cuda_is_a_clear_error(name):
    with pytest.raises(ValueError, match="CUDA is not available on this machine") as info:
        Device(name)
    assert "Device('cpu')" in str(info.value)


@no_cuda
def test_default_device_is_the_cpu_without_an_accelerator():
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        pytest.skip("MPS is available here")
    assert Device().device == torch.device("cpu")


@needs_cuda
def test_fit_on_cuda_puts_parameters_and_predictions_on_the_gpu():
    probe = Probe()
    model = DictModel()
    ref = copy.deepcopy(model)
    learn = Learner(
        model,
        DataLoaders(dict_batches(), dict_batches()),
        plugins=[probe, Device("cuda"), Accuracy(), ProgressBar(file=io.StringIO())],
    )
    learn.fit(2)
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert probe.pred_devices and all(d.type == "cuda" for d in probe.pred_devices)
    assert all(d.type == "cuda" for d in probe.batch_devices)
    preds, targets = learn.get_preds()
    assert preds.device.type == "cuda" and targets.device.type == "cuda"
    assert isinstance(learn.metrics["accuracy"], float)

    opt = torch.optim.SGD(ref.parameters(), lr=0.1)  # the same steps on the CPU
    for _ in range(2):
        for xb, yb in dict_batches():
            F.cross_entropy(ref(xb), yb).backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.cpu(), q, rtol=1e-4, atol=1e-5)
