"""One training job, run under torchrun (several ranks) or alone (the one-process oracle), by the
tests of tests/distributed/ and by ``benchmarks/kill_resume.py --ddp``.

    [torchrun --nproc_per_node 2] python tests/jobs/ddp_job.py OUT [options]

A float64 MLP with SGD (momentum, weight decay) on 41 shuffled training items in global batches of 8
(the last batch has 1 item: on two ranks one of them gets an empty slice), validation on 23 items.
Rank 0 writes ``OUT/result.pt``: the final weights, every epoch's metrics, the stop reason, and each
rank's items of every training batch. ``--ckpt DIR`` checkpoints every batch (rank 0 prints ``batch
N`` once checkpoint N is on disk, for a parent that kills the job); ``--resume`` resumes from DIR.
``--fail-rank R --fail-at N``: rank R raises ValueError at training batch N; ``--nan-rank R --nan-at
N``: rank R's batch N gives a NaN loss (TerminateOnNaN stops every rank); ``--accum K``:
GradientAccumulation(K); ``--loader``: tensor (the default loader), item (a map-style dataset),
multiprocess (MultiprocessLoader with one worker) or sampler (a torch DataLoader with a
DistributedSampler). ``--cancel-rank R --cancel-at N --cancel-in HOOK``: rank R raises
CancelEpochException (``--cancel-batch``: CancelBatchException; ``--cancel-train``:
CancelTrainException) from HOOK (before_batch, compute_loss, predict, backward, step, zero_grad,
after_loss, after_batch; after_train once N batches trained) at training batch N
(``--cancel-valid``: validation batch N of each pass), or CancelFitException from before_fit,
after_fit (N unused) or before_epoch (at epoch N). ``--sigint-rank R --sigint-at N``: rank R sends
itself SIGINT (a Ctrl-C) at the start of training batch N; the job records the KeyboardInterrupt
every rank ended with.
``--fsdp``: FSDP(layers=nn.Linear) instead of DDP(). ``--hold-at N``: rank 0 waits (for the parent's
SIGKILL) once it printed ``batch N``, so that no checkpoint is written after N, however slowly the
kill comes. ``--compile``: Compile(backend="eager"); the result's ``compiled`` names what the model
called in each pass compiles. ``--first-epochs N``: a fit of N epochs, then one of the rest;
``--lr-find``: ``lr_find`` before the (last) fit, on every rank. The result's ``valid`` holds each
rank's validation passes: the items of every forward (FSDP's catch-up forwards too) and of the
batch left after the pass; ``full_keys``: each rank's keys of the full state (FSDP: rank 0's
only). ``--train-metrics``: Accuracy and a
torchmetrics macro F1 (MetricAdapter, name ``f1``) on both passes, beside AvgLoss.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from pluglearn import (
    DDP,
    FSDP,
    Accuracy,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelTrainException,
    Compile,
    DataLoaders,
    GradientAccumulation,
    Learner,
    MetricAdapter,
    MultiprocessLoader,
    TerminateOnNaN,
    hookimpl,
)
from pluglearn import dist as pdist
from pluglearn.checkpoint.plugin import Checkpoint

N_TRAIN, N_VALID, N_FEATURES = 41, 23, 5


def data() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_TRAIN + N_VALID, N_FEATURES, generator=g, dtype=torch.float64)
    y = (x[:, :2].sum(1) > 0).long() + (x[:, 2] > 0.5).long()
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


class Items(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class Probe:
    """Records this rank's items of every training batch; plants a failure or a NaN; prints
    ``batch N`` on rank 0 after checkpoint N (it runs after Checkpoint's after_batch)."""

    def __init__(self, args: argparse.Namespace, x: torch.Tensor) -> None:
        self.args, self.x, self.seen = args, x, []
        # each validation pass: the items of every forward, then the batch after the pass
        self.valid_forwards: list[list[int]] = []
        self.valid_after: list[int | None] = []

    def _here(self, learn: Learner, rank: int | None, at: int | None) -> bool:
        return learn.training and rank == pdist.rank() and learn.train_iter == at

    @hookimpl
    def before_batch(self, learn: Learner) -> None:
        if learn.training:
            self.seen.append((learn.epoch, learn.iter, learn.yb.tolist(), learn.xb[:, 0].tolist()))
        if self._here(learn, self.args.nan_rank, self.args.nan_at):
            learn.batch = (learn.xb * float("nan"), learn.yb)
        if self._here(learn, self.args.fail_rank, self.args.fail_at):
            raise ValueError(f"planted failure on rank {pdist.rank()}")
        if self._here(learn, self.args.sigint_rank, self.args.sigint_at):
            os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C reaching this rank only
        self._cancel(learn, "before_batch")

    def _cancel(self, learn: Learner, hook: str) -> None:
        rank, at = self.args.cancel_rank, self.args.cancel_at
        if self.args.cancel_valid:  # validation batch ``at`` (of each pass) instead
            here = not learn.training and rank == pdist.rank() and learn.iter == at
        else:
            here = self._here(learn, rank, at)
        if hook == self.args.cancel_in and here:
            kind = CancelBatchException if self.args.cancel_batch else CancelEpochException
            kind = CancelTrainException if self.args.cancel_train else kind
            raise kind(f"planted in {hook} on rank {pdist.rank()}")

    def _stop(self, hook: str, when: bool = True) -> None:
        if hook == self.args.cancel_in and pdist.rank() == self.args.cancel_rank and when:
            raise CancelFitException(f"planted in {hook} on rank {pdist.rank()}")

    @hookimpl
    def before_fit(self, learn: Learner) -> None:
        self._stop("before_fit")

    @hookimpl
    def before_epoch(self, learn: Learner) -> None:
        self._stop("before_epoch", learn.epoch == self.args.cancel_at)

    @hookimpl
    def after_fit(self, learn: Learner) -> None:
        self._stop("after_fit")

    @hookimpl
    def before_validate(self) -> None:
        self.valid_forwards.append([])

    @hookimpl
    def predict(self, learn: Learner) -> None:
        if not learn.training and self.valid_forwards:  # FSDP's catch-up forwards too
            self.valid_forwards[-1].append(len(learn.batch[1]))
        self._cancel(learn, "predict")  # else None: the default answers

    @hookimpl
    def after_train(self, learn: Learner) -> None:  # --cancel-at: the batches trained so far
        self._cancel(learn, "after_train")

    @hookimpl
    def after_validate(self, learn: Learner) -> None:  # after FSDP's catch-up (tryfirst)
        self.valid_after.append(None if learn.batch is None else len(learn.batch[1]))

    @hookimpl
    def compute_loss(self, learn: Learner) -> None:
        self._cancel(learn, "compute_loss")

    @hookimpl
    def backward(self, learn: Learner) -> None:
        self._cancel(learn, "backward")  # else None: the default backward

    @hookimpl
    def step(self, learn: Learner) -> None:
        self._cancel(learn, "step")  # else None: the default steps

    @hookimpl
    def zero_grad(self, learn: Learner) -> None:
        self._cancel(learn, "zero_grad")

    @hookimpl
    def after_loss(self, learn: Learner) -> None:
        self._cancel(learn, "after_loss")

    @hookimpl(trylast=True)
    def after_batch(self, learn: Learner) -> None:
        if learn.training and pdist.is_main_process():
            print(f"batch {learn.train_iter}", flush=True)
            if learn.train_iter == self.args.hold_at:
                time.sleep(120)  # the other ranks wait in the next gradient all-reduce
        self._cancel(learn, "after_batch")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ckpt")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--loader", default="tensor")
    for name in ("fail", "nan", "cancel", "sigint"):
        parser.add_argument(f"--{name}-rank", type=int)
        parser.add_argument(f"--{name}-at", type=int)
    parser.add_argument("--cancel-in")
    parser.add_argument("--cancel-batch", action="store_true", help="not CancelEpochException")
    parser.add_argument("--cancel-valid", action="store_true", help="in validation batch N")
    parser.add_argument("--cancel-train", action="store_true", help="CancelTrainException")
    parser.add_argument("--train-metrics", action="store_true", help="metrics of both passes")
    parser.add_argument("--fsdp", action="store_true")
    parser.add_argument("--hold-at", type=int)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--first-epochs", type=int, default=0, help="a fit of these epochs first")
    parser.add_argument("--lr-find", action="store_true", help="lr_find before the (last) fit")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # joins torchrun's process group (alone: a warning, and nothing)
    ddp = FSDP(layers=nn.Linear) if args.fsdp else DDP()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(N_FEATURES, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    xt, yt, xv, yv = data()
    if args.loader == "sampler":
        from torch.utils.data import DataLoader, DistributedSampler

        def loader(ds: Items, shuffle: bool) -> DataLoader:
            sampler = (
                DistributedSampler(ds, shuffle=shuffle, seed=3) if pdist.is_distributed() else None
            )
            per_rank = args.batch_size // pdist.world_size()
            return DataLoader(ds, per_rank, sampler=sampler, shuffle=shuffle and sampler is None)

        dls = DataLoaders(loader(Items(xt, yt), True), loader(Items(xv, yv), False))
    else:
        train, valid = (
            ((xt, yt), (xv, yv)) if args.loader == "tensor" else (Items(xt, yt), Items(xv, yv))
        )
        dls = DataLoaders.from_datasets(train, valid, batch_size=args.batch_size, seed=2)
    probe = Probe(args, xt)
    plugins: list[object] = [ddp, Accuracy(), TerminateOnNaN()]
    if args.train_metrics:
        from torchmetrics.classification import MulticlassF1Score

        f1 = MulticlassF1Score(num_classes=3, average="macro")
        plugins[1] = Accuracy(phases=("train", "valid"))
        plugins.append(MetricAdapter(f1, name="f1", phases=("train", "valid")))
    if args.loader == "multiprocess":
        plugins.append(MultiprocessLoader(n_workers=1))
    if args.accum > 1:
        plugins.append(GradientAccumulation(args.accum))
    if args.ckpt:
        plugins.append(Checkpoint(args.ckpt, every_n_batches=1, keep_last=2))
    history: list[dict] = []
    compiled: set[tuple[bool, str]] = set()

    class CompiledWhat:
        @hookimpl
        def after_pred(self, learn: Learner) -> None:
            inner = getattr(learn.wrapped_model, "_orig_mod", None)
            compiled.add((learn.training, type(inner).__name__))

    if args.compile:
        plugins += [Compile(backend="eager"), CompiledWhat()]

    class Keep:
        @hookimpl
        def report(self, metrics: dict) -> None:
            history.append(dict(metrics))

    plugins += [Keep(), probe]  # last: it announces a batch once its checkpoint is written
    opt_func = partial(torch.optim.SGD, momentum=0.9, weight_decay=1e-2)
    learn = Learner(model, dls, opt_func=opt_func, lr=0.1, plugins=plugins, defaults=False)
    learn.add_plugin(__import__("pluglearn").AvgLoss())
    resume = args.ckpt if args.resume else None
    interrupted = None
    try:
        if args.first_epochs:
            learn.fit(args.first_epochs)
        if args.lr_find:
            learn.lr_find(num_it=6)  # on every rank: its forwards and captures are collectives
        epochs = args.epochs - args.first_epochs
        learn.fit(epochs, resume_from=resume, missing_ok=resume is not None)
    except KeyboardInterrupt as error:  # Checkpoint saved and stopped every rank together
        interrupted = (str(error), learn.epoch, learn.train_iter)
    interrupts = pdist.gather_to_main(interrupted)
    seen = pdist.gather_to_main(probe.seen)
    held = sum(getattr(p, "to_local", lambda p=p: p)().numel() for p in learn.model.parameters())
    held = pdist.gather_to_main(held)  # each rank's parameter elements (FSDP: its shards)
    weights = learn.model.state_dict()
    if args.fsdp and pdist.is_distributed():
        from pluglearn.distributed.fsdp import full_state

        weights = full_state(learn.model)[0]  # the shards gathered (a collective)
    full_keys = pdist.gather_to_main(len(weights))  # FSDP: rank 0's alone (the others: none)
    valid = pdist.gather_to_main((probe.valid_forwards, probe.valid_after))
    if pdist.is_main_process():
        Path(args.out).mkdir(parents=True, exist_ok=True)
        result = {
            "weights": {k: v.clone() for k, v in weights.items()},
            "history": history,
            "stop_reason": learn.stop_reason,
            "seen": seen,
            "world": pdist.world_size(),
            "interrupted": interrupts,
            "held": held,
            "compiled": compiled,
            "full_keys": full_keys,
            "valid": valid,
        }
        torch.save(result, Path(args.out) / "result.pt")
    stops = pdist.all_gather(learn.stop_reason)
    assert len(set(stops)) == 1, f"ranks stopped differently: {stops}"
    pdist.barrier()
    sys.stdout.flush()
    # gloo's teardown sometimes aborts the process; the results are on disk
    os._exit(0)


if __name__ == "__main__":
    main()
