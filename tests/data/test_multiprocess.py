"""pluglearn.data.multiprocess: same batches as the in-process loader, seeded per batch,
bounded prefetch, worker errors surfaced, and no worker process ever left behind."""

from __future__ import annotations

import gc
import io
import multiprocessing
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from pluglearn.data.epochs import ItemLoader
from pluglearn.data.multiprocess import MultiprocessDataLoader
from pluglearn.data.worker_pool import WorkerError
from pluglearn.scratch import Dataset
from tests import processes
from tests.helpers import wait_dead
from tests.support import worker_datasets as D

pytestmark = pytest.mark.timeout(60)  # a hang fails the test instead of blocking the run

FORK = "fork"
needs_fork = pytest.mark.skipif(
    FORK not in multiprocessing.get_all_start_methods(), reason="needs the fork start method"
)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_workers_left():
    yield
    assert multiprocessing.active_children() == []


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _loader(ds, bs=3, **kw) -> MultiprocessDataLoader:
    kw = {"shuffle": True, "seed": 5, "generator": _gen(), "start_method": FORK, **kw}
    return MultiprocessDataLoader(ds, bs, **kw)


def _epoch(loader) -> list:
    return [(xb.tolist(), yb.tolist()) for xb, yb in loader]


# --- same batches as in process, whatever the workers -------------------------------------


@pytest.mark.parametrize("start_method", [pytest.param(FORK, marks=needs_fork), "spawn"])
@pytest.mark.slow
def test_batches_equal_the_in_process_path(start_method):
    # Noisy items: equal only if every batch is seeded the same in the workers.
    ref = _loader(D.Noisy(11), n_workers=0)
    expected = [_epoch(ref) for _ in range(2)]
    n_workers = 1 if start_method == "spawn" else 2  # each spawn worker imports torch anew
    with _loader(D.Noisy(11), n_workers=n_workers, start_method=start_method) as loader:
        assert [_epoch(loader) for _ in range(2)] == expected
    plain = ItemLoader(
        Dataset(torch.arange(11), torch.arange(11)), 3, shuffle=True, generator=_gen()
    )
    assert [[yb for _, yb in epoch] for epoch in expected] == [
        [xb.tolist() for xb, _ in plain] for _ in range(2)
    ]  # and in the order the single-process DataLoader visits


@needs_fork
def test_batch_is_independent_of_worker_count_and_keeps_caller_rngs():
    torch_state, random_state = torch.random.get_rng_state(), random.getstate()
    runs = []
    for n_workers in (0, 1, 2):
        with _loader(D.Noisy(8), n_workers=n_workers) as loader:
            runs.append([_epoch(loader) for _ in range(2)])
    assert runs[0] == runs[1] == runs[2]
    assert runs[0][0] != runs[0][1]  # each epoch draws fresh noise ...
    with _loader(D.Noisy(8), n_workers=0, seed=6) as other:
        assert [x for x, _ in _epoch(other)] != [x for x, _ in runs[0][0]]  # ... each seed too
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert random.getstate() == random_state


# --- the worker pool ----------------------------------------------------------------------


@needs_fork
def test_collate_runs_in_the_workers():
    with _loader(D.Items(6), collate_fn=D.collate_with_pid) as loader:
        pids = {pid for _, pid in loader}
        assert pids <= set(loader.worker_pids) and os.getpid() not in pids


@needs_fork
def test_order_is_kept_when_batches_finish_out_of_order():
    ds = D.Stamped(8, slow=range(0, 2), delay=0.15)  # batch 0 (items 0, 1) is slow
    with _loader(ds, bs=2, shuffle=False, n_workers=2) as loader:
        batches = list(loader)
    assert [yb.tolist() for _, yb in batches] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert batches[1][0].max() < batches[0][0].max()  # batch 1 was made before batch 0


@needs_fork
def test_prefetch_bounds_the_batches_in_flight():
    counter = multiprocessing.get_context(FORK).Value("i", 0)
    with _loader(D.Counted(20, counter), bs=2, shuffle=False, prefetch=3) as loader:
        it = iter(loader)
        for k in range(1, 4):
            next(it)
            expected = 2 * (k - 1 + 3)  # batches 0..k-2+3 sent: k-1 consumed + 3 in flight
            deadline = time.monotonic() + 5
            while counter.value < expected and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.1)  # time enough to overshoot, if anything would
            assert counter.value == expected


