"""A loss with ``reduction="sum"`` under DDP (torchrun, 2 gloo ranks) trains like one process:
each rank's sum is scaled to the global batch (so ``train_loss`` is one process's) and weighted
so that DDP's average of the gradients is the one process's; under GradientAccumulation the
batches' gradients add up as one big batch's. So with a torch ``DistributedSampler`` (its padded
validation set cut), a loader of the user's own (uneven slices: the global batch counted by one
all-reduce in training, told by the loader in validation, a validation batch of one item), an
empty slice on one rank, and a global batch of no items at all (no rank weighs by it); a
validation loader that cannot tell its global batch is refused before the fit."""

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
    assert_like_one_process(one, run_case(tmp_path / "two", "sum", "--accum", accum)[0], accum)


def assert_like_one_process(one: dict, two: dict, accum: str) -> None:
    for key, value in one["weights"].items():
        assert (two["weights"][key] - value).abs().max().item() <= 1e-10, key
    for a, b in zip(one["history"], two["history"], strict=True):
        for key in ("train_loss", "valid_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-12), key
    # DDP's weighting of the loss for the backward is undone after it (GradientAccumulation
    # leaves its own): the plugins after the backward see the loss the plugins before it saw
    for after_loss, after_batch in two["losses"] if accum == "1" else ():
        assert after_batch == after_loss


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "loader, batch_size, accum, fsdp",
    [
        ("sampler", "14", "1", False),  # validation: 23 items padded to 24, the repeat cut
        ("sampler", "14", "2", False),
        ("sampler", "14", "1", True),
        ("sampler-15", "14", "1", False),  # 15 validation items: rank 1's last batch is a repeat
        ("own", "12", "1", False),  # rank 0 takes 8 of 12, 3 of the last 4
        ("own", "12", "2", False),
        ("own-13", "12", "1", False),  # validation 12 + 1: the loader tells a batch of one
        ("empty", "12", "1", False),  # a global batch of no items: no rank divides by it
        ("empty", "12", "2", False),
        ("pluglearn", "13", "1", False),  # 40 = 3 x 13 + 1: one rank's slice of the last empty
        ("pluglearn", "13", "2", False),
        ("pluglearn", "13", "1", True),
    ],
)
def test_a_sum_loss_trains_and_reports_like_one_process_with_any_loader(
    tmp_path, loader, batch_size, accum, fsdp
):
    loader, _, n_valid = loader.partition("-")
    args = ("--loader", loader, "--batch-size", batch_size, "--accum", accum)
    args += ("--n-valid", n_valid) if n_valid else ()
    args += ("--fsdp",) if fsdp else ()
    one = run_case(tmp_path / "one", "sum", *args, nproc=1)[0]
    ranks = run_case(tmp_path / "two", "sum", *args)
    for rank in ranks[:1] if fsdp else ranks:  # FSDP: rank 0 gathers the whole weights
        assert_like_one_process(one, rank, accum)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("loader", "trained", "name"),
    [
        ("own-untold", 0, "DataLoader"),  # refused before the fit's first batch
        # it has the attribute, so the fit starts; its first validation batch tells no count:
        # refused there, after the first epoch's 4 batches
        ("own-stale", 4, "Stale"),
    ],
)
def test_a_sum_loss_with_a_validation_loader_that_cannot_tell_its_global_batch_is_refused(
    tmp_path, loader, trained, name
):
    for rank in run_case(tmp_path, "sum", "--loader", loader, "--batch-size", "12"):
        assert rank["trained"] == trained
        assert rank["refused"] == (
            "DDP(): a loss with reduction='sum' is scaled to the global batch, whose items the "
            f"validation loader ({name}) does not tell (it has no `global_items` above 0 and no "
            "DistributedSampler), and validation runs no collective per batch, so valid_loss "
            "would not be one process's. Use DataLoaders.from_datasets(train, valid, "
            "batch_size=...), a torch DataLoader with a DistributedSampler, a loader whose "
            "`global_items` is the number of items of the global batch it just handed out, or "
            "reduction='mean'."
        )
