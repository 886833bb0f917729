"""Metrics under DDP (torchrun, 2 gloo ranks) when a rank has nothing to count: a validation set
smaller than the ranks leaves rank 1 no validation batch, which is no error (validation runs no
collective), and every metric, pluglearn's and a torchmetrics one through MetricAdapter, still
reduces across both ranks to one process's value."""

from __future__ import annotations

import pytest
import torch

from tests.jobs.launch import run_case

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_validation_set_smaller_than_the_ranks_gives_one_process_metrics(tmp_path):
    one = run_case(tmp_path / "one", "tiny-valid", nproc=1)[0]
    two = run_case(tmp_path / "two", "tiny-valid")
    keys = ("train_loss", "valid_loss", "accuracy", "multiclassaccuracy")
    for rank in two:
        for key in keys:
            assert rank["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-12), key
        for key, value in one["weights"].items():
            assert (rank["weights"][key] - value).abs().max().item() <= 1e-10, key
