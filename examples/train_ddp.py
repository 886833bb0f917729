"""Train an MLP on several processes with DDP(): one line added to a one-process script.

For: anyone whose training outgrows one process. Run it under torchrun, on CPU (gloo) or GPUs
(NCCL), or alone; ``batch_size`` is the global batch, so every run trains on the same batches
and reaches the same weights (to rounding): scaling out changes only the speed. Rank 0 prints,
checkpoints and writes the weights; it exits non-zero when the accuracy misses the target.

    torchrun --nproc_per_node 2 examples/train_ddp.py
    python examples/train_ddp.py                       # alone: DDP() says so and does nothing
    torchrun --nproc_per_node 2 examples/train_ddp.py --checkpoints runs/ddp   # resumable

With ``--checkpoints``, a Ctrl-C stops every rank after the next checkpoint; rank 0 then says
which file holds the run and the script exits 130; the same command resumes from it.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch
from torch import nn

from pluglearn import DDP, Accuracy, Checkpoint, DataLoaders, Learner, dist

# ----------------------------------------------------------------------------- settings
EPOCHS = 4
BATCH_SIZE = 64  # the global batch: each of W ranks takes 64 / W items of every batch
LR = 0.1
TARGET = 0.78  # validation accuracy the run must reach


def data() -> tuple[torch.Tensor, ...]:
    """A synthetic 3-class problem: the same on every rank (seeded), 2048 + 512 items."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2560, 20, generator=g)
    y = (x[:, :4].sum(1) > 0).long() + (x[:, 4] > 0.8).long()
    return x[:2048], y[:2048], x[2048:], y[2048:]


def interrupted(checkpoint: Checkpoint | None) -> str:
    """The one line a Ctrl-C ends the script with: what was saved and how to go on."""
    if checkpoint is None:
        return "interrupted: nothing was saved (--checkpoints DIR makes a run resumable)"
    command = shlex.join(["python", *sys.argv])  # under torchrun: the same torchrun command
    if checkpoint.latest is None:  # a second Ctrl-C before the first save
        return f"interrupted before the first checkpoint; start again with: {command}"
    return f"interrupted: the newest checkpoint is {checkpoint.latest}; resume with: {command}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs to train")
    parser.add_argument(
        "--batch-size", type=int, default=BATCH_SIZE, help="the global batch, split over the ranks"
    )
    parser.add_argument("--checkpoints", help="directory: checkpoint each epoch, resume if any")
    parser.add_argument(
        "--target", type=float, default=TARGET, help="exit non-zero below this validation accuracy"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    ddp = DDP()  # under torchrun: joins the process group; alone: a warning, nothing else
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))
    xt, yt, xv, yv = data()
    dls = DataLoaders.from_datasets((xt, yt), (xv, yv), batch_size=args.batch_size, seed=1)
    plugins: list[object] = [ddp, Accuracy()]
    checkpoint = Checkpoint(args.checkpoints, keep_last=2) if args.checkpoints else None
    if checkpoint is not None:
        plugins.append(checkpoint)
    learn = Learner(model, dls, lr=LR, plugins=plugins)
    resume = args.checkpoints
    try:
        learn.fit(args.epochs, resume_from=resume, missing_ok=resume is not None)
    except KeyboardInterrupt:  # every rank stopped after the same checkpoint
        if dist.is_main_process():
            print(interrupted(checkpoint), file=sys.stderr, flush=True)
        return 130
    # a finished run resumed trains nothing: measure it (rank-local: each rank reads the whole
    # validation set, so every rank gets the same)
    accuracy = (learn.metrics if "accuracy" in learn.metrics else learn.validate())["accuracy"]
    if dist.is_main_process():
        print(f"{dist.world_size()} process(es): accuracy {accuracy:.4f}", flush=True)
    dist.barrier()
    code = 0 if accuracy >= args.target else 1
    return code


if __name__ == "__main__":
    sys.exit(main())
