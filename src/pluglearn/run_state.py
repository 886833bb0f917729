"""The run state: where a Learner is, which of its calls are running, and the resume bookkeeping.

One object, owned by the Learner (``learn.run``), holds everything the loop and its helpers need to
agree on: the position (``epoch``, ``iter``, ``training``, ...; the Learner shows them as
``learn.epoch``, ``learn.iter``, ...), the stack of running entry points (``fit``, ``validate``,
``lr_find``), the pending resume position, and the error ``on_error`` was called for. Other
modules read it and change it through its methods, never through the Learner's private
attributes.

Entry points are guarded here: one Learner runs in one thread at a time, and a call from inside
a hook is either nestable (``validate`` and ``get_preds`` inside a training hook, which leave
training exactly as it was) or refused with a message (``fit`` inside ``fit``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Any

#: entry points that may run from inside a hook of another running call
NESTABLE = frozenset({"validate", "get_preds", "predict"})


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
    """A resume loaded by ``restore`` and not yet consumed by the first train pass."""

    position: int = 0  # training batches of the resumed epoch done before the cut
    replays: bool = False  # the loader cannot seek: skip those batches by reading them


@dataclass
class RunState:
    """The one owner of a Learner's run state (see the module doc)."""

    pos: Position = field(default_factory=Position)
    resume: Resume = field(default_factory=Resume)
    entries: list[str] = field(default_factory=list)  # running entry points, outermost first
    reported: BaseException | None = None  # the error on_error was called for
    metric_owner: dict[str, str] = field(default_factory=dict)  # metric name -> plugin
    _thread: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def running(self) -> str | None:
        """The outermost running entry point (``"fit"``, ...), or None."""
        return self.entries[0] if self.entries else None

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

    def snapshot(self) -> Position:
        """A copy of the position, to restore after a nested pass."""
        return replace(self.pos)

    def restore_position(self, saved: Position) -> None:
        for f in fields(Position):
            setattr(self.pos, f.name, getattr(saved, f.name))

    def start_resume(self, position: int, replays: bool) -> None:
        """Record that the next train pass starts ``position`` batches into its epoch."""
        self.resume = Resume(position, replays)

    def take_resume(self) -> Resume:
        """The pending resume, consumed (the next pass starts at batch 0 again)."""
        resume, self.resume = self.resume, Resume()
        return resume

    def clear_resume(self) -> None:
        """Forget a pending resume (the fit ended before its first train pass)."""
        self.resume = Resume()

    def begin_call(self) -> None:
        """A new public call starts: no error has been reported in it yet."""
        self.reported = None

    def first_report(self, error: BaseException) -> bool:
        """True the first time ``error`` is reported in this call (``on_error`` runs once)."""
        if self.reported is error:
            return False
        self.reported = error
        return True


def position_property(name: str, doc: str) -> Any:
    """A Learner attribute that reads and writes ``learn.run.pos.<name>``."""

    def get(learn: Any) -> Any:
        return getattr(learn.run.pos, name)

    def set_(learn: Any, value: Any) -> None:
        setattr(learn.run.pos, name, value)

    return property(get, set_, doc=doc)
