"""A fit with pluglearn's default plugins under DDP, counting the small all-reduces (cancel
agreements, metric sums) that go through ``torch.distributed.all_reduce``; DDP's gradient
all-reduces run inside its reducer and are not counted. Run by
tests/distributed/test_cancel_agreement.py.

    [torchrun --nproc_per_node 2] python tests/jobs/agreement_job.py OUT --plugin P

``P``: ``none`` (the defaults alone: none of them may cancel), ``watcher`` (a plugin whose
``after_epoch`` may cancel, and does not in this run), ``added-watcher`` (a plugin that adds
a watcher at the start of epoch 1), ``liar`` (a plugin that declares
``may_cancel = False`` and raises ``CancelFitException`` on rank 1 after batch 3), ``hidden``
(a plugin that raises it there through a function of another module, where pluglearn cannot
see it).
``--accum 2``: GradientAccumulation(2) too; ``--loss-cancel``: the loss function raises
CancelFitException on the last rank (alone: the one process) at training batch 2 (a batch that
does not step under accumulation). Rank 0 writes ``OUT/result.pt``: the final weights, the
count, the gradient all-reduces DDP's reducer ran (counted by a communication hook), the stop
reason.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import cancel_elsewhere  # beside this script (its directory is on sys.path)
import torch.nn.functional as F

from pluglearn import (
    DDP,
    CancelFitException,
    DataLoaders,
    GradientAccumulation,
    Learner,
    hookimpl,
)
from pluglearn import dist as pdist

EPOCHS = 2


class Watcher:
    @hookimpl
    def after_epoch(self, learn: Learner) -> None:
        if learn.metrics["valid_loss"] > 1e9:  # never here
            raise CancelFitException("diverged")


class CountGradReduces:
    """Counts the gradient buckets DDP's reducer all-reduces (a communication hook that counts,
    then all-reduces as DDP's default does), registered before the first backward."""

    def __init__(self) -> None:
        self.count = 0
        self.hooked = False

    @hookimpl
    def before_train(self, learn: Learner) -> None:
        if not self.hooked and learn.wrapped_model is not None:
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            def counted(state, bucket):  # no annotations: DDP checks them
                self.count += 1
                return default_hooks.allreduce_hook(state, bucket)

            learn.wrapped_model.register_comm_hook(None, counted)
            self.hooked = True


class AddsWatcher:
    @hookimpl
    def before_epoch(self, learn: Learner) -> None:
        if learn.epoch == 1:
            learn.add_plugin(Watcher())


class Hidden:
    @hookimpl
    def after_batch(self, learn: Learner) -> None:
        if learn.training and learn.train_iter == 3 and pdist.rank() == 1:
            cancel_elsewhere.stop("raised where pluglearn cannot see it")


class Liar:
    may_cancel = False

    @hookimpl
    def after_batch(self, learn: Learner) -> None:
        if learn.training and learn.train_iter == 3 and pdist.rank() == 1:
            raise CancelFitException("said it never cancels")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    plugins = ("none", "watcher", "added-watcher", "liar", "hidden")
    parser.add_argument("--plugin", choices=plugins, default="none")
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--loss-cancel", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ddp = DDP()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    dls = DataLoaders.from_datasets((x[:40], y[:40]), (x[40:], y[40:]), batch_size=8, seed=1)
    extra = {
        "none": [],
        "watcher": [Watcher()],
        "added-watcher": [AddsWatcher()],
        "liar": [Liar()],
        "hidden": [Hidden()],
    }[args.plugin]
    if args.accum > 1:
        extra.append(GradientAccumulation(args.accum))

    def loss_func(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        last = pdist.rank() == pdist.world_size() - 1  # rank 1 of 2, or the one process
        if args.loss_cancel and learn.training and learn.train_iter == 2 and last:
            raise CancelFitException("from the loss")
        return F.cross_entropy(preds, targets)

    grad_reduces = CountGradReduces()
    learn = Learner(model, dls, loss_func=loss_func, lr=0.1, plugins=[ddp, *extra, grad_reduces])
    count = 0
    all_reduce = torch.distributed.all_reduce

    def counted(*a: object, **k: object) -> object:
        nonlocal count
        count += not k.get("async_op")  # the gradient buckets' (async) are counted apart
        return all_reduce(*a, **k)

    torch.distributed.all_reduce = counted
    learn.fit(EPOCHS)
    torch.distributed.all_reduce = all_reduce
    if pdist.is_main_process():
        Path(args.out).mkdir(parents=True, exist_ok=True)
        result = {
            "weights": {k: v.clone() for k, v in learn.model.state_dict().items()},
            "count": count,
            "grad_reduces": grad_reduces.count,
            "stop_reason": learn.stop_reason,
        }
        torch.save(result, Path(args.out) / "result.pt")
    pdist.barrier()
    sys.stdout.flush()
    os._exit(0)  # gloo's teardown sometimes aborts the process; the results are on disk


if __name__ == "__main__":
    main()
