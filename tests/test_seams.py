"""Every pair of features, each checked against its oracle, so a feature is tested where it
meets the others (the scenario: ``tests/jobs/seams_job.py``).

A pair of configurations (accumulation, dict batches, metrics, mixed precision) is compared
with the same training written by hand (float64; float32 under mixed precision). A pair with a
modifier (resume, nested calls, lr_find, compile) must also give, bit for bit, the run of its
configurations alone: a modifier changes how a run is carried out, never its result. DDP
crossed with each other feature runs two ranks (torchrun's environment, forked warm by
``tests/warm_start.py``) against one process.
"""

from __future__ import annotations

import functools
import itertools
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from tests import processes
from tests.jobs import JOBS
from tests.jobs.seams_job import CONFIGS, FEATURES, MODIFIERS, oracle, run

PAIRS = [frozenset(p) for p in itertools.combinations(FEATURES, 2) if "ddp" not in p]
JOB = JOBS / "seams_job.py"


def tolerance(features: frozenset[str]) -> dict:
    return {"rtol": 1e-5, "atol": 1e-6} if "mixed" in features else {"rtol": 1e-9, "atol": 1e-11}


def assert_same_result(got: dict, want: dict, **tol) -> None:
    assert got["weights"].keys() == want["weights"].keys()
    for key, value in want["weights"].items():
        if tol:
            torch.testing.assert_close(got["weights"][key], value, **tol)
        else:
            assert torch.equal(got["weights"][key], value), key
    assert got["metrics"].keys() == want["metrics"].keys()
    for key, value in want["metrics"].items():
        if tol:
            assert got["metrics"][key] == pytest.approx(
                value, rel=tol["rtol"] * 10, abs=max(1e-6, tol["atol"])
            )
        else:
            assert got["metrics"][key] == value, key
    if want["losses"] is not None:
        if tol:
            assert got["losses"] == pytest.approx(want["losses"], rel=tol["rtol"] * 10)
        else:
            assert got["losses"] == want["losses"]
    assert got["stop_reason"] == want["stop_reason"]


@functools.cache
def alone(configs: frozenset[str], dropout: float = 0.2) -> dict:
    """pluglearn's run of ``configs`` with no modifier (checked against the oracle)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run(configs, Path(tmp), dropout)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "+".join(sorted(p)))
@pytest.mark.slow
def test_a_pair_of_features_meets_its_oracle(pair, tmp_path):
    configs, modifiers = pair & CONFIGS, pair & MODIFIERS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the O(batches) replay of a resume, compile's notes
        got = run(pair, tmp_path)
    assert_same_result(got, oracle(configs), **tolerance(pair))
    if modifiers:  # and exactly the run without them
        assert_same_result(got, alone(configs))


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.xdist_group("ranks")  # two-rank jobs run one at a time
def test_ddp_meets_every_other_feature_as_one_process_does(tmp_path):
    child = processes.popen(
        [sys.executable, str(JOB), str(tmp_path)], ranks=2, run_dir=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    output, _ = child.communicate(timeout=540)  # a stuck job is killed with the test
    assert child.returncode == 0, output[-4000:]
    for other in FEATURES:
        if other == "ddp":
            continue
        got = torch.load(tmp_path / f"ddp-{other}.pt", weights_only=False)
        one = frozenset({other}) & CONFIGS
        want = alone(one, dropout=0.0)
        got["losses"] = want["losses"] = None  # per batch, the Recorder logs rank 0's slice
        # under bfloat16 autocast each rank's weight gradient (a matmul over its slice) is
        # rounded to bfloat16 on its own, so two ranks equal one process to bfloat16's
        # precision (a relative 2**-8), not float32's
        tol = {"rtol": 0.0, "atol": 1e-2} if "mixed" in one else {"rtol": 1e-9, "atol": 1e-11}
        assert_same_result(got, want, **tol)
