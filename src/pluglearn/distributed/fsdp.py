"""FSDP: fully sharded data parallel training under ``torchrun`` (FSDP2's ``fully_shard``).

Example::

    learn = Learner(model, DataLoaders.from_datasets(train, valid, batch_size=64),
                    plugins=[FSDP(layers=(nn.TransformerEncoderLayer,))])
    learn.fit(3)  # torchrun --nproc_per_node 2 train.py: each rank holds half of every parameter

What it shares with :class:`~pluglearn.DDP` (it is one): joining ``torchrun``'s process group
at construction (and leaving it at exit if it joined it), the sharded loaders (``batch_size`` is
the global batch; each rank takes its slice), each rank's loss weighted by its share of the
global batch's items (FSDP averages the gradients as DDP does), ``set_epoch`` for a torch
``DistributedSampler``, validation metrics over the real items only, and every rank stopping
together on a cancel. Alone (world size 1) it says so once and does nothing.

What differs:

- **Sharding.** In ``after_create_opt`` (once the ranks agreed on the fit, before the other
  plugins' ``after_create_opt``, so a scheduler built there sees the new optimizer) it calls
  ``fully_shard`` on every submodule that is an instance of ``layers``, then on the model
  (``fully_shard_kwargs`` passed through), and rebuilds ``learn.opt`` with
  ``learn.opt_func(learn.model.parameters(), lr=learn.lr)``: the parameters are now ``DTensor``
  shards. ``learn.model`` stays the user's module object, sharded in place
  (``learn.wrapped_model`` stays None); it stays sharded after the fit, and a later fit finds
  it so. An optimizer that has already stepped (a fit before FSDP was added) is refused: rebuilding
  it would drop its state.
- **The model's output** must show its tensors to torch's pytree (a tensor, tuple, list, dict,
  named tuple, or Hugging Face's ``ModelOutput``): FSDP reduces the gradients through hooks on
  them, so an output that hides them (a ``SimpleNamespace``) would leave the shards without a
  gradient and the model untrained. The first training forward of each fit checks it, and
  refuses such an output with the fix.
- **Every forward is a collective**, in validation too. Before validating, the ranks share their
  numbers of validation batches; at its end a rank that ran fewer forwards (a skipped empty
  slice, a batch of ``DistributedSampler`` padding, a rank-local ``CancelBatchException``)
  runs forwards of a zero-item batch until every rank ran as many. The metrics never see them.
- **Cancels** are agreed before each backward (one small all-reduce per training batch): the
  gradient is reduce-scattered, so DDP's mark on one rank's gradient would not reach every rank.
- **GradientAccumulation** is refused (not built: its item count is summed across ranks only
  under DDP). A batch for which another plugin's ``should_step`` answers False skips the
  reduce-scatter (``set_requires_gradient_sync``).
- **Checkpoints** keep the one-file contract: rank 0 writes the *full* model and optimizer state
  (``torch.distributed.checkpoint.state_dict``: ``full_state_dict=True, cpu_offload=True``;
  the optimizer state is keyed by parameter name), and at a resume every rank reads the file and
  keeps its shards. This needs the whole model in rank 0's CPU memory at each save: the limit of
  this choice. Such a checkpoint resumes under ``FSDP()`` only.
- **Calls outside the fit's passes** (``validate``, ``get_preds``, ``predict``: after a fit or
  from a hook) are rank-local as under DDP (the whole validation set on each rank, no metric
  reduction), but their forwards are collectives: make them on every rank. A call made on one
  rank only is refused within ``call_timeout`` seconds (the ranks meet on the process group's
  store first, which is no collective), naming the fix.

Tested on CPU with gloo (torch 2.13): see ``tests/distributed/test_fsdp.py``. NCCL on GPUs is
the same code path but untested here.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..data.batch_ops import head
from ..hooks.markers import hookimpl
from . import ranks as pdist
from .cancel_agreement import Wrapper
from .ddp import DDP, tells_global_items

if TYPE_CHECKING:
    from ..hooks.dispatch import Caller
    from ..learner import Learner


def is_sharded(model: nn.Module) -> bool:
    """True when ``fully_shard`` was applied to ``model`` or one of its submodules."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def holds_shards(state: dict[str, Any]) -> bool:
    """True when ``state`` (a model's ``state_dict``) holds a sharded model's ``DTensor`` shards,
    False when it holds whole tensors."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(value, DTensor) for value in state.values())


def _options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_state(model: nn.Module, opt: Any = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The whole model's and optimizer's state of a sharded model, on rank 0's CPU (empty dicts
    on the other ranks). A collective: every rank calls it at the same point."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = _options(cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    opt_state = None if opt is None else get_optimizer_state_dict(model, opt, options=options)
    return model_state, opt_state


def load_full_state(
    model: nn.Module, opt: Any, model_state: dict[str, Any], opt_state: dict[str, Any] | None
) -> None:
    """Load a full state (as :func:`full_state` gave, read from a file by every rank) into the
    sharded ``model`` and ``opt``: each rank keeps its shards."""
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    set_model_state_dict(model, model_state, options=_options())
    if opt is not None and opt_state is not None:
        set_optimizer_state_dict(model, opt, opt_state, options=_options())


class FSDP(DDP):
    """Fully sharded data parallel training with FSDP2 (see the module doc).

    ``layers``: module types (or a tuple of them) sharded each on their own before the root, so
    only one such layer's parameters are gathered at a time; ``fully_shard_kwargs`` go to every
    ``fully_shard`` call (``reshard_after_forward``, ``mp_policy``, ...); ``call_timeout``: how
    long a rank-local call waits for the other ranks before it is refused."""

    def __init__(
        self,
        layers: type[nn.Module] | tuple[type[nn.Module], ...] = (),
        *,
        call_timeout: float = 10.0,
        **fully_shard_kwargs: Any,
    ) -> None:
        layers = layers if isinstance(layers, tuple) else (layers,)
        if not all(isinstance(t, type) and issubclass(t, nn.Module) for t in layers):
            raise TypeError(
                f"FSDP(layers={layers!r}): layers must be nn.Module subclasses, e.g. "
                "FSDP(layers=(nn.TransformerEncoderLayer,))."
            )
        self.layers, self.call_timeout = layers, call_timeout
        self._met = False  # this validation pass's rendezvous is done
        super().__init__(**fully_shard_kwargs)
        self._forwards = 0  # forwards this rank ran in this validation pass
        self._needed = 0  # the most validation batches any rank has
        self._last_batch: Any = None  # the last batch predicted: its structure shapes catch-ups
        self._grad_sync: bool | None = None  # the flag FSDP was last given (None: a new fit)
        self._output_check: Any = None  # the forward hook of _check_output, until it passed

    # ------------------------------------------------------------------ shard and check

    def _prepare(self, learn: Learner) -> None:  # once the ranks agree, in after_create_opt
        others = [p for p in learn.plugins if isinstance(p, DDP) and p is not self]
        if others:
            raise ValueError(
                f"FSDP() with {type(others[0]).__name__}(): they both split the work across the "
                "ranks; keep one of them."
            )
        if is_sharded(learn.model):
            return  # a later fit: the optimizer was built from the shards
        if getattr(learn.opt, "state", None):
            raise ValueError(
                "FSDP(): the optimizer has already stepped (a fit before FSDP() was added), and "
                "sharding the model means rebuilding it, which would drop that state. Add "
                "FSDP() before the first fit (Learner(..., plugins=[FSDP()]))."
            )
        from torch.distributed.fsdp import fully_shard

        for module in list(learn.model.modules())[1:]:
            if isinstance(module, self.layers):
                fully_shard(module, **self.ddp_kwargs)
        fully_shard(learn.model, **self.ddp_kwargs)
        learn.opt = learn.opt_func(learn.model.parameters(), lr=learn.lr)

    def _wrap(self, learn: Learner) -> None:  # DDP.before_fit calls it once the ranks agree
        from ..plugins.accumulate import GradientAccumulation

        if any(isinstance(p, GradientAccumulation) and p.n_batches > 1 for p in learn.plugins):
            raise ValueError(
                "FSDP() with GradientAccumulation: not built yet (its group's item count is "
                "summed across ranks only under DDP, so the step would not be one process's). "
                "Raise batch_size instead (it is the global batch), or use DDP()."
            )
        for name in ("train", "valid"):
            loader = getattr(learn.dls, name)
            if loader is not None:  # no validation set: nothing to check
                self._check_sharded(loader, name)
        self.module = learn.model  # sharded in place: the same object, and no wrapper
        self._grad_sync = None
        if self._output_check is None:  # until the first training forward shows a tensor
            self._output_check = learn.model.register_forward_hook(self._check_output)

    def _check_output(self, module: nn.Module, args: Any, output: Any) -> None:
        """FSDP reduces the gradients through hooks on the tensors that torch's pytree finds in
        the model's output; an output that hides them (a ``SimpleNamespace``, a class of one's
        own) gets none, so the shards would receive no gradient and the fit would not train,
        without a word. Checked on the fit's first training forward."""
        if not (module.training and torch.is_grad_enabled()):
            return
        from torch.utils._pytree import tree_leaves

        if not any(isinstance(t, torch.Tensor) and t.requires_grad for t in tree_leaves(output)):
            raise TypeError(
                f"FSDP(): the model returned a {type(output).__name__}, in which torch's pytree "
                "finds no tensor that requires grad. FSDP reduces the gradients through hooks "
                "on the output's tensors, so the shards would get no gradient and the model "
                "would not train. Return a tensor, a tuple, a list, a dict or a named tuple "
                "(Hugging Face's ModelOutput is one torch knows), or register the output's "
                "type with torch.utils._pytree.register_pytree_node."
            )
        self._drop_output_check()

    def _drop_output_check(self) -> None:
        if self._output_check is not None:
            self._output_check.remove()
            self._output_check = None

    @hookimpl
    def cleanup_fit(self, learn: Learner) -> None:
        self._drop_output_check()
        DDP.cleanup_fit(self, learn)

    @staticmethod
    def _check_sharded(loader: Any, name: str) -> None:
        if not tells_global_items(loader) or not hasattr(loader, "__len__"):
            raise ValueError(
                f"FSDP(): the {name} loader ({type(loader).__name__}) is not sharded across the "
                "ranks (or has no len), so the ranks cannot run the same number of forwards: "
                "use DataLoaders.from_datasets(train, valid, batch_size=...) (batch_size is the "
                "global batch), or a torch DataLoader with a DistributedSampler."
            )

    # ------------------------------------------------------------- every forward together

    @hookimpl(wrapper=True)
    def before_train(self, learn: Learner) -> Wrapper:
        result = yield from DDP.before_train(self, learn)
        self._early = self.module is not None  # agree before each backward (see the module doc)
        return result

    def _set_grad_sync(self, sync: bool) -> None:  # FSDP's no_sync: set on a change only
        if self._grad_sync is not sync:
            from torch.distributed.fsdp import FSDPModule

            module = self.module
            assert isinstance(module, FSDPModule)  # fully_shard made the model one
            module.set_requires_gradient_sync(sync)
            self._grad_sync = sync

    @hookimpl(wrapper=True)
    def before_validate(self, learn: Learner) -> Wrapper:
        if pdist.is_local():
            self._meet(learn)
            self._met = True
        elif self.module is not None:
            assert isinstance(learn.dl, Sized)  # _wrap refused a loader without len()
            self._needed, self._forwards = max(pdist.all_gather(len(learn.dl))), 0
        return (yield from DDP.before_validate(self, learn))

    @hookimpl
    def cleanup_validate(self, learn: Learner) -> None:
        self._met = False
        DDP.cleanup_validate(self, learn)

    def _meet(self, learn: Learner) -> None:
        """Every rank must make a rank-local call (its forwards are collectives): refuse one
        that the other ranks do not make within ``call_timeout`` seconds."""
        if not is_sharded(learn.model):
            return
        if not pdist.rendezvous("fsdp-call", self.call_timeout):
            call = learn.run.entries[-1]
            raise RuntimeError(
                f"FSDP: learn.{call}() was called on rank {pdist.group_rank()}, and the other "
                f"ranks did not call it within {self.call_timeout} s: under FSDP each rank "
                "holds a shard of the weights, so every forward is a collective and "
                "validate(), get_preds() and predict() must be called on every rank at the same "
                f"point (each then gets the whole result). Call learn.{call}() on every rank "
                "and use its result on rank 0 only (if pluglearn.dist.is_main_process(): ...)."
            )

    @hookimpl
    def wrap_hook_calls(self, hook: str, call: Caller) -> Caller:
        wrapped = DDP.wrap_hook_calls(self, hook, call)
        if hook != "predict":
            return wrapped

        def predict(learn: Learner) -> Any:  # counts the forwards, keeps a batch's shape
            if not self._met and pdist.is_local():  # learn.predict(x): no validation pass
                self._meet(learn)
            self._last_batch = learn.batch  # a reference: cut to no item only for a catch-up
            result = wrapped(learn)
            self._forwards += 1
            return result

        return predict

    @hookimpl(wrapper=True, tryfirst=True)
    def after_validate(self, learn: Learner) -> Wrapper:
        if self.module is not None and not pdist.is_local():
            self._catch_up(learn)
        return (yield from DDP.after_validate(self, learn))

    def _catch_up(self, learn: Learner) -> None:
        """Forwards of a zero-item batch until this rank ran as many as the busiest rank."""
        if self._forwards >= self._needed:
            return
        if self._last_batch is None:
            raise RuntimeError(
                f"FSDP: rank {pdist.rank()} had no batch at all to shape a catch-up forward: "
                "give every rank at least one training item (a larger dataset or fewer ranks)."
            )
        saved = learn.batch
        learn.batch = head(self._last_batch, 0)  # the batch's structure, no item
        try:
            with torch.no_grad():
                while self._forwards < self._needed:
                    learn.hooks.predict(learn)  # counted by predict above
        finally:
            learn.batch = saved
