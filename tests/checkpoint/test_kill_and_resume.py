"""Kill-and-resume, end to end: a training job (``tests/jobs/resume_job.py``, a checkpoint after
every batch) SIGKILLed at random batches, or stopped by Ctrl-C, and resumed in a fresh process, with
the default plugins and with all four training recipes (``fit_one_cycle``,
``GradientAccumulation(2)``, ``GradientClipping``, ``MixedPrecision(torch.bfloat16)``, so a cut
inside an accumulation group too). The oracle is the same job run without interruption: the final
weights (and, with the recipes, the lr, momentum and loss of every batch) must be bit-identical,
and the resumed job must train only the batches after the cut."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pluglearn.checkpoint.files import checkpoints_in, load_checkpoint
from tests import processes
from tests.jobs import JOBS
from tests.jobs.resume_job import run_and_signal

JOB = JOBS / "resume_job.py"
BATCHES_PER_EPOCH, EPOCHS, ACCUMULATE = 20, 3, 2  # the job's; ACCUMULATE with --recipes
TOTAL = BATCHES_PER_EPOCH * EPOCHS


def run_job(directory: Path, *args: str) -> subprocess.CompletedProcess:
    return processes.run(
        [sys.executable, str(JOB), str(directory), *args],
        warm=True,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The final weights of a run that was never interrupted."""
    tmp = tmp_path_factory.mktemp("reference")
    result = run_job(tmp / "ckpt", "--out", str(tmp / "ref.pt"))
    assert result.returncode == 0, result.stderr
    return load_weights(tmp / "ref.pt")


def assert_bit_identical(weights: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]):
    assert weights.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(weights[name], value), f"{name} differs after resume"


def assert_resumed_after(stdout: str, saved_at: int) -> None:
    """The resumed job trained batches ``saved_at + 1 ...`` only: it did not start over (a
    resume that is silently ignored would give the same weights, from batch 1)."""
    trained = [int(line.split()[1]) for line in stdout.splitlines() if line.startswith("batch ")]
    assert trained == list(range(saved_at + 1, BATCHES_PER_EPOCH * EPOCHS + 1))


def saved_at(directory: Path) -> int:
    """The training step of the newest checkpoint in ``directory``."""
    return load_checkpoint(checkpoints_in(directory)[-1])["loop"]["train_iter"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_at_random_batches_then_resume_is_bit_identical(tmp_path, reference):
    cuts = random.Random(7).sample(range(1, BATCHES_PER_EPOCH * EPOCHS), 2)
    for cut in [BATCHES_PER_EPOCH, *cuts]:  # an epoch boundary and two random batches
        directory = tmp_path / f"cut{cut}"
        returncode, _ = run_and_signal(directory, cut, signal.SIGKILL, warm=True)
        assert returncode == -signal.SIGKILL
        assert checkpoints_in(directory), "the job was killed before any checkpoint"
        step = saved_at(directory)
        assert cut <= step < BATCHES_PER_EPOCH * EPOCHS  # killed after batch `cut` was saved
        resumed = run_job(directory, "--resume", "--out", str(tmp_path / f"out{cut}.pt"))
        assert resumed.returncode == 0, resumed.stderr
        assert_bit_identical(load_weights(tmp_path / f"out{cut}.pt"), reference)
        assert_resumed_after(resumed.stdout, step)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ctrl_c_saves_a_checkpoint_after_the_batch_then_resume_is_bit_identical(
    tmp_path, reference
):
    returncode, stderr = run_and_signal(tmp_path / "ckpt", 27, signal.SIGINT, warm=True)
    assert returncode != 0 and "KeyboardInterrupt: interrupted; resume with" in stderr
    step = saved_at(tmp_path / "ckpt")
    # saved after the batch that was running when Ctrl-C came (later if the machine is slow)
    assert 27 <= step < BATCHES_PER_EPOCH * EPOCHS
    resumed = run_job(tmp_path / "ckpt", "--resume", "--out", str(tmp_path / "out.pt"))
    assert resumed.returncode == 0, resumed.stderr
    assert_bit_identical(load_weights(tmp_path / "out.pt"), reference)
    assert_resumed_after(resumed.stdout, step)


# ------------------------------------------------------------ all four recipes (--recipes)


def run_recipes_job(directory: Path, *args: str) -> subprocess.CompletedProcess:
    return processes.run(
        [sys.executable, str(JOB), str(directory), "--recipes", *args],
        warm=True,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def outputs(tmp: Path, name: str) -> tuple[Path, Path]:
    return tmp / f"{name}-weights.pt", tmp / f"{name}-record.pt"


@pytest.fixture(scope="module")
def recipes_reference(tmp_path_factory) -> tuple[dict, dict]:
    """The weights and the Recorder's history of an uninterrupted run."""
    tmp = tmp_path_factory.mktemp("recipes-reference")
    weights, record = outputs(tmp, "ref")
    done = run_recipes_job(tmp / "ckpt", "--out", str(weights), "--record", str(record))
    assert done.returncode == 0, done.stderr
    return torch.load(weights, weights_only=True), torch.load(record, weights_only=True)


def trained_batches(stdout: str) -> list[int]:
    return [int(line.split()[1]) for line in stdout.splitlines() if line.startswith("batch ")]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_mid_epoch_with_all_four_recipes_then_resume_is_bit_identical(
    tmp_path, recipes_reference
):
    ref_weights, ref_record = recipes_reference
    assert ref_record["opt_steps"] == TOTAL // ACCUMULATE
    assert len(set(ref_record["lrs"])) > 10 and len(set(ref_record["moms"])) > 10  # a cycle
    rng = random.Random(11)
    # one cut inside an accumulation group (an odd batch: its gradient is in the checkpoint)
    # and one anywhere mid-epoch, both away from the epoch boundaries
    inside = rng.choice([b for b in range(1, TOTAL) if b % BATCHES_PER_EPOCH and b % 2])
    anywhere = rng.choice([b for b in range(1, TOTAL) if b % BATCHES_PER_EPOCH])
    for cut in (inside, anywhere):
        directory = tmp_path / f"cut{cut}"
        returncode, stderr = run_and_signal(
            directory, cut, signal.SIGKILL, args=("--recipes",), warm=True
        )
        assert returncode == -signal.SIGKILL, stderr
        assert checkpoints_in(directory), "the job was killed before any checkpoint"
        step = load_checkpoint(checkpoints_in(directory)[-1])["loop"]["train_iter"]
        assert cut <= step < TOTAL
        weights, record = outputs(tmp_path, f"cut{cut}")
        resumed = run_recipes_job(
            directory, "--resume", "--out", str(weights), "--record", str(record)
        )
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


@pytest.mark.slow
def test_a_run_from_scratch_is_told_apart_from_the_resumed_one(tmp_path, recipes_reference):
    """The oracle can fail: a run that starts over from batch 1 after the kill (another
    seed: the resumed state thrown away) does not give the reference weights."""
    ref_weights, _ = recipes_reference
    weights, _ = outputs(tmp_path, "other")
    other = run_recipes_job(tmp_path / "ckpt", "--seed", "1", "--out", str(weights))
    assert other.returncode == 0, other.stderr
    assert trained_batches(other.stdout) == list(range(1, TOTAL + 1))
    got = torch.load(weights, weights_only=True)
    assert any(not torch.equal(got[k], v) for k, v in ref_weights.items())
