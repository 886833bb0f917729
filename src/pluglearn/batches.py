"""Batches of any structure: move them, collate them, and find their inputs, targets and size.

A batch is whatever the loader yields: an ``(inputs, targets)`` pair (the default step's
shape), a dict (``{"input_ids": ..., "labels": ...}``, the Hugging Face shape), a dataclass,
a named tuple, or any nesting of these. The functions here walk such structures:

* :func:`to_device` moves every tensor inside (``Device`` uses it on each batch);
* :func:`collate` stacks a list of items into one batch of the same structure (the default
  ``collate_fn`` of the Learner's loaders): dicts of tensors become a dict of stacked tensors,
  dataclasses a dataclass of stacked fields, nested tuples nested tuples;
* :func:`inputs_of` / :func:`targets_of` give ``learn.xb`` / ``learn.yb``: the pair's parts,
  or for a mapping everything but ``labels`` and ``batch["labels"]``;
* :func:`count_items` is how many items a batch holds (metrics average per item).

Example::

    >>> items = [{"x": torch.zeros(3), "labels": 1}, {"x": torch.ones(3), "labels": 0}]
    >>> batch = collate(items)
    >>> batch["x"].shape, batch["labels"].tolist(), count_items(batch)
    (torch.Size([2, 3]), [1, 0], 2)
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

#: the key of the targets in a mapping batch (the Hugging Face convention)
LABELS = "labels"


def is_pair(batch: Any) -> bool:
    """True for an ``(inputs, targets)`` pair: a tuple (named tuples too) or list of length 2."""
    return isinstance(batch, (tuple, list)) and len(batch) == 2


def _is_dataclass_instance(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def map_tensors(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """``obj`` with ``fn`` applied to every tensor inside tuples, named tuples, lists, mappings
    and dataclasses; other leaves are kept as they are. Containers keep their type."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        moved = [map_tensors(fn, o) for o in obj]
        return type(obj)(*moved) if hasattr(obj, "_fields") else type(obj)(moved)
    if isinstance(obj, Mapping):
        moved_map = {k: map_tensors(fn, v) for k, v in obj.items()}
        try:  # keep the mapping's type (OrderedDict, a BatchEncoding) when it builds from a dict
            return type(obj)(moved_map)
        except TypeError:
            return moved_map
    if _is_dataclass_instance(obj):
        changes = {f.name: map_tensors(fn, getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return dataclasses.replace(obj, **{k: v for k, v in changes.items() if _init(obj, k)})
    return obj


def _init(obj: Any, name: str) -> bool:
    return next(f for f in dataclasses.fields(obj) if f.name == name).init


def to_device(obj: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """``obj`` with every tensor inside (see :func:`map_tensors`) moved to ``device``."""
    return map_tensors(lambda t: t.to(device, non_blocking=non_blocking), obj)


def first_tensor(obj: Any) -> torch.Tensor | None:
    """The first tensor found in ``obj`` (depth first, in field order), or None."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        children: Any = obj.values()
    elif isinstance(obj, (list, tuple)):
        children = obj
    elif _is_dataclass_instance(obj):
        children = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    else:
        return None
    for child in children:
        found = first_tensor(child)
        if found is not None:
            return found
    return None


def inputs_of(batch: Any) -> Any:
    """``learn.xb``: the first part of a pair; for a mapping, every entry but ``labels``."""
    if is_pair(batch):
        return batch[0]
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k != LABELS}
    raise TypeError(_not_split(batch, "inputs"))


def targets_of(batch: Any) -> Any:
    """``learn.yb``: the second part of a pair; for a mapping, ``batch["labels"]``."""
    if is_pair(batch):
        return batch[1]
    if isinstance(batch, Mapping):
        if LABELS not in batch:
            raise KeyError(
                f"this dict batch has no {LABELS!r} entry (keys: {', '.join(map(str, batch))}), "
                f"so it has no targets (learn.yb): name the targets {LABELS!r} in the dataset's "
                "items."
            )
        return batch[LABELS]
    raise TypeError(_not_split(batch, "targets"))


def _not_split(batch: Any, part: str) -> str:
    return (
        f"learn.{'xb' if part == 'inputs' else 'yb'}: the batch is a {type(batch).__name__}, "
        f"which has no {part} pluglearn knows of (it knows (inputs, targets) pairs and dicts with "
        f"a {LABELS!r} key): read learn.batch directly in your plugin, or make the dataset "
        "return (x, y) pairs."
    )


def count_items(batch: Any) -> int:
    """How many items ``batch`` holds: the length of a pair's targets (or a mapping's
    ``labels``), else the leading size of its first tensor."""
    if is_pair(batch) or (isinstance(batch, Mapping) and LABELS in batch):
        leaf = targets_of(batch)
        if not isinstance(leaf, torch.Tensor):
            try:
                return len(leaf)
            except TypeError:
                leaf = first_tensor(leaf)
    else:
        leaf = first_tensor(batch)
    if leaf is None:
        raise TypeError(
            f"cannot count the items of a batch of type {type(batch).__name__}: it holds no "
            "tensor. Make the dataset return tensors (or numbers, which collate to tensors)."
        )
    return leaf.shape[0] if leaf.ndim else 1


def collate(items: Sequence[Any]) -> Any:
    """Stack a list of dataset items into one batch of the same structure.

    Tensors and numpy arrays are stacked on a new first dimension; ints and bools become an
    int64 or bool tensor and floats a float64 tensor (as ``torch``'s ``default_collate``); strings
    and bytes stay a list. Tuples (named tuples too), lists, mappings and dataclasses are
    collated field by field, keeping their type, so ``[(x, y), ...]`` gives ``(xb, yb)`` and
    ``[{"x": x, "labels": y}, ...]`` gives ``{"x": xb, "labels": yb}``.
    """
    items = list(items)
    if not items:
        raise ValueError("collate needs at least one item: the batch is empty.")
    if any(item is None for item in items):
        raise TypeError(
            f"the dataset returned None for {sum(i is None for i in items)} of the "
            f"{len(items)} items of this batch: its __getitem__ must return the item, e.g. "
            "(x, y) (is a `return` missing?)."
        )
    first = items[0]
    kinds = {_kind(item) for item in items}
    if len(kinds) > 1:
        raise TypeError(
            f"collate: the items of one batch have different types ({', '.join(sorted(kinds))}): "
            "make the dataset return one structure for every item."
        )
    np = sys.modules.get("numpy")
    if isinstance(first, torch.Tensor):
        return torch.stack(items)
    if np is not None and isinstance(first, (np.ndarray, np.generic)):
        return torch.stack([torch.as_tensor(item) for item in items])
    if isinstance(first, (bool, int, float)):  # floats as float64, as torch's default_collate
        dtype = torch.float64 if any(isinstance(i, float) for i in items) else None
        return torch.tensor(items, dtype=dtype)
    if isinstance(first, (str, bytes)):
        return items
    if isinstance(first, Mapping):
        keys = list(first)
        for item in items:
            if set(item) != set(keys):
                raise ValueError(
                    f"collate: dict items of one batch have different keys ({keys} and "
                    f"{list(item)}): make the dataset return the same keys for every item."
                )
        merged = {k: collate([item[k] for item in items]) for k in keys}
        try:
            return type(first)(merged)
        except TypeError:
            return merged
    if _is_dataclass_instance(first):
        names = [f.name for f in dataclasses.fields(first) if f.init]
        return type(first)(**{n: collate([getattr(item, n) for item in items]) for n in names})
    if isinstance(first, (tuple, list)):
        if any(len(item) != len(first) for item in items):
            raise ValueError(
                "collate: every item of a batch must have the same number of fields, got "
                f"lengths {sorted({len(item) for item in items})}."
            )
        fields = [collate(list(column)) for column in zip(*items, strict=True)]
        if hasattr(first, "_fields"):
            return type(first)(*fields)
        return type(first)(fields)
    raise TypeError(
        f"collate does not know how to batch a {type(first).__name__}: return tensors, numbers, "
        "strings, or tuples/dicts/dataclasses of them from the dataset, or pass "
        "DataLoaders.from_datasets(..., collate_fn=your_function)."
    )


def _kind(item: Any) -> str:
    if isinstance(item, (bool, int, float)):
        return "number"
    return type(item).__name__


def detach(obj: Any) -> Any:
    """``obj`` with every tensor inside detached."""
    return map_tensors(torch.Tensor.detach, obj)


def concat(parts: Sequence[Any]) -> Any:
    """Concatenate batches of one structure along the first dimension (tensors inside tuples,
    mappings and dataclasses), e.g. the predictions of every batch of a pass."""
    parts = list(parts)
    if not parts:
        raise ValueError("concat needs at least one batch: the pass yielded none.")
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat([p if p.ndim else p.reshape(1) for p in parts])
    if isinstance(first, Mapping):
        return {k: concat([p[k] for p in parts]) for k in first}
    if _is_dataclass_instance(first):
        names = [f.name for f in dataclasses.fields(first) if f.init]
        return type(first)(**{n: concat([getattr(p, n) for p in parts]) for n in names})
    if isinstance(first, (tuple, list)):
        fields = [concat(list(column)) for column in zip(*parts, strict=True)]
        return type(first)(*fields) if hasattr(first, "_fields") else type(first)(fields)
    return [x for p in parts for x in (p if isinstance(p, list) else [p])]


def take(obj: Any, index: int) -> Any:
    """Item ``index`` of a batch: every tensor inside indexed on its first dimension."""
    return map_tensors(lambda t: t[index], obj)
