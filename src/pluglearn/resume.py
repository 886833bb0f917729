"""Resume: the run's state as a dict (capture) and back into a Learner (restore).

``capture`` collects the model, the optimizer, every plugin's state (the ``state_dict`` hook),
the random states (python, numpy, torch, CUDA), the loop position and the training loader's
state; ``restore`` checks all of it before changing anything, then loads it into a Learner inside
``fit`` once the optimizer and loaders exist. Files are :mod:`pluglearn.checkpoint`'s business.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .checkpoint import FORMAT, VERSION, CheckpointError, load_checkpoint, load_latest

if TYPE_CHECKING:
    from .learner import Learner


# ----------------------------------------------------------------------------- random state


def rng_state() -> dict[str, Any]:
    """The global random states of python, numpy (when installed), torch and CUDA."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, gauss_next = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- capture


def capture(learn: Learner, epoch_end: bool = False) -> dict[str, Any]:
    """The run's state now: after a training batch (mid-epoch), or with ``epoch_end`` after a
    finished epoch (the resume then starts the next epoch)."""
    loader = learn.dls.train
    loader_state = loader.state_dict() if hasattr(loader, "state_dict") else None
    plugins = {}
    for impl, result in learn.hooks.call_each("state_dict", learn=learn):
        if result is not None:
            check_safe_state(result, f"plugin {impl.plugin!r}: state")
            plugins[impl.plugin] = result
    opt_state = learn.opt.state_dict() if hasattr(learn.opt, "state_dict") else None
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": learn.model.state_dict(),
        "opt": opt_state,
        "plugins": plugins,
        "rng": rng_state(),
        "loader": loader_state,
        "loop": {
            "epoch": learn.epoch + 1 if epoch_end else learn.epoch,
            "position": 0 if epoch_end else learn.iter + 1,  # training batches done
            "train_iter": learn.train_iter,
            "n_epochs": learn.n_epochs,
            "stop_reason": learn.stop_reason,
        },
    }


SAFE_TYPES = (torch.Tensor, int, float, bool, str, bytes, type(None))


def check_safe_state(value: Any, path: str) -> None:
    """Refuse, when saving, what ``torch.load(weights_only=True)`` would refuse at resume time."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{path} has a key {key!r} of type {type(key).__name__}: use str.")
            check_safe_state(item, f"{path}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_safe_state(item, f"{path}[{i}]")
    elif not isinstance(value, SAFE_TYPES):
        raise TypeError(
            f"{path} is a {type(value).__module__}.{type(value).__name__}, which a safe load "
            "(weights_only=True) refuses: a state_dict hook must return tensors, numbers, "
            "strings, lists and dicts (e.g. torch.from_numpy(array), or array.tolist())."
        )


# ----------------------------------------------------------------------------- restore


def _check_model(learn: Learner, saved: dict[str, torch.Tensor], source: Path) -> None:
    own = learn.model.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    reshaped = [
        f"{k} {tuple(saved[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in saved and tuple(saved[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or reshaped:
        parts = [
            f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches (saved != model)", reshaped),
            )
            if keys
        ]
        raise CheckpointError(
            f"checkpoint {source} is of a different model; " + "; ".join(parts) + ". Build the "
            "model the checkpoint was saved from, or start without resume_from."
        )


def restore(learn: Learner, source: str | Path) -> bool:
    """Load a checkpoint (a file, or the newest in a directory) into ``learn``, inside ``fit``
    once the optimizer and loaders exist. Returns False when the saved run had already stopped
    (``learn.stop_reason`` is then restored and nothing is left to train)."""
    source = Path(source)
    path, state = load_latest(source) if source.is_dir() else (source, load_checkpoint(source))
    _check_model(learn, state["model"], path)
    learn.model.load_state_dict(state["model"])
    if state["opt"] is not None:
        learn.opt.load_state_dict(state["opt"])
    loop = state["loop"]
    learn.epoch, learn.train_iter = int(loop["epoch"]), int(loop["train_iter"])
    learn.stop_reason = loop["stop_reason"]
    loader, position = learn.dls.train, int(loop["position"])
    stateful = hasattr(loader, "load_state_dict")
    if state["loader"] is not None and stateful:
        loader.load_state_dict(state["loader"])
    elif position and position < (len(loader) if hasattr(loader, "__len__") else position + 1):
        warnings.warn(
            f"the training loader ({type(loader).__name__}) has no state_dict, so the resume "
            f"replays {position} batches to reach the cut; use DataLoaders.from_datasets for "
            "an O(1) resume.",
            stacklevel=3,
        )
    learn._resume_position, learn._resume_replays = position, not stateful
    plugin_states = state["plugins"]
    for impl in learn.hooks.impls["load_state_dict"]:
        if impl.plugin in plugin_states:
            impl.call({"learn": learn, "state": plugin_states[impl.plugin]})
    set_rng_state(state["rng"])
    if learn.stop_reason is not None:
        warnings.warn(
            f"checkpoint {path} is of a run that had stopped ({learn.stop_reason}): nothing to "
            "resume. Call fit() without resume_from to train further.",
            stacklevel=3,
        )
        return False
    return True
