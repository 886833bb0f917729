"""TrackerLogger: what a fit logs to an experiment tracker, and when; the base of MLflowLogger and
WandbLogger, which say how. Example (either tracker; ``WandbLogger`` takes the same options)::

    learn.fit(5, plugins=[MLflowLogger(experiment="mlp", params={"hidden": 50})])

What each fit logs, on the main process only (rank 0 under torch.distributed):

- **hyperparameters**, once per run: ``lr``, ``batch_size`` (when the loaders say it),
  ``n_epochs``, ``max_steps`` (``fit(max_steps=...)``), ``opt`` and ``loss_func`` (names),
  ``model`` (the class), ``plugins`` (class names in call order) and your ``params``;
- **per training batch**: ``train/loss``, ``train/lr`` and, when the optimizer has one,
  ``train/momentum`` (``betas[0]`` for Adam-like), at step ``learn.train_iter`` (training batches
  run over the Learner's life, so the first batch is step 1); the lr is the one the batch used.
  ``every=n`` logs one batch in n (each logged loss is a ``.item()``, a device sync on GPUs).
  Under ``DDP`` the batch loss is rank 0's share of the global batch, as ``Recorder`` keeps it
  (no collective per batch); the reported metrics are reduced over every rank;
- **every** ``report(learn, metrics)``: each key of the dict holding a number (0-d tensors and
  numpy scalars too; other values are skipped with a warning), at step ``learn.train_iter``,
  with the ``epoch`` (0-based, the data convention);
- **at the end**: the stop reason (``learn.stop_reason``, who ended the fit early) and the status:
  ``finished`` (also when a plugin cancelled the fit), ``failed`` (an error, also named) or
  ``interrupted`` (``KeyboardInterrupt``, e.g. ``Checkpoint``'s Ctrl-C).

Each ``fit`` is one tracker run, made in ``before_fit``: a logger that is never fitted makes no
run, and ``learn.validate()``, ``get_preds()`` or ``lr_find()`` outside a fit log nothing.
``learn.fit(..., resume_from=ckpt)`` continues the run the checkpoint names (the run id is this
plugin's ``state_dict``): its hyperparameters stay as logged, and steps go on from the
checkpoint. Steps that the interrupted attempt logged after that checkpoint are not logged
again (the tracker keeps their first values, which a bit-identical resume repeats), so the
run's history holds each step once, as an uninterrupted run's does. A tracker that buffers
(``MLflowLogger``) sends what it holds whenever a checkpoint is taken, so a process killed
outright (SIGKILL) loses only steps that the resume runs again.
"""

from __future__ import annotations

import numbers
import warnings
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from ..distributed.ranks import is_main_process
from ..hooks.markers import hookimpl
from .recorder import current_lr, current_momentum

if TYPE_CHECKING:
    from ..learner import Learner

#: the key every per-batch row holds, and the one every report row holds: a tracker tells
#: which steps of each kind a run already has by the steps of these keys
BATCH_KEY, REPORT_KEY = "train/loss", "epoch"
#: hyperparameters the logger fills in itself (``params`` may not use these names)
RUN_PARAMS = ("lr", "batch_size", "n_epochs", "max_steps", "opt", "loss_func", "model", "plugins")
STATUSES = ("finished", "failed", "interrupted")


def run_params(learn: Learner) -> dict[str, Any]:
    """The hyperparameters of the fit ``learn`` is starting (see the module doc)."""
    from .budget import StepBudget

    loss_func = learn.loss_func
    params: dict[str, Any] = {
        "lr": float(learn.lr),
        "n_epochs": int(learn.n_epochs),
        "opt": type(learn.opt).__name__,
        "loss_func": getattr(loss_func, "__name__", type(loss_func).__name__),
        "model": type(learn.model).__name__,
        "plugins": ", ".join(type(p).__name__ for p in learn.plugins),
    }
    batch_size = learn.dls.batch_size or getattr(learn.dls.train, "batch_size", None)
    if isinstance(batch_size, int) and batch_size > 0:
        params["batch_size"] = batch_size
    budget = next((p for p in learn.plugins if isinstance(p, StepBudget)), None)
    if budget is not None:
        params["max_steps"] = budget.max_steps
    return params


def _scalar(value: Any) -> float | None:
    """``value`` as a float when it is one number (a bool, a 0-d tensor, a numpy scalar), else
    None."""
    if isinstance(value, numbers.Real):
        return float(value)
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        item = value.item()
        return float(item) if isinstance(item, numbers.Real) else None
    return None


