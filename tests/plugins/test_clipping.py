"""GradientClipping against clip_grad_norm_ written by hand, once per optimizer step."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import StepLR

from pluglearn import (
    DataLoaders,
    GradientAccumulation,
    GradientClipping,
    Learner,
    MixedPrecision,
    Recorder,
    Scheduler,
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


# ------------------------------------------------------------------ non-finite gradients


def poisoned_batches(n_batches: int = 6, at: int = 2, bs: int = 8):
    """Batches of which batch ``at`` holds a NaN input: its loss and gradients are NaN."""
    train = train_batches(n_batches, bs)
    xb, yb = train[at]
    xb = xb.clone()
    xb[0, 0] = float("nan")
    train[at] = (xb, yb)
    return train


def hand_skipping_loop(net, train, epochs, max_norm):
    """clip_grad_norm_, and a step skipped as GradScaler skips one: the optimizer and the
    scheduler do not step, the gradients are zeroed. Returns the lr each batch used and the
    number of skipped steps."""
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    sched = StepLR(opt, step_size=1, gamma=0.8)
    lrs, skipped = [], 0
    for _ in range(epochs):
        for xb, yb in train:
            lrs.append(opt.param_groups[0]["lr"])
            F.cross_entropy(net(xb), yb).backward()
            norm = torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
            if torch.isfinite(norm):
                opt.step()
                sched.step()
            else:
                skipped += 1
            opt.zero_grad()
    return opt, lrs, skipped


def test_a_non_finite_gradient_skips_the_step_as_grad_scaler_does_and_warns():
    train = poisoned_batches()
    net, ref = mlp(), mlp()
    clip, rec = GradientClipping(1.0), Recorder()
    sgd = lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9)  # noqa: E731
    scheduler = Scheduler(lambda opt: StepLR(opt, step_size=1, gamma=0.8))
    learn = Learner(net, DataLoaders(train), lr=0.5, opt_func=sgd, plugins=[clip, rec, scheduler])
    with pytest.warns(UserWarning, match="non-finite gradient") as caught:
        learn.fit(2)
    opt, lrs, skipped = hand_skipping_loop(ref, train, 2, 1.0)
    assert skipped == 2 and clip.skipped == 2  # batch 2 of each epoch
    assert len(caught) == 2
    text = str(caught[0].message)
    assert "epoch 0, batch 2" in text and "step was skipped" in text and "1 so far" in text
    assert rec.lrs == lrs  # the scheduler did not step either
    for p, q in zip(net.parameters(), ref.parameters(), strict=True):
        assert torch.isfinite(p).all() and torch.equal(p, q)
    for mine, theirs in zip(learn.opt.state.values(), opt.state.values(), strict=True):
        assert torch.equal(mine["momentum_buffer"], theirs["momentum_buffer"])
    assert all(p.grad is None or not p.grad.any() for p in net.parameters())  # zeroed


def test_error_if_nonfinite_raises_instead_of_skipping():
    learn = Learner(
        mlp(),
        DataLoaders(poisoned_batches()),
        plugins=[GradientClipping(1.0, error_if_nonfinite=True)],
    )
    with pytest.raises(RuntimeError, match="non-finite"):
        learn.fit(1)


@pytest.mark.parametrize("device", ["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
def test_with_a_grad_scaler_the_scaler_skips_a_non_finite_step_and_clipping_leaves_it(device):
    train = [(x.to(device), y.to(device)) for x, y in poisoned_batches()]
    net, ref = mlp().to(device), mlp().to(device)
    clip = GradientClipping(1.0)
    learn = Learner(net, DataLoaders(train), lr=0.5, plugins=[clip, MixedPrecision(torch.float16)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: a scaler's skipped step is routine
        learn.fit(1)
    assert clip.skipped == 0
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler(device)
    for xb, yb in train:
        with torch.autocast(device, dtype=torch.float16):
            loss = F.cross_entropy(ref(xb), yb)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    assert learn.plugin("MixedPrecision").scaler.get_scale() == scaler.get_scale() < 2.0**16
    for p, q in zip(net.parameters(), ref.parameters(), strict=True):
        assert torch.isfinite(p).all() and torch.equal(p, q)
