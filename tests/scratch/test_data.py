"""pluglearn.scratch.data against torch.utils.data (the oracle) and hand values; the notebook's
forms (BatchSampler passed to DataLoader, a generator to collate, the process pool)."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader as TorchLoader
from torch.utils.data import RandomSampler, default_collate

from pluglearn.scratch.data import BatchSampler, DataLoader, Dataset, Sampler, collate


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ds(n: int) -> Dataset:
    return Dataset(torch.arange(n, dtype=torch.float32) * 10, torch.arange(n))


def _epoch(loader) -> list[list[int]]:
    """The y-values (= indices) of one epoch's batches."""
    return [yb.tolist() for _, yb in loader]


# --- Dataset and collate ------------------------------------------------------------------


def test_dataset_items_and_fast_path():
    x, y = torch.arange(12.0).view(6, 2), torch.arange(6) * 3
    ds = Dataset(x, y)
    assert len(ds) == 6
    xi, yi = ds[4]
    assert torch.equal(xi, torch.tensor([8.0, 9.0])) and yi.item() == 12
    xb, yb = ds[[1, 4]]
    assert torch.equal(xb, x[[1, 4]]) and torch.equal(yb, torch.tensor([3, 12]))
    xb, yb = ds[torch.tensor([5, 0])]
    assert torch.equal(yb, torch.tensor([15, 0]))
    assert ds[1:3][1].tolist() == [3, 6]
    words = Dataset(["a", "b", "c"], [0, 1, 2])
    assert words[2] == ("c", 2) and words[[2, 0]] == (["c", "a"], [2, 0])


def test_dataset_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        Dataset([1, 2, 3], [1, 2])


Point = namedtuple("Point", "x y")


@pytest.mark.parametrize(
    "items",
    [
        [(torch.ones(2, 3), 1), (torch.zeros(2, 3), 0)],
        [(1.5, True), (2.5, False)],
        [
            {"img": torch.ones(2), "label": 3, "name": "a"},
            {"img": torch.zeros(2), "label": 4, "name": "b"},
        ],
        [Point(torch.ones(1), 2.0), Point(torch.zeros(1), 3.0)],
        [[torch.ones(1), (1, 2.0)], [torch.zeros(1), (3, 4.0)]],
        [(np.ones(3), np.float32(1.0)), (np.zeros(3), np.float32(2.0))],
    ],
)
def test_collate_matches_default_collate(items):
    def plain(obj):  # torch turns tuples into lists; compare structure, dtypes and values
        if isinstance(obj, torch.Tensor):
            return str(obj.dtype), obj.tolist()
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [plain(v) for v in obj]
        return obj

    assert plain(collate(items)) == plain(default_collate(items))


def test_collate_keeps_tuples_and_named_tuples():
    xb, yb = collate([(torch.ones(2), 1), (torch.zeros(2), 0)])
    assert xb.shape == (2, 2) and yb.tolist() == [1, 0]
    assert isinstance(collate([Point(1, 2), Point(3, 4)]), Point)


def test_collate_errors_name_the_problem():
    with pytest.raises(ValueError, match="empty"):
        collate([])
    with pytest.raises(ValueError, match="same number of fields"):
        collate([(1, 2), (1,)])
    with pytest.raises(TypeError, match=r"how to batch a object.*collate_fn"):
        collate([object(), object()])


# --- Sampler and BatchSampler -------------------------------------------------------------


def test_sampler_order_is_torch_randperm_each_epoch():
    ours, g = Sampler(9, shuffle=True, generator=_gen(3)), _gen(3)
    assert list(ours) == list(RandomSampler(range(9), generator=_gen(3)))  # epoch 0
    # Later epochs: RandomSampler burns a second randperm per epoch; we draw one per epoch.
    assert [list(ours) for _ in range(2)] == [
        torch.randperm(9, generator=g).tolist() for _ in range(3)
    ][1:]
    assert list(Sampler(_ds(5))) == [0, 1, 2, 3, 4]


