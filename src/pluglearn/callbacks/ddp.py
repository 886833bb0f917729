"""DDP: data-parallel training under ``torchrun``, exact across ranks.

Example (``examples/train_ddp.py``)::

    learn = Learner(model, DataLoaders.from_datasets(train, valid, batch_size=64), plugins=[DDP()])
    learn.fit(3)              # torchrun --nproc_per_node 2 train.py: each rank takes 32 of the 64

Under ``torchrun`` (``WORLD_SIZE`` > 1) building ``DDP()`` joins the process group the
environment describes, unless the program already did (gloo on CPU, NCCL with the local rank's
GPU), so a torch ``DistributedSampler`` built afterwards sees it; the group is destroyed at exit
only when this plugin created it. Run alone, it says so once and changes nothing.

For each fit it wraps ``learn.model`` in ``DistributedDataParallel`` (``ddp_kwargs`` passed
through) as ``learn.wrapped_model``, which the default ``predict`` calls in the train pass;
``learn.model`` stays the user's module (state dicts, ``get_preds``, checkpoints: no
``module.`` prefix), and validation calls it directly (no collective per validation batch).

Exact: ``batch_size`` is the *global* batch; each rank takes its slice of every batch of the one
permutation all ranks draw (see :mod:`pluglearn.data.loaders`), so W ranks step with the items
one process would. DDP averages the ranks' gradients; for a loss that is a mean over its items
this plugin weights each rank's loss by ``W * items_here / items_of_the_global_batch`` (1 when the
slices are equal; a short last batch has unequal ones), so the step is the one process's step.
With ``GradientAccumulation`` the accumulation's item weighting does this instead, and batches
that do not step skip the all-reduce (``require_backward_grad_sync = learn.will_step``).
A torch ``DataLoader`` with a ``DistributedSampler`` gets ``set_epoch`` each epoch; torch pads its
ragged tail by repeating items (in training that is torch's contract, not one process's
batches); in validation this plugin cuts the repeats off each rank's batches, so the metrics
count every item once.

Stopping together: a cancel (``CancelFitException`` from ``TerminateOnNaN``, ``EarlyStopping``
or any plugin, and the other ``CancelXException``) raised by an event hook on one rank is held,
and every rank raises it at the next synchronisation point: the end of ``after_loss`` of a
training batch (before the backward and its all-reduce), the end of ``before_step`` when a
plugin implements ``before_step`` or ``after_backward``, and the end of each ``before_X`` and
``after_X`` of fit, epoch, train and validate. A ``CancelBatchException`` raised after the step
(``after_step``, ``after_batch``) has nothing left to skip and is dropped. Errors need nothing:
the failing rank exits and ``torchrun`` ends the others at once, printing that rank's error.
"""

from __future__ import annotations

import atexit
import warnings
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DistributedSampler

from .. import dist as pdist
from ..exceptions import (
    CancelBatchException,
    CancelEpochException,
    CancelException,
    CancelFitException,
    CancelTrainException,
    CancelValidateException,
)
from ..plugins.markers import hookimpl

if TYPE_CHECKING:
    from ..learner import Learner

#: the cancels, weakest first: when ranks hold different ones, every rank raises the strongest
LEVELS = (
    CancelBatchException,
    CancelValidateException,
    CancelTrainException,
    CancelEpochException,
    CancelFitException,
)
Wrapper = Generator[None, Any, Any]


def _level(cancel: CancelException) -> int:
    return max(i for i, kind in enumerate(LEVELS) if isinstance(cancel, kind))


def _items(learn: Learner) -> int:
    targets = learn.batch[1]
    if isinstance(targets, torch.Tensor):
        return targets.shape[0] if targets.ndim else 1
    return len(targets)


