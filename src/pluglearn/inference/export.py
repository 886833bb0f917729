"""``learn.export(path)`` and ``load_learner(path)``: one file with what inference needs.

``export`` writes the weights as safetensors (atomic, digest-checked, keys without the wrapper
prefixes, as ``learn.save`` does) and, in the file's header, a JSON record of how to rebuild the
rest (:mod:`pluglearn.inference.export_file`): the model's class and constructor arguments,
recursively (:mod:`pluglearn.inference.export_spec`), its dtype, the loss function's import path,
the shape of one input item (so ``predict`` tells an item from a batch) and the plugins that take
part in ``predict`` (those implementing ``predict`` or ``forward_context``: ``HFModel``,
``MixedPrecision``), recorded the same way. Before writing, ``export`` rebuilds the model from the
record and compares it with the model (:mod:`pluglearn.inference.export_build`): what cannot be
recovered, or rebuilds differently, is refused then, naming the class and the fix (``model_args=``),
never at load time. A loss function that cannot be recorded (a lambda) only warns:
``load_learner(path, loss_func=...)`` gives it back.

``load_learner(path)`` reads the file without unpickling anything, builds the model and its
plugins, loads the weights after checking every key, shape and dtype, and returns a Learner in
eval mode on the CPU (``device=`` to choose) with no data
(:meth:`~pluglearn.DataLoaders.for_inference`), ready for ``predict``, ``get_preds(dl=...)`` and
``validate(dl=...)``. Its ``predict`` equals the exporting Learner's, bit for bit. Reading
imports the modules that define the recorded classes; it calls only ``nn.Module`` classes,
plugin classes and config classes, and refuses any name in Python's standard library.

**Pickle, opt-in and unsafe.** ``learn.export(path, pickle=True)`` pickles the model, the
predict plugins and the loss function instead (any class, as ``torch.save(model)`` does), and
``load_learner(path, unsafe=True)`` reads it back. Unpickling runs code that the file names:
load such a file only when you trust where it came from. Without ``unsafe=True`` a pickled
export is refused before anything is unpickled.

Example::

    learn.fit(3)
    learn.export("model.export")       # refused now, naming the fix, if it could not be rebuilt
    # in another process, without the training data:
    learn = load_learner("model.export")
    learn.predict(x)                   # one item or a batch, as before the export
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..checkpoint.weights import WeightsError, load_state_checked, model_state, storable
from .export_build import build, rebuild_differences
from .export_file import (
    FORMAT,
    VERSION,
    dtype_named,
    pickled,
    read_export,
    unpickle,
    write_export,
)
from .export_spec import ExportError, encode, object_spec

if TYPE_CHECKING:
    from ..learner import Learner


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside ``torch.compile`` / ``DistributedDataParallel`` wrappers.

    >>> unwrap(torch.compile(nn.Linear(2, 1), backend="eager"))
    Linear(in_features=2, out_features=1, bias=True)
    """
    while True:
        inner = getattr(model, "_orig_mod", None)
        if type(model).__name__ == "OptimizedModule" and isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _float_dtype(model: nn.Module) -> str | None:
    """The floating dtype of the model's state, None when it has none; a model that mixes
    floating dtypes is refused (the record holds one, the model is cast to it)."""
    found = {_name(t.dtype) for t in model.state_dict().values() if t.is_floating_point()}
    if len(found) > 1:
        raise ExportError(
            f"cannot export the model: its weights mix the dtypes {', '.join(sorted(found))}, and "
            "an export rebuilds a model in one dtype. Cast it to one first (model.float(), "
            "model.to(torch.bfloat16)), or use learn.export(path, pickle=True)."
        )
    return found.pop() if found else None


def predict_plugins(learn: Learner) -> list[object]:
    """The plugins that take part in ``predict`` (implementing ``predict`` or
    ``forward_context``), in call order, without the default ``TrainStep``.

    Example::

        predict_plugins(Learner(model, dls, plugins=[HFModel(), Accuracy()]))  # [HFModel]
    """
    from ..plugins.train_step import TrainStep

    names = {i.plugin for hook in ("predict", "forward_context") for i in learn.hooks.impls[hook]}
    taking_part = {id(learn.plugin(name)) for name in names}
    return [p for p in learn.plugins if id(p) in taking_part and type(p) is not TrainStep]


def build_model(record: dict[str, Any]) -> nn.Module:
    """The model of ``record``, built under the exporting process's default dtype and cast to
    the model's dtype; the random states are put back (initialisation draws from them).

    Example::

        model = build_model(read_export(path)[1])   # freshly initialised: load the weights next
    """
    from ..run.rng import random_states_kept

    made_under = dtype_named(record.get("default_dtype"))
    if made_under is None:
        raise ExportError(
            f"the export is damaged: its default dtype {record.get('default_dtype')!r} names no "
            "torch dtype; export the Learner again."
        )
    default = torch.get_default_dtype()
    with random_states_kept():
        try:
            torch.set_default_dtype(made_under)
            model: nn.Module = build(record["model"], "module")
        finally:
            torch.set_default_dtype(default)
    return model if record["dtype"] is None else model.to(dtype_named(record["dtype"]))


