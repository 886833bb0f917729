"""HFModel (dict batches) under DDP, with and without GradientAccumulation, and with torch
DataLoaders whose DistributedSampler pads the validation set: two ranks give the weights and
metrics of one process (the items are counted through the count_items hook, the padding cut
from the dict)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests import processes
from tests.jobs import JOBS
from tests.jobs.launch import ENV, launch

JOB = JOBS / "hf_job.py"

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)


def run(out: Path, nproc: int, *args: str) -> dict:
    launched = launch(JOB, [out, *args], nproc, warm=True, run_dir=out)
    done = processes.run(
        launched.command, capture_output=True, text=True, timeout=150, env=ENV,
        **launched.options,
    )  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"the job failed:\n{done.stdout[-3000:]}{done.stderr[-5000:]}")
    return torch.load(out / "result.pt", weights_only=False)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "accum",
    [[], ["--accum", "3"], ["--sampler"]],
    ids=["plain", "accumulated", "distributed-sampler"],  # its padding cut from a dict batch
)
def test_hf_model_on_two_ranks_trains_as_one_process(tmp_path, accum):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = run(tmp_path / "one", 1, *accum)
    two = run(tmp_path / "two", 2, *accum)
    assert (one["world"], two["world"]) == (1, 2)
    for key, value in one["weights"].items():
        torch.testing.assert_close(two["weights"][key], value, rtol=0, atol=1e-10)
    for key in ("train_loss", "valid_loss"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-12), key
