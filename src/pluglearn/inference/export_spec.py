"""A model, a plugin or a loss function as JSON: its class's import path and constructor arguments.

``learn.export`` writes what rebuilds the model without pickling it. A spec is
``{"$object": "torch.nn.modules.linear:Linear", "args": [], "kwargs": {"in_features": 5, ...}}``;
arguments are JSON values, tuples, dicts, torch dtypes and devices, modules (specs, recursively),
importable functions and classes, and configs with ``to_dict()`` / ``from_dict`` (transformers).

Where an object's constructor arguments come from (:func:`constructor_args`):

1. ``model_args`` given to ``export`` (the top-level model only), over the rest;
2. ``obj.get_config()`` when its class defines one (a dict of keyword arguments);
3. each parameter of ``__init__`` from the attribute of the same name: a plain attribute, a
   submodule, or a parameter or buffer for a ``bool`` parameter (``Linear(bias=True)`` when
   ``.bias`` is a tensor, ``False`` when it is None); ``nn.Sequential`` / ``ModuleList`` /
   ``ModuleDict`` from their children, the recurrent layers from their documented attributes.
   A parameter with a default and no attribute keeps its default; one without is refused.

A class or function must be importable by another process: one defined in ``__main__``, inside a
function, or a lambda is refused, naming the fix. :mod:`pluglearn.inference.export_build` builds an
object back from its spec and compares a rebuilt model with its original.

Example::

    object_spec(nn.Sequential(nn.Linear(5, 8), nn.ReLU()))
    # {"$object": "torch.nn.modules.container:Sequential", "args": [{"$object":
    #  "torch.nn.modules.linear:Linear", "args": [], "kwargs": {"in_features": 5, ...}}, ...]}
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import sys
import types
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..checkpoint.weights import WeightsError

#: the recurrent layers take ``*args, **kwargs``: their arguments, each an attribute
RNN_ARGS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout")
RNN_ARGS_BY_CLASS = {
    nn.RNN: (*RNN_ARGS, "bidirectional", "nonlinearity"),
    nn.LSTM: (*RNN_ARGS, "bidirectional", "proj_size"),
    nn.GRU: (*RNN_ARGS, "bidirectional"),
}


class ExportError(WeightsError):
    """An export cannot be written (the model cannot be rebuilt from what it would record) or
    read (damaged, another format, a class that cannot be imported)."""


def _refuse(where: str, obj: Any, problem: str) -> ExportError:
    cls = type(obj).__qualname__
    top = where == "model"  # model_args= is for the model's own class
    fix = (
        "pass its constructor's arguments, learn.export(path, model_args={...}), or " if top else ""
    )
    return ExportError(
        f"cannot export {where} ({cls}): {problem}. To fix it, {fix}give {cls} a get_config() "
        "method returning its constructor's arguments, or store each argument on the object "
        "under its own name; learn.export(path, pickle=True) pickles the model instead (to be "
        "loaded only from a file you trust)."
    )


# ----------------------------------------------------------------------------- import paths


def import_path(obj: Any, what: str) -> str:
    """``"module:qualname"`` of a class or function that another process can import, or an
    ExportError naming the fix (``__main__``, a lambda, a local definition, the standard
    library, which :func:`resolve` refuses).

    >>> import_path(nn.Linear, "a class")
    'torch.nn.modules.linear:Linear'
    """
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise ExportError(f"cannot export {what} {obj!r}: it has no import path.")
    fix = "move it into a module (e.g. models.py) and import it from there"
    if module == "__main__":
        raise ExportError(
            f"cannot export {what} {qualname}: it is defined in __main__ (the script being run), "
            f"which load_learner in another process cannot import: {fix}."
        )
    if "<lambda>" in qualname:
        raise ExportError(
            f"cannot export {what} {qualname}: it is a lambda; def it instead, {fix}."
        )
    if "<locals>" in qualname:
        raise ExportError(
            f"cannot export {what} {qualname}: it is defined inside a function; {fix}."
        )
    path = f"{module}:{qualname}"
    if resolve(path) is not obj:
        raise ExportError(f"cannot export {what}: {path} does not import back as the same object.")
    return path


def resolve(path: str) -> Any:
    """The object at ``"module:qualname"``, or an ExportError naming what to install. The
    standard library is refused: no model needs a reference into it, and one is how a crafted
    file would reach ``os.system``.

    >>> resolve("torch.nn.functional:relu") is torch.nn.functional.relu
    True
    """
    module_name, _, qualname = path.partition(":")
    if module_name.split(".")[0] in (*sys.stdlib_module_names, "builtins"):
        raise ExportError(
            f"{path} is in Python's standard library, which an export may not name (a crafted "
            "file could name os.system): use a class or function of your own module."
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ExportError(
            f"the export needs {path}, but module {module_name!r} cannot be imported ({error}): "
            "install the package that defines it, or put its folder on sys.path (PYTHONPATH)."
        ) from error
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ExportError(
                f"the export needs {path}, but {module_name} has no {qualname}: the code changed "
                "since the export; install the version it was written with."
            )
        obj = getattr(obj, part)
    return obj


# ----------------------------------------------------------------------------- to JSON


class _Unencodable(TypeError):
    pass


def encode(value: Any, where: str) -> Any:
    """``value`` as JSON (see the module doc); ``where`` names it in errors.

    >>> encode({"shape": (2, 3), "dtype": torch.float16}, "x")
    {'$dict': {'shape': {'$tuple': [2, 3]}, 'dtype': {'$dtype': 'float16'}}}
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, torch.dtype):
        return {"$dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"$device": str(value)}
    if isinstance(value, nn.Module):
        return object_spec(value, where=where)
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise _Unencodable(f"a dict with keys that are not strings ({where})")
        items = {k: encode(v, f"{where}.{k}") for k, v in value.items()}
        return {"$odict" if isinstance(value, OrderedDict) else "$dict": items}
    if isinstance(value, (tuple, list)):
        listed = [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return {"$tuple": listed} if isinstance(value, tuple) else listed
    if isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType)):
        return {"$ref": import_path(value, f"{where}, a reference to")}
    if callable(getattr(value, "to_dict", None)) and hasattr(type(value), "from_dict"):
        try:  # through JSON: a config's int keys (transformers' id2label) become strings
            as_json = json.loads(json.dumps(value.to_dict()))
        except (TypeError, ValueError) as error:
            raise _Unencodable(f"a config whose to_dict() is not JSON ({error}; {where})") from None
        return {"$config": import_path(type(value), where), "dict": encode(as_json, where)}
    raise _Unencodable(f"a {type(value).__module__}.{type(value).__qualname__} ({where})")


