"""The run state: everything a run is, owned by one object that captures and restores it.

A Learner's run is its position in the loop (``epoch``, ``iter``, ``training``, ...), its batch
state (``batch``, ``preds``, ``loss``, the loader being read), its metrics and who reported
each, the stop reason, every module's train/eval mode, the random states (python, numpy, torch,
CUDA, and every ``torch.Generator`` its loaders draw from), the training loader's state, the
weights and gradients, the optimizer, the lr, and each plugin's own state (its ``state_dict``
hook). :class:`RunState` (``learn.run``) owns the parts that are the loop's own, and is the one
place where a run is captured and put back (:meth:`RunState.capture`, :meth:`RunState.restore`,
whose parts are declared in :mod:`pluglearn.run.parts`):

* a nested call (``validate``/``get_preds``/``predict`` from a training hook) captures
  :data:`NESTED` and restores it afterwards, so training goes on as if it had not run;
* ``lr_find`` captures :data:`SWEEP` (everything) and restores it after its throwaway fit;
* a resume captures :data:`ROLLBACK` before applying a checkpoint and restores it when applying
  fails half-way; a checkpoint itself is :data:`CHECKPOINT`, written to disk.

Other modules read the run state and change it through named transitions only:
:meth:`~RunState.stop` (end the fit with a reason), :meth:`~RunState.extend` (change the number
of epochs), the resume bookkeeping (:meth:`~RunState.start_resume`,
:meth:`~RunState.take_resume`); the loop and the Learner write the position. A test greps the
source for assignments to it from anywhere else.

Entry points are guarded here too: one Learner runs in one thread at a time, and a call from
inside a hook is either nestable (``validate``, ``get_preds``, ``predict``) or refused with a
message (``fit`` inside ``fit``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..learner import Learner

#: entry points that may run from inside a hook of another running call
NESTABLE = frozenset({"validate", "get_preds", "predict"})

#: what a nested call puts back: training goes on as if it had not run
NESTED = ("position", "batch", "metrics", "stop_reason", "modes", "rng", "generators")
#: what lr_find puts back: the whole run, plugins' states included
SWEEP = (
    "position", "stop_reason", "lr", "batch", "metrics", "modes", "model", "grads", "opt",
    "loader", "generators", "order", "plugins", "rng",
)  # fmt: skip
#: what a failed resume puts back
ROLLBACK = (
    "position", "stop_reason", "lr", "model", "grads", "opt", "loader", "generators", "order",
    "plugins", "rng",
)  # fmt: skip
#: what a checkpoint holds (serialisable parts; :mod:`pluglearn.checkpoint.resume` writes and
#: reads them)
CHECKPOINT = (
    "position", "stop_reason", "lr", "model", "opt", "loader", "generators", "order",
    "plugins", "rng",
)  # fmt: skip


@dataclass
class Position:
    """Where the loop is. ``train_iter`` counts training batches and ``opt_steps`` optimizer steps
    over the Learner's life (they differ under gradient accumulation)."""

    epoch: int = 0
    n_epochs: int = 0
    iter: int = 0
    n_iter: int | None = None
    training: bool = False
    in_batch: bool = False
    will_step: bool = True
    train_iter: int = 0
    opt_steps: int = 0


@dataclass
class Resume:
    """A resume loaded by ``restore`` and not yet consumed by the first train pass.

    ``position`` training batches of the resumed epoch ran before the cut. A loader without
    state (``replay``) is read again from the start of that epoch with the random states the
    epoch started from (``order``), and those batches are skipped; ``fingerprint`` is the last
    one's, checked when the loader is not one whose order pluglearn knows how to reproduce."""

    position: int = 0
    replay: bool = False
    order: dict[str, Any] | None = None
    fingerprint: str | None = None


@dataclass
class Snapshot:
    """Captured parts of a run, by part name (see :mod:`pluglearn.run.parts`)."""

    parts: dict[str, Any]


