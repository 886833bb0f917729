"""TrainStep: the default step equals a hand-written SGD loop; any plugin can replace one step."""

from __future__ import annotations

import copy
import functools
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import DataLoaders, Learner, ProgressBar, hookimpl
from pluglearn.plugins.accumulate import GradientAccumulation
from pluglearn.plugins.train_step import TrainStep

K = 3


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, K, (n,), generator=g)


def shuffled_batches(x, y, bs: int, seed: int):
    """Ready batches in a shuffled but known order."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return [(x[order[i : i + bs]], y[order[i : i + bs]]) for i in range(0, len(x), bs)]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, K))


# Not the shared make_learner: the model and batches are the test's.
def make_learner(model, train, valid, plugins=(), lr: float = 0.3, **kwargs) -> Learner:
    return Learner(
        model,
        DataLoaders(train, valid),
        lr=lr,
        plugins=[*plugins, ProgressBar(file=io.StringIO())],
        **kwargs,
    )


def hand_sgd(model, epochs, lr, loss_of=F.cross_entropy):
    """A hand-written loop: forward, loss, backward, step, zero_grad per batch."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for batches in epochs:
        for xb, yb in batches:
            loss_of(model(xb), yb).backward()
            opt.step()
            opt.zero_grad()


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name


@pytest.fixture
def data():
    x, y = make_data(10, seed=1)
    xv, yv = make_data(6, seed=2)
    return shuffled_batches(x, y, 4, seed=3), [(xv, yv)]


def test_default_step_equals_a_hand_written_sgd_loop(data):
    train, valid = data
    model = make_model()
    ref, start = copy.deepcopy(model), copy.deepcopy(model)
    learn = make_learner(model, train, valid)
    assert any(isinstance(p, TrainStep) for p in learn.plugins)
    learn.fit(2)
    hand_sgd(ref, [train, train], lr=0.3)
    assert_same_weights(model, ref)
    assert not all(
        torch.equal(p, q) for p, q in zip(model.parameters(), start.parameters(), strict=True)
    )


def test_default_step_with_a_shuffling_loader_equals_a_loop_over_torch_randperm():
    """``from_datasets(seed=s)`` shuffles with one generator seeded s: one randperm an epoch."""
    x, y = make_data(10, seed=1)
    xv, yv = make_data(6, seed=2)
    model = make_model()
    ref = copy.deepcopy(model)
    dls = DataLoaders.from_datasets((x, y), (xv, yv), batch_size=4, seed=7)
    Learner(model, dls, lr=0.3, plugins=[ProgressBar(file=io.StringIO())]).fit(2)

    g = torch.Generator().manual_seed(7)
    epochs = []
    for _ in range(2):
        order = torch.randperm(10, generator=g)
        epochs.append([(x[order[i : i + 4]], y[order[i : i + 4]]) for i in range(0, 10, 4)])
    hand_sgd(ref, epochs, lr=0.3)
    assert_same_weights(model, ref)


class SkipStep:
    """Answers ``step`` without stepping; checks that backward still produced gradients."""

    def __init__(self) -> None:
        self.had_grads: list[bool] = []

    @hookimpl
    def step(self, learn):
        self.had_grads.append(all(p.grad is not None for p in learn.model.parameters()))
        return True


def test_a_step_provider_that_does_nothing_leaves_the_weights_unchanged(data):
    train, valid = data
    model = make_model()
    start = copy.deepcopy(model)
    skip = SkipStep()
    learn = make_learner(model, train, valid, plugins=[skip], lr=1.0)
    learn.fit(2)
    assert skip.had_grads == [True] * 6
    assert_same_weights(model, start)
    assert all(p.grad is None for p in model.parameters())  # zero_grad (set_to_none) still ran


class ZeroPreds:
    """Predicts zeros (the model's output times 0): uniform probabilities over the classes."""

    @hookimpl
    def predict(self, learn):
        return learn.model(learn.xb) * 0


def test_a_predict_provider_is_used(data):
    train, valid = data
    model = make_model()
    start = copy.deepcopy(model)
    learn = make_learner(model, train, valid, plugins=[ZeroPreds()], lr=1.0)
    learn.fit(1)
    assert learn.metrics["train_loss"] == pytest.approx(math.log(K), rel=1e-6)
    assert learn.metrics["valid_loss"] == pytest.approx(math.log(K), rel=1e-6)
    assert_same_weights(model, start)  # the gradient of 0 * output is zero
    preds, _ = learn.get_preds()
    assert torch.equal(preds, torch.zeros(6, K))


