"""The worker side of the multiprocessing loader: seeding, making a batch, the process pool.

Each worker takes ``(epoch, batch, indices, seed)`` tasks, seeds torch, ``random`` and numpy
from ``(base_seed, epoch, batch)``, fetches ``dataset[i]``, calls ``collate_fn`` and sends the
pickled batch back (small tensors inside the pickle, large ones through shared memory). Workers
ignore Ctrl-C (the parent handles it).

A worker never outlives its parent by more than about a second, even in the middle of a slow
batch: on Linux the kernel sends it SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``,
set first thing in the worker); everywhere it checks ``os.getppid()`` between items and, when
idle, every ``_WATCHDOG_S`` seconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import io
import os
import pickle
import queue
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from multiprocessing.reduction import ForkingPickler
from typing import Any

import torch

from ..run.rng import random_states_kept

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


def batch_seed(base_seed: int, epoch: int, batch: int) -> int:
    # A hash rather than arithmetic, so nearby (epoch, batch) pairs get unrelated seeds.
    digest = hashlib.blake2b(f"{base_seed}/{epoch}/{batch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG, `random` and numpy (if imported) for one batch, then put the
    previous states back, so the in-process path leaves the caller's RNGs untouched."""
    np = sys.modules.get("numpy")
    with random_states_kept():
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed: that reseeds CUDA
        random.seed(seed)
        if np:
            np.random.seed(seed % 2**32)
        yield


class ParentDied(Exception):
    """Raised inside a worker whose parent process is gone; the worker then exits."""


# set in each worker: the process whose death ends it
_parent: dict[str, int | None] = {"pid": None}


def _check_parent() -> None:
    if _parent["pid"] is not None and os.getppid() != _parent["pid"]:
        raise ParentDied


def _die_with_parent(parent_pid: int | None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux), and remember the
    parent for the checks between items. ``parent_pid`` is the pid the parent had when it
    started us (None when a forkserver, not the loader's process, is our parent)."""
    PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
    if sys.platform.startswith("linux"):
        with suppress(Exception):  # no libc by that name: the getppid checks remain
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _parent["pid"] = os.getppid()
    if parent_pid is not None and _parent["pid"] != parent_pid:
        os._exit(0)  # the parent died before prctl took effect: we were reparented already


def make_batch(dataset: Any, collate_fn: Callable, idxs: list[int], seed: int) -> Any:
    """``collate_fn([dataset[i] for i in idxs])`` under the batch's seed; inside a worker, each
    item first checks that the parent still lives."""
    with _seeded(seed):
        items = []
        for i in idxs:
            _check_parent()  # a no-op in the parent process (the in-process path)
            items.append(dataset[i])
        return collate_fn(items)


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
            make_batch(dataset, collate_fn, idxs, seed)
        )
        return True, out.getvalue()
    except ParentDied:
        raise
    except Exception as exc:
        try:
            exc_bytes = pickle.dumps(exc)
        except Exception:  # an exception that cannot travel: its traceback text still does
            exc_bytes = b""
        return False, (traceback.format_exc(), exc_bytes)


def _worker_loop(dataset, collate_fn, tasks, results, current, parent_pid: int | None) -> None:
    _die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group; the parent handles it and shuts us down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)  # n workers x all cores would oversubscribe the CPU
    try:
        while True:
            try:
                task = tasks.get(timeout=_WATCHDOG_S)
            except queue.Empty:
                _check_parent()  # the parent died without closing us
                continue
            if task is None:
                break
            run, batch_index, idxs, seed = task
            _check_parent()
            if run == current.value:  # tasks of an abandoned iteration are skipped
                results.put((run, batch_index, *_run_task(dataset, collate_fn, idxs, seed)))
    except ParentDied:
        pass
    results.cancel_join_thread()  # exiting must not wait for the parent to read


def drop_payload(payload: bytes) -> None:
    """Unpickle and discard a batch nobody will use: that releases the shared memory its
    worker keeps open until the batch is received."""
    with suppress(Exception):
        pickle.loads(payload)


def worker_error(b: int, epoch: int, remote_tb: str, exc_bytes: bytes) -> WorkerError:
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


class WorkerPool:
    """Worker processes sharing one task queue and one result queue."""

    def __init__(self, ctx: Any, n_workers: int, dataset: Any, collate_fn: Callable):
        self.tasks, self.results, self.closed = ctx.Queue(), ctx.Queue(), False
        self.current = ctx.Value("q", 0, lock=False)  # id of the iteration being served
        # a forkserver, not this process, is the parent of forkserver workers (and it exits
        # when this process dies, so their parent-death signal still fires)
        parent = None if ctx.get_start_method() == "forkserver" else os.getpid()
        args = (dataset, collate_fn, self.tasks, self.results, self.current, parent)
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
