"""Batches of any structure: move, detach, collate, concatenate, count and index them.

A batch is whatever the loader yields: an ``(inputs, targets)`` pair (the default step's
shape), a dict (``{"input_ids": ..., "labels": ...}``, the Hugging Face shape), a dataclass, a
named tuple, or any nesting of these. Every walk over one goes through optree, with the node
types of :mod:`pluglearn.data.batch_tree` (tuples, named tuples, mappings and dataclasses, each
rebuilt with its own type; see there for lists):

* :func:`to_device`, :func:`detach`, :func:`map_tensors` map every tensor inside;
* :func:`collate` stacks dataset items into one batch (the loaders' default ``collate_fn``);
* :func:`concat` joins batches in item order (``get_preds``'s predictions and targets);
* :func:`count_items` is how many items a batch holds (metrics average per item), :func:`take`
  its item ``i``, :func:`head` its first ``n`` items (``take`` with ``slice(0, n)``: a
  ``DistributedSampler``'s padding cut off a validation batch under DDP);
* :func:`inputs_of` / :func:`targets_of` give ``learn.xb`` / ``learn.yb``: the pair's parts, or
  for a mapping everything but ``labels`` and ``batch["labels"]``.

The leaves, and what each walk does with them (the one place in code is
:data:`pluglearn.data.batch_rules.LEAF_RULES`; a test keeps the two in step)::

    kind    collate (items -> batch)  concat (batches -> one)     count         take(i)
    ------  ------------------------  --------------------------  ------------  -----------
    tensor  stacked on a new dim 0    joined on dim 0 (0-dim as   leading size  t[i] (0-dim
                                      length 1)                   (0-dim: 1)    kept)
    array   a tensor, stacked         one entry per batch         -             kept
    number  a bool / int64 / float64  one entry per batch         -             kept
            tensor
    text    a list of them            one entry per batch         -             kept
    items   a list of the items'      the lists joined flat, in   its length    entry i
            entries                   item order
    other   an error naming it        one entry per batch         -             kept

A *tensor* is a ``torch.Tensor``; an *array* a numpy array or numpy scalar; a *number* a bool,
int or float (as torch's ``default_collate``); *text* a str or bytes; *items* a list below the
top of a batch, one entry per item (concat checks it holds as many entries as its batch has
items); *other* anything else.

``None`` is an empty structure: every walk keeps it. The maps (``to_device``, ``detach``)
apply to tensors only, also inside the per-item lists, and keep every other leaf as it is.
``count_items`` gives the targets' count (a pair's ``[1]``, a mapping's ``labels``), else the
whole batch's: a structure's count is its first tensor's, else its first per-item list's,
walking dict entries in sorted key order (optree's order).

Example::

    >>> items = [{"x": torch.zeros(3), "labels": 1}, {"x": torch.ones(3), "labels": 0}]
    >>> batch = collate(items)
    >>> batch["x"].shape, batch["labels"].tolist(), count_items(batch)
    (torch.Size([2, 3]), [1, 0], 2)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from typing import Any

import torch

from .batch_rules import LEAF_RULES, TORCH_LISTS, entries_text, leaf_kind
from .batch_tree import Flat, all_leaves, flatten, mismatch, path_names, unflatten, walk_map

#: the key of the targets in a mapping batch (the Hugging Face convention)
LABELS = "labels"

_TENSOR = torch.Tensor


def is_pair(batch: Any) -> bool:
    """True for an ``(inputs, targets)`` pair: a tuple (named tuples too) or list of length 2."""
    return isinstance(batch, (tuple, list)) and len(batch) == 2


# ------------------------------------------------------------------------------------- maps


def map_tensors(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """``obj`` with ``fn`` applied to every tensor inside (lists at any depth included); other
    leaves are kept as they are, every structure is rebuilt with its own type.

    Example: ``map_tensors(lambda t: t * 2, {"x": torch.ones(2), "id": 7})``."""
    if type(obj) is _TENSOR:
        return fn(obj)
    return walk_map(lambda leaf: fn(leaf) if isinstance(leaf, _TENSOR) else leaf, obj)


def to_device(obj: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """``obj`` with every tensor inside (see :func:`map_tensors`) moved to ``device``;
    ``non_blocking`` copies overlap with compute on CUDA (from pinned memory).

    Example: ``to_device((xb, {"mask": m}), "cuda", non_blocking=True)``."""
    return map_tensors(lambda t: t.to(device, non_blocking=non_blocking), obj)


def detach(obj: Any) -> Any:
    """``obj`` with every tensor inside detached. Example: ``detach((preds, [aux]))``."""
    return map_tensors(_TENSOR.detach, obj)


def first_tensor(obj: Any) -> torch.Tensor | None:
    """The first tensor in ``obj`` (depth first; dict entries in sorted key order), or None.

    Example: ``first_tensor({"mask": m, "ids": ids}) is ids``."""
    if isinstance(obj, _TENSOR):
        return obj
    return next((leaf for leaf in all_leaves(obj) if isinstance(leaf, _TENSOR)), None)


# --------------------------------------------------------------------------- inputs, targets


def inputs_of(batch: Any) -> Any:
    """``learn.xb``: the first part of a pair; for a mapping, every entry but ``labels``.

    Example: ``inputs_of({"ids": ids, "labels": y}) == {"ids": ids}``."""
    if is_pair(batch):
        return batch[0]
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k != LABELS}
    raise TypeError(_not_split(batch, "inputs"))


def targets_of(batch: Any) -> Any:
    """``learn.yb``: the second part of a pair; for a mapping, ``batch["labels"]``.

    Example: ``targets_of((xb, yb)) is yb``."""
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


# ------------------------------------------------------------------------- count, take, join


def _count_flat(flat: Flat) -> tuple[int, str] | None:
    """The count of a flattened structure and the kind of leaf it came from: the first
    tensor's, else the first per-item list's (a tensor outside the lists is the surer count)."""
    for kind in ("tensor", "items"):
        count = LEAF_RULES[kind].count_leaf
        for leaf in flat.leaves:
            if count is not None and leaf_kind(leaf) == kind:
                return count(leaf), kind
    return None


def count_items(batch: Any) -> int:
    """How many items ``batch`` holds: the count of a pair's targets (or a mapping's
    ``labels``), else the whole batch's: its first tensor's leading size, else its first
    per-item list's length. Targets counted by a per-item list that disagrees with the batch's
    first tensor are refused (torch's default_collate makes tuples of targets such a list).

    Example: ``count_items((xb, (yb, ["a", "b"]))) == len(yb)``."""
    if type(batch) is tuple and len(batch) == 2 and type(batch[1]) is _TENSOR and batch[1].ndim:
        return batch[1].shape[0]  # the common (xb, yb) pair, without a walk
    targets = None
    if is_pair(batch) or (isinstance(batch, Mapping) and LABELS in batch):
        targets = _count_flat(flatten(targets_of(batch), top=False))  # a part: lists per item
        if targets is not None and targets[1] == "tensor":
            return targets[0]
    whole = _count_flat(flatten(batch, top=True))
    if targets is not None:  # counted by a per-item list: the batch's first tensor must agree
        if whole is not None and whole[1] == "tensor" and whole[0] != targets[0]:
            raise ValueError(
                f"count_items: the targets (learn.yb) are a list of {entries_text(targets[0])}, "
                f"one per item, but the batch's first tensor holds {whole[0]} items. "
                f"{TORCH_LISTS}"
            )
        return targets[0]
    if whole is None:
        raise TypeError(
            f"cannot count the items of a batch of type {type(batch).__name__}: it holds no "
            "tensor. Make the dataset return tensors (or numbers, which collate to tensors), or "
            "answer the count_items hook in a plugin."
        )
    return whole[0]


def take(obj: Any, index: int, top: bool = True) -> Any:
    """Item ``index`` of a batch: every tensor indexed on its first dimension, every per-item
    list's entry ``index``. ``top=False`` for a part of a batch (``learn.yb``, predictions),
    whose own list holds one entry per item.

    Example: ``take((xb, ["a", "b"]), 1) == (xb[1], "b")``."""
    flat = flatten(obj, top=top)
    return unflatten(flat, [LEAF_RULES[leaf_kind(v)].take(v, index) for v in flat.leaves])


def head(obj: Any, n: int, top: bool = True) -> Any:
    """The first ``n`` items of a batch, of the same structure: every tensor's first ``n`` rows,
    every per-item list's first ``n`` entries, the other leaves kept (as :func:`take` keeps
    them). ``top`` as for :func:`take`.

    Example: ``head({"x": xb, "names": ["a", "b"]}, 1) == {"x": xb[:1], "names": ["a"]}``."""
    flat = flatten(obj, top=top)
    first = slice(0, n)
    return unflatten(flat, [LEAF_RULES[leaf_kind(v)].take(v, first) for v in flat.leaves])


def collate(items: Sequence[Any]) -> Any:
    """Stack a list of dataset items into one batch of the same structure (see the module
    doc's table): ``[(x, y), ...]`` gives ``(xb, yb)``, ``[{"x": x, "labels": y}, ...]`` gives
    ``{"x": xb, "labels": yb}``, dataclasses a dataclass of stacked fields.

    Example: ``collate([(torch.zeros(2), "a"), (torch.ones(2), "b")])`` is
    ``(tensor of shape (2, 2), ["a", "b"])``."""
    items = list(items)
    if not items:
        raise ValueError("collate needs at least one item: the batch is empty.")
    if any(item is None for item in items):
        raise TypeError(
            f"the dataset returned None for {sum(i is None for i in items)} of the "
            f"{len(items)} items of this batch: its __getitem__ must return the item, e.g. "
            "(x, y) (is a `return` missing?)."
        )
    first = flatten(items[0], top=True)
    rows = []
    for item in items:  # each item flattened to the first one's leaves (9x cheaper than a walk)
        leaves = None
        if (type(item) is list) == first.top_list:
            with suppress(ValueError):  # another structure
                tree: Any = tuple(item) if first.top_list else item
                leaves = first.spec.flatten_up_to(tree)
        if leaves is None:
            raise mismatch(items[0], item, "collate: the items of one batch", "item")
        rows.append(leaves)
    out = []
    for position, column in enumerate(zip(*rows, strict=True)):
        where = _Where(items[0], True, "item", position)
        kinds = {leaf_kind(v) for v in column}
        if len(kinds) > 1:
            types = sorted({type(v).__name__ for v in column})
            raise TypeError(
                f"collate: the items of one batch have different types at {where} "
                f"({', '.join(types)}): make the dataset return one structure for every item."
            )
        out.append(LEAF_RULES[kinds.pop()].collate(list(column), where))
    return unflatten(first, out)


def concat(
    parts: Sequence[Any],
    top: bool = True,
    name: str = "batch",
    counts: Sequence[int] | None = None,
) -> Any:
    """Join batches of one structure in item order (see the module doc's table), e.g. the
    predictions of every batch of a pass. ``top=False`` for parts of batches (``learn.yb``,
    predictions), whose own list holds one entry per item; ``name`` names them in errors;
    ``counts`` gives each batch's items, which its per-item lists must match (by default each
    part's own count: its first tensor's leading size, else its first list's length).

    Example: ``concat([(y1, ["a"]), (y2, ["b", "c"])])`` is ``(cat([y1, y2]), ["a", "b", "c"])``."""
    parts = list(parts)
    if not parts:
        raise ValueError("concat needs at least one batch: the pass yielded none.")
    flats = [flatten(part, top=top) for part in parts]
    first = flats[0]
    for i, flat in enumerate(flats):
        if flat.spec != first.spec or flat.top_list != first.top_list:
            raise mismatch(parts[0], parts[i], f"concat: batch 0 and batch {i}", name, top)
    if counts is None:
        counts = [(_count_flat(flat) or (0, ""))[0] for flat in flats]
    elif len(counts) != len(parts):
        raise ValueError(f"concat: {len(parts)} batches but {len(counts)} counts.")
    counts = list(counts)
    out = []
    for position, column in enumerate(zip(*(f.leaves for f in flats), strict=True)):
        where = _Where(parts[0], top, name, position)
        kind = leaf_kind(column[0])
        for i, value in enumerate(column):
            if leaf_kind(value) != kind:
                raise TypeError(
                    f"concat: {where} is a {type(column[0]).__name__} in batch 0 but a "
                    f"{type(value).__name__} in batch {i}: return one structure for every batch."
                )
        out.append(LEAF_RULES[kind].concat(list(column), counts, where))
    return unflatten(first, out)


class _Where:
    """A leaf's place in a batch for an error message, worked out only when one is raised."""

    def __init__(self, obj: Any, top: bool, root: str, position: int) -> None:
        self.args = (obj, top, root, position)

    def __str__(self) -> str:
        obj, top, root, position = self.args
        return path_names(obj, top, root)[position]
