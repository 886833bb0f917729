"""The DDP plugin's batch hooks: each hook's whole call wrapped once per plugin set.

The registry asks every plugin with a ``wrap_hook_calls(hook, call)`` method to wrap the
compiled call of each hook (see :mod:`pluglearn.plugins.manager`). :class:`BatchCalls` wraps the
batch hooks with what DDP needs around them: cancels held for the next agreement or refused
(:mod:`pluglearn.callbacks.ddp_cancels`), validation padding cut off, each rank's loss weighted
by its share of the global batch, and the NaN mark that carries a held cancel on the gradient
all-reduce (see :mod:`pluglearn.callbacks.ddp`). One plain frame per call: a generator wrapper
per hook cost several frames and a ``StopIteration`` every batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DistributedSampler

from .. import dist as pdist
from ..exceptions import CancelBatchException, CancelException
from ..plugins.dispatch import is_noop
from .ddp_cancels import CancelAgreement, batch_items, zero_loss

if TYPE_CHECKING:
    from ..learner import Learner
    from ..plugins.dispatch import Caller


class BatchCalls(CancelAgreement):
    """The batch hooks' calls of :class:`~pluglearn.callbacks.ddp.DDP` (its base class)."""

    _padded: tuple[int, int] | None = None
    _weigh: bool = True
    _early: bool = False
    _step_sync: bool = False
    _probe_param: torch.Tensor | None = None
    _probe: torch.Tensor | None = None
    _marked: Any = None
    _world: int = 1  # the number of ranks, read once per fit
    _first: tuple[int, ...] = ()  # the index of the probe's first element
    _marks: bool = True  # can a batch's cancel happen (else no mark is looked for)

    def wrap_hook_calls(self, hook: str, call: Caller) -> Caller:
        """The batch hooks' whole calls, wrapped once per plugin set (the registry asks every
        plugin that has this method): cancels held or refused, and DDP's own work around them.
        One plain frame per call, where a generator wrapper per hook cost several every batch
        (the hand-written loop has none); a hook no plugin implements cannot raise a cancel,
        so it stays bare unless DDP has work of its own there."""
        if hook in ("after_pred", "after_step", "after_batch"):
            return call if is_noop(call) else self._held(call, drop_batch=hook != "after_pred")
        if hook in ("step", "zero_grad"):
            return self._refusing(call, hook)
        build = getattr(self, f"_call_{hook}", None)
        return call if build is None else build(call)

    def _guarded(self, call: Caller) -> Caller:
        return call if is_noop(call) else self._held(call)

    def _call_predict(self, call: Caller) -> Caller:
        refusing = self._refusing(call, "predict")

        def predict(learn: Learner) -> Any:
            if self.module is not None and learn.training:
                # before the forward, which decides whether the backward all-reduces
                self._set_grad_sync(learn.will_step)
            return refusing(learn)

        return predict

    def _set_grad_sync(self, sync: bool) -> None:
        """Batches that only accumulate gradients skip the all-reduce (DDP's ``no_sync``); the
        flag is set only when it changes (``nn.Module.__setattr__`` costs microseconds)."""
        if self.module.require_backward_grad_sync is not sync:
            self.module.require_backward_grad_sync = sync

    def _call_before_batch(self, call: Caller) -> Caller:
        held = self._guarded(call)

        def before_batch(learn: Learner) -> Any:
            result = held(learn)
            if not learn.training and self._padded is not None:
                self._trim_padding(learn)
            return result

        return before_batch

    def _trim_padding(self, learn: Learner) -> None:
        """A ``DistributedSampler`` pads the validation set by repeating items so that every
        rank gets as many: cut the repeats off, so no item counts twice in the metrics."""
        real_here, seen = self._padded
        n = batch_items(learn)
        real = max(0, min(n, real_here - seen))
        self._padded = (real_here, seen + n)
        if real == n:
            return
        if real == 0:  # only repeats: this rank skips the batch (no collective in validation)
            raise CancelBatchException("DDP: a batch of padding only")
        learn.batch = tuple(t[:real] for t in learn.batch)

    def _call_compute_loss(self, call: Caller) -> Caller:
        def compute_loss(learn: Learner) -> Any:
            try:
                loss = call(learn)
            except CancelException as cancel:
                if self.module is None or not learn.training:
                    self._refuse(learn, cancel, "compute_loss")
                if not (self._early or (learn.will_step and self._marks)):
                    # no agreement before this backward, no mark looked for after it
                    raise self._undeclared(cancel, "compute_loss") from cancel
                self._keep(cancel)  # agreed at the next step; this rank adds a zero gradient
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
            result = held(learn)
            if self.module is not None and learn.training and self._early:
                # before the backward: a batch that does not step has no all-reduce
                self._sync(learn)
            return result

        return after_loss

    def _call_backward(self, call: Caller) -> Caller:
        refusing = self._refusing(call, "backward")

        def backward(learn: Learner) -> Any:
            if self.module is None:
                return call(learn)
            self._probe = None
            if self._marks and learn.will_step and not self._early:  # rides the all-reduce
                self._probe = self._probe_param
                if self._pending is not None:  # NaN into this rank's gradient of the probe
                    self._marked = self._probe.register_hook(lambda g: g + float("nan"))
            if not self._weigh:
                return refusing(learn)
            here = batch_items(learn)
            total = self._global_items(learn, here)
            factor = here * self._world / total if total else 0.0
            if factor == 1.0:
                return refusing(learn)
            loss = learn.loss
            learn.loss = loss * factor
            try:
                return refusing(learn)
            finally:
                learn.loss = loss

        return backward

    def _global_items(self, learn: Learner, here: int) -> float:
        """Items of the global batch: told by pluglearn's loaders, equal slices under a torch
        ``DistributedSampler``, else summed over the ranks (one all-reduce)."""
        told = getattr(learn.dl, "global_items", None)
        if isinstance(told, int) and told > 0:
            return told
        if isinstance(getattr(learn.dl, "sampler", None), DistributedSampler):
            return here * self._world  # every rank gets as many items
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
                self._sync(learn, after_backward=True)
            return result

        return after_backward

    def _call_before_step(self, call: Caller) -> Caller:
        held = self._guarded(call)

        def before_step(learn: Learner) -> Any:
            result = held(learn)
            if self.module is not None and self._step_sync:
                self._sync(learn)
            return result

        return before_step
