"""Profiler: where a fit's time goes, per plugin and hook, in the model and in the loader.

While a Profiler is registered, every hook implementation of every other plugin is timed (the
registry compiles its callers through :meth:`Profiler.instrument_hooks`; a Learner without a
profiler compiles the bare callers and pays nothing). Times are *self* times: a hook that calls
``learn.validate()`` is charged for its own code, and the nested pass's hooks for theirs, so the
rows add up to at most the fit's wall time. The model's forward, the loss, the backward and the
optimizer step are the ``predict``, ``compute_loss``, ``backward`` and ``step``/``zero_grad``
hooks (``TrainStep`` answers them by default); the loader row is the time the loop waited for
the next batch (from the end of ``before_train``/``cleanup_batch`` to the next ``before_batch``).

Each fit starts a fresh count. Example::

    profiler = Profiler()
    learn.fit(3, plugins=[profiler])      # or Learner(..., plugins=[Profiler()])
    profiler.show()                       # the table, costliest first, then the breakdown
    rows = profiler.table()               # [Row(plugin, hook, calls, total_s, mean_us), ...]
    profiler.breakdown()                  # {"fit": 2.1, "loader": 0.4, "forward": 0.9, ...}
"""

from __future__ import annotations

import sys
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from ..hooks.markers import hookimpl

if TYPE_CHECKING:
    from ..hooks.dispatch import Caller, Impl

#: the plugin name of the loader row
LOADER = "(loader)"

#: hook -> the part of a training step it is, for :meth:`Profiler.breakdown`
STEP_PARTS = {
    "predict": "forward",
    "compute_loss": "loss",
    "backward": "backward",
    "step": "optimizer",
    "zero_grad": "optimizer",
}


@dataclass(frozen=True)
class Row:
    """One line of the profile: ``calls`` calls of ``plugin``'s ``hook``, ``total_s`` in all."""

    plugin: str
    hook: str
    calls: int
    total_s: float

    @property
    def mean_us(self) -> float:
        """Microseconds per call."""
        return self.total_s / self.calls * 1e6 if self.calls else 0.0


