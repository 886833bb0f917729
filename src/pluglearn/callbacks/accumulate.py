"""GradientAccumulation: one optimizer step every n batches, as if the batch were n times larger.

Example::

    learn.fit(3, plugins=[GradientAccumulation(4)])     # batch 16 x 4 = an effective batch of 64

It answers the ``step`` and ``zero_grad`` hooks with "done" (True) on the batches where the
gradients must keep adding up, and lets ``TrainStep`` step and zero them on every n-th batch and
on the last batch of the pass (so no gradient carries over into the next epoch). With
``scale_loss=True`` (the default) it also answers ``backward`` with ``(loss / n).backward()``,
so the accumulated gradient is the mean over the n batches, as for one large batch; the loss that
metrics and reporters see is left unscaled. Other ``backward`` providers (mixed precision, a
manual backward) should be given with ``scale_loss=False``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..plugins.markers import hookimpl

if TYPE_CHECKING:
    from ..learner import Learner


class GradientAccumulation:
    """Steps the optimizer every ``n_batches`` training batches (see the module doc)."""

    def __init__(self, n_batches: int, scale_loss: bool = True) -> None:
        if isinstance(n_batches, bool) or not isinstance(n_batches, int) or n_batches < 1:
            raise ValueError(f"GradientAccumulation(n_batches={n_batches!r}): give an int >= 1.")
        self.n_batches, self.scale_loss = n_batches, scale_loss

    def _keep_adding(self, learn: Learner) -> bool | None:
        """True (step done, i.e. skipped) while the gradients must keep adding up."""
        boundary = (learn.iter + 1) % self.n_batches == 0 or learn.iter + 1 == learn.n_iter
        return None if boundary else True

    @hookimpl
    def backward(self, learn: Learner) -> bool | None:
        if not self.scale_loss:
            return None
        (learn.loss / self.n_batches).backward()
        return True

    @hookimpl
    def step(self, learn: Learner) -> bool | None:
        return self._keep_adding(learn)

    @hookimpl
    def zero_grad(self, learn: Learner) -> bool | None:
        return self._keep_adding(learn)
