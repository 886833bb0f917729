"""The few facts about torch.distributed that pluglearn needs, on one process or many.

Metrics reduce their sums and counts across processes before they are reported, reporters print
and write files on the main process only, loaders give each rank its share of every batch, and
checkpoints gather every rank's state to rank 0: all of it asks this module, so the same plugins
work on one process or many. On one process every function here is the identity or a constant.

**Rank-local mode** (:func:`local`): inside it this process is a group of one: ``rank()`` is 0,
``world_size()`` 1, ``is_distributed()`` False, so every collective here is skipped, loaders made
in it are not sharded, and metrics are this rank's own. The Learner enters it for the calls made
outside a fit's own passes (``validate``, ``get_preds``, ``predict``: after a fit, or from a
hook, on one rank or on all), which therefore need no other rank. ``is_main_process()`` keeps
answering for the real rank, so reporters still print on rank 0 only.

>>> rank(), world_size(), shard_bounds(10, 1, 4)
(0, 1, (3, 6))
>>> with local():  # alone: nothing changes; on rank 1 of 2 it gives (0, 1) too
...     rank(), world_size()
(0, 1)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

_LOCAL = [0]  # depth of nested rank-local calls


def is_initialized() -> bool:
    """True when a torch.distributed process group is initialised (in rank-local mode too)."""
    return dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """True when a torch.distributed process group is initialised, outside rank-local mode."""
    return not _LOCAL[0] and is_initialized()


def is_main_process() -> bool:
    """True on rank 0 (also in rank-local mode), or when not distributed: reporters print and
    write files only here."""
    return not is_initialized() or dist.get_rank() == 0


@contextmanager
def local() -> Iterator[None]:
    """Rank-local mode (see the module doc); nests."""
    _LOCAL[0] += 1
    try:
        yield
    finally:
        _LOCAL[0] -= 1


def is_local() -> bool:
    """True inside :func:`local` on a process of a group of several."""
    return bool(_LOCAL[0]) and is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the default group (0 when not distributed or rank-local)."""
    return dist.get_rank() if is_distributed() else 0


def group_rank() -> int:
    """This process's rank in the default group, also in rank-local mode (for messages)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """The number of processes of the default group (1 when not distributed or rank-local)."""
    return dist.get_world_size() if is_distributed() else 1


def launched_world_size() -> int:
    """``WORLD_SIZE`` set by ``torchrun`` (1 when the process was not started by a launcher)."""
    told = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(told)
    except ValueError:
        raise ValueError(
            f"WORLD_SIZE={told!r} in the environment is not a number of processes: torchrun "
            "sets it (`torchrun --nproc_per_node N script.py`); unset it to train on one process."
        ) from None


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """The slice ``[start, stop)`` of ``n`` items that ``rank`` of ``world`` takes: contiguous,
    sizes differing by at most one, the larger ones first (``torch.tensor_split``'s split). A
    global batch of B items thus gives each of W ranks B/W items when W divides B."""
    q, r = divmod(n, world)
    start = rank * q + min(rank, r)
    return start, start + q + (1 if rank < r else 0)


def device() -> str:
    """Where this rank's collectives keep their tensors: its GPU under NCCL (``"cuda"``, the
    current device, which :func:`init_from_env` sets to the local rank's), else the CPU."""
    return "cuda" if is_initialized() and dist.get_backend() == "nccl" else "cpu"


def reduce_sum(*values: float) -> list[float]:
    """Sum each value over every process (no-op on one process)."""
    if not is_distributed():
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=device())
    dist.all_reduce(total)  # torch's default operation: the sum
    return total.tolist()


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` as a list on rank 0 (None on the others); ``[obj]`` on one process.
    A collective: every rank must call it at the same point."""
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out)  # to rank 0 (torch's default)
    return out


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, on every rank (``[obj]`` on one process). A collective."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` on one process). A collective."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box)  # from rank 0 (torch's default)
    return box[0]


def barrier() -> None:
    """Wait until every rank is here (nothing on one process)."""
    if is_distributed():
        dist.barrier()


_rendezvous_calls: dict[str, int] = {}  # this process's rendezvous of each name so far


