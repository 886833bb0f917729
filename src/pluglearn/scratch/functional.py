"""The forward pass of a neural network, written from scratch with tensor ops.

Every function here is built from plain, differentiable torch ops (``@``, ``exp``, ``log``,
indexing...), so it can be checked against its ``torch.nn.functional`` twin and autograd can
differentiate through it. The notation follows the fastai course notebook:

* ``n`` is the batch size, ``c`` the number of classes, ``in``/``out`` layer widths.
* Functions that reduce over classes work on the last dimension (``dim=-1``).

The functions check their inputs and raise a ``ValueError`` that names the problem and the fix,
instead of letting broadcasting silently produce a wrong answer (the classic ``(n, 1) - (n,)``
→ ``(n, n)`` bug in a hand-written MSE).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "accuracy",
    "cross_entropy",
    "lin",
    "log_softmax",
    "log_softmax_naive",
    "logsumexp",
    "mse",
    "nll",
    "relu",
]


def _check_float(name: str, t: Tensor) -> None:
    """Raise a ValueError unless ``t`` is a floating-point tensor."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor, got dtype {t.dtype}; "
            f"convert it with {name}.float() (or .double())"
        )


def _check_class_targets(fn: str, scores: Tensor, target: Tensor) -> None:
    """Check ``scores`` is (n, c) and ``target`` holds n integer class indices in [0, c)."""
    if scores.ndim != 2:
        raise ValueError(
            f"{fn}: expected 2-D scores of shape (n, c), got shape {tuple(scores.shape)}; "
            "flatten extra dimensions with .view(-1, c)"
        )
    if not isinstance(target, Tensor) or target.ndim != 1:
        shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"{fn}: target must be a 1-D tensor of class indices, got {shape}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(
            f"{fn}: target must hold integer class indices, got dtype {target.dtype}; "
            "convert it with target.long()"
        )
    n, c = scores.shape
    if target.shape[0] != n:
        raise ValueError(
            f"{fn}: target has {target.shape[0]} entries but the scores have {n} rows; "
            "pass one class index per row"
        )
    if n and (int(target.min()) < 0 or int(target.max()) >= c):
        raise ValueError(
            f"{fn}: target class indices must lie in [0, {c}), got values in "
            f"[{int(target.min())}, {int(target.max())}]"
        )


