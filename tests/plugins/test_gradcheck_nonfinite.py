"""GradCheck with NaN and infinite gradients: a gradient that cannot be compared never passes.

Every way GradCheck compares is covered: manual mode with a scratch loss (the loss's own ``bwd``
is checked), manual mode with a plain callable loss (autograd seeds ``model.out.g``), float32
and float64, and numeric mode (autograd against central differences). In each, a backward that
writes NaN, +inf or -inf into one entry of one gradient must fail that row, and an oracle
(autograd's own gradient) that is non-finite must fail too. A comparison written as
``not err > tol`` instead of ``err <= tol`` lets a NaN error through: these tests catch it.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import DataLoaders, Learner
from pluglearn.plugins.gradcheck import GradCheck, GradCheckError, GradCheckWarning
from pluglearn.scratch import CrossEntropy, Linear, Module, Parameter, Sequential
from tests.helpers import batches, tiny_data

BAD = [math.nan, math.inf, -math.inf]
BAD_IDS = ["nan", "+inf", "-inf"]


def _poison(t: torch.Tensor, value: float) -> torch.Tensor:
    """``t`` with its first entry replaced by ``value``; the rest stays right."""
    t = t.clone()
    t.view(-1)[0] = value
    return t


class PoisonedLinear(Linear):
    """A right ``bwd``, then ``value`` written into one entry of the gradient ``which``."""

    def __init__(self, *args, which: str, value: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.which, self.value = which, value

    def bwd(self, out, x):
        super().bwd(out, x)
        t = {"w": self.w, "b": self.b, "x": x}[self.which]
        t.g = _poison(t.g, self.value)


class PoisonedCrossEntropy(CrossEntropy):
    """The loss's own ``bwd`` writes ``value`` into dL/dlogits."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def bwd(self, out, logits, target):
        super().bwd(out, logits, target)
        logits.g = _poison(logits.g, self.value)


class SqrtGain(Module):
    """``x * sqrt(s)`` with a gain ``s`` that starts at 0 in its first entry, where
    d sqrt(s)/ds is infinite: autograd's own gradient of ``s`` is non-finite there.
    ``finite=True`` makes the manual ``bwd`` clamp it (so the two disagree at infinity)."""

    def __init__(self, n: int, dtype: torch.dtype, finite: bool = False) -> None:
        super().__init__()
        self.s = Parameter(torch.linspace(0.0, 1.0, n, dtype=dtype))
        self.finite = finite

    def forward(self, x):
        return x * self.s.sqrt()

    def bwd(self, out, x):
        x.g = out.g * self.s.sqrt()
        ds = (out.g * x).sum(0) / (2 * self.s.sqrt())  # +-inf where s == 0
        self.s.g = ds.nan_to_num(posinf=1e3, neginf=-1e3) if self.finite else ds

    def extra_repr(self) -> str:
        return f"n={self.s.numel()}"


def _net(
    layer: str = "last", which: str = "w", value: float = math.nan, dtype=torch.float32
) -> Sequential:
    """Linear(4, 5) -> Linear(5, 3) on a fixed seed; ``layer`` names the poisoned one."""
    g = torch.Generator().manual_seed(0)

    def linear(n_in: int, n_out: int, poisoned: bool) -> Linear:
        if poisoned:
            return PoisonedLinear(n_in, n_out, generator=g, dtype=dtype, which=which, value=value)
        return Linear(n_in, n_out, generator=g, dtype=dtype)

    first, last = linear(4, 5, layer == "first"), linear(5, 3, layer == "last")
    return Sequential(first, last).requires_grad_(True)


# Not the shared make_learner: the data in the test's dtype (float64 checks).
def _learner(model, plugins, loss_func, dtype=torch.float32, n_train: int = 8) -> Learner:
    x, y = tiny_data(n_train + 4)
    x = x.to(dtype)
    dls = DataLoaders(batches(x[:n_train], y[:n_train], 4), batches(x[n_train:], y[n_train:], 4))
    return Learner(model, dls, loss_func=loss_func, lr=0.1, plugins=plugins, defaults=False)


def _failed(check: GradCheck) -> list[str]:
    return [r.name for r in check.results if not r.ok]


# ----------------------------------------------------------------------------- manual mode