def rendezvous(name: str, timeout: float) -> bool:
    """Wait until every rank has reached its next rendezvous called ``name`` (through the
    process group's store, not a collective, so a rank waiting here disturbs no collective of
    the others). False when they do not all arrive within ``timeout`` seconds; True at once when
    alone. Each call of a name has a key of its own (the process's count of them), so a later
    call never meets an earlier one's arrivals; a rank that gives up takes its arrival back."""
    if not is_initialized() or dist.get_world_size() < 2:
        return True
    world = dist.get_world_size()
    count = _rendezvous_calls[name] = _rendezvous_calls.get(name, 0) + 1
    store = dist.distributed_c10d._get_default_store()
    key = f"pluglearn/{name}/{count}"
    done = f"{key}/all"
    if store.add(key, 1) == world:
        store.set(done, "1")
    try:
        store.wait([done], timedelta(seconds=timeout))
    except (RuntimeError, dist.DistError):  # the store's timeout
        # the last rank may have come just now: it saw every arrival, so this one meets too
        return store.add(key, -1) == world - 1
    return True


def unsharded(loader: Any) -> Any:
    """``loader`` as rank-local mode reads it: a torch ``DataLoader`` with a
    ``DistributedSampler`` becomes one over the whole dataset in order (same batch size,
    collate and workers); any other loader is returned as it is."""
    from torch.utils.data import DataLoader, DistributedSampler

    if not isinstance(loader, DataLoader) or not isinstance(loader.sampler, DistributedSampler):
        return loader
    return DataLoader(  # no sampler of its own: the dataset in order
        loader.dataset,
        batch_size=loader.batch_size,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
    )


def init_from_env() -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``MASTER_ADDR``,
    ``RANK``, ``WORLD_SIZE``, ...): NCCL with the local rank's GPU when CUDA is available, gloo
    on CPU. Returns True when this call created the group, False when one already existed or the
    process was not launched with several ranks.

    After an elastic restart (``torchrun --max-restarts``) the ranks meet in the store of the
    earlier tries, which still holds each dead rank's address: a rank reading one fails to
    connect ("Gloo connectFullMesh failed ... Connection refused") and the restart is wasted.
    So each try meets under a prefix of its own (``TORCHELASTIC_RESTART_COUNT``)."""
    if is_initialized() or launched_world_size() < 2 or not dist.is_available():
        return False
    how = group_settings(torch.cuda.is_available() and dist.is_nccl_available(), os.environ)
    if how["device_id"] is not None:
        torch.cuda.set_device(how["device_id"])
    dist.init_process_group(**how, **_restart_store())
    return True


def group_settings(nccl: bool, env: Mapping[str, str]) -> dict[str, Any]:
    """``init_process_group``'s backend and device for this process, from what the machine has
    (``nccl``: CUDA and NCCL both available) and torchrun's environment ``env``: NCCL on the GPU
    numbered ``LOCAL_RANK`` (0 when unset), else gloo on the CPU (no device).

    >>> group_settings(True, {"LOCAL_RANK": "1"})
    {'backend': 'nccl', 'device_id': device(type='cuda', index=1)}
    >>> group_settings(False, {"LOCAL_RANK": "1"})
    {'backend': 'gloo', 'device_id': None}
    """
    if nccl:
        gpu = torch.device("cuda", int(env.get("LOCAL_RANK", "0")))
        return {"backend": "nccl", "device_id": gpu}
    return {"backend": "gloo", "device_id": None}


def _restart_store() -> dict[str, Any]:
    """``init_process_group``'s store, rank and world size for a try of an elastic job (the
    agent's store under a prefix of this try); empty, for torch's own ``env://``, otherwise."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return {}
    # a client of the agent's store (its master is the agent's), which waits as long as
    # torch's own process group would for the other ranks: 30 minutes
    where = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    store = dist.TCPStore(*where, timeout=timedelta(minutes=30))
    prefixed = dist.PrefixStore(f"pluglearn/try{restart}/", store)
    return {"store": prefixed, "rank": int(os.environ["RANK"]), "world_size": launched_world_size()}