class DDP:
    """Data-parallel training with ``DistributedDataParallel`` (see the module doc)."""

    def __init__(self, **ddp_kwargs: Any) -> None:
        self.ddp_kwargs = ddp_kwargs
        self.module: torch.nn.parallel.DistributedDataParallel | None = None
        self.created = pdist.init_from_env()  # join torchrun's group now, unless one exists
        if self.created:
            atexit.register(self._teardown)
        self._failed = False
        self._pending: CancelException | None = None  # a cancel of this rank, not yet agreed
        self._global_items = 0.0
        self._weigh = True
        self._step_sync = False
        self._saved_wrapper: list[Any] = []
        self._padded: tuple[int, int] | None = None
        if not pdist.is_distributed():
            warnings.warn(
                "DDP(): this process was not launched by torchrun with several processes "
                "(WORLD_SIZE unset or 1), so it trains alone and DDP() does nothing; launch "
                "with `torchrun --nproc_per_node N script.py` to train on N processes.",
                stacklevel=2,
            )

    @property
    def active(self) -> bool:
        """True inside a fit on several processes."""
        return self.module is not None

    def _teardown(self) -> None:
        if self.created and pdist.is_distributed() and not self._failed:
            torch.distributed.barrier()  # no rank leaves while another still talks to it
            torch.distributed.destroy_process_group()

    # ------------------------------------------------------------------ wrap and unwrap

    @hookimpl(trylast=True)  # after Device moved the model
    def before_fit(self, learn: Learner) -> None:
        if pdist.world_size() < 2:
            return
        from .accumulate import GradientAccumulation

        kwargs = dict(self.ddp_kwargs)
        device = next(learn.model.parameters()).device
        if device.type == "cuda" and "device_ids" not in kwargs:
            kwargs["device_ids"] = [device]
        self.module = torch.nn.parallel.DistributedDataParallel(learn.model, **kwargs)
        learn.wrapped_model = self.module
        self._weigh = not any(
            isinstance(p, GradientAccumulation) and p.scale_loss for p in learn.plugins
        )
        self._failed, self._pending = False, None

    @hookimpl
    def cleanup_fit(self, learn: Learner) -> None:
        if self.module is not None and learn.wrapped_model is self.module:
            learn.wrapped_model = None
        self.module, self._pending, self._saved_wrapper = None, None, []

    @hookimpl
    def on_error(self) -> None:
        self._failed = True  # the other ranks may sit in a collective: no barrier at exit

    # --------------------------------------------------------------------- each pass

    @hookimpl(wrapper=True)
    def before_train(self, learn: Learner) -> Wrapper:
        sampler = getattr(learn.dl, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # torch's DistributedSampler: a new order each epoch
            sampler.set_epoch(learn.epoch)
        # a cancel from before_step or after_backward must be agreed before the step
        self._step_sync = any(
            getattr(i.function, "__self__", None) is not self
            for h in ("before_step", "after_backward")
            for i in learn.hooks.impls.get(h, [])
        )
        return (yield from self._sync_after(learn))

    @hookimpl(wrapper=True)
    def before_validate(self, learn: Learner) -> Wrapper:
        # validation calls the user's module: no collective per batch, any batch count per rank
        self._saved_wrapper.append(learn.wrapped_model)
        if learn.wrapped_model is self.module:
            learn.wrapped_model = None
        self._padded = None
        sampler = getattr(learn.dl, "sampler", None)
        if isinstance(sampler, DistributedSampler) and not sampler.drop_last:
            n, world, rank = len(sampler.dataset), sampler.num_replicas, sampler.rank
            self._padded = (len(range(rank, n, world)), 0)  # (real items of this rank, seen)
        return (yield from self._sync_after(learn))

    @hookimpl
    def cleanup_validate(self, learn: Learner) -> None:
        if self._saved_wrapper:
            learn.wrapped_model = self._saved_wrapper.pop()

    # ------------------------------------------------------------------- each batch

    @hookimpl
    def forward_context(self, learn: Learner) -> None:
        if self.module is not None and learn.training:
            # batches that only accumulate gradients skip the all-reduce (DDP's no_sync)
            self.module.require_backward_grad_sync = learn.will_step

    @hookimpl(wrapper=True)
    def compute_loss(self, learn: Learner) -> Wrapper:
        loss = yield
        if self.module is not None and learn.training and _items(learn) == 0:
            # this rank's empty slice of a short last batch: a zero that still reaches every
            # parameter, so the all-reduce has this rank's (zero) gradient
            preds = learn.preds
            return preds.sum() * 0.0 if isinstance(preds, torch.Tensor) else loss * 0.0
        return loss

    @hookimpl(wrapper=True)
    def before_batch(self, learn: Learner) -> Wrapper:
        result = yield from self._hold()
        if not learn.training and self._padded is not None:
            self._trim_padding(learn)
        return result

    def _trim_padding(self, learn: Learner) -> None:
        """A ``DistributedSampler`` pads the validation set by repeating items so that every
        rank gets as many: cut the repeats off, so no item counts twice in the metrics."""
        real_here, seen = self._padded
        n = _items(learn)
        real = max(0, min(n, real_here - seen))
        self._padded = (real_here, seen + n)
        if real == n:
            return
        if real == 0:  # only repeats: this rank skips the batch (no collective in validation)
            raise CancelBatchException("DDP: a batch of padding only")
        learn.batch = tuple(t[:real] for t in learn.batch)

    @hookimpl(wrapper=True)
    def after_pred(self, learn: Learner) -> Wrapper:
        return (yield from self._hold())

    @hookimpl(wrapper=True)
    def after_loss(self, learn: Learner) -> Wrapper:
        result = yield from self._hold()
        if self.module is not None and learn.training:
            self._global_items = self._sync(learn, _items(learn))  # before the backward
        return result

    @hookimpl(wrapper=True)
    def backward(self, learn: Learner) -> Wrapper:
        if self.module is None or not self._weigh:
            return (yield)
        here, total = _items(learn), self._global_items
        factor = here * pdist.world_size() / total if total else 0.0
        if factor == 1.0:
            return (yield)
        loss = learn.loss
        learn.loss = loss * factor
        try:
            return (yield)
        finally:
            learn.loss = loss

    @hookimpl(wrapper=True)
    def after_backward(self, learn: Learner) -> Wrapper:
        return (yield from self._hold())

    @hookimpl(wrapper=True)
    def before_step(self, learn: Learner) -> Wrapper:
        result = yield from self._hold()
        if self.module is not None and self._step_sync:
            self._sync(learn)
        return result

    @hookimpl(wrapper=True)
    def after_step(self, learn: Learner) -> Wrapper:
        return (yield from self._hold(drop_batch=True))

    @hookimpl(wrapper=True)
    def after_batch(self, learn: Learner) -> Wrapper:
        return (yield from self._hold(drop_batch=True))

    # ------------------------------------------------------------- the other phases

    @hookimpl(wrapper=True)
    def after_train(self, learn: Learner) -> Wrapper:
        return (yield from self._sync_after(learn))

    @hookimpl(wrapper=True)
    def after_validate(self, learn: Learner) -> Wrapper:
        return (yield from self._sync_after(learn))

    @hookimpl(wrapper=True)
    def before_epoch(self, learn: Learner) -> Wrapper:
        return (yield from self._sync_after(learn))

    @hookimpl(wrapper=True)
    def after_epoch(self, learn: Learner) -> Wrapper:
        return (yield from self._sync_after(learn))

    # ------------------------------------------------------------- holding cancels

    def _hold(self, drop_batch: bool = False) -> Wrapper:
        """Run the hook; on several processes keep a cancel for the next synchronisation."""
        try:
            return (yield)
        except CancelException as cancel:
            if self.module is None:
                raise
            if drop_batch and _level(cancel) == 0:
                return None  # after the step a batch cancel has nothing left to skip
            if self._pending is None or _level(cancel) > _level(self._pending):
                self._pending = cancel
            return None

    def _sync_after(self, learn: Learner) -> Wrapper:
        result = yield from self._hold()
        if self.module is not None:
            self._sync(learn)
        return result

    def _sync(self, learn: Learner, items: float = 0.0) -> float:
        """Agree on the cancels every rank holds (raise the strongest on all of them) and sum
        ``items``: one all-reduce of a few numbers."""
        flags = [0.0] * len(LEVELS)
        if self._pending is not None:
            flags[_level(self._pending)] = 1.0
        *held, total = pdist.reduce_sum(*flags, float(items))
        if not any(held):
            return total
        level = max(i for i, n in enumerate(held) if n)
        mine = (
            self._pending if self._pending is not None and _level(self._pending) == level else None
        )
        self._pending = None
        said = pdist.all_gather(
            (pdist.rank(), str(mine), learn.stop_reason) if mine is not None else None
        )
        who, message, reason = next(s for s in said if s is not None)
        if learn.stop_reason is None:
            learn.stop_reason = reason
        if mine is not None:
            raise mine
        cancel = LEVELS[level](message)
        cancel.add_note(f"pluglearn DDP: raised on rank {who}; every rank stops together")
        raise cancel
