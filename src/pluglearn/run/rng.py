"""Random states: the global generators (python, numpy, torch, CUDA) and the ``torch.Generator``
objects a Learner's loaders and datasets draw from.

A run is reproducible only when every generator that decides it is put back: the global ones
decide dropout, a torch ``DataLoader(shuffle=True)``'s order and the seeds of its workers; a
``DataLoader(generator=g)`` draws its order from ``g``; a dataset may keep a generator for its
augmentations. :func:`find_generators` finds the ``torch.Generator`` objects reachable from the
loaders (their samplers, batch samplers and datasets), so that capturing a run captures them too.

>>> g = torch.Generator().manual_seed(0)
>>> class Loader: pass
>>> loader = Loader(); loader.sampler = Loader(); loader.sampler.generator = g
>>> find_generators([loader]) == [g]
True
"""

from __future__ import annotations

import numbers
import random
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

#: how deep find_generators looks below each root (loader -> batch_sampler -> sampler -> g)
DEPTH = 4
#: containers longer than this are data (a list of batches), not settings: not searched
MAX_CHILDREN = 16


def rng_state() -> dict[str, Any]:
    """The global random states of python, numpy (when installed), torch and CUDA (when
    initialised), as values a checkpoint can hold (numpy's keys as an int64 tensor)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        legacy = np.random.get_state()
        assert isinstance(legacy, tuple)  # the global RandomState is an MT19937: the legacy form
        kind, keys, pos, has_gauss, gauss = legacy
        state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back the global random states of :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, gauss_next = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def random_states_kept() -> Iterator[None]:
    """Put the global random states back after the block, whatever it drew (a dataset's
    ``__getitem__`` with augmentations, an installed plugin's import, a seeded worker batch).

    >>> with random_states_kept():
    ...     _ = torch.rand(3)
    """
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def find_generators(roots: Iterable[Any], depth: int = DEPTH) -> list[torch.Generator]:
    """The ``torch.Generator`` objects reachable from ``roots`` through object attributes,
    short lists, tuples and dicts, at most ``depth`` steps down, each once, in a fixed order
    (so two Learners built alike list theirs alike). Tensors, modules, numbers and strings are
    not searched."""
    found: list[torch.Generator] = []
    seen: set[int] = set()

    def visit(obj: Any, left: int) -> None:
        if obj is None or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Generator):
            found.append(obj)
            return
        if left == 0 or isinstance(
            obj, (torch.Tensor, torch.nn.Module, str, bytes, numbers.Number, type)
        ):
            return
        if isinstance(obj, (list, tuple)):
            children: Any = obj if len(obj) <= MAX_CHILDREN else ()
        elif isinstance(obj, dict):
            children = obj.values() if len(obj) <= MAX_CHILDREN else ()
        else:
            children = getattr(obj, "__dict__", {}).values()
        for child in list(children):
            visit(child, left - 1)

    for root in roots:
        visit(root, depth)
    return found


def generator_states(generators: Iterable[torch.Generator]) -> list[torch.Tensor]:
    """Each generator's state, in order."""
    return [g.get_state() for g in generators]


def set_generator_states(generators: list[torch.Generator], states: list[torch.Tensor]) -> None:
    """Put back :func:`generator_states`; a different number of generators is an error naming
    both counts (the loaders are not the ones the states were taken from)."""
    if len(generators) != len(states):
        raise ValueError(
            f"the loaders draw from {len(generators)} torch.Generator(s), the saved run's from "
            f"{len(states)}: build the loaders (and their samplers and datasets) as the run "
            "that was saved did."
        )
    for generator, state in zip(generators, states, strict=True):
        generator.set_state(state)
