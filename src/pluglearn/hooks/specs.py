"""Every hook of pluglearn, where it fires, what state is valid then and what a plugin may change.

A plugin is an *instance* whose methods carry ``@hookimpl``; each method may take any subset of
the arguments declared here (most take only ``learn``). The call order of one ``learn.fit(2)``::

    after_create_opt                                  the optimizer exists, no resume loaded yet
    before_fit
      before_epoch                                    epoch 0
        before_train
          before_batch                                one per training batch
            should_step                               does this batch end with an optimizer step?
            forward_context: [ predict -> after_pred -> compute_loss ]
            after_loss                                metrics weigh by count_items
            backward -> after_backward
            before_step -> step -> after_step -> zero_grad      (only when should_step)
          after_batch
          cleanup_batch
        after_train
        cleanup_train
        collect_metrics(phase="train")
        before_validate                               model.eval() under torch.no_grad()
          before_batch, [predict, after_pred, compute_loss], after_loss, after_batch, cleanup_batch
        after_validate
        cleanup_validate
        collect_metrics(phase="valid")
        report(metrics)                               once per epoch, merged metrics
      after_epoch
      cleanup_epoch
      before_epoch                                    epoch 1 ... as above
    after_fit
    cleanup_fit

Many processes (``DDP`` under ``torchrun``): every hook runs on every rank, in the same order, with
``learn.batch`` holding that rank's slice of the global batch. Metrics are all-reduced before
``collect_metrics`` answers, so ``report``, ``after_epoch`` and the stopping plugins see the same
numbers on every rank; reporters print and write files on rank 0 only
(``pluglearn.distributed.ranks.is_main_process``); ``state_dict`` is collected on every rank and
gathered to rank 0 for the one checkpoint file. A ``CancelXException`` raised by an event hook on
one rank is raised on every rank at the next optimizer step (one batch later when raised after the
step); one from ``predict``, ``backward``, ``step`` or ``zero_grad`` is refused (see
:mod:`pluglearn.distributed.ddp`). ``validate``, ``get_preds`` and ``predict`` outside the fit's own
passes are rank-local (:func:`pluglearn.distributed.ranks.local`): their hooks run on the calling
rank only, over the whole validation set, with no reduction.

``make_dataloader`` is called at the start of a fit (before ``before_fit``) for every dataset
the :class:`~pluglearn.DataLoaders` holds as a dataset rather than as a ready loader.

Cancelling: raising ``CancelXException`` (X = Fit, Epoch, Train, Validate, Batch) from any hook
ends phase X early: ``after_X`` is skipped, ``cleanup_X`` runs, the loop goes on after X.
Any other exception calls ``on_error`` once (before any cleanup), then every ``cleanup_*`` of
the phases it crosses runs, then it reaches the caller with a note naming the plugin, the hook,
the epoch and the batch. Every implementation of ``on_error`` and ``cleanup_*`` runs even when
one of them raises (the first such error is raised after the others ran).

How each hook is called is one table, :data:`HOOKS` at the end of this module, read by the
dispatcher (:mod:`pluglearn.hooks.dispatch`): *events* call every implementation in order and the
first exception stops the rest; *run-all* hooks (``cleanup_*``, ``on_error``) call every
implementation even when some raise, then raise the first error; *steps* are first result wins;
*collect* hooks (``collect_metrics``, ``state_dict``) return every plugin's answer with its name;
``load_state_dict`` gives each plugin its own saved part; ``forward_context`` enters every
returned context manager. ``@hookimpl(wrapper=True)`` implementations (pluggy's new-style
wrappers) wrap the whole call and keep every rule of its kind.

Steps (``predict``, ``compute_loss``, ``should_step``, ``backward``, ``step``, ``zero_grad``,
``make_dataloader``, ``count_items``) are *first result wins*: the first implementation that
returns something other than ``None`` answers and the rest are not called. The built-in
``TrainStep`` and ``DefaultLoader`` answer last, so any plugin that answers replaces the default.
``count_items`` is not called by the loop: the plugins that weigh batches by their items ask it
(``AvgLoss`` in ``after_loss``, ``GradientAccumulation`` in ``backward``, ``DDP``), and so does
``get_preds``.

After the hooks, two **registry extension points** are declared (:data:`EXTENSION_POINTS`):
``wrap_hook_calls(hook, call)`` and ``instrument_hooks(impl, fn)``, methods the registry calls
while it compiles the callers, implemented with ``@hookimpl`` and checked like hooks.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, NamedTuple

from .markers import PROJECT_NAME, declare

if TYPE_CHECKING:
    from collections.abc import Iterable

    import torch

    from ..learner import Learner
    from .dispatch import Caller, Impl


# --------------------------------------------------------------------------------------- fit


@declare()
def after_create_opt(learn: Learner) -> None:
    """Start of ``fit``, before ``before_fit``: ``learn.opt`` exists with ``lr`` set, and a
    checkpoint given as ``resume_from`` is NOT loaded yet. Build what wraps the optimizer here
    (an lr scheduler): the resume then loads its saved state into it, so a resumed run follows
    the same lr and momentum sequence. Also fires for ``lr_find``."""


@declare()
def before_fit(learn: Learner) -> None:
    """Start of ``fit``. Valid: ``model``, ``opt`` (created), ``dls`` (loaders made),
    ``n_epochs``, ``epoch`` (the first epoch to run: 0, or the resumed one).
    Typical use: set up state, move the model, open files."""


@declare()
def after_fit(learn: Learner) -> None:
    """All epochs ran (skipped when the fit was cancelled or failed)."""


@declare("run_all")
def cleanup_fit(learn: Learner) -> None:
    """The fit's ``finally``: always runs, after success, cancel or error. Close what you opened."""


