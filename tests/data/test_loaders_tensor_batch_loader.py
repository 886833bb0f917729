"""TensorBatchLoader: shuffled epochs, resumes from a saved state, each rank's slice of a global
batch, the seeds it takes and draws, and each refusal's message, against torch's own draws
(randperm, DataLoader's base seed), hand counts and the documented messages."""

from __future__ import annotations

import re

import pytest
import torch

from pluglearn.data.loaders import TensorBatchLoader, check_batch_size, check_seed, draw_seed
from pluglearn.distributed.ranks import shard_bounds

X, Y = torch.arange(10.0).unsqueeze(1), torch.arange(10)


def items(batches) -> list[list[int]]:
    return [yb.tolist() for _, yb in batches]


def test_shuffled_epochs_are_randperms_drawn_one_after_another_from_the_generator():
    g = torch.Generator().manual_seed(1)
    loader = TensorBatchLoader((X, Y), 4, shuffle=True, generator=g)
    torch.randperm(3, generator=g)  # drawn between building and iterating: the epoch starts here
    ref = torch.Generator().manual_seed(1)
    torch.randperm(3, generator=ref)
    for _ in range(2):  # every epoch a fresh permutation, cut into batches of 4
        perm = torch.randperm(10, generator=ref).tolist()
        assert items(loader) == [perm[0:4], perm[4:8], perm[8:10]]
        assert loader.global_items == 2  # the last batch handed out held 2 items


def test_by_default_one_process_reads_the_items_in_order():
    loader = TensorBatchLoader((X, Y), 4)
    assert loader.global_items == 0  # nothing handed out yet
    assert (loader.rank, loader.world_size, loader.skip_empty) == (0, 1, False)
    got = []
    for _, yb in loader:
        got.append(yb.tolist())
        assert loader.global_items == len(yb)
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def continue_from(state, batch_size=4):
    fresh = TensorBatchLoader((X, Y), batch_size, True, generator=torch.Generator().manual_seed(9))
    fresh.load_state_dict(state)
    return fresh


def test_a_state_saved_at_an_epoch_end_starts_the_next_epoch_of_the_saved_run():
    run = TensorBatchLoader((X, Y), 4, True, generator=torch.Generator().manual_seed(1))
    list(run)
    state = run.state_dict()
    assert state["cursor"] == 0  # the epoch is closed
    assert items(continue_from(state)) == items(run)  # the saved run's second epoch


@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_state_saved_after_the_first_batch_continues_that_epoch(batch_size):
    run = TensorBatchLoader((X, Y), batch_size, True, generator=torch.Generator().manual_seed(1))
    it = iter(run)
    next(it)
    state = run.state_dict()
    assert state["cursor"] == batch_size
    assert items(continue_from(state, batch_size)) == items(it)


@pytest.mark.parametrize(
    ("n", "batch_size", "drop_last", "world", "skip", "lengths"),
    [
        (10, 4, False, 1, False, [3]),
        (10, 4, True, 1, False, [2]),
        (8, 4, False, 1, False, [2]),
        (8, 4, True, 1, False, [2]),
        (9, 4, False, 2, True, [3, 2]),  # a tail of 1 item: rank 1's slice is empty, skipped
        (9, 4, False, 2, False, [3, 3]),  # kept in training: every rank takes part
        (10, 4, False, 2, True, [3, 3]),
    ],
)
def test_the_length_is_the_number_of_batches_each_rank_gets(
    n, batch_size, drop_last, world, skip, lengths
):
    for rank, expected in enumerate(lengths):
        loader = TensorBatchLoader(
            (X[:n], Y[:n]), batch_size, drop_last=drop_last, rank=rank, world_size=world,
            skip_empty=skip,
        )  # fmt: skip
        assert len(loader) == expected == len(list(loader))


def test_a_rank_takes_its_slice_of_each_global_batch_and_knows_the_global_size():
    loader = TensorBatchLoader((X[:9], Y[:9]), 4, rank=1, world_size=2, skip_empty=True)
    got = []
    for _, yb in loader:
        got.append((yb.tolist(), loader.global_items))
    assert got == [([2, 3], 4), ([6, 7], 4)]  # the tail [8] is rank 0's alone
    lo, hi = shard_bounds(1, 1, 2)
    assert lo == hi  # (the rule behind it)


