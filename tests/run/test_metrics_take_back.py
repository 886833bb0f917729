"""Taking a batch back out of the metrics (:mod:`pluglearn.run.metrics`), as DDP's agreement
does on every rank when it cancels a batch at its step: on a real one-process fit, a plugin that
takes batch 1 back after the metrics counted it leaves them what the other batches give,
computed by hand; a take-back of a batch not counted (before the metrics ran) changes nothing."""

from __future__ import annotations

import pytest
import torch

from pluglearn import Accuracy, MetricAdapter, hookimpl
from pluglearn.run.metrics import counted_now, ledgers, take_back
from tests.plugins.test_metrics import (
    TORCHMETRICS,
    batches,
    make_data,
    make_learner,
    make_model,
    multiclass_f1,
)

pytestmark = TORCHMETRICS


class TakeBack:
    """Takes batch ``at`` of the ``training`` (else validation) pass back in ``hook``, after
    every metric's after_loss (trylast); records that pass's batches: predictions, targets and
    loss."""

    def __init__(
        self,
        at: int,
        hook: str,
        training: bool = True,
        keep: tuple[bool, ...] | None = None,
        nested: bool = False,
    ) -> None:
        self.at, self.hook, self.training, self.keep = at, hook, training, keep
        self.nested = nested  # a validation from this hook first (its batches count apart)
        self.counted: list[tuple[bool, ...]] = []
        self.kept: list[tuple[torch.Tensor, torch.Tensor, float]] = []

    def _maybe(self, learn, hook: str) -> bool:
        here = learn.training == self.training and learn.iter == self.at
        if here and hook == self.hook:
            if self.nested:
                learn.validate()
            self.counted.append(counted_now(learn))
            take_back(learn, self.keep)
            return True
        return False

    @hookimpl
    def before_batch(self, learn) -> None:
        self._maybe(learn, "before_batch")

    @hookimpl(trylast=True)
    def after_loss(self, learn) -> None:
        taken = self._maybe(learn, "after_loss")
        if learn.training == self.training and not taken:
            self.kept.append((learn.preds.detach(), learn.yb, learn.loss.item()))


def fit(hook: str, training: bool = True, keep: tuple[bool, ...] | None = None, nested=False):
    xt, yt = make_data(10, seed=1)
    xv, yv = make_data(7, seed=2)
    spy = TakeBack(at=1, hook=hook, training=training, keep=keep, nested=nested)
    plugins = [
        Accuracy(phases=("train", "valid")),
        MetricAdapter(multiclass_f1(average="macro"), name="f1", phases=("train", "valid")),
        spy,
    ]
    learn = make_learner(make_model(), batches(xt, yt, 4), batches(xv, yv, 4), plugins)
    learn.fit(1)
    return learn.metrics, spy


@pytest.mark.parametrize(
    ("training", "n", "nested"), [(True, [4, 2], False), (False, [4], False), (True, [4, 2], True)]
)
def test_a_batch_taken_back_after_the_metrics_counted_it_leaves_the_others_values(
    training, n, nested
):
    # training: batches 0 and 2 of 4, 4, 2 items are left; validation: batch 0 of 4, 3;
    # nested: a validation run from the batch's hook before it is taken back leaves its record
    metrics, spy = fit("after_loss", training, nested=nested)
    untouched, _ = fit("none")
    assert spy.counted == [(True, True, True)]  # Accuracy, MetricAdapter, AvgLoss
    preds = torch.cat([p for p, _, _ in spy.kept])
    targets = torch.cat([t for _, t, _ in spy.kept])
    assert [len(t) for _, t, _ in spy.kept] == n
    loss = sum(item * k for (_, _, item), k in zip(spy.kept, n, strict=True)) / sum(n)
    phase, other = ("train_", "") if training else ("", "train_")
    assert metrics[f"{phase or 'valid_'}loss"] == pytest.approx(loss, rel=1e-12)
    hits = (preds.argmax(1) == targets).double().mean().item()
    assert metrics[f"{phase}accuracy"] == pytest.approx(hits, rel=1e-12)
    f1 = multiclass_f1(average="macro")(preds, targets).item()
    assert metrics[f"{phase}f1"] == pytest.approx(f1, rel=1e-6)
    # the other pass is untouched
    for key in ("accuracy", "f1", "loss"):
        key = f"{other or 'valid_'}loss" if key == "loss" else f"{other}{key}"
        assert metrics[key] == untouched[key], key


def test_a_take_back_before_the_metrics_counted_the_batch_changes_nothing():
    untouched, _ = fit("none")
    metrics, spy = fit("before_batch")  # the records are the previous batch's: not this one's
    assert spy.counted == [(False, False, False)]
    for key in ("train_loss", "train_accuracy", "train_f1", "valid_loss", "accuracy", "f1"):
        assert metrics[key] == untouched[key], key


def test_the_ledgers_are_the_metric_plugins_in_the_plugins_order():
    learn = make_learner(make_model(), [], [], [Accuracy(), MetricAdapter(multiclass_f1())])
    names = [type(p).__name__ for p in ledgers(learn)]
    assert names == ["Accuracy", "MetricAdapter", "AvgLoss"]


def test_a_take_back_keeps_the_metrics_the_cancelling_rank_had_counted():
    # DDP sends which metrics the rank that cancelled had counted (in the ledgers' order):
    # those keep the batch, the others (and any past the end of what was sent) take it back
    untouched, _ = fit("none")
    for flags, kept in [((True, False, False), "train_accuracy"), ((False, True), "train_f1")]:
        metrics, _ = fit("after_loss", keep=flags)
        for key in ("train_accuracy", "train_f1", "train_loss"):
            same = metrics[key] == untouched[key]
            assert same == (key == kept), (flags, key)


def test_a_batch_of_no_item_is_counted_without_reaching_the_metric():
    # a rank's empty slice of a short last batch: torchmetrics cannot take it
    xv, yv = make_data(7, seed=2)
    adapter = MetricAdapter(multiclass_f1(average="macro"), name="f1")
    learn = make_learner(make_model(), [], [], [adapter])
    with torch.no_grad():
        preds = learn.model(xv)
    empty = (xv[:0], yv[:0])
    learn.validate(dl=[(xv[:4], yv[:4]), empty, (xv[4:], yv[4:])])
    expected = multiclass_f1(average="macro")(preds, yv).item()
    assert learn.metrics["f1"] == pytest.approx(expected, rel=1e-6)
