"""Metrics: per-item averages of a pass, reduced across processes, reported by name.

Every metric plugin resets at the start of a pass, accumulates in ``after_loss`` and answers
``collect_metrics`` at the end of the pass; the Learner merges the answers and hands them to every
reporter through ``report``, so no reporter depends on the order of the metric plugins.

Names: a metric reports ``name`` for the validation pass and ``train_name`` for the train pass
(``AvgLoss`` reports ``train_loss`` and ``valid_loss``). Averages are per item, so a smaller last
batch weighs less, and sums and counts are all-reduced when torch.distributed is initialised.
``AvgLoss`` counts a batch's items with the ``count_items`` hook (:func:`count_of`).

A metric of your own: subclass :class:`AverageMetric` and write ``batch_sum`` (a per-item
average), or write a plugin with ``after_loss`` and ``collect_metrics`` (README, "Write a
metric"). A torchmetrics or torcheval metric, or a collection of them:
:class:`~pluglearn.plugins.metric_adapter.MetricAdapter`.

Example::

    learn = Learner(model, dls, plugins=[Accuracy(phases=("train", "valid"))])
    learn.fit(1)
    learn.metrics["train_accuracy"], learn.metrics["accuracy"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..distributed.ranks import reduce_sum
from ..hooks.markers import hookimpl
from ..run.metrics import batch_key
from .train_step import TrainStep

if TYPE_CHECKING:
    from ..learner import Learner

PHASES = ("train", "valid")


def _check_phases(phases: Sequence[str]) -> tuple[str, ...]:
    bad = [p for p in phases if p not in PHASES]
    if bad or not phases:
        raise ValueError(f"phases must be a non-empty subset of {PHASES}, got {tuple(phases)}.")
    return tuple(phases)


class PerPass:
    """Base of the metric plugins: ``_reset(phase)`` at the start of every pass, except a train
    pass resumed mid-way, which keeps the sums restored from its checkpoint. Each phase keeps its
    own accumulator, so a validation run from inside a training hook leaves the train sums be."""

    def _reset(self, phase: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _reset(phase)")

    @hookimpl
    def before_train(self, learn: Learner) -> None:
        if learn.iter == 0:
            self._reset("train")

    @hookimpl
    def before_validate(self) -> None:
        self._reset("valid")


def count_of(learn: Learner) -> Any:
    """The number of items in ``learn.batch``, as the ``count_items`` hook answers (the default,
    ``TrainStep``: the targets' count, else the first tensor's leading size).

    Example: ``count_of(learn)`` is 64 for an ``(xb, yb)`` batch of 64 items."""
    n = learn.hooks.call("count_items", learn=learn, batch=learn.batch)
    if n is None:
        raise TypeError("no plugin answered 'count_items' (every one returned None)")
    return n


def phase_of(training: bool) -> str:
    """The pass a batch is in, as the metrics name it: ``"train"`` or ``"valid"`` (here, not in
    :mod:`pluglearn.run.metrics`: ``AvgLoss`` reads it in every batch, whose code stays in few
    files)."""
    return "train" if training else "valid"


def _counts_by_default(hooks: Any) -> bool:
    """True when only the default (``TrainStep``) answers ``count_items`` in this dispatcher:
    then a pair's count is its targets' leading size, with no hook call."""
    return all(
        isinstance(getattr(impl.function, "__self__", None), TrainStep)
        for impl in hooks.impls["count_items"]  # every hook has its list, empty or not
    )


class AverageMetric(PerPass):
    """Base class: the per-item average of ``batch_sum(learn)`` over a pass, reported as
    ``name`` (validation) and ``train_<name>`` (training) for the ``phases`` given.

    Subclasses implement ``batch_sum(learn) -> (sum over the batch's items, number of items)``;
    the sums are reset every pass, all-reduced across processes and saved in checkpoints.

    Example::

        class MeanAbsError(AverageMetric):
            name = "mae"

            def batch_sum(self, learn):
                return (learn.preds - learn.yb).abs().sum().item(), len(learn.yb)

        learn.fit(3, plugins=[MeanAbsError(phases=("train", "valid"))])  # train_mae, mae
    """

    name = "metric"

    def __init__(self, name: str | None = None, phases: Sequence[str] = ("valid",)) -> None:
        if name is not None:
            self.name = name
        self.phases = _check_phases(phases)
        self.sums: dict[str, list[Any]] = {phase: [0.0, 0] for phase in PHASES}  # total, count
        # each phase's current batch, to take it back (pluglearn.run.metrics): its (epoch, iter),
        # then the sums before it, put back as they were (bit for bit); per phase, so that a
        # validation run from a training hook leaves the training batch's record be
        self._before: dict[str, tuple[Any, ...] | None] = dict.fromkeys(PHASES)

    def batch_sum(self, learn: Learner) -> tuple[float | torch.Tensor, int]:
        raise NotImplementedError(f"{type(self).__name__} must implement batch_sum(learn)")

    def metric_name(self, phase: str) -> str:
        return self.name if phase == "valid" else f"train_{self.name}"

    def _reset(self, phase: str) -> None:
        self.sums[phase] = [0.0, 0]
        self._before[phase] = None

    @hookimpl
    def after_loss(self, learn: Learner) -> None:
        pos = learn.run.pos
        phase = phase_of(pos.training)
        if phase in self.phases:
            value, n = self.batch_sum(learn)
            sums = self.sums[phase]
            self._before[phase] = (pos.epoch, pos.iter, sums[0], sums[1])
            sums[0] = sums[0] + value  # not +=: a tensor total in place would change the record
            sums[1] += n

    def counted(self, learn: Learner) -> bool:
        """Has this metric counted the current batch?"""
        training, epoch, it = batch_key(learn)
        before = self._before[phase_of(training)]
        return before is not None and before[:2] == (epoch, it)

    def take_back(self, learn: Learner) -> None:
        """The sums as they were before the current batch, if it was counted."""
        if self.counted(learn):
            phase = phase_of(learn.training)
            before = self._before[phase]
            assert before is not None  # counted
            self.sums[phase] = [before[2], before[3]]
            self._before[phase] = None

    @hookimpl
    def state_dict(self) -> dict[str, Any]:
        """The train pass's sums: a checkpoint is taken mid-train-pass or at an epoch's end."""
        total, count = self.sums["train"]
        return {"total": float(total), "count": count}

    @hookimpl
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums["train"] = [float(state["total"]), int(state["count"])]
        self._before["train"] = None

    @hookimpl
    def collect_metrics(self, learn: Learner, phase: str) -> dict[str, float] | None:
        if phase not in self.phases:
            return None
        # reduced before the count is looked at: a rank that counted no item (its batches all
        # cancelled) still joins the other ranks' all-reduce
        total, count = reduce_sum(*map(float, self.sums[phase]))
        return None if count == 0 else {self.metric_name(phase): total / count}


class AvgLoss(AverageMetric):
    """``train_loss`` and ``valid_loss``: the loss averaged per item over each pass."""

    name = "loss"

    def __init__(self) -> None:
        super().__init__(phases=PHASES)
        self._hooks: Any = None  # the dispatcher _default_count was worked out for
        self._default_count = True

    @hookimpl
    def after_loss(self, learn: Learner) -> None:
        # every batch of every fit runs this: the common case (a CPU loss of an (xb, yb) pair,
        # counted by the default count_items) in one frame; anything else, or a subclass's own
        # batch_sum, as AverageMetric does
        batch, loss, hooks, pos = learn.batch, learn.loss, learn.hooks, learn.run.pos
        assert loss is not None  # compute_loss set it
        phase = phase_of(pos.training)
        if hooks is not self._hooks:  # the plugins changed: does a plugin answer count_items?
            self._hooks, self._default_count = hooks, _counts_by_default(hooks)
        if (
            self._default_count
            and type(self).batch_sum is AvgLoss.batch_sum
            and type(batch) is tuple
            and len(batch) == 2
            and type(batch[1]) is torch.Tensor
            and batch[1].ndim
            and loss.is_cpu
            and phase in self.phases
        ):
            n = batch[1].shape[0]
            sums = self.sums[phase]
            total, count = sums
            self._before[phase] = (pos.epoch, pos.iter, total, count)
            sums[0] = total + loss.item() * n
            sums[1] = count + n
            return
        super().after_loss(learn)

    def metric_name(self, phase: str) -> str:
        return f"{phase}_loss"

    def batch_sum(self, learn: Learner) -> tuple[float | torch.Tensor, int]:
        loss = learn.loss
        assert loss is not None  # read in after_loss
        n = count_of(learn)  # a pair's targets, a dict's labels, else the first tensor
        # on CPU a float is cheapest; on an accelerator a tensor sum avoids a sync per batch
        if loss.is_cpu:
            return loss.item() * n, n
        return loss.detach() * n, n


class Accuracy(AverageMetric):
    """The fraction of items whose arg-max prediction equals the target (validation only by
    default; ``Accuracy(phases=("train", "valid"))`` adds ``train_accuracy``)."""

    name = "accuracy"

    def batch_sum(self, learn: Learner) -> tuple[float | torch.Tensor, int]:
        preds, targets = learn.preds, learn.yb
        if preds.ndim != 2 or targets.shape != preds.shape[:1]:
            raise ValueError(
                f"Accuracy expects predictions (n, classes) and targets (n,), got "
                f"{tuple(preds.shape)} and {tuple(targets.shape)}."
            )
        return (preds.argmax(dim=1) == targets).sum().item(), len(targets)
