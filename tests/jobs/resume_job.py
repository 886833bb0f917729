"""A small deterministic training job that checkpoints every batch; run as a child process by
the kill-and-resume tests and by benchmarks/kill_resume.py.

    python tests/jobs/resume_job.py DIR [--resume] [--out WEIGHTS] [--epochs N] [--sleep S]
                               [--seed N] [--no-loader-seed] [--recipes] [--record FILE]

It prints ``batch N`` after each training batch's checkpoint is written (N counts optimizer
steps), so a parent can kill it at a chosen batch; at the end ``startup S`` (seconds from the
``fit`` call to the first batch: with ``--resume``, the resume's cost) and ``batch_time S``
(the median training batch, checkpoint excluded). ``--out`` saves the final parameters.
``--seed`` is the ``torch.manual_seed`` of the job (another seed: another run); with
``--no-loader-seed`` the training loader draws its seed from torch's global generator.
``--recipes`` trains with the four training recipes together: ``fit_one_cycle`` (a
``Scheduler`` of ``OneCycleLR``), ``GradientAccumulation(2)``, ``GradientClipping(0.5)`` and
``MixedPrecision(torch.bfloat16)``. ``--record`` saves the Recorder's per-batch lrs, momentums
and losses (the whole run's, a resumed one's included: they are in the checkpoints).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from pluglearn import (
    Accuracy,
    DataLoaders,
    GradientAccumulation,
    GradientClipping,
    Learner,
    MixedPrecision,
    Recorder,
    hookimpl,
)
from pluglearn.checkpoint.plugin import Checkpoint

N_TRAIN, N_VALID, BATCH_SIZE = 640, 128, 32  # 20 training batches an epoch


class Announce:
    """Prints each finished training batch (after the checkpoint of that batch is on disk)."""

    def __init__(self, sleep: float) -> None:
        self.sleep = sleep

    @hookimpl(trylast=True)
    def after_batch(self, learn: Learner) -> None:
        if learn.training:
            print(f"batch {learn.train_iter}", flush=True)
            time.sleep(self.sleep)


class Timing:
    """When the first batch of this process started, and how long each training batch took."""

    def __init__(self) -> None:
        self.first_batch: float | None = None
        self.batch_times: list[float] = []
        self._start = 0.0

    @hookimpl(tryfirst=True)
    def before_batch(self, learn: Learner) -> None:
        self._start = time.perf_counter()
        if self.first_batch is None:
            self.first_batch = self._start

    @hookimpl(tryfirst=True)  # before the checkpoint is written: the batch's own compute
    def after_batch(self, learn: Learner) -> None:
        if learn.training:
            self.batch_times.append(time.perf_counter() - self._start)


RECIPES_LR_MAX = 0.2


def recipes() -> list[object]:
    """The recipes of ``--recipes`` but the Scheduler, which ``fit_one_cycle`` adds."""
    return [GradientAccumulation(2), GradientClipping(0.5), MixedPrecision(torch.bfloat16)]


def make_learner(
    directory: str,
    sleep: float = 0.0,
    seed: int = 0,
    loader_seed: int | None = 2,
    with_recipes: bool = False,
) -> Learner:
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_TRAIN + N_VALID, 20, generator=g)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()
    dls = DataLoaders.from_datasets(
        (x[:N_TRAIN], y[:N_TRAIN]),
        (x[N_TRAIN:], y[N_TRAIN:]),
        batch_size=BATCH_SIZE,
        seed=loader_seed,
    )
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 3))

    def opt_func(params, lr):
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)

    plugins = [Accuracy(), Recorder(), Checkpoint(directory, every_n_batches=1, keep_last=2)]
    if with_recipes:
        plugins = [*recipes(), *plugins]
    return Learner(model, dls, opt_func=opt_func, lr=0.05, plugins=[*plugins, Announce(sleep)])


def run_and_signal(
    directory: str | Path,
    at_batch: int,
    sig: int,
    sleep: float = 0.03,
    args: tuple[str, ...] = (),
    warm: bool = False,
) -> tuple[int, str]:
    """Run this job as a child process and send it ``sig`` once it has finished training batch
    ``at_batch``; returns its exit code and what it wrote to stderr. ``warm``: forked by
    tests/warm_start.py (the tests) rather than a new interpreter (the benchmarks)."""
    import os
    import subprocess

    from tests import processes

    child = processes.popen(
        [sys.executable, __file__, str(directory), "--sleep", str(sleep), *args],
        warm=warm,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    for line in child.stdout:
        if line.strip() == f"batch {at_batch}":
            os.kill(child.pid, sig)
            break
    _, stderr = child.communicate(timeout=60)
    return child.returncode, stderr


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--out")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-loader-seed", action="store_true")
    parser.add_argument("--recipes", action="store_true")
    parser.add_argument("--record")
    args = parser.parse_args()
    loader_seed = None if args.no_loader_seed else 2
    learn = make_learner(args.directory, args.sleep, args.seed, loader_seed, args.recipes)
    # the first optimizer of a process imports torch._dynamo (seconds): keep that out of the
    # measured start-up, which should show the resume's own cost
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    timing = Timing()
    learn.add_plugin(timing)
    has_checkpoint = any(Path(args.directory).glob("*.pt"))
    start = time.perf_counter()
    resume_from = args.directory if args.resume and has_checkpoint else None
    if args.recipes:
        learn.fit_one_cycle(args.epochs, RECIPES_LR_MAX, resume_from=resume_from)
    else:
        learn.fit(args.epochs, resume_from=resume_from)
    if timing.first_batch is not None:  # fit() call to the first batch: the resume's cost
        print(f"startup {timing.first_batch - start:.6f}", flush=True)
    if timing.batch_times:
        median = sorted(timing.batch_times)[len(timing.batch_times) // 2]
        print(f"batch_time {median:.6f}", flush=True)
    if args.out:
        torch.save({k: v.clone() for k, v in learn.model.state_dict().items()}, args.out)
    if args.record:
        rec = learn.plugin("Recorder")
        record = {"lrs": rec.lrs, "moms": rec.moms, "losses": rec.losses, "steps": rec.steps}
        torch.save({**record, "opt_steps": learn.opt_steps}, args.record)


if __name__ == "__main__":
    main()
