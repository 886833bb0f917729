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
all-reduce carries the mark to every rank, which looks at one number after the backward and only
then agrees (one small all-reduce) on which cancel to raise. **A cancel takes effect on every
rank at the next optimizer step**: right after that batch's backward, before ``after_backward``
and the step, which is skipped; the gradients are put back as ``zero_grad`` left them, so the
run is the one process's that cancels in that batch before its backward (tested against one
process, from ``after_loss`` and ``compute_loss``). A cancel raised after a step
(``after_step``, ``after_batch``) takes effect at the next batch (computed, not stepped; the
weights are those of one process stopping there); a ``CancelBatchException`` there is dropped. A
NaN gradient of that parameter with no cancel held costs one agreement. When a plugin answers
``should_step`` (``GradientAccumulation``), batches that do not step have no all-reduce to carry
the mark, so the ranks agree before each backward (one small all-reduce per batch) if a plugin
that may cancel in a batch is present (without one, a cancel from the loss function in such a
batch is refused); when a plugin that may cancel implements ``before_step`` or
``after_backward``, once more before each step. The start of a fit always agrees (on a cancel
from ``before_fit`` too: one all-reduce, which also tells every rank what the plugins of any
rank need); the ends of ``before_epoch``, ``before_train``, ``after_train``,
``before_validate``, ``after_validate``, ``after_epoch`` and ``after_fit`` agree only when a
plugin on some rank may cancel in a hook whose cancel waits for them. A plugin says it never
cancels with the class attribute ``may_cancel = False`` (pluglearn's metrics, ProgressBar,
Recorder, loggers, Device, MixedPrecision, GradientClipping, Scheduler, Checkpoint and training
step do: with them alone a fit pays no agreement after its start, and no gradient is read after
the backward, which on a GPU is a host sync per step; a cancel from the loss function is then
refused); one that says so and cancels anyway is refused with an error naming it. In validation
a ``CancelBatchException`` is rank-local (there is no collective there); stronger cancels are
agreed at its end. A cancel from ``compute_loss`` is held like one from an event hook (the rank
backpropagates a zero); one from ``predict``, ``backward``, ``step`` or ``zero_grad`` is refused
with an error naming the hook. ``Checkpoint`` agrees on a Ctrl-C at its saves. Errors need
nothing: the failing rank exits and ``torchrun`` ends the others at once, printing that rank's
error.
"""

from __future__ import annotations

import atexit
import time
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
        # any rank's needs: agree before each step, before each backward; look for marks
        self._fit_needs = (False, False, False)
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
            # gloo's worker thread frees a finished collective a moment after the caller saw
            # it finish; freed during the interpreter's finalization, a tensor made in Python
            # needs the GIL and torch aborts ("terminate called without an active exception",
            # seen once in 30 runs of examples/train_ddp.py on two busy cores; a core dump shows
            # ProcessGroupGloo::runLoop destroying the work). torch has no call to wait for it.
            time.sleep(0.1)

    # ------------------------------------------------------------------ wrap and unwrap

    @hookimpl(wrapper=True)
    def before_fit(self, learn: Learner) -> Wrapper:
        if pdist.world_size() < 2:
            return (yield)
        self._start_fit(learn)
        try:
            result = yield
        except CancelException as cancel:  # held: a rank that skipped the fit alone would
            self._keep(cancel)  # leave the others waiting in its first collective
            result = None
        # one all-reduce per fit: every rank cancels together, or none; and the ends of the
        # pass hooks agree on every rank if a plugin on any rank may cancel there
        self._hooks_seen = learn.hooks
        agree, step_sync, early, marks = self._sync(learn, extra=self._needs(learn))
        self._agree, self._fit_needs = agree > 0, (step_sync > 0, early > 0, marks > 0)
        self._wrap(learn)  # after the other before_fit hooks (Device moved the model)
        return result

    def _wrap(self, learn: Learner) -> None:
        kwargs = dict(self.ddp_kwargs)
        device = next(learn.model.parameters()).device
        if device.type == "cuda" and "device_ids" not in kwargs:
            kwargs["device_ids"] = [device]
        self.module = torch.nn.parallel.DistributedDataParallel(learn.model, **kwargs)
        self._watch(learn)
        learn.wrapped_model = self.module

    def _watch(self, learn: Learner) -> None:
        """Choose the parameter whose gradient carries a held cancel: the smallest one."""
        trained = [p for p in learn.model.parameters() if p.requires_grad]
        self._probe_param = min(trained, key=lambda p: p.numel())
        self._first = (0,) * self._probe_param.ndim

    def _start_fit(self, learn: Learner) -> None:
        """What every fit on several processes starts from (shared with FSDP)."""
        from .accumulate import GradientAccumulation

        self._weigh = not any(
            isinstance(p, GradientAccumulation) and p.scale_loss for p in learn.plugins
        )
        self._failed, self._pending, self._probe, self._marked = False, None, None, None
        self._world = pdist.world_size()

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

    def _needs(self, learn: Learner) -> tuple[float, float, float, float]:
        """What this rank's plugins need agreed: at the ends of the pass hooks, before each
        step (a cancel from before_step or after_backward), before each backward (a batch that
        does not step has no gradient all-reduce to carry a mark), and whether a batch's cancel
        can happen at all (else no mark is looked for: on a GPU, a host sync per step saved)."""
        held = self._cancellers(learn)
        in_batch = held or self._cancellers(learn, ("compute_loss",))
        skips_steps = self._cancellers(learn, ("should_step",), any_plugin=True)
        return (
            float(held),
            float(self._cancellers(learn, ("before_step", "after_backward"))),
            float(skips_steps and in_batch),
            float(in_batch),
        )

    @hookimpl(wrapper=True)
    def before_train(self, learn: Learner) -> Wrapper:
        sampler = getattr(learn.dl, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # torch's DistributedSampler: a new order each epoch
            sampler.set_epoch(learn.epoch)
        # what any rank's plugins needed at the fit's start, or this rank's need since then
        _, step_sync, early, marks = self._needs(learn)
        self._step_sync = self._fit_needs[0] or step_sync > 0
        self._early = self._fit_needs[1] or early > 0
        self._marks = self._fit_needs[2] or marks > 0
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

    # ------------------------------------------------------------- the other phases

    @hookimpl(wrapper=True)
    def after_fit(self, learn: Learner) -> Wrapper:
        return (yield from self._sync_after(learn))  # every rank gives the same stop_reason

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
