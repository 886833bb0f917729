"""The sharded loaders on one process: rank r of W takes its contiguous slice of every global
batch, the slices together are the one-process batch, and the position is the same on every
rank (so a resume may use another number of processes)."""

from __future__ import annotations

import pytest
import torch

from pluglearn.data.epochs import ItemLoader
from pluglearn.data.loaders import TensorBatchLoader
from pluglearn.data.multiprocess import MultiprocessDataLoader
from pluglearn.distributed.ranks import shard_bounds

X, Y = torch.arange(23.0).unsqueeze(1), torch.arange(23)


def tensor_loader(rank: int, world: int, batch_size: int, skip: bool) -> TensorBatchLoader:
    g = torch.Generator().manual_seed(1)
    return TensorBatchLoader(
        (X, Y), batch_size, True, False, g, rank=rank, world_size=world, skip_empty=skip
    )


def item_loader(rank: int, world: int, batch_size: int, skip: bool) -> ItemLoader:
    g = torch.Generator().manual_seed(1)
    return ItemLoader(
        list(zip(X, Y, strict=True)),
        batch_size,
        True,
        generator=g,
        rank=rank,
        world_size=world,
        skip_empty=skip,
    )


def mp_loader(rank: int, world: int, batch_size: int, skip: bool) -> MultiprocessDataLoader:
    g = torch.Generator().manual_seed(1)
    return MultiprocessDataLoader(
        list(zip(X, Y, strict=True)),
        batch_size,
        True,
        n_workers=0,
        generator=g,
        rank=rank,
        world_size=world,
        skip_empty=skip,
    )


@pytest.mark.parametrize("make", [tensor_loader, item_loader, mp_loader])
@pytest.mark.parametrize(("world", "batch_size"), [(2, 8), (2, 7), (3, 5), (5, 6), (4, 11)])
@pytest.mark.parametrize("skip", [False, True])
def test_the_ranks_slices_make_up_the_one_process_batches(make, world, batch_size, skip):
    alone = [yb.tolist() for _, yb in make(0, 1, batch_size, False)]
    ranks = [[b[1].tolist() for b in make(r, world, batch_size, skip)] for r in range(world)]
    for r, batches in enumerate(ranks):
        assert len(batches) == len(make(r, world, batch_size, skip))
        if not skip:
            assert len(batches) == len(alone)  # every rank takes part in every step
    for j, whole in enumerate(alone):
        assert [x for b in ranks if j < len(b) for x in b[j]] == whole


def test_shard_bounds_split_like_tensor_split():
    for n in range(12):
        for world in range(1, 5):
            sizes = [b - a for a, b in (shard_bounds(n, r, world) for r in range(world))]
            assert sizes == [len(t) for t in torch.arange(n).tensor_split(world)]


def test_the_position_is_the_same_on_every_rank_and_resumes_on_another_number():
    loaders = [tensor_loader(r, 2, 8, False) for r in range(2)]
    iters = [iter(dl) for dl in loaders]
    for it in iters:
        next(it), next(it)
    states = [dl.state_dict() for dl in loaders]
    assert states[0]["cursor"] == states[1]["cursor"] == 16
    alone = tensor_loader(0, 1, 8, False)
    alone.load_state_dict(states[0])  # the same global batch on one process: accepted
    rest = [yb.tolist() for _, yb in alone]
    reference = [yb.tolist() for _, yb in tensor_loader(0, 1, 8, False)][2:]
    assert rest == reference


def test_a_global_batch_smaller_than_the_ranks_is_refused():
    with pytest.raises(ValueError, match="batch_size=2 is smaller than the 3 processes"):
        tensor_loader(0, 3, 2, False)
    with pytest.raises(ValueError, match="give 0 <= rank < world_size"):
        tensor_loader(2, 2, 8, False)
