"""The notebook's whole models in pluglearn.scratch.layers: both forms of ``Model`` and the ``MLP``
trained with autograd, against torch's functional ops and ``torch.optim.SGD`` (the oracles)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn.scratch import MLP, Linear, Model


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _regression(n: int = 9, n_in: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    x = torch.randn(n, n_in, generator=g, dtype=torch.float64)
    return x, torch.randn(n, generator=g, dtype=torch.float64)


def test_model_of_sizes_makes_linear_layers_and_trains_with_autograd():
    x, y = _regression()
    model = Model(6, 5, 1, generator=_gen(2), dtype=torch.float64)
    first = Linear(6, 5, generator=_gen(2), dtype=torch.float64)  # the same draws, in order
    assert torch.equal(model.layers[0].w, first.w)
    params = [model.layers[0].w, model.layers[0].b, model.layers[2].w, model.layers[2].b]
    assert all(p.requires_grad for p in params)
    names = [n for n, _ in model.named_parameters()]
    assert names == ["layers.0.w", "layers.0.b", "layers.2.w", "layers.2.b"]
    refs = [p.detach().clone().requires_grad_() for p in params]
    expected = F.mse_loss(F.relu(x @ refs[0] + refs[1]) @ refs[2] + refs[3], y[:, None])
    loss = model(x, y)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    for p, g in zip(params, torch.autograd.grad(expected, refs), strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-12)
    model.backward()  # the manual backward on the same forward gives the same gradients
    for p in params:
        torch.testing.assert_close(p.g, p.grad, rtol=1e-12, atol=1e-12)


def test_model_of_tensors_wraps_them_for_the_manual_backward():
    x, y = _regression()
    g = _gen(3)
    w1, b1 = (
        torch.randn(6, 4, generator=g, dtype=torch.float64),
        torch.zeros(4, dtype=torch.float64),
    )
    w2, b2 = (
        torch.randn(4, 1, generator=g, dtype=torch.float64),
        torch.zeros(1, dtype=torch.float64),
    )
    model = Model(w1, b1, w2, b2)
    assert model.layers[0].w is w1 and not w1.requires_grad  # the given tensors, left as they are
    model(x, y)
    model.backward()
    refs = [t.clone().requires_grad_() for t in (w1, b1, w2, b2)]
    loss = F.mse_loss(F.relu(x @ refs[0] + refs[1]) @ refs[2] + refs[3], y[:, None])
    for t, ref in zip((w1, b1, w2, b2), torch.autograd.grad(loss, refs), strict=True):
        torch.testing.assert_close(t.g, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((6, 5), {}, r"four tensors \(w1, b1, w2, b2\) or three ints \(n_in, nh, n_out\), got"),
        ((6, 5.0, 1), {}, r"got \(int, float, int\): e.g. Model\(w1, b1, w2, b2\)"),
        ((6, True, 1), {}, "three ints"),
        (tuple(torch.zeros(2, 2) for _ in range(4)), {"dtype": torch.float64}, "generator and"),
    ],
)
def test_model_refuses_other_arguments_by_name(args, kwargs, match):
    with pytest.raises(TypeError, match=match):
        Model(*args, **kwargs)


def test_model_called_without_targets_says_how_to_get_predictions():
    model = Model(3, 2, 1)
    with pytest.raises(TypeError, match=r"needs the targets.*model\.layers\(x\)"):
        model(torch.randn(4, 3))
    assert model.layers(torch.randn(4, 3)).shape == (4, 1)


def test_mlp_trains_with_autograd_like_torch_sgd():
    """The notebook's loop (loss.backward(), p -= p.grad * lr, model.zero_grad()) on the scratch
    MLP steps like torch.optim.SGD on nn.Linear layers holding the same weights."""
    g = _gen(4)
    x, y = torch.randn(20, 6, generator=g), torch.randint(0, 3, (20,), generator=g)
    model = MLP(6, 5, 3, generator=g)
    assert all(p.requires_grad for p in model.parameters())
    twin = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():  # nn.Linear's weight is (out, in): the transpose of ours
        for ours, theirs in zip(model.parameters(), twin.parameters(), strict=True):
            theirs.copy_(ours.T if ours.ndim == 2 else ours)
    opt, lr = torch.optim.SGD(twin.parameters(), lr=0.3), 0.3
    for i in range(0, 20, 5):
        F.cross_entropy(model(x[i : i + 5]), y[i : i + 5]).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= p.grad * lr
            model.zero_grad()
        F.cross_entropy(twin(x[i : i + 5]), y[i : i + 5]).backward()
        opt.step()
        opt.zero_grad()
    for ours, theirs in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(ours.T if ours.ndim == 2 else ours, theirs.detach())


def test_mlp_without_autograd_builds_no_graph():
    model = MLP(4, 3, 2, requires_grad=False)
    assert not any(p.requires_grad for p in model.parameters())
    assert model(torch.randn(2, 4)).grad_fn is None
