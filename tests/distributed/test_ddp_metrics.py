"""Metrics under DDP (torchrun, 2 gloo ranks) where the ranks' batches differ from one process's.

A rank with nothing to count: a validation set smaller than the ranks leaves rank 1 no
validation batch, which is no error (validation runs no collective), and every metric,
pluglearn's and a torchmetrics one through MetricAdapter, still reduces across both ranks to one
process's value.

A batch cancelled at its step: a cancel one rank raised is held until the ranks agree (at the
optimizer step), so every rank computed the batch and counted it; the agreement takes it back
out of every metric that one process, cancelling where that rank did, would not have counted."""

from __future__ import annotations

import pytest
import torch

from tests.jobs.launch import run_case, run_job

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


TRAIN_METRICS = ("train_loss", "train_accuracy", "train_f1", "valid_loss", "accuracy", "f1")


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("hook", "kind"),
    [
        # before any metric counted: one process counts nothing of the batch
        ("before_batch", "--cancel-batch"),
        ("compute_loss", "--cancel-batch"),
        # in after_loss, before AvgLoss and the others there (Probe runs first): nothing either
        ("after_loss", "--cancel-batch"),
        # after the step of batch 3: one process ends the pass there; the ranks computed batch
        # 4 before they agreed, and count none of it
        ("after_batch", "--cancel-train"),
        ("before_batch", "--cancel-train"),
        # at the train pass's end (6 batches): an agreement outside any batch takes none back
        ("after_train", "--cancel-train --cancel-at 6"),
        # the ranks agree before each backward: under accumulation, and under FSDP
        ("before_batch", "--cancel-batch --accum 2"),
        ("after_loss", "--cancel-train --fsdp"),
    ],
)
def test_a_batch_cancelled_by_one_rank_counts_in_the_metrics_as_on_one_process(
    tmp_path, hook, kind
):
    kind, *more = kind.split()
    at = more[more.index("--cancel-at") + 1] if "--cancel-at" in more else "3"
    more = [m for m in more if m not in ("--cancel-at", at)]
    plant = ["--cancel-in", hook, "--cancel-at", at, "--epochs", "2", kind, "--train-metrics"]
    fsdp = [m for m in more if m == "--fsdp"]
    plant += [m for m in more if m != "--fsdp"]
    two = run_job(tmp_path / "two", *plant, *fsdp, "--cancel-rank", "1")
    one = run_job(tmp_path / "one", *plant, "--cancel-rank", "0", nproc=1)
    for key, value in one["weights"].items():
        assert (two["weights"][key] - value).abs().max().item() <= 1e-10, key
    assert len(two["history"]) == len(one["history"]) == 2
    for got, expected in zip(two["history"], one["history"], strict=True):
        # a batch cancel at train_iter 3 cancels every later batch (a cancelled batch does not
        # advance it): epoch 1 counts no training item, and reports no train metric
        assert set(got) == set(expected)
        for key in set(TRAIN_METRICS) & set(expected):
            assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-15), key
