"""DataLoaders (the train/valid pair a Learner reads) and the fast loader for in-memory tensors.

``DataLoaders(train_dl, valid_dl)`` takes ready iterables of ``(xb, yb)`` batches (a torch
``DataLoader`` works as is). ``DataLoaders.from_datasets(train_ds, valid_ds, batch_size=64)``
keeps the datasets and lets the Learner obtain loaders from the ``make_dataloader`` hook at the
start of each fit, so a plugin (the multiprocessing loader, say) decides how batches are made.

:class:`TensorBatchLoader` is the default for in-memory tensors: one index operation fetches a
whole batch (the notebook's closing insight: no per-item ``__getitem__`` and no collate), and the
training set is shuffled each epoch with a seedable ``torch.Generator``. Its ``state_dict`` lets a
checkpoint resume mid-epoch in O(1): the generator state of the epoch start, a cursor in items,
and the settings that decide the order (a resume with another ``batch_size`` or ``drop_last``
is refused, as it would skip or repeat items).

Many processes (``rank``, ``world_size``; the :class:`~pluglearn.DDP` plugin's loaders get them from
:mod:`pluglearn.distributed.ranks`): ``batch_size`` is the *global* batch. Every rank draws the same
permutation from the same generator, cuts it into the same global batches, and takes its contiguous
slice of each (:func:`~pluglearn.distributed.ranks.shard_bounds`: B/W items when W divides B), so W
ranks see exactly the items one process would, batch by batch. A short last batch is split as evenly
as it goes; with fewer items than ranks some ranks get an empty slice: a training loader yields it
(every rank must take part in each step; the DDP plugin gives it zero weight), a validation loader
(``skip_empty``) skips it, so no item is counted twice or left out. The state (cursor in global
items, generator states) is the same on every rank, so a resume may use another number of ranks with
the same global batch. ``global_items`` is the size of the global batch that the batch just handed
out is a slice of: every rank knows it without communicating (the DDP plugin weights each rank's
loss by it).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..distributed.ranks import shard_bounds
from .arrays import as_dataset, check_input_dtype, tensors_of

if TYPE_CHECKING:
    from ..learner import Learner


def length_of(loader: Any) -> int | None:
    """How many batches ``loader`` yields per pass, or None when it cannot say (no ``__len__``,
    or one that raises ``TypeError``, as a torch ``DataLoader`` over an ``IterableDataset``
    without a length does)."""
    try:
        return len(loader)
    except TypeError:
        return None


def check_batch_size(batch_size: object, what: str = "batch_size") -> int:
    """``batch_size`` as a positive int, or an error that says so."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{what} must be a positive int, got {batch_size!r}.")
    return batch_size


def check_seed(seed: object) -> int:
    """``seed`` as an int torch's generators take, or an error naming the fix."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(
            f"seed must be an int, got {seed!r} ({type(seed).__name__}): pass e.g. seed=0 "
            "(int(seed) for a number read from a string or a config), or None to draw one "
            "from torch's global generator."
        )
    if not -(2**63) <= int(seed) < 2**64:
        raise ValueError(f"seed must lie in [-2**63, 2**64), got {seed}: pass e.g. seed=0.")
    return int(seed)


def draw_seed() -> int:
    """A seed drawn from torch's global generator (as torch's DataLoader draws its base seed):
    reproducible after ``torch.manual_seed``, and the global generator is never reseeded."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


