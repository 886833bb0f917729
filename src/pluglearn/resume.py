"""Resume: the run's state as a dict (capture) and back into a Learner (restore).

``capture`` collects the model, the optimizer, every plugin's state (the ``state_dict`` hook),
the random states (python, numpy, torch, CUDA), the loop position and the training loader's
state; ``restore`` checks all of it before changing anything, then loads it into a Learner inside
``fit`` once the optimizer and loaders exist. Files are :mod:`pluglearn.checkpoint`'s business.

Many processes: the model and optimizer are the same on every rank (DDP keeps them so), but the
random states, the plugins' states (a metric's running sums) and a loader's state are each
rank's own. ``capture`` gathers them to rank 0 (``state["ranks"]``, one record per rank, and
``state["world_size"]``), so one file written by rank 0 holds the whole run; at a resume each
rank takes its own record. With another number of processes
(:func:`~pluglearn.resume_checks.rank_view`) the resume continues the same global order when the
loader's state is the same on every saved rank (pluglearn's loaders: the state counts global
items) and the global batch is unchanged; plugin states that differ between saved ranks are
merged when they are running sums (``{"total", "count"}``: rank 0 takes the sums, the others
zero), and anything else is refused, naming both numbers of processes.

A model sharded by :class:`~pluglearn.FSDP` is saved whole: its full model and optimizer state
gathered to rank 0 (the optimizer's keyed by parameter name), and loaded back into every rank's
shards at a resume (see :mod:`pluglearn.callbacks.fsdp`).
"""

from __future__ import annotations