class TrackerLogger(ABC):
    """Logs a fit to an experiment tracker (see the module doc); a subclass connects the tracker
    by answering ``_open``, ``_log_params``, ``_log``, ``_logged_steps`` and ``_close``.

    Example: ``MLflowLogger`` and ``WandbLogger`` are the two that pluglearn ships::

        learn.fit(3, plugins=[WandbLogger(project="mlp", every=10)])
    """

    def __init__(self, params: dict[str, Any] | None = None, every: int = 1) -> None:
        name = type(self).__name__
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"{name}: every must be a positive int, got {every!r}.")
        if params is not None and not isinstance(params, dict):
            raise TypeError(f"{name}: params must be a dict, got {type(params).__name__}.")
        params = dict(params or {})
        bad = [k for k in params if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{name}: params keys must be str, got {bad!r}.")
        taken = sorted(set(params) & set(RUN_PARAMS))
        if taken:
            raise ValueError(
                f"{name}: params {taken} are logged by the logger itself (from the Learner); "
                "give yours other names."
            )
        self.params, self.every = params, every
        self.run_id: str | None = None  # the tracker run of the fit in progress
        self._resume_id: str | None = None  # the run a checkpoint named, for the next fit
        self._logged: dict[str, int] = {}  # per kind, the last step the run held when resumed
        self._used: tuple[float, float | None] | None = None
        self._status, self._error = "finished", ""
        self._skipped: set[str] = set()

    # ------------------------------------------------------------------ the tracker's part

    @abstractmethod
    def _open(self, learn: Learner, run_id: str | None) -> str:
        """Start a new run (``run_id`` None) or reopen run ``run_id``; return the run's id."""

    @abstractmethod
    def _log_params(self, params: dict[str, Any]) -> None:
        """Record the run's hyperparameters."""

    @abstractmethod
    def _log(self, values: dict[str, float], step: int) -> None:
        """Record ``values`` at ``step``."""

    @abstractmethod
    def _logged_steps(self) -> dict[str, int]:
        """The last step at which the reopened run holds ``BATCH_KEY`` (as ``"batch"``) and
        ``REPORT_KEY`` (as ``"report"``); a kind it does not hold may be left out."""

    @abstractmethod
    def _close(self, status: str, stop_reason: str | None, error: str) -> None:
        """Record how the fit ended (``status`` one of ``STATUSES``) and end the run."""

    def _flush(self) -> None:
        """Send what ``_log`` kept back (a tracker that buffers answers this)."""
        return None  # by default nothing is kept back

    # ---------------------------------------------------------------------------- hooks

    @hookimpl
    def before_fit(self, learn: Learner) -> None:
        self._status, self._error, self._logged = "finished", "", {}
        resume_id, self._resume_id = self._resume_id, None
        if learn.run.running != "fit" or not is_main_process():
            return  # lr_find runs through before_fit too; other ranks log nothing
        self.run_id = self._open(learn, resume_id)
        if resume_id is None:
            self._log_params({**run_params(learn), **self.params})
        else:
            self._logged = self._logged_steps()

    @hookimpl(trylast=True)  # after any plugin that sets this batch's lr in before_batch
    def before_batch(self, learn: Learner) -> None:
        self._used = None
        if self.run_id is not None and learn.training and learn.train_iter % self.every == 0:
            self._used = current_lr(learn.opt), current_momentum(learn.opt)

    @hookimpl
    def after_batch(self, learn: Learner) -> None:
        if self._used is None or not learn.training:
            return
        lr, momentum = self._used
        self._used = None
        if learn.train_iter <= self._logged.get("batch", -1):
            return  # the interrupted attempt logged this step: the run keeps its first value
        assert learn.loss is not None  # a training batch that ran to after_batch has one
        values = {BATCH_KEY: learn.loss.item(), "train/lr": lr}
        if momentum is not None:
            values["train/momentum"] = momentum
        self._log(values, learn.train_iter)

    @hookimpl
    def report(self, learn: Learner, metrics: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        values = {}
        for key, value in metrics.items():
            if key == "step":  # a validation between epochs (ValidateEvery): logged at it
                continue
            number = _scalar(value)
            if number is not None:
                values[key] = number
            elif key not in self._skipped:
                self._skipped.add(key)
                warnings.warn(
                    f"{type(self).__name__}: metric {key!r} is a {type(value).__name__}, not "
                    "one number: not logged (report a number per key, e.g. one per class).",
                    stacklevel=2,
                )
        values[REPORT_KEY] = float(metrics.get(REPORT_KEY, learn.epoch))
        if learn.train_iter > self._logged.get("report", -1):
            self._log(values, learn.train_iter)
        self._flush()

    @hookimpl
    def on_error(self, error: BaseException) -> None:
        interrupted = isinstance(error, KeyboardInterrupt)
        self._status = "interrupted" if interrupted else "failed"
        self._error = f"{type(error).__name__}: {error}"

    @hookimpl
    def cleanup_fit(self, learn: Learner) -> None:
        if self.run_id is None:
            return
        try:
            self._close(self._status, learn.stop_reason, self._error)
        finally:
            self.run_id, self._logged, self._used = None, {}, None

    @hookimpl
    def state_dict(self) -> dict[str, Any]:
        # a checkpoint is being taken: what was logged up to here goes to the tracker first, so a
        # kill after it loses no step that resuming from it would not run again
        if self.run_id is not None:
            self._flush()
        return {"run_id": self.run_id}

    @hookimpl
    def load_state_dict(self, learn: Learner, state: dict[str, Any]) -> None:
        run_id = state.get("run_id")
        if run_id is not None and not isinstance(run_id, str):
            raise ValueError(
                f"{type(self).__name__}: the checkpoint's run_id is a {type(run_id).__name__}, "
                "not a str: the checkpoint was not written by this logger."
            )
        # a run that had stopped is not resumed: no fit follows (see Checkpoint)
        self._resume_id = run_id if learn.stop_reason is None else None
