"""MultiprocessLoader: batches made by worker processes, one pool per fit, reproducible.

It answers ``make_dataloader`` (a plain ``hookimpl``, so before the built-in ``DefaultLoader``)
for any map-style dataset, a ``TensorDataset`` or an ``(x, y)`` tuple of tensors, with a
:class:`~pluglearn.data.multiprocess.MultiprocessDataLoader` built from the settings of
``learn.dls``: ``batch_size`` (``valid_batch_size`` for validation), ``drop_last`` (training
only), ``collate_fn`` (else the scratch ``collate``), and shuffling of the training set with
``learn.dls.generator``, the same permutations the ``DefaultLoader`` draws.

The pool starts with the first batch of the fit (so ``learn.validate()`` never starts a pool
for the training set), serves every epoch of the fit, and is shut down when the fit ends: after
success, an error, a cancel or Ctrl-C (the Learner calls the loader's ``close()``).

Reproducible: each batch is made under a seed derived from ``(base seed, epoch, batch)``, so a
dataset with random transforms gives the same batches, hence bit-identical training, with 0
(in-process), 1 or 8 workers. The base seed is derived from the state of ``learn.dls.generator``
when the fit starts (without drawing from it), so ``DataLoaders.from_datasets(seed=...)`` fixes
shuffling and transforms alike, and a second fit continues with fresh ones. Checkpoints keep the
training loader's state (the Learner saves it) and the validation loader's (this plugin's
``state_dict``), so a resumed fit sees the same transforms as an uninterrupted one.

Example::

    dls = DataLoaders.from_datasets(AugmentedImages(train), AugmentedImages(valid), 64, seed=0)
    learn = Learner(model, dls, plugins=[MultiprocessLoader(n_workers=2)])
    learn.fit(5)             # two workers make the batches; none is left when fit returns
"""

from __future__ import annotations

import hashlib
import multiprocessing
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..data.arrays import tensors_of
from ..data.batch_ops import collate
from ..data.multiprocess import MultiprocessDataLoader
from ..distributed.ranks import rank, world_size
from ..hooks.markers import hookimpl

if TYPE_CHECKING:
    from ..learner import Learner

__all__ = ["MultiprocessLoader", "TensorItems"]


class TensorItems:
    """A map-style view of in-memory tensors: item ``i`` is ``(t[i] for t in tensors)``.

    Module-level (so spawn workers can unpickle it) and tiny: the tensors travel to each
    worker once, when the pool starts.

    >>> TensorItems((torch.arange(3), torch.arange(3) * 10))[2]
    (tensor(2), tensor(20))
    """

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.tensors = tuple(tensors)

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[i] for t in self.tensors)


def _check_int(name: str, value: object, low: int, none_ok: bool) -> None:
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        allowed = f"an int >= {low}" + (" or None" if none_ok else "")
        raise ValueError(f"MultiprocessLoader({name}={value!r}): give {allowed}.")


class MultiprocessLoader:
    """Answers ``make_dataloader`` with a pool of ``n_workers`` processes per fit (see the
    module doc). ``n_workers=0`` makes the same batches in this process (for debugging);
    ``valid=False`` leaves the validation set to the next plugin (``DefaultLoader``); ``seed``
    is mixed into the per-batch seeds (another seed, other random transforms, same shuffling);
    ``prefetch`` bounds the batches in flight (default ``2 * n_workers``); ``start_method`` is
    ``"fork"``, ``"spawn"`` or ``"forkserver"`` (default: the platform's).
    """

    def __init__(
        self,
        n_workers: int = 2,
        start_method: str | None = None,
        seed: int | None = None,
        valid: bool = True,
        prefetch: int | None = None,
    ) -> None:
        # checked here, so a mistake fails when the plugin is built and not at the first batch
        _check_int("n_workers", n_workers, 0, none_ok=False)
        _check_int("prefetch", prefetch, 1, none_ok=True)
        _check_int("seed", seed, 0, none_ok=True)
        methods = multiprocessing.get_all_start_methods()
        if start_method is not None and start_method not in methods:
            raise ValueError(
                f"MultiprocessLoader(start_method={start_method!r}): give one of {methods} or None."
            )
        self.n_workers, self.start_method, self.seed = n_workers, start_method, seed
        self.valid, self.prefetch = bool(valid), prefetch
        self._valid_dl: weakref.ref[MultiprocessDataLoader] | None = None

    def _base_seed(self, generator: torch.Generator, train: bool) -> int:
        # A digest of the generator's state, not a draw from it: shuffling stays exactly what
        # the DefaultLoader would draw, yet every fit (whose shuffles moved the state) and
        # every DataLoaders seed gets its own transforms.
        digest = hashlib.blake2b(bytes(generator.get_state().tolist()), digest_size=8)
        digest.update(f"/{self.seed}/{'train' if train else 'valid'}".encode())
        return int.from_bytes(digest.digest(), "little") >> 2  # < 2**62: a plain int anywhere

    @hookimpl
    def make_dataloader(
        self, learn: Learner, dataset: Any, train: bool
    ) -> MultiprocessDataLoader | None:
        if not (train or self.valid):
            return None  # the next plugin answers for the validation set
        dls = learn.dls
        if isinstance(dataset, (tuple, list)) and tensors_of(dataset) is not None:
            dataset = TensorItems(dataset)  # an (x, y) tuple is no map-style dataset itself
        loader = MultiprocessDataLoader(
            dataset,
            dls.batch_size if train else dls.valid_batch_size,
            shuffle=train,
            drop_last=dls.drop_last and train,
            collate_fn=dls.collate_fn or collate,
            n_workers=self.n_workers,
            seed=self._base_seed(dls.generator, train),
            generator=dls.generator if train else None,
            start_method=self.start_method,
            prefetch=self.prefetch,
            rank=rank(),  # under torch.distributed: this rank's slice of every global batch
            world_size=world_size(),
            skip_empty=not train,
        )
        if not train:
            self._valid_dl = weakref.ref(loader)
        return loader

    def _valid_loader(self, learn: Learner) -> MultiprocessDataLoader | None:
        mine = self._valid_dl() if self._valid_dl is not None else None
        return mine if mine is not None and learn.dls.valid is mine else None

    # The Learner checkpoints the training loader; the validation loader's seed and epoch are
    # this plugin's to keep, so a resumed fit validates on the same transforms.
    @hookimpl
    def state_dict(self, learn: Learner) -> dict[str, Any] | None:
        loader = self._valid_loader(learn)
        return {"valid": loader.state_dict()} if loader is not None else None

    @hookimpl
    def load_state_dict(self, learn: Learner, state: dict[str, Any]) -> None:
        loader = self._valid_loader(learn)
        if loader is not None and "valid" in state:
            loader.load_state_dict(state["valid"])

    def __repr__(self) -> str:
        return (
            f"MultiprocessLoader(n_workers={self.n_workers}, start_method={self.start_method!r}, "
            f"seed={self.seed}, valid={self.valid}, prefetch={self.prefetch})"
        )
