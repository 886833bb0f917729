"""fit_one_cycle against OneCycleLR stepped by hand: bit-identical (also accumulating), the options
it passes on, the plugins it runs, the Learner's own settings back after it, resumes where the
checkpoint is (or fresh with missing_ok), and the arguments it counts itself refused."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR

from pluglearn import (
    Checkpoint,
    DataLoaders,
    GradientAccumulation,
    Learner,
    Recorder,
    Scheduler,
    hookimpl,
)
from tests.helpers import CrashAt, tiny_data
from tests.support.schedules import mlp, train_batches


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


@pytest.fixture
def learner(make_learner):
    """The shared tiny Learner with the default plugins, a Recorder and ``mlp()``: 56 shuffled
    training items in batches of 8 (7 batches an epoch), 8 validating."""
    return lambda plugins=(): _recorded(make_learner, plugins, n_train=56)


def _recorded(make_learner, plugins, n_train: int):
    return make_learner(
        [Recorder(), *plugins],
        n_train=n_train,
        n_valid=8,
        bs=8,
        defaults=True,
        data_seed=8,
        from_datasets=True,
        loader_seed=2,
        model=mlp,
    )


def test_fit_one_cycle_resumes_exactly(tmp_path, learner):
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


def test_a_crashed_fit_one_cycle_puts_the_settings_back_and_resumes_exactly_in_process(
    tmp_path, learner
):
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


def batches_of_4(n_batches: int = 5, bs: int = 4):
    x, y = tiny_data(n_batches * bs, seed=7)
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]


def hand_lrs(total_steps: int, n_batches: int, lr_max: float, **one_cycle) -> list[float]:
    """The lr of each of the first ``n_batches`` steps of OneCycleLR, stepped by hand."""
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=lr_max)
    sched = OneCycleLR(opt, max_lr=lr_max, total_steps=total_steps, **one_cycle)
    lrs = []
    for _ in range(n_batches):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_fit_one_cycle_passes_its_options_on_and_plans_max_steps():
    class BaseLr:
        @hookimpl
        def before_fit(self, learn):
            self.lr = learn.lr

    rec, base = Recorder(), BaseLr()
    learn = Learner(mlp(), DataLoaders(batches_of_4()), plugins=[rec, base])
    learn.fit_one_cycle(3, 0.4, max_steps=7, pct_start=0.5, div_factor=5.0)
    assert learn.opt_steps == 7
    assert rec.lrs == hand_lrs(7, 7, 0.4, pct_start=0.5, div_factor=5.0)
    assert base.lr == 0.4  # the run's base lr is lr_max (a resume checks it) ...
    assert learn.lr == 0.1  # ... and the Learner's own is back after it


def test_fit_one_cycle_runs_the_plugins_it_is_given():
    class Count:
        batches = 0

        @hookimpl
        def after_batch(self, learn):
            Count.batches += learn.training

    learn = Learner(mlp(), DataLoaders(batches_of_4()))
    learn.fit_one_cycle(2, 0.1, plugins=[Count()])
    assert Count.batches == 10


class TrainedBatches:
    def __init__(self) -> None:
        self.n = 0

    @hookimpl
    def after_batch(self, learn):
        self.n += learn.training


@pytest.fixture
def four_batch_learner(make_learner):
    """As ``learner``, with 32 training items (4 batches an epoch)."""
    return lambda plugins=(): _recorded(make_learner, plugins, n_train=32)


def test_fit_one_cycle_resumes_where_the_checkpoint_is(tmp_path, four_batch_learner):
    done = four_batch_learner()
    done.fit_one_cycle(3, 0.5)
    with pytest.raises(RuntimeError, match="killed"):
        four_batch_learner([Checkpoint(tmp_path, every_n_batches=1), CrashAt(1, 2)]).fit_one_cycle(
            3, 0.5
        )
    trained = TrainedBatches()
    resumed = four_batch_learner([Checkpoint(tmp_path, every_n_batches=1), trained])
    resumed.fit_one_cycle(3, 0.5, resume_from=tmp_path)
    assert trained.n == 3 * 4 - (4 + 2)  # the checkpoint after batch 1 of epoch 1: 6 done
    for p, q in zip(done.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_fit_one_cycle_with_missing_ok_starts_fresh_in_an_empty_directory(
    tmp_path, four_batch_learner
):
    done, fresh = four_batch_learner(), four_batch_learner()
    done.fit_one_cycle(1, 0.5)
    with pytest.warns(UserWarning, match="no checkpoint in .* yet: starting a fresh run"):
        fresh.fit_one_cycle(1, 0.5, resume_from=tmp_path, missing_ok=True)
    for p, q in zip(done.model.parameters(), fresh.model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("bad", ["total_steps", "epochs", "steps_per_epoch", "max_lr"])
def test_fit_one_cycle_refuses_what_it_counts_itself(bad):
    learn = Learner(mlp(), DataLoaders(batches_of_4(2)))
    message = (
        f"fit_one_cycle counts the steps itself and takes lr_max: drop {bad}= (use "
        "Scheduler(lambda opt: OneCycleLR(opt, ...)) to set them by hand)."
    )
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        learn.fit_one_cycle(1, 0.1, **{bad: 10})
