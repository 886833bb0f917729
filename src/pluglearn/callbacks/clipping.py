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
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ..plugins.markers import hookimpl

if TYPE_CHECKING:
    from ..learner import Learner


class GradientClipping:
    """Clips the gradient norm of ``learn.model``'s parameters to ``max_norm`` before each step."""

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

    @hookimpl(trylast=True)  # after the accumulation's division and the scaler's unscale
    def before_step(self, learn: Learner) -> None:
        self.last_norm = torch.nn.utils.clip_grad_norm_(
            learn.model.parameters(),
            self.max_norm,
            norm_type=self.norm_type,
            error_if_nonfinite=self.error_if_nonfinite,
        )
