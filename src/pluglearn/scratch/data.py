"""Datasets, samplers, collation and a resumable single-process DataLoader, from scratch.

The data half of "Implementing a Neural Network from Scratch": a `Dataset` pairs inputs with
targets, a `Sampler` decides the order of one epoch, a `BatchSampler` cuts that order into
batches, `collate` stacks a batch's items, and `DataLoader` ties them together.

Resumable state: `state_dict()` records the position inside the current epoch together with the
random-generator state saved when that epoch began. Loading it into a fresh loader redraws the
same permutation and starts at the saved cursor, so resuming costs O(1) fetches instead of
replaying the skipped batches, and every later epoch matches the uninterrupted run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from typing import Any, NamedTuple

import torch
from fastcore.all import chunked, store_attr

__all__ = ["BatchSampler", "DataLoader", "Dataset", "EpochPlan", "Sampler", "collate"]


class Dataset:
    """Pairs inputs `x` with targets `y`; `ds[i]` is `(x[i], y[i])`.

    Indexing with a slice, a list or a tensor of indices returns the whole batch at once, the
    fast path when `x` and `y` are tensors.
    """

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


def _take(seq: Any, idx: slice | list | torch.Tensor) -> Any:
    # Tensors index with a list or tensor in one call; plain sequences need a loop.
    if isinstance(seq, torch.Tensor) or isinstance(idx, slice):
        return seq[idx]
    return [seq[int(j)] for j in idx]


def collate(items: Sequence[Any]) -> Any:
    """Merge a list of samples into a batch, like `torch.utils.data.default_collate`.

    Tensors and numpy arrays are stacked; ints, floats and bools become 1-d tensors (floats as
    float64, as torch does); strings stay a list; tuples, named tuples, lists and mappings are
    collated field by field. Unlike torch, a tuple stays a tuple, so `[(x, y), ...]` gives
    `(xb, yb)`.
    """
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
        try:  # keep the mapping's type when it can be built from a dict
            return type(first)(fields)
        except TypeError:
            return fields
    if isinstance(first, Sequence):
        if any(len(item) != len(first) for item in items):
            raise ValueError("collate: every sample in a batch must have the same number of fields")
        fields = [collate(list(field)) for field in zip(*items, strict=True)]
        if isinstance(first, tuple) and hasattr(first, "_fields"):
            return type(first)(*fields)
        return tuple(fields) if isinstance(first, tuple) else fields
    raise TypeError(
        f"collate does not know how to batch a {type(first).__name__}: "
        "pass a collate_fn that handles it"
    )


def _dataset_size(data: int | Sized) -> int:
    if isinstance(data, bool) or not isinstance(data, (int, Sized)):
        raise TypeError(
            f"expected a dataset with __len__ or an int size, got {type(data).__name__}"
        )
    n = data if isinstance(data, int) else len(data)
    if n <= 0:
        raise ValueError(f"the dataset is empty (size {n}): give the loader at least one item")
    return n


def _check_generator(generator: Any) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator, got {type(generator).__name__}: "
            "pass e.g. generator=torch.Generator().manual_seed(0)"
        )
    if generator.device.type != "cpu":
        raise ValueError(f"generator must live on the CPU, got one on {generator.device}")
    return generator


class Sampler:
    """The order of one epoch over `n` items: `range(n)`, or a fresh permutation when shuffling.

    Each `iter()` starts a new epoch. The permutation is drawn with `torch.randperm` from
    `generator`, so a seeded generator reproduces torch's `RandomSampler`. Without one, a
    private generator is seeded from torch's global RNG, so `torch.manual_seed` fixes it too.
    """

    def __init__(
        self, data: int | Sized, shuffle: bool = False, generator: torch.Generator | None = None
    ):
        self.n, self.shuffle = _dataset_size(data), bool(shuffle)
        if generator is not None:
            generator = _check_generator(generator)
        elif self.shuffle:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
            generator = torch.Generator().manual_seed(seed)
        self.generator = generator
        self.epoch = 0  # the current epoch, or the next one between epochs
        self.cursor = 0  # items of the current epoch handed out so far
        self.in_epoch = False
        self.run = 0  # bumped by every start_epoch(), to catch a superseded iteration
        self._epoch_rng: torch.Tensor | None = None  # generator state when this epoch began
        self._resume = False  # a loaded, unfinished epoch waits for the next start_epoch()
        self._resume_rng: torch.Tensor | None = None  # generator state when it was saved

    def __len__(self) -> int:
        return self.n

    def start_epoch(self) -> list[int]:
        """Begin an epoch, or continue the one restored by `load_state_dict`; return the
        indices still to visit. An epoch in progress is abandoned (it still counts)."""
        self.run += 1
        if self._resume:
            self._resume = False
            if self.shuffle:  # redraw the saved epoch's permutation, then continue the
                self.generator.set_state(self._epoch_rng)  # generator where it was saved
                order = self._draw_order()
                self.generator.set_state(self._resume_rng)
                return order[self.cursor :]
            return self._draw_order()[self.cursor :]
        if self.in_epoch:
            self.epoch += 1
        self.in_epoch, self.cursor = True, 0
        if self.shuffle:
            self._epoch_rng = self.generator.get_state()
        return self._draw_order()

    def _draw_order(self) -> list[int]:
        if self.shuffle:
            return torch.randperm(self.n, generator=self.generator).tolist()
        return list(range(self.n))

    def advance(self, n_items: int, *, end: bool = False, run: int | None = None) -> None:
        """Record that `n_items` more items were delivered; `end` closes the epoch. Marking the
        end together with the last delivery means a state saved after the last batch already
        points at the next epoch."""
        if run is not None and run != self.run:
            raise RuntimeError(
                "this iterator was superseded by a newer iter() over the same loader: "
                "only the latest iteration may continue"
            )
        self.cursor += n_items
        if end:
            self.in_epoch, self.cursor, self.epoch = False, 0, self.epoch + 1

    def __iter__(self) -> Iterator[int]:
        order, run = self.start_epoch(), self.run
        for k, i in enumerate(order):
            self.advance(1, end=k == len(order) - 1, run=run)
            yield i

    def state_dict(self) -> dict[str, Any]:
        """Position in the epoch plus generator states (tensors and ints only)."""
        state: dict[str, Any] = dict(
            n=self.n,
            shuffle=self.shuffle,
            epoch=self.epoch,
            cursor=self.cursor,
            in_epoch=self.in_epoch,
        )
        if self.shuffle:
            rng = self._resume_rng if self._resume else self.generator.get_state()
            state["rng"] = rng.clone()
            if self.in_epoch:
                state["rng_epoch_start"] = self._epoch_rng.clone()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict()`; the next `iter()` continues that epoch where it stopped."""
        for key, mine in (("n", self.n), ("shuffle", self.shuffle)):
            if state[key] != mine:
                raise ValueError(
                    f"state has {key}={state[key]!r} but this sampler has {key}={mine!r}: "
                    "load it into a loader over the same dataset with the same settings"
                )
        epoch, cursor, in_epoch = int(state["epoch"]), int(state["cursor"]), bool(state["in_epoch"])
        if epoch < 0 or not 0 <= cursor < self.n or (cursor and not in_epoch):
            raise ValueError(f"corrupt sampler state: epoch {epoch}, cursor {cursor}, n={self.n}")
        self.epoch, self.cursor, self.in_epoch, self._resume = epoch, cursor, in_epoch, in_epoch
        if self.shuffle and in_epoch:
            self._epoch_rng = state["rng_epoch_start"].clone()
            self._resume_rng = state["rng"].clone()
        elif self.shuffle:
            self.generator.set_state(state["rng"])
        self.run += 1  # iterators from before the load must not touch the restored position


