"""The two-rank Ctrl-C test of Checkpoint: rank 1 presses Ctrl-C after training batch AT of
epoch 0 (none: no press); each rank writes what its fit ended with to OUT/rank{RANK}.json.

    torchrun --nproc-per-node 2 tests/jobs/checkpoint_ranks_job.py CKPT_DIR OUT [AT]
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests.helpers

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


def main(directory: str, out: str, at: int | None) -> None:
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
    Path(out, f"rank{dist.get_rank()}.json").write_text(json.dumps(record))
    dist.barrier()
    os._exit(0)  # gloo's teardown may abort the process; the results are on disk


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
