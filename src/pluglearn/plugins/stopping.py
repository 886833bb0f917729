"""Ending a fit early and keeping the best weights: TerminateOnNaN, EarlyStopping, SaveBest.

Example::

    best = SaveBest(path="runs/best.safetensors")
    learn.fit(50, plugins=[TerminateOnNaN(), EarlyStopping(patience=5), best])
    learn.stop_reason   # "EarlyStopping: valid_loss did not improve for 5 epochs (best ...)"
    # the model now holds the weights of its best epoch by valid_loss, and so does the file

The stopping plugins end the fit with ``CancelFitException`` after setting ``learn.stop_reason``
(who stopped, and why). EarlyStopping and SaveBest read the monitored metric in the ``report``
hook (once per epoch, merged metrics, before ``after_epoch``) so that a ``Checkpoint`` saved in
``after_epoch`` already holds this epoch's state and a resumed run stops where an uninterrupted
one would; EarlyStopping cancels in ``after_epoch``, after that checkpoint. Their state is per
fit: a new ``fit`` starts afresh, a ``fit(resume_from=...)`` continues the checkpointed state.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..distributed.ranks import is_main_process
from ..exceptions import CancelFitException
from ..hooks.markers import hookimpl

if TYPE_CHECKING:
    from ..learner import Learner


class MetricNotFoundError(KeyError):
    """The monitored metric is not among the epoch's metrics (a KeyError whose text reads well)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _stop(learn: Learner, who: str, message: str) -> None:
    learn.run.stop(f"{who}: {message}")
    raise CancelFitException(message)


class TerminateOnNaN:
    """Ends the fit at the first loss that is NaN or infinite, before its backward and step, so
    the weights stay those from before that batch.

    Example::

        learn.fit(10, plugins=[TerminateOnNaN()])
        learn.stop_reason   # "TerminateOnNaN: loss is nan at epoch 1, train batch 3"

    It checks every batch of both passes (one device sync per batch on an accelerator). Outside a
    fit (``learn.validate()``, ``get_preds``) it does nothing: a NaN shows in the metrics.
    """

    def __init__(self) -> None:
        self._fitting = False

    @hookimpl
    def before_fit(self) -> None:
        self._fitting = True

    @hookimpl(tryfirst=True)  # before the metrics accumulate the loss and before backward
    def after_loss(self, learn: Learner) -> None:
        loss = learn.loss
        assert loss is not None  # set before after_loss
        if not self._fitting or bool(torch.isfinite(loss.detach()).all()):
            return
        value = loss.item() if loss.numel() == 1 else "not finite"
        where = f"{'train' if learn.training else 'validation'} batch {learn.iter}"
        _stop(learn, type(self).__name__, f"loss is {value} at epoch {learn.epoch}, {where}")

    @hookimpl
    def cleanup_fit(self) -> None:
        self._fitting = False