class EpochPlan(NamedTuple):
    """The batches one iteration still has to deliver."""

    epoch: int  # index of the epoch, counting from 0
    first: int  # index within the epoch of `batches[0]` (> 0 when resuming)
    batches: list[list[int]]
    run: int  # the sampler's run id; a newer start_epoch() makes this plan stale


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"batch_size must be a positive int, got {batch_size!r}: e.g. 64")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size}: e.g. 64")
    return batch_size


class BatchSampler:
    """Cuts each epoch of `sampler` into lists of `batch_size` indices (with fastcore's
    `chunked`); `drop_last` drops a final short batch."""

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool = False):
        self.batch_size, self.drop_last = _check_batch_size(batch_size), bool(drop_last)
        self.sampler = sampler

    def __len__(self) -> int:
        n, bs = len(self.sampler), self.batch_size
        return n // bs if self.drop_last else -(-n // bs)

    def start_epoch(self) -> EpochPlan:
        """Begin (or resume) an epoch; report each delivered batch with `advance`."""
        order = self.sampler.start_epoch()
        first = self.sampler.cursor // self.batch_size
        batches = list(chunked(order, self.batch_size, drop_last=self.drop_last))
        if not batches:  # nothing left to deliver: the epoch is already over
            self.sampler.advance(0, end=True)
        return EpochPlan(self.sampler.epoch, first, batches, self.sampler.run)

    def advance(self, plan: EpochPlan, j: int) -> None:
        """Record that `plan.batches[j]` was delivered to the consumer."""
        last = j == len(plan.batches) - 1
        self.sampler.advance(len(plan.batches[j]), end=last, run=plan.run)

    def __iter__(self) -> Iterator[list[int]]:
        plan = self.start_epoch()
        for j, batch in enumerate(plan.batches):
            self.advance(plan, j)
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return dict(
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            sampler=self.sampler.state_dict(),
        )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key in ("batch_size", "drop_last"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"state was saved with {key}={state[key]!r} but this loader has "
                    f"{key}={getattr(self, key)!r}: the saved position is counted in those "
                    "batches, so build the loader with the same settings"
                )
        if state["sampler"]["cursor"] % self.batch_size:
            raise ValueError("state's cursor is not at a batch boundary of this batch_size")
        self.sampler.load_state_dict(state["sampler"])


class DataLoader:
    """Yields `collate_fn([dataset[i] for i in batch])` for each batch of indices.

    `state_dict()` / `load_state_dict()` resume mid-epoch exactly, without fetching the
    batches already delivered (see the module docstring).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        collate_fn: Callable[[list[Any]], Any] = collate,
        generator: torch.Generator | None = None,
    ):
        if not callable(collate_fn):
            raise TypeError(f"collate_fn must be callable, got {type(collate_fn).__name__}")
        self.dataset, self.collate_fn = dataset, collate_fn
        self.batch_sampler = BatchSampler(
            Sampler(dataset, shuffle, generator), batch_size, drop_last
        )

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[Any]:
        plan = self.batch_sampler.start_epoch()
        for j, idxs in enumerate(plan.batches):
            batch = self.collate_fn([self.dataset[i] for i in idxs])
            self.batch_sampler.advance(plan, j)  # only once the batch exists
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """`{"batch_size", "drop_last", "sampler": {"n", "shuffle", "epoch", "cursor",
        "in_epoch", ["rng", "rng_epoch_start"]}}`."""
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.batch_sampler.load_state_dict(state)