class Profiler:
    """Wall time per plugin per hook over a fit, and in the model, the optimizer and the loader.

    Example::

        profiler = Profiler()
        learn.fit(1, plugins=[profiler])
        top = profiler.table()[0]        # the costliest: Row(plugin, hook, calls, total_s)
    """

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str], list[float]] = {}  # (plugin, hook) -> [calls, s]
        self._frames: list[float] = []  # per open timed call: the time of calls nested in it
        self._active = False
        self._mark: float | None = None  # when the loop last went to fetch a batch
        self._loader = [0, 0.0]
        self._start = 0.0
        self.fit_s = 0.0  # the wall time of the last fit (after_create_opt to cleanup_fit)

    # ------------------------------------------------------------------------------ results

    def table(self) -> list[Row]:
        """The rows of the last fit, costliest first (the loader is the row ``(loader)``)."""
        rows = [Row(p, h, int(n), s) for (p, h), (n, s) in self._stats.items() if n]
        if self._loader[0]:
            rows.append(Row(LOADER, "next batch", int(self._loader[0]), self._loader[1]))
        return sorted(rows, key=lambda r: r.total_s, reverse=True)

    def breakdown(self) -> dict[str, float]:
        """Seconds of the last fit by part: ``fit`` (wall), ``loader``, ``forward``, ``loss``,
        ``backward``, ``optimizer``, ``plugins`` (every other hook) and ``loop`` (the rest: the
        loop itself, metric merging, the profiler's own bookkeeping)."""
        parts = dict.fromkeys(
            ["loader", "forward", "loss", "backward", "optimizer", "plugins"], 0.0
        )
        for row in self.table():
            part = "loader" if row.plugin == LOADER else STEP_PARTS.get(row.hook, "plugins")
            parts[part] += row.total_s
        return {"fit": self.fit_s, **parts, "loop": max(self.fit_s - sum(parts.values()), 0.0)}

    def format(self, limit: int | None = 20) -> str:
        """The table (the first ``limit`` rows; None: all) and the breakdown, as text."""
        rows = self.table()
        if not rows:
            return "Profiler: nothing recorded yet: register it and run learn.fit(...)."
        shown = rows if limit is None else rows[:limit]
        width = max(len(r.plugin) for r in shown)
        hook_w = max(len(r.hook) for r in shown)
        lines = [f"{'plugin':<{width}}  {'hook':<{hook_w}}  {'calls':>7}  {'total s':>9}  mean us"]
        lines += [
            f"{r.plugin:<{width}}  {r.hook:<{hook_w}}  {r.calls:>7}  {r.total_s:>9.4f}  "
            f"{r.mean_us:>7.1f}"
            for r in shown
        ]
        if len(rows) > len(shown):
            lines.append(f"... {len(rows) - len(shown)} more rows (profiler.table() has all)")
        parts = self.breakdown()
        fit = parts.pop("fit") or 1.0
        lines.append(
            f"fit {self.fit_s:.3f} s: "
            + ", ".join(f"{k} {v:.3f} s ({v / fit:.0%})" for k, v in parts.items())
        )
        return "\n".join(lines)

    def show(self, limit: int | None = 20, file: IO[str] | None = None) -> None:
        """Print :meth:`format` (to stdout, or ``file``)."""
        print(self.format(limit), file=file or sys.stdout)

    # ------------------------------------------------------------------------ instrumentation

    @hookimpl
    def instrument_hooks(self, impl: Impl, fn: Caller) -> Caller:
        """Time ``fn`` (one plugin's implementation of one hook); the registry calls this for
        every implementation while the profiler is registered. The profiler's own are bare."""
        if getattr(impl.function, "__self__", None) is self:
            return fn
        stat = self._stats.setdefault((impl.plugin, impl.hook), [0, 0.0])
        if impl.wrapper:
            return self._timed_wrapper(stat, fn)
        frames, clock = self._frames, time.perf_counter

        def timed(*args: Any) -> Any:
            if not self._active:
                return fn(*args)
            frames.append(0.0)
            start = clock()
            try:
                return fn(*args)
            finally:
                elapsed = clock() - start
                stat[0] += 1
                stat[1] += elapsed - frames.pop()
                if frames:
                    frames[-1] += elapsed

        return timed

    def _timed_wrapper(self, stat: list[float], fn: Caller) -> Caller:
        """A wrapper implementation (a generator) timed in its own code only: before its
        ``yield`` and after it, not the hook call it wraps."""

        def segment(run: Any, *args: Any) -> Any:
            if not self._active:
                return run(*args)
            self._frames.append(0.0)
            start = time.perf_counter()
            try:
                return run(*args)
            finally:
                elapsed = time.perf_counter() - start
                stat[1] += elapsed - self._frames.pop()
                if self._frames:
                    self._frames[-1] += elapsed

        def timed(*args: Any) -> Generator[Any, Any, Any]:
            stat[0] += self._active
            gen = segment(fn, *args)
            try:
                segment(next, gen)
            except StopIteration:
                return None  # the dispatcher reports a wrapper that never yields
            try:
                result = yield
            except BaseException as error:  # handed on, as unprofiled
                try:
                    segment(gen.throw, error)
                except StopIteration as stop:
                    return stop.value
                yield  # yielded twice: let the dispatcher report it
                return None
            try:
                segment(gen.send, result)
            except StopIteration as stop:
                return stop.value
            yield
            return None

        return timed

    # --------------------------------------------------------------------------- fit bounds

    @hookimpl(wrapper=True, tryfirst=True)
    def after_create_opt(self) -> Iterator[None]:
        self._reset()
        self._active, self._start = True, time.perf_counter()
        return (yield)

    def _reset(self) -> None:
        """Zero the counts in place (the compiled callers hold the lists)."""
        for stat in self._stats.values():
            stat[0], stat[1] = 0, 0.0
        self._loader[0], self._loader[1] = 0, 0.0
        self._frames.clear()
        self._mark, self.fit_s = None, 0.0

    @hookimpl(wrapper=True, tryfirst=True)
    def cleanup_fit(self) -> Iterator[None]:
        try:
            return (yield)
        finally:
            if self._active:
                self.fit_s = time.perf_counter() - self._start
            self._active, self._mark = False, None

    # ------------------------------------------------------------------------ loader timing

    def _mark_fetch(self) -> None:
        self._mark = time.perf_counter() if self._active else None

    @hookimpl(wrapper=True, tryfirst=True)
    def before_train(self) -> Iterator[None]:
        result = yield
        self._mark_fetch()
        return result

    @hookimpl(wrapper=True, tryfirst=True)
    def before_validate(self) -> Iterator[None]:
        result = yield
        self._mark_fetch()
        return result

    @hookimpl(wrapper=True, tryfirst=True)
    def cleanup_batch(self) -> Iterator[None]:
        try:
            return (yield)
        finally:
            self._mark_fetch()

    @hookimpl(wrapper=True, tryfirst=True)
    def before_batch(self) -> Iterator[None]:
        if self._mark is not None:
            waited = time.perf_counter() - self._mark
            self._loader[0] += 1
            self._loader[1] += waited
            if self._frames:  # a nested pass: not the enclosing hook's own time
                self._frames[-1] += waited
            self._mark = None
        return (yield)

    @hookimpl
    def cleanup_train(self) -> None:
        self._mark = None  # the loop leaves the pass: what follows is no wait for a batch

    @hookimpl
    def cleanup_validate(self) -> None:
        self._mark = None
