"""GradCheck's numeric mode and tolerances, case by case: integer inputs, unused parameters, rows
that name the owner and probe the first items, a scratch loss's memory put back, the global RNG
not drawn, float64 differences, the culprit; the default tolerances of each dtype, relative to the
largest oracle entry, atol alone, an exact match, a gradient never set.

Oracles: autograd functions with hand-made wrong backwards whose culprit is known by
construction, and tolerances computed by hand."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import hookimpl
from pluglearn.plugins.gradcheck import GradCheck, GradCheckError
from pluglearn.plugins.gradcheck_report import (
    GradRow,
    grad_errors,
)
from pluglearn.scratch import CrossEntropy, Linear, Sequential
from tests.helpers import tiny_data
from tests.support.gradcheck import Spare, learner_on, seeded_generator


def test_numeric_mode_leaves_an_integer_input_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))
    ids, y = torch.arange(12) % 10, torch.arange(12) % 3
    check = GradCheck(mode="numeric", show=False)
    learner_on(model, [check], F.cross_entropy, ids, y).fit(1)
    assert [r.name for r in check.results] == ["0.weight", "1.weight", "1.bias"]
    assert all(r.ok for r in check.results)


class Holder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.unused = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return self.lin(x)


def test_numeric_mode_compares_an_unused_parameter_with_zero():
    torch.manual_seed(0)
    check = GradCheck(mode="numeric", show=False)
    learner_on(Holder(), [check], F.cross_entropy).fit(1)
    rows = {r.name: r for r in check.results}
    assert rows["unused"].ok and rows["unused"].max_abs == 0.0


def test_numeric_rows_name_the_owner_and_probe_the_first_four_items():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 9), nn.Tanh()), nn.Linear(9, 3))
    check = GradCheck(mode="numeric", show=False)
    x, y = tiny_data(16)
    learner_on(model, [check], F.cross_entropy, x, y, bs=8).fit(1)
    rows = {r.name: r for r in check.results}
    assert rows["0.0.weight"].module.startswith("Linear(") and rows["1.weight"].module == (
        "Linear(in_features=9, out_features=3, bias=True)"
    )
    assert rows["input"].shape == (4, 4)  # probe=4 items of the batch of 8
    # n_entries=32 by default: 36 weights are sampled, 27 are all checked
    assert (rows["0.0.weight"].checked, rows["1.weight"].checked) == (32, 27)


class LossState:
    """After GradCheck: the scratch loss still holds the training batch's inputs and output."""

    def __init__(self) -> None:
        self.same: list[bool] = []

    @hookimpl
    def after_loss(self, learn):
        f = learn.loss_func
        if learn.training:
            self.same.append(f.out is learn.loss and f.args[0] is learn.preds)


def test_numeric_mode_puts_back_what_a_scratch_loss_remembers():
    torch.manual_seed(0)
    state = LossState()
    learner_on(nn.Linear(4, 3), [GradCheck(mode="numeric", show=False), state], CrossEntropy()).fit(
        1
    )
    assert state.same == [True, True]


class RngProbe:
    def __init__(self, when: str, log: list) -> None:
        self.when, self.log = when, log

    @hookimpl(tryfirst=True)
    def after_loss(self, learn):
        if self.when == "before" and learn.training:
            self.log.append(torch.random.get_rng_state())

    @hookimpl(trylast=True)
    def after_batch(self, learn):
        if self.when == "after" and learn.training:
            self.log.append(torch.random.get_rng_state())


def test_sampling_entries_does_not_draw_the_global_rng():
    torch.manual_seed(0)
    log: list = []
    check = GradCheck(mode="numeric", n_entries=3, every=1, show=False)
    plugins = [RngProbe("before", log), check, RngProbe("after", log)]
    learner_on(nn.Linear(4, 3), plugins, F.cross_entropy).fit(1)
    assert len(log) == 4 and torch.equal(log[0], log[1]) and torch.equal(log[2], log[3])
    assert [r.checked for r in check.results[:2]] == [3, 3]  # 12 weights: 3 sampled


def test_numeric_differences_are_kept_in_float64():
    """For a loss quadratic in the weights, float64 central differences agree with autograd to
    ~1e-12 here (the weights' gradient is about 1, not a float32 number)."""
    torch.manual_seed(0)
    x, _ = tiny_data(12)
    check = GradCheck(mode="numeric", show=False)
    mse = lambda p, t: (p - t).pow(2).mean()  # noqa: E731
    learner_on(nn.Linear(4, 1, bias=False), [check], mse, x, torch.zeros(12, 1)).fit(1)
    weight = {r.name: r for r in check.results}["weight"]
    # float32 differences would be compared in float32 (autograd's value is cast to the oracle's
    # dtype): then they agree exactly (0) or differ by a float32 step (~6e-8), never by ~1e-12
    assert weight.ok and 0 < weight.max_abs < 1e-9