def lin(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """The notebook's linear layer ``x @ w + b``, with ``w`` shaped ``(in, out)``.

    ``x`` may have any leading dimensions: ``(*, in) -> (*, out)``. (``torch.nn.functional.linear``
    takes its weight transposed, ``(out, in)``: ``lin(x, w, b) == F.linear(x, w.T, b)``.)
    """
    _check_float("x", x)
    _check_float("w", w)
    if w.ndim != 2:
        raise ValueError(f"lin: w must be 2-D (in, out), got shape {tuple(w.shape)}")
    if x.ndim == 0 or x.shape[-1] != w.shape[0]:
        raise ValueError(
            f"lin: x has {x.shape[-1] if x.ndim else 0} features (last dim) but w expects "
            f"{w.shape[0]} (w is (in, out) = {tuple(w.shape)}); transpose w if it is (out, in), "
            "as torch's Linear.weight is"
        )
    if x.dtype != w.dtype:
        raise ValueError(f"lin: x is {x.dtype} but w is {w.dtype}; convert one with .to({w.dtype})")
    out = x @ w  # (*, in) @ (in, out) -> (*, out)
    if b is None:
        return out
    _check_float("b", b)
    if b.shape != (w.shape[1],):
        raise ValueError(
            f"lin: b must have shape ({w.shape[1]},) to match w's {w.shape[1]} outputs, "
            f"got {tuple(b.shape)}"
        )
    return out + b  # (*, out) + (out,) -> (*, out)


def relu(x: Tensor) -> Tensor:
    """Rectified linear unit ``max(x, 0)`` elementwise (same shape as ``x``).

    Written with ``where`` rather than the notebook's ``clamp_min(0.)`` (same values): autograd
    gives ``clamp_min`` a slope of 1 at exactly ``x == 0`` while ``F.relu`` (and the manual
    backward of :class:`~pluglearn.scratch.layers.Relu`) use 0; a zero-bias layer fed an all-zero
    row hits that case. ``nan`` stays ``nan``, as with ``F.relu``.
    """
    return torch.where(x <= 0, 0.0, x)  # (*) -> (*); dy/dx = 1 where x > 0 else 0


def mse(output: Tensor, target: Tensor) -> Tensor:
    """Mean squared error between predictions and targets, a 0-d tensor.

    ``output`` may be ``(n, 1)`` (a one-unit regression head) or ``(n,)``; ``target`` is
    ``(n,)``. Like the notebook, a trailing unit dimension of ``output`` is squeezed before
    subtracting: otherwise ``(n, 1) - (n,)`` would broadcast to ``(n, n)`` and give a silently
    wrong loss. Any other shape mismatch raises a ValueError.
    """
    _check_float("output", output)
    _check_float("target", target)
    if output.ndim == 2 and output.shape[1] == 1 and target.ndim == 1:
        output = output.squeeze(-1)  # (n, 1) -> (n,)
    if output.shape != target.shape:
        raise ValueError(
            f"mse: output shape {tuple(output.shape)} does not match target shape "
            f"{tuple(target.shape)}; pass output (n,) or (n, 1) with target (n,)"
        )
    return (output - target).pow(2).mean()  # (n,) -> (); dL/d(output) = 2(output - target)/n


def log_softmax_naive(x: Tensor, dim: int = -1) -> Tensor:
    """``log(exp(x) / sum(exp(x)))`` computed literally.

    Kept to show the problem: ``exp`` overflows to ``inf`` for logits above ~88 (float32) or
    ~709 (float64), and the result becomes ``nan``. Use :func:`log_softmax` instead.
    """
    _check_float("x", x)
    e = x.exp()  # (n, c), overflows for large x
    return (e / e.sum(dim, keepdim=True)).log()  # (n, c) / (n, 1) -> (n, c)


def _shift(x: Tensor, dim: int) -> Tensor:
    """Detached max over ``dim`` (keepdim), with ±inf maxima replaced by 0 (no inf - inf)."""
    m = x.detach().amax(dim, keepdim=True)  # (n, c) -> (n, 1)
    return torch.where(m.isinf(), torch.zeros_like(m), m)


def logsumexp(x: Tensor, dim: int = -1) -> Tensor:
    """Stable ``log(sum(exp(x)))`` over ``dim``: ``m + log(sum(exp(x - m)))`` with ``m = max``.

    Shifting by the row maximum keeps every ``exp`` argument <= 0, so nothing overflows. The
    shift ``m`` is treated as a constant (detached): the result does not depend on it, and the
    gradient is exactly ``softmax(x)``. Rows that are entirely ``-inf`` give ``-inf`` and rows
    containing ``+inf`` give ``+inf``, like ``torch.logsumexp``.
    """
    _check_float("x", x)
    m = _shift(x, dim)  # (n, 1)
    s = (x - m).exp().sum(dim, keepdim=True)  # (n, c) - (n, 1) -> (n, 1); d/dx = softmax(x)
    return (m + s.log()).squeeze(dim)  # (n, 1) -> (n,)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    """Stable log-softmax ``x - logsumexp(x)`` over ``dim`` (same shape as ``x``).

    Computed as ``z - logsumexp(z)`` with ``z = x - max(x)``: mathematically the same, but it
    avoids cancelling two large numbers (``1e4 - 1e4``), which would lose float32 precision.
    """
    _check_float("x", x)
    z = x - _shift(x, dim)  # (n, c) - (n, 1) -> (n, c), every entry <= 0
    return z - logsumexp(z, dim).unsqueeze(dim)  # (n, c) - (n, 1) -> (n, c); d/dz = I - softmax


def nll(log_probs: Tensor, target: Tensor) -> Tensor:
    """Negative log-likelihood: minus the mean log-probability of the target classes.

    ``log_probs`` is ``(n, c)`` (e.g. from :func:`log_softmax`), ``target`` is ``(n,)`` integer
    class indices in ``[0, c)``. Returns a 0-d tensor, like ``F.nll_loss`` (mean reduction).
    """
    _check_float("log_probs", log_probs)
    _check_class_targets("nll", log_probs, target)
    n = log_probs.shape[0]
    picked = log_probs[torch.arange(n, device=log_probs.device), target]  # (n, c) -> (n,)
    return -picked.mean()  # (n,) -> (); dL/d(log_probs)[i, target_i] = -1/n


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of raw ``(n, c)`` logits against ``(n,)`` class indices, a 0-d tensor.

    ``nll(log_softmax(logits), target)``, the same as ``F.cross_entropy``; its gradient with
    respect to the logits is ``(softmax(logits) - one_hot(target)) / n``.
    """
    _check_float("logits", logits)
    _check_class_targets("cross_entropy", logits, target)
    return nll(log_softmax(logits), target)  # (n, c) -> ()


def accuracy(logits: Tensor, target: Tensor) -> Tensor:
    """Fraction of rows whose arg-max score is the target class, a 0-d float32 tensor (the
    notebook's ``(out.argmax(dim=1) == yb).float().mean()``)."""
    _check_class_targets("accuracy", logits, target)
    return (logits.argmax(-1) == target).float().mean()  # (n, c) -> (n,) -> ()
