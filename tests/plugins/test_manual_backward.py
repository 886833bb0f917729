"""ManualBackward: a fit on the hand-written gradients equals a fit on autograd's."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import DataLoaders, Learner, hookimpl
from pluglearn.plugins.accumulate import GradientAccumulation
from pluglearn.plugins.manual_backward import ManualBackward
from pluglearn.scratch import SGD, CrossEntropy, Linear, Relu, Sequential
from tests.helpers import batches, tiny_data

Net = Sequential


class NoBiasGradLinear(Linear):
    def bwd(self, out, x):
        x.g = out.g @ self.w.T
        self.w.g = x.T @ out.g  # forgets self.b.g


def net(dtype=torch.float32, last: type[Linear] = Linear, autograd: bool = True) -> Net:
    g = torch.Generator().manual_seed(0)
    model = Net(
        Linear(4, 5, generator=g, dtype=dtype), Relu(), last(5, 3, generator=g, dtype=dtype)
    )
    return model.requires_grad_(autograd)


def fit(model, plugins=(), opt_func=torch.optim.SGD, dtype=torch.float32, epochs=3):
    x, y = tiny_data(16)
    x = x.to(dtype)
    dls = DataLoaders(batches(x[:12], y[:12], 4), batches(x[12:], y[12:], 4))
    learn = Learner(model, dls, CrossEntropy(), opt_func, lr=0.5, plugins=plugins, defaults=False)
    learn.fit(epochs)
    return [p.detach().clone() for p in model.parameters()]


def assert_weights_close(got, expected, rtol, atol):
    start = [p.detach() for p in net(got[0].dtype).parameters()]
    for g, e, s in zip(got, expected, start, strict=True):
        assert not torch.equal(e, s)  # the reference fit did move the weights
        torch.testing.assert_close(g, e, rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float64, (1e-12, 1e-14)), (torch.float32, (1e-5, 1e-6))]
)
def test_a_manual_fit_equals_an_autograd_fit(dtype, tol):
    expected = fit(net(dtype), dtype=dtype)
    assert_weights_close(fit(net(dtype), [ManualBackward()], dtype=dtype), expected, *tol)


TORCH_MOMENTUM = partial(torch.optim.SGD, momentum=0.9, weight_decay=0.01)
SCRATCH_GRAD = partial(SGD, grad_attr="grad", momentum=0.9)


@pytest.mark.parametrize(
    ("opt_func", "autograd_opt_func"),
    [
        (TORCH_MOMENTUM, TORCH_MOMENTUM),
        (partial(SGD, grad_attr="g", momentum=0.9), SCRATCH_GRAD),  # reads .g, not .grad
        (SCRATCH_GRAD, SCRATCH_GRAD),
    ],
    ids=["torch-momentum", "scratch-g", "scratch-grad"],
)
def test_every_optimizer_reads_the_manual_gradients_without_autograd(opt_func, autograd_opt_func):
    dt = torch.float64
    expected = fit(net(dt), opt_func=autograd_opt_func, dtype=dt)
    # no parameter requires grad: no graph is built, the gradients are the hand-written ones
    got = fit(net(dt, autograd=False), [ManualBackward()], opt_func=opt_func, dtype=dt)
    assert_weights_close(got, expected, 1e-12, 1e-14)


def test_gradients_accumulate_into_grad_like_autograd():
    dt = torch.float64
    expected = fit(net(dt), [GradientAccumulation(2, scale_loss=False)], dtype=dt)
    got = fit(net(dt), [GradientAccumulation(2, scale_loss=False), ManualBackward()], dtype=dt)
    assert_weights_close(got, expected, 1e-12, 1e-14)
    # scratch SGD's default reads .g, which holds only the last batch: not the accumulated fit
    plugins = [GradientAccumulation(2, scale_loss=False), ManualBackward()]
    last_only = fit(net(dt), plugins, opt_func=partial(SGD, grad_attr="g"), dtype=dt)
    with pytest.raises(AssertionError):
        assert_weights_close(last_only, expected, 1e-6, 1e-6)


class StopBeforeStep:
    @hookimpl
    def step(self, learn):
        return True  # no update, no zero_grad either: the gradients stay for inspection

    @hookimpl
    def zero_grad(self, learn):
        return True


def test_g_holds_the_last_batch_gradient_and_grad_the_autograd_one():
    x, y = tiny_data(4)
    model = net(torch.float64)
    loss = F.cross_entropy(model(x.double()), y)
    loss.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model = net(torch.float64, autograd=False)
    fit_one = Learner(model, DataLoaders([(x.double(), y)]), CrossEntropy(), defaults=False)
    fit_one.add_plugin(ManualBackward())
    fit_one.add_plugin(StopBeforeStep())
    fit_one.fit(1)
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(p.g, e, rtol=1e-12, atol=1e-14)
        assert p.grad is not p.g  # .grad owns its memory: a zero_grad in place spares .g


def test_clear_errors_for_non_scratch_models_losses_and_forgotten_gradients():
    with pytest.raises(TypeError, match="ManualBackward needs the model to be a pluglearn"):
        fit(nn.Linear(4, 3), [ManualBackward()])
    with pytest.raises(TypeError, match="ManualBackward needs the loss_func to be a pluglearn"):
        x, y = tiny_data(4)
        Learner(net(), DataLoaders([(x, y)]), F.cross_entropy, plugins=[ManualBackward()]).fit(1)
    with pytest.raises(RuntimeError, match=r"parameter '2.b' has no .g after model.backward"):
        fit(net(last=NoBiasGradLinear), [ManualBackward()])


class DoubleLoss:
    @hookimpl
    def after_loss(self, learn):
        learn.loss = learn.loss * 2


def test_a_replaced_loss_is_refused_rather_than_trained_on_silently():
    with pytest.raises(
        RuntimeError, match=r"learn\.loss is not the last output of learn\.loss_func"
    ):
        fit(net(), [DoubleLoss(), ManualBackward()])
