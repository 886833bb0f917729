"""GradCheck promises that mutation testing found unchecked (``benchmarks/mutation.py --module
callbacks/gradcheck.py --module callbacks/gradcheck_report.py``): integer inputs, half-precision
tolerances, float targets, unused parameters, nested models, a plugin that changes the
prediction, ``.g`` left as it was, the global RNG not drawn, the culprit named in each case,
argument checks, and the exact table and failure message.

Oracles: autograd (through the check itself passing on right backwards), hand-made wrong
backwards whose culprit is known by construction, and messages and tables written out in full.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import DataLoaders, Learner, hookimpl
from pluglearn.plugins.gradcheck import GradCheck, GradCheckError
from pluglearn.plugins.gradcheck_report import (
    GradRow,
    failure_message,
    format_table,
    grad_errors,
)
from pluglearn.scratch import CrossEntropy, Linear, Module, Mse, Parameter, Relu, Sequential
from tests.helpers import batches, tiny_data


def _learner(model, plugins, loss_func, x=None, y=None, bs: int = 4) -> Learner:
    if x is None:
        x, y = tiny_data(12)
    n = len(x) - bs
    dls = DataLoaders(batches(x[:n], y[:n], bs), batches(x[n:], y[n:], bs))
    return Learner(model, dls, loss_func=loss_func, lr=0.1, plugins=plugins, defaults=False)


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


class WrongW(Linear):
    """A right ``bwd`` except dL/dw, doubled (dL/dx stays right)."""

    def bwd(self, out, x):
        super().bwd(out, x)
        self.w.g = self.w.g * 2


# ------------------------------------------------------------------------------ manual mode


class Lookup(Module):
    """Rows of a table picked by integer ids: the input has no gradient of its own."""

    def __init__(self, n: int, d: int) -> None:
        super().__init__()
        self.table = Parameter(torch.randn(n, d, generator=_gen()))

    def forward(self, ids):
        return self.table[ids]

    def bwd(self, out, ids):
        self.table.g = torch.zeros_like(self.table).index_add_(0, ids, out.g)


def test_manual_mode_leaves_an_integer_input_alone():
    model = Sequential(Lookup(10, 4), Linear(4, 3, generator=_gen())).requires_grad_(True)
    ids, y = torch.arange(12) % 10, torch.arange(12) % 3
    check = GradCheck(show=False)
    _learner(model, [check], CrossEntropy(), ids, y).fit(1)
    assert [r.name for r in check.results] == ["0.table", "1.w", "1.b"]
    assert all(r.ok for r in check.results)


def test_manual_mode_uses_the_16_bit_tolerances_for_bfloat16():
    g = _gen()
    model = Sequential(Linear(4, 3, generator=g, dtype=torch.bfloat16)).requires_grad_(True)
    x, y = tiny_data(12)
    check = GradCheck(show=False, on_fail="warn")
    _learner(model, [check], F.cross_entropy, x.to(torch.bfloat16), y).fit(1)
    assert check.results and {(r.rtol, r.atol) for r in check.results} == {(1e-2, 1e-3)}


def test_a_scratch_mse_with_float_targets_is_checked():
    model = Sequential(Linear(4, 1, generator=_gen())).requires_grad_(True)
    x, _ = tiny_data(12)
    y = x.sum(1, keepdim=True)  # float targets: not part of the backward
    check = GradCheck(show=False)
    _learner(model, [check], Mse(), x, y).fit(1)
    assert [r.name for r in check.results] == ["0.w", "0.b", "input"]
    assert all(r.ok for r in check.results)


class Spare(Linear):
    """A Linear with a parameter that the loss does not depend on (its gradient is zero)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.spare = Parameter(torch.ones(2))

    def bwd(self, out, x):
        super().bwd(out, x)
        self.spare.g = torch.zeros_like(self.spare)


