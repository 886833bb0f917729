"""MetricAdapter: a torchmetrics or torcheval metric, or a torchmetrics ``MetricCollection``.

Example::

    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

    learn = Learner(model, dls, plugins=[MetricAdapter(MulticlassF1Score(10), name="f1")])
    both = MetricCollection({"acc": MulticlassAccuracy(10), "f1": MulticlassF1Score(10)})
    learn.fit(3, plugins=[MetricAdapter(both, phases=("train", "valid"))])
    learn.metrics["acc"], learn.metrics["train_f1"]

Any object with ``update(preds, targets)``, ``compute()`` and ``reset()`` is a metric here (the
protocol of torchmetrics and torcheval, which reduce across processes themselves). It is updated
with each batch's predictions and targets (kept in ``after_loss``, given to ``update`` when the
next batch comes or the pass ends, so that a batch DDP cancels at its step can be taken back:
:mod:`pluglearn.run.metrics`), reset at the start of every pass and computed at its end. A
batch of no items (a rank's empty slice of a short last batch) is not given to it.

Names: a metric whose ``compute()`` answers one value reports ``name`` (default: its class name
in lower case) for the validation pass and ``train_<name>`` for the train pass. One whose
``compute()`` answers a dict (a ``MetricCollection``, torchmetrics' ``MeanAveragePrecision``)
reports one metric per key, so a ``MetricsLogger`` CSV gets a column each: the keys as they are
(a collection's ``prefix=`` / ``postfix=`` rename them), or ``<name>_<key>`` when ``name=`` is
given; ``train_`` goes in front for the train pass. A one-element tensor becomes a float.

Resume: the train pass's running state is in the checkpoints (the ``state_dict`` hook): the
metric's own ``state_dict`` (torchmetrics states made persistent first) and the update count of
every torchmetrics metric in it, the members of a collection too, so a fit resumed mid-epoch
reports what the uninterrupted run does, without torchmetrics' "compute before update" warning.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..distributed.ranks import is_distributed, is_local, reduce_sum
from ..hooks.markers import hookimpl
from ..run.metrics import batch_key
from .metrics import PerPass, _check_phases, phase_of

if TYPE_CHECKING:
    from ..learner import Learner


def _number(value: Any) -> Any:
    """A one-element tensor as a float; anything else as it is (a per-class tensor stays one)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


def _update_counts(metric: Any) -> dict[str, int]:
    """The update count of every torchmetrics metric in ``metric`` (itself, a collection's
    members, a wrapper's inner metric), by module name: ``load_state_dict`` does not restore it,
    and torchmetrics warns when computing a metric that counts no update."""
    named = getattr(metric, "named_modules", None)
    if not callable(named):
        return {}
    return {name: int(m._update_count) for name, m in named() if hasattr(m, "_update_count")}


