"""GradientClipping: clip the whole gradient by its norm, once per optimizer step.

Example::

    learn.fit(3, plugins=[GradientClipping(1.0)])
    learn.fit(3, plugins=[GradientAccumulation(4), MixedPrecision(torch.float16),
                          GradientClipping(1.0)])            # any order: the same training

It calls ``torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, norm_type)`` in
``before_step`` with ``trylast``: after every accumulated backward of the group, after
``GradientAccumulation`` divided the sum by the group's items and after ``MixedPrecision``
unscaled the gradients (both ``tryfirst``), whatever the order of the plugins. So it clips the
gradient the optimizer is about to use, once per optimizer step, never a partial sum.

``last_norm`` is the total norm before clipping of the last step (a tensor: reading it with
``float()`` syncs an accelerator).

A non-finite gradient (inf or NaN: a NaN in the inputs, an overflow, a diverging run) would
turn every weight NaN through the clipping factor. The step is skipped instead, as torch's
``GradScaler`` skips one: ``step`` is answered without stepping, so the weights, the optimizer
state and a :class:`~pluglearn.plugins.scheduler.Scheduler` (which reads ``step_skipped``)
do not move, and ``zero_grad`` clears the gradients as after any step. Each skip warns, naming
the epoch and the batch, and counts in ``skipped`` (this object's count, not in checkpoints).
Telling costs one device sync per optimizer step on an accelerator, as ``GradScaler.step``
does. With ``MixedPrecision(torch.float16)`` its scaler finds those steps and skips them
itself (and lowers its scale): clipping leaves them to it. ``error_if_nonfinite=True`` raises
instead of skipping.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import torch

from ..hooks.markers import hookimpl
from .mixed_precision import skippers

if TYPE_CHECKING:
    from ..learner import Learner


class GradientClipping:
    """Clips the gradient norm of ``learn.model``'s parameters to ``max_norm`` before each step;
    skips a step whose gradient is not finite (see the module doc).

    Example: ``learn.fit(3, plugins=[clip := GradientClipping(1.0)])``, then ``clip.skipped``
    is the number of steps skipped on an inf or NaN gradient."""

    def __init__(
        self, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
    ) -> None:
        for name, value in (("max_norm", max_norm), ("norm_type", norm_type)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"GradientClipping({name}={value!r}): give a number.")
        if not max_norm > 0 or math.isinf(max_norm):
            raise ValueError(
                f"GradientClipping(max_norm={max_norm!r}): give a finite number > 0 (drop the "
                "plugin to train without clipping)."
            )
        if not (norm_type > 0 or math.isinf(norm_type)):
            raise ValueError(
                f"GradientClipping(norm_type={norm_type!r}): give a p-norm order > 0, or "
                "float('inf') for the max norm."
            )
        self.max_norm, self.norm_type = float(max_norm), float(norm_type)
        self.error_if_nonfinite = error_if_nonfinite
        self.last_norm: torch.Tensor | None = None
        self.step_skipped = False  # the last step was skipped on a non-finite gradient
        self.skipped = 0  # steps skipped so far
        self._scaled = False  # a GradScaler skips non-finite steps in this fit

    @hookimpl
    def after_create_opt(self, learn: Learner) -> None:
        others = [p for p in skippers(learn.plugins) if not isinstance(p, GradientClipping)]
        self._scaled, self.step_skipped = bool(others), False

    @hookimpl(trylast=True)  # after the accumulation's division and the scaler's unscale
    def before_step(self, learn: Learner) -> None:
        self.step_skipped = False
        norm = self.last_norm = torch.nn.utils.clip_grad_norm_(
            learn.model.parameters(),
            self.max_norm,
            norm_type=self.norm_type,
            error_if_nonfinite=self.error_if_nonfinite,
        )
        if self._scaled:
            return  # the scaler skips this step itself when its gradient is not finite
        if hasattr(norm, "full_tensor"):  # a DTensor (FSDP): the norm of every shard
            norm = norm.full_tensor()
        value = norm.item()  # one sync per step on an accelerator, as GradScaler.step's
        if not math.isfinite(value):
            self.step_skipped = True
            self.skipped += 1
            warnings.warn(
                f"GradientClipping: a non-finite gradient (norm {value}) at epoch "
                f"{learn.epoch}, batch {learn.iter}: the optimizer step was skipped, as "
                "torch's GradScaler does (the weights, the optimizer state and the scheduler "
                f"did not move; the gradients are zeroed), {self.skipped} so far "
                "(clipping.skipped). Look for inf or NaN in the inputs or the loss, or lower "
                "the lr; error_if_nonfinite=True raises instead.",
                UserWarning,
                stacklevel=2,
            )

    @hookimpl(tryfirst=True)  # before the default step and the scaler's
    def step(self) -> bool | None:
        return True if self.step_skipped else None  # True: done, without stepping
