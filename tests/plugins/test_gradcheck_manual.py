"""GradCheck's manual mode, case by case: integer inputs, half-precision tolerances, float targets,
unused parameters, a plugin that changes the prediction, ``.g`` put back as it was, nested models,
and the culprit named in each case.

Oracles: autograd (through the check itself passing on right backwards), and hand-made wrong
backwards whose culprit is known by construction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pluglearn import hookimpl
from pluglearn.plugins.gradcheck import GradCheck, GradCheckError
from pluglearn.scratch import CrossEntropy, Linear, Module, Mse, Parameter, Relu, Sequential
from tests.helpers import tiny_data
from tests.support.gradcheck import Spare, learner_on, seeded_generator


class WrongW(Linear):
    """A right ``bwd`` except dL/dw, doubled (dL/dx stays right)."""

    def bwd(self, out, x):
        super().bwd(out, x)
        self.w.g = self.w.g * 2


class Lookup(Module):
    """Rows of a table picked by integer ids: the input has no gradient of its own."""

    def __init__(self, n: int, d: int) -> None:
        super().__init__()
        self.table = Parameter(torch.randn(n, d, generator=seeded_generator()))

    def forward(self, ids):
        return self.table[ids]

    def bwd(self, out, ids):
        self.table.g = torch.zeros_like(self.table).index_add_(0, ids, out.g)


def test_manual_mode_leaves_an_integer_input_alone():
    model = Sequential(Lookup(10, 4), Linear(4, 3, generator=seeded_generator())).requires_grad_(
        True
    )
    ids, y = torch.arange(12) % 10, torch.arange(12) % 3
    check = GradCheck(show=False)
    learner_on(model, [check], CrossEntropy(), ids, y).fit(1)
    assert [r.name for r in check.results] == ["0.table", "1.w", "1.b"]
    assert all(r.ok for r in check.results)


def test_manual_mode_uses_the_16_bit_tolerances_for_bfloat16():
    g = seeded_generator()
    model = Sequential(Linear(4, 3, generator=g, dtype=torch.bfloat16)).requires_grad_(True)
    x, y = tiny_data(12)
    check = GradCheck(show=False, on_fail="warn")
    learner_on(model, [check], F.cross_entropy, x.to(torch.bfloat16), y).fit(1)
    assert check.results and {(r.rtol, r.atol) for r in check.results} == {(1e-2, 1e-3)}


def test_a_scratch_mse_with_float_targets_is_checked():
    model = Sequential(Linear(4, 1, generator=seeded_generator())).requires_grad_(True)
    x, _ = tiny_data(12)
    y = x.sum(1, keepdim=True)  # float targets: not part of the backward
    check = GradCheck(show=False)
    learner_on(model, [check], Mse(), x, y).fit(1)
    assert [r.name for r in check.results] == ["0.w", "0.b", "input"]
    assert all(r.ok for r in check.results)


def test_manual_mode_compares_an_unused_parameter_with_zero():
    model = Sequential(Spare(4, 3, generator=seeded_generator())).requires_grad_(True)
    check = GradCheck(show=False)
    learner_on(model, [check], CrossEntropy()).fit(1)
    rows = {r.name: r for r in check.results}
    assert rows["0.spare"].ok and rows["0.spare"].max_abs == 0.0


class Doubler:
    """Replaces the prediction by 2 * pred: the scratch loss no longer sees the model's output."""

    @hookimpl
    def after_pred(self, learn):
        learn.preds = learn.preds * 2


def test_a_scratch_loss_of_a_changed_prediction_is_left_to_autograd():
    g = seeded_generator()
    model = Sequential(Linear(4, 5, generator=g), Relu(), Linear(5, 3, generator=g))
    check = GradCheck(show=False)
    learner_on(model.requires_grad_(True), [Doubler(), check], CrossEntropy()).fit(1)
    assert check.results and all(r.ok for r in check.results)


def test_with_a_changed_prediction_only_the_wrong_module_is_blamed():
    g = seeded_generator()
    model = Sequential(Linear(4, 5, generator=g), Relu(), WrongW(5, 3, generator=g))
    check = GradCheck(show=False)
    with pytest.raises(GradCheckError) as info:
        learner_on(model.requires_grad_(True), [Doubler(), check], CrossEntropy()).fit(1)
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
    g = seeded_generator()
    model = Sequential(Linear(4, 5, generator=g), Relu(), Linear(5, 3, generator=g))
    model.requires_grad_(True)
    names = [n for n, _ in model.named_parameters()]
    marks = {}
    for n, p in model.named_parameters():
        if n != "2.b":  # one parameter without a .g at all
            marks[n] = p.g = torch.full_like(p, 7.0)
    keep = Keep()
    learner_on(model, [GradCheck(show=False), keep], CrossEntropy()).fit(1)
    first = keep.seen[0]  # the checked batch
    assert all(first[n] is marks[n] for n in names if n != "2.b")
    assert first["2.b"] == "absent"


def test_rows_of_a_nested_model_name_the_module_that_owns_the_parameter():
    g = seeded_generator()
    inner = Sequential(Linear(4, 5, generator=g), Relu())
    model = Sequential(inner, Linear(5, 3, generator=g)).requires_grad_(True)
    check = GradCheck(show=False)
    learner_on(model, [check], CrossEntropy()).fit(1)
    rows = {r.name: r.module for r in check.results}
    assert rows["0.0.w"].startswith("Linear(") and rows["1.w"].startswith("Linear(")


class WrongRoot(Module):
    """A model that is one module, with a wrong ``bwd`` (dL/dw doubled)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = Parameter(torch.randn(4, 3, generator=seeded_generator()))

    def forward(self, x):
        return x @ self.w

    def bwd(self, out, x):
        x.g = out.g @ self.w.T
        self.w.g = 2 * (x.T @ out.g)

    def extra_repr(self) -> str:
        return ""


def test_a_wrong_backward_of_the_model_itself_is_named_as_the_model():
    with pytest.raises(GradCheckError, match=r"check WrongRoot\.bwd \(the model\) \(epoch"):
        learner_on(WrongRoot().requires_grad_(True), [GradCheck(show=False)], CrossEntropy()).fit(1)


def test_two_wrong_backwards_are_both_named_in_order():
    g = seeded_generator()
    model = Sequential(WrongW(4, 5, generator=g), Relu(), WrongW(5, 3, generator=g))
    with pytest.raises(GradCheckError) as info:
        learner_on(model.requires_grad_(True), [GradCheck(show=False)], CrossEntropy()).fit(1)
    assert "check WrongW.bwd (module '0') / WrongW.bwd (module '2')." in str(info.value)
