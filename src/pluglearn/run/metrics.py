"""Merging the metric plugins' answers into ``learn.metrics``, taking a cancelled batch back
out of them, and gathering predictions.

Taking back: under DDP a cancel raised on one rank is held until the ranks agree (at the batch's
optimizer step), so every rank has computed the batch, and its metrics counted it, by then. A
metric plugin that keeps a record of the current batch (``counted(learn)`` and
``take_back(learn)``: :class:`~pluglearn.plugins.metrics.AverageMetric`,
:class:`~pluglearn.plugins.metric_adapter.MetricAdapter`) is asked to take it back on every rank
unless the rank that cancelled had counted it before its cancel, as one process would have."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..data.batch_ops import concat, detach
from ..hooks.markers import hookimpl

if TYPE_CHECKING:
    from ..learner import Learner


def batch_key(learn: Learner) -> tuple[bool, int, int]:
    """The current batch, as a metric records it: (training, epoch, iter)."""
    pos = learn.run.pos
    return pos.training, pos.epoch, pos.iter


def ledgers(learn: Learner) -> list[Any]:
    """The plugins that can take the current batch back (in the plugins' order, which every
    rank of a fit shares: the fit's start compares them)."""
    return [p for p in learn.plugins if callable(getattr(p, "take_back", None))]


def counted_now(learn: Learner) -> tuple[bool, ...]:
    """Which of :func:`ledgers` have counted the current batch so far."""
    return tuple(bool(p.counted(learn)) for p in ledgers(learn))


def take_back(learn: Learner, kept: tuple[bool, ...] | None) -> None:
    """Take the current batch out of every ledger, except those ``kept`` marks (the ones the
    rank that cancelled had counted when it cancelled; None: none of them)."""
    for i, plugin in enumerate(ledgers(learn)):
        if kept is None or i >= len(kept) or not kept[i]:
            plugin.take_back(learn)


def merge_metrics(learn: Learner, phase: str) -> None:
    """Merge every ``collect_metrics`` answer for ``phase`` into ``learn.metrics``; two plugins
    giving one name is an error naming both."""
    owners = learn.run.metric_owner
    for plugin, result in learn.hooks.call("collect_metrics", learn=learn, phase=phase):
        if not isinstance(result, dict):
            raise TypeError(
                f"plugin {plugin!r}: 'collect_metrics' must return a dict of metrics or "
                f"None, got {type(result).__name__}."
            )
        for key, value in result.items():
            if key in owners and owners[key] != plugin:
                raise ValueError(
                    f"metric {key!r} is reported by both {owners[key]!r} and {plugin!r}: "
                    "give one of them another name (e.g. its name= argument)."
                )
            owners[key] = plugin
            learn.metrics[key] = value


class GatherPreds:
    """Internal plugin for ``get_preds``: keeps every validation batch's predictions and targets
    (tensors, or structures of them) and joins them in item order with
    :func:`pluglearn.data.batch_ops.concat`. Both are parts of a batch (``top=False``): a list at
    their root holds one entry per item, as detection targets (a tensor per item) do."""

    plugin_name = "get_preds"

    def __init__(self) -> None:
        self.preds: list[Any] = []
        self.targets: list[Any] = []
        self.counts: list[int] = []  # each batch's items: its per-item lists must hold as many

    @hookimpl
    def after_loss(self, learn: Learner) -> None:
        self.preds.append(detach(learn.preds))
        self.targets.append(detach(learn.yb))
        self.counts.append(learn.hooks.call("count_items", learn=learn, batch=learn.batch))

    def result(self) -> tuple[Any, Any]:
        """The predictions and targets of every batch, concatenated."""
        preds = concat(self.preds, top=False, name="preds", counts=self.counts)
        return preds, concat(self.targets, top=False, name="targets", counts=self.counts)
