"""In-memory datasets given as columns: ``(x, y)`` tuples of tensors or numpy arrays.

``DataLoaders.from_datasets((X, y))`` takes the columns of a dataset: one tensor (or numpy
array, as scikit-learn users have them) per field, each with one row per item.
:func:`as_dataset` turns numpy columns into tensors, keeping their dtype exactly (a float64
array stays float64: no silent change of precision), and refuses what would be misread: a bare
array (its rows would be taken as items and ``xb, yb`` as two rows), a tuple mixing arrays with
lists, columns of unequal length, arrays of strings or objects. :func:`check_input_dtype` then
refuses, when a fit starts, floating inputs whose dtype is not the model's (numpy's float64
against torch's float32, the usual case), naming the conversion that fixes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["as_dataset", "check_input_dtype", "tensors_of"]


def _is_column(value: Any) -> bool:
    """A tensor, a numpy array, or an array-like object (pandas) that is no python sequence."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return True
    return (
        hasattr(value, "__array__")
        and hasattr(value, "__len__")
        and not isinstance(value, (str, bytes, list, tuple))
    )


def _to_tensor(column: Any, what: str) -> torch.Tensor:
    """``column`` as a tensor of the same dtype (numpy arrays share memory when they can)."""
    if isinstance(column, torch.Tensor):
        tensor = column
    else:
        array = np.asarray(column)
        if array.dtype.kind not in "biufc":
            raise TypeError(
                f"{what} is a numpy array of dtype {array.dtype}, not numbers: convert it, "
                "e.g. X.astype('float32') for inputs or y.astype('int64') for class labels."
            )
        if not array.dtype.isnative:  # big-endian data from a file: the same values, native
            array = array.astype(array.dtype.newbyteorder("="))
        # torch needs positive strides and owns writable memory; np.require copies only if not
        array = np.require(array, requirements=["C", "W"])
        try:
            tensor = torch.from_numpy(array)
        except TypeError as error:
            raise TypeError(
                f"{what} has numpy dtype {array.dtype}, which torch cannot hold ({error}): "
                "convert it, e.g. X.astype('float32') or y.astype('int64')."
            ) from error
    if tensor.dim() == 0:
        raise ValueError(
            f"{what} is a single number (0-d): every column needs one row per item, e.g. "
            "(X, y) with X shaped (n, features) and y shaped (n,)."
        )
    return tensor


def tensors_of(dataset: Any) -> tuple[torch.Tensor, ...] | None:
    """The tensors behind an in-memory dataset (a ``TensorDataset`` or an ``(x, y)`` tuple of
    tensors of equal length), or None when ``dataset`` is something else."""
    tensors = getattr(dataset, "tensors", dataset)
    if (
        isinstance(tensors, (tuple, list))
        and len(tensors) >= 1
        and all(isinstance(t, torch.Tensor) for t in tensors)
    ):
        if any(t.dim() == 0 for t in tensors):
            raise ValueError(
                "a column of the dataset is a single number (0-d tensor): every column needs "
                "one row per item, e.g. (x, y) with x shaped (n, features) and y shaped (n,)."
            )
        lengths = {len(t) for t in tensors}
        if len(lengths) != 1:
            raise ValueError(
                f"the dataset's tensors have different lengths {sorted(lengths)}: inputs and "
                "targets must have one row per item."
            )
        return tuple(tensors)
    return None


def as_dataset(dataset: Any, name: str) -> Any:
    """``dataset`` ready for a loader: columns given as numpy arrays become a tuple of tensors
    (same dtypes); anything that would be misread is refused with the fix."""
    if _is_column(dataset):
        kind = "tensor" if isinstance(dataset, torch.Tensor) else "array"
        raise TypeError(
            f"{name} is a single {kind}: its rows would be taken as items and each batch split "
            f"into rows. Pass the inputs and the targets as a tuple, {name}=(X, y) (for an "
            "autoencoder, (X, X))."
        )
    columns = getattr(dataset, "tensors", dataset)
    if not (isinstance(columns, (tuple, list)) and any(_is_column(c) for c in columns)):
        return dataset  # a map-style dataset (checked by the caller)
    for i, column in enumerate(columns):
        if not _is_column(column):
            raise TypeError(
                f"{name}[{i}] is a {type(column).__name__} while other columns are arrays: give "
                f"every column as a tensor or numpy array, e.g. np.asarray({name}[{i}]) (a "
                "dataset of (x, y) items is a list of pairs, not a tuple of columns)."
            )
    if all(isinstance(c, torch.Tensor) for c in columns):
        tensors_of(columns)  # the length check
        return dataset  # a TensorDataset or tuple of tensors, unchanged
    tensors = tuple(_to_tensor(c, f"{name}[{i}]") for i, c in enumerate(columns))
    tensors_of(tensors)
    return tensors


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_input_dtype(model: nn.Module, dataset: Any, name: str) -> None:
    """Refuse floating inputs (the first column of an in-memory dataset) whose dtype differs from
    the model's floating parameters: the first layer would fail on the first batch."""
    tensors = tensors_of(dataset) if dataset is not None else None
    if not tensors or not tensors[0].is_floating_point():
        return
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    x = tensors[0].dtype
    if len(dtypes) != 1 or x in dtypes:
        return  # no parameters, mixed precision by design, or a match
    want = dtypes.pop()
    model_fix = "model.double()" if x == torch.float64 else f"model.to(torch.{_dtype_name(x)})"
    raise TypeError(
        f"{name}'s inputs are {_dtype_name(x)} but the model's parameters are "
        f"{_dtype_name(want)}, so the first batch would fail (numpy arrays are float64 by "
        f"default). Convert the inputs, X.astype('{_dtype_name(want)}') for a numpy array or "
        f"x.to(torch.{_dtype_name(want)}) for a tensor, or the model, {model_fix}."
    )
