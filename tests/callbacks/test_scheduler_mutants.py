"""Scheduler and fit_one_cycle: what their mutation survivors showed untested (the options
fit_one_cycle passes on, a resume that really resumes, schedulers without ``.optimizer``, the
whole advice of each refusal), against OneCycleLR stepped by hand and hand values."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau, StepLR

from pluglearn import Checkpoint, DataLoaders, Learner, Recorder, Scheduler, hookimpl
from tests.helpers import CrashAt, tiny_data


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


def train_batches(n_batches: int = 5, bs: int = 4):
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


def message_of(error: BaseException) -> str:
    """The error's own message (the Learner adds a line naming the plugin and hook)."""
    return str(error).split("\n")[0]


def test_fit_one_cycle_passes_its_options_on_and_plans_max_steps():
    class BaseLr:
        @hookimpl
        def before_fit(self, learn):
            self.lr = learn.lr

    rec, base = Recorder(), BaseLr()
    learn = Learner(mlp(), DataLoaders(train_batches()), plugins=[rec, base])
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

    learn = Learner(mlp(), DataLoaders(train_batches()))
    learn.fit_one_cycle(2, 0.1, plugins=[Count()])
    assert Count.batches == 10


class TrainedBatches:
    def __init__(self) -> None:
        self.n = 0

    @hookimpl
    def after_batch(self, learn):
        self.n += learn.training


def learner(plugins=()):
    x, y = tiny_data(40, seed=8)
    dls = DataLoaders.from_datasets((x[:32], y[:32]), (x[32:], y[32:]), batch_size=8, seed=2)
    return Learner(mlp(), dls, plugins=[Recorder(), *plugins])


def test_fit_one_cycle_resumes_where_the_checkpoint_is(tmp_path):
    done = learner()
    done.fit_one_cycle(3, 0.5)
    with pytest.raises(RuntimeError, match="killed"):
        learner([Checkpoint(tmp_path, every_n_batches=1), CrashAt(1, 2)]).fit_one_cycle(3, 0.5)
    trained = TrainedBatches()
    resumed = learner([Checkpoint(tmp_path, every_n_batches=1), trained])
    resumed.fit_one_cycle(3, 0.5, resume_from=tmp_path)
    assert trained.n == 3 * 4 - (4 + 2)  # the checkpoint after batch 1 of epoch 1: 6 done
    for p, q in zip(done.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_fit_one_cycle_with_missing_ok_starts_fresh_in_an_empty_directory(tmp_path):
    done, fresh = learner(), learner()
    done.fit_one_cycle(1, 0.5)
    with pytest.warns(UserWarning, match="no checkpoint in .* yet: starting a fresh run"):
        fresh.fit_one_cycle(1, 0.5, resume_from=tmp_path, missing_ok=True)
    for p, q in zip(done.model.parameters(), fresh.model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("bad", ["total_steps", "epochs", "steps_per_epoch", "max_lr"])
def test_fit_one_cycle_refuses_what_it_counts_itself(bad):
    learn = Learner(mlp(), DataLoaders(train_batches(2)))
    message = (
        f"fit_one_cycle counts the steps itself and takes lr_max: drop {bad}= (use "
        "Scheduler(lambda opt: OneCycleLR(opt, ...)) to set them by hand)."
    )
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        learn.fit_one_cycle(1, 0.1, **{bad: 10})


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
    learn = Learner(mlp(), DataLoaders(train_batches(3)), lr=0.8, plugins=[rec])
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
    learn = Learner(mlp(), DataLoaders(train_batches(2)))
    with pytest.raises(TypeError) as not_scheduler:
        learn.fit(1, plugins=[Scheduler(lambda opt: 42)])
    assert message_of(not_scheduler.value) == (
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
    assert message_of(other_opt.value) == (
        "Scheduler: the factory built its scheduler on another optimizer than the one it "
        "received: build it on its argument (lambda opt: StepLR(opt, 10))."
    )
    with pytest.raises(ValueError) as plateau:
        learn.fit(1, plugins=[Scheduler(lambda opt: ReduceLROnPlateau(opt))])
    assert message_of(plateau.value) == (
        "Scheduler: ReduceLROnPlateau reads a metric once per epoch: give interval='epoch'."
    )


def test_a_missing_monitor_names_the_metrics_there_are():
    train = train_batches(2)
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


def test_resuming_with_another_interval_is_refused_with_the_fix(tmp_path):
    def cosine(opt):
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, 3)

    with pytest.raises(RuntimeError, match="killed"):
        learner([Scheduler(cosine, "epoch"), Checkpoint(tmp_path, every_n_batches=1)]).fit(
            3, plugins=[CrashAt(0, 1)]
        )
    resumed = learner([Scheduler(cosine, "batch"), Checkpoint(tmp_path, every_n_batches=1)])
    with pytest.raises(ValueError) as refused:
        resumed.fit(3, resume_from=tmp_path)
    assert message_of(refused.value) == (
        "Scheduler: the checkpoint's scheduler stepped per epoch, this one per batch: resume "
        "with interval='epoch'."
    )