def test_manual_mode_compares_an_unused_parameter_with_zero():
    model = Sequential(Spare(4, 3, generator=_gen())).requires_grad_(True)
    check = GradCheck(show=False)
    _learner(model, [check], CrossEntropy()).fit(1)
    rows = {r.name: r for r in check.results}
    assert rows["0.spare"].ok and rows["0.spare"].max_abs == 0.0


class Doubler:
    """Replaces the prediction by 2 * pred: the scratch loss no longer sees the model's output."""

    @hookimpl
    def after_pred(self, learn):
        learn.preds = learn.preds * 2


def test_a_scratch_loss_of_a_changed_prediction_is_left_to_autograd():
    g = _gen()
    model = Sequential(Linear(4, 5, generator=g), Relu(), Linear(5, 3, generator=g))
    check = GradCheck(show=False)
    _learner(model.requires_grad_(True), [Doubler(), check], CrossEntropy()).fit(1)
    assert check.results and all(r.ok for r in check.results)


def test_with_a_changed_prediction_only_the_wrong_module_is_blamed():
    g = _gen()
    model = Sequential(Linear(4, 5, generator=g), Relu(), WrongW(5, 3, generator=g))
    check = GradCheck(show=False)
    with pytest.raises(GradCheckError) as info:
        _learner(model.requires_grad_(True), [Doubler(), check], CrossEntropy()).fit(1)
    assert "check WrongW.bwd (module '2') (epoch 0, batch 0)." in str(info.value)
    assert "CrossEntropy" not in str(info.value)


class Keep:
    """Runs after GradCheck's after_loss: what does each parameter's ``.g`` hold then?"""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    @hookimpl
    def after_loss(self, learn):
        self.seen.append(
            {n: p.__dict__.get("g", "absent") for n, p in learn.model.named_parameters()}
        )


def test_manual_mode_puts_back_each_parameters_g_as_it_was():
    g = _gen()
    model = Sequential(Linear(4, 5, generator=g), Relu(), Linear(5, 3, generator=g))
    model.requires_grad_(True)
    names = [n for n, _ in model.named_parameters()]
    marks = {}
    for n, p in model.named_parameters():
        if n != "2.b":  # one parameter without a .g at all
            marks[n] = p.g = torch.full_like(p, 7.0)
    keep = Keep()
    _learner(model, [GradCheck(show=False), keep], CrossEntropy()).fit(1)
    first = keep.seen[0]  # the checked batch
    assert all(first[n] is marks[n] for n in names if n != "2.b")
    assert first["2.b"] == "absent"


def test_rows_of_a_nested_model_name_the_module_that_owns_the_parameter():
    g = _gen()
    inner = Sequential(Linear(4, 5, generator=g), Relu())
    model = Sequential(inner, Linear(5, 3, generator=g)).requires_grad_(True)
    check = GradCheck(show=False)
    _learner(model, [check], CrossEntropy()).fit(1)
    rows = {r.name: r.module for r in check.results}
    assert rows["0.0.w"].startswith("Linear(") and rows["1.w"].startswith("Linear(")


