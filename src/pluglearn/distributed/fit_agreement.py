"""What the ranks of a fit agree on at its start, for ``DDP`` and ``FSDP``: its settings and
its loader seed.

:func:`agree_on_fit` is the fit's first collective (one ``all_gather_object``): every rank sends
its :func:`fingerprint` (lr, batch sizes, epochs and ``max_steps``, the datasets' lengths, the
plugins in order and their settings, the loss and its reduction, the optimizer class) and rank
0 the state of the loaders' shuffling generators. A setting that differs is refused on every
rank, naming it and each rank's value (else one rank would train with another lr, or the ranks
would wait on each other until a timeout); then every rank takes rank 0's generator states, so
all draw one permutation, however each rank was seeded. The cancels raised during the fit are
agreed in :mod:`pluglearn.distributed.cancel_agreement`.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any

import torch

from ..data.arrays import tensors_of
from ..hooks.guards import plugin_name
from ..plugins.train_step import loss_reduction
from ..run.replay import loader_generators
from . import ranks as pdist

if TYPE_CHECKING:
    from ..learner import Learner

_SIMPLE = (type(None), bool, int, float, str)


def _simple(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(isinstance(v, _SIMPLE) for v in value)
    return isinstance(value, _SIMPLE)


def plugin_settings(plugin: object) -> dict[str, Any]:
    """The constructor arguments ``plugin`` keeps as same-named attributes, simple values only
    (numbers, strings, None, and tuples or lists of them).

    Example: ``plugin_settings(EarlyStopping(patience=3))["patience"] == 3``."""
    try:
        params = inspect.signature(type(plugin).__init__).parameters.values()
    except (TypeError, ValueError):
        return {}
    kept = vars(plugin) if hasattr(plugin, "__dict__") else {}
    return {
        p.name: kept[p.name]
        for p in params
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name in kept
        if _simple(kept[p.name])
    }


def _name(fn: Any) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    target = fn if isinstance(fn, type) or not isinstance(fn, torch.nn.Module) else type(fn)
    qualname = getattr(target, "__qualname__", type(target).__qualname__)
    return f"{getattr(target, '__module__', '')}.{qualname}"


def _items(dataset: Any, loader: Any) -> str | None:
    """How much data one rank reads per epoch: the dataset's items, else the loader's batches."""
    if dataset is None:
        dataset = getattr(loader, "dataset", None)
    if dataset is not None:
        tensors = tensors_of(dataset)
        return f"{len(tensors[0]) if tensors is not None else len(dataset)} items"
    if loader is not None and hasattr(loader, "__len__"):
        return f"{len(loader)} batches"
    return None


def fingerprint(learn: Learner) -> dict[str, Any]:
    """What must be equal on every rank of a fit, by setting name (see the module doc)."""
    from ..plugins.budget import StepBudget

    dls = learn.dls
    budget = [p.max_steps for p in learn.plugins if isinstance(p, StepBudget)]
    said: dict[str, Any] = {
        "lr": learn.lr,
        "batch_size": dls.batch_size or getattr(dls.train, "batch_size", None),
        "valid_batch_size": dls.valid_batch_size or getattr(dls.valid, "batch_size", None),
        "epochs": learn.n_epochs,
        "max_steps": budget[0] if budget else None,
        "train data": _items(dls.train_ds, dls.train),
        "valid data": _items(dls.valid_ds, dls.valid),
        "plugins": [plugin_name(p) for p in learn.plugins],
        "loss": _name(learn.loss_func),
        "loss reduction": loss_reduction(learn.loss_func),
        "optimizer": _name(type(learn.opt)),
        "loader generators": len(loader_generators(learn)),
    }
    for plugin in learn.plugins:
        for key, value in plugin_settings(plugin).items():
            said[f"{plugin_name(plugin)}({key}=)"] = value
    return said


def disagreements(prints: list[dict[str, Any]]) -> list[str]:
    """One line per setting whose value differs between the ranks' fingerprints (a setting
    that only some ranks have belongs to a plugin the ``plugins`` line already names)."""
    lines = []
    for key in prints[0]:
        if not all(key in p for p in prints):
            continue
        values = [repr(p[key]) for p in prints]
        if len(set(values)) > 1:
            lines.append(f"{key}: " + ", ".join(f"{v} on rank {r}" for r, v in enumerate(values)))
    return lines


def agree_on_fit(learn: Learner, who: str) -> None:
    """Refuse a fit whose settings differ between the ranks, on every rank; else give every
    rank rank 0's loader generator states (see the module doc). One collective."""
    generators = loader_generators(learn)
    mine = (fingerprint(learn), [g.get_state() for g in generators] if pdist.rank() == 0 else None)
    said = pdist.all_gather(mine)
    lines = disagreements([fp for fp, _ in said])
    if lines:
        raise ValueError(
            f"{who}: the ranks' fits differ in what every rank must share (each rank trains "
            "its slice of one run):\n  " + "\n  ".join(lines) + "\nGive every rank the same "
            "settings: a value computed from the rank (or drawn from a per-rank seed) makes "
            "ranks disagree."
        )
    for generator, state in zip(generators, said[0][1], strict=True):
        generator.set_state(state)
