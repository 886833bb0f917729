"""The parts of a run, each with how it is captured and put back: the one table that
:meth:`RunState.capture <pluglearn.run.state.RunState.capture>` and
:meth:`RunState.restore <pluglearn.run.state.RunState.restore>` read.

==============  =====================================================================
part            what it holds
==============  =====================================================================
``loader``      the training loader's ``state_dict`` (when it has one)
``position``    epoch, iter, training, train_iter, opt_steps, ... (``learn.run.pos``)
``stop_reason`` who ended the fit early, and why
``lr``          the run's base lr (``learn.lr``)
``batch``       the loader being read and its iterator, ``batch``, ``preds``, ``loss``,
                ``wrapped_model`` and the raw batch the loader yielded
``metrics``     ``learn.metrics`` and which plugin reported each
``modes``       every module's train/eval mode
``model``       the weights and buffers (a sharded model: its full state)
``grads``       every parameter's gradient
``opt``         the optimizer object and its state (lrs, momentum buffers, ...)
``generators``  the state of every ``torch.Generator`` the loaders and datasets draw from
``order``       the random states the open training epoch's order was drawn from
``plugins``     every plugin's ``state_dict``
``rng``         the global random states (python, numpy, torch, CUDA)
==============  =====================================================================

Parts are put back in the table's order: the loader first (it refuses a state of other
settings before anything else changed), the plugins after the optimizer and gradients they may
refer to, the global random states last. They are captured in the reverse order, so what
capturing one part disturbs (a fresh torchdata ``StatefulDataLoader`` makes its iterator, and
draws a seed, when asked for its state) is already taken, and is put back after it.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .replay import loader_generators
from .rng import rng_state, set_rng_state

if TYPE_CHECKING:
    from ..learner import Learner


@dataclass(frozen=True)
class Part:
    """One part of a run: its label in messages, how it is captured and put back."""

    label: str
    capture: Callable[[Learner, bool], Any]  # (learn, copy): copy so training cannot change it
    restore: Callable[[Learner, Any], None]


def _copied(value: Any, copy: bool) -> Any:
    return deepcopy(value) if copy else value


def _sharded(learn: Learner) -> Any:
    from ..checkpoint.compatibility import fsdp_functions

    return fsdp_functions(learn)


# ------------------------------------------------------------------------- the loop's own


def _restore_position(learn: Learner, saved: Any) -> None:
    learn.run.restore_position(saved)


def _capture_batch(learn: Learner, copy: bool) -> tuple[Any, ...]:
    return (
        learn.dl,
        learn._batches,
        learn.batch,
        learn.preds,
        learn.loss,
        learn.wrapped_model,
        learn.run.raw_batch,
    )


def _restore_batch(learn: Learner, saved: tuple[Any, ...]) -> None:
    (learn.dl, learn._batches, learn.batch, learn.preds, learn.loss, learn.wrapped_model) = saved[
        :6
    ]
    learn.run.raw_batch = saved[6]


def _restore_metrics(learn: Learner, saved: tuple[dict[str, Any], dict[str, str]]) -> None:
    learn.metrics, learn.run.metric_owner = dict(saved[0]), dict(saved[1])


def _set_stop_reason(learn: Learner, reason: str | None) -> None:
    learn.run.stop_reason = reason


def _set_lr(learn: Learner, lr: float) -> None:
    learn._lr = lr


def _set_order(learn: Learner, order: dict[str, Any] | None) -> None:
    learn.run.order = order


# ------------------------------------------------------------------ model and optimizer


def _restore_modes(learn: Learner, modes: list[tuple[Any, bool]]) -> None:
    for module, mode in modes:
        module.training = mode


def _capture_model(learn: Learner, copy: bool) -> dict[str, Any]:
    sharded = _sharded(learn)
    if sharded is not None and not copy:  # a checkpoint: the full state, gathered to rank 0
        return {"full": sharded.full_state(learn.model, learn.opt)}  # (a collective)
    state = learn.model.state_dict()  # sharded: this rank's own shards
    return {"state": {k: v.detach().clone() for k, v in state.items()} if copy else state}


def _restore_model(learn: Learner, saved: dict[str, Any]) -> None:
    sharded = _sharded(learn)
    if "full" in saved:
        model_state, opt_state = saved["full"]
        sharded.load_full_state(learn.model, learn.opt, model_state, opt_state)
    elif sharded is not None and not sharded.holds_shards(saved["state"]):
        # taken before the model was sharded (lr_find before FSDP's first fit, whose sweep
        # shards it): every rank holds the whole state, and keeps its shards of it
        sharded.load_full_state(learn.model, None, saved["state"], None)
    else:
        learn.model.load_state_dict(saved["state"])


def _capture_grads(learn: Learner, copy: bool) -> list[Any]:
    grads = [p.grad for p in learn.model.parameters()]
    return [g.clone() if copy and g is not None else g for g in grads]


def _restore_grads(learn: Learner, grads: list[Any]) -> None:
    for param, grad in zip(learn.model.parameters(), grads, strict=True):
        param.grad = grad


def _capture_opt(learn: Learner, copy: bool) -> tuple[Any, Any]:
    opt = learn.opt
    # a sharded model's checkpoint holds the optimizer's full state with the model's (above)
    in_model = not copy and _sharded(learn) is not None
    state = opt.state_dict() if hasattr(opt, "state_dict") and not in_model else None
    return opt, _copied(state, copy)


def _restore_opt(learn: Learner, saved: tuple[Any, Any]) -> None:
    opt, state = saved
    learn._opt = opt  # None: the next fit makes a fresh one, as if the captured run had none
    if opt is not None and state is not None:
        opt.load_state_dict(state)


# --------------------------------------------------------------------- loaders, plugins


def _capture_loader(learn: Learner, copy: bool) -> Any:
    loader: Any = learn.dls.train  # a stateful loader, when it has state_dict()
    if not callable(getattr(loader, "state_dict", None)):
        return None
    return _copied(loader.state_dict(), copy)


def _restore_loader(learn: Learner, state: Any) -> None:
    loader: Any = learn.dls.train  # a stateful loader, when it has load_state_dict()
    if state is not None and callable(getattr(loader, "load_state_dict", None)):
        loader.load_state_dict(state)


def _capture_generators(learn: Learner, copy: bool) -> list[tuple[Any, Any]]:
    return [(g, g.get_state()) for g in loader_generators(learn)]


def _restore_generators(learn: Learner, saved: list[tuple[Any, Any]]) -> None:
    for generator, state in saved:
        generator.set_state(state)


def _capture_plugins(learn: Learner, copy: bool) -> dict[str, Any]:
    # copied: a plugin may answer with its live lists (Recorder), which training extends
    states: dict[str, Any] = _copied(dict(learn.hooks.call("state_dict", learn=learn)), copy)
    return states


def _restore_plugins(learn: Learner, states: dict[str, Any]) -> None:
    learn.hooks.call("load_state_dict", learn=learn, state=states)


def _set_rng(learn: Learner, state: dict[str, Any]) -> None:
    set_rng_state(state)


#: every part, in the order parts are put back (see the module doc)
PARTS: dict[str, Part] = {
    "loader": Part("the loader", _capture_loader, _restore_loader),
    "position": Part("the position", lambda learn, copy: replace(learn.run.pos), _restore_position),
    "stop_reason": Part(
        "the stop reason", lambda learn, copy: learn.run.stop_reason, _set_stop_reason
    ),
    "lr": Part("the lr", lambda learn, copy: learn.lr, _set_lr),
    "batch": Part("the batch state", _capture_batch, _restore_batch),
    "metrics": Part(
        "the metrics",
        lambda learn, copy: (dict(learn.metrics), dict(learn.run.metric_owner)),
        _restore_metrics,
    ),
    "modes": Part(
        "the train/eval modes",
        lambda learn, copy: [(m, m.training) for m in learn.model.modules()],
        _restore_modes,
    ),
    "model": Part("the model", _capture_model, _restore_model),
    "grads": Part("the gradients", _capture_grads, _restore_grads),
    "opt": Part("the optimizer", _capture_opt, _restore_opt),
    "generators": Part("the loaders' generators", _capture_generators, _restore_generators),
    "order": Part("the epoch's order", lambda learn, copy: learn.run.order, _set_order),
    "plugins": Part("the plugins", _capture_plugins, _restore_plugins),
    "rng": Part("the random state", lambda learn, copy: rng_state(), _set_rng),
}
