"""Before a spawn or forkserver pool starts: can the dataset and collate function be pickled?

The check walks the object and names the innermost part that cannot be pickled (a lambda, a
lock, a class defined inside a function or in a notebook's ``__main__``) with the fix, instead
of letting a worker fail late with pickle's terse message. Tensors are skipped: they always
pickle, and walking them would be slow.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Iterator, Mapping
from functools import partial
from types import FunctionType
from typing import Any

import torch


class _ProbePickler(pickle.Pickler):
    """Pickles into the void to test picklability cheaply: tensors (always picklable) are
    skipped, and classes or functions from an interactive `__main__` are refused, since a
    spawned child cannot import them even though pickling them succeeds."""

    def persistent_id(self, obj: Any) -> str | None:
        if isinstance(obj, torch.Tensor):
            return "tensor"
        if isinstance(obj, (type, FunctionType)) and _in_interactive_main(obj):
            raise pickle.PicklingError(f"{obj.__qualname__} lives in an interactive __main__")
        return None


class _Void:
    def write(self, data: bytes) -> int:
        return len(data)


def _in_interactive_main(obj: Any) -> bool:
    return obj.__module__ == "__main__" and not hasattr(sys.modules["__main__"], "__file__")


def _pickle_error(obj: Any) -> Exception | None:
    try:  # protocol 5 with a dropping buffer_callback keeps numpy arrays from being copied
        _ProbePickler(_Void(), protocol=5, buffer_callback=lambda buf: None).dump(obj)
    except Exception as exc:
        return exc
    return None


def _parts(obj: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        yield from ((f"{path}[{k!r}]", v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        yield from ((f"{path}[{i}]", v) for i, v in enumerate(obj))
    elif isinstance(obj, partial):
        yield from ((f"{path}.func", obj.func), (f"{path}.args", obj.args))
        yield f"{path}.keywords", obj.keywords
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, FunctionType)):
        yield from ((f"{path}.{k}", v) for k, v in vars(obj).items())


def check_picklable(obj: Any, path: str, method: str) -> None:
    """Raise a TypeError naming the innermost unpicklable part of `obj` and the fix."""
    err = _pickle_error(obj)
    if err is None:
        return
    for _ in range(8):  # walk down to the innermost part that fails on its own
        bad = next(((p, v) for p, v in _parts(obj, path) if _pickle_error(v)), None)
        if bad is None:
            break
        path, obj = bad
    fix = _pickle_fix(path, obj, method, err)
    raise TypeError(f"{fix} (or pass start_method='fork' where the platform has it)") from err


def _pickle_fix(path: str, obj: Any, method: str, err: Exception) -> str:
    kind = obj if isinstance(obj, (type, FunctionType)) else type(obj)
    if getattr(obj, "__name__", "") == "<lambda>":
        return (
            f"{path} is a lambda, which {method} cannot pickle: define it at module level with def"
        )
    if "<locals>" in kind.__qualname__:
        return (
            f"{path} is defined inside a function ({kind.__qualname__}), which {method} cannot "
            "pickle: define it at module level"
        )
    if _in_interactive_main(kind):
        return (
            f"{path} is defined in an interactive __main__ (notebook or REPL), which {method} "
            "workers cannot import: move it into a .py module and import it"
        )
    return (
        f"{path} ({type(obj).__name__}) cannot be pickled for {method} workers ({err}): "
        "create it lazily inside the worker, e.g. on first use in __getitem__"
    )
