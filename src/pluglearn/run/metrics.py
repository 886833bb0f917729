"""Merging the metric plugins' answers into ``learn.metrics``, and gathering predictions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..data.batch_ops import concat, detach
from ..hooks.markers import hookimpl

if TYPE_CHECKING:
    from ..learner import Learner


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
