"""EpochOrder, EpochBatches, ItemLoader at the edges: the position counting items and closing an
epoch with its last item, plans cut per rank (slices, global sizes, lengths, a rank outside the
world), resumed plans, empty slices, and iterators stopped by a load or a newer ``iter``; against
hand-cut batches and torch's own draws."""

from __future__ import annotations

import pytest
import torch

from pluglearn.data.epochs import EpochBatches, EpochOrder, ItemLoader, no_items
from tests.helpers import exact


def test_the_position_counts_items_and_closes_the_epoch_with_its_last_item():
    order = EpochOrder(3)
    assert order.state() == {"shuffle": False, "n_items": 3, "epoch": 0, "cursor": 0,
                             "in_epoch": False}  # fmt: skip
    it = iter(order)
    next(it)
    next(it)
    assert (order.epoch, order.cursor, order.in_epoch) == (0, 2, True)
    next(it)
    assert (order.epoch, order.cursor, order.in_epoch) == (1, 0, False)
    first = iter(order)
    next(first)
    next(iter(order))  # a newer iteration
    with pytest.raises(RuntimeError, match=exact(
        "this iterator was superseded by a newer iter() over the same loader: only the latest "
        "iteration may continue; call iter() again"
    )):  # fmt: skip
        next(first)


def state_of(**changes):
    batches = EpochBatches(EpochOrder(10, True, torch.Generator().manual_seed(0)), 2)
    return {**batches.state_dict(), **changes}


def test_no_items_keeps_the_structure_with_zero_rows():
    batch = (torch.ones(3, 2), [torch.arange(3)], {"m": torch.zeros(3)}, "id")
    empty = no_items(batch)
    assert isinstance(empty, tuple) and isinstance(empty[1], list)
    assert empty[0].shape == (0, 2) and empty[1][0].shape == (0,)
    assert empty[2]["m"].shape == (0,) and empty[3] == "id"


def test_by_default_one_process_cuts_the_order_into_batches():
    batches = EpochBatches(EpochOrder(10), 4)
    assert (batches.rank, batches.world_size, batches.skip_empty, batches.drop_last) == (
        0, 1, False, False
    )  # fmt: skip
    assert batches.global_items == 0
    got = []
    for b in batches:
        got.append((b, batches.global_items))
    assert got == [([0, 1, 2, 3], 4), ([4, 5, 6, 7], 4), ([8, 9], 2)]
    assert list(EpochBatches(EpochOrder(10), 4, drop_last=True)) == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize(
    ("rank", "skip", "batches", "sizes", "emptied"),
    [
        (0, False, [[0, 1], [4, 5], [8]], [4, 4, 1], None),
        (1, False, [[2, 3], [6, 7], [8]], [4, 4, 1], 2),  # its empty slice: fetch one, hand none
        (1, True, [[2, 3], [6, 7]], [4, 5], None),  # skipped: the tail counts with the batch before
    ],
)
def test_a_rank_plan_holds_its_slices_and_the_global_sizes(rank, skip, batches, sizes, emptied):
    cut = EpochBatches(EpochOrder(9), 4, rank=rank, world_size=2, skip_empty=skip)
    plan = cut.start_epoch()
    assert (plan.epoch, plan.first, plan.batches, plan.sizes, plan.emptied) == (
        0, 0, batches, sizes, emptied
    )  # fmt: skip
    for j in range(len(plan.batches)):
        cut.advance(plan, j)
        assert cut.global_items == sizes[j]
    assert (cut.order.epoch, cut.order.cursor) == (1, 0)  # all 9 items of the epoch counted
    assert len(cut) == len(batches)


@pytest.mark.parametrize(
    ("n", "drop_last", "world", "skip", "lengths"),
    [(8, False, 1, False, [2]), (10, True, 1, False, [2]), (9, False, 2, True, [3, 2]),
     (10, False, 2, True, [3, 3]), (9, False, 2, False, [3, 3])],
)  # fmt: skip
def test_the_length_is_the_number_of_batches_each_rank_gets(n, drop_last, world, skip, lengths):
    for rank, expected in enumerate(lengths):
        cut = EpochBatches(EpochOrder(n), 4, drop_last, rank=rank, world_size=world,
                           skip_empty=skip)  # fmt: skip
        assert len(cut) == expected == len(list(cut))


