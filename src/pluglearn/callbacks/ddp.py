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

Stopping together, with no collective of its own per batch (see
:mod:`pluglearn.callbacks.ddp_cancels`): a cancel (``CancelFitException`` from
``TerminateOnNaN``, ``EarlyStopping`` or any plugin, and the other ``CancelXException``) raised
on one rank in a training batch is held, and the rank marks its gradient of the model's smallest
parameter with NaN before the backward of the next batch that steps. DDP's own gradient
all-reduce carries the mark to every rank, which looks at one number after the backward and
only then agrees (one small all-reduce) on which cancel to raise. **A cancel takes effect on
every rank at the next optimizer step**: right after that batch's backward, before
``after_backward`` and the step, which is skipped; the gradients are put back as ``zero_grad``
left them, so the run is the one process's that cancels in that batch before its backward
(tested against one process, from ``after_loss`` and ``compute_loss``). A cancel raised after
a step (``after_step``, ``after_batch``) takes effect at the next batch (computed, not
stepped; the weights are those of one process stopping there); a ``CancelBatchException``
there is dropped. A NaN gradient of that parameter with no cancel held costs one agreement.
When a plugin answers ``should_step`` (``GradientAccumulation``), batches that do not step have
no all-reduce to carry the mark, so the ranks agree before each backward (one small all-reduce
per batch); when a plugin implements ``before_step`` or ``after_backward``, once more before
each step. The starts and ends of fit, epoch, train and validate agree too (once per pass). In
validation a ``CancelBatchException`` is rank-local (there is no collective there); stronger
cancels are agreed at its end. A cancel from ``compute_loss`` is held like one from an event
hook (the rank backpropagates a zero); one from ``predict``, ``backward``, ``step`` or
``zero_grad`` is refused with an error naming the hook. ``Checkpoint`` agrees on a Ctrl-C at
its saves. Errors need nothing: the failing rank exits and ``torchrun`` ends the others at
once, printing that rank's error.
"""

from __future__ import annotations

import atexit
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DistributedSampler

from .. import dist as pdist
from ..exceptions import CancelException
from ..plugins.markers import hookimpl
from .ddp_batch import BatchCalls
from .ddp_cancels import Wrapper

if TYPE_CHECKING:
    from ..learner import Learner


class DDP(BatchCalls):
    """Data-parallel training with ``DistributedDataParallel`` (see the module doc)."""

    def __init__(self, **ddp_kwargs: Any) -> None:
        self.ddp_kwargs = ddp_kwargs
        self.module: torch.nn.parallel.DistributedDataParallel | None = None
        self.created = pdist.init_from_env()  # join torchrun's group now, unless one exists
        if self.created:
            atexit.register(self._teardown)
        self._failed = False
        self._pending: CancelException | None = None  # a cancel of this rank, not yet agreed
        self._weigh = True
        self._step_sync = False  # agree again before each step (before_step/after_backward)
        self._early = False  # agree before each backward (batches that do not step)
        self._probe_param: torch.Tensor | None = None  # the parameter whose gradient is marked
        self._probe: torch.Tensor | None = None  # it, on a batch whose backward carries a mark
        self._marked: Any = None  # the hook that marks this rank's gradient of it
        self._saved_wrapper: list[Any] = []
        self._padded: tuple[int, int] | None = None
        if not pdist.is_distributed():
            name = type(self).__name__
            warnings.warn(
                f"{name}(): this process was not launched by torchrun with several processes "
                f"(WORLD_SIZE unset or 1), so it trains alone and {name}() does nothing; launch "
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
        kwargs = dict(self.ddp_kwargs)
        device = next(learn.model.parameters()).device
        if device.type == "cuda" and "device_ids" not in kwargs:
            kwargs["device_ids"] = [device]
        self.module = torch.nn.parallel.DistributedDataParallel(learn.model, **kwargs)
        trained = [p for p in learn.model.parameters() if p.requires_grad]
        self._probe_param = min(trained, key=lambda p: p.numel())  # the smallest one
        learn.wrapped_model = self.module
        self._start_fit(learn)

    def _start_fit(self, learn: Learner) -> None:
        """What every fit on several processes starts from (shared with FSDP)."""
        from .accumulate import GradientAccumulation

        self._weigh = not any(
            isinstance(p, GradientAccumulation) and p.scale_loss for p in learn.plugins
        )
        self._failed, self._pending, self._probe, self._marked = False, None, None, None

    @hookimpl
    def cleanup_fit(self, learn: Learner) -> None:
        if self.module is not None and learn.wrapped_model is self.module:
            learn.wrapped_model = None
        if self._marked is not None:
            self._marked.remove()
        self.module, self._pending, self._saved_wrapper = None, None, []
        self._probe = self._probe_param = self._marked = None

    @hookimpl
    def on_error(self) -> None:
        self._failed = True  # the other ranks may sit in a collective: no barrier at exit

    # --------------------------------------------------------------------- each pass

    def _others_implement(self, learn: Learner, *names: str) -> bool:
        return any(
            getattr(i.function, "__self__", None) is not self
            for h in names
            for i in learn.hooks.impls.get(h, [])
        )

    @hookimpl(wrapper=True)
    def before_train(self, learn: Learner) -> Wrapper:
        sampler = getattr(learn.dl, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # torch's DistributedSampler: a new order each epoch
            sampler.set_epoch(learn.epoch)
        # a cancel from before_step or after_backward must be agreed before the step
        self._step_sync = self._others_implement(learn, "before_step", "after_backward")
        # a batch that does not step has no gradient all-reduce to carry the flags
        self._early = self._others_implement(learn, "should_step")
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