def test_default_generator_follows_torch_manual_seed():
    torch.manual_seed(0)
    first = list(Sampler(20, shuffle=True))
    torch.manual_seed(0)
    assert list(Sampler(20, shuffle=True)) == first


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(batch_size=0), ValueError, "batch_size must be an int >= 1, got 0"),
        (dict(batch_size=2.0), TypeError, "batch_size must be an int >= 1, got 2.0"),
        (dict(batch_size=True), TypeError, "batch_size must be an int >= 1"),
        (dict(batch_size=2, n_workers=-1), ValueError, "n_workers must be an int >= 0"),
        (dict(), TypeError, r"needs the batches: pass a BatchSampler"),
        (dict(batchs=[[0, 1]], shuffle=True), TypeError, "belong to the BatchSampler"),
        (dict(batchs=[[0, 1]], batches=[[0, 1]]), TypeError, "two spellings of one argument"),
        (dict(batch_size=2, generator=0), TypeError, r"torch.Generator\(\).manual_seed"),
        (dict(batch_size=2, collate_fn="stack"), TypeError, "collate_fn must be callable"),
    ],
)
def test_loader_validates_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        DataLoader(_ds(4), **kwargs)


def test_the_notebooks_two_spellings_of_the_batches_make_the_same_loader():
    """The course notebook writes DataLoader(train_ds, batchs=train_samp), other versions of it
    DataLoader(trn_ds, batches=trn_samp): both run as printed."""
    ds = _ds(10)
    samp = BatchSampler(Sampler(ds, shuffle=False), 4)
    one = [y.tolist() for _, y in DataLoader(ds, batchs=samp)]
    other = [y.tolist() for _, y in DataLoader(ds, batches=samp)]
    assert one == other == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_empty_dataset_is_refused():
    with pytest.raises(ValueError, match="dataset is empty"):
        DataLoader(Dataset([], []), batch_size=2)
    with pytest.raises(TypeError, match="__len__"):
        Sampler(iter([1, 2]))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    bs=st.integers(1, 12),
    drop_last=st.booleans(),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_batches_partition_the_indices(n, bs, drop_last, shuffle, seed):
    loader = DataLoader(_ds(n), bs, shuffle=shuffle, drop_last=drop_last, generator=_gen(seed))
    batches = _epoch(loader)
    flat = [i for b in batches for i in b]
    n_full, rest = divmod(n, bs)
    assert len(batches) == len(loader) == n_full + (rest > 0 and not drop_last)
    assert [len(b) for b in batches] == [bs] * n_full + ([rest] if rest and not drop_last else [])
    assert len(set(flat)) == len(flat)  # each index at most once ...
    assert set(flat) <= set(range(n))
    assert len(flat) == (n_full * bs if drop_last else n)  # ... and exactly once unless dropped
    assert list(BatchSampler(Sampler(n), bs, drop_last)) == [
        list(range(i, min(i + bs, n))) for i in range(0, n_full * bs if drop_last else n, bs)
    ]


# --- DataLoader against torch's -----------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "bs", "drop_last"), [(10, 3, False), (10, 3, True), (8, 4, False), (5, 7, False)]
)
def test_unshuffled_batches_equal_torch_dataloader(n, bs, drop_last):
    ds = _ds(n)
    ours = list(DataLoader(ds, bs, drop_last=drop_last))
    theirs = list(TorchLoader(ds, bs, drop_last=drop_last))
    assert len(ours) == len(theirs)
    for (xb, yb), (txb, tyb) in zip(ours, theirs, strict=True):
        assert torch.equal(xb, txb) and torch.equal(yb, tyb)


def test_shuffled_batches_equal_torch_dataloader_given_our_order():
    ds = _ds(23)
    loader = DataLoader(ds, 5, shuffle=True, generator=_gen(1))
    orders = Sampler(23, shuffle=True, generator=_gen(1))
    for _ in range(2):  # a new permutation each epoch, the one RandomSampler would draw
        order = list(orders)
        theirs = list(TorchLoader(ds, 5, sampler=order))
        for (xb, yb), (txb, tyb) in zip(loader, theirs, strict=True):
            assert torch.equal(xb, txb) and torch.equal(yb, tyb)


def test_collate_names_a_dataset_that_returned_none():
    with pytest.raises(TypeError, match=r"returned None for 1 of the 2 items.*`return` missing"):
        collate([(torch.zeros(2), 1), None])