@pytest.mark.parametrize(("rank", "world"), [(2, 2), (-1, 2), (0, 0), (0, 2.0)])
def test_a_rank_outside_the_world_is_refused(rank, world):
    with pytest.raises(ValueError, match=exact(
        f"rank={rank!r}, world_size={world!r}: give 0 <= rank < world_size "
        "(pluglearn.distributed.ranks.rank() and world_size() under torch.distributed)"
    )):  # fmt: skip
        EpochBatches(EpochOrder(10), 4, rank=rank, world_size=world)
    with pytest.raises(ValueError, match=exact(
        "batch_size=2 is smaller than the 3 processes: batch_size is the global batch, split "
        "across the ranks; give at least batch_size=3 (a multiple of 3 splits evenly)."
    )):  # fmt: skip
        EpochBatches(EpochOrder(10), 2, rank=0, world_size=3)
    assert len(EpochBatches(EpochOrder(10), 2, rank=1, world_size=2)) == 5


def test_a_resumed_plan_starts_at_the_saved_batch():
    cut = EpochBatches(EpochOrder(10), 2)
    cut.load_state_dict(state_of(cursor=4, in_epoch=True, shuffle=False, rng=None))
    plan = cut.start_epoch()
    assert (plan.first, plan.batches) == (2, [[4, 5], [6, 7], [8, 9]])
    assert type(plan.first) is int and (plan.sizes, plan.emptied) == (None, None)  # one process


def test_a_position_past_the_last_full_batch_closes_the_epoch_at_once():
    cut = EpochBatches(EpochOrder(10), 4, drop_last=True)
    saved = {**cut.state_dict(), "cursor": 8, "in_epoch": True}  # only a short batch is left
    cut.load_state_dict(saved)
    assert list(cut) == []
    assert (cut.order.epoch, cut.order.cursor, cut.order.in_epoch) == (1, 0, False)
    assert list(cut) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_an_item_loader_refuses_a_collate_fn_that_cannot_be_called():
    with pytest.raises(TypeError, match=exact(
        "collate_fn must be callable, got int: pass a function that turns a list of items into "
        "a batch"
    )):  # fmt: skip
        ItemLoader(list(range(4)), 2, collate_fn=3)


def test_a_rank_item_loader_hands_out_its_empty_slice_with_no_items_by_default():
    data = [(torch.tensor([float(i)]), torch.tensor(i)) for i in range(9)]
    loader = ItemLoader(data, 4, rank=1, world_size=2)
    got = [yb.tolist() for _, yb in loader]
    assert got == [[2, 3], [6, 7], []]  # the tail [8] is rank 0's; rank 1 still takes part
    assert loader.global_items == 1


def test_iterators_from_before_a_load_or_a_newer_iter_stay_stopped():
    order = EpochOrder(10)
    old = iter(order)
    next(old)
    order.load_state(order.state())
    newer = iter(order)
    next(newer)
    with pytest.raises(RuntimeError, match="superseded"):
        next(old)


def test_abandoned_epochs_count_and_advance_keeps_the_epoch_open_by_default():
    order = EpochOrder(10)
    for _ in range(3):
        next(iter(order))  # each new iteration abandons the open epoch
    assert order.epoch == 2
    order.advance(2)
    assert (order.epoch, order.cursor, order.in_epoch) == (2, 3, True)


def test_a_skipped_empty_slice_counts_its_items_with_the_batch_before_it():
    cut = EpochBatches(EpochOrder(13), 4, rank=1, world_size=2, skip_empty=True)
    sizes = []
    for _ in cut:
        sizes.append(cut.global_items)
    assert sizes == [4, 4, 5]  # the tail of 1 item goes with the third batch
    data = [(torch.tensor([float(i)]), torch.tensor(i)) for i in range(9)]
    skipping = ItemLoader(data, 4, rank=1, world_size=2, skip_empty=True)
    assert [yb.tolist() for _, yb in skipping] == [[2, 3], [6, 7]]


def test_an_iterator_from_before_a_load_is_stopped_even_without_a_newer_one():
    order = EpochOrder(10)
    old = iter(order)
    next(old)
    order.load_state(order.state())
    with pytest.raises(RuntimeError, match="superseded"):
        next(old)
