"""Checkpoint: save the whole run every n batches and/or every epoch; keep the last k.

Example::

    learn.fit(10, plugins=[Checkpoint("runs/ckpt", every_n_batches=100, keep_last=3)])
    # the process dies (preempted, killed, Ctrl-C) ... later, in a new process:
    learn.fit(10, resume_from="runs/ckpt")        # bit-identical to an uninterrupted run

Files are written atomically (see :mod:`pluglearn.checkpoint.files`), so a kill during a write
leaves the previous checkpoint intact. With ``on_interrupt=True`` (the default) the first Ctrl-C
lets the current training batch finish (or, during validation, the epoch), saves a checkpoint there
and then stops with ``KeyboardInterrupt``; a second Ctrl-C stops at once (also during a write: the
partial file is removed). When a stopping plugin ends the fit, the newest checkpoint records why, so
resuming it does not train past the stop.

Each fit is a run with its own id in the file names (see :mod:`pluglearn.checkpoint.files`): a new
run in a used directory keeps the older runs' files, ``keep_last`` counts and deletes only this
run's files, and a resumed fit goes on writing under the id of the run it resumes. At the start of a
fit, the temporary files that killed writes left in the directory are removed.

Many processes (``DDP``): every rank calls ``save`` at the same batches (it is a collective: the
ranks' random, plugin and loader states are gathered to rank 0, see
:mod:`pluglearn.checkpoint.resume`), and rank 0 alone writes the one file, deletes old ones and
removes stale temporaries; the run id is rank 0's, broadcast at the start of the fit. A Ctrl-C on
any rank is agreed on by all of them where they save anyway (one small all-reduce after each save,
none per batch): every rank stops together after the next checkpoint, at the next multiple of
``every_n_batches`` or the epoch's end, with that checkpoint to resume from.
"""

from __future__ import annotations

