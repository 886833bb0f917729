"""One rank of the two-process Ctrl-C test of Checkpoint (importable by spawned processes)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from pluglearn import DDP, DataLoaders, Learner, hookimpl
from pluglearn.checkpoint.plugin import Checkpoint
from tests.helpers import tiny_data


class PressOnRank1:
    """Rank 1 presses Ctrl-C after its training batch ``at`` of epoch 0 (rank 0 never does)."""

    def __init__(self, at: int) -> None:
        self.at = at

    @hookimpl
    def after_batch(self, learn):
        if dist.get_rank() == 1 and learn.training and (learn.epoch, learn.iter) == (0, self.at):
            signal.raise_signal(signal.SIGINT)


def run(rank: int, store: str, directory: str, out: str, at: int | None) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    x, y = tiny_data(32, seed=2)
    dls = DataLoaders.from_datasets((x, y), None, batch_size=8, seed=1)  # 4 steps an epoch
    torch.manual_seed(0)
    ckpt = Checkpoint(directory, every_n_batches=2)
    plugins = [DDP(), ckpt] + ([PressOnRank1(at)] if at is not None else [])
    learn = Learner(nn.Linear(4, 3), dls, lr=0.1, plugins=plugins)
    try:
        learn.fit(2)
        result = "finished"
    except KeyboardInterrupt as error:
        result = str(error)
    latest = str(ckpt.latest) if ckpt.latest is not None else None
    record = {"result": result, "train_iter": learn.train_iter, "latest": latest}
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    os._exit(0)  # gloo's teardown may abort the process; the results are on disk
