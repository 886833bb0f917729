"""Checks that need a CUDA GPU: the default device, CUDA random state in checkpoints, resume on
GPU, the Learner's speed against a hand-written loop, and host-device syncs per batch.

Run on a machine with a GPU (without one it says that it needs CUDA and measures nothing; it
runs end to end in well under 5 minutes on one GPU and prints one table at the end):

    python tools/gpu_check.py [--rounds 7] [--compile]
    python tools/gpu_check.py --smoke      # the code paths on the CPU, tiny, no figures

1. A Learner without ``device=`` trains on CUDA: the model, every batch (copied from pinned
   memory) and the predictions are there, and training matches the same run on the CPU to
   float32 tolerance.
2. A checkpoint taken on CUDA holds the CUDA random state; a fit killed mid-epoch and resumed
   from it ends with weights equal to the uninterrupted CUDA run (reported exactly: bitwise, or
   the largest difference when a GPU kernel is not deterministic), dropout included.
3. Speed: one epoch (8000 + 1000 MNIST-shaped items, batch 64) of the notebook's MLP and of a
   small convnet, ``Learner.fit(1)`` (default plugins, bar off) against a good hand-written loop
   (pinned, non_blocking copies, the loss summed on the GPU), in float32 and with
   ``MixedPrecision()`` (bfloat16 autocast; the hand loop autocasts too); ``--compile`` adds
   ``Compile()`` against the hand loop on the same compiled model. Medians of ``--rounds``.
4. Host-device syncs per training batch with the default plugins, counted with
   ``torch.cuda.set_sync_debug_mode("warn")`` (one warning per sync) over the second epoch: the
   goal is none, and with a progress bar on a terminal one per bar refresh (it reads the loss
   only when it shows it). ``MixedPrecision(torch.float16)`` is counted too: its GradScaler
   reads the found-inf flag at every step (torch's design).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from pluglearn import (
    Checkpoint,
    Compile,
    DataLoaders,
    Learner,
    MixedPrecision,
    ProgressBar,
    hookimpl,
)
from pluglearn.checkpoint.files import checkpoints_in, load_checkpoint

# The timed jobs and the hand-written loops are benchmarks/training_loops.py, which
# benchmarks/compile_overhead.py times on the CPU too (this script is in tools/: it needs a GPU).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from training_loops import MODELS, hand_runner, learner, load_data, time_rounds


def make(device: str | None, directory: Path | None = None, dropout: float = 0.3) -> Learner:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(600, 20, generator=g)
    y = (x[:, :3].sum(1) > 0).long()
    dls = DataLoaders.from_datasets((x[:512], y[:512]), (x[512:], y[512:]), 32, seed=2)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, 2))
    plugins: list[object] = []
    if directory is not None:
        plugins.append(Checkpoint(directory, every_n_batches=1))
    return Learner(model, dls, lr=0.05, plugins=plugins, defaults=False, device=device)


class Where:
    """Records the devices of the batch and the predictions, and whether the loader's batches
    came in pinned memory (it sees them before Device moves them)."""

    def __init__(self) -> None:
        self.devices: set[str] = set()
        self.pinned: set[bool] = set()

    @hookimpl(tryfirst=True)  # listed before the default Device: the batch as the loader gave it
    def before_batch(self, learn: Learner) -> None:
        self.pinned |= {learn.xb.is_pinned(), learn.yb.is_pinned()}

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


class SyncCount:
    """Host-device syncs (sync-debug warnings recorded in ``log``) per training batch of epoch
    ``epoch``, from one batch's end to the next's (the loader's next batch included), and per
    validation pass."""

    def __init__(self, log: list, epoch: int = 1) -> None:
        self.log, self.epoch = log, epoch
        self.train: list[int] = []
        self.valid: list[int] = []
        self._mark = 0

    def _syncs(self) -> int:
        return sum(1 for w in self.log if "synchroniz" in str(w.message))

    @hookimpl(tryfirst=True)
    def before_train(self, learn: Learner) -> None:
        self._mark = self._syncs()

    @hookimpl(trylast=True)
    def cleanup_batch(self, learn: Learner) -> None:
        now = self._syncs()
        if learn.training and learn.epoch == self.epoch:
            self.train.append(now - self._mark)
        self._mark = now

    @hookimpl(tryfirst=True)
    def before_validate(self, learn: Learner) -> None:
        self._mark = self._syncs()

    @hookimpl(trylast=True)
    def cleanup_validate(self, learn: Learner) -> None:
        if learn.epoch == self.epoch:
            self.valid.append(self._syncs() - self._mark)


class TerminalSink(io.StringIO):
    """A terminal as far as tqdm can tell, so the bar draws (and reads the loss) as for a user."""

    def isatty(self) -> bool:
        return True


def count_syncs(data: tuple, device: torch.device, plugins: list[object]) -> tuple[str, str]:
    """(train syncs per batch: mean and max, validation syncs per pass) in the second epoch. On
    the CPU (--smoke) the counter runs with nothing to count."""
    cuda = device.type == "cuda"
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        counter = SyncCount(log)
        learn = learner(MODELS["MLP"](), data, device, [counter, *plugins])
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            learn.fit(2)
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
    train = counter.train
    mean = f"{sum(train) / len(train):.2f} (max {max(train)})"
    return (mean, str(counter.valid)) if cuda else (f"n/a (CPU; {len(train)} counted)", "n/a")


def speed_table(args: argparse.Namespace, device: torch.device, data: tuple) -> list[str]:
    rows = []
    configs: list[tuple[str, list[object], dict]] = [
        ("float32", [], {}),
        ("bf16 autocast", [MixedPrecision()], {"amp": torch.bfloat16}),
    ]
    if args.compile:
        configs.append(("Compile()", [Compile()], {"compile_kwargs": {}}))
    for name, make_model in MODELS.items():
        for label, plugins, hand_kwargs in configs:
            torch.manual_seed(0)
            base = make_model()
            torch._dynamo.reset()
            learn = learner(base, data, device, plugins)
            runs = {
                "hand": hand_runner(base, data, device, **hand_kwargs),
                "Learner": lambda learn=learn: learn.fit(1),
            }
            t = time_rounds(runs, args.rounds, device)
            rows.append(
                f"  {name:<8} {label:<14} Learner {t['Learner'] * 1e3:8.1f} ms   hand "
                f"{t['hand'] * 1e3:8.1f} ms   Learner / hand {t['Learner'] / t['hand']:6.3f}"
            )
    return rows


def sync_table(device: torch.device, data: tuple) -> list[str]:
    rows, cuda = [], device.type == "cuda"
    for label, plugins in (
        ("default plugins, bar off", []),
        ("default plugins, bar on a terminal", [ProgressBar(TerminalSink(), mininterval=0.1)]),
        ("MixedPrecision() (bf16)", [MixedPrecision()]),
        ("MixedPrecision(float16)", [MixedPrecision(torch.float16)] if cuda else []),
    ):
        train, valid = count_syncs(data, device, plugins)
        rows.append(f"  {label:<36} per training batch {train:<16} per validation pass {valid}")
    return rows


def gpu_checks() -> bool:
    """Checks 1 and 2 (see the module doc); True when both pass."""
    ok = True
    where = Where()
    gpu = make(None, dropout=0.0)  # no device=: the default must find the GPU
    gpu.fit(2, plugins=[where])
    cpu = make("cpu", dropout=0.0)  # dropout draws from different generators on CPU and CUDA
    cpu.fit(2)
    on_cuda = all(p.device.type == "cuda" for p in gpu.model.parameters())
    diff = max(
        (p.cpu() - q).abs().max().item()
        for p, q in zip(gpu.model.parameters(), cpu.model.parameters(), strict=True)
    )
    print(
        f"1. learn.device {gpu.device}; parameters on cuda: {on_cuda}; batch/preds devices: "
        f"{sorted(where.devices)}; loader batches pinned: {sorted(where.pinned)}; largest "
        f"|cuda - cpu| weight difference after 2 epochs: {diff:.2e}"
    )
    ok &= on_cuda and where.devices == {"cuda"} and where.pinned == {True} and diff < 1e-4

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
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description="checks and timings that need a CUDA GPU")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--compile", action="store_true", help="add Compile() rows (slower)")
    parser.add_argument("--smoke", action="store_true", help="the code paths on the CPU, tiny")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print(
            "gpu_check.py needs a CUDA GPU (torch.cuda.is_available() is False here): nothing was "
            "measured. Run it on a machine with one; --smoke runs its code paths on the CPU."
        )
        return 0
    smoke = args.smoke and not torch.cuda.is_available()
    device = torch.device("cpu" if smoke else "cuda")
    ok = True
    if smoke:
        args.rounds = 1
        print("--smoke: CPU, 512 + 128 items, 1 round: code paths only, no figures to report")
        train, valid, source = load_data(512, 128)
    else:
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
        ok = gpu_checks()
        train, valid, source = load_data()
    data = (train, valid)
    table = [f"3. one epoch, {source}, {device}, median of {args.rounds} rounds:"]
    table += speed_table(args, device, data)
    table.append("4. host-device syncs, MLP, second epoch (sync-debug warnings):")
    table += sync_table(device, data)
    print("\n".join(table))
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
