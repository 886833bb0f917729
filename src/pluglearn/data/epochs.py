"""Resumable epochs: the order of each epoch, its batches, and a per-item loader built on them.

The production twins of the notebook's ``Sampler``, ``BatchSampler`` and ``DataLoader``
(:mod:`pluglearn.scratch.data`): the same orders and batches, plus a position that a checkpoint
can save and a fresh loader can resume from in O(1), without fetching the batches already
delivered.

* :class:`EpochOrder` draws each epoch's order (``torch.randperm`` from a generator when
  shuffling) and counts the items delivered (``cursor``, in items).
* :class:`EpochBatches` cuts the order into batches and hands out an :class:`EpochPlan`: the
  batches one iteration still has to deliver.
* :class:`ItemLoader` fetches ``dataset[i]`` per item and collates, the ``DefaultLoader``'s
  answer for map-style datasets; :class:`~pluglearn.data.multiprocess.MultiprocessDataLoader`
  does the same in worker processes.

The state (``state_dict()``) is one flat dict of plain values and uint8 tensors, safe for
``torch.load(weights_only=True)``: ``batch_size``, ``drop_last``, ``shuffle``, ``n_items``, the
position (``epoch``, ``cursor`` in items, ``in_epoch``) and, when shuffling, the generator states
(``rng``, and ``rng_epoch_start`` inside an epoch). Loading it into a loader whose settings
differ is refused: the position and the permutation only mean something for the same settings.

Many processes: ``EpochBatches(..., rank=r, world_size=W)`` cuts the same global batches on every
rank and hands rank ``r`` its contiguous slice of each
(:func:`~pluglearn.distributed.ranks.shard_bounds`), so ``batch_size`` is the global batch and the
position (in global items) is the same on every rank. A training plan keeps an empty slice (a last
batch with fewer items than ranks: every rank must take part in each step); with ``skip_empty``
(validation) it is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sized
from typing import Any, NamedTuple

import torch
from fastcore.all import chunked

from ..distributed.ranks import shard_bounds
from .batch_ops import collate

__all__ = ["EpochBatches", "EpochOrder", "EpochPlan", "ItemLoader", "no_items"]


def _dataset_size(data: int | Sized) -> int:
    if isinstance(data, bool) or not isinstance(data, (int, Sized)):
        raise TypeError(
            f"expected a dataset with __len__ or an int size, got {type(data).__name__}: "
            "give a map-style dataset (one with __len__ and __getitem__)"
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
        raise ValueError(
            f"generator must live on the CPU, got one on {generator.device}: "
            "pass torch.Generator() (the CPU one)"
        )
    return generator


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as a positive int, or an error naming the problem."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"batch_size must be a positive int, got {batch_size!r}: e.g. 64")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size}: e.g. 64")
    return batch_size


class EpochOrder:
    """The order of each epoch over ``n`` items, with the position inside the current epoch.

    ``range(n)``, or when shuffling ``torch.randperm(n, generator=generator)`` drawn afresh each
    epoch (the order torch's ``RandomSampler`` draws from the same generator). Without a
    generator a private one is seeded from torch's global RNG, so ``torch.manual_seed`` fixes it.
    """

    def __init__(
        self, data: int | Sized, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> None:
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

    def _rng(self) -> torch.Generator:
        """The generator a shuffled order draws from (``__init__`` makes one when shuffling)."""
        assert self.generator is not None
        return self.generator

    def start_epoch(self) -> list[int]:
        """Begin an epoch, or continue the one restored by ``load_state``; return the indices
        still to visit. An epoch in progress is abandoned (it still counts)."""
        self.run += 1
        if self._resume:
            self._resume = False
            if self.shuffle:  # redraw the saved epoch's permutation, then continue the
                saved_start, saved_now = self._epoch_rng, self._resume_rng  # generator where
                assert saved_start is not None and saved_now is not None  # load_state set both
                self._rng().set_state(saved_start)  # it was saved
                order = self._draw_order()
                self._rng().set_state(saved_now)
                return order[self.cursor :]
            return self._draw_order()[self.cursor :]
        if self.in_epoch:
            self.epoch += 1
        self.in_epoch, self.cursor = True, 0
        if self.shuffle:
            self._epoch_rng = self._rng().get_state()
        return self._draw_order()

    def _draw_order(self) -> list[int]:
        if self.shuffle:
            return torch.randperm(self.n, generator=self.generator).tolist()
        return list(range(self.n))

    def advance(self, n_items: int, *, end: bool = False, run: int | None = None) -> None:
        """Record that ``n_items`` more items were delivered; ``end`` closes the epoch, so a state
        saved after the last batch already points at the next epoch."""
        if run is not None and run != self.run:
            raise RuntimeError(
                "this iterator was superseded by a newer iter() over the same loader: "
                "only the latest iteration may continue; call iter() again"
            )
        self.cursor += n_items
        if end:
            self.in_epoch, self.cursor, self.epoch = False, 0, self.epoch + 1

    def __iter__(self) -> Iterator[int]:
        order, run = self.start_epoch(), self.run
        for k, i in enumerate(order):
            self.advance(1, end=k == len(order) - 1, run=run)
            yield i

    def state(self) -> dict[str, Any]:
        """The position and the generator states (ints, bools and uint8 tensors)."""
        state: dict[str, Any] = dict(
            shuffle=self.shuffle,
            n_items=self.n,
            epoch=self.epoch,
            cursor=self.cursor,
            in_epoch=self.in_epoch,
        )
        if self.shuffle:
            rng = self._resume_rng if self._resume else self._rng().get_state()
            epoch_rng = self._epoch_rng
            # a shuffled epoch in progress began in start_epoch() or load_state(): both set them
            assert rng is not None and (epoch_rng is not None or not self.in_epoch)
            state["rng"] = rng.clone()
            if epoch_rng is not None and self.in_epoch:
                state["rng_epoch_start"] = epoch_rng.clone()
        return state

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state()``; the next ``iter()`` continues that epoch where it stopped."""
        _refuse_other_settings(state, shuffle=self.shuffle, n_items=self.n)
        epoch, cursor, in_epoch = int(state["epoch"]), int(state["cursor"]), bool(state["in_epoch"])
        if epoch < 0 or not 0 <= cursor < self.n or (cursor and not in_epoch):
            raise ValueError(
                f"corrupt loader state: epoch {epoch}, cursor {cursor} of {self.n} items, "
                f"in_epoch={in_epoch}: resume from a checkpoint this loader saved"
            )
        self.epoch, self.cursor, self.in_epoch, self._resume = epoch, cursor, in_epoch, in_epoch
        if self.shuffle and in_epoch:
            self._epoch_rng = state["rng_epoch_start"].clone()
            self._resume_rng = state["rng"].clone()
        elif self.shuffle:
            self._rng().set_state(state["rng"])
        self.run += 1  # iterators from before the load must not touch the restored position


_WHY = {
    "batch_size": "the saved position counts batches of that size, so another one would skip "
    "or repeat items",
    "drop_last": "the epoch's last short batch is kept or dropped differently",
    "shuffle": "the saved position is a place in a different order",
    "n_items": "the saved permutation covers another dataset",
}


def _refuse_other_settings(state: Mapping[str, Any], **mine: Any) -> None:
    """Raise a ValueError naming the first setting whose saved value differs from ``mine``."""
    missing = [key for key in mine if key not in state]
    if missing:
        raise ValueError(
            f"the saved loader state has no {', '.join(missing)}: it was written by an older "
            "pluglearn or another loader; start a new run instead of resuming from it"
        )
    for key, value in mine.items():
        saved = state[key]
        if saved != value:
            raise ValueError(
                f"cannot resume: the loader state was saved with {key}={saved!r} but this loader "
                f"has {key}={value!r} ({_WHY[key]}): resume with {key}={saved!r}, the setting "
                "of the saved run, or start a new run without resume_from"
            )


class EpochPlan(NamedTuple):
    """The batches one iteration still has to deliver."""

    epoch: int  # index of the epoch, counting from 0
    first: int  # index within the epoch of ``batches[0]`` (> 0 when resuming)
    batches: list[list[int]]
    run: int  # the order's run id; a newer start_epoch() makes this plan stale
    sizes: list[int] | None = None  # items of each global batch, when sharded across ranks
    emptied: int | None = None  # a batch to fetch as one item and hand out with none (see below)


def no_items(batch: Any) -> Any:
    """``batch`` with every tensor cut to zero items (a rank's empty slice of a short last
    training batch keeps the structure and dtypes of a real batch)."""
    if isinstance(batch, torch.Tensor):
        return batch[:0]
    if isinstance(batch, (tuple, list)):
        return type(batch)(no_items(b) for b in batch)
    if isinstance(batch, dict):
        return {k: no_items(v) for k, v in batch.items()}
    return batch


class EpochBatches:
    """Cuts each epoch of ``order`` into lists of ``batch_size`` indices (fastcore's
    ``chunked``); ``drop_last`` drops a final short batch. Resumable: see the module doc."""

    def __init__(
        self,
        order: EpochOrder,
        batch_size: int,
        drop_last: bool = False,
        *,
        rank: int = 0,
        world_size: int = 1,
        skip_empty: bool = False,
    ) -> None:
        self.batch_size, self.drop_last = check_batch_size(batch_size), bool(drop_last)
        if not (isinstance(world_size, int) and world_size >= 1 and 0 <= rank < world_size):
            raise ValueError(
                f"rank={rank!r}, world_size={world_size!r}: give 0 <= rank < world_size "
                "(pluglearn.distributed.ranks.rank() and world_size() under torch.distributed)"
            )
        self.rank, self.world_size, self.skip_empty = rank, world_size, bool(skip_empty)
        self.order = order
        #: items of the global batch whose slice was delivered last (the same on every rank)
        self.global_items = 0
        if self.batch_size < world_size:
            raise ValueError(
                f"batch_size={self.batch_size} is smaller than the {world_size} processes: "
                "batch_size is the global batch, split across the ranks; give at least "
                f"batch_size={world_size} (a multiple of {world_size} splits evenly)."
            )

    def __len__(self) -> int:
        n, bs = len(self.order), self.batch_size
        full, rest = divmod(n, bs)
        if not rest or self.drop_last:
            return full
        empty = self.skip_empty and shard_bounds(rest, self.rank, self.world_size)[0] == rest
        return full + (0 if empty else 1)

    def start_epoch(self) -> EpochPlan:
        """Begin (or resume) an epoch; report each delivered batch with ``advance``."""
        order = self.order.start_epoch()
        first = self.order.cursor // self.batch_size
        batches = list(chunked(order, self.batch_size, drop_last=self.drop_last))
        sizes, emptied = None, None
        if self.world_size > 1:  # this rank's slice of each global batch
            sizes = [len(b) for b in batches]
            bounds = [shard_bounds(len(b), self.rank, self.world_size) for b in batches]
            full, batches = batches, [b[lo:hi] for b, (lo, hi) in zip(batches, bounds, strict=True)]
            if batches and not batches[-1] and self.skip_empty:
                batches.pop()  # its items go with the batch before it, for the position
                dropped = sizes.pop()
                if sizes:
                    sizes[-1] += dropped
            elif batches and not batches[-1]:  # fetched as one item, handed out with none
                emptied, batches[-1] = len(batches) - 1, full[-1][:1]
        if not batches:  # nothing left to deliver: the epoch is already over
            self.order.advance(0, end=True)
        return EpochPlan(self.order.epoch, first, batches, self.order.run, sizes, emptied)

    def advance(self, plan: EpochPlan, j: int) -> None:
        """Record that ``plan.batches[j]`` was delivered to the consumer; ``global_items``
        becomes the size of the global batch it is a slice of."""
        last = j == len(plan.batches) - 1
        n = plan.sizes[j] if plan.sizes is not None else len(plan.batches[j])
        self.global_items = n
        self.order.advance(n, end=last, run=plan.run)

    def __iter__(self) -> Iterator[list[int]]:
        plan = self.start_epoch()
        for j, batch in enumerate(plan.batches):
            self.advance(plan, j)
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """``{"batch_size", "drop_last", "shuffle", "n_items", "epoch", "cursor", "in_epoch",
        ["rng", "rng_epoch_start"]}``, the cursor counted in items."""
        return dict(batch_size=self.batch_size, drop_last=self.drop_last, **self.order.state())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict()``; refuses one saved with other settings, naming it."""
        _refuse_other_settings(
            state,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            shuffle=self.order.shuffle,
            n_items=self.order.n,
        )
        if int(state["cursor"]) % self.batch_size:
            raise ValueError(
                f"corrupt loader state: cursor {state['cursor']} is not at a batch boundary of "
                f"batch_size={self.batch_size}; resume from a checkpoint this loader saved"
            )
        self.order.load_state(state)


class ItemLoader:
    """Yields ``collate_fn([dataset[i] for i in batch])`` for each batch of indices, resumable
    mid-epoch exactly and in O(1) (see the module doc)."""

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        collate_fn: Callable[[list[Any]], Any] = collate,
        generator: torch.Generator | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        skip_empty: bool = False,
    ) -> None:
        if not callable(collate_fn):
            raise TypeError(
                f"collate_fn must be callable, got {type(collate_fn).__name__}: pass a function "
                "that turns a list of items into a batch"
            )
        self.dataset, self.collate_fn = dataset, collate_fn
        self.batches = EpochBatches(
            EpochOrder(dataset, shuffle, generator),
            batch_size,
            drop_last,
            rank=rank,
            world_size=world_size,
            skip_empty=skip_empty,
        )

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def global_items(self) -> int:
        """Items of the global batch whose slice this loader handed out last."""
        return self.batches.global_items

    def __iter__(self) -> Iterator[Any]:
        plan = self.batches.start_epoch()
        for j, idxs in enumerate(plan.batches):
            batch = self.collate_fn([self.dataset[i] for i in idxs])
            if j == plan.emptied:
                batch = no_items(batch)
            self.batches.advance(plan, j)  # only once the batch exists
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """See :meth:`EpochBatches.state_dict`."""
        return self.batches.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """See :meth:`EpochBatches.load_state_dict`."""
        self.batches.load_state_dict(state)
