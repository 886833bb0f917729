"""HFModel (dict batches) under DDP, with and without GradientAccumulation, and with torch
DataLoaders whose DistributedSampler pads the validation set (under FSDP too): two ranks give
the weights and metrics of one process (the items are counted through the count_items hook,
the padding cut from the dict). Under FSDP a model output that hides its tensors from torch's
pytree is refused."""

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
    [
        [],
        ["--accum", "3"],
        ["--sampler"],
        ["--sampler", "--n-valid", "5"],
        ["--sampler", "--fsdp", "--n-valid", "5", "--named-output"],
        ["--n-train", "9"],
    ],
    # a DistributedSampler's padding cut from a dict batch; with 5 validation items rank 1's
    # last batch is padding only (skipped); under FSDP that rank then runs a zero-item dict
    # batch to keep up; with 9 training items rank 1's slice of the last batch is empty, and the
    # output (a SimpleNamespace) shows DDP no tensor to build that rank's zero loss from
    ids=[
        "plain",
        "accumulated",
        "distributed-sampler",
        "padding-only",
        "fsdp-padding-only",
        "empty-slice",
    ],
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


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_under_fsdp_an_output_that_hides_its_tensors_from_torchs_pytree_is_refused(tmp_path):
    # FSDP's gradient hooks sit on the tensors torch's pytree finds in the model's output: in a
    # SimpleNamespace it finds none, and the shards would never train
    launched = launch(JOB, [tmp_path, "--fsdp"], 2, warm=True, run_dir=tmp_path)
    done = processes.run(
        launched.command, capture_output=True, text=True, timeout=150, env=ENV,
        **launched.options,
    )  # fmt: skip
    assert done.returncode != 0
    assert (
        "TypeError: FSDP(): the model returned a SimpleNamespace, in which torch's pytree finds "
        "no tensor that requires grad. FSDP reduces the gradients through hooks on the output's "
        "tensors, so the shards would get no gradient and the model would not train. Return a "
        "tensor, a tuple, a list, a dict or a named tuple (Hugging Face's ModelOutput is one "
        "torch knows), or register the output's type with "
        "torch.utils._pytree.register_pytree_node."
    ) in done.stderr
