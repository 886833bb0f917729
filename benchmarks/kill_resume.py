"""Soak test of exact resume: kill a training job at random batches, resume it, compare weights.

Each run starts ``tests/jobs/resume_job.py`` (3 epochs of 20 batches, a checkpoint after every
batch, dropout, momentum, shuffling), SIGKILLs it right after a random training batch, resumes it
in a new process and compares every parameter with an uninterrupted run, bit for bit. It also
reports the time from ``fit(resume_from=...)`` to the first batch against the time of one batch,
grouped by where the cut was: it should not grow with the cut (no replay of the batches before it).

By default the job seeds only ``torch.manual_seed`` (its loader draws its seed from torch's
global generator), and every run starts in a directory that already holds the checkpoints of an
older, different run (another model seed, killed late), which must neither delete the new run's
checkpoints nor be resumed in its place. ``--loader-seed`` gives the loader a seed of its own;
``--fresh-dir`` starts every run in an empty directory.

``--ddp``: the same soak on two processes under ``torchrun`` (gloo, CPU): the job of
``tests/jobs/ddp_job.py`` (3 epochs of 6 global batches of 8, the last one ragged, a
checkpoint after every batch) is SIGKILLed with its launcher and every worker right after a
random training batch, resumed by a new ``torchrun``, and compared bit for bit with an
uninterrupted 2-process run.

    python benchmarks/kill_resume.py [--runs 50] [--seed 0] [--loader-seed] [--fresh-dir]
    python benchmarks/kill_resume.py --ddp [--runs 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "tests" / "jobs" / "resume_job.py"
sys.path.insert(0, str(ROOT))
from tests.jobs.resume_job import run_and_signal  # noqa: E402  (the job and how to kill it)

TOTAL_BATCHES = 60


def run(args: list[str]) -> str:
    """Run the job to its end; returns what it printed."""
    result = subprocess.run([sys.executable, str(JOB), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"job failed: {result.stderr[-2000:]}")
    return result.stdout


def value(output: str, key: str) -> float:
    return float(next(line.split()[1] for line in output.splitlines() if line.startswith(key)))


def main_ddp(runs: int, seed: int) -> None:
    """Kill the whole torchrun group at random batches, resume, compare with one whole run."""
    from tests.jobs.launch import run_job, start_and_kill

    total = 18  # 3 epochs of 6 global batches
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        reference = run_job(tmp_path / "ref", timeout=300)["weights"]
        identical = 0
        for i in range(runs):
            cut = rng.randrange(1, total)
            ckpt = tmp_path / f"ckpt{i}"
            start_and_kill(tmp_path / f"killed{i}", ckpt, at_batch=cut)
            out = run_job(tmp_path / f"out{i}", "--ckpt", str(ckpt), "--resume", timeout=300)
            same = all(torch.equal(out["weights"][k], v) for k, v in reference.items())
            identical += same
            print(
                f"run {i + 1:>3}: 2 ranks killed after batch {cut:>2} of {total}, resumed "
                f"{'bit-identical' if same else 'DIFFERENT'}",
                flush=True,
            )
    print(
        f"\n{identical}/{runs} resumed 2-process runs ended bit-identical to the uninterrupted "
        "2-process run"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="the seed of the random cuts")
    parser.add_argument("--loader-seed", action="store_true", help="seed the loader itself")
    parser.add_argument("--fresh-dir", action="store_true", help="no older run in the directory")
    parser.add_argument(
        "--ddp", action="store_true", help="two processes under torchrun (ddp_job.py)"
    )
    args = parser.parse_args()
    if args.ddp:
        main_ddp(args.runs, args.seed)
        return
    job_args = () if args.loader_seed else ("--no-loader-seed",)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        run([str(tmp_path / "ref"), "--out", str(tmp_path / "ref.pt"), *job_args])
        older = tmp_path / "older"  # another run (model seed 1), killed late: steps 44 and 45
        if not args.fresh_dir:
            run_and_signal(older, 45, signal.SIGKILL, sleep=0.0, args=(*job_args, "--seed", "1"))
        reference = torch.load(tmp_path / "ref.pt", weights_only=True)
        identical, results = 0, []
        for i in range(args.runs):
            cut = rng.randrange(1, TOTAL_BATCHES)
            directory = tmp_path / f"run{i}"
            if not args.fresh_dir:
                shutil.copytree(older, directory)  # copy2: the older run keeps its times
            run_and_signal(directory, cut, signal.SIGKILL, sleep=0.0, args=job_args)
            out_path = str(tmp_path / f"out{i}.pt")
            out = run([str(directory), "--resume", "--out", out_path, *job_args])
            weights = torch.load(out_path, weights_only=True)
            kept = all((directory / p.name).exists() for p in older.glob("*.pt"))
            same = kept and all(torch.equal(weights[k], v) for k, v in reference.items())
            identical += same
            ratio = value(out, "startup") / value(out, "batch_time")
            results.append((cut, ratio))
            print(
                f"run {i + 1:>3}: killed after batch {cut:>2}, resumed "
                f"{'bit-identical' if same else 'DIFFERENT'}, resume = {ratio:6.1f} batches"
                f"{'' if kept else ', OLDER RUN DELETED'}",
                flush=True,
            )
    setting = "loader seeded" if args.loader_seed else "only torch.manual_seed"
    where = "fresh directories" if args.fresh_dir else "directories holding an older run"
    print(
        f"\n{identical}/{args.runs} resumed runs ended bit-identical to the uninterrupted run "
        f"({setting}, {where})"
    )
    thirds = [(lo, lo + TOTAL_BATCHES // 3) for lo in range(0, TOTAL_BATCHES, TOTAL_BATCHES // 3)]
    for lo, hi in thirds:
        ratios = [r for cut, r in results if lo <= cut < hi]
        if ratios:
            print(
                f"cut in batches {lo:>2}-{hi - 1:>2}: median resume time = "
                f"{statistics.median(ratios):6.1f} batches ({len(ratios)} runs)"
            )


if __name__ == "__main__":
    main()