class WrongRoot(Module):
    """A model that is one module, with a wrong ``bwd`` (dL/dw doubled)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = Parameter(torch.randn(4, 3, generator=_gen()))

    def forward(self, x):
        return x @ self.w

    def bwd(self, out, x):
        x.g = out.g @ self.w.T
        self.w.g = 2 * (x.T @ out.g)

    def extra_repr(self) -> str:
        return ""


def test_a_wrong_backward_of_the_model_itself_is_named_as_the_model():
    with pytest.raises(GradCheckError, match=r"check WrongRoot\.bwd \(the model\) \(epoch"):
        _learner(WrongRoot().requires_grad_(True), [GradCheck(show=False)], CrossEntropy()).fit(1)


def test_two_wrong_backwards_are_both_named_in_order():
    g = _gen()
    model = Sequential(WrongW(4, 5, generator=g), Relu(), WrongW(5, 3, generator=g))
    with pytest.raises(GradCheckError) as info:
        _learner(model.requires_grad_(True), [GradCheck(show=False)], CrossEntropy()).fit(1)
    assert "check WrongW.bwd (module '0') / WrongW.bwd (module '2')." in str(info.value)


# ----------------------------------------------------------------------------- numeric mode


def test_numeric_mode_leaves_an_integer_input_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))
    ids, y = torch.arange(12) % 10, torch.arange(12) % 3
    check = GradCheck(mode="numeric", show=False)
    _learner(model, [check], F.cross_entropy, ids, y).fit(1)
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
    _learner(Holder(), [check], F.cross_entropy).fit(1)
    rows = {r.name: r for r in check.results}
    assert rows["unused"].ok and rows["unused"].max_abs == 0.0


def test_numeric_rows_name_the_owner_and_probe_the_first_four_items():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 9), nn.Tanh()), nn.Linear(9, 3))
    check = GradCheck(mode="numeric", show=False)
    x, y = tiny_data(16)
    _learner(model, [check], F.cross_entropy, x, y, bs=8).fit(1)
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
    _learner(nn.Linear(4, 3), [GradCheck(mode="numeric", show=False), state], CrossEntropy()).fit(1)
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
    _learner(nn.Linear(4, 3), plugins, F.cross_entropy).fit(1)
    assert len(log) == 4 and torch.equal(log[0], log[1]) and torch.equal(log[2], log[3])
    assert [r.checked for r in check.results[:2]] == [3, 3]  # 12 weights: 3 sampled


def test_numeric_differences_are_kept_in_float64():
    """For a loss quadratic in the weights, float64 central differences agree with autograd to
    ~1e-12 here (the weights' gradient is about 1, not a float32 number)."""
    torch.manual_seed(0)
    x, _ = tiny_data(12)
    check = GradCheck(mode="numeric", show=False)
    mse = lambda p, t: (p - t).pow(2).mean()  # noqa: E731
    _learner(nn.Linear(4, 1, bias=False), [check], mse, x, torch.zeros(12, 1)).fit(1)
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
        _learner(model, [GradCheck(mode="numeric", show=False)], F.cross_entropy).fit(1)
    assert "check the backward of WrongScale or of one after it" in str(info.value)


def test_numeric_culprit_when_only_the_input_is_wrong_is_the_first_module():
    torch.manual_seed(0)
    model = nn.Sequential(WrongInput(), nn.Linear(4, 3))
    check = GradCheck(mode="numeric", show=False)
    with pytest.raises(GradCheckError) as info:
        _learner(model, [check], F.cross_entropy).fit(1)
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
    model = Sequential(ScaledW(4, 3, generator=_gen(), dtype=dtype, error=error))
    check = GradCheck(show=False, on_fail="warn", **kwargs)
    x, y = tiny_data(12)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        loss_func = loss_func or CrossEntropy()
        _learner(model.requires_grad_(True), [check], loss_func, x.to(dtype), y).fit(1)
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
    model = Sequential(Spare(4, 3, generator=_gen())).requires_grad_(True)
    check = GradCheck(show=False, on_fail="warn", rtol=0.0, atol=0.0)
    with warnings.catch_warnings(record=True):  # float rows may differ in the last bit
        warnings.simplefilter("always")
        _learner(model, [check], CrossEntropy()).fit(1)
    spare = {r.name: r for r in check.results if r.batch == 0}["0.spare"]
    assert spare.ok and spare.max_abs == 0.0


class ForgetsBias(Linear):
    def bwd(self, out, x):
        super().bwd(out, x)
        self.b.g = None


def test_a_gradient_the_bwd_never_set_is_noted():
    model = Sequential(ForgetsBias(4, 3, generator=_gen())).requires_grad_(True)
    check = GradCheck(show=False)
    with pytest.raises(GradCheckError, match=r"\(no \.g: its bwd never set it\): check"):
        _learner(model, [check], CrossEntropy()).fit(1)
    bias = {r.name: r for r in check.results}["0.b"]
    assert bias.note == "(no .g: its bwd never set it)" and not bias.ok


def test_grad_errors_of_empty_tensors_are_zero():
    empty = torch.empty(0)
    assert grad_errors(empty, empty) == (0.0, 0.0, 0.0)
    assert grad_errors(None, empty) == (float("inf"), float("inf"), 0.0)


# ------------------------------------------------------------------------- argument checks


NEEDS = "GradCheck needs first >= 0, every >= 1, probe, n_entries >= 1, eps > 0."


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "symbolic"}, "GradCheck: bad mode='symbolic' or on_fail='raise'."),
        ({"on_fail": "ignore"}, "GradCheck: bad mode='manual' or on_fail='ignore'."),
        ({"first": -1}, NEEDS),
        ({"every": 0}, NEEDS),
        ({"probe": 0}, NEEDS),
        ({"n_entries": 0}, NEEDS),
        ({"eps": 0.0}, NEEDS),
        ({"first": 0}, "GradCheck would never check: pass first=k >= 1 or every=n."),
    ],
)
def test_bad_arguments_are_refused_with_their_message(kwargs, message):
    with pytest.raises(ValueError) as info:
        GradCheck(**kwargs)
    assert str(info.value) == message


