"""The leaf rules of batches: what collate, concat, count and take do with each kind of leaf.

The one place in code of the table in :mod:`pluglearn.data.batch_ops`' module doc (a test keeps the
two in step): :data:`LEAF_RULES` maps each kind of :func:`leaf_kind` to a :class:`LeafRule`.
A structure's leaves are what :func:`pluglearn.data.batch_tree.flatten` yields: tensors, numbers,
strings, per-item lists (a list below the top of a batch) and anything else.

Example::

    >>> rule = LEAF_RULES[leaf_kind(torch.zeros(3))]
    >>> rule.collate([torch.zeros(3), torch.ones(3)], "item").shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

_TENSOR = torch.Tensor


def leaf_kind(leaf: Any) -> str:
    """Which row of :data:`LEAF_RULES` a leaf follows.

    Example: ``leaf_kind(["a", "b"]) == "items"`` (a list reaching a leaf is a per-item list)."""
    if isinstance(leaf, _TENSOR):
        return "tensor"
    if type(leaf) is list:
        return "items"
    if isinstance(leaf, (bool, int, float)):
        return "number"
    if isinstance(leaf, (str, bytes)):
        return "text"
    np = sys.modules.get("numpy")  # numpy is optional: an array exists only once it is imported
    if np is not None and isinstance(leaf, (np.ndarray, np.generic)):
        return "array"
    return "other"


def _stack(values: list[torch.Tensor], where: object) -> torch.Tensor:
    try:
        return torch.stack(values)
    except RuntimeError:
        shapes = sorted({tuple(v.shape) for v in values})
        if len(shapes) == 1:
            raise
        raise ValueError(
            f"collate: the items' tensors at {where} have different shapes {shapes}, so they do "
            "not stack into one tensor: pad them to one shape in the dataset, or return a list "
            "of per-item tensors from your own collate_fn (DataLoaders.from_datasets(..., "
            "collate_fn=...))."
        ) from None


def _collate_numbers(values: list[Any], where: object) -> torch.Tensor:
    # floats as float64, as torch's default_collate
    dtype = torch.float64 if any(isinstance(v, float) for v in values) else None
    return torch.tensor(values, dtype=dtype)


def _collate_arrays(values: list[Any], where: object) -> torch.Tensor:
    return _stack([torch.as_tensor(v) for v in values], where)


def _refuse_collate(values: list[Any], where: object) -> Any:
    raise TypeError(
        f"collate does not know how to batch a {type(values[0]).__name__} (at {where}): return "
        "tensors, numbers, strings, or tuples/dicts/dataclasses of them from the dataset, or "
        "pass DataLoaders.from_datasets(..., collate_fn=your_function)."
    )


def _concat_tensors(values: list[torch.Tensor], counts: list[int], where: object) -> torch.Tensor:
    values = [v if v.ndim else v.reshape(1) for v in values]
    shape = values[0].shape[1:]
    for i, v in enumerate(values):
        if v.shape[1:] != shape:
            raise ValueError(
                f"concat: {where} has shape {tuple(values[0].shape)} in batch 0 but "
                f"{tuple(v.shape)} in batch {i}: tensors join on dim 0 only, so every other "
                "dimension must agree. Pad them to one length where they are made (predictions "
                "in `predict`, targets in the loader's collate_fn; e.g. to the dataset's longest "
                "sequence), or make them a list of per-item tensors."
            )
    return torch.cat(values)


def _concat_items(values: list[list[Any]], counts: list[int], where: object) -> list[Any]:
    for i, (entries, n) in enumerate(zip(values, counts, strict=True)):
        if len(entries) != n:
            raise ValueError(
                f"concat: {where} is a list of {entries_text(len(entries))} in batch {i}, "
                f"which holds {n} items: below the top of a batch a list holds one entry per "
                "item. "
                f"{TORCH_LISTS}"
            )
    return [entry for entries in values for entry in entries]


#: the fix for a list that does not hold one entry per item
TORCH_LISTS = (
    "torch's default_collate turns tuples into lists: give the DataLoader "
    "collate_fn=pluglearn.data.batch_ops.collate (it keeps tuples; the default of "
    "DataLoaders.from_datasets), return tuples from your own collate_fn, or answer the "
    "count_items hook."
)


def entries_text(n: int) -> str:
    """``"1 entry"``, ``"3 entries"``."""
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def _per_batch(values: list[Any], counts: list[int], where: object) -> list[Any]:
    return list(values)


def _count_tensor(leaf: torch.Tensor) -> int:
    return leaf.shape[0] if leaf.ndim else 1


def _take_tensor(leaf: torch.Tensor, index: int | slice) -> torch.Tensor:
    return leaf[index] if leaf.ndim else leaf


class LeafRule(NamedTuple):
    """What :func:`~pluglearn.data.batch_ops.collate`, :func:`~pluglearn.data.batch_ops.concat`,
    :func:`~pluglearn.data.batch_ops.count_items` and :func:`~pluglearn.data.batch_ops.take` do with
    one kind of leaf: ``collate(values, where)`` the items' values into the batch's,
    ``concat(values, counts, where)`` the batches' values (and their item counts) into one,
    ``count_leaf(leaf)`` (None: not countable), ``take(leaf, i)``. ``where`` names the leaf's
    place in errors.

    Example: ``LEAF_RULES["items"].take(["a", "b"], 1) == "b"``."""

    collate: Callable[[list[Any], object], Any]
    concat: Callable[[list[Any], list[int], object], Any]
    # not `count`: a NamedTuple field of that name would hide tuple.count
    count_leaf: Callable[[Any], int] | None
    take: Callable[[Any, int | slice], Any]  # an item, or a slice of the items


def _keep(leaf: Any, index: int | slice) -> Any:
    return leaf


#: the leaf rules of the table in :mod:`pluglearn.data.batch_ops`' doc, by :func:`leaf_kind`
LEAF_RULES: dict[str, LeafRule] = {
    "tensor": LeafRule(_stack, _concat_tensors, _count_tensor, _take_tensor),
    "array": LeafRule(_collate_arrays, _per_batch, None, _keep),
    "number": LeafRule(_collate_numbers, _per_batch, None, _keep),
    "text": LeafRule(lambda values, where: list(values), _per_batch, None, _keep),
    "items": LeafRule(lambda values, where: list(values), _concat_items, len, lambda v, i: v[i]),
    "other": LeafRule(_refuse_collate, _per_batch, None, _keep),
}
