"""What a resume checks before it changes anything (:func:`check_state`: the checkpoint's
records, its position against this fit, its model and optimizer against this Learner's), and
each rank's view of a checkpoint (:func:`rank_view`), written by the same number of processes or
another. :mod:`pluglearn.checkpoint.resume` applies what passes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..diagnostics.input_checks import state_dict_mismatch
from .files import CheckpointError
from .weights import canonical_state, inexact_casts, model_state

if TYPE_CHECKING:
    from ..learner import Learner


#: per-rank parts a checkpoint may hold besides rng, plugins and loader (older ones lack them)
PER_RANK = ("generators", "order", "fingerprint")


def fsdp_functions(learn: Learner) -> Any:
    """The FSDP module (its full-state functions) when ``learn.model`` is sharded, else None."""
    from ..distributed import fsdp

    return fsdp if fsdp.is_sharded(learn.model) else None


def _check_model(learn: Learner, saved: dict[str, torch.Tensor], source: Path) -> None:
    # keys compared without wrapper prefixes: a compiled or wrapped model and its plain model
    # resume each other's checkpoints (as learn.load reads their weights)
    own = model_state(learn.model)
    saved = canonical_state(saved, f"checkpoint {source}", CheckpointError)
    mismatch = state_dict_mismatch({k: tuple(v.shape) for k, v in own.items()}, saved)
    if mismatch:
        raise CheckpointError(
            f"checkpoint {source} is of a different model; {mismatch}. Build the model the "
            "checkpoint was saved from, or start without resume_from."
        )
    inexact = inexact_casts(own, saved)
    if inexact:
        raise CheckpointError(
            f"checkpoint {source} holds tensors whose values would change if cast to this "
            f"model's dtypes: {inexact} (checkpoint -> model). Build the model in the dtypes "
            "the run used (e.g. model.to(torch.float64)), or start without resume_from."
        )


def _int_at_least_0(loop: dict[str, Any], key: str, path: Path) -> int:
    value = loop.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(
            f"checkpoint {path} has loop[{key!r}] = {value!r}, not an int >= 0: the file was not "
            "written by pluglearn's Checkpoint or was altered; resume from another checkpoint."
        )
    return value


def check_state(learn: Learner, state: dict[str, Any], path: Path, lr: float | None) -> None:
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
    if named and fsdp_functions(learn) is None:
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


def check_plugins(
    learn: Learner, saved: dict[str, Any], path: Path, optional: tuple[str, ...]
) -> None:
    """A resume continues the saved run exactly, so it needs the same stateful plugins: a
    plugin whose state the checkpoint holds and this Learner lacks (``MixedPrecision``: the run
    would go on in float32), or one with state that the saved run did not have, is refused,
    naming them. Plugins named in ``optional`` (their state names files) may differ."""
    own = {name for name, state in learn.hooks.call("state_dict", learn=learn)}

    def counted(names: set[str]) -> list[str]:
        return sorted(n for n in names if not any(n.startswith(o) for o in optional))

    missing, extra = counted(set(saved) - own), counted(own - set(saved))
    if not (missing or extra):
        return
    problems = []
    if missing:
        problems.append(f"the state of {', '.join(missing)}, which this Learner does not have")
    if extra:
        problems.append(f"no state for {', '.join(extra)}, which this Learner has")
    raise CheckpointError(
        f"checkpoint {path} holds {' and '.join(problems)}: a resume continues the saved run "
        "exactly, so it needs the same plugins (a MixedPrecision left out would train on in "
        "float32, a scheduler left out at a constant lr). Give fit the plugins the saved run "
        "had, or start a new run without resume_from."
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):  # a tensor beside anything else: the last line says False
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
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
        ranks = [{k: state[k] for k in ("rng", "plugins", "loader", *PER_RANK) if k in state}]
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
    return {
        **state,
        **{k: own.get(k) for k in PER_RANK},
        "rng": own["rng"],
        "loader": loaders[0],
        "plugins": plugins[rank],
    }
