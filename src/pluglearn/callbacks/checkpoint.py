"""Checkpoint: save the whole run every n batches and/or every epoch; keep the last k.

Example::

    learn.fit(10, plugins=[Checkpoint("runs/ckpt", every_n_batches=100, keep_last=3)])
    # the process dies (preempted, killed, Ctrl-C) ... later, in a new process:
    learn.fit(10, resume_from="runs/ckpt")        # bit-identical to an uninterrupted run

Files are written atomically (see :mod:`pluglearn.checkpoint`), so a kill during a write leaves
the previous checkpoint intact. With ``on_interrupt=True`` (the default) the first Ctrl-C lets the
current training batch finish (or, during validation, the epoch), saves a checkpoint there and
then stops with ``KeyboardInterrupt``; a second Ctrl-C stops at once. When a stopping plugin ends
the fit, the newest checkpoint records why, so resuming it does not train past the stop.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checkpoint import checkpoint_name, checkpoints_in, load_checkpoint, save_checkpoint
from ..plugins.markers import hookimpl
from ..resume import capture

if TYPE_CHECKING:
    from ..learner import Learner


class Checkpoint:
    """Saves checkpoints of the run into ``directory`` (see the module doc)."""

    def __init__(
        self,
        directory: str | Path,
        every_n_batches: int | None = None,
        every_epoch: bool = True,
        keep_last: int | None = 3,
        on_interrupt: bool = True,
        prefix: str = "ckpt",
    ) -> None:
        for name, value in (("every_n_batches", every_n_batches), ("keep_last", keep_last)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"Checkpoint({name}={value!r}): give a positive int, or None.")
        if every_n_batches is None and not every_epoch:
            raise ValueError(
                "Checkpoint would never save: give every_n_batches=n and/or every_epoch=True."
            )
        self.directory = Path(directory)
        self.every_n_batches, self.every_epoch = every_n_batches, every_epoch
        self.keep_last, self.on_interrupt, self.prefix = keep_last, on_interrupt, prefix
        self.saved: list[Path] = []
        self._interrupted = False
        self._previous_handler: Any = None

    @property
    def latest(self) -> Path | None:
        """The newest checkpoint this plugin wrote, if any."""
        return self.saved[-1] if self.saved else None

    def save(self, learn: Learner, epoch_end: bool = False) -> Path:
        """Write a checkpoint of ``learn`` now and drop the ones beyond ``keep_last``."""
        state = capture(learn, epoch_end=epoch_end)
        path = save_checkpoint(state, self.directory / checkpoint_name(state, self.prefix))
        if path not in self.saved:
            self.saved.append(path)
        if self.keep_last is not None:
            mine = [p for p in checkpoints_in(self.directory) if p.name.startswith(self.prefix)]
            for old in mine[: -self.keep_last]:
                old.unlink(missing_ok=True)
                if old in self.saved:
                    self.saved.remove(old)
        return path

    # --------------------------------------------------------------------------- hooks

    @hookimpl
    def before_fit(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._interrupted = False
        if self.on_interrupt and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._interrupted:  # the second Ctrl-C: stop now
            signal.signal(signal.SIGINT, self._previous_handler)
            raise KeyboardInterrupt
        self._interrupted = True
        print(
            "\nCtrl-C: finishing this batch to save a checkpoint (press Ctrl-C again to stop "
            "at once)",
            flush=True,
        )

    def _stop_if_interrupted(self, learn: Learner, epoch_end: bool) -> None:
        if self._interrupted:
            path = self.save(learn, epoch_end=epoch_end)
            raise KeyboardInterrupt(f"interrupted; resume with fit(..., resume_from='{path}')")

    @hookimpl(trylast=True)  # after the other plugins updated their state for this batch
    def after_batch(self, learn: Learner) -> None:
        if not learn.training:
            return
        if self.every_n_batches and learn.train_iter % self.every_n_batches == 0:
            self.save(learn)
        self._stop_if_interrupted(learn, epoch_end=False)

    @hookimpl(tryfirst=True)  # before a stopping plugin can cancel the fit
    def after_epoch(self, learn: Learner) -> None:
        if self.every_epoch:
            self.save(learn, epoch_end=True)
        self._stop_if_interrupted(learn, epoch_end=True)

    @hookimpl
    def on_error(self, learn: Learner, error: BaseException) -> None:
        if isinstance(error, KeyboardInterrupt) and not str(error).startswith("interrupted;"):
            error.add_note(
                "Checkpoint: stopped mid-batch, so no checkpoint was saved now; the newest is "
                f"{self.latest or 'none'}."
            )

    @hookimpl
    def cleanup_fit(self, learn: Learner) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None
        if learn.stop_reason is not None and self.latest is not None:
            # record who stopped the run, so that a resume does not train past the stop
            state = load_checkpoint(self.latest)
            state["loop"]["stop_reason"] = learn.stop_reason
            save_checkpoint(state, self.latest)