def test_one_probe_item_and_one_entry_are_enough():
    torch.manual_seed(0)
    check = GradCheck(mode="numeric", probe=1, n_entries=1, show=False)
    _learner(nn.Linear(4, 3), [check], F.cross_entropy).fit(1)
    rows = {r.name: r for r in check.results}
    assert rows["input"].shape == (1, 4) and {r.checked for r in check.results} == {1}


def test_results_is_an_empty_list_before_any_fit():
    assert GradCheck().results == []
    assert GradCheck(first=0, every=3).results == []


# --------------------------------------------------------------------- table and message


def _row(name="0.w", module="Linear(in=4, out=3)", ok=False, note="", epoch=1, batch=2):
    return GradRow(epoch, batch, name, module, (4, 3), 12, 0.5, 0.25, ok, 1e-4, 1e-6, note)


def test_the_table_of_one_row_and_of_none():
    assert format_table([_row(ok=True)], "manual") == "\n".join(
        [
            "GradCheck (manual backward vs autograd), epoch 1, batch 2",
            "parameter  shape          checked  max abs err  max rel err  result",
            "0.w        (4, 3)              12     5.00e-01     2.50e-01  ok",
        ]
    )
    assert format_table([], "numeric") == (
        "\nparameter  shape          checked  max abs err  max rel err  result"
    )


def test_failure_message_of_one_row_without_culprit_names_the_modules_class():
    assert failure_message([_row()], "") == (
        "0.w of Linear(in=4, out=3): max rel error 0.25 > rtol 0.0001 (max abs error 0.5, "
        "atol 1e-06): check Linear.bwd (epoch 1, batch 2)."
    )


def test_failure_message_of_several_rows_lists_them_and_keeps_the_note():
    rows = [_row("0.w"), _row("input", module="Net()", note="(.g has shape (3,))")]
    assert failure_message(rows, "Lin.bwd (module '0')") == (
        "0.w of Linear(in=4, out=3): max rel error 0.25 > rtol 0.0001 (max abs error 0.5, "
        "atol 1e-06): check Lin.bwd (module '0'). Failing: 0.w, input (epoch 1, batch 2)."
    )
    only_input = [_row("input", module="Net()", note="(no .g: its bwd never set it)")]
    assert failure_message(only_input, "") == (
        "input of Net(): max rel error 0.25 > rtol 0.0001 (max abs error 0.5, atol 1e-06) "
        "(no .g: its bwd never set it): check Net.bwd (epoch 1, batch 2)."
    )