@needs_fork
def test_pool_is_reused_across_epochs_and_closed():
    loader = _loader(D.Items(7))
    assert loader.worker_pids == []  # started lazily
    _epoch(loader)
    pids = loader.worker_pids
    assert len(pids) == 2
    for _ in range(2):
        _epoch(loader)
        assert loader.worker_pids == pids
    loader.close()
    assert loader.worker_pids == [] and wait_dead(pids)
    loader.close()  # idempotent
    with loader:  # usable again: a new pool, closed by the with block
        assert len(_epoch(loader)) == 3
        pids = loader.worker_pids
    assert wait_dead(pids)


@needs_fork
def test_stopping_early_keeps_the_pool_and_the_next_epoch_is_whole():
    ref = _loader(D.Items(9), n_workers=0)
    expected = [_epoch(ref) for _ in range(2)]
    with _loader(D.Items(9)) as loader:
        batch = next(iter(loader))  # and the iterator is dropped
        assert (batch[0].tolist(), batch[1].tolist()) == expected[0][0]
        pids = loader.worker_pids
        assert _epoch(loader) == expected[1]  # the abandoned epoch counts as an epoch
        assert loader.worker_pids == pids


@needs_fork
def test_superseded_iterator_is_refused():
    with _loader(D.Items(9)) as loader:
        old = iter(loader)
        next(old)
        new = iter(loader)
        next(new)
        with pytest.raises(RuntimeError, match="superseded"):
            next(old)
        assert len(list(new)) == 2  # the newer iteration is unharmed


# --- failures and shutdown ----------------------------------------------------------------


@needs_fork
def test_worker_exception_is_reraised_with_its_traceback():
    loader = _loader(D.Failing(12, bad=7), shuffle=False)
    with pytest.raises(WorkerError, match="batch 2") as info:
        _epoch(loader)
    assert "_explode" in str(info.value) and "item 7 is corrupt" in str(info.value)
    assert info.value.batch_index == 2
    assert isinstance(info.value.__cause__, ValueError)
    assert loader.worker_pids == [] and multiprocessing.active_children() == []  # closed


def _generator_collate(items: list) -> object:
    return (item for item in items)  # a generator cannot be pickled back to the parent


@needs_fork
def test_an_unpicklable_batch_raises_instead_of_hanging():
    # Queue.put would fail silently in its feeder thread, and the parent would wait forever.
    loader = _loader(D.Items(6), collate_fn=_generator_collate)
    with pytest.raises(WorkerError, match="batch 0 of epoch 0 with TypeError: cannot pickle"):
        next(iter(loader))
    assert loader.worker_pids == []


@needs_fork
def test_a_dead_worker_raises_instead_of_hanging():
    loader = _loader(D.Dying(12, bad=4), shuffle=False)
    with pytest.raises(WorkerError, match=r"exited unexpectedly \(exit code 3\)"):
        _epoch(loader)
    assert loader.worker_pids == []


@needs_fork
def test_keyboard_interrupt_closes_the_pool():
    loader = _loader(D.Items(9))
    it = iter(loader)
    next(it)
    pids = loader.worker_pids
    with pytest.raises(KeyboardInterrupt):
        it.throw(KeyboardInterrupt)
    assert loader.worker_pids == [] and wait_dead(pids)
    # A real SIGINT, while the parent waits for batch 1: with prefetch=1 that batch is only
    # requested inside next(), which cannot return before the batch (sent after the signal).
    # (Background jobs start with SIGINT ignored: install Python's handler for the test.)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        ctrl_c = _loader(D.CtrlC(4, at=1), bs=1, shuffle=False, n_workers=1, prefetch=1)
        it = iter(ctrl_c)
        next(it)
        pids = ctrl_c.worker_pids
        with pytest.raises(KeyboardInterrupt):
            next(it)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert ctrl_c.worker_pids == [] and wait_dead(pids)


@needs_fork
def test_garbage_collection_closes_the_pool():
    loader = _loader(D.Items(6))
    _epoch(loader)
    pids = loader.worker_pids
    del loader
    gc.collect()
    assert wait_dead(pids)