class DoubleBackward:
    @hookimpl
    def backward(self, learn):
        (learn.loss * 2).backward()
        return True


class MseOnOneHot:
    @hookimpl
    def compute_loss(self, learn):
        return F.mse_loss(learn.preds.softmax(1), F.one_hot(learn.yb, K).float())


def mse_on_one_hot(preds, y):
    return F.mse_loss(preds.softmax(1), F.one_hot(y, K).float())


@pytest.mark.parametrize(
    ("provider", "loss_of"),
    [
        (DoubleBackward(), lambda preds, y: F.cross_entropy(preds, y) * 2),
        (MseOnOneHot(), mse_on_one_hot),
    ],
    ids=["backward", "compute_loss"],
)
def test_backward_and_compute_loss_providers_replace_the_default(data, provider, loss_of):
    train, valid = data
    model = make_model()
    ref = copy.deepcopy(model)
    make_learner(model, train, valid, plugins=[provider]).fit(1)
    hand_sgd(ref, [train], lr=0.3, loss_of=loss_of)
    assert_same_weights(model, ref)


def test_gradient_accumulation_by_step_and_zero_grad_providers():
    x, y = make_data(16, seed=4)
    train = shuffled_batches(x, y, 4, seed=5)  # 4 batches
    model = make_model()
    ref = copy.deepcopy(model)
    make_learner(model, train, train[:1], plugins=[GradientAccumulation(2, scale_loss=False)]).fit(
        1
    )

    opt = torch.optim.SGD(ref.parameters(), lr=0.3)
    for i, (xb, yb) in enumerate(train):
        F.cross_entropy(ref(xb), yb).backward()
        if i % 2 == 1:
            opt.step()
            opt.zero_grad()
    assert_same_weights(model, ref)


# ------------------------------------------------------------ a loss that cannot train


@pytest.mark.parametrize(
    "loss_func",
    [F.cross_entropy, nn.CrossEntropyLoss(), functools.partial(F.cross_entropy, weight=None)],
    ids=["function", "module", "partial"],
)
def test_cross_entropy_on_one_output_column_is_refused_at_the_first_batch(loss_func):
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    y = (x[:, 0] > 0).float()[:, None]  # float (n, 1) targets: softmax over one column is 1
    model = nn.Linear(4, 1)
    assert loss_func(model(x), y).item() == 0.0  # the trap: loss 0.0000 and no gradient
    before = copy.deepcopy(model.state_dict())
    learn = Learner(model, DataLoaders.from_datasets((x, y), batch_size=8), loss_func)
    with pytest.raises(ValueError, match=r"predictions of shape \(8, 1\)") as info:
        learn.fit(1)
    text = str(info.value)
    assert "one output column" in text and "loss is always 0" in text
    assert "binary_cross_entropy_with_logits" in text
    assert "as many outputs as classes" in text and "y.long()" in text
    assert learn.train_iter == 0  # the first batch, before any step
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    bce = F.binary_cross_entropy_with_logits
    dls = DataLoaders.from_datasets((x, y), batch_size=8)
    fixed = Learner(nn.Linear(4, 1), dls, bce, lr=0.5, plugins=[ProgressBar(file=io.StringIO())])
    fixed.fit(3)  # the fix the message names trains
    assert fixed.metrics["train_loss"] < 0.6


def test_the_loss_reduction_is_read_from_modules_partials_and_function_defaults():
    from functools import partial

    from pluglearn.plugins.train_step import loss_reduction

    assert loss_reduction(F.cross_entropy) == "mean"
    assert loss_reduction(partial(F.cross_entropy, reduction="sum")) == "sum"
    assert loss_reduction(partial(partial(F.mse_loss), label_smoothing=0)) == "mean"
    assert loss_reduction(torch.nn.MSELoss(reduction="sum")) == "sum"
    assert loss_reduction(lambda preds, targets: (preds - targets).sum()) is None
    assert loss_reduction(torch.nn.Identity()) is None
