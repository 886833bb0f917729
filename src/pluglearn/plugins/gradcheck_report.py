"""What GradCheck reports: one :class:`GradRow` per compared gradient, the error math, the
table, and the blame (which ``bwd`` is at fault) in the failure message.

Errors of a gradient ``a`` against its oracle ``b``: ``max abs = max |a - b|``, ``max rel =
max |a - b| / max(max |b|, tiny)`` (scaled by the largest oracle entry, so near-zero entries do
not blow it up). See :mod:`pluglearn.plugins.gradcheck` for the tolerances and the plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..scratch.modules import Module

__all__ = ["GradRow", "blame", "failure_message", "format_table", "grad_errors", "one_line"]

_TITLE = {"manual": "manual backward vs autograd", "numeric": "autograd vs finite differences"}


@dataclass(frozen=True)
class GradRow:
    """One compared gradient (a parameter, or ``"input"``) of one checked batch."""

    epoch: int
    batch: int
    name: str
    module: str  # one-line repr of the module owning the parameter
    shape: tuple[int, ...]
    checked: int  # entries compared (numeric mode may sample a subset)
    max_abs: float
    max_rel: float
    ok: bool  # max_abs <= atol + rtol * max |oracle|
    rtol: float
    atol: float
    note: str = ""  # why a gradient could not be compared (missing .g, wrong shape)


def grad_errors(got: Tensor | None, ref: Tensor) -> tuple[float, float, float]:
    """``(max abs error, max rel error, max |ref|)`` of ``got`` against the oracle ``ref``.

    A missing gradient or a wrong shape gives infinite errors.

    >>> grad_errors(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 4.0]))
    (1.0, 0.25, 4.0)
    """
    scale = ref.abs().max().item() if ref.numel() else 0.0
    if got is None or got.shape != ref.shape:
        return float("inf"), float("inf"), scale
    diff = (got.detach().to(ref.dtype) - ref).abs().max().item() if ref.numel() else 0.0
    return diff, diff / max(scale, torch.finfo(ref.dtype).tiny), scale


def one_line(module: Any) -> str:
    """``Name(extra_repr)``: the ``module`` column of a :class:`GradRow`."""
    return f"{type(module).__name__}({module.extra_repr()})"


def blame(
    modules: list[tuple[str, Module]],
    ref: dict[int, Tensor],
    loss: Tensor,
    ok: Callable[[Tensor | None, Tensor], bool],
) -> str:
    """The modules whose bwd gets a right ``out.g`` but writes a wrong ``.g``; leaves first.

    ``ref`` maps ``id(tensor)`` to its oracle gradient; ``ok(got, ref)`` is the tolerance test.
    """
    leaves: list[str] = []
    others: list[str] = []
    for path, m in modules:
        out = m.__dict__.get("out")
        if out is not loss and (
            id(out) not in ref or not ok(getattr(out, "g", None), ref[id(out)])
        ):
            continue  # the upstream gradient is already wrong (or unknown): not this bwd
        own = [p for n, p in m.named_parameters() if "." not in n]
        inputs = [t for t in [*m.__dict__.get("args", ()), *own] if id(t) in ref]
        if any(not ok(getattr(t, "g", None), ref[id(t)]) for t in inputs):
            where = (
                f"{type(m).__name__}.bwd (module {path!r})"
                if path
                else f"{type(m).__name__}.bwd (the model)"
            )
            (others if next(m.children(), None) else leaves).append(where)
    return " / ".join(leaves or others)


def format_table(rows: list[GradRow], mode: str) -> str:
    """The table printed for one checked batch; ``mode`` is GradCheck's (its title)."""
    head = (
        f"GradCheck ({_TITLE[mode]}), epoch {rows[0].epoch}, batch {rows[0].batch}" if rows else ""
    )
    w = max([9, *(len(r.name) for r in rows)])
    cols = f"{'shape':<14}{'checked':>8}  {'max abs err':>11}  {'max rel err':>11}  result"
    lines = [head, f"{'parameter':<{w}}  {cols}"]
    for r in rows:
        result = "ok" if r.ok else f"FAIL {r.note}".rstrip()
        errs = f"{r.max_abs:>11.2e}  {r.max_rel:>11.2e}"
        lines.append(f"{r.name:<{w}}  {r.shape!s:<14}{r.checked:>8}  {errs}  {result}")
    return "\n".join(lines)


def failure_message(failed: list[GradRow], culprit: str) -> str:
    """What GradCheck raises or warns for the ``failed`` rows; ``culprit`` is :func:`blame`'s."""
    # name the failing parameter nearest the output: the others may only inherit its error
    params = [r for r in failed if r.name != "input"]
    worst = (params or failed)[-1]
    where = culprit or f"{worst.module.split('(')[0]}.bwd"
    msg = (
        f"{worst.name} of {worst.module}: max rel error {worst.max_rel:.3g} > rtol "
        f"{worst.rtol:g} (max abs error {worst.max_abs:.3g}, atol {worst.atol:g})"
        f"{' ' + worst.note if worst.note else ''}: check {where}"
    )
    if len(failed) > 1:
        msg += f". Failing: {', '.join(r.name for r in failed)}"
    msg += f" (epoch {worst.epoch}, batch {worst.batch})."
    return msg
