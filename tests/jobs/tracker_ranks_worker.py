"""One rank of the two-process test of the experiment trackers (importable by spawned processes)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from pluglearn import DDP, Accuracy, DataLoaders, Learner, MLflowLogger, WandbLogger
from tests.helpers import tiny_data


def run(rank: int, store: str, tracking_uri: str, wandb_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    x, y = tiny_data(40, seed=2)
    dls = DataLoaders.from_datasets((x[:32], y[:32]), (x[32:], y[32:]), batch_size=8, seed=1)
    torch.manual_seed(0)
    loggers = [
        MLflowLogger(tracking_uri, experiment="ranks"),
        WandbLogger(dir=wandb_dir, mode="offline"),
    ]
    learn = Learner(nn.Linear(4, 3), dls, lr=0.1, plugins=[DDP(), Accuracy(), *loggers])
    learn.fit(2)  # 4 steps an epoch
    dist.barrier()
    os._exit(0)  # gloo's teardown may abort the process; the runs are in their stores