import signal
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..distributed import ranks as pdist
from ..hooks.markers import hookimpl
from .files import (
    RUN_ID,
    checkpoint_name,
    load_checkpoint,
    new_run_id,
    parse_name,
    remove_stale_temporaries,
    runs_in,
    save_checkpoint,
)
from .resume import capture

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
        self._run: str | None = None  # this fit's run id, set in before_fit
        self._resumed_run: str | None = None  # the run id a resume restored, for before_fit

    @property
    def run_id(self) -> str | None:
        """The id of the run this plugin writes (None outside a fit)."""
        return self._run

    @property
    def latest(self) -> Path | None:
        """The newest checkpoint this plugin wrote, if any."""
        return self.saved[-1] if self.saved else None

    def save(self, learn: Learner, epoch_end: bool = False) -> Path:
        """Write a checkpoint of ``learn`` now and drop the ones beyond ``keep_last``."""
        if self._run is None:  # a save outside a fit
            self._run = new_run_id()
        state = capture(learn, epoch_end=epoch_end)  # on several ranks: gathered to rank 0
        name = checkpoint_name(state, self.prefix, self._run)
        if not pdist.is_main_process():  # rank 0 writes the one file
            path = self.directory / name
            if path not in self.saved:
                self.saved.append(path)
            return path
        path = save_checkpoint(state, self.directory / name)
        if path not in self.saved:
            self.saved.append(path)
        if self.keep_last is not None:
            for old in self._own_files()[: -self.keep_last]:
                old.unlink(missing_ok=True)
                if old in self.saved:
                    self.saved.remove(old)
        return path

    def _own_files(self) -> list[Path]:
        """This run's checkpoints with this plugin's prefix, oldest first."""
        files = next((run.files for run in runs_in(self.directory) if run.id == self._run), [])
        return [p for p in files if getattr(parse_name(p), "prefix", None) == self.prefix]

    # --------------------------------------------------------------------------- hooks

    @hookimpl
    def state_dict(self) -> dict[str, Any]:
        return {"run": self._run}

    @hookimpl
    def load_state_dict(self, learn: Learner, state: dict[str, Any]) -> None:
        run = state.get("run")
        if isinstance(run, str) and RUN_ID.fullmatch(run) and learn.stop_reason is None:
            self._resumed_run = run  # a run that had stopped is not resumed: no fit follows

    @hookimpl
    def before_fit(self, learn: Learner) -> None:
        self._run, self._resumed_run = self._resumed_run or new_run_id(), None
        if pdist.is_main_process():  # the files are rank 0's
            self.directory.mkdir(parents=True, exist_ok=True)
            later = [p for p in self._own_files() if _after(p, learn)]
            if later:  # resumed from an earlier checkpoint than the run's newest: keep those
                resumed, self._run = self._run, new_run_id()
                warnings.warn(
                    f"resuming run {resumed} from before its newest checkpoint "
                    f"({later[-1].name}): this fit writes its checkpoints as a new run, "
                    f"{self._run}, and keeps the later ones of run {resumed}.",
                    stacklevel=2,
                )
            remove_stale_temporaries(self.directory, self._run)
        self._run = pdist.broadcast_from_main(self._run)
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

    def _stop_if_interrupted(
        self, learn: Learner, epoch_end: bool, saved: Path | None = None
    ) -> None:
        interrupted = self._interrupted
        if self.on_interrupt and pdist.world_size() > 1:  # every rank stops at the same save
            if not (epoch_end or saved):
                return
            interrupted = pdist.reduce_sum(float(interrupted))[0] > 0
        if interrupted:
            try:
                path = saved or self.save(learn, epoch_end=epoch_end)
            except KeyboardInterrupt as error:
                error.add_note(
                    "Checkpoint: the second Ctrl-C came during the checkpoint write; its partial "
                    f"file was removed. The newest checkpoint is {self.latest or 'none'}."
                )
                raise
            raise KeyboardInterrupt(f"interrupted; resume with fit(..., resume_from='{path}')")

    @hookimpl(trylast=True)  # after the other plugins updated their state for this batch
    def after_batch(self, learn: Learner) -> None:
        if not learn.training:
            return
        saved = None
        if self.every_n_batches and learn.train_iter % self.every_n_batches == 0:
            saved = self.save(learn)
        self._stop_if_interrupted(learn, epoch_end=False, saved=saved)

    @hookimpl(tryfirst=True)  # before a stopping plugin can cancel the fit
    def after_epoch(self, learn: Learner) -> None:
        saved = self.save(learn, epoch_end=True) if self.every_epoch else None
        self._stop_if_interrupted(learn, epoch_end=True, saved=saved)

    @hookimpl
    def on_error(self, learn: Learner, error: BaseException) -> None:
        noted = any(n.startswith("Checkpoint:") for n in getattr(error, "__notes__", ()))
        if (
            isinstance(error, KeyboardInterrupt)
            and not noted
            and not str(error).startswith("interrupted;")
        ):
            error.add_note(
                "Checkpoint: stopped mid-batch, so no checkpoint was saved now; the newest is "
                f"{self.latest or 'none'}."
            )

    @hookimpl
    def cleanup_fit(self, learn: Learner) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None
        try:
            latest = self.latest
            if (
                learn.stop_reason is not None
                and pdist.is_main_process()
                and latest
                and getattr(parse_name(latest), "run", None) == self._run
            ):
                # record who stopped the run, so that a resume does not train past the stop
                state = load_checkpoint(latest)
                state["loop"]["stop_reason"] = learn.stop_reason
                save_checkpoint(state, latest)
        finally:
            self._run = None  # the next fit is a new run (unless it resumes one)


def _after(path: Path, learn: Learner) -> bool:
    """Whether checkpoint ``path`` was written later in its run than the position of ``learn``."""
    parts = parse_name(path)
    return parts is not None and (parts.steps, parts.epoch) > (learn.train_iter, learn.epoch)