# ------------------------------------------------------------------------------------- epoch


@declare()
def before_epoch(learn: Learner) -> None:
    """Start of an epoch. Valid: ``epoch`` (0-based), ``n_epochs``. An epoch is a train pass then
    a validate pass."""


@declare()
def after_epoch(learn: Learner) -> None:
    """End of an epoch, after ``report``. Valid: ``metrics`` (this epoch's merged metrics).
    Typical use: early stopping, saving the best model, schedules per epoch."""


@declare("run_all")
def cleanup_epoch(learn: Learner) -> None:
    """The epoch's ``finally``: always runs."""


# ------------------------------------------------------------------------- train / validate


@declare()
def before_train(learn: Learner) -> None:
    """Start of the train pass; the model is in train mode. Valid: ``dl`` (the training loader),
    ``n_iter`` (its number of batches, when it has a length), ``training`` is True."""


@declare()
def after_train(learn: Learner) -> None:
    """Every training batch of the epoch ran (skipped when the pass was cancelled)."""


@declare("run_all")
def cleanup_train(learn: Learner) -> None:
    """The train pass's ``finally``: always runs."""


@declare()
def before_validate(learn: Learner) -> None:
    """Start of a validation pass: the model is in eval mode and gradients are off
    (``torch.no_grad``). Valid: ``dl``, ``n_iter``; ``training`` is False. Also fires for
    ``learn.validate()`` and ``learn.get_preds()`` outside a fit."""


@declare()
def after_validate(learn: Learner) -> None:
    """Every validation batch ran (skipped when the pass was cancelled)."""


@declare("run_all")
def cleanup_validate(learn: Learner) -> None:
    """The validation pass's ``finally``: always runs."""


# ------------------------------------------------------------------------------------- batch


@declare()
def before_batch(learn: Learner) -> None:
    """A batch was drawn. Valid: ``batch`` (an ``(xb, yb)`` pair), ``xb``, ``yb``, ``iter``
    (0-based index in the pass). A plugin may replace ``learn.batch`` (move it to a device,
    augment it)."""


@declare()
def after_pred(learn: Learner) -> None:
    """``predict`` answered. Valid: ``preds``; a plugin may replace it."""


@declare()
def after_loss(learn: Learner) -> None:
    """``compute_loss`` answered. Valid: ``loss`` (a scalar tensor); a plugin may replace it.
    Metrics accumulate here (in both passes; test ``learn.training``)."""


@declare()
def after_backward(learn: Learner) -> None:
    """Training only, every batch: this batch's backward ran. With gradient accumulation
    ``.grad`` holds a partial sum: clip in ``before_step``, which sees the whole gradient."""


@declare()
def before_step(learn: Learner) -> None:
    """Training only, on the batches that step (see ``should_step``): every backward of the
    accumulated group ran, the optimizer has not stepped. The whole gradient is in ``.grad``:
    clip, unscale or inspect it here."""


@declare()
def after_step(learn: Learner) -> None:
    """Training only: the optimizer stepped (schedulers per batch go here). Skipped on batches
    that only accumulate gradients."""


@declare()
def after_batch(learn: Learner) -> None:
    """The batch is done (after ``zero_grad`` when training). Progress bars update here."""


@declare("run_all")
def cleanup_batch(learn: Learner) -> None:
    """The batch's ``finally``: always runs."""


