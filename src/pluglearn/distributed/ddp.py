"""DDP: data-parallel training under ``torchrun``, exact across ranks, as one plugin.

Example (``examples/train_ddp.py``)::

    learn = Learner(model, DataLoaders.from_datasets(train, valid, batch_size=64), plugins=[DDP()])
    learn.fit(3)              # torchrun --nproc_per_node 2 train.py: each rank takes 32 of the 64

Building ``DDP()`` under ``torchrun`` joins the process group the environment describes, unless
the program already did (gloo on CPU, NCCL with the local rank's GPU); the group is destroyed at
exit only when this plugin created it. Run alone, it says so once and changes nothing.

A fit on several processes (the README's "Many processes" tells the guarantees):

- ``after_create_opt``, as a wrapper (before any plugin's own, FSDP's sharding included): the
  ranks agree on the fit's settings and take rank 0's loader seed, the fit's first collective
  (:func:`~pluglearn.distributed.fit_agreement.agree_on_fit`).
- ``before_fit``, after the plugins' own (a cancel there is agreed: one all-reduce, which also
  tells every rank what the plugins of any rank need): ``learn.model`` is wrapped in
  ``DistributedDataParallel`` (``ddp_kwargs`` passed through) as ``learn.wrapped_model``, which
  the default ``predict`` calls in training; ``learn.model`` stays the user's module.
- each batch hook's whole call, through the extension point ``wrap_hook_calls``: each rank's
  loss weighted so that DDP's average of the gradients is one process's gradient (a loss with
  ``reduction="sum"`` first scaled to the global batch in ``learn.loss``, so metrics see one
  process's numbers; a validation loader that cannot tell its global batch is then refused at
  the fit's start), cancels held, a ``DistributedSampler``'s repeated validation items cut.
- validation calls the user's module: no collective per batch.

**Stopping together** without a collective per batch: a cancel held on one rank marks its
gradient of the model's smallest parameter with NaN before the backward of the next batch that
steps; DDP's all-reduce carries the mark to every rank, which then agrees (one small all-reduce)
on the strongest cancel any rank holds and raises it before the step, which is skipped. Where a
batch has no all-reduce (``should_step`` answering False) the ranks agree before each backward
instead. Agreements run only where some plugin may cancel, derived from the plugins' code
(:mod:`pluglearn.hooks.cancels`). A cancel from ``predict``, ``backward``, ``step`` or
``zero_grad`` is refused, naming the hook.

**Rank-local calls** (``validate``/``get_preds``/``predict`` in
:func:`pluglearn.distributed.ranks.local`): no agreement, and ``learn.model`` is called, not the
wrapper, whose forward may talk to the other ranks.
"""

from __future__ import annotations

import atexit
import sys
import time
import warnings
from collections.abc import Sized
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DistributedSampler

from ..data.batch_ops import head
from ..data.batch_tree import all_leaves
from ..exceptions import CancelBatchException, CancelException
from ..hooks.dispatch import is_noop
from ..hooks.markers import hookimpl
from ..plugins.train_step import loss_reduction
from . import ranks as pdist
from .cancel_agreement import CancelAgreement, Wrapper, batch_items
from .fit_agreement import agree_on_fit

PACKAGE = __name__.partition(".")[0] + "."  # "pluglearn."

if TYPE_CHECKING:
    from types import FrameType

    from ..hooks.dispatch import Caller
    from ..learner import Learner


def tells_global_items(loader: Any) -> bool:
    """Whether each rank knows the items of ``loader``'s global batch without a collective:
    pluglearn's loaders say it (``global_items``); a torch ``DistributedSampler`` gives every
    rank as many."""
    sampler = getattr(loader, "sampler", None)
    return hasattr(loader, "global_items") or isinstance(sampler, DistributedSampler)


def zero_loss(learn: Learner) -> torch.Tensor:
    """A zero that reaches every parameter the forward used, so DDP's all-reduce gets this
    rank's zero gradient: built from the output's tensors (a dict's, a tuple's), the graph DDP
    itself searches with ``find_unused_parameters=True`` (a zero built from the parameters
    would mark the unused ones ready twice there); from the parameters only when the output
    holds no tensor that requires grad."""
    leaves = all_leaves(learn.preds)
    outputs = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
    if outputs:
        return sum((t.sum() for t in outputs[1:]), outputs[0].sum()) * 0.0
    total = sum(p.sum() for p in learn.model.parameters() if p.requires_grad)
    assert isinstance(total, torch.Tensor)  # DDP refuses a model with no trained parameter
    return total * 0.0


