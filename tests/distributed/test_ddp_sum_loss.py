"""A loss with ``reduction="sum"`` under DDP (torchrun, 2 gloo ranks) trains like one process:
each rank's sum is scaled to the global batch (so ``train_loss`` is one process's) and weighted
so that DDP's average of the gradients is the one process's; under GradientAccumulation the
batches' gradients add up as one big batch's."""

from __future__ import annotations

import pytest
import torch

from tests.jobs.launch import run_case

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("accum", ["1", "2"])
def test_a_sum_loss_on_two_ranks_trains_and_reports_like_one_process(tmp_path, accum):
    one = run_case(tmp_path / "one", "sum", "--accum", accum, nproc=1)[0]
    two = run_case(tmp_path / "two", "sum", "--accum", accum)[0]
    for key, value in one["weights"].items():
        assert (two["weights"][key] - value).abs().max().item() <= 1e-10, key
    for a, b in zip(one["history"], two["history"], strict=True):
        for key in ("train_loss", "valid_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-12), key
