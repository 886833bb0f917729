"""pluglearn.scratch.optim.SGD step for step against torch.optim.SGD (torch is the oracle)."""

from __future__ import annotations

import pytest
import torch

from pluglearn.scratch import SGD, CrossEntropy, Linear, Mse, Relu, Sequential


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _params(seed: int = 0) -> list[torch.Tensor]:
    g = _gen(seed)
    return [
        torch.randn(3, 4, generator=g, dtype=torch.float64),
        torch.randn(3, generator=g).double(),
    ]


def _loss(params: list[torch.Tensor], step: int) -> torch.Tensor:
    """A step-dependent smooth loss so gradients change every step."""
    w, b = params
    x = torch.randn(5, 4, generator=_gen(100 + step), dtype=torch.float64)
    return ((x @ w.T + b).tanh() ** 2).sum()


CONFIGS = [
    {"lr": 0.1},
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.05, "weight_decay": 0.01},
    {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01},
    {"lr": 0.05, "momentum": 0.8, "weight_decay": 0.1, "nesterov": True},
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("grad_attr", ["g", "grad"])
def test_sgd_matches_torch_step_for_step(cfg, grad_attr):
    ours = [p.clone().requires_grad_() for p in _params()]
    ref = [p.clone().requires_grad_() for p in _params()]
    opt = SGD(ours, grad_attr=grad_attr, **cfg)
    ref_opt = torch.optim.SGD(ref, **cfg)
    for step in range(8):
        _loss(ours, step).backward()
        if grad_attr == "g":  # hand the gradient over as a manual .g
            for p in ours:
                p.g, p.grad = p.grad, None
        opt.step()
        opt.zero_grad()
        ref_opt.zero_grad()
        _loss(ref, step).backward()
        ref_opt.step()
        for mine, theirs in zip(ours, ref, strict=True):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
            assert getattr(mine, grad_attr) is None  # zero_grad cleared it
    assert not torch.equal(ours[0], _params()[0])  # it really moved


def test_sgd_trains_scratch_model_with_manual_gradients_like_torch():
    def model(seed):
        g = _gen(seed)
        return Sequential(
            Linear(4, 8, generator=g, dtype=torch.float64),
            Relu(),
            Linear(8, 3, generator=g, dtype=torch.float64),
        )

    manual, auto = model(1), model(1)
    auto.requires_grad_()
    opt = SGD(manual.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    ref_opt = torch.optim.SGD(list(auto.parameters()), lr=0.1, momentum=0.9, weight_decay=1e-3)
    g = _gen(2)
    x = torch.randn(32, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (32,), generator=g)
    losses = []
    for _ in range(10):
        loss_fn = CrossEntropy()
        losses.append(loss_fn(manual(x), y).item())
        loss_fn.backward()
        manual.backward()
        opt.step()

        ref_opt.zero_grad()
        CrossEntropy()(auto(x), y).backward()
        ref_opt.step()
    assert losses[-1] < losses[0]
    for (name, p), (_, q) in zip(manual.named_parameters(), auto.named_parameters(), strict=True):
        torch.testing.assert_close(p, q.detach(), rtol=1e-10, atol=1e-12, msg=name)


def test_params_without_gradient_are_skipped_and_lr_is_settable():
    w = torch.ones(2, dtype=torch.float64)
    b = torch.ones(2, dtype=torch.float64)
    opt = SGD([w, b], lr=0.5)
    w.g = torch.tensor([1.0, 2.0], dtype=torch.float64)
    opt.step()
    assert w.tolist() == [0.5, 0.0] and b.tolist() == [1.0, 1.0]
    opt.lr = 0.25
    assert opt.lr == 0.25
    opt.step()
    assert w.tolist() == [0.25, -0.5]
    with pytest.raises(ValueError, match="lr must be > 0"):
        opt.lr = 0


def test_mse_training_reduces_loss():
    g = _gen(3)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([2.0, -1.0], dtype=torch.float64) + 0.5
    lin, loss_fn = Linear(2, 1, generator=g, dtype=torch.float64), Mse()
    opt = SGD(lin.parameters(), lr=0.1)
    first = loss_fn(lin(x), y).item()
    for _ in range(100):
        loss_fn(lin(x), y)
        loss_fn.backward()
        lin.backward()
        opt.step()
    assert loss_fn(lin(x), y).item() < 1e-6 < first
    torch.testing.assert_close(
        lin.w.flatten(), torch.tensor([2.0, -1.0]).double(), atol=1e-3, rtol=0
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0}, "lr must be > 0"),
        ({"lr": -0.1}, r"lr must be >= 0\.0.*lr=0\.1"),
        ({"lr": "0.1"}, "lr must be a real number"),
        ({"lr": True}, "lr must be a real number"),
        ({"lr": float("nan")}, "lr must be"),
        ({"lr": 0.1, "momentum": 1.0}, r"momentum must be \[0\.0, 1\.0\)"),
        ({"lr": 0.1, "momentum": -0.5}, "momentum must be"),
        ({"lr": 0.1, "weight_decay": -1}, "weight_decay must be"),
        ({"lr": 0.1, "nesterov": True}, "nesterov=True needs momentum > 0"),
        ({"lr": 0.1, "grad_attr": "gradient"}, "grad_attr must be 'g'"),
    ],
)
def test_invalid_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SGD([torch.zeros(2)], **kwargs)


def test_invalid_params_and_gradient_shapes_raise():
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="floating-point"):
        SGD([torch.zeros(2, dtype=torch.long)], lr=0.1)
    p = torch.zeros(2)
    p.g = torch.zeros(3)
    with pytest.raises(ValueError, match=r"its \.g has shape \(3,\)"):
        SGD([p], lr=0.1).step()
