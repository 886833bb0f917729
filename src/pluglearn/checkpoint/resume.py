"""Resume: the run's state as a checkpoint record (capture) and back into a Learner (restore).

Both go through the run state's one capture/restore routine (:mod:`pluglearn.run.state`, the
parts :data:`~pluglearn.run.state.CHECKPOINT`): ``capture`` takes the model, the optimizer, every
plugin's state (the ``state_dict`` hook), the random states (python, numpy, torch, CUDA, the
loaders' generators), the loop position and the training loader's state (or, for a loader
without state, the random states its open epoch was drawn from and a fingerprint of the last
batch: :mod:`pluglearn.run.replay`). ``restore`` checks all of it before changing anything, then
puts it into a Learner inside ``fit`` once the optimizer and loaders exist; when applying it
fails half-way, the run captured just before (:data:`~pluglearn.run.state.ROLLBACK`) is put
back. Files are :mod:`pluglearn.checkpoint.files`'s business.

Many processes: the model and optimizer are the same on every rank (DDP keeps them so), but the
random states, the plugins' states (a metric's running sums) and a loader's state are each
rank's own. ``capture`` gathers them to rank 0 (``state["ranks"]``, one record per rank, and
``state["world_size"]``), so one file written by rank 0 holds the whole run; at a resume each
rank takes its own record. With another number of processes
(:func:`~pluglearn.checkpoint.compatibility.rank_view`) the resume continues the same global order
when the loader's state is the same on every saved rank (pluglearn's loaders: the state counts
global items) and the global batch is unchanged; plugin states that differ between saved ranks are
merged when they are running sums (``{"total", "count"}``: rank 0 takes the sums, the others zero),
and anything else is refused, naming both numbers of processes.

A model sharded by :class:`~pluglearn.FSDP` is saved whole: its full model and optimizer state
gathered to rank 0 (the optimizer's keyed by parameter name), and loaded back into every rank's
shards at a resume (see :mod:`pluglearn.distributed.fsdp`).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data.loaders import length_of
from ..distributed import ranks as pdist
from ..run.replay import STATEFUL, UNKNOWN, fingerprint, loader_generators, loader_kind
from ..run.rng import rng_state, set_rng_state
from ..run.state import CHECKPOINT, ROLLBACK, Snapshot
from .compatibility import check_plugins, check_state, rank_view
from .files import (
    FORMAT,
    VERSION,
    CheckpointError,
    NoCheckpointError,
    load_checkpoint,
    load_latest,
)
from .weights import canonical_state, own_keys

if TYPE_CHECKING:
    from ..learner import Learner

__all__ = ["capture", "check_safe_state", "restore", "rng_state", "set_rng_state"]

#: plugins whose state names files, and trains nothing: a resume may add or drop them
FILE_PLUGINS = ("Checkpoint",)


# ----------------------------------------------------------------------------- capture


def capture(learn: Learner, epoch_end: bool = False) -> dict[str, Any]:
    """The run's state now as a checkpoint record: after a training batch (mid-epoch), or with
    ``epoch_end`` after a finished epoch (the resume then starts the next epoch)."""
    parts = learn.run.capture(learn, CHECKPOINT, copy=False).parts
    plugins = {}
    for plugin, result in parts["plugins"].items():
        check_safe_state(result, f"plugin {plugin!r}: state")
        plugins[plugin] = result
    model = parts["model"]
    if "full" in model:  # FSDP: the full state, gathered to rank 0
        model_state, opt_state = model["full"]
    else:
        # keys without wrapper prefixes: a compiled or wrapped model resumes into a plain one
        model_state = canonical_state(model["state"], "the model")
        opt_state = parts["opt"][1]
    loader = parts["loader"]
    mid_epoch = not epoch_end
    kind = loader_kind(learn.dls.train)
    own = {  # each rank's own parts
        "rng": parts["rng"],
        "plugins": plugins,
        "loader": loader,
        "generators": [state for _, state in parts["generators"]],
        # a loader without state is replayed from its epoch's start at a resume
        "order": parts["order"] if mid_epoch and kind != STATEFUL else None,
        "fingerprint": (
            fingerprint(learn.run.raw_batch) if mid_epoch and kind == UNKNOWN else None
        ),
    }
    ranks = None
    if pdist.world_size() > 1:  # every rank's own parts, gathered to rank 0 (a collective)
        ranks = pdist.gather_to_main(own)
    pos = parts["position"]
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": model_state,
        "opt": opt_state,
        **own,
        **({"ranks": ranks, "world_size": len(ranks)} if ranks else {}),
        "loop": {
            "epoch": pos.epoch + 1 if epoch_end else pos.epoch,
            "position": 0 if epoch_end else pos.iter + 1,  # training batches done
            "train_iter": pos.train_iter,
            "opt_steps": pos.opt_steps,
            "n_epochs": pos.n_epochs,
            "lr": parts["lr"],
            "stop_reason": parts["stop_reason"],
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


def _parts(learn: Learner, state: dict[str, Any]) -> Snapshot:
    """The checkpoint record as the run parts that ``RunState.restore`` puts back."""
    from .compatibility import fsdp_functions

    loop = state["loop"]
    position = replace(
        learn.run.pos,
        epoch=int(loop["epoch"]),
        train_iter=int(loop["train_iter"]),
        opt_steps=int(loop.get("opt_steps", loop["train_iter"])),
    )
    saved_lr = loop.get("lr")
    groups = (state["opt"] or {}).get("param_groups") if isinstance(state["opt"], dict) else None
    if saved_lr is None and groups:  # an older record: the lr the saved optimizer started with
        saved_lr = groups[0].get("initial_lr", groups[0].get("lr"))
    sharded = fsdp_functions(learn) is not None
    parts: dict[str, Any] = {
        "loader": state["loader"] if loader_kind(learn.dls.train) == STATEFUL else None,
        "position": position,
        "stop_reason": loop["stop_reason"],
        "lr": learn.lr if saved_lr is None else float(saved_lr),
        "model": (
            {"full": (state["model"], state["opt"])}
            if sharded
            else {"state": own_keys(learn.model, state["model"])}
        ),
        "opt": (learn.opt, None if sharded else state["opt"]),  # sharded: loaded with the model
        "plugins": state["plugins"],
        "rng": state["rng"],
    }
    generators = state.get("generators")
    if generators is not None:
        own = loader_generators(learn)
        if len(own) != len(generators):
            raise CheckpointError(
                f"the checkpoint's loaders drew from {len(generators)} torch.Generator(s), "
                f"this Learner's draw from {len(own)}: build the loaders (their samplers and "
                "datasets) as the saved run did."
            )
        parts["generators"] = list(zip(own, generators, strict=True))
    return Snapshot(parts)


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
            f"no checkpoint in {source} yet: starting a fresh run (missing_ok=True).", stacklevel=4
        )
        return True
    check_state(learn, state, path, lr)
    state = rank_view(state, path, pdist.rank(), pdist.world_size())
    check_plugins(learn, state["plugins"], path, FILE_PLUGINS)
    position = int(state["loop"]["position"])
    kind = loader_kind(learn.dls.train)
    snapshot = _parts(learn, state)
    backup = learn.run.capture(learn, ROLLBACK)
    try:
        learn.run.restore(learn, snapshot, strict=True)
    except BaseException as error:
        failed = learn.run.restore(learn, backup)
        if failed:
            error.add_note(
                f"pluglearn: putting the Learner back as it was failed too for {', '.join(failed)}"
                ": it is half-restored; build a new Learner before training it."
            )
        raise
    loader = learn.dls.train
    n_iter = length_of(loader)
    n_iter = position + 1 if n_iter is None else n_iter
    if kind != STATEFUL and 0 < position < n_iter:
        warnings.warn(
            f"the training loader ({type(loader).__name__}) has no state_dict, so the resume "
            f"replays {position} batches to reach the cut (their order drawn again from the "
            "random states the epoch started from); DataLoaders.from_datasets or torchdata's "
            "StatefulDataLoader resume in O(1).",
            stacklevel=4,
        )
    learn.run.start_resume(position, kind != STATEFUL, state.get("order"), state.get("fingerprint"))
    if learn.stop_reason is not None:
        warnings.warn(
            f"checkpoint {path} is of a run that had stopped ({learn.stop_reason}): nothing to "
            "resume. Call fit() without resume_from to train further.",
            stacklevel=4,
        )
        return False
    if learn.epoch == learn.n_epochs:
        warnings.warn(
            f"checkpoint {path} is of a run that finished its {learn.n_epochs} epoch(s): nothing "
            "to train. Pass a larger n_epochs to train further.",
            stacklevel=4,
        )
        return False
    return True
