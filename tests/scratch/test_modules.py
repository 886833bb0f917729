"""Manual backward of pluglearn.scratch.modules against autograd (torch is the oracle)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pluglearn.scratch import (
    MLP,
    CrossEntropy,
    Linear,
    Module,
    Mse,
    Parameter,
    Relu,
    Sequential,
    is_parameter,
)

TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-12}, torch.float32: {"rtol": 1e-4, "atol": 1e-5}}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _check_manual_equals_autograd(model: Module, loss_fn: Module, x, y, dtype) -> None:
    """Run one forward; compare .g (manual) with .grad (autograd) on x and every parameter."""
    model.requires_grad_()
    x.requires_grad_()
    loss = loss_fn(model(x), y)
    loss_fn.backward()
    model.backward()
    loss.backward()
    named = list(model.named_parameters())
    assert named, "model has no parameters to check"
    for name, p in [*named, ("input", x)]:
        assert p.g is not None and p.grad is not None, name
        assert not p.g.requires_grad, f"{name}.g must not be part of the autograd graph"
        assert p.g.dtype == dtype
        torch.testing.assert_close(p.g, p.grad, **TOL[dtype], msg=lambda m, n=name: f"{n}: {m}")


def _mlp(n_in: int, n_h: int, n_out: int, dtype) -> Sequential:
    g = _gen(1)
    return Sequential(
        Linear(n_in, n_h, generator=g, dtype=dtype),
        Relu(),
        Linear(n_h, n_h, generator=g, dtype=dtype),
        Relu(),
        Linear(n_h, n_out, generator=g, dtype=dtype),
    )


# ---- gradients ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sequential_mse_gradients_equal_autograd(dtype):
    g = _gen(2)
    x = torch.randn(16, 20, generator=g, dtype=dtype)
    y = torch.randn(16, generator=g, dtype=dtype)
    x[0] = 0.0  # zero row + zero biases: ReLU inputs exactly 0, where slopes must agree (0)
    _check_manual_equals_autograd(_mlp(20, 8, 1, dtype), Mse(), x, y, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sequential_cross_entropy_gradients_equal_autograd(dtype):
    g = _gen(3)
    x = torch.randn(16, 20, generator=g, dtype=dtype)
    y = torch.randint(0, 5, (16,), generator=g)
    _check_manual_equals_autograd(_mlp(20, 8, 5, dtype), CrossEntropy(), x, y, dtype)


def test_mlp_helper_gradients_and_names():
    g = _gen(4)
    model = MLP(6, 5, 3, generator=g, dtype=torch.float64)
    x = torch.randn(7, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (7,), generator=g)
    _check_manual_equals_autograd(model, CrossEntropy(), x, y, torch.float64)
    names = [n for n, _ in model.named_parameters()]
    assert names == ["l1.w", "l1.b", "l2.w", "l2.b"]  # the notebook's l1, l2


def test_linear_alone_with_upstream_gradient_and_extra_dims():
    g = _gen(5)
    lin = Linear(3, 4, generator=g, dtype=torch.float64).requires_grad_()
    lin.b.data.uniform_(-1, 1, generator=g)  # non-zero bias
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    out = lin(x)
    torch.testing.assert_close(out, F.linear(x, lin.w.T, lin.b))  # w is (in, out)
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64)
    out.g = upstream
    lin.backward()
    out.backward(upstream)
    for t in (x, lin.w, lin.b):
        torch.testing.assert_close(t.g, t.grad, rtol=1e-12, atol=1e-12)


def test_relu_and_mse_hand_values():
    x = torch.tensor([[-1.0], [0.0], [2.0]], dtype=torch.float64)
    relu = Relu()
    out = relu(x)
    out.g = torch.tensor([[5.0], [5.0], [5.0]], dtype=torch.float64)
    relu.backward()
    assert x.g.flatten().tolist() == [0.0, 0.0, 5.0]  # 0 at x == 0, like torch
    assert x.g.dtype == torch.float64

    pred = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    targ = torch.tensor([0.0, 1.0], dtype=torch.float64)
    loss_fn = Mse()
    assert loss_fn(pred, targ).item() == pytest.approx((1 + 4) / 2)
    loss_fn.backward()
    assert pred.g.shape == (2, 1)
    assert pred.g.flatten().tolist() == [1.0, 2.0]  # 2(p - t)/n


def test_cross_entropy_backward_is_softmax_minus_one_hot():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([2, 0])
    ce = CrossEntropy()
    torch.testing.assert_close(ce(logits, t), F.cross_entropy(logits, t))
    ce.backward()
    expected = (torch.softmax(logits, -1) - F.one_hot(t, 3)) / 2
    torch.testing.assert_close(logits.g, expected)


@pytest.mark.parametrize("loss_cls", [Mse, CrossEntropy])
def test_loss_modules_scale_by_upstream_gradient(loss_cls):
    g = _gen(9)
    if loss_cls is Mse:
        inp, targ = torch.randn(5, 1, generator=g).double(), torch.randn(5, generator=g).double()
    else:
        inp, targ = torch.randn(5, 3, generator=g).double(), torch.randint(0, 3, (5,), generator=g)
    inp.requires_grad_()
    loss_fn = loss_cls()
    loss = loss_fn(inp, targ)
    loss.g = torch.tensor(3.0, dtype=torch.float64)  # e.g. the loss is one term of 3 * loss
    loss_fn.backward()
    (3 * loss).backward()
    torch.testing.assert_close(inp.g, inp.grad, rtol=1e-12, atol=1e-12)


def test_user_defined_tanh_subclass():
    class Tanh(Module):
        def forward(self, x):
            return torch.tanh(x)

        def bwd(self, out, x):
            x.g = (1 - out**2) * out.g  # d tanh = 1 - tanh²

    g = _gen(6)
    model = Sequential(
        Linear(4, 6, generator=g, dtype=torch.float64),
        Tanh(),
        Linear(6, 1, generator=g, dtype=torch.float64),
    )
    x = torch.randn(9, 4, generator=g, dtype=torch.float64)
    y = torch.randn(9, generator=g, dtype=torch.float64)
    _check_manual_equals_autograd(model, Mse(), x, y, torch.float64)
    assert "(1): Tanh()" in repr(model)


def test_manual_backward_without_autograd_leaves_no_grad():
    g = _gen(7)
    model = _mlp(5, 4, 1, torch.float32)
    x, y = torch.randn(3, 5, generator=g), torch.randn(3, generator=g)
    loss_fn = Mse()
    loss_fn(model(x), y)
    loss_fn.backward()
    model.backward()
    for _, p in model.named_parameters():
        assert p.grad is None and not p.requires_grad
        assert p.g.shape == p.shape


# ---- parameters, names, repr --------------------------------------------------------------------
def test_parameters_are_plain_tensors_registered_by_setattr():
    model = _mlp(4, 3, 2, torch.float32)
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.w", "0.b", "2.w", "2.b", "4.w", "4.b"]
    params = list(model.parameters())
    assert len(params) == 6
    assert all(type(p) is torch.Tensor and is_parameter(p) for p in params)
    assert params[0] is model[0].w
    assert model[0].w.shape == (4, 3) and model[0].b.shape == (3,)  # w is (in, out)
    assert [type(m).__name__ for m in model] == ["Linear", "Relu", "Linear", "Relu", "Linear"]
    assert len(model) == 5


def test_registration_rules():
    class Net(Module):
        def __init__(self):  # no super().__init__(): registries are created lazily
            self.scale = Parameter(torch.ones(1))
            self.buffer = torch.zeros(3)  # plain tensor: not a parameter
            self.layers = [Linear(2, 3), Relu()]  # list of Modules -> Sequential
            self.tp = torch.nn.Parameter(torch.ones(2))  # torch parameters count too

    net = Net()
    assert isinstance(net.layers, Sequential)
    assert [n for n, _ in net.named_parameters()] == ["scale", "tp", "layers.0.w", "layers.0.b"]
    net.scale = torch.ones(1)  # re-assigning a plain tensor unregisters
    del net.tp
    assert [n for n, _ in net.named_parameters()] == ["layers.0.w", "layers.0.b"]
    shared = Linear(2, 2)
    both = Sequential(shared, shared)
    assert [n for n, _ in both.named_parameters()] == ["0.w", "0.b"]  # shared tensors once


def test_parameter_helper():
    t = torch.zeros(3)
    assert Parameter(t) is t and is_parameter(t) and not t.requires_grad
    assert Parameter(torch.zeros(2), requires_grad=True).requires_grad
    assert not is_parameter(torch.zeros(2)) and not is_parameter(3.0)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        Parameter([1.0])


def test_kaiming_init_and_generator_reproducibility():
    a = Linear(400, 300, generator=_gen(8))
    b = Linear(400, 300, generator=_gen(8))
    assert torch.equal(a.w, b.w)
    assert a.w.std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.05)
    assert a.w.mean().abs().item() < 0.01
    assert torch.equal(a.b, torch.zeros(300))
    assert Linear(3, 2, dtype=torch.float64).w.dtype == torch.float64
    assert Linear(3, 2, bias=False).b is None


def test_repr_is_torch_like():
    model = MLP(4, 3, 2)
    assert repr(model) == (
        "MLP(\n"
        "  (l1): Linear(n_in=4, n_out=3, bias=True)\n"
        "  (l2): Linear(n_in=3, n_out=2, bias=True)\n"
        "  (relu): Relu()\n"
        ")"
    )
    assert repr(Mse()) == "Mse()"


# ---- errors -------------------------------------------------------------------------------------
def test_backward_before_forward_raises():
    with pytest.raises(RuntimeError, match="before a forward pass"):
        Linear(2, 3).backward()


def test_missing_upstream_gradient_raises():
    lin = Linear(2, 3)
    lin(torch.randn(4, 2))
    with pytest.raises(RuntimeError, match=r"out\.g is missing"):
        lin.backward()


def test_unimplemented_forward_and_bwd_name_the_class():
    class Half(Module):
        def forward(self, x):
            return x / 2

    with pytest.raises(NotImplementedError, match=r"Half\.bwd is not implemented.*def bwd"):
        h = Half()
        h(torch.ones(2)).g = torch.ones(2)
        h.backward()

    class Empty(Module):
        pass

    with pytest.raises(NotImplementedError, match=r"Empty\.forward is not implemented"):
        Empty()(torch.ones(1))


def test_sequential_rejects_non_modules_and_bad_linear_sizes():
    with pytest.raises(TypeError, match="not a scratch Module"):
        Sequential(Linear(2, 2), torch.relu)
    with pytest.raises(ValueError, match="n_in >= 1"):
        Linear(0, 3)


def test_zero_grad_clears_autograd_gradients_like_nn_module():
    model = _mlp(4, 3, 2, torch.float32).requires_grad_()
    twin = torch.nn.Module()  # torch's zero_grad on copies of the same parameters: the oracle
    twin.params = torch.nn.ParameterList(p.detach().clone() for p in model.parameters())
    for params in (model.parameters(), twin.parameters()):
        sum(p.sum() for p in params).backward()
    model.zero_grad()
    twin.zero_grad()
    assert [p.grad for p in model.parameters()] == [p.grad for p in twin.parameters()] == [None] * 6
    sum(p.sum() for p in model.parameters()).backward()
    kept = [p.grad for p in model.parameters()]
    model.zero_grad(set_to_none=False)  # zeroed in place: the same tensors
    assert all(p.grad is g and not g.any() for p, g in zip(model.parameters(), kept, strict=True))


def test_train_eval_and_state_dict_round_trip():

    torch.manual_seed(0)
    model = MLP(4, 5, 3)
    assert model.training
    model.eval()
    assert not model.training and all(not m.training for m in model.children())
    other = MLP(4, 5, 3)
    other.load_state_dict(model.state_dict())
    for (n1, a), (n2, b) in zip(model.named_parameters(), other.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(a, b) and a is not b
