"""TensorBoardLogger: per-batch loss and lr, per-epoch metrics and the run's hyperparameters.

Needs the optional extra: ``pip install "pluglearn[tensorboard]"``. Example::

    learn.fit(5, plugins=[TensorBoardLogger("runs/mlp", hparams={"hidden": 50})])
    # then: tensorboard --logdir runs

Tags: ``train/loss`` and ``train/lr`` per training batch (step: the batch's 0-based index over
the Learner's life; the lr is the one the batch used), ``epoch/<metric>`` per epoch (step: the
0-based ``"epoch"`` of the metrics, the data convention; the bar shows people ``epoch 1/5`` for
step 0), ``step/<metric>`` for each validation ``fit(valid_every=n)`` runs between epochs (step:
the index of the training batch it followed, on the axis of ``train/loss``), and the
hyperparameters (``lr``, ``opt``, ``n_epochs``, ``model``, plus yours) with
the last epoch's metrics in TensorBoard's HParams tab. Only the main process writes (rank 0
under torch.distributed). ``MetricsLogger`` keeps CSV / JSON lines.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..distributed.ranks import is_main_process
from ..hooks.markers import hookimpl
from .recorder import current_lr
from .validate_every import STEP, is_step_report

if TYPE_CHECKING:
    from ..learner import Learner

HPARAM_TYPES = (bool, int, float, str)


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError(
            "TensorBoardLogger needs tensorboard: pip install 'pluglearn[tensorboard]' "
            "(or pip install tensorboard)."
        ) from error
    return SummaryWriter


class TensorBoardLogger:
    """Writes TensorBoard event files under ``log_dir`` (on the main process).

    ``hparams``: extra hyperparameters to record (bool, int, float or str values);
    ``every``: log one training batch in ``every`` (each logged loss is a device sync).
    """

    def __init__(
        self, log_dir: str | Path, hparams: dict[str, Any] | None = None, every: int = 1
    ) -> None:
        self._writer_class = _summary_writer()  # fail here, not at the end of the first epoch
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}.")
        hparams = dict(hparams or {})
        bad = {k: type(v).__name__ for k, v in hparams.items() if not isinstance(v, HPARAM_TYPES)}
        if bad:
            raise TypeError(
                f"TensorBoardLogger hparams must be bool, int, float or str; got {bad}: pass "
                "str(value) for anything else."
            )
        self.log_dir, self.hparams, self.every = Path(log_dir), hparams, every
        self.writer: Any = None
        self._lr: float | None = None
        self._last: dict[str, float] = {}

    @hookimpl
    def before_fit(self, learn: Learner) -> None:
        if not learn.run.resumed:
            self._last = {}
        if is_main_process() and learn.run.running == "fit":  # not lr_find's throwaway run
            # a resumed run hides what the interrupted one logged after its checkpoint
            purge = {"purge_step": learn.train_iter} if learn.run.resumed else {}
            self.writer = self._writer_class(log_dir=str(self.log_dir), **purge)

    @hookimpl
    def state_dict(self) -> dict[str, Any]:
        return {"last": dict(self._last)}

    @hookimpl
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last = dict(state["last"])

    @hookimpl(trylast=True)  # after any plugin that sets this batch's lr in before_batch
    def before_batch(self, learn: Learner) -> None:
        if not learn.training:  # a validation batch, maybe of a validate() run from a
            return  # training hook between this batch's before_batch and after_batch
        self._lr = None
        if self.writer is not None and learn.train_iter % self.every == 0:
            self._lr = current_lr(learn.opt)

    @hookimpl
    def after_batch(self, learn: Learner) -> None:
        if self.writer is None or not learn.training or self._lr is None:
            return
        step = learn.train_iter - 1  # the batch just run, 0-based
        assert learn.loss is not None  # a training batch that ran to after_batch has one
        self.writer.add_scalar("train/loss", learn.loss.item(), step)
        self.writer.add_scalar("train/lr", self._lr, step)

    @hookimpl
    def report(self, metrics: dict[str, Any]) -> None:
        if self.writer is None:
            return
        if is_step_report(metrics):  # a validation between epochs: at the batch it followed
            group, at = "step", metrics[STEP] - 1
        else:
            group, at = "epoch", metrics.get("epoch", len(self._last))
        for key, value in metrics.items():
            if key in ("epoch", STEP) or isinstance(value, bool):
                continue
            if isinstance(value, numbers.Real):
                self.writer.add_scalar(f"{group}/{key}", float(value), at)
                if group == "epoch":
                    self._last[f"epoch/{key}"] = float(value)
        self.writer.flush()

    @hookimpl
    def cleanup_fit(self, learn: Learner) -> None:
        if self.writer is None:
            return
        try:
            from torch.utils.tensorboard.summary import hparams

            run = {
                "lr": float(learn.lr),
                "opt": type(learn.opt).__name__,
                "n_epochs": int(learn.n_epochs),
                "model": type(learn.model).__name__,
                **self.hparams,
            }
            metrics = {k: v for k, v in self._last.items() if k != "epoch/time"}
            file_writer = self.writer._get_file_writer()
            for summary in hparams(run, metrics):  # experiment, session start, session end
                file_writer.add_summary(summary)
        finally:
            self.writer.close()
            self.writer = None
