"""One rank of the rendezvous test of tests/distributed/test_ranks_rendezvous.py (importable by
spawned processes): rank 0 gives up on a rendezvous before the others come to it; then every
rank meets at the next call of that name, and at a call of another name."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch.distributed as dist

from pluglearn.distributed.ranks import rendezvous


def run(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    met = []
    if rank == 0:  # gives up first, then lets the others come
        met.append(rendezvous("late", timeout=0.3))
        dist.barrier()
    else:  # arrive after rank 0 gave up: it is gone, so they cannot meet it
        dist.barrier()
        met.append(rendezvous("late", timeout=0.5))
    met.append(rendezvous("late", timeout=30))  # the next call of the name: all of them
    met.append(rendezvous("on time", timeout=30))
    Path(out, f"rank{rank}.json").write_text(json.dumps(met))
    dist.barrier()  # neither rank leaves while another still talks to it
    os._exit(0)  # as dist_worker.py: gloo's teardown may abort; the results are on disk