@dataclass
class RunState:
    """The one owner of a Learner's run state (see the module doc)."""

    pos: Position = field(default_factory=Position)
    resume: Resume = field(default_factory=Resume)
    entries: list[str] = field(default_factory=list)  # running entry points, outermost first
    reported: BaseException | None = None  # the error on_error was called for
    metric_owner: dict[str, str] = field(default_factory=dict)  # metric name -> plugin
    stop_reason: str | None = None  # who ended the last fit early, and why
    #: what decided the open training epoch's order, for a loader without state (see Resume)
    order: dict[str, Any] | None = None
    #: the batch the training loader yielded last, before any plugin changed it
    raw_batch: Any = None
    #: True while after_create_opt runs: the one time a plugin may replace ``learn.opt``
    setting_up: bool = False
    #: True in a fit that continues a checkpoint (set once it is restored, before before_fit)
    resumed: bool = False
    _thread: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ----------------------------------------------------------------- entry points

    @property
    def running(self) -> str | None:
        """The outermost running entry point (``"fit"``, ``"lr_find"``, ...), or None."""
        return self.entries[0] if self.entries else None

    @property
    def nested(self) -> bool:
        """True inside a call made from a hook of another running call."""
        return len(self.entries) > 1

    @contextmanager
    def entry(self, name: str) -> Iterator[bool]:
        """Run the entry point ``name``; yields True when it is nested in another running call.

        Refuses a call from another thread while one runs, and a call from inside a hook unless
        ``name`` is nestable."""
        me = threading.get_ident()
        nested = bool(self.entries) and self._thread == me
        if nested and name not in NESTABLE:
            raise RuntimeError(
                f"Learner.{name}() was called from inside a hook while {self.entries[-1]}() is "
                f"running: {name}() cannot run inside another call. Call it after "
                f"{self.entries[0]}() returns (only validate(), get_preds() and predict() may "
                "run inside a hook)."
            )
        if not nested:
            if not self._lock.acquire(blocking=False):
                raise RuntimeError(
                    f"Learner.{name}() was called from thread {me} while {self.running}() runs "
                    f"in thread {self._thread}: a Learner (its model, optimizer and plugins) "
                    "runs one call at a time. Wait for it, or give each thread its own Learner "
                    "and model."
                )
            self._thread = me
        self.entries.append(name)
        try:
            yield nested
        finally:
            self.entries.pop()
            if not nested:
                self._thread = None
                self._lock.release()

    def begin_call(self) -> None:
        """A new public call starts: no error has been reported in it yet."""
        self.reported = None

    def first_report(self, error: BaseException) -> bool:
        """True the first time ``error`` is reported in this call (``on_error`` runs once)."""
        if self.reported is error:
            return False
        self.reported = error
        return True

    # ------------------------------------------------------------------ transitions

    def stop(self, reason: str) -> None:
        """Record who ended the fit early, and why (``learn.stop_reason``); the first reason of
        a fit wins. Raise ``CancelFitException`` after it to end the fit."""
        if self.stop_reason is None:
            self.stop_reason = str(reason)

    def extend(self, n_epochs: int) -> None:
        """Change the number of epochs of the running fit (a step budget sizes it); the loop
        reads it at every epoch, so the change is honoured."""
        if isinstance(n_epochs, bool) or not isinstance(n_epochs, int) or n_epochs < 0:
            raise ValueError(f"n_epochs must be an int >= 0, got {n_epochs!r}.")
        self.pos.n_epochs = n_epochs

    def start_fit(self, n_epochs: int) -> None:
        """A fit starts at epoch 0 of ``n_epochs`` with no stop reason (a resume then moves it)."""
        self.pos.n_epochs, self.pos.epoch, self.stop_reason = n_epochs, 0, None
        self.resumed = False

    def start_resume(
        self,
        position: int,
        replay: bool,
        order: dict[str, Any] | None = None,
        fingerprint: str | None = None,
    ) -> None:
        """Record that this fit continues a checkpoint (:attr:`resumed`) and that its next train
        pass starts ``position`` batches into its epoch."""
        self.resume = Resume(position, replay, order, fingerprint)
        self.resumed = True

    def take_resume(self) -> Resume:
        """The pending resume, consumed (the next pass starts at batch 0 again)."""
        resume, self.resume = self.resume, Resume()
        return resume

    def clear_resume(self) -> None:
        """Forget a pending resume (the fit ended before its first train pass)."""
        self.resume = Resume()

    def restore_position(self, saved: Position) -> None:
        for f in fields(Position):
            setattr(self.pos, f.name, getattr(saved, f.name))

    # -------------------------------------------------------------- capture / restore

    def capture(self, learn: Learner, parts: Iterable[str], *, copy: bool = True) -> Snapshot:
        """The named ``parts`` of ``learn``'s run now (see :mod:`pluglearn.run.parts` for what
        each part holds), copied so that later training cannot change them; ``copy=False``
        for a checkpoint, written before training goes on."""
        from .parts import PARTS

        wanted = set(parts)
        # in the reverse of the order parts are put back: capturing one may disturb another
        # (a fresh StatefulDataLoader's state_dict makes its iterator, drawing a seed), so the
        # random states are taken first and put back last
        return Snapshot(
            {
                name: part.capture(learn, copy)
                for name, part in reversed(PARTS.items())
                if name in wanted
            }
        )

    def restore(self, learn: Learner, snapshot: Snapshot, *, strict: bool = False) -> list[str]:
        """Put the parts of ``snapshot`` back into ``learn``, in the parts' fixed order.

        ``strict`` (applying a checkpoint) raises the first failure at once. Otherwise every
        part is put back even when another fails (a roll-back, the end of a nested call), and
        the list of what could not be is returned (``"the model (RuntimeError: ...)"``)."""
        from .parts import PARTS

        failed = []
        for name, part in PARTS.items():
            if name not in snapshot.parts:
                continue
            if strict:
                part.restore(learn, snapshot.parts[name])
                continue
            try:
                part.restore(learn, snapshot.parts[name])
            except Exception as error:
                failed.append(f"{part.label} ({type(error).__name__}: {error})")
        return failed

    def put_back(self, learn: Learner, snapshot: Snapshot, what: str) -> None:
        """:meth:`restore` every part of ``snapshot``; when some fail, raise an error naming
        them (``what`` says which call is putting the run back)."""
        failed = self.restore(learn, snapshot)
        if failed:
            raise RuntimeError(
                f"pluglearn: putting the run back after {what} failed for {', '.join(failed)}: "
                "the Learner is half-restored; build a new Learner before training it."
            )
