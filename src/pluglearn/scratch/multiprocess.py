"""A multiprocessing DataLoader: the notebook's process-pool idea, made sound.

Worker processes take batches of indices from a task queue, fetch `dataset[i]`, call
`collate_fn` and send the collated batch back. The parent keeps at most `prefetch` batches in
flight, yields them in order whatever order they finish in, notices a worker that died instead
of waiting forever, re-raises worker exceptions with the worker's traceback, and shuts the
workers down on `close()`, on errors, on Ctrl-C, on garbage collection and at interpreter exit.

Before fetching batch `b` of epoch `e`, torch, `random` and numpy are seeded from
`(base_seed, e, b)`, so a batch is the same whichever worker (or how many workers) makes it.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import pickle
import queue
import random
import signal
import sys
import time
import traceback
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from functools import partial
from multiprocessing.reduction import ForkingPickler
from types import FunctionType
from typing import Any

import torch

from .data import BatchSampler, EpochPlan, Sampler, collate

__all__ = ["MultiprocessDataLoader", "WorkerError"]

_POLL_S = 0.1  # how often a waiting parent checks that its workers are alive
_WATCHDOG_S = 1.0  # how often an idle worker checks that its parent is alive
_JOIN_S = 5.0  # grace period for workers to exit before they are terminated
_INLINE_MAX = 1 << 20  # bytes: smaller tensors travel inside the pickled batch (_BatchPickler)


class WorkerError(RuntimeError):
    """A worker failed while making a batch; the message carries the worker's traceback and
    `__cause__` the original exception when it could be sent back."""

    def __init__(self, message: str, batch_index: int = -1, remote_traceback: str = ""):
        super().__init__(message)
        self.batch_index, self.remote_traceback = batch_index, remote_traceback


def _batch_seed(base_seed: int, epoch: int, batch: int) -> int:
    # A hash rather than arithmetic, so nearby (epoch, batch) pairs get unrelated seeds.
    digest = hashlib.blake2b(f"{base_seed}/{epoch}/{batch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG, `random` and numpy (if imported) for one batch, then put the
    previous states back, so the in-process path leaves the caller's RNGs untouched."""
    np = sys.modules.get("numpy")
    saved = torch.random.get_rng_state(), random.getstate(), np and np.random.get_state()
    torch.default_generator.manual_seed(seed)  # not torch.manual_seed: that reseeds CUDA too
    random.seed(seed)
    if np:
        np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.random.set_rng_state(saved[0])
        random.setstate(saved[1])
        if np:
            np.random.set_state(saved[2])


def _make_batch(dataset: Any, collate_fn: Callable, idxs: list[int], seed: int) -> Any:
    with _seeded(seed):
        return collate_fn([dataset[i] for i in idxs])