def _attribute(obj: Any, name: str) -> tuple[bool, Any]:
    """The attribute ``name`` stored on ``obj`` itself (not a method or class attribute)."""
    if isinstance(obj, nn.Module):
        for store in (obj._parameters, obj._buffers, obj._modules):
            if name in store:
                return True, store[name]
    own = getattr(obj, "__dict__", {})
    return (True, own[name]) if name in own else (False, None)


def _containers(obj: Any) -> tuple[list[Any], dict[str, Any]] | None:
    """The arguments of torch's containers, from their children."""
    cls = type(obj)
    if cls is nn.Sequential:
        names = list(obj._modules)
        if names == [str(i) for i in range(len(names))]:
            return list(obj._modules.values()), {}
        return [OrderedDict(obj._modules)], {}
    if cls is nn.ModuleList:
        return [list(obj._modules.values())], {}
    if cls is nn.ModuleDict:
        return [dict(obj._modules)], {}
    return None


def constructor_args(
    obj: Any, given: Mapping[str, Any] | None = None, where: str = "model"
) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword arguments that rebuild ``obj`` (see the module doc).

    >>> constructor_args(nn.Linear(3, 2, bias=False))
    ([], {'in_features': 3, 'out_features': 2, 'bias': False})
    """
    container = _containers(obj)
    if container is not None:
        return container
    if not given and callable(getattr(obj, "get_config", None)):
        config = obj.get_config()
        if not isinstance(config, Mapping) or not all(isinstance(k, str) for k in config):
            raise _refuse(where, obj, f"get_config() returned {type(config).__name__}, not a dict")
        return [], dict(config)
    cls, given = type(obj), dict(given or {})
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if cls in RNN_ARGS_BY_CLASS:
        keyword = inspect.Parameter.KEYWORD_ONLY
        params = [inspect.Parameter(n, keyword, default=None) for n in RNN_ARGS_BY_CLASS[cls]]
    unknown = sorted(set(given) - {p.name for p in params})
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params):
        raise _refuse(where, obj, f"model_args names {unknown}, which its __init__ does not take")
    # before a *args, the named parameters go by position too (else they are given twice)
    by_position = any(p.kind is p.VAR_POSITIONAL for p in params)
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    missing = []
    for p in params:
        found, value = (True, given.pop(p.name)) if p.name in given else _attribute(obj, p.name)
        if p.kind is p.VAR_POSITIONAL:
            args.extend(value if found and isinstance(value, (list, tuple)) else ())
            by_position = False
        elif p.kind is p.VAR_KEYWORD:
            kwargs.update(value if found and isinstance(value, Mapping) else {})
        elif not found and p.default is p.empty:
            missing.append(p.name)
        elif not found and not (by_position or p.kind is p.POSITIONAL_ONLY):
            continue  # keeps its default
        else:
            if isinstance(p.default, bool) and (value is None or isinstance(value, torch.Tensor)):
                value = value is not None  # Linear(bias=...): the parameter is there or None
            if by_position or p.kind is p.POSITIONAL_ONLY:
                args.append(value if found else p.default)
            else:
                kwargs[p.name] = value
    if missing:
        raise _refuse(
            where, obj, f"its argument(s) {', '.join(missing)} are stored under no attribute"
        )
    return args, {**kwargs, **given}  # what is left of model_args goes to its **kwargs


def object_spec(
    obj: Any, given: Mapping[str, Any] | None = None, where: str = "model"
) -> dict[str, Any]:
    """The spec that rebuilds ``obj`` (a module or a plugin; ``given``: arguments for its own
    class), or an ExportError naming the fix. ``where`` names it in errors (``model.0``).

    >>> object_spec(nn.Dropout(0.25))["kwargs"]
    {'p': 0.25, 'inplace': False}
    """
    path = import_path(type(obj), f"{where}'s class")
    args, kwargs = constructor_args(obj, given, where)
    children = {id(m): n for n, m in obj._modules.items()} if isinstance(obj, nn.Module) else {}

    def named(value: Any, fallback: str) -> str:
        return f"{where}.{children[id(value)]}" if id(value) in children else f"{where}({fallback})"

    try:
        return {
            "$object": path,
            "args": [encode(a, named(a, str(i))) for i, a in enumerate(args)],
            "kwargs": {k: encode(v, named(v, k)) for k, v in kwargs.items()},
        }
    except _Unencodable as error:
        raise _refuse(where, obj, f"an argument is {error}, which JSON cannot hold") from None