def _loss_record(loss_func: Any) -> tuple[Any, str | None]:
    """The loss function as JSON, or None and why it cannot be recorded."""
    try:
        if not isinstance(loss_func, nn.Module):
            return encode(loss_func, "loss_func"), None
        spec = object_spec(loss_func, where="loss_func")
        differences = rebuild_differences(loss_func, build(spec, "module"))
        if differences:
            return None, f"it rebuilds differently: {'; '.join(differences[:3])}"
        return spec, None
    except ExportError as error:
        return None, str(error)
    except TypeError as error:  # encode: a value JSON cannot hold
        return None, f"it is {error}, which JSON cannot hold"


def _plugin_record(plugin: object) -> dict[str, Any]:
    where = f"plugin {type(plugin).__qualname__}"
    spec = object_spec(plugin, where=where)
    if object_spec(build(spec, "plugin"), where=where) != spec:
        raise ExportError(
            f"cannot export {where}: rebuilt from the arguments recovered for it, it records "
            "other ones (its constructor changes them): give its class a get_config() method "
            "returning its constructor's arguments."
        )
    return spec


def export(
    learn: Learner,
    path: str | os.PathLike[str],
    *,
    model_args: Mapping[str, Any] | None = None,
    pickle: bool = False,
) -> Path:
    """The body of :meth:`Learner.export` (see the module doc); returns the path written.

    Example::

        export(learn, "model.export", model_args={"n_hidden": 50})
    """
    from .predict import item_shape

    if model_args is not None and not isinstance(model_args, Mapping):
        raise TypeError(f"model_args must be a dict of constructor arguments, got {model_args!r}.")
    model, plugins, shape = unwrap(learn.model), predict_plugins(learn), item_shape(learn)
    record: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "pickled": bool(pickle),
        "item_shape": None if shape is None else list(shape),
    }
    if pickle:
        if model_args is not None:
            raise ValueError("model_args= goes with a JSON export; pickle=True pickles the model.")
        parts = {"model": model, "plugins": plugins, "loss_func": learn.loss_func}
        return write_export(pickled(parts), record, path)
    record["dtype"] = _float_dtype(model)
    record["default_dtype"] = _name(torch.get_default_dtype())
    record["model"] = object_spec(model, model_args, "model")
    differences = rebuild_differences(model, build_model(record))
    if differences:
        cls = type(model).__qualname__
        raise ExportError(
            f"cannot export the model: rebuilt from the arguments recovered for it, it differs "
            f"from the {cls} it was recovered from: {'; '.join(differences[:5])}. Pass its "
            "constructor's arguments, learn.export(path, model_args={...}), or give the class "
            "that differs a get_config() method returning them; pickle=True pickles the model "
            "instead (to be loaded only from a file you trust)."
        )
    record["plugins"] = [_plugin_record(p) for p in plugins]
    record["loss_func"], why = _loss_record(learn.loss_func)
    if why is not None:
        record["loss_func_missing"] = why
        warnings.warn(
            f"learn.export: the loss function is not recorded ({why}); get_preds and validate "
            "after load_learner need it given back: load_learner(path, loss_func=...).",
            stacklevel=3,
        )
    return write_export(storable(model_state(model)), record, path)


def _refuse_loss(reason: str) -> Callable[..., Any]:
    def missing_loss(*args: Any, **kwargs: Any) -> Any:
        raise ExportError(
            f"this Learner was loaded from an export without its loss function ({reason}): "
            "pass it, load_learner(path, loss_func=...)."
        )

    return missing_loss


def load_learner(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    plugins: Sequence[object] = (),
    loss_func: Callable[..., torch.Tensor] | None = None,
    unsafe: bool = False,
) -> Learner:
    """A Learner rebuilt from ``learn.export(path)``, its model in eval mode on ``device``, with
    no data (see the module doc). ``plugins`` come after the recorded ones (one of the same
    class as a recorded one replaces it); ``loss_func`` replaces the recorded loss function.
    ``unsafe=True`` reads an export written with ``pickle=True``: it unpickles, which runs code
    the file names, so only for a file you trust.

    Example::

        learn = load_learner("model.export")
        learn.predict(x_valid[0])
        preds, targets = learn.get_preds(dl=valid_loader)
    """
    from ..data.loaders import DataLoaders
    from ..learner import Learner

    path = Path(path)
    tensors, record = read_export(path)
    if record.get("pickled"):
        if not unsafe:
            raise ExportError(
                f"export {path} holds a pickled model (learn.export(..., pickle=True)): reading it "
                "runs code that the file names. Only if you trust the file: "
                "load_learner(path, unsafe=True)."
            )
        parts = unpickle(path, tensors)
        model, recorded, loss = parts["model"], parts["plugins"], parts["loss_func"]
    else:
        model = build_model(record)
        try:
            load_state_checked(model, tensors, f"export {path}")
        except WeightsError as error:
            raise ExportError(
                f"{error} The model's class now builds another model than at the export (its "
                "code or its package's version changed): install the version the export was "
                "written with, or export again."
            ) from error
        recorded = [build(spec, "plugin") for spec in record["plugins"]]
        loss = None if record["loss_func"] is None else build(record["loss_func"])
        if loss is None:
            loss = _refuse_loss(record.get("loss_func_missing", "none was recorded"))
    recorded = [r for r in recorded if not any(type(p) is type(r) for p in plugins)]
    shape = record.get("item_shape")
    from ..plugins.device import Device

    placed = any(isinstance(p, Device) for p in plugins)  # a Device plugin of the caller's wins
    return Learner(
        model.to(device).eval(),
        DataLoaders.for_inference(item_shape=None if shape is None else tuple(shape)),
        loss_func=loss if loss_func is None else loss_func,
        plugins=[*recorded, *plugins],
        device=None if placed else device,
    )