class DDP:
    """Data-parallel training with ``DistributedDataParallel`` (see the module doc)."""

    def __init__(self, **ddp_kwargs: Any) -> None:
        self.ddp_kwargs = ddp_kwargs
        # what the fit trains through: DDP's wrapper of the model (FSDP: the sharded model)
        self.module: torch.nn.Module | None = None
        self.created = pdist.init_from_env()  # join torchrun's group now, unless one exists
        if self.created:
            atexit.register(self._teardown)
        self.cancels = CancelAgreement(self)
        self._failed = False
        self._world = 1  # the number of ranks, read once per fit
        self._weigh = True  # weigh each rank's loss (not under GradientAccumulation's weighing)
        self._sum = False  # the loss sums over its items
        self._step_sync = False  # agree again before each step (before_step/after_backward)
        self._early = False  # agree before each backward (batches that do not step)
        self._marks = True  # can a batch's cancel happen (else no mark is looked for)
        self._probe_param: torch.Tensor | None = None  # the parameter whose gradient is marked
        self._probe: torch.Tensor | None = None  # it, on a batch whose backward carries a mark
        self._first: tuple[int, ...] = ()  # the index of the probe's first element
        self._marked: Any = None  # the hook that marks this rank's gradient of it
        self._saved_wrapper: list[Any] = []
        # a DistributedSampler's padded validation: (every rank's real items, this rank, seen)
        self._padded: tuple[tuple[int, ...], int, int] | None = None
        self._padded_total = 0  # the real items of this validation batch on every rank
        self._fit_needs = (False, False, False)  # any rank's: step sync, early sync, marks
        if not pdist.is_distributed():
            name = type(self).__name__
            # at the first frame outside pluglearn, the user's line (FSDP() reaches this
            # __init__ through its own)
            level = 1  # (no helper function: mutmut's trampoline would be its caller)
            frame: FrameType | None = sys._getframe(0)
            while frame is not None and str(frame.f_globals.get("__name__")).startswith(PACKAGE):
                frame, level = frame.f_back, level + 1
            warnings.warn(
                f"{name}(): this process was not launched by torchrun with several processes "
                f"(WORLD_SIZE unset or 1), so it trains alone and {name}() does nothing; launch "
                "with `torchrun --nproc_per_node N script.py` to train on N processes.",
                stacklevel=level,
            )

    def _teardown(self) -> None:
        if self.created and pdist.is_distributed() and not self._failed:
            torch.distributed.barrier()  # no rank leaves while another still talks to it
            torch.distributed.destroy_process_group()
            # gloo's thread frees a finished collective a moment later; freed during the
            # interpreter's finalization, torch aborts ("terminate called without an active
            # exception", once in 30 runs of examples/train_ddp.py); torch cannot wait for it
            time.sleep(0.1)

    # ------------------------------------------------------------------ the fit's start

    @hookimpl(wrapper=True, tryfirst=True)
    def after_create_opt(self, learn: Learner) -> Wrapper:
        if pdist.world_size() > 1:  # before anything else talks across the ranks
            agree_on_fit(learn, type(self).__name__)
            self._prepare(learn)
        return (yield)

    def _prepare(self, learn: Learner) -> None:
        """What a subclass does once the ranks agreed, before the plugins' own
        ``after_create_opt`` (FSDP shards the model and rebuilds the optimizer)."""

    @hookimpl(wrapper=True)
    def before_fit(self, learn: Learner) -> Wrapper:
        if pdist.world_size() < 2:
            return (yield)
        self._start_fit(learn)
        try:
            result = yield
        except CancelException as cancel:  # held: a rank that skipped the fit alone would
            self.cancels.keep(learn, cancel)  # leave the others waiting in its first collective
            result = None
        # one all-reduce per fit: every rank cancels together, or none; and what the plugins
        # of any rank need agreed (see _needs)
        self.cancels.hooks_seen = learn.hooks
        agree, step_sync, early, marks = self.cancels.sync(learn, extra=self._needs(learn))
        self.cancels.agree, self._fit_needs = agree > 0, (step_sync > 0, early > 0, marks > 0)
        self._wrap(learn)  # after the other before_fit hooks (Device moved the model)
        return result

    def _start_fit(self, learn: Learner) -> None:
        """What every fit on several processes starts from (shared with FSDP)."""
        from ..plugins.accumulate import GradientAccumulation

        self._weigh = not any(
            isinstance(p, GradientAccumulation) and p.scale_loss for p in learn.plugins
        )
        self._sum = loss_reduction(learn.loss_func) == "sum"
        valid = learn.dls.valid
        if self._sum and valid is not None and not tells_global_items(valid):
            raise self._untold(valid)
        self._failed, self._probe, self._marked = False, None, None
        self.cancels.pending = None
        self._world = pdist.world_size()

    def _untold(self, loader: Any) -> ValueError:
        return ValueError(
            f"{type(self).__name__}(): a loss with reduction='sum' is scaled to the global "
            f"batch, whose items the validation loader ({type(loader).__name__}) does not tell "
            "(it has no `global_items` above 0 and no DistributedSampler), and validation "
            "runs no collective per batch, so valid_loss would not be one process's. Use "
            "DataLoaders.from_datasets(train, valid, batch_size=...), a torch DataLoader with "
            "a DistributedSampler, a loader whose `global_items` is the number of items of the "
            "global batch it just handed out, or reduction='mean'."
        )

    def _wrap(self, learn: Learner) -> None:
        kwargs = dict(self.ddp_kwargs)
        device = next(learn.model.parameters()).device
        if device.type == "cuda" and "device_ids" not in kwargs:
            kwargs["device_ids"] = [device]
        self.module = torch.nn.parallel.DistributedDataParallel(learn.model, **kwargs)
        trained = [p for p in learn.model.parameters() if p.requires_grad]
        self._probe_param = min(trained, key=lambda p: p.numel())  # carries a held cancel
        self._first = (0,) * self._probe_param.ndim
        learn.wrapped_model = self.module

    def _needs(self, learn: Learner) -> tuple[float, float, float, float]:
        """What this rank's plugins need agreed: at the ends of the pass hooks, before each
        step (a cancel from before_step or after_backward), before each backward (a batch that
        does not step has no gradient all-reduce to carry a mark), and whether a batch's cancel
        can happen at all (else no mark is looked for: on a GPU, a host sync per step saved)."""
        cancellers = self.cancels.cancellers
        held = cancellers(learn)
        in_batch = held or cancellers(learn, ("compute_loss",))
        skips_steps = cancellers(learn, ("should_step",), any_plugin=True)
        return (
            float(held),
            float(cancellers(learn, ("before_step", "after_backward"))),
            float(skips_steps and in_batch),
            float(in_batch),
        )

    @hookimpl
    def cleanup_fit(self, learn: Learner) -> None:
        if self.module is not None and learn.wrapped_model is self.module:
            learn.wrapped_model = None
        if self._marked is not None:
            self._marked.remove()
        self.module, self.cancels.pending, self._saved_wrapper = None, None, []
        self._probe = self._probe_param = self._marked = None

    @hookimpl
    def on_error(self) -> None:
        self._failed = True  # the other ranks may sit in a collective: no barrier at exit

    # ---------------------------------------------------------------------- the passes

    @hookimpl(wrapper=True)
    def before_train(self, learn: Learner) -> Wrapper:
        sampler: Any = getattr(learn.dl, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # torch's DistributedSampler: a new order each epoch
            sampler.set_epoch(learn.epoch)
        # what any rank's plugins needed at the fit's start, or this rank's need since then
        _, step_sync, early, marks = self._needs(learn)
        self._step_sync = self._fit_needs[0] or step_sync > 0
        self._early = self._fit_needs[1] or early > 0
        self._marks = self._fit_needs[2] or marks > 0
        return (yield from self.cancels.sync_after(learn))

    @hookimpl(wrapper=True)
    def before_validate(self, learn: Learner) -> Wrapper:
        # validation calls the user's module: no collective per batch, any batch count per rank
        self._saved_wrapper.append(learn.wrapped_model)
        if learn.wrapped_model is self.module:
            learn.wrapped_model = None
        self._padded = None
        sampler = getattr(learn.dl, "sampler", None)
        if isinstance(sampler, DistributedSampler) and not sampler.drop_last:
            assert isinstance(sampler.dataset, Sized)  # the sampler took its len() already
            n, world = len(sampler.dataset), sampler.num_replicas
            self._padded = (tuple(len(range(r, n, world)) for r in range(world)), sampler.rank, 0)
        return (yield from self.cancels.sync_after(learn))

    @hookimpl
    def cleanup_validate(self, learn: Learner) -> None:
        if self._saved_wrapper:
            learn.wrapped_model = self._saved_wrapper.pop()

    @hookimpl(wrapper=True)
    def after_fit(self, learn: Learner) -> Wrapper:
        return (yield from self.cancels.sync_after(learn))  # one stop_reason on every rank

    @hookimpl(wrapper=True)
    def after_train(self, learn: Learner) -> Wrapper:
        return (yield from self.cancels.sync_after(learn))

    @hookimpl(wrapper=True)
    def after_validate(self, learn: Learner) -> Wrapper:
        return (yield from self.cancels.sync_after(learn))

    @hookimpl(wrapper=True)
    def before_epoch(self, learn: Learner) -> Wrapper:
        return (yield from self.cancels.sync_after(learn))

    @hookimpl(wrapper=True)
    def after_epoch(self, learn: Learner) -> Wrapper:
        return (yield from self.cancels.sync_after(learn))

    # ----------------------------------------------------------------------- the batch

    @hookimpl
    def wrap_hook_calls(self, hook: str, call: Caller) -> Caller:
        """The batch hooks' whole calls, wrapped once per plugin set: cancels held or refused,
        and DDP's own work around them, in one plain frame per call (the hand-written loop has
        none). A hook no plugin implements cannot cancel, so it stays bare unless DDP has work
        of its own there."""
        if hook in ("after_pred", "after_step", "after_batch"):
            return self._guarded(call, drop_batch=hook != "after_pred")
        if hook in ("step", "zero_grad"):
            return self.cancels.refusing(call, hook)
        build = getattr(self, f"_call_{hook}", None)
        return call if build is None else build(call)

    def _guarded(self, call: Caller, drop_batch: bool = False) -> Caller:
        return call if is_noop(call) else self.cancels.held(call, drop_batch)

    def _call_predict(self, call: Caller) -> Caller:
        refusing = self.cancels.refusing(call, "predict")

        def predict(learn: Learner) -> Any:
            if self.module is not None:
                if learn.training:  # before the forward, which decides if the backward syncs
                    self._set_grad_sync(learn.will_step)
                elif learn.wrapped_model is self.module:  # a rank-local predict() in the fit
                    learn.wrapped_model = None
                    try:
                        return refusing(learn)
                    finally:
                        learn.wrapped_model = self.module
            return refusing(learn)

        return predict

    def _set_grad_sync(self, sync: bool) -> None:
        """Batches that only accumulate gradients skip the all-reduce (DDP's ``no_sync``); the
        flag is set only when it changes (``nn.Module.__setattr__`` costs microseconds)."""
        module = self.module
        assert isinstance(module, torch.nn.parallel.DistributedDataParallel)  # in a fit
        if module.require_backward_grad_sync is not sync:
            module.require_backward_grad_sync = sync

    def _call_before_batch(self, call: Caller) -> Caller:
        held = self._guarded(call)

        def before_batch(learn: Learner) -> Any:
            result = held(learn)
            if self._padded is not None and not learn.training:
                self._trim_padding(learn, self._padded)
            return result

        return before_batch

    def _trim_padding(self, learn: Learner, padded: tuple[tuple[int, ...], int, int]) -> None:
        """A ``DistributedSampler`` pads the validation set by repeating items so that every
        rank gets as many: cut the repeats off, so no item counts twice in the metrics. Every
        rank's batch holds ``n`` items (padding included), so the global batch's real items are
        known without a collective (a sum loss is scaled to them)."""
        reals, rank, seen = padded
        n = batch_items(learn)
        self._padded_total = sum(max(0, min(n, r - seen)) for r in reals)
        real = max(0, min(n, reals[rank] - seen))
        self._padded = (reals, rank, seen + n)
        if real == n:
            return
        if real == 0:  # only repeats: this rank skips the batch (no collective in validation;
            raise CancelBatchException  # the loop takes it in silence, so it says nothing)
        learn.batch = head(learn.batch, real)  # any structure: a pair, a dict, a dataclass

    def _call_compute_loss(self, call: Caller) -> Caller:
        def compute_loss(learn: Learner) -> Any:
            try:
                loss = call(learn)
            except CancelException as cancel:
                if self.module is None or not learn.training:
                    self.cancels.refuse(learn, cancel, "compute_loss")
                if not (self._early or (learn.will_step and self._marks)):
                    # no agreement before this backward, no mark looked for after it
                    raise self.cancels.undeclared(cancel, "compute_loss") from cancel
                self.cancels.keep(learn, cancel)  # agreed at the next step; this rank adds a zero
                return zero_loss(learn)
            if self.module is not None and learn.training and batch_items(learn) == 0:
                # this rank's empty slice of a short last batch: its (zero) gradient still
                # joins the all-reduce
                return zero_loss(learn)
            return loss

        return compute_loss

    def _call_after_loss(self, call: Caller) -> Caller:
        held = self._guarded(call)

        def after_loss(learn: Learner) -> Any:
            if self._sum and self.module is not None and not pdist.is_local():
                self._scale_sum(learn)
            result = held(learn)
            if self.module is not None and learn.training and self._early:
                self.cancels.sync(learn)  # before the backward: no all-reduce carries a mark
            return result

        return after_loss

    def _scale_sum(self, learn: Learner) -> None:
        """A sum over this rank's items, scaled to the global batch (``global / here``): what
        one process's loss is, so the metrics and plugins see its numbers; the backward's
        weight then makes the gradient one process's, as for a mean."""
        here = batch_items(learn)
        total = self._global_items(learn, here)
        if here and total:
            assert learn.loss is not None  # after compute_loss
            learn.loss = learn.loss * (total / here)

    def _call_backward(self, call: Caller) -> Caller:
        refusing = self.cancels.refusing(call, "backward")

        def backward(learn: Learner) -> Any:
            if self.module is None:
                return call(learn)
            self._probe = None
            if self._marks and learn.will_step and not self._early:  # rides the all-reduce
                probe = self._probe = self._probe_param
                assert probe is not None  # set with the module
                if self.cancels.pending is not None:  # NaN into this rank's gradient of it
                    self._marked = probe.register_hook(lambda g: g + float("nan"))
            if not (self._weigh or self._sum):
                return refusing(learn)
            here = batch_items(learn)
            total = self._global_items(learn, here)
            if self._weigh:  # the average of the ranks' gradients is one process's
                factor = here * self._world / total if total else 0.0
            else:  # GradientAccumulation adds a sum loss's batches: this rank's own sum
                factor = here / total if total else 0.0
            if factor == 1.0:
                return refusing(learn)
            loss = learn.loss
            assert loss is not None  # after compute_loss
            learn.loss = loss * factor
            try:
                return refusing(learn)
            finally:
                learn.loss = loss

        return backward

    def _global_items(self, learn: Learner, here: int) -> float:
        """Items of the global batch: told by pluglearn's loaders, equal slices under a torch
        ``DistributedSampler`` (its padded validation: the real ones), else summed over the
        ranks in training (one all-reduce); in validation, where ranks may have different
        numbers of batches and no collective runs, such a loader is refused."""
        told = getattr(learn.dl, "global_items", None)
        if isinstance(told, int) and told > 0:
            return told
        if isinstance(getattr(learn.dl, "sampler", None), DistributedSampler):
            if self._padded is not None and not learn.training:
                return self._padded_total  # the repeats cut off (_trim_padding)
            return here * self._world  # every rank gets as many items
        if not learn.training:  # the fit's start refused it; a loader swapped since
            raise self._untold(learn.dl)
        return pdist.reduce_sum(float(here))[0]

    def _call_after_backward(self, call: Caller) -> Caller:
        held = self._guarded(call)

        def after_backward(learn: Learner) -> Any:
            result = held(learn)
            if self._marked is not None:
                self._marked.remove()
                self._marked = None
            probe = self._probe.grad if self._probe is not None else None
            # NaN here on every rank: some rank marked it (or the gradient is NaN): agree now
            if probe is not None and (first := probe[self._first].item()) != first:
                self.cancels.sync(learn, after_backward=True)
            return result

        return after_backward

    def _call_before_step(self, call: Caller) -> Caller:
        held = self._guarded(call)

        def before_step(learn: Learner) -> Any:
            result = held(learn)
            if self.module is not None and self._step_sync:
                self.cancels.sync(learn)
            return result

        return before_step