class MetricAdapter(PerPass):
    """Reports ``metric`` (torchmetrics, torcheval, a ``MetricCollection``) for each phase in
    ``phases``; see the module doc for the names.

    Example: ``MetricAdapter(MulticlassF1Score(10), name="f1")`` reports ``f1`` after each
    validation pass."""

    def __init__(
        self, metric: Any, name: str | None = None, phases: Sequence[str] = ("valid",)
    ) -> None:
        missing = [
            m for m in ("update", "compute", "reset") if not callable(getattr(metric, m, None))
        ]
        if missing:
            raise TypeError(
                f"{type(metric).__name__} lacks {', '.join(missing)}: MetricAdapter needs an "
                "object with update(preds, targets), compute() and reset() (e.g. a torchmetrics "
                "metric)."
            )
        self.name = name
        self.metric_base = name or type(metric).__name__.lower()
        self.plugin_name = f"MetricAdapter[{self.metric_base}]"
        self.phases = _check_phases(phases)
        # one metric object per phase, so a nested validation leaves the train one be
        self.metrics = {
            p: metric if i == 0 else copy.deepcopy(metric) for i, p in enumerate(self.phases)
        }
        self._updated = dict.fromkeys(self.phases, False)  # has update() been called
        # each phase's batch not given to update() yet: (its key, predictions, targets)
        self._pending: dict[str, tuple[Any, Any, Any] | None] = dict.fromkeys(self.phases)

    @property
    def metric(self) -> Any:
        """The metric object of the first phase (the one given)."""
        return self.metrics[self.phases[0]]

    def _reset(self, phase: str) -> None:
        if phase in self.phases:
            self.metrics[phase].reset()
            self._updated[phase] = False
            self._pending[phase] = None

    @hookimpl
    def after_loss(self, learn: Learner) -> None:
        phase = phase_of(learn.training)
        if phase not in self.phases:
            return
        self._flush(phase)
        preds = learn.preds.detach()
        # a batch of no items (a rank's empty slice) is counted, as the other ranks' slices of
        # it are, but never given to update(): torchmetrics cannot reshape an empty batch
        empty = bool(preds.ndim) and not preds.shape[0]
        self._pending[phase] = (batch_key(learn), None if empty else preds, learn.yb)

    def _flush(self, phase: str) -> None:
        """Give the phase's kept batch to the metric's ``update``."""
        pending = self._pending[phase]
        if pending is None:
            return
        self._pending[phase] = None
        _, preds, targets = pending
        if preds is None:
            return  # no item
        metric = self.metrics[phase]
        if not self._updated[phase] and hasattr(metric, "to"):
            metric.to(preds.device)  # follow the model's device
        metric.update(preds, targets)
        self._updated[phase] = True

    def counted(self, learn: Learner) -> bool:
        """Is the current batch kept for the metric (see :mod:`pluglearn.run.metrics`)?"""
        key = batch_key(learn)
        pending = self._pending.get(phase_of(key[0]))
        return pending is not None and pending[0] == key

    def take_back(self, learn: Learner) -> None:
        """Drop the current batch, if it is kept: the metric never sees it."""
        if self.counted(learn):
            self._pending[phase_of(learn.training)] = None

    @hookimpl
    def state_dict(self) -> dict[str, Any]:
        """The train pass's running state (a checkpoint is taken mid-train-pass or at an epoch's
        end; validation starts afresh every pass): the metric's own states through its
        ``state_dict`` (torchmetrics: made persistent first; torcheval: as it is), and the
        update counts of the torchmetrics metrics in it."""
        if "train" in self.phases:
            self._flush("train")  # a checkpoint's batch has stepped: it stays
        if "train" not in self.phases or not self._updated["train"]:
            return {"train": None}
        metric = self.metrics["train"]
        if callable(getattr(metric, "persistent", None)):
            metric.persistent(True)  # torchmetrics keeps its states out of state_dict otherwise
        if not callable(getattr(metric, "state_dict", None)):
            return {"train": None, "unsaved": type(metric).__name__}
        states = {str(k): v for k, v in metric.state_dict().items()}
        return {"train": states, "update_counts": _update_counts(metric)}

    @hookimpl
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "unsaved" in state:
            raise ValueError(
                f"{self.plugin_name}: the checkpoint was written in the middle of a train pass, "
                f"and its metric ({state['unsaved']}) has no state_dict, so its train value "
                "cannot be resumed exactly: use a metric with state_dict (torchmetrics, "
                "torcheval), phases=('valid',), or resume from a checkpoint written at an "
                "epoch's end."
            )
        if state.get("train") is None:
            self._reset("train")
            return
        self._pending["train"] = None
        metric = self.metrics["train"]
        if callable(getattr(metric, "persistent", None)):
            metric.persistent(True)
        metric.load_state_dict(state["train"])
        counts = state.get("update_counts")
        if counts is None and "updates" in state:  # a checkpoint of one metric, before counts
            counts = {"": state["updates"]}
        named = getattr(metric, "named_modules", None)
        modules = dict(named()) if callable(named) else {}
        for module_name, count in (counts or {}).items():
            module = modules.get(module_name)
            if module is not None and hasattr(module, "_update_count"):
                module._update_count = int(count)
                module._computed = None  # no cached value of the states before the load
        self._updated["train"] = True

    @hookimpl
    def collect_metrics(self, learn: Learner, phase: str) -> dict[str, Any] | None:
        if phase not in self.phases:
            return None
        self._flush(phase)
        updated = self._updated[phase]
        if is_distributed():  # a rank that saw no batch still joins the others' sync
            updated = reduce_sum(float(updated))[0] > 0
        if not updated:
            return None
        value = _compute(self.metrics[phase])
        prefix = "" if phase == "valid" else "train_"
        if isinstance(value, Mapping):  # a collection: one metric per key
            stem = f"{prefix}{self.name}_" if self.name else prefix
            return {f"{stem}{key}": _number(v) for key, v in value.items()}
        return {f"{prefix}{self.metric_base}": _number(value)}


def _alone() -> bool:
    return False


def _compute(metric: Any) -> Any:
    """``metric.compute()``; in a rank-local call (:func:`pluglearn.distributed.ranks.local`)
    without the cross-process sync torchmetrics would do (a collection's members included)."""
    if not is_local():
        return metric.compute()
    members = metric.values() if callable(getattr(metric, "values", None)) else ()
    syncing = [m for m in (metric, *members) if hasattr(m, "distributed_available_fn")]
    saved = [m.distributed_available_fn for m in syncing]
    for m in syncing:
        m.distributed_available_fn = _alone
    try:
        return metric.compute()
    finally:
        for m, fn in zip(syncing, saved, strict=True):
            m.distributed_available_fn = fn
