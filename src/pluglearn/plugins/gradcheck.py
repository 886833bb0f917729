"""GradCheck: compares gradients with an oracle during training and names the backward at fault.

``mode="manual"`` (a model of :mod:`pluglearn.scratch.modules`): in ``after_loss`` of a training
batch, on the very forward pass the Learner trains on, it runs the hand-written backward and
``torch.autograd.grad(learn.loss, ..., retain_graph=True)`` (the training backward still works)
and compares ``.g`` with autograd for each parameter and the input. dL/d(model output) comes from:

* ``loss_func.backward()`` when ``loss_func`` is a scratch Module whose last call made
  ``learn.loss`` from the model's output (so the loss's own ``bwd`` is checked too);
* autograd otherwise (``F.cross_entropy``, a plugin that changed ``learn.loss``): it seeds
  ``model.out.g`` and only the model's ``bwd`` chain is checked.

Intermediate ``.g`` are compared too, so the error names the module whose ``bwd`` turns a right
``out.g`` into wrong gradients: a wrong activation spoils the parameters *before* it, yet the
message says ``check MyTanh.bwd``.

``mode="numeric"`` (any ``torch.nn.Module``): on a float64 deep copy of the model in eval mode and
the first ``probe`` items of the batch, compares autograd with central differences
``(L(p + eps) - L(p - eps)) / 2 eps`` on every entry of each parameter and of the input, or on
``n_entries`` of them drawn by a seeded generator.

Errors of a gradient ``a`` against its oracle ``b``: ``max abs = max |a - b|``, ``max rel =
max |a - b| / max(max |b|, tiny)`` (scaled by the largest oracle entry, so near-zero entries do
not blow it up). A row fails when ``max abs > atol + rtol * max |b|``, when either side has a NaN
or an infinite entry, and when the oracle ``b`` itself is not finite (an infinite oracle would
make the tolerance infinite: the row says ``oracle not finite``). Defaults (``None``) follow
the dtype: manual ``(rtol, atol) = (1e-4, 1e-6)`` for float32, ``(1e-9, 1e-12)`` for float64,
``(1e-2, 1e-3)`` for 16-bit floats; numeric ``(1e-5, 1e-7)`` (float64 central differences are
good to ~1e-9, but a ReLU kink within ``eps`` of an input can fail a row: prefer smooth ones).

Training is unchanged: parameters' ``.g`` is restored, the global RNG is not drawn, and on a
checked batch the model gets ``xb.detach().requires_grad_()`` (same values) to give dL/dx.

Example::

    learn = Learner(model, dls, loss_func=CrossEntropy(), plugins=[GradCheck(every=100)])
    learn.fit(1)                       # a table per checked batch; raises on a wrong bwd
    learn.plugin("GradCheck").results  # GradRow(epoch, batch, name, ..., max_abs, max_rel, ok)
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import IO, TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn
from tqdm.std import tqdm  # tqdm.auto warns on import in a kernel without ipywidgets

from ..distributed.ranks import is_main_process
from ..hooks.markers import hookimpl
from ..scratch.modules import GradTensor, Module
from .gradcheck_report import GradRow, blame, failure_message, format_table, grad_errors, one_line

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ..learner import Learner

__all__ = ["GradCheck", "GradCheckError", "GradCheckWarning", "GradRow", "grad_errors"]

_MANUAL_TOL = {torch.float64: (1e-9, 1e-12), torch.float32: (1e-4, 1e-6)}
_HALF_TOL, _NUMERIC_TOL = (1e-2, 1e-3), (1e-5, 1e-7)


class GradCheckError(AssertionError):
    """A gradient differs from its oracle by more than the tolerance."""


class GradCheckWarning(UserWarning):
    """Issued instead of :class:`GradCheckError` with ``on_fail="warn"``."""


def _walk(module: Module, path: str = "") -> Iterator[tuple[str, Module]]:
    yield path, module
    for name, child in module.named_children():
        yield from _walk(child, f"{path}.{name}" if path else name)


def _scratch_model(learn: Learner) -> Module:
    """``learn.model`` as the scratch Module the manual mode needs, or an error saying so."""
    model: object = learn.model
    if not isinstance(model, Module):
        raise TypeError(
            "GradCheck(mode='manual') needs a model built from pluglearn.scratch modules "
            f"(got a {type(model).__name__}); for an nn.Module use GradCheck(mode='numeric')."
        )
    return model


def _floating(t: Any) -> bool:
    return isinstance(t, Tensor) and t.is_floating_point()


class GradCheck:
    """Checks gradients on the first ``first`` training batches of a fit and every ``every``-th
    one (counted over the fit from 0: batch i is checked if ``i < first`` or ``i % every == 0``).

    Prints a table per checked batch (``show``; to ``file``, default stdout), keeps the rows in
    ``self.results`` (reset each fit), and raises :class:`GradCheckError` (``on_fail="raise"``)
    or warns (``"warn"``) when a row fails; see the module doc for the modes and tolerances.
    """

    def __init__(
        self,
        mode: Literal["manual", "numeric"] = "manual",
        first: int = 1,
        every: int | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        on_fail: Literal["raise", "warn"] = "raise",
        probe: int = 4,
        n_entries: int = 32,
        eps: float = 1e-6,
        seed: int = 0,
        show: bool = True,
        file: IO[str] | None = None,
    ) -> None:
        if mode not in ("manual", "numeric") or on_fail not in ("raise", "warn"):
            raise ValueError(f"GradCheck: bad mode={mode!r} or on_fail={on_fail!r}.")
        if first < 0 or (every is not None and every < 1) or min(probe, n_entries) < 1 or eps <= 0:
            raise ValueError(
                "GradCheck needs first >= 0, every >= 1, probe, n_entries >= 1, eps > 0."
            )
        if first == 0 and every is None:
            raise ValueError("GradCheck would never check: pass first=k >= 1 or every=n.")
        self.mode, self.first, self.every, self.on_fail = mode, first, every, on_fail
        self.rtol, self.atol = rtol, atol
        self.probe, self.n_entries, self.eps = probe, n_entries, eps
        self.show, self.file = show, file
        self._gen = torch.Generator().manual_seed(seed)  # entry sampling; never the global RNG
        self.results: list[GradRow] = []
        self._seen, self._due = 0, False

    def _tol(self, dtype: torch.dtype) -> tuple[float, float]:
        rtol, atol = _NUMERIC_TOL if self.mode == "numeric" else _MANUAL_TOL.get(dtype, _HALF_TOL)
        return (rtol if self.rtol is None else self.rtol, atol if self.atol is None else self.atol)

    # ------------------------------------------------------------------------------- hooks

    @hookimpl
    def before_fit(self, learn: Learner) -> None:
        model = learn.model
        if self.mode == "manual":
            if not any(p.requires_grad for p in _scratch_model(learn).parameters()):
                raise ValueError(
                    "GradCheck(mode='manual') compares with autograd, but no parameter of the "
                    "model requires grad: call model.requires_grad_(True) before the fit."
                )
        elif not isinstance(model, nn.Module):
            raise TypeError(
                f"GradCheck(mode='numeric') checks a torch.nn.Module, got a {type(model).__name__}"
                "; for a model built from pluglearn.scratch modules use GradCheck(mode='manual')."
            )
        self.results, self._seen, self._due = [], 0, False

    @hookimpl(trylast=True)  # after plugins that move or replace the batch
    def before_batch(self, learn: Learner) -> None:
        if not learn.training:
            self._due = False
            return
        i, self._seen = self._seen, self._seen + 1
        self._due = i < self.first or (self.every is not None and i % self.every == 0)
        xb = learn.batch[0]
        if self._due and self.mode == "manual" and _floating(xb) and not xb.requires_grad:
            # the same values, now a leaf of the graph: autograd can give dL/dx too
            learn.batch = (xb.detach().requires_grad_(True), learn.batch[1])

    @hookimpl
    def after_loss(self, learn: Learner) -> None:
        if not (self._due and learn.training):
            return
        self._due = False
        rows, culprit = self._manual(learn) if self.mode == "manual" else self._numeric(learn)
        self.results.extend(rows)
        if self.show and is_main_process():
            tqdm.write(self.format_table(rows), file=self.file)
        failed = [r for r in rows if not r.ok]
        if failed:
            self._fail(failed, culprit)

    # ------------------------------------------------------------------------- manual mode

    def _manual(self, learn: Learner) -> tuple[list[GradRow], str]:
        model, loss = _scratch_model(learn), learn.loss
        assert loss is not None  # after_loss: compute_loss set it
        out, x = model.__dict__.get("out"), model.__dict__.get("args", (None,))[0]
        loss_func: object = learn.loss_func
        # the loss's own bwd is checked too when it is a scratch module fed by the model
        loss_mod = (
            loss_func
            if isinstance(loss_func, Module)
            and loss_func.__dict__.get("out") is loss
            and loss_func.__dict__.get("args", (None,))[0] is out
            else None
        )
        modules = list(_walk(model))
        if loss_mod is not None:
            modules.append(("learn.loss_func", loss_mod))
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # not frozen
        watched = {id(p): p for _, p in params}  # every tensor the backward passes through
        for _, m in modules:
            for t in (m.__dict__.get("out"), *m.__dict__.get("args", ())):
                if _floating(t) and t.requires_grad and t is not loss:
                    watched[id(t)] = t
        found = torch.autograd.grad(
            loss, list(watched.values()), retain_graph=True, allow_unused=True
        )
        ref = {
            k: torch.zeros_like(t) if g is None else g
            for (k, t), g in zip(watched.items(), found, strict=True)
        }
        saved = {id(p): (hasattr(p, "g"), getattr(p, "g", None)) for _, p in params}
        for t in watched.values():
            t.g = None  # a stale .g from an earlier batch must not pass for a computed one
        try:
            if loss_mod is not None:
                loss_mod.backward()  # seeds loss.g = 1 and checks the loss's own bwd
            elif out is not None and id(out) in ref:
                out.g = ref[id(out)]  # dL/d(out) from autograd: only the model's bwd is checked
            model.backward()
            return self._manual_rows(learn, params, x, ref), blame(modules, ref, loss, self._ok)
        finally:
            for _, p in params:
                had, g = saved[id(p)]
                if had:
                    p.g = g
                else:
                    del p.g

    def _manual_rows(
        self,
        learn: Learner,
        params: list[tuple[str, GradTensor]],
        x: Any,
        ref: dict[int, Tensor],
    ) -> list[GradRow]:
        model = _scratch_model(learn)
        owners = dict(_walk(model))
        named: list[tuple[str, Module, Any]] = [
            (n, owners[n.rpartition(".")[0]], p) for n, p in params
        ]
        if id(x) in ref:
            named.append(("input", model, x))
        return [self._row(learn, n, m, t, getattr(t, "g", None), ref[id(t)]) for n, m, t in named]

    def _ok(self, got: Tensor | None, ref: Tensor) -> bool:
        rtol, atol = self._tol(ref.dtype)
        err, _, scale = grad_errors(got, ref)
        # a non-finite oracle cannot vouch for anything (and max |ref| = inf would pass all)
        return math.isfinite(scale) and err <= atol + rtol * scale

    # ------------------------------------------------------------------------ numeric mode

    def _numeric(self, learn: Learner) -> tuple[list[GradRow], str]:
        probe = copy.deepcopy(learn.model).double().eval()  # eval: no dropout, no RNG drawn
        xb, yb = learn.batch[0][: self.probe], learn.batch[1][: self.probe]
        x = xb.detach().double().contiguous() if xb.is_floating_point() else xb
        y = yb.detach().double() if yb.is_floating_point() else yb
        if x.is_floating_point():
            x.requires_grad_(True)
        loss_func = learn.loss_func
        # a scratch loss keeps its last inputs; put back the training ones after probing
        state = dict(loss_func.__dict__) if isinstance(loss_func, Module) else None

        def loss_at() -> Tensor:
            return loss_func(probe(x), y)

        try:
            named = [(n, p) for n, p in probe.named_parameters() if p.requires_grad]
            named += [("input", x)] if x.requires_grad else []
            grads = torch.autograd.grad(loss_at(), [t for _, t in named], allow_unused=True)
            rows = []
            for (name, t), g in zip(named, grads, strict=True):
                g = torch.zeros_like(t) if g is None else g
                idx = self._entries(t.numel())
                flat = t.detach().view(-1)  # shares memory: nudging it nudges the model
                fd = torch.empty(len(idx), dtype=torch.float64)
                with torch.no_grad():
                    for k, i in enumerate(idx.tolist()):
                        orig = flat[i].item()
                        flat[i] = orig + self.eps
                        plus = loss_at().item()
                        flat[i] = orig - self.eps
                        minus = loss_at().item()
                        flat[i] = orig
                        fd[k] = (plus - minus) / (2 * self.eps)
                path = name.rpartition(".")[0]
                owner = probe.get_submodule(path) if name != "input" else probe
                got = g.detach().reshape(-1)[idx].cpu()
                rows.append(self._row(learn, name, owner, t, got, fd, len(idx)))
        finally:
            if state is not None:
                loss_func.__dict__.clear()
                loss_func.__dict__.update(state)
        bad = [r.module.split("(")[0] for r in rows if not r.ok and r.name != "input"]
        return rows, f"the backward of {bad[-1] if bad else 'the first module'} or of one after it"

    def _entries(self, numel: int) -> Tensor:
        if numel <= self.n_entries:
            return torch.arange(numel)
        return torch.randperm(numel, generator=self._gen)[: self.n_entries].sort().values

    # ----------------------------------------------------------------------------- report

    def _row(
        self,
        learn: Learner,
        name: str,
        module: Any,
        t: Tensor,
        got: Any,
        ref: Tensor,
        checked: int | None = None,
    ) -> GradRow:
        err, rel, _ = grad_errors(got, ref)
        note = "" if got is not None else "(no .g: its bwd never set it)"
        if got is not None and got.shape != ref.shape:
            note = f"(.g has shape {tuple(got.shape)})"
        elif got is not None and not bool(torch.isfinite(ref).all()):
            oracle = "autograd" if self.mode == "manual" else "finite differences"
            note = f"(oracle not finite: {oracle} gave NaN or inf)"
        n, ok = t.numel() if checked is None else checked, self._ok(got, ref)
        head = (learn.epoch, learn.iter, name, one_line(module), tuple(t.shape), n, err, rel, ok)
        return GradRow(*head, *self._tol(ref.dtype), note)

    def format_table(self, rows: list[GradRow]) -> str:
        """The table printed for one checked batch."""
        return format_table(rows, self.mode)  # the function of gradcheck_report, not this method

    def _fail(self, failed: list[GradRow], culprit: str) -> None:
        msg = failure_message(failed, culprit)
        if self.on_fail == "raise":
            raise GradCheckError(msg)
        warnings.warn(msg, GradCheckWarning, stacklevel=2)
