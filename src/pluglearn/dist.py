"""The few facts about torch.distributed that metrics and reporters need.

Metrics reduce their sums and counts across processes before they are reported, and reporters
print on the main process only, so that the same plugins work on one process or many.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a torch.distributed process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """True on rank 0, or when not distributed: reporters print only here."""
    return not is_distributed() or dist.get_rank() == 0


def reduce_sum(*values: float) -> list[float]:
    """Sum each value over every process (no-op on one process)."""
    if not is_distributed():
        return list(values)
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.tolist()