class TensorBatchLoader:
    """Batches of in-memory tensors by one index operation each; resumable mid-epoch.

    >>> x, y = torch.arange(10.).unsqueeze(1), torch.arange(10)
    >>> [len(yb) for _, yb in TensorBatchLoader((x, y), batch_size=4)]
    [4, 4, 2]
    """

    #: the settings that decide which items each batch holds: a resume must keep them
    ORDER_SETTINGS = ("batch_size", "drop_last", "shuffle")

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        skip_empty: bool = False,
        pin_memory: bool = False,
    ) -> None:
        if not (isinstance(world_size, int) and world_size >= 1 and 0 <= rank < world_size):
            raise ValueError(
                f"rank={rank!r}, world_size={world_size!r}: give 0 <= rank < world_size "
                "(pluglearn.distributed.ranks.rank() and world_size() under torch.distributed)."
            )
        self.rank, self.world_size, self.skip_empty = rank, world_size, bool(skip_empty)
        self.tensors = tuple(tensors)
        self.n = len(self.tensors[0])
        if self.n == 0:
            raise ValueError("the dataset is empty: a loader needs at least one item.")
        self.batch_size = check_batch_size(batch_size)
        if self.batch_size < world_size:
            raise ValueError(
                f"batch_size={self.batch_size} is smaller than the {world_size} processes: "
                "batch_size is the global batch, split across the ranks; give at least "
                f"batch_size={world_size} (a multiple of {world_size} splits evenly)."
            )
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.generator = generator if generator is not None else torch.Generator()
        self.cursor = 0  # items of the open epoch handed out (0: no epoch open)
        self._resume = False  # the next iteration continues the epoch restored by a load
        self._epoch_rng = self.generator.get_state()  # generator state at the epoch's start
        #: items of the global batch whose slice was handed out last (the same on every rank)
        self.global_items = 0
        #: gather CPU columns straight into pinned memory (for a non_blocking copy to CUDA)
        self.pin_memory = bool(pin_memory)

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        if rest and not self.drop_last:
            short = self.skip_empty and shard_bounds(rest, self.rank, self.world_size)[0] == rest
            return full + (0 if short else 1)  # a skipped empty slice is no batch
        return full

    @property
    def epoch_items(self) -> int:
        """How many items an epoch hands out (``n``, less a short last batch with drop_last)."""
        return self.n - self.n % self.batch_size if self.drop_last else self.n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        start, resume, self._resume = self.cursor, self._resume, False
        if resume:  # redraw the interrupted epoch's permutation from its saved state
            self.generator.set_state(self._epoch_rng)
        else:
            start, self._epoch_rng = 0, self.generator.get_state()
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else None
        bs, tensors, end = self.batch_size, self.tensors, self.epoch_items
        rank, world = self.rank, self.world_size
        for first in range(start, end, bs):
            last = min(first + bs, end)
            # handing out the last batch closes the epoch: a state saved after it starts the next
            self.cursor = 0 if last == end else last
            lo, hi = first, last
            if world > 1:  # this rank's slice of the global batch
                lo, hi = shard_bounds(last - first, rank, world)
                if lo == hi and self.skip_empty:
                    continue
                lo, hi = first + lo, first + hi
            self.global_items = last - first
            if self.pin_memory:
                yield tuple(pinned_rows(t, lo, hi, order) for t in tensors)
            elif order is None:
                yield tuple(t[lo:hi] for t in tensors)
            else:
                idx = order[lo:hi]
                yield tuple(t[idx] for t in tensors)

    def state_dict(self) -> dict[str, Any]:
        """Where the open epoch stands: ``cursor`` items handed out, the generator state at the
        epoch's start (to redraw its permutation) and now (for the epochs after), and the
        settings that decide the order (``n``, ``batch_size``, ``drop_last``, ``shuffle``)."""
        return {
            "cursor": self.cursor,
            "n": self.n,
            **{key: getattr(self, key) for key in self.ORDER_SETTINGS},
            "epoch_rng": self._epoch_rng.clone(),
            "rng": self.generator.get_state(),
            "world_size": self.world_size,  # for messages: the state is the same on every rank
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next iteration resumes its open epoch at ``cursor``
        without fetching the items before it, or starts the next epoch as the saved run would.
        Refused, changing nothing, when :meth:`check_state_dict` refuses ``state``."""
        cursor = self.check_state_dict(state)
        self.cursor, self._resume = cursor, cursor > 0
        self._epoch_rng = state["epoch_rng"].clone()
        self.generator.set_state(state["rng"].clone())

    def check_state_dict(self, state: dict[str, Any]) -> int:
        """The cursor ``state`` resumes at, or a ValueError naming the fix; changes nothing.

        A state saved with other order settings is refused (the resume would skip or repeat
        items). A state of the older format (``position`` in batches, no settings) is read as
        saved with this loader's settings, which it could not record."""
        if state.get("n") != self.n:
            raise ValueError(
                f"the loader state is for a dataset of {state.get('n')} items, this one has "
                f"{self.n}: resume with the same data."
            )
        mismatched = [
            (key, state[key], getattr(self, key))
            for key in self.ORDER_SETTINGS
            if key in state and state[key] != getattr(self, key)
        ]
        if mismatched:
            saved = ", ".join(f"{key}={was!r}" for key, was, _ in mismatched)
            ranks = state.get("world_size", 1)
            if ranks != self.world_size:
                saved += (
                    f" (the global batch: {ranks} process(es) then, {self.world_size} now; "
                    "batch_size counts the items of all ranks together)"
                )
            raise ValueError(
                "the checkpoint's training loader ran with "
                + ", ".join(
                    f"{key}={was!r} (this one has {key}={now!r})" for key, was, now in mismatched
                )
                + f": the items would come in another order, so the resume would skip or repeat "
                f"some. Resume with {saved}, as the checkpoint was written, or start a new run "
                "(fit without resume_from)."
            )
        if "cursor" in state:
            cursor = int(state["cursor"])
        elif "position" in state:  # older format: batches handed out
            cursor = int(state["position"]) * self.batch_size
        else:
            raise ValueError(
                f"the loader state has no cursor (keys {sorted(state)}): it was not saved by a "
                "TensorBatchLoader. Resume from a checkpoint of this kind of run."
            )
        if not all(isinstance(state.get(k), torch.Tensor) for k in ("epoch_rng", "rng")):
            raise ValueError(
                "the loader state lacks its generator states (epoch_rng, rng): the checkpoint "
                "is corrupt; resume from another one or start a new run."
            )
        if not 0 <= cursor < self.epoch_items:
            raise ValueError(
                f"loader cursor {cursor} is outside 0..{self.epoch_items - 1} (items of an "
                "epoch): the checkpoint is corrupt or of other data; start a new run."
            )
        return cursor


def pinned_rows(tensor: torch.Tensor, lo: int, hi: int, order: torch.Tensor | None) -> torch.Tensor:
    """Rows ``lo:hi`` of ``tensor`` (in ``order`` when given) in pinned memory: one gather, no
    second copy; a tensor not on the CPU is indexed as it is. Needs CUDA."""
    if tensor.device.type != "cpu":
        return tensor[lo:hi] if order is None else tensor[order[lo:hi]]
    if order is None:
        return tensor[lo:hi].pin_memory()
    idx = order[lo:hi]
    out = torch.empty((len(idx), *tensor.shape[1:]), dtype=tensor.dtype, pin_memory=True)
    return torch.index_select(tensor, 0, idx, out=out)


class DataLoaders:
    """The training and validation batches of a Learner.

    ``DataLoaders(train_dl, valid_dl)`` takes ready iterables; ``valid_dl`` may be None (fit
    then skips validation). :meth:`from_datasets` defers the loaders to the ``make_dataloader``
    hook and keeps the settings (``batch_size``, ``valid_batch_size``, ``drop_last``, ``seed``)
    that loader plugins read. One seeded generator drives the shuffling of every fit.
    :meth:`for_inference` has no data at all (a Learner that only predicts).
    """

    def __init__(self, train: Iterable[Any] | None, valid: Iterable[Any] | None = None) -> None:
        for name, dl in (("train", train), ("valid", valid)):
            if dl is not None and not hasattr(dl, "__iter__"):
                raise TypeError(
                    f"the {name} loader must be an iterable of (xb, yb) batches, got "
                    f"{type(dl).__name__}: for a dataset use DataLoaders.from_datasets(...)."
                )
        # None: no loader (yet): from_datasets makes them at each fit, for_inference has none
        self.train: Iterable[Any] | None = train
        self.valid: Iterable[Any] | None = valid
        self.train_ds: Any = None
        self.valid_ds: Any = None
        self.batch_size = self.valid_batch_size = 0
        self.drop_last = False
        self.generator = torch.Generator()
        self.collate_fn: Callable[[list[Any]], Any] | None = None
        #: the shape of one input item when no dataset shows it (see :meth:`for_inference`)
        self.item_shape: tuple[int, ...] | None = None

    @classmethod
    def for_inference(cls, item_shape: Sequence[int] | None = None) -> DataLoaders:
        """No data: the DataLoaders of a Learner that predicts (``load_learner`` builds one).
        ``validate(dl=...)`` and ``get_preds(dl=...)`` take a loader; ``fit`` is an error until
        ``learn.dls`` is given data. ``item_shape``, the shape of one input item (its first
        tensor's, e.g. ``(784,)``), lets ``predict`` tell one item from a batch.

        >>> DataLoaders.for_inference(item_shape=(784,)).item_shape
        (784,)
        """
        if item_shape is not None and not (
            isinstance(item_shape, Sequence)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in item_shape)
        ):
            raise ValueError(
                f"item_shape must be a sequence of ints >= 0 (one input item's shape, e.g. "
                f"(784,)), got {item_shape!r}."
            )
        dls = cls(None)
        dls.item_shape = None if item_shape is None else tuple(item_shape)
        return dls

    @classmethod
    def from_datasets(
        cls,
        train_ds: Any,
        valid_ds: Any = None,
        batch_size: int = 64,
        *,
        valid_batch_size: int | None = None,
        drop_last: bool = False,
        seed: int | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> DataLoaders:
        """Loaders made by the ``make_dataloader`` hook at fit time (see the class doc)."""
        if train_ds is None:
            raise ValueError("train_ds is None: a Learner needs training data.")
        train_ds, valid_ds = as_dataset(train_ds, "train_ds"), as_dataset(valid_ds, "valid_ds")
        for name, ds in (("train_ds", train_ds), ("valid_ds", valid_ds)):
            tensors = tensors_of(ds) if ds is not None else None
            if ds is not None and tensors is None and not hasattr(ds, "__getitem__"):
                raise TypeError(
                    f"{name} must be a map-style dataset (with __len__ and __getitem__) or a tuple "
                    f"of tensors or numpy arrays, got {type(ds).__name__}: for a ready iterable of "
                    "batches use DataLoaders(train_dl, valid_dl)."
                )
            if ds is not None and len(ds if tensors is None else tensors[0]) == 0:
                raise ValueError(f"{name} is empty: a dataset needs at least one item.")
        batch_size = check_batch_size(batch_size)
        if valid_batch_size is None:
            valid_batch_size = 2 * batch_size
        elif isinstance(valid_batch_size, bool) or not isinstance(valid_batch_size, int):
            valid_batch_size = check_batch_size(valid_batch_size, "valid_batch_size")
        elif valid_batch_size < 1:
            raise ValueError(
                f"valid_batch_size must be a positive int, got {valid_batch_size}: pass None "
                f"for twice batch_size ({2 * batch_size})."
            )
        if not isinstance(drop_last, bool):
            raise ValueError(f"drop_last must be True or False, got {drop_last!r}.")
        dls = cls.__new__(cls)
        dls.train = dls.valid = None
        dls.train_ds, dls.valid_ds = train_ds, valid_ds
        dls.batch_size, dls.valid_batch_size = batch_size, valid_batch_size
        dls.drop_last = drop_last
        dls.generator = torch.Generator()
        # drawn from, never reseeding, the global generator: torch.manual_seed governs it
        dls.generator.manual_seed(check_seed(seed) if seed is not None else draw_seed())
        dls.collate_fn = collate_fn
        dls.item_shape = None
        return dls

    @property
    def resolved(self) -> bool:
        """True when every dataset already has its loader (ready loaders, or inside a fit)."""
        return (self.train_ds is None or self.train is not None) and (
            self.valid_ds is None or self.valid is not None
        )

    def resolve(self, learn: Learner, train: bool = True) -> list[Any]:
        """Ask ``make_dataloader`` for a loader per dataset (the validation one only, when
        ``train`` is False); returns the loaders made."""
        made = []
        for name, ds in (("train_ds", self.train_ds), ("valid_ds", self.valid_ds)):
            if (name == "valid_ds" or train) and getattr(self, name[:-3]) is None:
                check_input_dtype(learn.model, ds, name)
        try:
            for attr, ds, is_train in (
                ("train", self.train_ds, True),
                ("valid", self.valid_ds, False),
            ):
                if ds is None or getattr(self, attr) is not None or (is_train and not train):
                    continue
                dl = learn.hooks.call("make_dataloader", learn=learn, dataset=ds, train=is_train)
                if dl is None or not hasattr(dl, "__iter__"):
                    raise TypeError(
                        f"'make_dataloader' gave {type(dl).__name__} for the {attr} dataset: a "
                        "plugin must return an iterable of batches (or None to pass)."
                    )
                setattr(self, attr, dl)
                made.append(dl)
        except BaseException:
            self.release(made)
            raise
        return made

    def release(self, made: list[Any]) -> None:
        """Close and forget the loaders that :meth:`resolve` made."""
        for attr in ("train", "valid"):
            if getattr(self, attr) in made and getattr(self, f"{attr}_ds") is not None:
                setattr(self, attr, None)
        for dl in made:
            close = getattr(dl, "close", None)
            if callable(close):
                close()

    def __repr__(self) -> str:
        def describe(dl: Any, ds: Any) -> str:
            if dl is not None:
                return type(dl).__name__
            return f"dataset {type(ds).__name__}" if ds is not None else "None"

        return (
            f"DataLoaders(train={describe(self.train, self.train_ds)}, "
            f"valid={describe(self.valid, self.valid_ds)})"
        )