@declare("run_all")
def on_error(learn: Learner, error: BaseException) -> None:
    """An exception other than a cancel (including ``KeyboardInterrupt``) was raised; called once,
    before any ``cleanup_*``. ``error`` already carries pluglearn's note of where it came from.
    Use it to save a last checkpoint or to log; the error is re-raised after the cleanups."""


# ------------------------------------------------------------------- steps: first result wins


@declare("first")
def predict(learn: Learner) -> Any:
    """Compute predictions for ``learn.xb`` and return them (default: ``learn.model(learn.xb)``)."""


@declare("first")
def compute_loss(learn: Learner) -> torch.Tensor | None:
    """Compute the loss from ``learn.preds`` and ``learn.yb``; return it (the default:
    ``learn.loss_func(learn.preds, learn.yb)``)."""


@declare("first")
def should_step(learn: Learner) -> bool | None:
    """Training only, after ``before_batch``: True when this batch ends with an optimizer step,
    False when its gradients keep adding up (the default answers True). Sets
    ``learn.will_step`` before the forward pass, so a DDP plugin can skip the gradient
    all-reduce of the batches that do not step."""


@declare("context")
def forward_context(learn: Learner) -> Any:
    """Return a context manager (or None) to enter around ``predict``, ``after_pred`` and
    ``compute_loss`` of every batch, e.g. ``torch.autocast("cpu", torch.bfloat16)``. Every
    returned context is entered in plugin order and exited in reverse, before ``after_loss``."""


@declare("first")
def backward(learn: Learner) -> bool | None:
    """Training only: compute gradients; return True when done (the default:
    ``learn.loss.backward()``). Manual backward and mixed precision answer this."""


@declare("first")
def step(learn: Learner) -> bool | None:
    """Training only, on the batches that step: update the weights; return True when done (the
    default: ``learn.opt.step()``)."""


@declare("first")
def zero_grad(learn: Learner) -> bool | None:
    """Training only, after ``after_step``: reset the gradients; return True when done (the
    default: ``learn.opt.zero_grad()``)."""


@declare("first")
def make_dataloader(learn: Learner, dataset: Any, train: bool) -> Iterable[Any] | None:
    """Return an iterable of ``(xb, yb)`` batches over ``dataset`` (``train``: shuffled, for the
    train pass), or ``None`` to let the next plugin answer. Called once per fit for each dataset
    of ``learn.dls`` built with ``DataLoaders.from_datasets``; the loader's ``close()`` (if any)
    is called at the end of the fit. Settings live in ``learn.dls`` (``batch_size``, ...)."""


@declare("first")
def count_items(learn: Learner, batch: Any) -> int | None:
    """Return how many items ``batch`` holds, or ``None`` to let the next plugin answer. Asked by
    the plugins that weigh a batch by its items: ``AvgLoss`` (per-item averages),
    ``GradientAccumulation`` (its default ``count``) and ``DDP`` (a short last batch, padding),
    and by ``get_preds`` (each per-item list of the predictions and targets must hold as many
    entries). The default (``TrainStep``) is :func:`pluglearn.data.batch_ops.count_items`: the
    targets' item count (a pair's ``batch[1]``, a mapping's ``labels``), else the first
    tensor's leading size. Answer it for a batch whose items pluglearn cannot count."""


# ------------------------------------------------------------------- metrics and reporting


@declare("collect")
def collect_metrics(learn: Learner, phase: str) -> dict[str, float] | None:
    """End of a pass (``phase`` is ``"train"`` or ``"valid"``): return this plugin's metrics
    for the pass, already reduced across processes. The Learner merges every answer into
    ``learn.metrics``; two plugins giving the same name is an error."""


@declare()
def report(learn: Learner, metrics: dict[str, Any]) -> None:
    """Once per epoch, after the validation pass: every reporter receives the merged metrics
    (``epoch``, ``train_loss``, ``valid_loss``, each metric, ``time``). Reporters must not depend on
    one another; print only on the main process (see
    ``pluglearn.distributed.ranks.is_main_process``). With ``ValidateEvery``
    (``fit(valid_every=n)``) also after each validation between epochs, whose metrics hold a
    ``step`` (training batches so far) and the validation's metrics only."""


# --------------------------------------------------------------------------- checkpoint state


@declare("collect")
def state_dict(learn: Learner) -> dict[str, Any] | None:
    """Return this plugin's state for a checkpoint (tensors, numbers, strings, lists, dicts only:
    checkpoints load with ``weights_only=True``). Collected from every plugin, keyed by the
    plugin's name."""


