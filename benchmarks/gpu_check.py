"""Checks that need a CUDA GPU: device placement, CUDA random state in checkpoints, resume on GPU.

Run on a machine with a GPU (it exits at once without one):

    python benchmarks/gpu_check.py

1. ``Device()`` puts the model, every batch and the predictions on CUDA, and training matches the
   same run on the CPU to float32 tolerance.
2. A checkpoint taken on CUDA holds the CUDA random state; a fit killed mid-epoch and resumed
   from it ends with weights equal to the uninterrupted CUDA run (reported exactly: bitwise, or
   the largest difference when a GPU kernel is not deterministic), dropout included.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from pluglearn import Checkpoint, DataLoaders, Device, Learner, hookimpl
from pluglearn.checkpoint import checkpoints_in, load_checkpoint


def make(device: str, directory: Path | None = None, dropout: float = 0.3) -> Learner:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(600, 20, generator=g)
    y = (x[:, :3].sum(1) > 0).long()
    dls = DataLoaders.from_datasets((x[:512], y[:512]), (x[512:], y[512:]), 32, seed=2)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, 2))
    plugins: list[object] = [Device(device)]
    if directory is not None:
        plugins.append(Checkpoint(directory, every_n_batches=1))
    return Learner(model, dls, lr=0.05, plugins=plugins, defaults=False)


class Where:
    """Records the devices of the batch and the predictions."""

    def __init__(self) -> None:
        self.devices: set[str] = set()

    @hookimpl
    def after_pred(self, learn: Learner) -> None:
        self.devices |= {learn.xb.device.type, learn.yb.device.type, learn.preds.device.type}


class DieAt:
    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def after_batch(self, learn: Learner) -> None:
        if learn.training and learn.train_iter == self.step:
            raise RuntimeError("simulated kill")


def largest_difference(a: nn.Module, b: nn.Module) -> float:
    return max(
        (p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to check")
        return 0
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    ok = True
    where = Where()
    gpu = make("cuda", dropout=0.0)  # dropout draws from different generators on CPU and CUDA
    gpu.fit(2, plugins=[where])
    cpu = make("cpu", dropout=0.0)
    cpu.fit(2)
    on_cuda = all(p.device.type == "cuda" for p in gpu.model.parameters())
    diff = max(
        (p.cpu() - q).abs().max().item()
        for p, q in zip(gpu.model.parameters(), cpu.model.parameters(), strict=True)
    )
    print(
        f"1. parameters on cuda: {on_cuda}; batch/preds devices: {sorted(where.devices)}; "
        f"largest |cuda - cpu| weight difference after 2 epochs: {diff:.2e}"
    )
    ok &= on_cuda and where.devices == {"cuda"} and diff < 1e-4

    with tempfile.TemporaryDirectory() as tmp:
        reference = make("cuda", Path(tmp) / "ref")
        reference.fit(3)
        with contextlib.suppress(RuntimeError):  # the simulated kill
            make("cuda", Path(tmp) / "run").fit(3, plugins=[DieAt(23)])
        newest = load_checkpoint(checkpoints_in(Path(tmp) / "run")[-1])
        has_cuda_rng = "cuda" in newest["rng"]
        resumed = make("cuda", Path(tmp) / "run")
        resumed.fit(3, resume_from=Path(tmp) / "run")
        bitwise = all(
            torch.equal(p, q)
            for p, q in zip(reference.model.parameters(), resumed.model.parameters(), strict=True)
        )
        print(
            f"2. checkpoint holds the CUDA random state: {has_cuda_rng}; resumed at step "
            f"{newest['loop']['train_iter']}: weights bit-identical to the uninterrupted run: "
            f"{bitwise} (largest difference "
            f"{largest_difference(reference.model, resumed.model):.2e})"
        )
        ok &= has_cuda_rng and bitwise
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
