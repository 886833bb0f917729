"""One rank of the two-process torch.distributed test (importable by spawned processes)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from pluglearn import Accuracy, DataLoaders, Learner, ProgressBar


def shard(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank 0 gets 6 items, rank 1 gets 3: unequal shards, so a mean of means would be wrong."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(9, 4, generator=g), torch.randint(0, 3, (9,), generator=g)
    return (x[:6], y[:6]) if rank == 0 else (x[6:], y[6:])


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 3)


def run(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    x, y = shard(rank)
    bar = io.StringIO()
    dls = DataLoaders([(x, y)], [(x[i : i + 2], y[i : i + 2]) for i in range(0, len(x), 2)])
    learn = Learner(model(), dls, lr=0.0, plugins=[Accuracy(), ProgressBar(file=bar)])
    learn.fit(1)
    metrics = learn.metrics  # the fit's validation pass: reduced across the ranks (a
    # learn.validate() after the fit is rank-local: this rank's shard only)
    Path(out, f"rank{rank}.json").write_text(json.dumps({**metrics, "printed": bar.getvalue()}))
    dist.barrier()  # neither rank leaves while the other still talks to it
    # gloo's teardown (destroy_process_group, or its threads at interpreter exit) sometimes
    # aborts the process ("terminate called without an active exception"): the results are on
    # disk, so leave without running C++ destructors
    os._exit(0)
