"""DataLoaders (the train/valid pair a Learner reads) and the fast loader for in-memory tensors.

``DataLoaders(train_dl, valid_dl)`` takes ready iterables of ``(xb, yb)`` batches (a torch
``DataLoader`` works as is). ``DataLoaders.from_datasets(train_ds, valid_ds, batch_size=64)``
keeps the datasets and lets the Learner obtain loaders from the ``make_dataloader`` hook at the
start of each fit, so a plugin (the multiprocessing loader, say) decides how batches are made.

:class:`TensorBatchLoader` is the default for in-memory tensors: one index operation fetches a
whole batch (the notebook's closing insight: no per-item ``__getitem__`` and no collate), and the
training set is shuffled each epoch with a seedable ``torch.Generator``. Its ``state_dict`` lets a
checkpoint resume mid-epoch in O(1): the generator state of the epoch start and a cursor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..learner import Learner


def check_batch_size(batch_size: object, what: str = "batch_size") -> int:
    """``batch_size`` as a positive int, or an error that says so."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{what} must be a positive int, got {batch_size!r}.")
    return batch_size


def tensors_of(dataset: Any) -> tuple[torch.Tensor, ...] | None:
    """The tensors behind an in-memory dataset (a ``TensorDataset`` or an ``(x, y)`` tuple of
    tensors of equal length), or None when ``dataset`` is something else."""
    tensors = getattr(dataset, "tensors", dataset)
    if (
        isinstance(tensors, (tuple, list))
        and len(tensors) >= 1
        and all(isinstance(t, torch.Tensor) for t in tensors)
    ):
        lengths = {len(t) for t in tensors}
        if len(lengths) != 1:
            raise ValueError(
                f"the dataset's tensors have different lengths {sorted(lengths)}: inputs and "
                "targets must have one row per item."
            )
        return tuple(tensors)
    return None


class TensorBatchLoader:
    """Batches of in-memory tensors by one index operation each; resumable mid-epoch.

    >>> x, y = torch.arange(10.).unsqueeze(1), torch.arange(10)
    >>> [len(yb) for _, yb in TensorBatchLoader((x, y), batch_size=4)]
    [4, 4, 2]
    """

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.tensors = tuple(tensors)
        self.n = len(self.tensors[0])
        if self.n == 0:
            raise ValueError("the dataset is empty: a loader needs at least one item.")
        self.batch_size = check_batch_size(batch_size)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.generator = generator if generator is not None else torch.Generator()
        self.position = 0  # batches of the open epoch handed out (0: no epoch open)
        self._resume = False  # the next iteration continues the epoch restored by a load
        self._epoch_rng = self.generator.get_state()  # generator state at the epoch's start

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        start, resume, self._resume = self.position, self._resume, False
        if resume:  # redraw the interrupted epoch's permutation from its saved state
            self.generator.set_state(self._epoch_rng)
        else:
            start, self._epoch_rng = 0, self.generator.get_state()
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else None
        bs, tensors, n_batches = self.batch_size, self.tensors, len(self)
        for i in range(start, n_batches):
            # handing out the last batch closes the epoch: a state saved after it starts the next
            self.position = 0 if i + 1 == n_batches else i + 1
            if order is None:
                yield tuple(t[i * bs : (i + 1) * bs] for t in tensors)
            else:
                idx = order[i * bs : (i + 1) * bs]
                yield tuple(t[idx] for t in tensors)

    def state_dict(self) -> dict[str, Any]:
        """Where the open epoch stands: ``position`` batches handed out, the generator state at
        the epoch's start (to redraw its permutation) and now (for the epochs after)."""
        return {
            "position": self.position,
            "epoch_rng": self._epoch_rng.clone(),
            "rng": self.generator.get_state(),
            "n": self.n,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next iteration resumes its open epoch at ``position``
        without fetching the batches before it, or starts the next epoch as the saved run would."""
        if state.get("n") != self.n:
            raise ValueError(
                f"the loader state is for a dataset of {state.get('n')} items, this one has "
                f"{self.n}: resume with the same data."
            )
        position = int(state["position"])
        if not 0 <= position < len(self):
            raise ValueError(f"loader position {position} is outside 0..{len(self) - 1}.")
        self.position, self._resume = position, position > 0
        self._epoch_rng = state["epoch_rng"].clone()
        self.generator.set_state(state["rng"].clone())


class DataLoaders:
    """The training and validation batches of a Learner.

    ``DataLoaders(train_dl, valid_dl)`` takes ready iterables; ``valid_dl`` may be None (fit
    then skips validation). :meth:`from_datasets` defers the loaders to the ``make_dataloader``
    hook and keeps the settings (``batch_size``, ``valid_batch_size``, ``drop_last``, ``seed``)
    that loader plugins read. One seeded generator drives the shuffling of every fit.
    """

    def __init__(self, train: Iterable[Any], valid: Iterable[Any] | None = None) -> None:
        for name, dl in (("train", train), ("valid", valid)):
            if dl is not None and not hasattr(dl, "__iter__"):
                raise TypeError(
                    f"the {name} loader must be an iterable of (xb, yb) batches, got "
                    f"{type(dl).__name__}: for a dataset use DataLoaders.from_datasets(...)."
                )
        self.train, self.valid = train, valid
        self.train_ds: Any = None
        self.valid_ds: Any = None
        self.batch_size = self.valid_batch_size = 0
        self.drop_last = False
        self.generator = torch.Generator()
        self.collate_fn: Callable[[list[Any]], Any] | None = None

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
        for name, ds in (("train_ds", train_ds), ("valid_ds", valid_ds)):
            if ds is None and name == "train_ds":
                raise ValueError("train_ds is None: a Learner needs training data.")
            if ds is not None and tensors_of(ds) is None and not hasattr(ds, "__getitem__"):
                raise TypeError(
                    f"{name} must be a map-style dataset (with __len__ and __getitem__) or a tuple "
                    f"of tensors, got {type(ds).__name__}: for a ready iterable of batches use "
                    "DataLoaders(train_dl, valid_dl)."
                )
            if ds is not None and len(ds if tensors_of(ds) is None else tensors_of(ds)[0]) == 0:
                raise ValueError(f"{name} is empty: a dataset needs at least one item.")
        dls = cls.__new__(cls)
        dls.train = dls.valid = None
        dls.train_ds, dls.valid_ds = train_ds, valid_ds
        dls.batch_size = check_batch_size(batch_size)
        dls.valid_batch_size = check_batch_size(
            valid_batch_size or 2 * batch_size, "valid_batch_size"
        )
        dls.drop_last = drop_last
        dls.generator = torch.Generator()
        dls.generator.manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
        dls.collate_fn = collate_fn
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