def _tensor_from_bytes(data: bytearray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.frombuffer(data, dtype=torch.uint8).view(dtype).reshape(shape)


class _BatchPickler(ForkingPickler):
    """`ForkingPickler` that copies small CPU tensors into the pickle itself.

    torch's own reduction moves every tensor into a new shared-memory file whose descriptor the
    parent then fetches from the worker: a socket handshake per tensor, answered by a thread of
    the worker only when its main thread (busy with the next batch) lets go of the GIL. For
    tensors up to `_INLINE_MAX` bytes copying is cheaper than that round trip (2 workers on the
    2-core development machine, 120 us items, 64 x 28 x 28 float32 batches: 13.2k items/s
    against 11.4k).
    Larger tensors, subclasses and anything unusual keep torch's shared-memory path. Tensors
    of a batch that share storage arrive as separate copies.
    """

    def reducer_override(self, obj: Any) -> Any:
        np = sys.modules.get("numpy")  # .numpy() gives the bytes without another copy
        if (
            type(obj) is torch.Tensor
            and 0 < obj.nbytes <= _INLINE_MAX
            and np is not None
            and obj.device.type == "cpu"
            and obj.layout == torch.strided
            and not (obj.requires_grad or obj.is_quantized)
        ):
            flat = obj.resolve_conj().resolve_neg().contiguous().view(-1)
            data = bytearray(flat.view(torch.uint8).numpy())
            return _tensor_from_bytes, (data, obj.dtype, tuple(obj.shape))
        return NotImplemented


def _run_task(dataset: Any, collate_fn: Callable, idxs: list[int], seed: int) -> tuple:
    """Make one batch and pickle it here, so a failure (even in pickling) reaches the parent
    instead of dying silently in the queue's feeder thread."""
    try:
        out = io.BytesIO()
        _BatchPickler(out, pickle.HIGHEST_PROTOCOL).dump(
            _make_batch(dataset, collate_fn, idxs, seed)
        )
        return True, out.getvalue()
    except Exception as exc:
        try:
            exc_bytes = pickle.dumps(exc)
        except Exception:  # an exception that cannot travel: its traceback text still does
            exc_bytes = b""
        return False, (traceback.format_exc(), exc_bytes)


def _worker_loop(dataset, collate_fn, tasks, results, current, parent_pid: int) -> None:
    # Ctrl-C reaches the whole process group; the parent handles it and shuts us down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)  # n workers x all cores would oversubscribe the CPU
    while True:
        try:
            task = tasks.get(timeout=_WATCHDOG_S)
        except queue.Empty:
            if os.getppid() != parent_pid:  # the parent died without closing us
                break
            continue
        if task is None:
            break
        run, batch_index, idxs, seed = task
        if run == current.value:  # tasks of an abandoned iteration are skipped
            results.put((run, batch_index, *_run_task(dataset, collate_fn, idxs, seed)))
    results.cancel_join_thread()  # exiting must not wait for the parent to read


def _drop(payload: bytes) -> None:
    """Unpickle and discard a batch nobody will use: that releases the shared memory its
    worker keeps open until the batch is received."""
    with suppress(Exception):
        pickle.loads(payload)


def _worker_error(b: int, epoch: int, remote_tb: str, exc_bytes: bytes) -> WorkerError:
    summary = remote_tb.strip().splitlines()[-1]
    err = WorkerError(
        f"a worker failed on batch {b} of epoch {epoch} with {summary}\n"
        f"Worker traceback:\n{remote_tb}",
        b,
        remote_tb,
    )
    with suppress(Exception):  # the original exception, when it could travel
        err.__cause__ = pickle.loads(exc_bytes)
    return err


class _WorkerPool:
    """Worker processes sharing one task queue and one result queue."""

    def __init__(self, ctx: Any, n_workers: int, dataset: Any, collate_fn: Callable):
        self.tasks, self.results, self.closed = ctx.Queue(), ctx.Queue(), False
        self.current = ctx.Value("q", 0, lock=False)  # id of the iteration being served
        args = (dataset, collate_fn, self.tasks, self.results, self.current, os.getpid())
        self.procs = [
            ctx.Process(target=_worker_loop, args=args, name=f"pluglearn-worker-{i}", daemon=True)
            for i in range(n_workers)
        ]
        try:
            for p in self.procs:
                p.start()
        except BaseException:
            self.shutdown()
            raise

    def receive(self, waiting_for: int) -> tuple:
        while True:
            with suppress(queue.Empty):
                return self.results.get(timeout=_POLL_S)
            for p in self.procs:
                if not p.is_alive():  # a crash (segfault, OOM kill, os._exit): never wait forever
                    raise WorkerError(
                        f"worker process {p.pid} exited unexpectedly (exit code {p.exitcode}) "
                        f"while batch {waiting_for} was awaited",
                        waiting_for,
                    )

    def shutdown(self) -> None:
        if self.closed:
            return
        self.closed, self.current.value = True, -1  # -1: skip whatever is still queued
        for _ in self.procs:
            with suppress(Exception):
                self.tasks.put(None)
        deadline = time.monotonic() + _JOIN_S
        started = [p for p in self.procs if p.pid is not None]
        for p in started:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in started:
            if p.is_alive():  # stuck in __getitem__: stop it, then insist
                p.terminate()
                p.join(1.0)
            if p.is_alive():
                p.kill()
                p.join()
            p.close()
        for q in (self.tasks, self.results):
            q.cancel_join_thread()
            q.close()


class _ProbePickler(pickle.Pickler):
    """Pickles into the void to test picklability cheaply: tensors (always picklable) are
    skipped, and classes or functions from an interactive `__main__` are refused, since a
    spawned child cannot import them even though pickling them succeeds."""

    def persistent_id(self, obj: Any) -> str | None:
        if isinstance(obj, torch.Tensor):
            return "tensor"
        if isinstance(obj, (type, FunctionType)) and _in_interactive_main(obj):
            raise pickle.PicklingError(f"{obj.__qualname__} lives in an interactive __main__")
        return None


class _Void:
    def write(self, data: bytes) -> int:
        return len(data)


def _in_interactive_main(obj: Any) -> bool:
    return obj.__module__ == "__main__" and not hasattr(sys.modules["__main__"], "__file__")


def _pickle_error(obj: Any) -> Exception | None:
    try:  # protocol 5 with a dropping buffer_callback keeps numpy arrays from being copied
        _ProbePickler(_Void(), protocol=5, buffer_callback=lambda buf: None).dump(obj)
    except Exception as exc:
        return exc
    return None


def _parts(obj: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        yield from ((f"{path}[{k!r}]", v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        yield from ((f"{path}[{i}]", v) for i, v in enumerate(obj))
    elif isinstance(obj, partial):
        yield from ((f"{path}.func", obj.func), (f"{path}.args", obj.args))
        yield f"{path}.keywords", obj.keywords
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, FunctionType)):
        yield from ((f"{path}.{k}", v) for k, v in vars(obj).items())


def _check_picklable(obj: Any, path: str, method: str) -> None:
    """Raise a TypeError naming the innermost unpicklable part of `obj` and the fix."""
    err = _pickle_error(obj)
    if err is None:
        return
    for _ in range(8):  # walk down to the innermost part that fails on its own
        bad = next(((p, v) for p, v in _parts(obj, path) if _pickle_error(v)), None)
        if bad is None:
            break
        path, obj = bad
    fix = _pickle_fix(path, obj, method, err)
    raise TypeError(f"{fix} (or pass start_method='fork' where the platform has it)") from err


def _pickle_fix(path: str, obj: Any, method: str, err: Exception) -> str:
    kind = obj if isinstance(obj, (type, FunctionType)) else type(obj)
    if getattr(obj, "__name__", "") == "<lambda>":
        return (
            f"{path} is a lambda, which {method} cannot pickle: define it at module level with def"
        )
    if "<locals>" in kind.__qualname__:
        return (
            f"{path} is defined inside a function ({kind.__qualname__}), which {method} cannot "
            "pickle: define it at module level"
        )
    if _in_interactive_main(kind):
        return (
            f"{path} is defined in an interactive __main__ (notebook or REPL), which {method} "
            "workers cannot import: move it into a .py module and import it"
        )
    return (
        f"{path} ({type(obj).__name__}) cannot be pickled for {method} workers ({err}): "
        "create it lazily inside the worker, e.g. on first use in __getitem__"
    )


class MultiprocessDataLoader:
    """Like `DataLoader`, with `n_workers` processes making batches (0: in this process, with
    the same per-batch seeding, for debugging). The pool starts on the first `iter()`, is
    reused across epochs, and is shut down by `close()` or `with`, on any error (or Ctrl-C)
    inside an iteration, when the loader is garbage collected, or at interpreter exit.

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
        self.batch_sampler = BatchSampler(
            Sampler(dataset, shuffle, generator), batch_size, drop_last
        )
        if seed is None:
            seed = int(torch.randint(2**62, ()).item())
        self.base_seed = seed
        self._pool: _WorkerPool | None = None
        self._finalizer: weakref.finalize | None = None
        self._run = 0  # id of the live iteration; bumped by iter() and close()

    def __len__(self) -> int:
        return len(self.batch_sampler)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the running workers (empty when no pool is running)."""
        return [p.pid for p in self._pool.procs] if self._pool else []

    def _start_pool(self) -> _WorkerPool:
        if self._pool is None:
            ctx = multiprocessing.get_context(self.start_method)
            method = ctx.get_start_method()
            if method != "fork":  # fork children inherit these; other methods pickle them
                _check_picklable(self.dataset, "dataset", method)
                _check_picklable(self.collate_fn, "collate_fn", method)
            elif "numpy" in sys.modules:
                # numpy.random loads lazily and _seeded needs it: load it once, before the
                # fork, rather than in every worker of every pool (6 ms each, 100+ ms when busy)
                import numpy.random  # noqa: F401
            self._pool = _WorkerPool(ctx, self.n_workers, self.dataset, self.collate_fn)
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
        plan = self.batch_sampler.start_epoch()
        if not plan.batches:
            return
        if self.n_workers == 0:
            for j, idxs in enumerate(plan.batches):
                seed = _batch_seed(self.base_seed, plan.epoch, plan.first + j)
                batch = _make_batch(self.dataset, self.collate_fn, idxs, seed)
                self.batch_sampler.advance(plan, j)
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
                    seed = _batch_seed(self.base_seed, plan.epoch, plan.first + sent)
                    pool.tasks.put((run, plan.first + sent, plan.batches[sent], seed))
                    sent += 1
                while plan.first + j not in ready:
                    got_run, b, ok, payload = pool.receive(plan.first + j)
                    if got_run == run:
                        ready[b] = ok, payload
                    elif ok:  # left over from an abandoned iteration
                        _drop(payload)
                ok, payload = ready.pop(plan.first + j)
                if not ok:
                    raise _worker_error(plan.first + j, plan.epoch, *payload)
                batch = pickle.loads(payload)
                self.batch_sampler.advance(plan, j)
                yield batch
                if run != self._run:
                    raise RuntimeError(
                        "this iterator was superseded by a newer iter() or closed by close(): "
                        "only the latest iteration over a MultiprocessDataLoader may continue"
                    )
        except GeneratorExit:
            for ok, payload in ready.values():
                if ok:
                    _drop(payload)
            raise

    def state_dict(self) -> dict[str, Any]:
        """`DataLoader.state_dict()` plus `"base_seed"`; batches prefetched but not yet
        yielded do not count as delivered."""
        return {**self.batch_sampler.state_dict(), "base_seed": self.base_seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.batch_sampler.load_state_dict(state)
        self.base_seed = int(state["base_seed"])
