"""Scheduler and fit_one_cycle against torch's schedulers stepped by hand; resume bit for bit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, OneCycleLR, ReduceLROnPlateau, StepLR

from pluglearn import (
    Checkpoint,
    DataLoaders,
    GradientAccumulation,
    Learner,
    Recorder,
    Scheduler,
)
from tests.helpers import CrashAt, tiny_data


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


def train_batches(n_batches: int = 7, bs: int = 8):
    x, y = tiny_data(n_batches * bs, seed=7)
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]


def hand_one_cycle(net, train, epochs, lr_max, n=1):
    """OneCycleLR over the optimizer steps, accumulation by items; the lr/momentum of each batch."""
    opt = torch.optim.SGD(net.parameters(), lr=lr_max)
    steps = epochs * math.ceil(len(train) / n)
    sched = OneCycleLR(opt, max_lr=lr_max, total_steps=steps)
    lrs, moms, total = [], [], 0
    for _ in range(epochs):
        for i, (xb, yb) in enumerate(train):
            lrs.append(opt.param_groups[0]["lr"])
            moms.append(opt.param_groups[0]["momentum"])
            loss = F.cross_entropy(net(xb), yb)
            (loss * len(yb) if n > 1 else loss).backward()
            total += len(yb)
            if (i + 1) % n == 0 or i + 1 == len(train):
                if n > 1:
                    for p in net.parameters():
                        p.grad.div_(total)
                total = 0
                opt.step()
                sched.step()
                opt.zero_grad()
    return lrs, moms


@pytest.mark.parametrize("n", [1, 3])
def test_fit_one_cycle_is_bit_identical_to_one_cycle_lr_by_hand(n):
    train = train_batches()
    net, ref = mlp(), mlp()
    rec = Recorder()
    plugins = [rec] + ([GradientAccumulation(n)] if n > 1 else [])
    learn = Learner(net, DataLoaders(train), plugins=plugins)
    learn.fit_one_cycle(3, lr_max=0.5)
    lrs, moms = hand_one_cycle(ref, train, 3, 0.5, n)
    assert rec.lrs == lrs and rec.moms == moms  # the values each batch used
    for p, q in zip(net.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not any(isinstance(p, Scheduler) for p in learn.plugins)  # for this fit only


def test_an_epoch_scheduler_steps_once_per_epoch_and_plateau_reads_the_monitor():
    train = train_batches(3)
    rec = Recorder()
    learn = Learner(mlp(), DataLoaders(train, train[:1]), lr=0.8, plugins=[rec])
    learn.fit(4, plugins=[Scheduler(lambda opt: StepLR(opt, 1, gamma=0.5), interval="epoch")])
    assert rec.lrs == [0.8] * 3 + [0.4] * 3 + [0.2] * 3 + [0.1] * 3
    rec = Recorder()
    plateau = Scheduler(lambda opt: ReduceLROnPlateau(opt, patience=0, factor=0.5, eps=0), "epoch")
    learn = Learner(mlp(), DataLoaders(train, train[:1]), lr=1e-6, plugins=[rec, plateau])
    learn.fit(4)  # an lr this small improves the valid loss by less than the threshold
    assert rec.lrs[::3] == [1e-6, 1e-6, 5e-7, 2.5e-7]


def learner(plugins=()):
    x, y = tiny_data(64, seed=8)
    dls = DataLoaders.from_datasets((x[:56], y[:56]), (x[56:], y[56:]), batch_size=8, seed=2)
    return Learner(mlp(), dls, plugins=[Recorder(), *plugins])


@pytest.mark.parametrize(
    ("factory", "interval"),
    [
        (lambda opt: OneCycleLR(opt, max_lr=0.5, total_steps=21), "batch"),
        (lambda opt: CosineAnnealingLR(opt, 3), "epoch"),
    ],
    ids=["one-cycle-per-batch", "cosine-per-epoch"],
)
@pytest.mark.slow
def test_a_resumed_run_follows_the_same_lr_and_momentum_sequence(tmp_path, factory, interval):
    done = learner([Scheduler(factory, interval)])
    done.fit(3)
    with pytest.raises(RuntimeError, match="killed"):
        learner([Scheduler(factory, interval), Checkpoint(tmp_path, every_n_batches=1)]).fit(
            3, plugins=[CrashAt(1, 3)]
        )
    resumed = learner([Scheduler(factory, interval), Checkpoint(tmp_path, every_n_batches=1)])
    resumed.fit(3, resume_from=tmp_path)
    a, b = done.plugin("Recorder"), resumed.plugin("Recorder")
    assert (a.lrs, a.moms, a.losses) == (b.lrs, b.moms, b.losses)
    for p, q in zip(done.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_fit_one_cycle_resumes_exactly(tmp_path):
    done = learner()
    done.fit_one_cycle(3, 0.5)
    with pytest.raises(RuntimeError, match="killed"):
        learner([Checkpoint(tmp_path, every_n_batches=1), CrashAt(1, 4)]).fit_one_cycle(3, 0.5)
    resumed = learner([Checkpoint(tmp_path, every_n_batches=1)])
    resumed.fit_one_cycle(3, 0.5, resume_from=tmp_path)
    a, b = done.plugin("Recorder"), resumed.plugin("Recorder")
    assert (a.lrs, a.moms) == (b.lrs, b.moms)
    for p, q in zip(done.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_crashed_fit_one_cycle_puts_the_settings_back_and_resumes_exactly_in_process(tmp_path):
    done = learner()
    done.fit_one_cycle(3, 0.5)
    learn = learner([Checkpoint(tmp_path, every_n_batches=1)])
    with pytest.raises(RuntimeError, match="killed"):
        learn.fit_one_cycle(3, 0.5, plugins=[CrashAt(1, 4)])
    assert learn.lr == 0.1 and momentum(learn.opt) == 0  # the Learner's, not the cycle's
    learn.fit_one_cycle(3, 0.5, resume_from=tmp_path)  # the checkpoint's settings go on
    a, b = done.plugin("Recorder"), learn.plugin("Recorder")
    assert (a.lrs, a.moms) == (b.lrs, b.moms)
    for p, q in zip(done.model.parameters(), learn.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_bad_settings_are_refused_with_the_fix():
    learn = Learner(mlp(), DataLoaders(train_batches(2)))
    opt = torch.optim.SGD(mlp().parameters(), lr=0.1)
    with pytest.raises(TypeError, match="takes a factory"):
        Scheduler(StepLR(opt, 1))
    with pytest.raises(ValueError, match="give 'batch' or 'epoch'"):
        Scheduler(lambda o: StepLR(o, 1), interval="step")
    with pytest.raises(ValueError, match="interval='epoch'"):
        learn.fit(1, plugins=[Scheduler(lambda o: ReduceLROnPlateau(o))])
    with pytest.raises(ValueError, match="another optimizer"):
        learn.fit(1, plugins=[Scheduler(lambda o: StepLR(opt, 1))])
    with pytest.raises(TypeError, match="not an lr scheduler"):
        learn.fit(1, plugins=[Scheduler(lambda o: None)])
    with pytest.raises(TypeError, match="drop total_steps="):
        learn.fit_one_cycle(1, 0.1, total_steps=10)


def settings(opt) -> list[dict]:
    """Each param group's hyperparameters (lr, momentum or betas, ...), without its params."""
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


