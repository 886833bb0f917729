"""The jobs the Learner is timed on and the hand-written loops it is timed against, on any device;
shared by ``compile_overhead.py`` and ``tools/gpu_check.py`` (not a script of its own).

Two models on MNIST-shaped data (the shared MNIST pickle when present, else random data of the
same shape): the notebook's 784-50-10 MLP and a small convnet (two strided 3x3 convolutions,
average pool, linear). Each job is one epoch, train then validate, batch 64 (validation 128).

The hand-written loop is a good one, so that a ratio measures the Learner and nothing else: on
CUDA it gathers each batch straight into pinned memory and copies it ``non_blocking`` (as the
Learner's loader and ``Device`` do), sums the loss on the device and reads it once per pass (as
``AvgLoss`` does), and it may call a compiled module or run under ``torch.autocast``.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import DataLoaders, Learner

SHARED_PICKLE = Path(__file__).resolve().parents[2] / "shared/data/mnist/mnist-t10k-split.pkl.gz"
BATCH_SIZE, LR, N_TRAIN, N_VALID = 64, 0.1, 8000, 1000


def load_data(n_train: int = N_TRAIN, n_valid: int = N_VALID):
    """``(train, valid, source)``: flat 784-pixel images and labels on the CPU."""
    if SHARED_PICKLE.exists() and (n_train, n_valid) == (N_TRAIN, N_VALID):
        from pluglearn.data.mnist import load_mnist

        splits = load_mnist(SHARED_PICKLE)
        return splits.train, splits.valid, "shared MNIST pickle"
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n_train + n_valid, 784, generator=g)
    y = torch.randint(0, 10, (n_train + n_valid,), generator=g)
    train, valid = (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])
    return train, valid, "random data"


def mlp() -> nn.Module:
    """The notebook's MLP."""
    return nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10))


def convnet() -> nn.Module:
    """A small convnet on 28x28 images given flat: 784 -> 8x14x14 -> 16x7x7 -> 10."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


MODELS: dict[str, Callable[[], nn.Module]] = {"MLP": mlp, "convnet": convnet}


def to_device(t: torch.Tensor, idx: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Rows ``idx`` of CPU tensor ``t`` on ``device``: through pinned memory on CUDA."""
    if device.type != "cuda":
        return t if idx is None else t[idx]
    if idx is None:
        return t.pin_memory().to(device, non_blocking=True)
    out = torch.empty((len(idx), *t.shape[1:]), dtype=t.dtype, pin_memory=True)
    return torch.index_select(t, 0, idx, out=out).to(device, non_blocking=True)


def hand_epoch(
    model: nn.Module,
    forward: nn.Module,
    opt: torch.optim.Optimizer,
    data: tuple,
    generator: torch.Generator,
    device: torch.device,
    amp: torch.dtype | None = None,
) -> float:
    """One epoch written by hand; ``forward`` is ``model`` or a compiled form of it. Returns the
    training loss (one read per pass, as AvgLoss does)."""
    (x, y), (xv, yv) = data
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else nullcontext
    model.train()
    perm = torch.randperm(len(x), generator=generator)
    total = torch.zeros((), device=device)
    for i in range(0, len(x), BATCH_SIZE):
        idx = perm[i : i + BATCH_SIZE]
        xb, yb = to_device(x, idx, device), to_device(y, idx, device)
        with autocast():
            loss = F.cross_entropy(forward(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad()
        total += loss.detach() * len(idx)
    model.eval()
    valid_total = torch.zeros((), device=device)
    with torch.no_grad(), autocast():
        for i in range(0, len(xv), 2 * BATCH_SIZE):
            xb = to_device(xv[i : i + 2 * BATCH_SIZE], None, device)
            yb = to_device(yv[i : i + 2 * BATCH_SIZE], None, device)
            valid_total += F.cross_entropy(forward(xb), yb) * len(yb)
    assert valid_total.item() > 0
    return total.item() / len(x)


def hand_runner(
    base: nn.Module, data: tuple, device: torch.device, amp=None, compile_kwargs=None
) -> Callable[[], float]:
    """One epoch of the hand-written loop per call, on a copy of ``base``."""
    model = copy.deepcopy(base).to(device)
    forward = model if compile_kwargs is None else torch.compile(model, **compile_kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(0)
    return lambda: hand_epoch(model, forward, opt, data, generator, device, amp)


def learner(base: nn.Module, data: tuple, device: torch.device, plugins=()) -> Learner:
    """A Learner with the default plugins on a copy of ``base``, the progress bar off unless
    ``plugins`` bring their own."""
    from pluglearn import ProgressBar

    dls = DataLoaders.from_datasets(*data, batch_size=BATCH_SIZE, seed=0)
    learn = Learner(copy.deepcopy(base), dls, lr=LR, plugins=list(plugins), device=device)
    if not any(isinstance(p, ProgressBar) for p in plugins):
        learn.remove_plugin("ProgressBar")
    return learn


def time_rounds(runs: dict[str, Callable[[], object]], rounds: int, device: torch.device):
    """Median seconds of each run over ``rounds``, alternating who goes first, after one warm-up
    (compilation) call each; on CUDA the clock stops after a synchronize."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    for run in runs.values():
        run()
    sync()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        order = list(runs.items())
        order = order[r % len(order) :] + order[: r % len(order)]
        for name, run in order:
            sync()
            start = time.perf_counter()
            run()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