import copy
import random
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import dist as pdist
from .checkpoint import (
    FORMAT,
    VERSION,
    NoCheckpointError,
    load_checkpoint,
    load_latest,
)
from .resume_checks import check_state, fsdp_functions, rank_view
from .weights import canonical_state, own_keys

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
    for plugin, result in learn.hooks.call("state_dict", learn=learn):
        check_safe_state(result, f"plugin {plugin!r}: state")
        plugins[plugin] = result
    sharded = fsdp_functions(learn)
    if sharded is not None:  # FSDP: the full state, gathered to rank 0 (a collective)
        model_state, opt_state = sharded.full_state(learn.model, learn.opt)
    else:
        # keys without wrapper prefixes: a compiled or wrapped model resumes into a plain one
        model_state = canonical_state(learn.model.state_dict(), "the model")
        opt_state = learn.opt.state_dict() if hasattr(learn.opt, "state_dict") else None
    rng = rng_state()
    ranks = None
    if pdist.world_size() > 1:  # every rank's own parts, gathered to rank 0 (a collective)
        ranks = pdist.gather_to_main({"rng": rng, "plugins": plugins, "loader": loader_state})
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": model_state,
        "opt": opt_state,
        "plugins": plugins,
        "rng": rng,
        "loader": loader_state,
        **({"ranks": ranks, "world_size": len(ranks)} if ranks else {}),
        "loop": {
            "epoch": learn.epoch + 1 if epoch_end else learn.epoch,
            "position": 0 if epoch_end else learn.iter + 1,  # training batches done
            "train_iter": learn.train_iter,
            "opt_steps": learn.opt_steps,
            "n_epochs": learn.n_epochs,
            "lr": learn.lr,
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


def _backup(learn: Learner) -> tuple[Any, ...]:
    """What restore may change, to put back if applying a checkpoint fails half-way."""
    loader = learn.dls.train
    return (
        learn.run.snapshot(),
        {k: v.clone() for k, v in learn.model.state_dict().items()},
        copy.deepcopy(learn.opt.state_dict()) if hasattr(learn.opt, "state_dict") else None,
        loader.state_dict() if hasattr(loader, "state_dict") else None,
        dict(learn.hooks.call("state_dict", learn=learn)),
        rng_state(),
    )


def _roll_back(learn: Learner, backup: tuple[Any, ...]) -> list[str]:
    """Put back each part of ``backup``, every part even when one fails (a plugin's
    ``load_state_dict`` may fail again); returns what could not be put back."""
    position, model, opt, loader, plugins, rng = backup
    steps: list[tuple[str, Any]] = [
        ("the position", lambda: learn.run.restore_position(position)),
        ("the random state", lambda: set_rng_state(rng)),
        ("the model", lambda: learn.model.load_state_dict(model)),
        ("the optimizer", lambda: opt is not None and learn.opt.load_state_dict(opt)),
        ("the loader", lambda: loader is not None and learn.dls.train.load_state_dict(loader)),
        ("the plugins", lambda: learn.hooks.call("load_state_dict", learn=learn, state=plugins)),
    ]
    failed = []
    for what, step in steps:
        try:
            step()
        except Exception as error:
            failed.append(f"{what} ({type(error).__name__}: {error})")
    return failed


def restore(
    learn: Learner, source: str | Path, lr: float | None = None, missing_ok: bool = False
) -> bool:
    """Load a checkpoint (a file, or the newest run's newest in a directory) into ``learn``,
    inside ``fit`` once the optimizer and loaders exist. Everything is checked before anything
    changes, and a failure while applying it puts the Learner back as it was.

    Returns False when there is nothing to train (the saved run had stopped, or finished the
    epochs asked for); with ``missing_ok`` a source without checkpoints starts a fresh run."""
    source = Path(source)
    try:
        path, state = (source, load_checkpoint(source)) if source.is_file() else load_latest(source)
    except NoCheckpointError:
        if not missing_ok:
            raise
        warnings.warn(
            f"no checkpoint in {source} yet: starting a fresh run (missing_ok=True).", stacklevel=3
        )
        return True
    check_state(learn, state, path, lr)
    state = rank_view(state, path, pdist.rank(), pdist.world_size())
    loop, loader = state["loop"], learn.dls.train
    position = int(loop["position"])
    stateful = hasattr(loader, "load_state_dict")
    unknown = sorted(  # a Checkpoint plugin's state (its run id) names files, it trains nothing
        name
        for name in set(state["plugins"]) - {i.plugin for i in learn.hooks.impls["load_state_dict"]}
        if not name.startswith("Checkpoint")
    )
    if unknown:
        warnings.warn(
            f"checkpoint {path} holds the state of plugin(s) {', '.join(unknown)}, which this "
            "Learner does not have, so the resumed run can differ from the uninterrupted one: "
            "add the same plugins as the saved run.",
            stacklevel=3,
        )
    backup = _backup(learn)
    try:
        if state["loader"] is not None and stateful:
            loader.load_state_dict(state["loader"])  # first: it refuses other loader settings
        sharded = fsdp_functions(learn)
        if sharded is not None:  # FSDP: every rank keeps its shards of the full state
            sharded.load_full_state(learn.model, learn.opt, state["model"], state["opt"])
        else:
            learn.model.load_state_dict(own_keys(learn.model, state["model"]))
            if state["opt"] is not None:
                learn.opt.load_state_dict(state["opt"])
        # the plugins load with the position of the checkpoint in place (they may record it)
        learn.epoch, learn.train_iter = int(loop["epoch"]), int(loop["train_iter"])
        learn.opt_steps = int(loop.get("opt_steps", loop["train_iter"]))
        learn.stop_reason = loop["stop_reason"]
        learn.hooks.call("load_state_dict", learn=learn, state=state["plugins"])
        set_rng_state(state["rng"])
    except BaseException as error:
        failed = _roll_back(learn, backup)
        learn.stop_reason = None
        if failed:
            error.add_note(
                f"pluglearn: putting the Learner back as it was failed too for {', '.join(failed)}"
                ": it is half-restored; build a new Learner before training it."
            )
        raise
    if (
        not stateful
        and position
        and position < (len(loader) if hasattr(loader, "__len__") else position + 1)
    ):
        warnings.warn(
            f"the training loader ({type(loader).__name__}) has no state_dict, so the resume "
            f"replays {position} batches to reach the cut; use DataLoaders.from_datasets for "
            "an O(1) resume.",
            stacklevel=3,
        )
    saved_lr = loop.get("lr")
    if saved_lr is None and hasattr(learn.opt, "param_groups"):
        saved_lr = learn.opt.param_groups[0].get("initial_lr", learn.opt.param_groups[0]["lr"])
    if saved_lr is not None:
        learn.lr = float(saved_lr)
    learn.run.start_resume(position, replays=not stateful)
    if learn.stop_reason is not None:
        warnings.warn(
            f"checkpoint {path} is of a run that had stopped ({learn.stop_reason}): nothing to "
            "resume. Call fit() without resume_from to train further.",
            stacklevel=3,
        )
        return False
    if learn.epoch == learn.n_epochs:
        warnings.warn(
            f"checkpoint {path} is of a run that finished its {learn.n_epochs} epoch(s): nothing "
            "to train. Pass a larger n_epochs to train further.",
            stacklevel=3,
        )
        return False
    return True