@pytest.mark.parametrize("value", BAD, ids=BAD_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("loss", ["scratch", "autograd"])
@pytest.mark.parametrize(
    ("layer", "which", "row"),
    [("last", "w", "1.w"), ("last", "b", "1.b"), ("first", "w", "0.w"), ("first", "x", "input")],
)
def test_manual_mode_fails_a_non_finite_gradient(value, dtype, loss, layer, which, row):
    check = GradCheck(show=False)
    loss_func = CrossEntropy() if loss == "scratch" else F.cross_entropy
    model = _net(layer, which, value, dtype)
    index = 1 if layer == "last" else 0
    blamed = rf"^{re.escape(row)} of .*: check PoisonedLinear\.bwd \(module '{index}'\)"
    with pytest.raises(GradCheckError, match=blamed):
        _learner(model, [check], loss_func, dtype).fit(1)
    bad = {r.name: r for r in check.results}[row]
    assert not bad.ok
    assert math.isnan(bad.max_abs) if math.isnan(value) else bad.max_abs == math.inf
    if which != "x":  # a poisoned x.g only reaches the rows before it (here: the input)
        assert _failed(check) == [row]


@pytest.mark.parametrize("value", BAD, ids=BAD_IDS)
def test_manual_mode_fails_a_non_finite_loss_gradient_and_blames_the_loss(value):
    check = GradCheck(show=False)
    with pytest.raises(GradCheckError, match=r"check PoisonedCrossEntropy\.bwd \(module 'learn"):
        _learner(_net(layer="none"), [check], PoisonedCrossEntropy(value)).fit(1)
    assert _failed(check)  # the poisoned dL/dlogits spoils the rows it reaches


@pytest.mark.parametrize("value", BAD, ids=BAD_IDS)
def test_warn_mode_reports_a_non_finite_gradient_on_every_checked_batch(value):
    check = GradCheck(every=1, on_fail="warn", show=False)
    with pytest.warns(GradCheckWarning, match=r"^1\.w of PoisonedLinear") as record:
        _learner(_net("last", "w", value), [check], CrossEntropy()).fit(1)
    assert len(record) == 2  # two training batches, both checked, both failed
    assert [(r.batch, r.name) for r in check.results if not r.ok] == [(0, "1.w"), (1, "1.w")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("loss", ["scratch", "autograd"])
def test_manual_mode_fails_when_autograds_own_gradient_is_infinite(dtype, loss):
    """Both sides give the same +-inf: nothing can be compared, so the row fails."""
    g = torch.Generator().manual_seed(0)
    model = Sequential(Linear(4, 3, generator=g, dtype=dtype), SqrtGain(3, dtype))
    model.requires_grad_(True)
    check = GradCheck(show=False)
    loss_func = CrossEntropy() if loss == "scratch" else F.cross_entropy
    with pytest.raises(GradCheckError, match=r"1\.s of SqrtGain"):
        _learner(model, [check], loss_func, dtype).fit(1)
    assert "1.s" in _failed(check)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("loss", ["scratch", "autograd"])
def test_manual_mode_fails_a_finite_gradient_against_an_infinite_oracle(dtype, loss):
    """autograd's dL/ds[0] is infinite, the manual one is clamped to a finite value: the
    tolerance atol + rtol * max|ref| would be infinite too, so only refusing the oracle fails it."""
    g = torch.Generator().manual_seed(0)
    model = Sequential(Linear(4, 3, generator=g, dtype=dtype), SqrtGain(3, dtype, finite=True))
    model.requires_grad_(True)
    check = GradCheck(show=False)
    loss_func = CrossEntropy() if loss == "scratch" else F.cross_entropy
    with pytest.raises(GradCheckError, match=r"^1\.s of SqrtGain.*\(oracle not finite: autograd"):
        _learner(model, [check], loss_func, dtype).fit(1)
    assert _failed(check) == ["1.s"]
    row = {r.name: r for r in check.results}["1.s"]
    assert row.max_abs == math.inf and "oracle not finite" in row.note


def test_an_infinite_oracle_fails_in_warn_mode_too():
    g = torch.Generator().manual_seed(0)
    model = Sequential(Linear(4, 3, generator=g), SqrtGain(3, torch.float32, finite=True))
    model.requires_grad_(True)
    check = GradCheck(every=1, on_fail="warn", show=False)
    with pytest.warns(GradCheckWarning, match=r"oracle not finite") as record:
        _learner(model, [check], CrossEntropy()).fit(1)
    assert record  # later batches may fail too: the step moves s[0] off 0 (NaN from sqrt)
    first = [r for r in check.results if r.batch == 0 and not r.ok]
    assert [r.name for r in first] == ["1.s"] and "oracle not finite" in first[0].note


# ----------------------------------------------------------------------------- numeric mode


class _PoisonedScale(torch.autograd.Function):
    """y = x * w with a right backward, except ``value`` written into dL/dw: its first entry,
    or every entry with ``everywhere`` (so a sampled check meets it whichever entry it draws)."""

    @staticmethod
    def forward(ctx, x, w, value, everywhere):
        ctx.save_for_backward(x, w)
        ctx.value, ctx.everywhere = value, everywhere
        return x * w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gw = (g * x).sum(0)
        gw = torch.full_like(gw, ctx.value) if ctx.everywhere else _poison(gw, ctx.value)
        return g * w, gw, None, None


class PoisonedScale(nn.Module):
    def __init__(self, n: int, value: float, everywhere: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, n))
        self.value, self.everywhere = value, everywhere

    def forward(self, x):
        return _PoisonedScale.apply(x, self.weight, self.value, self.everywhere)


class TorchSqrtGain(nn.Module):
    """``x * sqrt(s)`` with ``s[0] = 0``: autograd gives +-inf, differences give NaN."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.linspace(0.0, 1.0, n))

    def forward(self, x):
        return x * self.s.sqrt()


def _torch_net(middle: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), middle, nn.Linear(5, 3))


@pytest.mark.parametrize("value", BAD, ids=BAD_IDS)
@pytest.mark.parametrize("n_entries", [32, 2], ids=["every-entry", "sampled"])
def test_numeric_mode_fails_a_non_finite_autograd_backward(value, n_entries):
    check = GradCheck(mode="numeric", n_entries=n_entries, show=False)
    model = _torch_net(PoisonedScale(5, value, everywhere=n_entries < 5))
    with pytest.raises(GradCheckError, match=r"^2\.weight of PoisonedScale"):
        _learner(model, [check], F.cross_entropy).fit(1)
    assert _failed(check) == ["2.weight"]
    row = {r.name: r for r in check.results}["2.weight"]
    assert row.checked == min(n_entries, 5)
    assert math.isnan(row.max_abs) if math.isnan(value) else row.max_abs == math.inf


def test_numeric_mode_fails_when_autograds_own_gradient_is_infinite():
    check = GradCheck(mode="numeric", show=False)
    with pytest.raises(GradCheckError, match=r"2\.s of TorchSqrtGain"):
        _learner(_torch_net(TorchSqrtGain(5)), [check], F.cross_entropy).fit(1)
    assert "2.s" in _failed(check)


class Cliff(nn.Module):
    """``x * w``, plus +inf in column 0 as soon as ``w[0]`` is above its starting value: the loss
    at ``w[0] + eps`` is infinite, so the central difference (the oracle) of ``w[0]`` is +inf,
    while autograd's gradient is finite."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(1.0, 1.5, n))
        self.register_buffer("start", self.weight.detach().clone())

    def forward(self, x):
        cliff = torch.zeros_like(self.weight)
        cliff[0] = math.inf if self.weight[0] > self.start[0] else 0.0
        return x * self.weight + cliff


def test_numeric_mode_fails_an_infinite_finite_difference_oracle():
    check = GradCheck(mode="numeric", show=False)
    model = _torch_net(Cliff(5))
    oracle = "finite differences gave NaN or inf"
    with pytest.raises(
        GradCheckError, match=rf"^2\.weight of Cliff.*\(oracle not finite: {oracle}"
    ):
        _learner(model, [check], lambda out, y: out.pow(2).mean()).fit(1)
    assert _failed(check) == ["2.weight"]
    row = {r.name: r for r in check.results}["2.weight"]
    assert row.max_abs == math.inf  # autograd finite, oracle +inf


def test_finite_oracles_carry_no_oracle_note():
    """The note is about the oracle only: a right backward gets none, a wrong finite one
    fails without it."""
    check = GradCheck(mode="numeric", show=False)
    _learner(_torch_net(nn.Tanh()), [check], F.cross_entropy).fit(1)
    assert check.results and all(r.ok and r.note == "" for r in check.results)
