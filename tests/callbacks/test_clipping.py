"""GradientClipping against clip_grad_norm_ written by hand, once per optimizer step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import (
    DataLoaders,
    GradientAccumulation,
    GradientClipping,
    Learner,
    MixedPrecision,
    hookimpl,
)
from tests.helpers import tiny_data


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


def train_batches(n_batches: int = 22, bs: int = 8):
    x, y = tiny_data(n_batches * bs - 3, seed=5)  # a short last batch
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]


def test_clipping_is_bit_identical_to_clip_grad_norm_by_hand():
    train = train_batches(6)
    net, ref = mlp(), mlp()
    Learner(net, DataLoaders(train), lr=0.5, plugins=[GradientClipping(0.1)]).fit(2)
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    for _ in range(2):
        for xb, yb in train:
            F.cross_entropy(ref(xb), yb).backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.1)
            opt.step()
            opt.zero_grad()
    for p, q in zip(net.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)


class CountingClipping(GradientClipping):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    @hookimpl(trylast=True)
    def before_step(self, learn):
        self.calls += 1
        super().before_step(learn)


def hand_recipe(net, train, n, max_norm):
    """Accumulation weighted by items, bf16 autocast, clipping of the whole gradient."""
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    total = 0
    for i, (xb, yb) in enumerate(train):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(net(xb), yb)
        (loss * len(yb)).backward()
        total += len(yb)
        if (i + 1) % n == 0 or i + 1 == len(train):
            for p in net.parameters():
                p.grad.div_(total)
            torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
            opt.step()
            opt.zero_grad()
            total = 0


@pytest.mark.parametrize("order", ["clip-first", "clip-last"])
def test_clipping_runs_once_per_step_on_the_whole_gradient_whatever_the_order(order):
    train = train_batches(22)
    net, ref = mlp(), mlp()
    clip = CountingClipping(0.05)
    plugins = [GradientAccumulation(4), MixedPrecision()]
    plugins = [clip, *plugins] if order == "clip-first" else [*plugins, clip]
    learn = Learner(net, DataLoaders(train), lr=0.5, plugins=plugins)
    learn.fit(1)
    assert (clip.calls, learn.opt_steps) == (6, 6)  # 22 batches in groups of 4
    hand_recipe(ref, train, 4, 0.05)
    for p, q in zip(net.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)
    assert clip.last_norm is not None and float(clip.last_norm) > 0.05  # it did clip


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_norm": 0}, ValueError, "finite number > 0"),
        ({"max_norm": float("inf")}, ValueError, "finite number > 0"),
        ({"max_norm": "1"}, TypeError, "give a number"),
        ({"max_norm": 1.0, "norm_type": -1}, ValueError, "p-norm order"),
    ],
)
def test_bad_settings_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        GradientClipping(**kwargs)
