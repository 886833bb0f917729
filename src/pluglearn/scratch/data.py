"""Datasets, samplers, collation and the DataLoader, as the notebook builds them.

The data half of "Implementing a Neural Network from Scratch": a `Dataset` pairs inputs with
targets, a `Sampler` decides the order of one epoch, a `BatchSampler` cuts that order into
batches, `collate` stacks a batch's items, and `DataLoader(ds, batchs, collate_fn=collate)` ties
them together; with `n_workers` it makes the batches in a process pool.

    train_samp = BatchSampler(Sampler(train_ds, shuffle=True), bs)
    train_dl = DataLoader(train_ds, batchs=train_samp)            # the notebook's form
    train_dl = DataLoader(train_ds, batch_size=bs, shuffle=True)  # torch's form, same batches

The resumable loaders the Learner uses (a position a checkpoint can save, a persistent worker
pool) are :mod:`pluglearn.data.epochs` and :mod:`pluglearn.data.multiprocess`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any

import torch
import torch.multiprocessing as mp
from fastcore.all import chunked, store_attr

__all__ = ["BatchSampler", "DataLoader", "Dataset", "Sampler", "collate"]


class Dataset:
    """Pairs inputs `x` with targets `y`; `ds[i]` is `(x[i], y[i])`.

    Indexing with a slice, a list or a tensor of indices returns the whole batch at once, the
    fast path when `x` and `y` are tensors.
    """

    x: Sequence[Any] | torch.Tensor
    y: Sequence[Any] | torch.Tensor

    def __init__(self, x: Sequence[Any] | torch.Tensor, y: Sequence[Any] | torch.Tensor):
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        store_attr()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: Any) -> tuple[Any, Any]:
        if isinstance(i, (slice, list)) or (isinstance(i, torch.Tensor) and i.ndim == 1):
            return _take(self.x, i), _take(self.y, i)
        return self.x[i], self.y[i]


def _take(seq: Any, idx: slice | list[Any] | torch.Tensor) -> Any:
    # Tensors index with a list or tensor in one call; plain sequences need a loop.
    if isinstance(seq, torch.Tensor) or isinstance(idx, slice):
        return seq[idx]
    return [seq[int(j)] for j in idx]


def collate(items: Iterable[Any]) -> Any:
    """Merge samples (a list, or any iterable as the notebook's DataLoader passes) into a batch,
    like `torch.utils.data.default_collate`: `[(x, y), ...]` gives `(stack(xs), stack(ys))`.

    Tensors and numpy arrays are stacked; ints, floats and bools become 1-d tensors (floats as
    float64, as torch does); strings stay a list; tuples, named tuples, lists and mappings are
    collated field by field. Unlike torch, a tuple stays a tuple, so `[(x, y), ...]` gives
    `(xb, yb)`.
    """
    items = list(items)
    if len(items) == 0:
        raise ValueError("collate needs at least one item; the batch is empty")
    first = items[0]
    if any(item is None for item in items):  # a __getitem__ that forgot its return
        raise TypeError(
            f"the dataset returned None for {sum(item is None for item in items)} of the "
            f"{len(items)} items of this batch: its __getitem__ must return the item, e.g. "
            "(x, y) (is a `return` missing?)"
        )
    np = sys.modules.get("numpy")  # numpy arrays are only possible if numpy is imported
    if isinstance(first, torch.Tensor):
        return torch.stack(list(items))
    if np is not None and isinstance(first, (np.ndarray, np.generic)):
        return torch.stack([torch.as_tensor(item) for item in items])
    if isinstance(first, float):
        return torch.tensor(items, dtype=torch.float64)
    if isinstance(first, int):  # bool included: torch.tensor makes a bool tensor
        return torch.tensor(items)
    if isinstance(first, (str, bytes)):
        return list(items)
    if isinstance(first, Mapping):
        fields = {k: collate([item[k] for item in items]) for k in first}
        kind: Any = type(first)  # a Mapping subclass; most are built from a dict
        try:  # keep the mapping's type when it can be built from a dict
            return kind(fields)
        except TypeError:
            return fields
    if isinstance(first, Sequence):
        if any(len(item) != len(first) for item in items):
            raise ValueError("collate: every sample in a batch must have the same number of fields")
        columns = [collate(list(field)) for field in zip(*items, strict=True)]
        if isinstance(first, tuple) and hasattr(first, "_fields"):
            return type(first)(*columns)
        return tuple(columns) if isinstance(first, tuple) else columns
    raise TypeError(
        f"collate does not know how to batch a {type(first).__name__}: "
        "pass a collate_fn that handles it"
    )


def _check_size(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {low}, got {value!r}: e.g. {name}=64")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value}: e.g. {name}=64")
    return value


class Sampler:
    """The indices of one epoch over `ds` (or over `range(n)` given an int): in order, or a fresh
    permutation each `iter()` when shuffling.

    The notebook shuffles with `random.shuffle`; this one draws `torch.randperm` from
    `generator` (torch's global RNG without one), so a seeded generator gives the order torch's
    `RandomSampler` draws from it, and `torch.manual_seed` fixes the rest.
    """

    def __init__(
        self, ds: Sized | int, shuffle: bool = False, generator: torch.Generator | None = None
    ):
        if isinstance(ds, bool) or not isinstance(ds, (int, Sized)):
            raise TypeError(
                f"Sampler needs a dataset with __len__ (or an int size), got "
                f"{type(ds).__name__}: pass the Dataset itself"
            )
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator, got {type(generator).__name__}: "
                "pass e.g. generator=torch.Generator().manual_seed(0)"
            )
        self.n = ds if isinstance(ds, int) else len(ds)
        if self.n <= 0:
            raise ValueError(f"the dataset is empty (size {self.n}): give it at least one item")
        self.shuffle, self.generator = bool(shuffle), generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        return iter(torch.randperm(self.n, generator=self.generator).tolist())  # (n,)


class BatchSampler:
    """Cuts each epoch of `sampler` into lists of `bs` indices (fastcore's `chunked`);
    `drop_last` drops a final short batch."""

    def __init__(self, sampler: Iterable[int], bs: int, drop_last: bool = False):
        self.bs = _check_size("batch_size", bs, 1)
        self.sampler, self.drop_last = sampler, bool(drop_last)

    def __len__(self) -> int:
        if not isinstance(self.sampler, Sized):
            raise TypeError(
                f"BatchSampler: its sampler ({type(self.sampler).__name__}) has no len(), so "
                "the number of batches is unknown"
            )
        n = len(self.sampler)
        return n // self.bs if self.drop_last else -(-n // self.bs)

    def __iter__(self) -> Iterator[list[int]]:
        yield from chunked(iter(self.sampler), self.bs, drop_last=self.drop_last)


# The pool's workers keep the dataset and collate_fn from their start (sent once, not per batch).
_in_worker: dict[str, Any] = {}


def _start_worker(ds: Any, collate_fn: Callable[[Iterable[Any]], Any]) -> None:
    # One thread each, as torch's own DataLoader workers: n workers x all cores would
    # oversubscribe the CPU, and a forked copy of the parent's thread pool can deadlock.
    torch.set_num_threads(1)
    _in_worker.update(ds=ds, collate_fn=collate_fn)


def _worker_batch(b: list[int]) -> Any:
    ds, collate_fn = _in_worker["ds"], _in_worker["collate_fn"]
    return collate_fn(ds[i] for i in b)


class DataLoader:
    """Yields `collate_fn(ds[i] for i in b)` for each batch of indices `b` in `batchs`.

    `batchs` is a `BatchSampler` (or any iterable of index lists), spelled as in the notebook
    (`DataLoader(train_ds, batchs=train_samp)`). Without it, give `batch_size=` (with `shuffle`,
    `drop_last`, `generator`), torch's form; an int in its place is the batch size too
    (`DataLoader(ds, bs)`, the notebook's first loader). `batches=` is the same argument under
    the other spelling the notebook's versions use (`DataLoader(trn_ds, batches=trn_samp)`).

    `n_workers > 0` makes the batches in a `torch.multiprocessing` pool started for each
    epoch, in order, calling `collate_fn` in the workers (the notebook's pool forgot it). Under
    spawn or forkserver, `ds` and `collate_fn` must pickle (module-level classes and functions).
    """

    def __init__(
        self,
        ds: Any,
        batchs: Iterable[list[int]] | int | None = None,
        n_workers: int = 0,
        collate_fn: Callable[[Iterable[Any]], Any] = collate,
        *,
        batch_size: int | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        batches: Any = None,
    ):
        if batches is not None:  # the notebook's other spelling of batchs
            if batchs is not None:
                raise TypeError(
                    "DataLoader got both batchs= and batches= (two spellings of one argument): "
                    "give the BatchSampler once"
                )
            batchs = batches
        if not callable(collate_fn):
            raise TypeError(
                f"collate_fn must be callable, got {type(collate_fn).__name__}: pass a function "
                "that turns the items of a batch into the batch, e.g. collate"
            )
        if isinstance(batchs, bool):
            raise TypeError(
                f"DataLoader(ds, {batchs}): batchs is a BatchSampler (or a batch size, an int), "
                "not a bool"
            )
        if isinstance(batchs, int) and batch_size is None:
            batchs, batch_size = None, batchs
        if batchs is None:
            if batch_size is None:
                raise TypeError(
                    "DataLoader needs the batches: pass a BatchSampler, e.g. "
                    "DataLoader(ds, BatchSampler(Sampler(ds), 64)), or batch_size=64"
                )
            batchs = BatchSampler(Sampler(ds, shuffle, generator), batch_size, drop_last)
        elif (
            isinstance(batchs, int)
            or batch_size is not None
            or shuffle
            or drop_last
            or generator is not None
        ):
            raise TypeError(
                "DataLoader got both batchs and batch_size/shuffle/drop_last/generator: these "
                "belong to the BatchSampler; give one or the other"
            )
        self.ds, self.batchs, self.collate_fn = ds, batchs, collate_fn
        self.n_workers = _check_size("n_workers", n_workers, 0)

    def __len__(self) -> int:
        if not isinstance(self.batchs, Sized):
            raise TypeError(
                f"DataLoader: its batchs ({type(self.batchs).__name__}) has no len(), so the "
                "number of batches is unknown"
            )
        return len(self.batchs)

    def __iter__(self) -> Iterator[Any]:
        if self.n_workers == 0:
            for b in self.batchs:
                yield self.collate_fn(self.ds[i] for i in b)
            return
        with mp.Pool(self.n_workers, _start_worker, (self.ds, self.collate_fn)) as pool:
            yield from pool.imap(_worker_batch, iter(self.batchs))  # in order, as they come
