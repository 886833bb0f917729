"""GradientAccumulation: one optimizer step every n batches, as if those batches were one.

Example::

    learn.fit(3, plugins=[GradientAccumulation(4)])     # batch 16 x 4 = an effective batch of 64

The accumulated gradient equals the gradient of ONE batch holding the same items, also for a
short group (the end of an epoch) and batches of unequal size. With a loss that is a mean over
its items, the gradient of the big batch is ``sum_b count_b * grad(loss_b) / sum_b count_b``, so:

* ``should_step`` answers True on every n-th batch of the pass and on its last batch (no
  gradient carries over into the next epoch), False on the others;
* its ``backward`` (``tryfirst``, answering None) sets ``learn.loss`` to ``loss * count`` for
  the backward provider after it, and ``after_backward`` (``tryfirst``) puts the batch's own
  loss back, so metrics see it (``on_error`` and ``cleanup_batch`` too, when the backward
  failed); any provider that calls backward on ``learn.loss`` composes with it (the default,
  ``MixedPrecision``'s scaled backward); a provider answering before it is refused;
* ``before_step`` (``tryfirst``: before unscaling and clipping) divides every gradient by the
  group's total count.

``count(learn)`` is the number of items the batch's loss averages over: by default the answer
of the ``count_items`` hook (the targets' items: ``len(learn.yb)``). For a loss averaged per
token give it, e.g.
``GradientAccumulation(4, count=lambda learn: (learn.batch[1] != -100).sum())``.

The group (its total count and the gradients added so far) is in the plugin's checkpoint state,
so a resume from a checkpoint written inside a group continues it exactly.

A loss that sums over its items (``reduction="sum"``, read by
:func:`~pluglearn.plugins.train_step.loss_reduction`) needs no weighting: the big batch's
gradient is the sum of the batches' gradients, so the batches add up as they are (``count=`` is
then refused).

``scale_loss=False`` adds the raw gradients of the batches (a sum of per-batch means, not the
big batch's gradient): the mode for a backward provider that does not read ``learn.loss``
(``ManualBackward``), which the default mode refuses.

Under ``DDP`` the group's total is the items of every rank (an all-reduce in ``before_step``;
with a sum loss the gradient DDP averaged over the W ranks is multiplied by W), and the batches
that do not step skip DDP's gradient all-reduce.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ..distributed.ranks import reduce_sum, world_size
from ..hooks.markers import hookimpl
from .train_step import loss_reduction

if TYPE_CHECKING:
    from ..learner import Learner


def count_targets(learn: Learner) -> int:
    """The default count: the batch's items, as the ``count_items`` hook answers."""
    count: int = learn.hooks.call("count_items", learn=learn, batch=learn.batch)
    return count