class WrongScaleFn(torch.autograd.Function):
    """y = x * w with both gradients doubled."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return 2 * g * w, 2 * (g * x).sum(0)


class WrongScale(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x):
        return WrongScaleFn.apply(x, self.weight)


class WrongInputFn(torch.autograd.Function):
    """y = 2x whose backward says 3."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        return 3 * g


class WrongInput(nn.Module):
    def forward(self, x):
        return WrongInputFn.apply(x)


def test_numeric_culprit_is_the_last_wrong_parameter_not_the_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), WrongScale(5), nn.Linear(5, 3))
    with pytest.raises(GradCheckError) as info:
        learner_on(model, [GradCheck(mode="numeric", show=False)], F.cross_entropy).fit(1)
    assert "check the backward of WrongScale or of one after it" in str(info.value)


def test_numeric_culprit_when_only_the_input_is_wrong_is_the_first_module():
    torch.manual_seed(0)
    model = nn.Sequential(WrongInput(), nn.Linear(4, 3))
    check = GradCheck(mode="numeric", show=False)
    with pytest.raises(GradCheckError) as info:
        learner_on(model, [check], F.cross_entropy).fit(1)
    assert [r.name for r in check.results if not r.ok] == ["input"]
    assert "check the backward of the first module or of one after it" in str(info.value)


class ScaledW(Linear):
    """dL/dw off by a relative ``error`` (dL/dx and dL/db right)."""

    def __init__(self, *args, error: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.error = error

    def bwd(self, out, x):
        super().bwd(out, x)
        self.w.g = self.w.g * (1 + self.error)


def _w_row(error: float, loss_func=None, dtype=torch.float32, **kwargs) -> GradRow:
    """The row of ``0.w`` on the first checked batch (warnings, if any, recorded and dropped)."""
    model = Sequential(ScaledW(4, 3, generator=seeded_generator(), dtype=dtype, error=error))
    check = GradCheck(show=False, on_fail="warn", **kwargs)
    x, y = tiny_data(12)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        loss_func = loss_func or CrossEntropy()
        learner_on(model.requires_grad_(True), [check], loss_func, x.to(dtype), y).fit(1)
    return {r.name: r for r in check.results if r.batch == 0}["0.w"]


def test_default_tolerances_follow_the_dtype():
    assert not _w_row(1e-3).ok  # float32: rtol 1e-4
    assert _w_row(1e-3, rtol=1e-2).ok  # the user's rtol replaces it
    assert not _w_row(1e-6, dtype=torch.float64).ok  # float64: rtol 1e-9


def test_the_tolerance_is_relative_to_the_largest_oracle_entry():
    """A 0.5 % error passes rtol=1e-2 when the gradients are large (x100 loss): the tolerance
    grows with max |ref|, it does not shrink."""
    big = lambda p, t: 100 * F.cross_entropy(p, t)  # noqa: E731
    row = _w_row(5e-3, loss_func=big, rtol=1e-2, atol=0.0)
    assert row.ok and row.max_abs / row.max_rel > 2  # max |ref| well above 1


def test_atol_alone_can_pass_a_row():
    assert _w_row(1e-3, rtol=0.0, atol=1.0).ok
    assert not _w_row(1e-3, rtol=0.0, atol=1e-9).ok


def test_an_exact_match_passes_a_zero_tolerance():
    model = Sequential(Spare(4, 3, generator=seeded_generator())).requires_grad_(True)
    check = GradCheck(show=False, on_fail="warn", rtol=0.0, atol=0.0)
    with warnings.catch_warnings(record=True):  # float rows may differ in the last bit
        warnings.simplefilter("always")
        learner_on(model, [check], CrossEntropy()).fit(1)
    spare = {r.name: r for r in check.results if r.batch == 0}["0.spare"]
    assert spare.ok and spare.max_abs == 0.0


class ForgetsBias(Linear):
    def bwd(self, out, x):
        super().bwd(out, x)
        self.b.g = None


def test_a_gradient_the_bwd_never_set_is_noted():
    model = Sequential(ForgetsBias(4, 3, generator=seeded_generator())).requires_grad_(True)
    check = GradCheck(show=False)
    with pytest.raises(GradCheckError, match=r"\(no \.g: its bwd never set it\): check"):
        learner_on(model, [check], CrossEntropy()).fit(1)
    bias = {r.name: r for r in check.results}["0.b"]
    assert bias.note == "(no .g: its bwd never set it)" and not bias.ok


def test_grad_errors_of_empty_tensors_are_zero():
    empty = torch.empty(0)
    assert grad_errors(empty, empty) == (0.0, 0.0, 0.0)
    assert grad_errors(None, empty) == (float("inf"), float("inf"), 0.0)