class _Monitored:
    """Shared by EarlyStopping and SaveBest: which metric, which direction, the best so far."""

    def __init__(self, monitor: str, mode: str | None, min_delta: float = 0.0) -> None:
        who = type(self).__name__
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(
                f"{who}(monitor={monitor!r}): give a metric name, e.g. 'valid_loss' or 'accuracy'."
            )
        if mode is None:
            mode = "max" if "acc" in monitor else "min"
        if mode not in ("min", "max"):
            raise ValueError(
                f"{who}(mode={mode!r}): give 'min' (lower is better, losses) or 'max' (higher is "
                "better, accuracy)."
            )
        if (
            isinstance(min_delta, bool)
            or not isinstance(min_delta, numbers.Real)
            or not math.isfinite(min_delta)
            or min_delta < 0
        ):
            raise ValueError(
                f"{who}(min_delta={min_delta!r}): give a finite number >= 0 (the least change "
                "that counts as an improvement)."
            )
        self.monitor: str = monitor
        self.mode: str = mode
        self.min_delta: float = float(min_delta)
        self.best: float | None = None
        self.best_epoch: int | None = None
        self._resumed_at: tuple[int, int] | None = None  # (epoch, steps) of a loaded checkpoint

    def _reset(self) -> None:
        self.best, self.best_epoch = None, None

    def _read(self, metrics: Mapping[str, Any]) -> float:
        who = type(self).__name__
        if self.monitor not in metrics:
            available = [k for k in metrics if k not in ("epoch", "time")]
            no_valid = not any(k.startswith("valid") for k in metrics)
            hint = (
                " (validation metrics need validation data: DataLoaders(train, valid))"
                if self.monitor.startswith("valid") and no_valid
                else ""
            )
            raise MetricNotFoundError(
                f"{who} monitors {self.monitor!r}, which is not among this epoch's metrics "
                f"({', '.join(available) or 'none'}){hint}: pass monitor= one of them, or add "
                "the plugin that reports it (e.g. Accuracy() reports 'accuracy')."
            )
        value = metrics[self.monitor]
        try:
            return float(value)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(
                f"{who} monitors {self.monitor!r}, whose value is not one number "
                f"({type(value).__name__}): monitor a scalar metric."
            ) from error

    def _improves(self, value: float) -> bool:
        if math.isnan(value):  # a NaN epoch is never the best one
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    @hookimpl
    def before_fit(self, learn: Learner) -> None:
        # fit(resume_from=...) loads the state just before before_fit: keep it then, only then
        if self._resumed_at != (learn.epoch, learn.train_iter):
            self._reset()
        self._resumed_at = None

    def _own_state(self, learn: Learner, state: Mapping[str, Any]) -> bool:
        """Whether a checkpointed state was saved with the same monitor and mode (else warn)."""
        if (state.get("monitor"), state.get("mode")) == (self.monitor, self.mode):
            self._resumed_at = (learn.epoch, learn.train_iter)
            return True
        warnings.warn(
            f"{type(self).__name__}: the checkpoint monitored {state.get('monitor')!r} "
            f"({state.get('mode')}), this plugin monitors {self.monitor!r} ({self.mode}): its "
            "saved state is ignored and the resumed fit starts afresh.",
            stacklevel=2,
        )
        return False

    def _state(self, **extra: Any) -> dict[str, Any]:
        """The monitored state every subclass saves, plus its own ``extra`` fields."""
        best = {"best": self.best, "best_epoch": self.best_epoch}
        return {"monitor": self.monitor, "mode": self.mode, **best, **extra}

    def _load(self, learn: Learner, state: Mapping[str, Any]) -> bool:
        """Restore the monitored state when it is this plugin's; True when it was."""
        if not self._own_state(learn, state):
            return False
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        return True


class EarlyStopping(_Monitored):
    """Ends the fit once ``monitor`` has not improved for ``patience`` epochs in a row.

    ``mode`` is "min" or "max" (default: "max" when the name contains "acc", else "min"); an
    epoch improves when it beats the best by more than ``min_delta``. On the last epoch it does
    not cancel (the fit ends anyway, and ``after_fit`` still runs).

    Example::

        learn = Learner(model, dls, plugins=[Accuracy()])
        learn.fit(100, plugins=[EarlyStopping("accuracy", patience=5)])
        learn.stop_reason  # "EarlyStopping: accuracy did not improve for 5 epochs (best ...)"
    """

    def __init__(
        self,
        monitor: str = "valid_loss",
        mode: str | None = None,
        patience: int = 3,
        min_delta: float = 0.0,
    ) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(
                f"EarlyStopping(patience={patience!r}): give a positive int, the number of "
                "epochs without improvement that ends the fit."
            )
        super().__init__(monitor, mode, min_delta)
        self.patience = patience
        self.wait = 0  # epochs since the last improvement

    def _reset(self) -> None:
        super()._reset()
        self.wait = 0

    @hookimpl
    def report(self, learn: Learner, metrics: dict[str, Any]) -> None:
        value = self._read(metrics)
        if self._improves(value):
            self.best, self.best_epoch, self.wait = value, learn.epoch, 0
        else:
            self.wait += 1

    @hookimpl
    def after_epoch(self, learn: Learner) -> None:
        if self.wait >= self.patience and learn.epoch < learn.n_epochs - 1:
            best = "none" if self.best is None else f"{self.best:.4g} at epoch {self.best_epoch}"
            _stop(
                learn,
                type(self).__name__,
                f"{self.monitor} did not improve for {self.wait} epochs (best {best})",
            )

    @hookimpl
    def state_dict(self) -> dict[str, Any]:
        return self._state(wait=self.wait)

    @hookimpl
    def load_state_dict(self, learn: Learner, state: dict[str, Any]) -> None:
        if self._load(learn, state):
            self.wait = int(state["wait"])