@needs_fork
@pytest.mark.slow
def test_interpreter_exit_leaves_no_workers():
    # The loader is never closed: weakref.finalize shuts it down at interpreter exit.
    code = """if True:
        from tests.support import worker_datasets as D
        from pluglearn.data.multiprocess import MultiprocessDataLoader
        loader = MultiprocessDataLoader(D.Items(9), 2, start_method="fork")
        it = iter(loader)
        next(it)
        print(*loader.worker_pids)
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    out = processes.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=50
    )
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2, out.stderr
    assert wait_dead(pids)


def _start_loader_then_die(conn) -> None:
    loader = MultiprocessDataLoader(D.Items(9), 2, start_method=FORK)
    next(iter(loader))
    conn.send(loader.worker_pids)
    os.kill(os.getpid(), signal.SIGKILL)  # nothing of the parent's cleanup can run


@needs_fork
def test_workers_of_a_killed_parent_exit_on_their_own():
    ctx = multiprocessing.get_context(FORK)
    receiver, sender = ctx.Pipe(duplex=False)
    parent = ctx.Process(target=_start_loader_then_die, args=(sender,))
    parent.start()
    pids = receiver.recv()
    parent.join()
    assert parent.exitcode == -signal.SIGKILL and len(pids) == 2
    assert wait_dead(pids)  # their watchdog noticed the orphaning


def test_unpicklable_arguments_are_named_before_any_worker_starts(monkeypatch):
    def local_collate(items):
        return items

    class LocalDataset(D.Items):
        pass

    transformed = D.Items(4)
    transformed.transform = lambda x: x
    items = D.Items(4)
    cases = [
        (items, lambda batch: batch, "collate_fn is a lambda, which spawn cannot pickle"),
        (items, local_collate, "collate_fn is defined inside a function"),
        (LocalDataset(4), None, "dataset is defined inside a function"),
        (transformed, None, "dataset.transform is a lambda.*define it at module level with def"),
        (Dataset([threading.Lock()], [0]), None, r"dataset.x\[0\] \(lock\) cannot be pickled"),
    ]
    for ds, collate_fn, match in cases:
        kw = {"collate_fn": collate_fn} if collate_fn else {}
        loader = _loader(ds, start_method="spawn", **kw)
        with pytest.raises(TypeError, match=match):
            next(iter(loader))
        assert loader.worker_pids == [] and multiprocessing.active_children() == []
    # A class from a notebook's __main__ pickles fine, yet spawn children cannot import it.
    main = sys.modules["__main__"]
    monkeypatch.delattr(main, "__file__", raising=False)
    notebook_class = type("NotebookData", (D.Items,), {"__module__": "__main__"})
    monkeypatch.setattr(main, "NotebookData", notebook_class, raising=False)
    with pytest.raises(TypeError, match="interactive __main__"):
        next(iter(_loader(notebook_class(4), start_method="spawn")))


@needs_fork
def test_fork_needs_no_pickling_of_dataset_or_collate_fn():
    ds = Dataset([threading.Lock()] * 4, list(range(4)))  # a lock: unpicklable
    with _loader(ds, collate_fn=lambda items: [y for _, y in items], shuffle=False) as loader:
        assert list(loader) == [[0, 1, 2], [3]]


# --- resumable state ----------------------------------------------------------------------


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("n_workers", [0, pytest.param(2, marks=needs_fork)])
def test_resume_mid_epoch_ignores_prefetched_batches(n_workers):
    ref = _loader(D.Noisy(10), n_workers=0)
    expected = [_epoch(ref) for _ in range(2)]
    cuts = range(len(expected[0]) + 1) if n_workers == 0 else (1, 3)
    for k in cuts:
        with _loader(D.Noisy(10), n_workers=n_workers) as first:
            it = iter(first)
            got = [next(it) for _ in range(k)]  # workers have prefetched beyond k
            state = _roundtrip(first.state_dict())
        at_end = k == len(expected[0])  # then the state points at the next epoch
        assert state["base_seed"] == 5 and state["cursor"] == (0 if at_end else 3 * k)
        with _loader(D.Noisy(10), n_workers=n_workers, seed=None, generator=None) as resumed:
            resumed.load_state_dict(state)
            rest = [] if at_end else _epoch(resumed)
            assert [(x.tolist(), y.tolist()) for x, y in got] + rest == expected[0]
            assert _epoch(resumed) == expected[1]


def test_length_and_argument_checks():
    assert len(_loader(D.Items(10), bs=4)) == 3
    assert len(_loader(D.Items(10), bs=4, drop_last=True)) == 2
    for kw, match in [
        (dict(n_workers=-1), "n_workers must be an int >= 0"),
        (dict(prefetch=0), "prefetch must be an int >= 1"),
        (dict(start_method="thread"), "start_method must be one of"),
        (dict(seed="5"), "seed must be an int"),
        (dict(bs=0), "batch_size must be a positive int"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            _loader(D.Items(4), **kw)
