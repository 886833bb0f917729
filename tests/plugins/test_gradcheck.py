"""GradCheck: passes right gradients, catches and names wrong ones, leaves training unchanged;
its arguments checked."""

from __future__ import annotations

import io
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import DataLoaders, Learner
from pluglearn.plugins.gradcheck import GradCheck, GradCheckError, GradCheckWarning
from pluglearn.plugins.gradcheck_report import grad_errors
from pluglearn.plugins.manual_backward import ManualBackward
from pluglearn.scratch import CrossEntropy, Linear, Module, Relu, Sequential
from tests.helpers import batches, tiny_data
from tests.support.gradcheck import learner_on

Net = Sequential


class HalfBiasLinear(Linear):
    """Forgets a factor: the bias gradient is the batch *mean* of dL/dy, not its sum."""

    def bwd(self, out, x):
        super().bwd(out, x)
        self.b.g = out.g.mean(0)


class TransposedLinear(Linear):
    """Transposes dL/dW: (out, in) instead of (in, out)."""

    def bwd(self, out, x):
        super().bwd(out, x)
        self.w.g = out.g.T @ x


class MasklessReLU(Relu):
    """Forgets the 1[x > 0] mask: passes out.g straight through."""

    def bwd(self, out, x):
        x.g = out.g.clone()


class DoubledCrossEntropy(CrossEntropy):
    def bwd(self, out, logits, target):
        super().bwd(out, logits, target)
        logits.g = logits.g * 2


def net(act: Module | None = None, last: type[Linear] = Linear, dtype=torch.float32) -> Net:
    g = torch.Generator().manual_seed(0)
    first = Linear(4, 5, generator=g, dtype=dtype)
    return Net(first, act or Relu(), last(5, 3, generator=g, dtype=dtype)).requires_grad_(True)


# Not the shared make_learner: the data in the test's dtype (float64 checks).
def learner(model, plugins, n_train=8, loss_func=None, dtype=torch.float32) -> Learner:
    x, y = tiny_data(n_train + 4)
    x = x.to(dtype)
    dls = DataLoaders(batches(x[:n_train], y[:n_train], 4), batches(x[n_train:], y[n_train:], 4))
    loss_func = CrossEntropy() if loss_func is None else loss_func
    return Learner(model, dls, loss_func=loss_func, lr=0.1, plugins=plugins, defaults=False)


def first_batch_grads(model: Net, loss_func=F.cross_entropy) -> dict[str, torch.Tensor]:
    """The oracle: autograd's gradients on the first training batch, computed here."""
    x, y = tiny_data(12)
    loss_func(model(x[:4]), y[:4]).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_grad_errors_definition():
    err, rel, scale = grad_errors(torch.tensor([1.0, -3.5]), torch.tensor([1.5, -4.0]))
    assert (err, scale) == (0.5, 4.0) and rel == pytest.approx(0.125)
    assert grad_errors(None, torch.ones(2))[:2] == (float("inf"), float("inf"))
    assert grad_errors(torch.ones(3, 2), torch.ones(2, 3))[0] == float("inf")
    assert grad_errors(torch.zeros(2), torch.zeros(2)) == (0.0, 0.0, 0.0)  # no 0/0


def test_correct_model_passes_with_a_row_per_parameter_and_the_input():
    check = GradCheck(every=1, show=False)
    learner(net(), [check]).fit(1)
    assert [(r.batch, r.name, r.shape) for r in check.results] == [
        (b, n, s)
        for b in (0, 1)
        for n, s in [
            ("0.w", (4, 5)),
            ("0.b", (5,)),
            ("2.w", (5, 3)),
            ("2.b", (3,)),
            ("input", (4, 4)),
        ]
    ]
    assert all(r.ok and r.max_rel < 1e-5 and r.checked == math.prod(r.shape) for r in check.results)
    assert check.results[0].module == "Linear(n_in=4, n_out=5, bias=True)"


def test_a_forgotten_factor_is_caught_naming_the_module_and_parameter():
    model = net(last=HalfBiasLinear)
    truth = first_batch_grads(net(last=HalfBiasLinear))  # same seed: the same initial weights
    check = GradCheck(show=False)
    with pytest.raises(GradCheckError) as info:
        learner(model, [check]).fit(1)
    message = str(info.value)
    assert message.startswith(
        "2.b of HalfBiasLinear(n_in=5, n_out=3, bias=True): max rel error 0.75"
    )
    assert "check HalfBiasLinear.bwd (module '2')" in message
    row = {r.name: r for r in check.results}["2.b"]
    # the mean over a batch of 4 is a quarter of the sum: |g/4 - g| = 3/4 |g|
    assert row.max_abs == pytest.approx(0.75 * truth["2.b"].abs().max().item(), rel=1e-5)
    assert row.max_rel == pytest.approx(0.75, rel=1e-5)
    assert [r.name for r in check.results if not r.ok] == ["2.b"]  # x.g and 2.w are right


