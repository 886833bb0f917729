"""Scheduler against torch's schedulers stepped by hand: per batch or per epoch, a plateau's
monitor, a resume bit for bit; schedulers without ``.optimizer``; the whole advice of each
refusal (a class instead of a factory, what the factory builds, a missing monitor, another
interval at a resume)."""

from __future__ import annotations

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, OneCycleLR, ReduceLROnPlateau, StepLR

from pluglearn import (
    Checkpoint,
    DataLoaders,
    Learner,
    Recorder,
    Scheduler,
)
from tests.helpers import CrashAt, first_line, tiny_data
from tests.support.schedules import mlp, train_batches


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


@pytest.fixture
def learner(make_learner):
    """The shared tiny Learner with the default plugins, a Recorder and ``mlp()``: 56 shuffled
    training items in batches of 8 (7 batches an epoch), 8 validating."""
    return lambda plugins=(): make_learner(
        [Recorder(), *plugins],
        n_train=56,
        n_valid=8,
        bs=8,
        defaults=True,
        data_seed=8,
        from_datasets=True,
        loader_seed=2,
        model=mlp,
    )


@pytest.mark.parametrize(
    ("factory", "interval"),
    [
        (lambda opt: OneCycleLR(opt, max_lr=0.5, total_steps=21), "batch"),
        (lambda opt: CosineAnnealingLR(opt, 3), "epoch"),
    ],
    ids=["one-cycle-per-batch", "cosine-per-epoch"],
)
@pytest.mark.slow
def test_a_resumed_run_follows_the_same_lr_and_momentum_sequence(
    tmp_path, factory, interval, learner
):
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


def batches_of_4(n_batches: int = 5, bs: int = 4):
    x, y = tiny_data(n_batches * bs, seed=7)
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]


@pytest.fixture
def four_batch_learner(make_learner):
    """The shared tiny Learner with the default plugins, a Recorder and ``mlp()``: 32 shuffled
    training items in batches of 8 (4 batches an epoch), 8 validating."""
    return lambda plugins=(): make_learner(
        [Recorder(), *plugins],
        n_train=32,
        n_valid=8,
        bs=8,
        defaults=True,
        data_seed=8,
        from_datasets=True,
        loader_seed=2,
        model=mlp,
    )


class Halving:
    """An lr scheduler written by hand, with no ``optimizer`` attribute."""

    def __init__(self, opt):
        self._opt = opt

    def step(self):
        for group in self._opt.param_groups:
            group["lr"] /= 2

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_a_scheduler_without_an_optimizer_attribute_is_accepted():
    rec = Recorder()
    learn = Learner(mlp(), DataLoaders(batches_of_4(3)), lr=0.8, plugins=[rec])
    learn.fit(1, plugins=[Scheduler(lambda opt: Halving(opt))])
    assert rec.lrs == [0.8, 0.4, 0.2]


def test_a_scheduler_class_or_object_instead_of_a_factory_is_refused():
    opt = torch.optim.SGD(mlp().parameters(), lr=0.1)
    advice = (
        ": write Scheduler(lambda opt: OneCycleLR(opt, ...)), so that each fit builds its "
        "scheduler on the Learner's optimizer."
    )
    with pytest.raises(TypeError) as by_class:
        Scheduler(StepLR)  # callable, but a class: StepLR(opt) needs its step_size
    assert (
        str(by_class.value)
        == f"Scheduler takes a factory, a function of the optimizer, got type{advice}"
    )
    with pytest.raises(TypeError) as by_object:
        Scheduler(StepLR(opt, 1))
    assert str(by_object.value).startswith(
        "Scheduler takes a factory, a function of the optimizer, got StepLR:"
    )


def test_no_state_before_a_fit_built_the_scheduler():
    assert Scheduler(lambda opt: Halving(opt)).state_dict() is None


class StepOnly:
    def __init__(self, opt):
        self.optimizer = opt

    def step(self):
        pass


def test_what_the_factory_builds_is_checked_with_the_fix():
    learn = Learner(mlp(), DataLoaders(batches_of_4(2)))
    with pytest.raises(TypeError) as not_scheduler:
        learn.fit(1, plugins=[Scheduler(lambda opt: 42)])
    assert first_line(not_scheduler.value) == (
        "Scheduler: the factory returned int, not an lr scheduler: return one built on the "
        "optimizer it receives, e.g. lambda opt: torch.optim.lr_scheduler.StepLR(opt, 10)."
    )
    with pytest.raises(TypeError, match="the factory returned StepOnly, not an lr scheduler"):
        learn.fit(
            1, plugins=[Scheduler(lambda opt: StepOnly(opt))]
        )  # no state_dict: it could not resume
    other = torch.optim.SGD(mlp().parameters(), lr=0.1)
    with pytest.raises(ValueError) as other_opt:
        learn.fit(1, plugins=[Scheduler(lambda opt: StepLR(other, 1))])
    assert first_line(other_opt.value) == (
        "Scheduler: the factory built its scheduler on another optimizer than the one it "
        "received: build it on its argument (lambda opt: StepLR(opt, 10))."
    )
    with pytest.raises(ValueError) as plateau:
        learn.fit(1, plugins=[Scheduler(lambda opt: ReduceLROnPlateau(opt))])
    assert first_line(plateau.value) == (
        "Scheduler: ReduceLROnPlateau reads a metric once per epoch: give interval='epoch'."
    )


def test_a_missing_monitor_names_the_metrics_there_are():
    train = batches_of_4(2)
    learn = Learner(mlp(), DataLoaders(train, train[:1]))
    plateau = Scheduler(lambda opt: ReduceLROnPlateau(opt), "epoch", monitor="accuracy")
    with pytest.raises(KeyError) as missing:
        learn.fit(1, plugins=[plateau])
    metrics = ", ".join(learn.metrics)
    assert metrics  # the epoch's metrics: train_loss, valid_loss, ...
    assert f"(they have {metrics}): pass monitor=<one of them>." in str(missing.value)
    assert "ReduceLROnPlateau monitors 'accuracy', which the epoch's metrics lack" in str(
        missing.value
    )


def test_resuming_with_another_interval_is_refused_with_the_fix(tmp_path, four_batch_learner):
    def cosine(opt):
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, 3)

    with pytest.raises(RuntimeError, match="killed"):
        four_batch_learner(
            [Scheduler(cosine, "epoch"), Checkpoint(tmp_path, every_n_batches=1)]
        ).fit(3, plugins=[CrashAt(0, 1)])
    resumed = four_batch_learner(
        [Scheduler(cosine, "batch"), Checkpoint(tmp_path, every_n_batches=1)]
    )
    with pytest.raises(ValueError) as refused:
        resumed.fit(3, resume_from=tmp_path)
    assert first_line(refused.value) == (
        "Scheduler: the checkpoint's scheduler stepped per epoch, this one per batch: resume "
        "with interval='epoch'."
    )