def momentum(opt) -> float:
    group = opt.param_groups[0]
    return group["betas"][0] if "betas" in group else group["momentum"]


def hand_one_cycle_then_fit(net, train, opt_func, base_lr, lr_max):
    """OneCycleLR for 2 epochs, the optimizer's settings then put back as they were before it,
    then 1 epoch at the base lr; the lr and momentum of each batch of that last epoch."""
    opt = opt_func(net.parameters(), lr=lr_max)
    before = settings(opt)
    sched = OneCycleLR(opt, max_lr=lr_max, total_steps=2 * len(train))
    for _ in range(2):
        for xb, yb in train:
            F.cross_entropy(net(xb), yb).backward()
            opt.step()
            sched.step()
            opt.zero_grad()
    for group, saved in zip(opt.param_groups, before, strict=True):
        params = group["params"]
        group.clear()  # OneCycleLR's own keys (initial_lr, max_lr, ...) go too
        group.update(saved, params=params, lr=base_lr)
    lrs, moms = [], []
    for xb, yb in train:
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(momentum(opt))
        F.cross_entropy(net(xb), yb).backward()
        opt.step()
        opt.zero_grad()
    return lrs, moms


@pytest.mark.parametrize(
    "opt_func",
    [lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.5), torch.optim.Adam],
    ids=["sgd-momentum", "adam-betas"],
)
def test_a_fit_after_fit_one_cycle_trains_at_the_learner_s_lr_and_momentum(opt_func):
    train = train_batches()
    net, ref = mlp(), mlp()
    rec = Recorder()
    learn = Learner(net, DataLoaders(train), lr=0.01, opt_func=opt_func, plugins=[rec])
    learn.fit_one_cycle(2, lr_max=0.5)
    assert learn.lr == 0.01
    fresh = opt_func(mlp().parameters(), lr=0.01)
    assert settings(learn.opt) == settings(fresh)  # momentum or betas too; no OneCycleLR keys
    learn.fit(1)
    lrs, moms = hand_one_cycle_then_fit(ref, train, opt_func, 0.01, 0.5)
    assert (rec.lrs[-len(train) :], rec.moms[-len(train) :]) == (lrs, moms)
    assert moms[0] in (0.5, 0.9)  # not OneCycleLR's 0.95 at the end of its cycle
    for p, q in zip(net.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)
