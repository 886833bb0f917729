"""A multiprocessing DataLoader: the notebook's process-pool idea, made sound and resumable.

(The notebook's own few-line form is :class:`pluglearn.scratch.DataLoader` with ``n_workers``;
this is the production loader that
:class:`~pluglearn.plugins.multiprocess_loader.MultiprocessLoader` gives the Learner.)

Worker processes take batches of indices from a task queue, fetch `dataset[i]`, call
`collate_fn` and send the collated batch back. The parent keeps at most `prefetch` batches in
flight, yields them in order whatever order they finish in, notices a worker that died instead
of waiting forever, re-raises worker exceptions with the worker's traceback, and shuts the
workers down on `close()`, on errors, on Ctrl-C, on garbage collection and at interpreter exit.

Before fetching batch `b` of epoch `e`, torch, `random` and numpy are seeded from
`(base_seed, e, b)`, so a batch is the same whichever worker (or how many workers) makes it.
"""

from __future__ import annotations

import multiprocessing
import pickle
import sys
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from .batch_ops import collate
from .epochs import EpochBatches, EpochOrder, EpochPlan, no_items
from .picklability import check_picklable
from .worker_pool import (
    WorkerError,
    WorkerPool,
    batch_seed,
    drop_payload,
    make_batch,
    worker_error,
)

__all__ = ["MultiprocessDataLoader", "WorkerError"]


class MultiprocessDataLoader:
    """Like :class:`~pluglearn.data.epochs.ItemLoader`, with `n_workers` processes making
    batches (0: in this process, with the same per-batch seeding, for debugging). The pool
    starts on the first `iter()`, is reused across epochs, and is shut down by `close()` or
    `with`, on any error (or Ctrl-C) inside an iteration, when the loader is garbage
    collected, or at interpreter exit.

    `seed` (default: drawn from torch's global RNG) is the base of the per-batch seeds;
    `state_dict()` saves it with the position, so resuming reproduces random transforms too.
    Workers keep the dataset as it was when the pool started: `close()` after changing it.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        collate_fn: Callable[[list[Any]], Any] = collate,
        n_workers: int = 2,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        start_method: str | None = None,
        prefetch: int | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        skip_empty: bool = False,
    ):
        if not callable(collate_fn):
            raise TypeError(f"collate_fn must be callable, got {type(collate_fn).__name__}")
        for name, value, low in (("n_workers", n_workers, 0), ("prefetch", prefetch, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{name} must be an int >= {low}, got {value!r}")
            if value is not None and value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        prefetch = max(2 * n_workers, 1) if prefetch is None else prefetch
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        methods = multiprocessing.get_all_start_methods()
        if start_method is not None and start_method not in methods:
            raise ValueError(f"start_method must be one of {methods} or None, got {start_method!r}")
        self.dataset, self.collate_fn, self.n_workers = dataset, collate_fn, n_workers
        self.prefetch, self.start_method = prefetch, start_method
        self.batches = EpochBatches(
            EpochOrder(dataset, shuffle, generator),
            batch_size,
            drop_last,
            rank=rank,
            world_size=world_size,
            skip_empty=skip_empty,
        )
        if seed is None:
            seed = int(torch.randint(2**62, ()).item())
        self.base_seed = seed
        self._pool: WorkerPool | None = None
        self._finalizer: weakref.finalize | None = None
        self._run = 0  # id of the live iteration; bumped by iter() and close()

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def global_items(self) -> int:
        """Items of the global batch whose slice this loader handed out last (under
        torch.distributed the same on every rank; the DDP plugin weights the loss by it)."""
        return self.batches.global_items

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the running workers (empty when no pool is running)."""
        return [p.pid for p in self._pool.procs] if self._pool else []

    def _start_pool(self) -> WorkerPool:
        if self._pool is None:
            ctx = multiprocessing.get_context(self.start_method)
            method = ctx.get_start_method()
            if method != "fork":  # fork children inherit these; other methods pickle them
                check_picklable(self.dataset, "dataset", method)
                check_picklable(self.collate_fn, "collate_fn", method)
            elif "numpy" in sys.modules:
                # numpy.random loads lazily and _seeded needs it: load it once, before the
                # fork, rather than in every worker of every pool (6 ms each, 100+ ms when busy)
                import numpy.random  # noqa: F401
            self._pool = WorkerPool(ctx, self.n_workers, self.dataset, self.collate_fn)
            self._finalizer = weakref.finalize(self, self._pool.shutdown)
        return self._pool

    def close(self) -> None:
        """Shut the workers down (idempotent); a later `iter()` starts a new pool."""
        self._run += 1
        if self._finalizer is not None:
            self._finalizer()
        self._pool = self._finalizer = None

    def __enter__(self) -> MultiprocessDataLoader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Any]:
        plan = self.batches.start_epoch()
        if not plan.batches:
            return
        if self.n_workers == 0:
            for j, idxs in enumerate(plan.batches):
                seed = batch_seed(self.base_seed, plan.epoch, plan.first + j)
                batch = make_batch(self.dataset, self.collate_fn, idxs, seed)
                if j == plan.emptied:
                    batch = no_items(batch)
                self.batches.advance(plan, j)
                yield batch
            return
        self._run += 1
        run = self._run
        try:
            yield from self._iter_workers(plan, run)
        except GeneratorExit:  # the consumer stopped early: keep the pool for the next epoch
            raise
        except BaseException:  # errors and Ctrl-C: leave no workers behind
            if run == self._run:
                self.close()
            raise

    def _iter_workers(self, plan: EpochPlan, run: int) -> Iterator[Any]:
        pool = self._start_pool()
        pool.current.value = run
        ready: dict[int, tuple] = {}  # finished batches waiting for their turn
        sent, n = 0, len(plan.batches)
        try:
            for j in range(n):
                while sent < n and sent - j < self.prefetch:  # at most `prefetch` in flight
                    seed = batch_seed(self.base_seed, plan.epoch, plan.first + sent)
                    pool.tasks.put((run, plan.first + sent, plan.batches[sent], seed))
                    sent += 1
                while plan.first + j not in ready:
                    got_run, b, ok, payload = pool.receive(plan.first + j)
                    if got_run == run:
                        ready[b] = ok, payload
                    elif ok:  # left over from an abandoned iteration
                        drop_payload(payload)
                ok, payload = ready.pop(plan.first + j)
                if not ok:
                    raise worker_error(plan.first + j, plan.epoch, *payload)
                batch = pickle.loads(payload)
                if j == plan.emptied:
                    batch = no_items(batch)
                self.batches.advance(plan, j)
                yield batch
                if run != self._run:
                    raise RuntimeError(
                        "this iterator was superseded by a newer iter() or closed by close(): "
                        "only the latest iteration over a MultiprocessDataLoader may continue"
                    )
        except GeneratorExit:
            for ok, payload in ready.values():
                if ok:
                    drop_payload(payload)
            raise

    def state_dict(self) -> dict[str, Any]:
        """:meth:`EpochBatches.state_dict` (settings, and the position in items) plus
        ``"base_seed"``; batches prefetched but not yet yielded do not count as delivered."""
        return {**self.batches.state_dict(), "base_seed": self.base_seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict()``; one saved with another batch_size, drop_last, shuffle or
        dataset length is refused with a ValueError naming the setting."""
        self.batches.load_state_dict(state)
        self.base_seed = int(state["base_seed"])
