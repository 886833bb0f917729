"""How a training loader's interrupted epoch is reproduced at a resume: exactly, or refused.

Three kinds of loader (:func:`loader_kind`):

* **stateful**: it has ``state_dict`` / ``load_state_dict`` (pluglearn's own loaders, torchdata's
  ``StatefulDataLoader``). Its state goes into the checkpoint and the resume is O(1): the
  loader continues where it was, workers included.
* **known**: a list or tuple of batches, or a torch ``DataLoader`` over a map-style dataset whose
  sampler and batch sampler are torch's own. Its order is decided by the random states when the
  epoch's iterator is made: the global ones (``shuffle=True`` without a generator draws from
  torch's global generator, and so do the workers' seeds) and the ``torch.Generator`` objects it
  holds (``DataLoader(generator=g)``). The loop records those states at the start of every
  training epoch (:func:`epoch_order`); a resume puts them back, makes the iterator, reads the
  batches before the cut (O(batches): their items are fetched, a warning says so), then puts
  back the random states of the cut. The order is the uninterrupted run's, bit for bit.
* **unknown**: any other iterable (an ``IterableDataset``, a custom sampler, a generator of its
  own). It is replayed the same way, and the last batch read must equal the last batch the
  saved run trained on (a digest of its tensors and strings, :func:`fingerprint`, is in the
  checkpoint); when it differs (the order or the items depend on state pluglearn cannot put
  back), the resume is refused, naming what to use instead.

A ``DataLoader`` with ``persistent_workers=True`` keeps its workers' random states from epoch to
epoch, which a resume cannot put back: it is replayed as *unknown* (checked).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from ..data.batch_tree import leaves_and_structure
from .rng import (
    find_generators,
    generator_states,
    rng_state,
    set_generator_states,
    set_rng_state,
)

if TYPE_CHECKING:
    from ..learner import Learner
    from .state import Resume

STATEFUL, KNOWN, UNKNOWN = "stateful", "known", "unknown"

USE_INSTEAD = (
    "use DataLoaders.from_datasets(...) (resumable in O(1)) or torchdata's StatefulDataLoader "
    "(pip install torchdata; its state goes into the checkpoint), or resume from a checkpoint "
    "written at an epoch's end"
)


def _torch_samplers() -> tuple[type, ...]:
    from torch.utils import data

    return (
        data.SequentialSampler,
        data.RandomSampler,
        data.SubsetRandomSampler,
        data.WeightedRandomSampler,
        data.BatchSampler,
        data.distributed.DistributedSampler,
    )


def loader_kind(loader: Any) -> str:
    """``"stateful"``, ``"known"`` or ``"unknown"`` (see the module doc)."""
    if callable(getattr(loader, "state_dict", None)) and callable(
        getattr(loader, "load_state_dict", None)
    ):
        return STATEFUL
    if isinstance(loader, (list, tuple)):
        return KNOWN
    from torch.utils.data import DataLoader, IterableDataset

    if type(loader) is DataLoader and not isinstance(loader.dataset, IterableDataset):
        samplers = _torch_samplers()
        own = type(loader.sampler) in samplers and (
            loader.batch_sampler is None or type(loader.batch_sampler) in samplers
        )
        pinned_workers = loader.num_workers > 0 and loader.persistent_workers
        if own and not pinned_workers:
            return KNOWN
    return UNKNOWN


def loader_generators(learn: Learner) -> list[torch.Generator]:
    """Every ``torch.Generator`` the Learner's loaders and datasets draw from, in a fixed order."""
    dls = learn.dls
    roots = [getattr(dls, "generator", None), dls.train, dls.valid, dls.train_ds, dls.valid_ds]
    return find_generators(roots)


def epoch_order(learn: Learner) -> dict[str, Any]:
    """What decides the order of the epoch about to start: the global random states and those of
    the loaders' generators (recorded just before the epoch's iterator is made)."""
    return {"rng": rng_state(), "generators": generator_states(loader_generators(learn))}


def replay(learn: Learner, loader: Iterable[Any], resume: Resume) -> Iterator[Any]:
    """An iterator over ``loader`` positioned after the ``resume.position`` batches the saved run
    trained on in its interrupted epoch (see the module doc); refused with an error naming what
    to use instead when that epoch cannot be reproduced."""
    from ..checkpoint.files import CheckpointError

    if resume.order is None:
        raise CheckpointError(
            f"the checkpoint was written {resume.position} batches into an epoch by a run whose "
            f"training loader ({type(loader).__name__}) has no state_dict, and it does not record "
            f"the random states that epoch started from, so its order cannot be reproduced: "
            f"{USE_INSTEAD}."
        )
    generators = loader_generators(learn)
    cut_rng, cut_generators = rng_state(), generator_states(generators)
    set_rng_state(resume.order["rng"])
    set_generator_states(generators, resume.order["generators"])
    batches = iter(loader)
    last = None
    try:
        for read in range(resume.position):
            try:
                last = next(batches)
            except StopIteration:
                raise CheckpointError(
                    f"the training loader ({type(loader).__name__}) yielded {read} batches in "
                    f"the resumed epoch, and the checkpoint was written after "
                    f"{resume.position}: the loader or its dataset changed; resume with the "
                    "data the run was saved with."
                ) from None
    finally:  # the cut's random states, as the saved run had them after that batch
        set_rng_state(cut_rng)
        set_generator_states(generators, cut_generators)
    if resume.fingerprint is not None and fingerprint(last) != resume.fingerprint:
        raise CheckpointError(
            f"the training loader ({type(loader).__name__}) cannot be resumed mid-epoch exactly: "
            f"read again from the start of the interrupted epoch, its batch "
            f"{resume.position - 1} differs from the one the saved run trained on (its order or "
            "its items depend on state pluglearn cannot put back: an IterableDataset, a sampler "
            "with a private generator, random transforms, persistent workers). To resume, "
            f"{USE_INSTEAD}."
        )
    return batches


def resume_stateful(learn: Learner, loader: Iterable[Any]) -> Iterator[Any]:
    """An iterator over a stateful ``loader`` whose state a resume loaded: it continues the
    interrupted epoch. Making it may draw random numbers (a torch ``DataLoader`` draws its
    workers' base seed), which the saved run drew when that epoch began, before the cut: the
    random states are put back as the checkpoint had them."""
    generators = loader_generators(learn)
    cut_rng, cut_generators = rng_state(), generator_states(generators)
    try:
        return iter(loader)
    finally:
        set_rng_state(cut_rng)
        set_generator_states(generators, cut_generators)


def fingerprint(batch: Any) -> str:
    """A digest of ``batch``: its structure (containers, keys, classes) and every leaf in walk
    order, a tensor by its dtype, shape and bytes, anything else by its ``repr``."""
    leaves, structure = leaves_and_structure(batch)
    digest = hashlib.sha256(structure.encode())
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            t = leaf.detach().cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(tensor_bytes(t))
        else:
            digest.update(repr(leaf).encode())
    return digest.hexdigest()


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The bytes of a contiguous tensor's values, the same with or without numpy installed."""
    raw = t.reshape(-1).view(torch.uint8)
    try:
        import numpy  # noqa: F401  (the fast path)
    except ImportError:
        return bytes(raw.tolist())
    return raw.numpy().tobytes()
