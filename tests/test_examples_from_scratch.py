"""examples/from_scratch.py walks the notebook offline, checks itself and fails loudly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import processes

ROOT = Path(__file__).resolve().parents[1]


def run_example(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    # no MNIST source and an empty cache: the example must pick the bundled digits, offline
    env = {k: v for k, v in os.environ.items() if k != "PLUGLEARN_MNIST_URL"}
    env["PLUGLEARN_CACHE"] = str(tmp_path / "cache")
    return processes.run(
        [sys.executable, str(ROOT / "examples" / "from_scratch.py"), *args],
        warm=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )


def number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, f"no match for {pattern!r} in:\n{text}"
    return float(found.group(1))


@pytest.mark.timeout(150)
@pytest.mark.slow
def test_from_scratch_example_walks_the_notebook_and_passes_its_checks(tmp_path):
    result = run_example(tmp_path)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "1. data: scikit-learn digits (8x8, offline): 1438 train / 359 valid, 64 features" in out
    assert number(r"from torch.nn.functional (\S+)", out) < 1e-5
    assert number(r"manual backward vs autograd .*, relative (\S+)", out) < 1e-4
    assert re.search(
        r"naive \[nan, nan, -inf\] \(overflows\), stable \[-0\.3133, .*\(finite\)", out
    )
    hand = [
        float(a) for a in re.findall(r"epoch \d: train loss \S+, validation accuracy (\S+)", out)
    ]
    assert len(hand) == 3 and hand[-1] >= 0.9
    assert "GradCheck: 2 batches checked" in out  # batch 0 and 50 of 3 x 23 training batches
    assert number(r"   validation accuracy (\S+) \(target", out) >= 0.9
    assert number(r"weight difference from the loop by hand: (\S+)", out) < 1e-3
    assert out.rstrip().endswith("OK")
    assert "epoch 3/3" in result.stderr  # the Learner's progress, one line per epoch


@pytest.mark.timeout(150)
@pytest.mark.slow
def test_from_scratch_example_exits_non_zero_when_a_check_fails(tmp_path):
    result = run_example(tmp_path, "--epochs", "1", "--target", "1.01")
    assert result.returncode == 1
    assert "FAILED: training by hand reached" in result.stdout
    assert "the Learner reached" in result.stdout