@pytest.mark.parametrize(("rank", "world"), [(2, 2), (-1, 2), (0, 0), (0, 2.0)])
def test_a_rank_outside_the_world_is_refused(rank, world):
    message = (
        f"rank={rank!r}, world_size={world!r}: give 0 <= rank < world_size "
        "(pluglearn.distributed.ranks.rank() and world_size() under torch.distributed)."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TensorBatchLoader((X, Y), 4, rank=rank, world_size=world)


def test_empty_data_and_a_batch_smaller_than_the_ranks_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"^the dataset is empty: a loader needs at least one"):
        TensorBatchLoader((X[:0], Y[:0]), 4)
    assert len(TensorBatchLoader((X[:1], Y[:1]), 4)) == 1  # one item is enough
    assert len(TensorBatchLoader((X, Y), 2, rank=1, world_size=2)) == 5  # one item per rank
    message = (
        "batch_size=2 is smaller than the 3 processes: batch_size is the global batch, split "
        "across the ranks; give at least batch_size=3 (a multiple of 3 splits evenly)."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TensorBatchLoader((X, Y), 2, rank=0, world_size=3)


def saved(**kwargs):
    loader = TensorBatchLoader((X, Y), 4, True, generator=torch.Generator().manual_seed(1))
    return {**loader.state_dict(), **kwargs}


def refusal(state, loader=None) -> str:
    loader = loader or TensorBatchLoader((X, Y), 4, True)
    with pytest.raises(ValueError) as refused:
        loader.load_state_dict(state)
    return str(refused.value)


def test_each_refused_state_says_why_and_what_to_do():
    assert refusal(saved(n=7)) == (
        "the loader state is for a dataset of 7 items, this one has 10: resume with the same data."
    )
    no_cursor = {k: v for k, v in saved().items() if k != "cursor"}
    assert refusal(no_cursor) == (
        f"the loader state has no cursor (keys {sorted(no_cursor)}): it was not saved by a "
        "TensorBatchLoader. Resume from a checkpoint of this kind of run."
    )
    assert refusal(saved(rng=None)) == (
        "the loader state lacks its generator states (epoch_rng, rng): the checkpoint is "
        "corrupt; resume from another one or start a new run."
    )
    assert refusal(saved(cursor=10)) == (
        "loader cursor 10 is outside 0..9 (items of an epoch): the checkpoint is corrupt or of "
        "other data; start a new run."
    )


def test_other_order_settings_are_named_with_the_number_of_processes_when_it_changed():
    two = TensorBatchLoader((X, Y), 4, True, rank=0, world_size=2).state_dict()
    assert two["world_size"] == 2
    assert refusal(two, TensorBatchLoader((X, Y), 2, False)) == (
        "the checkpoint's training loader ran with batch_size=4 (this one has batch_size=2), "
        "shuffle=True (this one has shuffle=False): the items would come in another order, so "
        "the resume would skip or repeat some. Resume with batch_size=4, shuffle=True (the "
        "global batch: 2 process(es) then, 1 now; batch_size counts the items of all ranks "
        "together), as the checkpoint was written, or start a new run (fit without resume_from)."
    )
    one = {k: v for k, v in saved().items() if k != "world_size"}  # read as one process
    assert refusal(one, TensorBatchLoader((X, Y), 2, True)).startswith(
        "the checkpoint's training loader ran with batch_size=4 (this one has batch_size=2): "
        "the items would come in another order, so the resume would skip or repeat some. "
        "Resume with batch_size=4, as the checkpoint was written"
    )


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, None])
def test_a_batch_size_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=f"^batch_size must be a positive int, got {bad!r}.$"):
        check_batch_size(bad)
    assert check_batch_size(1) == 1


def test_seeds_span_what_torch_generators_take():
    for seed in (-(2**63), 2**64 - 1, 0):
        assert check_seed(seed) == seed
        torch.Generator().manual_seed(seed)  # torch takes it too
    for seed in (-(2**63) - 1, 2**64):
        with pytest.raises(
            ValueError, match=rf"^seed must lie in \[-2\*\*63, 2\*\*64\), got {seed}"
        ):
            check_seed(seed)
    message = (
        "seed must be an int, got '3' (str): pass e.g. seed=0 (int(seed) for a number read from "
        "a string or a config), or None to draw one from torch's global generator."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_seed("3")


def test_the_drawn_seed_is_the_base_seed_torch_dataloader_draws():
    torch.manual_seed(5)
    ours = draw_seed()
    torch.manual_seed(5)
    theirs = iter(torch.utils.data.DataLoader([0]))._base_seed
    assert ours == theirs