@declare("addressed")
def load_state_dict(learn: Learner, state: dict[str, Any]) -> None:
    """Restore the state this plugin returned from ``state_dict`` (called only for plugins that
    saved state, with their own part)."""


# --------------------------------------------------------------- registry extension points
#
# Not hooks: methods the registry calls while it compiles the callers of a plugin set (once per
# change of the plugins, never per batch). A plugin implements one with ``@hookimpl``, as a hook;
# the guards refuse a marked method whose name is neither a hook nor an extension point (with a
# did-you-mean) and one whose arguments are not the declared ones. Every plugin implementing
# one is composed in registration order (the last registered outermost); ``tryfirst``,
# ``trylast`` and ``wrapper`` do not apply.


def extension_point(function: Any) -> Any:
    """Declare ``function`` (its name and arguments) as a registry extension point."""
    setattr(function, f"{PROJECT_NAME}_extension", True)
    return function


@extension_point
def wrap_hook_calls(hook: str, call: Caller) -> Caller:
    """Return ``call`` (the compiled call of ``hook``: every implementation and wrapper, one
    argument, see :mod:`pluglearn.hooks.dispatch`) or a replacement that calls it, e.g. to
    hold the cancels it raises. ``DDP`` holds and refuses cancels here, one frame per call.

    Example::

        class Trace:
            @hookimpl
            def wrap_hook_calls(self, hook, call):
                if hook != "after_loss":
                    return call  # left as it is: the bare caller
                def traced(learn):
                    print("after_loss starts")
                    return call(learn)
                return traced
    """
    return call  # the default: the call as it is


@extension_point
def instrument_hooks(impl: Impl, fn: Caller) -> Caller:
    """Return ``fn`` (one implementation ``impl`` of one hook, as a one-argument callable) or a
    replacement that calls it: the ``Profiler`` times every implementation here.

    Example::

        class CountCalls:
            def __init__(self):
                self.calls = collections.Counter()

            @hookimpl
            def instrument_hooks(self, impl, fn):
                def counted(arg):
                    self.calls[impl.plugin, impl.hook] += 1
                    return fn(arg)
                return counted
    """
    return fn  # the default: the implementation as it is


# ------------------------------------------------------------------------ the dispatch table


class Hook(NamedTuple):
    """How the dispatcher calls one hook: the arguments it provides and its kind."""

    args: tuple[str, ...]
    kind: str  # a key of KIND_DOCS: "event", "run_all", "first", "collect", "addressed", "context"


class KindDoc(NamedTuple):
    """A kind of hook as the README and ``pluglearn hooks`` name and explain it, e.g.
    ``KIND_DOCS[HOOKS["cleanup_fit"].kind].title == "run all"``."""

    title: str
    meaning: str


#: every kind of :data:`HOOKS` as documented (the README's hook table, ``pluglearn hooks``)
KIND_DOCS: dict[str, KindDoc] = {
    "event": KindDoc(
        "event", "calls every implementation in order; the first exception stops the rest"
    ),
    "run_all": KindDoc(
        "run all", "calls every implementation even when some raise, then raises the first error"
    ),
    "first": KindDoc(
        "step", "stops at the first implementation that returns something other than None"
    ),
    "collect": KindDoc("collect", "returns every plugin's answer with its name"),
    "addressed": KindDoc("addressed", "gives each plugin its own saved state"),
    "context": KindDoc("context", "enters every returned context manager"),
}


def _table() -> dict[str, Hook]:
    table = {}
    for name, fn in list(globals().items()):
        opts = getattr(fn, f"{PROJECT_NAME}_spec", None)
        if opts is not None:
            kind = getattr(fn, f"{PROJECT_NAME}_kind")  # declared once, with the hook
            table[name] = Hook(tuple(inspect.signature(fn).parameters), kind)
    return table


#: every hook: name -> (arguments, kind), in declaration order
HOOKS: dict[str, Hook] = _table()
#: every registry extension point: name -> its arguments (called positionally, in this order)
EXTENSION_POINTS: dict[str, tuple[str, ...]] = {
    name: tuple(inspect.signature(fn).parameters)
    for name, fn in list(globals().items())
    if getattr(fn, f"{PROJECT_NAME}_extension", False)
}
#: the events of one training batch that steps, in call order (a validation batch skips the
#: backward and step events)
BATCH_EVENTS = (
    "before_batch",
    "after_pred",
    "after_loss",
    "after_backward",
    "before_step",
    "after_step",
    "after_batch",
    "cleanup_batch",
)