class SaveBest(_Monitored):
    """Keeps a CPU copy of the model's weights from the epoch with the best ``monitor`` and, with
    ``restore=True``, loads them back into the model when the fit ends, however it ends (after
    the last epoch, a cancel, an error or Ctrl-C).

    ``best`` and ``best_epoch`` record the winner; ``weights`` is the copy (None before the
    first epoch). The copy is part of checkpoints (``state_dict``), so it survives a resume, and
    it doubles their size.

    With ``path`` it also writes the copy to that file at each new best (on rank 0 only), as
    ``learn.save`` does: safetensors, keys without wrapper prefixes, atomically (a temporary
    file, fsync, rename), so a crash leaves the previous best intact; the header's metadata
    holds ``monitor``, ``mode``, ``best`` and ``best_epoch``. ``learn.load(path)`` reads it. A
    resumed run keeps the best of before the crash: the checkpoint restores the copy, the file
    stays until a better epoch replaces it.

    Example::

        save = SaveBest("accuracy", path="runs/best.safetensors")
        learn.fit(20, plugins=[Accuracy(), save])
        save.best, save.best_epoch   # e.g. (0.93, 14); the model and the file hold epoch 14's
    """

    def __init__(
        self,
        monitor: str = "valid_loss",
        mode: str | None = None,
        restore: bool = True,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(restore, bool):
            raise ValueError(f"SaveBest(restore={restore!r}): give True or False.")
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise ValueError(
                f"SaveBest(path={path!r}): give a file path (str or Path), e.g. "
                "'runs/best.safetensors', or None to keep the best weights in memory only."
            )
        if path is not None and Path(path).is_dir():
            raise ValueError(
                f"SaveBest(path={str(path)!r}) is a directory: give a file in it, e.g. "
                f"{str(Path(path) / 'best.safetensors')!r}."
            )
        super().__init__(monitor, mode)
        self.restore = restore
        self.path = None if path is None else Path(path)
        self.weights: dict[str, Any] | None = None

    def _reset(self) -> None:
        super()._reset()
        self.weights = None

    @hookimpl
    def report(self, learn: Learner, metrics: dict[str, Any]) -> None:
        value = self._read(metrics)
        if self._improves(value):
            self.best, self.best_epoch = value, learn.epoch
            # on the CPU, so that the copy costs no accelerator memory
            self.weights = {
                k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else copy.copy(v)
                for k, v in learn.model.state_dict().items()
            }
            if self.path is not None and is_main_process():
                self._write(self.path)

    def _write(self, path: Path) -> None:
        """The copy to ``path``, through the weights writer (see the class doc)."""
        from ..checkpoint.weights import canonical_state, storable, write_tensors

        tensors = {k: v for k, v in (self.weights or {}).items() if isinstance(v, torch.Tensor)}
        meta = {"monitor": self.monitor, "mode": self.mode, "best": repr(self.best)}
        meta["best_epoch"] = str(self.best_epoch)
        write_tensors(storable(canonical_state(tensors, "SaveBest")), path, meta)

    @hookimpl
    def cleanup_fit(self, learn: Learner) -> None:
        if self.restore and self.weights is not None:
            learn.model.load_state_dict(self.weights)

    @hookimpl
    def state_dict(self) -> dict[str, Any]:
        return self._state(weights=self.weights)

    @hookimpl
    def load_state_dict(self, learn: Learner, state: dict[str, Any]) -> None:
        if self._load(learn, state):
            self.weights = state["weights"]