class NoBiasGradLinear(Linear):
    def bwd(self, out, x):
        x.g = out.g @ self.w.T
        self.w.g = x.T @ out.g  # forgets self.b.g


class Nested(Module):
    """A model whose layers sit one level down: parameter names are layers.0.w, ..."""

    def __init__(self, act: Module) -> None:
        g = torch.Generator().manual_seed(0)
        self.layers = Sequential(Linear(4, 5, generator=g), act, Linear(5, 3, generator=g))

    def forward(self, x):
        return self.layers(x)

    def bwd(self, out, x):
        self.layers.backward()


def test_a_missing_gradient_and_a_nested_culprit_are_named():
    with pytest.raises(GradCheckError, match=r"2\.b of NoBiasGradLinear.*\(no \.g: its bwd never"):
        learner(net(last=NoBiasGradLinear), [GradCheck(show=False)]).fit(1)
    model = Nested(MasklessReLU()).requires_grad_(True)
    with pytest.raises(
        GradCheckError, match=r"^layers\.0\.b .*check MasklessReLU\.bwd \(module 'layers\.1'\)"
    ):
        learner(model, [GradCheck(show=False)]).fit(1)


def test_frozen_parameters_are_skipped_and_float64_gets_tighter_defaults():
    model = net(dtype=torch.float64)
    model[0].w.requires_grad_(False)
    check = GradCheck(show=False)
    learner(model, [check], dtype=torch.float64).fit(1)
    assert [r.name for r in check.results] == ["0.b", "2.w", "2.b", "input"]
    assert all(r.ok and (r.rtol, r.atol) == (1e-9, 1e-12) for r in check.results)
    assert max(r.max_rel for r in check.results) < 1e-13


def test_a_transposed_weight_gradient_is_reported_by_its_shape():
    with pytest.raises(GradCheckError, match=r"2\.w of TransposedLinear.*\.g has shape \(3, 5\)"):
        learner(net(last=TransposedLinear), [GradCheck(show=False)]).fit(1)


def test_a_wrong_activation_is_blamed_not_the_linear_before_it():
    with pytest.raises(GradCheckError) as info:
        learner(net(act=MasklessReLU()), [GradCheck(show=False)]).fit(1)
    message = str(info.value)
    assert message.startswith("0.b of Linear(n_in=4, n_out=5, bias=True)")
    assert "check MasklessReLU.bwd (module '1')" in message
    assert "Failing: 0.w, 0.b, input" in message


def test_a_wrong_loss_bwd_is_blamed_and_a_plain_callable_loss_is_seeded_by_autograd():
    with pytest.raises(GradCheckError, match=r"check DoubledCrossEntropy\.bwd \(module 'learn"):
        learner(net(), [GradCheck(show=False)], loss_func=DoubledCrossEntropy()).fit(1)
    check = GradCheck(show=False)  # F.cross_entropy has no bwd: autograd seeds model.out.g
    learner(net(), [check], loss_func=F.cross_entropy).fit(1)
    assert len(check.results) == 5 and all(r.ok for r in check.results)
    with pytest.raises(GradCheckError, match=r"check HalfBiasLinear\.bwd"):
        learner(net(last=HalfBiasLinear), [GradCheck(show=False)], loss_func=F.cross_entropy).fit(1)


def test_warn_mode_warns_and_training_goes_on():
    check = GradCheck(every=1, on_fail="warn", show=False)
    learn = learner(net(last=HalfBiasLinear), [check])
    with pytest.warns(GradCheckWarning, match=r"2\.b of HalfBiasLinear") as record:
        learn.fit(1)
    assert len(record) == 2  # one per checked batch; the fit completed
    assert [(r.batch, r.name) for r in check.results if not r.ok] == [(0, "2.b"), (1, "2.b")]


def test_the_table_is_printed_to_the_file_or_stdout(capsys):
    out = io.StringIO()
    with pytest.raises(GradCheckError):
        learner(net(last=HalfBiasLinear), [GradCheck(file=out)]).fit(1)
    lines = out.getvalue().splitlines()
    assert lines[0] == "GradCheck (manual backward vs autograd), epoch 0, batch 0"
    header = ["parameter", "shape", "checked", "max", "abs", "err", "max", "rel", "err", "result"]
    assert lines[1].split() == header
    assert [line.split()[0] for line in lines[2:]] == ["0.w", "0.b", "2.w", "2.b", "input"]
    assert lines[5].endswith("FAIL") and lines[2].endswith("ok")
    assert "7.50e-01" in lines[5]  # the max rel error of 2.b
    learner(net(), [GradCheck()]).fit(1)
    assert capsys.readouterr().out.count("GradCheck (manual backward vs autograd)") == 1


