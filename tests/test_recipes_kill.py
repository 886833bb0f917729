"""All four training recipes together, SIGKILLed mid-epoch and resumed in a fresh process.

``tests/jobs/resume_job.py --recipes`` trains with ``fit_one_cycle`` (a ``Scheduler`` of
``OneCycleLR``), ``GradientAccumulation(2)``, ``GradientClipping`` and
``MixedPrecision(torch.bfloat16)``, writing a checkpoint after every training batch (so inside
an accumulation group too). The oracle is the same job run without interruption: the final
weights and the lr, momentum and loss of every batch must be bit-identical.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pluglearn.checkpoint.files import checkpoints_in, load_checkpoint
from tests.jobs import JOBS
from tests.jobs.resume_job import run_and_signal

JOB = JOBS / "resume_job.py"
BATCHES_PER_EPOCH, EPOCHS, ACCUMULATE = 20, 3, 2
TOTAL = BATCHES_PER_EPOCH * EPOCHS


def run_job(directory: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(JOB), str(directory), "--recipes", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def outputs(tmp: Path, name: str) -> tuple[Path, Path]:
    return tmp / f"{name}-weights.pt", tmp / f"{name}-record.pt"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict, dict]:
    """The weights and the Recorder's history of an uninterrupted run."""
    tmp = tmp_path_factory.mktemp("recipes-reference")
    weights, record = outputs(tmp, "ref")
    done = run_job(tmp / "ckpt", "--out", str(weights), "--record", str(record))
    assert done.returncode == 0, done.stderr
    return torch.load(weights, weights_only=True), torch.load(record, weights_only=True)


def trained_batches(stdout: str) -> list[int]:
    return [int(line.split()[1]) for line in stdout.splitlines() if line.startswith("batch ")]


@pytest.mark.timeout(300)
def test_sigkill_mid_epoch_with_all_four_recipes_then_resume_is_bit_identical(tmp_path, reference):
    ref_weights, ref_record = reference
    assert ref_record["opt_steps"] == TOTAL // ACCUMULATE
    assert len(set(ref_record["lrs"])) > 10 and len(set(ref_record["moms"])) > 10  # a cycle
    rng = random.Random(11)
    # one cut inside an accumulation group (an odd batch: its gradient is in the checkpoint)
    # and one anywhere mid-epoch, both away from the epoch boundaries
    inside = rng.choice([b for b in range(1, TOTAL) if b % BATCHES_PER_EPOCH and b % 2])
    anywhere = rng.choice([b for b in range(1, TOTAL) if b % BATCHES_PER_EPOCH])
    for cut in (inside, anywhere):
        directory = tmp_path / f"cut{cut}"
        returncode, stderr = run_and_signal(directory, cut, signal.SIGKILL, args=("--recipes",))
        assert returncode == -signal.SIGKILL, stderr
        assert checkpoints_in(directory), "the job was killed before any checkpoint"
        step = load_checkpoint(checkpoints_in(directory)[-1])["loop"]["train_iter"]
        assert cut <= step < TOTAL
        weights, record = outputs(tmp_path, f"cut{cut}")
        resumed = run_job(directory, "--resume", "--out", str(weights), "--record", str(record))
        assert resumed.returncode == 0, resumed.stderr
        # the resumed process trained only the batches after the checkpoint: not a fresh run
        assert trained_batches(resumed.stdout) == list(range(step + 1, TOTAL + 1))
        got_weights = torch.load(weights, weights_only=True)
        got_record = torch.load(record, weights_only=True)
        assert got_weights.keys() == ref_weights.keys()
        for name, value in ref_weights.items():
            assert torch.equal(got_weights[name], value), f"{name} differs after resume at {cut}"
        for key in ("lrs", "moms", "losses", "steps", "opt_steps"):
            assert got_record[key] == ref_record[key], f"{key} differs after resume at {cut}"


def test_a_run_from_scratch_is_told_apart_from_the_resumed_one(tmp_path, reference):
    """The oracle can fail: a run that starts over from batch 1 after the kill (another
    seed: the resumed state thrown away) does not give the reference weights."""
    ref_weights, _ = reference
    weights, _ = outputs(tmp_path, "other")
    other = run_job(tmp_path / "ckpt", "--seed", "1", "--out", str(weights))
    assert other.returncode == 0, other.stderr
    assert trained_batches(other.stdout) == list(range(1, TOTAL + 1))
    got = torch.load(weights, weights_only=True)
    assert any(not torch.equal(got[k], v) for k, v in ref_weights.items())
