"""Optimizers from scratch: the notebook's ``Optimizer(params, lr)`` and a full ``SGD``.

``Optimizer`` is the notebook's: ``step()`` does ``p -= p.grad * lr`` for every parameter and
``zero_grad()`` zeroes ``p.grad`` in place. ``SGD`` is step-for-step equal to
``torch.optim.SGD`` (momentum, Nesterov, weight decay) and can read the manual gradients.

For ``SGD``, where the gradient comes from is an explicit choice, ``grad_attr``:

* ``"g"`` (default): the manual gradients written by a scratch Module's ``backward()``.
* ``"grad"``: autograd's gradients from ``loss.backward()``.

A parameter whose gradient attribute is missing or ``None`` is skipped, as torch does.

The update, for each parameter ``p`` with gradient ``g`` (dampening 0, like torch's default)::

    g = g + weight_decay * p                      # L2 penalty, before momentum
    buf = g                  (first step)         # momentum buffer
    buf = momentum * buf + g (later steps)
    g = buf                  (or g + momentum * buf with nesterov=True)
    p = p - lr * g
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Real
from typing import Literal

import torch
from torch import Tensor

__all__ = ["SGD", "Optimizer"]


def _check_number(
    name: str, value: object, low: float, high: float | None, fix: str, who: str = "SGD"
) -> float:
    """Return ``value`` as a float if it is a real number in range, else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{who}: {name} must be a real number, got {value!r}; {fix}")
    v = float(value)
    if not (math.isfinite(v) and v >= low and (high is None or v < high)):
        bounds = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{who}: {name} must be {bounds}, got {value!r}; {fix}")
    return v


def _param_list(params: Iterable[Tensor], who: str) -> list[Tensor]:
    params = list(params)
    if not params:
        raise ValueError(f"{who} got an empty parameter list; pass model.parameters()")
    for i, p in enumerate(params):
        if not isinstance(p, Tensor) or not p.is_floating_point():
            raise ValueError(
                f"{who}: parameter {i} must be a floating-point tensor, got "
                f"{getattr(p, 'dtype', type(p).__name__)}"
            )
    return params


class Optimizer:
    """The notebook's optimizer: ``p -= p.grad * lr`` on each step, gradients zeroed in place.

    Reads autograd's ``.grad`` (call ``loss.backward()`` first); a parameter without one is
    skipped. ``lr`` may be read and set (validated) between steps.
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 0.5) -> None:
        self.params: list[Tensor] = _param_list(params, type(self).__name__)
        self.lr = lr

    @property
    def lr(self) -> float:
        """The learning rate (> 0); assigning it is validated."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        fix = "pass a positive step size, e.g. lr=0.1"
        who = type(self).__name__
        lr = _check_number("lr", value, 0.0, None, fix, who)
        if lr == 0:
            raise ValueError(f"{who}: lr must be > 0, got 0; {fix}")
        self._lr = lr

    @torch.no_grad()
    def step(self) -> None:
        """``p -= p.grad * lr`` for every parameter that has a gradient."""
        for p in self.params:
            if p.grad is not None:
                p -= p.grad * self.lr  # p = p - lr·dL/dp

    def zero_grad(self) -> None:
        """Zero every ``p.grad`` in place (the notebook's ``p.grad.data.zero_()``)."""
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr}, n_params={len(self.params)})"


class SGD(Optimizer):
    """SGD with optional momentum, Nesterov momentum and weight decay.

    ``lr`` is a plain (validated) attribute, so a scheduler may read and set ``opt.lr``.
    Momentum buffers are kept per parameter in ``self.buffers`` (``None`` until first step).
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        grad_attr: Literal["g", "grad"] = "g",
    ) -> None:
        super().__init__(params, lr)
        if grad_attr not in ("g", "grad"):
            raise ValueError(
                f"SGD: grad_attr must be 'g' (manual backward) or 'grad' (autograd), "
                f"got {grad_attr!r}"
            )
        self.momentum = _check_number(
            "momentum", momentum, 0.0, 1.0, "pass e.g. momentum=0.9, or 0 for none"
        )
        self.weight_decay = _check_number(
            "weight_decay", weight_decay, 0.0, None, "pass e.g. weight_decay=1e-4, or 0 for none"
        )
        if nesterov and self.momentum == 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0; pass e.g. momentum=0.9")
        self.nesterov = nesterov
        self.grad_attr = grad_attr
        self.buffers: list[Tensor | None] = [None] * len(self.params)

    def _grad(self, i: int, p: Tensor) -> Tensor | None:
        g = getattr(p, self.grad_attr, None)
        if g is not None and g.shape != p.shape:
            raise ValueError(
                f"SGD: parameter {i} has shape {tuple(p.shape)} but its .{self.grad_attr} has "
                f"shape {tuple(g.shape)}; the backward pass must give one gradient per entry"
            )
        return g

    @torch.no_grad()
    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for i, p in enumerate(self.params):
            d_p = self._grad(i, p)
            if d_p is None:
                continue
            if self.weight_decay != 0:
                d_p = d_p.add(p, alpha=self.weight_decay)  # g + λ·p  (d/dp of λ/2·|p|²)
            if self.momentum != 0:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = d_p.detach().clone()  # first step: buf = g
                else:
                    buf.mul_(self.momentum).add_(d_p)  # buf = μ·buf + g
                d_p = d_p.add(buf, alpha=self.momentum) if self.nesterov else buf
            p.add_(d_p, alpha=-self.lr)  # p = p - lr·g

    def zero_grad(self) -> None:
        """Clear the gradients (set ``.g`` or ``.grad`` to ``None``, like torch's default)."""
        for p in self.params:
            if getattr(p, self.grad_attr, None) is not None:
                setattr(p, self.grad_attr, None)

    def __repr__(self) -> str:
        return (
            f"SGD(lr={self.lr}, momentum={self.momentum}, weight_decay={self.weight_decay}, "
            f"nesterov={self.nesterov}, grad_attr={self.grad_attr!r}, n_params={len(self.params)})"
        )
