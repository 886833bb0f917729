"""Calls from inside a running call: exact (validate, get_preds) or refused (fit, threads)."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from pluglearn import hookimpl
from tests.helpers import EventLog


@pytest.fixture
def dropout_learner(make_learner):
    """The shared tiny Learner with the default plugins and a dropout MLP: 64 shuffled training
    items in batches of 4, 16 validating."""
    return lambda plugins=(): make_learner(
        plugins,
        n_train=64,
        n_valid=16,
        bs=4,
        defaults=True,
        from_datasets=True,
        loader_seed=1,
        opt_func=torch.optim.SGD,
        model=lambda: nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3)),
    )


class ValidateEvery:
    """Validate every ``n`` training batches, a common pattern for long epochs."""

    def __init__(self, n):
        self.n, self.results, self.modes = n, [], []

    @hookimpl
    def after_batch(self, learn):
        if learn.training and (learn.iter + 1) % self.n == 0:
            self.results.append(learn.validate())
            self.modes.append((learn.training, learn.model.training, torch.is_grad_enabled()))


class Steps:
    def __init__(self):
        self.steps = 0

    @hookimpl
    def after_step(self):
        self.steps += 1


def test_validate_inside_a_training_hook_leaves_training_exactly_as_it_was(dropout_learner):
    plain_steps, nested_steps = Steps(), Steps()
    plain = dropout_learner([plain_steps])
    plain.fit(2)
    every = ValidateEvery(5)
    nested = dropout_learner([every, nested_steps])
    nested.fit(2)
    assert nested_steps.steps == plain_steps.steps == 32  # 16 steps an epoch, none lost
    for a, b in zip(plain.model.parameters(), nested.model.parameters(), strict=True):
        assert torch.equal(a, b)  # same weights: dropout masks and order untouched
    assert nested.metrics["train_loss"] == plain.metrics["train_loss"]  # no validation mixed in
    assert nested.metrics["valid_loss"] == plain.metrics["valid_loss"]
    assert len(every.results) == 6 and all("valid_loss" in r for r in every.results)
    assert set(every.modes) == {(True, True, True)}  # back in train mode, with grad


def test_validate_inside_a_hook_gives_the_same_metrics_as_outside(dropout_learner):
    every = ValidateEvery(16)  # after the last training batch of the epoch
    learn = dropout_learner([every])
    learn.fit(1)
    assert every.results[0]["valid_loss"] == learn.metrics["valid_loss"]
    assert learn.validate()["valid_loss"] == learn.metrics["valid_loss"]


@pytest.mark.slow
def test_get_preds_inside_a_hook_is_exact_too(dropout_learner):
    class Preds:
        def __init__(self):
            self.shapes = []

        @hookimpl
        def after_epoch(self, learn):
            preds, targets = learn.get_preds()
            self.shapes.append((tuple(preds.shape), tuple(targets.shape)))

    plain = dropout_learner()
    plain.fit(2)
    with_preds = Preds()
    learn = dropout_learner([with_preds])
    learn.fit(2)
    assert with_preds.shapes == [((16, 3), (16,))] * 2
    for a, b in zip(plain.model.parameters(), learn.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_fit_from_inside_a_hook_is_a_clear_error(dropout_learner):
    class Refit:
        @hookimpl
        def after_batch(self, learn):
            learn.fit(1)

    log = EventLog()
    learn = dropout_learner([Refit(), log])
    with pytest.raises(RuntimeError, match=r"fit\(\) was called from inside a hook while fit"):
        learn.fit(1)
    assert log.events[-1] == "cleanup_fit"
    learn.remove_plugin("Refit")
    learn.fit(1)  # the Learner is usable again


def test_fit_from_a_second_thread_is_a_clear_error(dropout_learner):
    started, release = threading.Event(), threading.Event()

    class Hold:
        @hookimpl
        def before_fit(self):
            started.set()
            release.wait(10)

    learn = dropout_learner([Hold()])
    worker = threading.Thread(target=learn.fit, args=(1,))
    worker.start()
    try:
        assert started.wait(10)
        with pytest.raises(RuntimeError, match="runs one call at a time"):
            learn.fit(1)
        with pytest.raises(RuntimeError, match="runs one call at a time"):
            learn.validate()
    finally:
        release.set()
        worker.join(30)
    learn.remove_plugin("Hold")
    learn.fit(1)