class GradientAccumulation:
    """Steps the optimizer every ``n_batches`` training batches with the gradient of one batch of
    all their items (see the module doc)."""

    def __init__(
        self,
        n_batches: int,
        count: Callable[[Learner], Any] | None = None,
        scale_loss: bool = True,
    ) -> None:
        if isinstance(n_batches, bool) or not isinstance(n_batches, int) or n_batches < 1:
            raise ValueError(f"GradientAccumulation(n_batches={n_batches!r}): give an int >= 1.")
        if count is not None and not callable(count):
            raise TypeError(
                f"GradientAccumulation(count={count!r}): give a function of the Learner "
                "returning the batch's number of items, e.g. count=lambda learn: len(learn.yb)."
            )
        if count is not None and not scale_loss:
            raise ValueError("count= weights the batches, scale_loss=False sums them: pick one.")
        self.n_batches, self.scale_loss = n_batches, scale_loss
        self.count = count if count is not None else count_targets
        self.total: Any = 0  # items of the open group so far
        self._loss: Any = None  # the batch's own loss while learn.loss holds it weighted
        self._sum = False  # the loss sums over its items: no weighting (see the module doc)

    @hookimpl
    def after_create_opt(self) -> None:
        # a fit starts with no open group, as with no gradient (the loop clears those next;
        # a resume then puts both back): a fit that raised inside a group leaves its items here
        self.total = 0

    @hookimpl
    def before_fit(self, learn: Learner) -> None:
        from .manual_backward import ManualBackward

        self._sum = self.scale_loss and loss_reduction(learn.loss_func) == "sum"
        if self._sum and self.count is not count_targets:
            raise ValueError(
                "GradientAccumulation(count=...) weights the batches of a loss that averages "
                "over its items, but this loss sums over them (reduction='sum'), so the "
                "batches add up as they are: drop count=."
            )

        if self.scale_loss and any(isinstance(p, ManualBackward) for p in learn.plugins):
            raise ValueError(
                "GradientAccumulation weights each batch through learn.loss, which ManualBackward "
                "does not differentiate, so the accumulated gradient would be wrong: use "
                "GradientAccumulation(n, scale_loss=False) (a plain sum of the batch gradients)."
            )

    @hookimpl
    def before_train(self, learn: Learner) -> None:
        if learn.n_iter is None and self.n_batches > 1:
            raise ValueError(
                f"GradientAccumulation({self.n_batches}) needs a training loader with a length "
                "to close the last group of each epoch: give the loader a __len__ (or use "
                "DataLoaders.from_datasets)."
            )

    @hookimpl
    def should_step(self, learn: Learner) -> bool:
        pos = learn.run.pos
        done = pos.iter + 1
        return done % self.n_batches == 0 or done == pos.n_iter

    @hookimpl(tryfirst=True)  # before every backward provider: each differentiates learn.loss
    def backward(self, learn: Learner) -> None:
        if self._sum:  # the gradients add up as they are
            self.total = self.total + 1
            self._loss = learn.loss
        elif self.scale_loss:
            count = self.count(learn)
            self.total = self.total + count
            self._loss = loss = learn.loss
            assert loss is not None  # backward runs after compute_loss
            learn.loss = loss * count
        # None: the next backward provider (the default, MixedPrecision's scaled backward)
        # differentiates the weighted loss

    def _put_back(self, learn: Learner) -> bool:
        """The batch's own loss back in ``learn.loss`` (metrics and loggers read it); False
        when this batch's backward never weighted it."""
        loss, self._loss = self._loss, None
        if loss is None:
            return False
        learn.loss = loss
        return True

    @hookimpl(tryfirst=True)
    def after_backward(self, learn: Learner) -> None:
        loss, self._loss = self._loss, None
        if loss is not None:  # _put_back inlined: this runs every training batch
            learn.loss = loss
        elif self.scale_loss:
            order = [i.plugin for i in learn.hooks.impls["backward"] if not i.wrapper]
            raise RuntimeError(
                "GradientAccumulation: another backward provider answered before it weighted "
                f"the loss (backward providers in call order: {order}), so the gradient is a "
                "plain sum: register GradientAccumulation after any plugin answering backward "
                "with tryfirst=True, or drop tryfirst there."
            )

    @hookimpl(tryfirst=True)
    def on_error(self, learn: Learner) -> None:
        self._put_back(learn)  # a failed backward: on_error and cleanups see the batch's loss

    @hookimpl(tryfirst=True)
    def cleanup_batch(self, learn: Learner) -> None:
        if self._loss is not None:  # a backward that cancelled the batch
            self._put_back(learn)

    @hookimpl(tryfirst=True)  # before unscaling and clipping: they see the group's gradient
    def before_step(self, learn: Learner) -> None:
        total, self.total = self.total, 0
        if not self.scale_loss:
            return
        wrapped = getattr(learn.wrapped_model, "_orig_mod", learn.wrapped_model)  # Compile's
        ddp = wrapped is not None and isinstance(wrapped, DistributedDataParallel)
        if self._sum:  # the batches' gradients add up as they are
            if not ddp:
                return
            total = 1 / world_size()  # DDP averaged the ranks' sums: W times that
        elif ddp:
            # DDP averaged the ranks' summed gradients: divide by the items of all ranks / W
            total = reduce_sum(float(total))[0] / world_size()
        if isinstance(total, (int, float)) and total <= 0:
            raise ValueError(
                f"GradientAccumulation: the group ending at batch {learn.iter} counted {total} "
                "items, so its gradient is undefined: check count= (it must return the number "
                "of items the loss averages over, > 0 for every group)."
            )
        grads = [p.grad for p in learn.model.parameters() if p.grad is not None]
        if grads and grads[0].requires_grad:  # a create_graph backward: keep autograd out
            with torch.no_grad():
                torch._foreach_div_(grads, total)
        else:  # one call for all (per tensor on CPU: the same division as div_)
            torch._foreach_div_(grads, total)

    @hookimpl
    def state_dict(self, learn: Learner) -> dict[str, Any]:
        if isinstance(self.total, (int, float)) and self.total == 0:
            return {"total": 0}
        grads = [p.grad for p in learn.model.parameters()]
        return {"total": self.total, "grads": [None if g is None else g.clone() for g in grads]}

    @hookimpl
    def load_state_dict(self, learn: Learner, state: dict[str, Any]) -> None:
        self.total = state["total"]
        if "grads" in state:
            params = list(learn.model.parameters())
            if len(state["grads"]) != len(params):
                raise ValueError(
                    f"GradientAccumulation: the checkpoint holds {len(state['grads'])} gradients "
                    f"of an open group, the model has {len(params)} parameters: resume with the "
                    "model the run used."
                )
            for p, g in zip(params, state["grads"], strict=True):
                p.grad = None if g is None else g.to(p.device).clone()
