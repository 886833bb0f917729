"""The two-rank run of the experiment trackers' test: both ranks log to MLflow and W&B (offline);
only rank 0's loggers may write.

    torchrun --nproc-per-node 2 tests/jobs/tracker_ranks_job.py TRACKING_URI WANDB_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests.helpers

import torch
from torch import nn

from pluglearn import DDP, Accuracy, DataLoaders, Learner, MLflowLogger, WandbLogger
from pluglearn import dist as pdist
from tests.helpers import tiny_data


def main(tracking_uri: str, wandb_dir: str) -> None:
    x, y = tiny_data(40, seed=2)
    dls = DataLoaders.from_datasets((x[:32], y[:32]), (x[32:], y[32:]), batch_size=8, seed=1)
    torch.manual_seed(0)
    loggers = [
        MLflowLogger(tracking_uri, experiment="ranks"),
        WandbLogger(dir=wandb_dir, mode="offline"),
    ]
    learn = Learner(nn.Linear(4, 3), dls, lr=0.1, plugins=[DDP(), Accuracy(), *loggers])
    learn.fit(2)  # 4 steps an epoch
    pdist.barrier()
    sys.stdout.flush()
    os._exit(0)  # gloo's teardown may abort the process; the runs are in their stores


if __name__ == "__main__":
    main(*sys.argv[1:])
