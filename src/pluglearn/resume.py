"""Resume: the run's state as a dict (capture) and back into a Learner (restore).

``capture`` collects the model, the optimizer, every plugin's state (the ``state_dict`` hook),
the random states (python, numpy, torch, CUDA), the loop position and the training loader's
state; ``restore`` checks all of it before changing anything, then loads it into a Learner inside
``fit`` once the optimizer and loaders exist. Files are :mod:`pluglearn.checkpoint`'s business.

Many processes: the model and optimizer are the same on every rank (DDP keeps them so), but the
random states, the plugins' states (a metric's running sums) and a loader's state are each
rank's own. ``capture`` gathers them to rank 0 (``state["ranks"]``, one record per rank, and
``state["world_size"]``), so one file written by rank 0 holds the whole run; at a resume each
rank takes its own record. With another number of processes (:func:`rank_view`) the resume
continues the same global order when the loader's state is the same on every saved rank
(pluglearn's loaders: the state counts global items) and the global batch is unchanged; plugin
states that differ between saved ranks are merged when they are running sums
(``{"total", "count"}``: rank 0 takes the sums, the others zero), and anything else is refused,
naming both numbers of processes.

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
    CheckpointError,
    NoCheckpointError,
    load_checkpoint,
    load_latest,
)
from .checks import state_dict_mismatch

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
    sharded = _sharded(learn)
    if sharded is not None:  # FSDP: the full state, gathered to rank 0 (a collective)
        model_state, opt_state = sharded.full_state(learn.model, learn.opt)
    else:
        model_state = learn.model.state_dict()
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


def _sharded(learn: Learner) -> Any:
    """The FSDP module (its full-state functions) when ``learn.model`` is sharded, else None."""
    from .callbacks import fsdp

    return fsdp if fsdp.is_sharded(learn.model) else None


# ----------------------------------------------------------------------------- restore


def _check_model(learn: Learner, saved: dict[str, torch.Tensor], source: Path) -> None:
    shapes = {k: tuple(v.shape) for k, v in learn.model.state_dict().items()}
    mismatch = state_dict_mismatch(shapes, saved)
    if mismatch:
        raise CheckpointError(
            f"checkpoint {source} is of a different model; {mismatch}. Build the model the "
            "checkpoint was saved from, or start without resume_from."
        )


def _int_at_least_0(loop: dict[str, Any], key: str, path: Path) -> int:
    value = loop.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(
            f"checkpoint {path} has loop[{key!r}] = {value!r}, not an int >= 0: the file was not "
            "written by pluglearn's Checkpoint or was altered; resume from another checkpoint."
        )
    return value


def _check_state(learn: Learner, state: dict[str, Any], path: Path, lr: float | None) -> None:
    """Every check a resume needs, before anything is changed."""
    kinds = {"model": dict, "plugins": dict, "rng": dict, "loop": dict}
    for key in ("model", "opt", "plugins", "rng", "loader", "loop"):
        if key not in state or (key in kinds and not isinstance(state[key], kinds[key])):
            raise CheckpointError(
                f"checkpoint {path} lacks a valid {key!r} record (has: {', '.join(state)}): it is "
                "damaged or not a pluglearn checkpoint; resume from another checkpoint."
            )
    if "python" not in state["rng"] or "torch" not in state["rng"]:
        raise CheckpointError(f"checkpoint {path} lacks the python or torch random state.")
    loop = state["loop"]
    epoch = _int_at_least_0(loop, "epoch", path)
    position = _int_at_least_0(loop, "position", path)
    _int_at_least_0(loop, "train_iter", path)
    if not isinstance(loop.get("stop_reason"), (str, type(None))):
        raise CheckpointError(f"checkpoint {path} has a stop_reason that is not a string.")
    if epoch > learn.n_epochs or (epoch == learn.n_epochs and position > 0):
        raise CheckpointError(
            f"checkpoint {path} is at epoch {epoch}, batch {position} of its run, past the "
            f"{learn.n_epochs} epoch(s) this fit asks for, so nothing would train: pass "
            f"n_epochs={loop.get('n_epochs', epoch + 1)} (the run's own), or more to train further."
        )
    saved_lr = loop.get("lr")
    if lr is not None and saved_lr is not None and lr != saved_lr:
        raise CheckpointError(
            f"fit(lr={lr}) with resume_from={path}: the checkpointed run was started with "
            f"lr={saved_lr}, and a resume continues that run exactly. Drop lr= (learn.lr then "
            "becomes the run's), or start a new run without resume_from to use another lr."
        )
    _check_model(learn, state["model"], path)
    own_opt = hasattr(learn.opt, "load_state_dict")
    saved_opt = state["opt"]
    if own_opt != (saved_opt is not None):
        raise CheckpointError(
            f"checkpoint {path} {'has no' if own_opt else 'has an'} optimizer state, but this "
            f"Learner's optimizer ({type(learn.opt).__name__}) "
            f"{'has one' if own_opt else 'has none'}: resume with the optimizer the run used."
        )
    named = own_opt and any(
        isinstance(p, str) for g in saved_opt.get("param_groups", ()) for p in g.get("params", ())
    )
    if named and _sharded(learn) is None:
        raise CheckpointError(
            f"checkpoint {path} was written under FSDP() (its optimizer state is keyed by "
            "parameter name), and this Learner's model is not sharded: resume with FSDP()."
        )
    if own_opt:
        own_groups = [len(g["params"]) for g in learn.opt.state_dict()["param_groups"]]
        saved_groups = [len(g.get("params", ())) for g in saved_opt.get("param_groups", ())]
        if own_groups != saved_groups:
            raise CheckpointError(
                f"checkpoint {path} holds an optimizer with parameter groups of sizes "
                f"{saved_groups}, this Learner's has {own_groups}: build the optimizer the run "
                "used (same opt_func, same parameter groups)."
            )


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


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def rank_view(state: dict[str, Any], path: Path, rank: int, world: int) -> dict[str, Any]:
    """``state`` as rank ``rank`` of ``world`` resumes it: its own random, plugin and loader
    states. With another number of processes than the saved run's, see the module doc; a state
    that cannot be split across ``world`` ranks raises :class:`CheckpointError` naming both
    numbers. Changes nothing."""
    ranks = state.get("ranks")
    if ranks is None:  # written by one process
        ranks = [{"rng": state["rng"], "plugins": state["plugins"], "loader": state["loader"]}]
    if not isinstance(ranks, list) or not all(
        isinstance(r, dict) and {"rng", "plugins", "loader"} <= r.keys() for r in ranks
    ):
        raise CheckpointError(
            f"checkpoint {path} has a damaged per-rank record: resume from another checkpoint."
        )
    saved = len(ranks)
    if saved == world:
        return {**state, **ranks[rank]}
    refuse = f"checkpoint {path} was written by {saved} process(es) and this run has {world}: "
    loaders = [r["loader"] for r in ranks]
    if loaders[0] is None and state["loop"].get("position"):
        raise CheckpointError(
            refuse + "its training loader has no state_dict (a torch DataLoader: its sampler "
            f"splits the data by the number of processes), so the order would change. Resume "
            f"with {saved} process(es), or use DataLoaders.from_datasets (batch_size is then the "
            "global batch, the same on any number of processes)."
        )
    if not all(_same(loaders[0], other) for other in loaders[1:]):
        raise CheckpointError(
            refuse + f"the ranks' loader states differ, so they cannot be split across {world} "
            f"process(es). Resume with {saved} process(es)."
        )
    plugins: list[dict[str, Any]] = [{} for _ in range(world)]
    for name, first in ranks[0]["plugins"].items():
        states = [r["plugins"].get(name) for r in ranks]
        if all(_same(first, other) for other in states[1:]):
            for mine in plugins:
                mine[name] = first
        elif all(isinstance(st, dict) and st.keys() == {"total", "count"} for st in states):
            total = sum(float(st["total"]) for st in states)  # running sums: rank 0 holds them
            count = sum(int(st["count"]) for st in states)
            plugins[0][name] = {"total": total, "count": count}
            for mine in plugins[1:]:
                mine[name] = {"total": 0.0, "count": 0}
        else:
            raise CheckpointError(
                refuse + f"plugin {name!r} saved a different state on each rank (e.g. an open "
                f"gradient-accumulation group), which cannot be split across {world} "
                f"process(es). Resume with {saved} process(es), or from a checkpoint written "
                "where that state agrees (an epoch's end)."
            )
    own = ranks[rank % saved]
    return {**state, "rng": own["rng"], "loader": loaders[0], "plugins": plugins[rank]}


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
    _check_state(learn, state, path, lr)
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
        sharded = _sharded(learn)
        if sharded is not None:  # FSDP: every rank keeps its shards of the full state
            sharded.load_full_state(learn.model, learn.opt, state["model"], state["opt"])
        else:
            learn.model.load_state_dict(state["model"])
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
