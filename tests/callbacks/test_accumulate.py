"""GradientAccumulation against a hand-written accumulation loop."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import DataLoaders, Learner
from pluglearn.callbacks.accumulate import GradientAccumulation
from tests.helpers import batches, tiny_data


def hand_loop(model: nn.Module, train, n: int, lr: float) -> list[float]:
    """Mean gradient over each group of n batches (and the ragged last group), one step each."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for i, (xb, yb) in enumerate(train):
        loss = F.cross_entropy(model(xb), yb)
        losses.append(loss.item() * len(yb))
        (loss / n).backward()
        if (i + 1) % n == 0 or i + 1 == len(train):
            opt.step()
            opt.zero_grad()
    return losses


@pytest.mark.parametrize("n", [1, 2, 3])
def test_accumulation_equals_the_hand_written_loop_and_leaves_the_loss_unscaled(n):
    torch.manual_seed(0)
    x, y = tiny_data(20)
    train = batches(x, y, 4)  # 5 batches: n=2 and n=3 end on a ragged group
    model = nn.Linear(4, 3)
    ref = copy.deepcopy(model)
    learn = Learner(model, DataLoaders(train), lr=0.5, plugins=[GradientAccumulation(n)])
    learn.fit(1)
    losses = hand_loop(ref, train, n, lr=0.5)
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert learn.metrics["train_loss"] == pytest.approx(sum(losses) / 20, rel=1e-6)


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_the_number_of_batches_must_be_a_positive_int(n):
    with pytest.raises(ValueError, match="give an int >= 1"):
        GradientAccumulation(n)
