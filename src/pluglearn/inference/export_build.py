"""Rebuild what :mod:`pluglearn.inference.export_spec` recorded; compare a rebuilt model with its
original.

:func:`build` turns a spec back into an object. It imports the modules the spec names and calls
only ``nn.Module`` classes, the recorded plugins' classes (classes with ``@hookimpl`` methods)
and config classes (``from_dict``), with JSON arguments; a function reference into the standard
library is refused (no model argument needs one, and such a reference is how a crafted file
would reach ``os`` or ``subprocess``). Nothing is unpickled.

:func:`rebuild_differences` says how a rebuilt model differs from the original beyond the
weights' values: submodules and their classes, their settings (plain attributes), the state
dict's keys, shapes and dtypes, and the buffers the weights do not carry. ``export`` refuses a
model with any difference.

Example::

    rebuilt = build(object_spec(model))
    assert not rebuild_differences(model, rebuilt)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from .export_spec import ExportError, resolve

# ----------------------------------------------------------------------------- from JSON


def _damaged(what: str) -> ExportError:
    return ExportError(f"the export's record is damaged ({what}): export the model again.")


def build(spec: Any, kind: str = "module") -> Any:
    """The object ``spec`` describes: ``kind`` "module" (an ``nn.Module`` class) or "plugin"
    (a class implementing hooks) at the top; every nested object is a module.

    >>> build({"$object": "torch.nn.modules.activation:ReLU", "kwargs": {"inplace": True}})
    ReLU(inplace=True)
    """
    return _decode(spec, kind)


def _decode(value: Any, kind: str = "module") -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        raise _damaged(f"a {type(value).__name__}")
    tag = next((k for k in value if k.startswith("$")), None)
    body = value.get(tag)
    if tag == "$object" and isinstance(body, str):  # else: damaged, below
        cls = resolve(body)
        if not isinstance(cls, type) or not _allowed(cls, kind):
            raise ExportError(
                f"the export names {body} as a {kind} class, but it is not one: the file is "
                "damaged or was not written by learn.export."
            )
        args = [_decode(a) for a in value.get("args", [])]
        return cls(*args, **{k: _decode(v) for k, v in value.get("kwargs", {}).items()})
    if tag in ("$dict", "$odict") and isinstance(body, dict):
        items = {k: _decode(v) for k, v in body.items()}
        return OrderedDict(items) if tag == "$odict" else items
    if tag == "$tuple" and isinstance(body, list):
        return tuple(_decode(v) for v in body)
    if tag == "$float" and body in ("nan", "inf", "-inf"):
        return float(body)
    if tag == "$dtype" and isinstance(getattr(torch, str(body), None), torch.dtype):
        return getattr(torch, str(body))
    if tag == "$device" and isinstance(body, str):
        return torch.device(body)
    if tag == "$ref" and isinstance(body, str):
        return resolve(body)  # passed to a constructor or called by the Learner, never here
    if tag == "$config" and isinstance(body, str):
        config_class = resolve(body)
        if not isinstance(config_class, type) or not hasattr(config_class, "from_dict"):
            raise _damaged(f"{body} is not a config class")
        return config_class.from_dict(_decode(value.get("dict")))
    raise _damaged(f"an entry {str(value)[:80]}")


def _allowed(cls: type, kind: str) -> bool:
    if kind == "plugin":  # a pluglearn plugin: some method carries @hookimpl
        return any(getattr(getattr(cls, n, None), "pluglearn_impl", None) for n in dir(cls))
    return issubclass(cls, nn.Module)


# ----------------------------------------------------------------------------- comparison


def _settings(module: nn.Module) -> dict[str, Any]:
    """The plain attributes (numbers, strings, tuples of them) that configure ``module``."""

    def plain(v: Any) -> bool:
        if isinstance(v, (tuple, list)):
            return all(plain(x) for x in v)
        return v is None or isinstance(v, (bool, int, float, str))

    return {
        k: v
        for k, v in vars(module).items()
        if not k.startswith("_") and k != "training" and plain(v)
    }


ABSENT = "(absent)"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" (and {len(keys) - 5} more)" if len(keys) > 5 else "")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def rebuild_differences(original: nn.Module, rebuilt: nn.Module) -> list[str]:
    """How ``rebuilt`` differs from ``original`` beyond the weights' values (see the module
    doc), each difference a phrase; empty when the weights loaded into it give the same model.

    >>> rebuild_differences(nn.Dropout(0.5), nn.Dropout(0.1))
    ['model.p is 0.1 rebuilt, 0.5 in the model']
    """
    ours, theirs = dict(original.named_modules()), dict(rebuilt.named_modules())
    found = []
    if ours.keys() - theirs.keys():
        found.append(
            f"the rebuilt model lacks submodules {_few(sorted(ours.keys() - theirs.keys()))}"
        )
    if theirs.keys() - ours.keys():
        found.append(
            f"the rebuilt model has extra submodules {_few(sorted(theirs.keys() - ours.keys()))}"
        )
    for name, a in ours.items():
        b = theirs.get(name)
        label = f"model.{name}" if name else "model"
        if b is None:
            continue
        if type(a) is not type(b):
            found.append(
                f"{label} is a {type(b).__qualname__} rebuilt, "
                f"a {type(a).__qualname__} in the model"
            )
            continue
        sa, sb = _settings(a), _settings(b)
        found += [
            f"{label}.{k} is {sb.get(k, ABSENT)!r} rebuilt, {sa.get(k, ABSENT)!r} in the model"
            for k in sorted(sa.keys() | sb.keys())
            if not _same(sa.get(k, ABSENT), sb.get(k, ABSENT))
        ]
        for key in a._non_persistent_buffers_set:  # not in the weights: must come out the same
            mine, built = a._buffers.get(key), b._buffers.get(key)
            if mine is not None and (
                built is None or not torch.equal(mine.detach().cpu(), built.to(mine.dtype))
            ):
                found.append(f"buffer {label}.{key} (not saved with the weights) differs")
    mine, built = original.state_dict(), rebuilt.state_dict()
    lacking = [k for k in mine if k not in built]
    extra = [k for k in built if k not in mine]
    if lacking:
        found.append(f"the rebuilt model lacks the weights {_few(lacking)}")
    if extra:
        found.append(f"the rebuilt model has weights the model lacks: {_few(extra)}")
    for key, a in mine.items():
        b = built.get(key)
        if b is not None and (a.shape != b.shape or a.dtype != b.dtype):
            found.append(
                f"{key} is {tuple(b.shape)} {_name(b.dtype)} rebuilt, "
                f"{tuple(a.shape)} {_name(a.dtype)} in the model"
            )
    return found
