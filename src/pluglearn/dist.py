"""The few facts about torch.distributed that pluglearn needs, on one process or many.

Metrics reduce their sums and counts across processes before they are reported, reporters print
and write files on the main process only, loaders give each rank its share of every batch, and
checkpoints gather every rank's state to rank 0: all of it asks this module, so the same plugins
work on one process or many. On one process every function here is the identity or a constant.

>>> rank(), world_size(), shard_bounds(10, 1, 4)
(0, 1, (3, 6))
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a torch.distributed process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """True on rank 0, or when not distributed: reporters print and write files only here."""
    return not is_distributed() or dist.get_rank() == 0


def rank() -> int:
    """This process's rank in the default group (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes of the default group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def launched_world_size() -> int:
    """``WORLD_SIZE`` set by ``torchrun`` (1 when the process was not started by a launcher)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """The slice ``[start, stop)`` of ``n`` items that ``rank`` of ``world`` takes: contiguous,
    sizes differing by at most one, the larger ones first (``torch.tensor_split``'s split). A
    global batch of B items thus gives each of W ranks B/W items when W divides B."""
    q, r = divmod(n, world)
    start = rank * q + min(rank, r)
    return start, start + q + (1 if rank < r else 0)


def device() -> torch.device | str:
    """Where this rank's collectives keep their tensors: its GPU under NCCL, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return "cpu"


def reduce_sum(*values: float) -> list[float]:
    """Sum each value over every process (no-op on one process)."""
    if not is_distributed():
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=device())
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.tolist()


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` as a list on rank 0 (None on the others); ``[obj]`` on one process.
    A collective: every rank must call it at the same point."""
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
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
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank is here (nothing on one process)."""
    if is_distributed():
        dist.barrier()


def init_from_env() -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``MASTER_ADDR``,
    ``RANK``, ``WORLD_SIZE``, ...): NCCL with the local rank's GPU when CUDA is available, gloo
    on CPU. Returns True when this call created the group, False when one already existed or the
    process was not launched with several ranks."""
    if is_distributed() or launched_world_size() < 2 or not dist.is_available():
        return False
    if torch.cuda.is_available() and dist.is_nccl_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    else:
        dist.init_process_group("gloo")
    return True