@pytest.mark.parametrize(
    ("first", "every", "checked"),
    [
        (1, None, [(0, 0)]),
        (4, None, [(0, 0), (0, 1), (0, 2), (1, 0)]),
        (0, 2, [(0, 0), (0, 2), (1, 1)]),  # fit batches 0, 2, 4 of 3 per epoch
        (2, 4, [(0, 0), (0, 1), (1, 1)]),  # the first two, and fit batch 4
    ],
)
def test_first_and_every_count_training_batches_over_the_fit(first, every, checked):
    check = GradCheck(first=first, every=every, show=False)
    learner(net(), [check], n_train=12).fit(2)  # 3 train batches and 1 valid batch per epoch
    by_batch = [(r.epoch, r.batch) for r in check.results]
    assert by_batch == [b for b in checked for _ in range(5)]  # 4 parameters + the input


def test_training_is_unchanged_by_the_check():
    def fit(plugins) -> dict[str, torch.Tensor]:
        model = net()
        learner(model, plugins, n_train=12).fit(2)
        return dict(model.named_parameters())

    plain = fit([])
    checked = fit([GradCheck(every=1, show=False)])
    manual = fit([ManualBackward()])
    manual_checked = fit([GradCheck(every=1, show=False), ManualBackward()])
    initial = dict(net().named_parameters())
    for name, p in plain.items():
        assert not torch.equal(p, initial[name]), name  # the fit did train
        assert torch.equal(p, checked[name]), name
        assert torch.equal(manual[name], manual_checked[name]), name


def test_manual_mode_needs_a_scratch_model_with_autograd_on():
    nn_learn = learner(nn.Linear(4, 3), [GradCheck()], loss_func=F.cross_entropy)
    expected = (
        "GradCheck(mode='manual') needs a model built from pluglearn.scratch modules (got a "
        "Linear); for an nn.Module use GradCheck(mode='numeric')."
    )
    with pytest.raises(TypeError, match=re.escape(expected)):
        nn_learn.fit(1)
    with pytest.raises(ValueError, match=r"call model.requires_grad_\(True\)"):
        learner(net().requires_grad_(False), [GradCheck()]).fit(1)
    with pytest.raises(TypeError, match=r"use GradCheck\(mode='manual'\)"):
        learner(net(), [GradCheck(mode="numeric")]).fit(1)
    with pytest.raises(ValueError, match="would never check"):
        GradCheck(first=0)


class _SquareScale(torch.autograd.Function):
    """y = x * w**2, with a backward for w that forgets the factor 2 of d(w**2)/dw."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w**2

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g * w**2, (g * x).sum(0) * w  # right: (g * x).sum(0) * 2 * w


class SquareScale(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x):
        return _SquareScale.apply(x, self.weight)


def torch_net(*middle: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), *middle, nn.Linear(5, 3))


def test_numeric_mode_passes_a_correct_nn_module():
    check = GradCheck(mode="numeric", every=1, show=False)
    learner(torch_net(), [check], loss_func=F.cross_entropy).fit(1)
    names = ["0.weight", "0.bias", "2.weight", "2.bias", "input"]
    assert [r.name for r in check.results] == names * 2
    assert all(r.ok and r.max_rel < 1e-7 for r in check.results)
    assert check.results[0].module == "Linear(in_features=4, out_features=5, bias=True)"
    assert (check.results[0].rtol, check.results[0].atol) == (1e-5, 1e-7)


def test_numeric_mode_catches_a_wrong_autograd_function_backward():
    check = GradCheck(mode="numeric", on_fail="warn", show=False)
    with pytest.warns(GradCheckWarning) as record:
        learner(torch_net(SquareScale(5)), [check], loss_func=F.cross_entropy).fit(1)
    message = str(record[0].message)
    assert message.startswith("2.weight of SquareScale(): max rel error 0.5")
    assert "check the backward of SquareScale or of one after it" in message
    assert [r.name for r in check.results if not r.ok] == ["2.weight"]
    assert {r.name: r for r in check.results}["2.weight"].max_rel == pytest.approx(0.5, rel=1e-6)


def test_numeric_mode_samples_entries_reproducibly_and_leaves_training_unchanged():
    def fit(plugins):
        model = torch_net()
        learner(model, plugins, loss_func=CrossEntropy(), n_train=12).fit(2)
        return [p.detach().clone() for p in model.parameters()]

    check = GradCheck(mode="numeric", every=1, n_entries=3, probe=2, seed=1, show=False)
    again = GradCheck(mode="numeric", every=1, n_entries=3, probe=2, seed=1, show=False)
    weights = fit([check])
    assert all(map(torch.equal, weights, fit([])))
    fit([again])
    assert [r.checked for r in check.results[:5]] == [3, 3, 3, 3, 3]  # input: 2 items x 4
    assert [r.max_abs for r in check.results] == [r.max_abs for r in again.results]
    assert all(r.ok for r in check.results)


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
    learner_on(nn.Linear(4, 3), [check], F.cross_entropy).fit(1)
    rows = {r.name: r for r in check.results}
    assert rows["input"].shape == (1, 4) and {r.checked for r in check.results} == {1}


def test_results_is_an_empty_list_before_any_fit():
    assert GradCheck().results == []
    assert GradCheck(first=0, every=3).results == []
