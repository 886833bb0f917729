"""Scratch modules: the fastai notebook's ``Module`` convention, its base class and parameters.

The convention
--------------
* ``module(*inputs)`` stores ``module.args = inputs``, computes ``module.out =
  module.forward(*inputs)`` and returns ``out``.
* ``module.backward()`` calls ``module.bwd(module.out, *module.args)``.
* ``bwd(out, *inputs)`` reads the upstream gradient ``out.g`` (dL/d out) and *assigns*
  ``.g`` on each input and on each of the module's parameters (chain rule, one layer).

Gradients live in a plain Python attribute ``.g`` on ordinary tensors, beside autograd's
``.grad``. ``backward()`` runs ``bwd`` under ``torch.no_grad()``; every ``forward`` uses
differentiable torch ops, so ``loss.backward()`` (autograd) works on the same forward pass.

A 0-d output (a loss) with no ``.g`` yet is seeded with ``out.g = 1`` (dL/dL), so the backward of
a whole network is ``loss_fn.backward(); model.backward()``.

Limitations (as in the notebook): ``.g`` is assigned, not accumulated, so a tensor that feeds
two layers, or a module instance called twice in one forward, gets the wrong gradient. Targets
passed to a loss get no ``.g``.

Parameters
----------
A parameter is a plain tensor marked by :func:`Parameter` (or a ``torch.nn.Parameter``).
Assigning one to a Module attribute registers it; assigning a Module registers a child. A list
or tuple of Modules is stored as a :class:`Sequential`, so ``self.layers = [Linear(2, 3)]``
registers ``layers.0.w``. :meth:`Module.named_parameters` yields dotted names like torch's.

The layers (:mod:`~pluglearn.scratch.layers`) and losses (:mod:`~pluglearn.scratch.losses`) live
in their own modules; import them all from :mod:`pluglearn.scratch`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

__all__ = ["Module", "Parameter", "is_parameter"]

_FLAG = "_scratch_parameter"

if TYPE_CHECKING:

    class GradTensor(Tensor):
        """For type checkers only: a plain tensor that may carry the notebook's ``.g``."""

        g: Any  # dL/d(this tensor) once a bwd assigned it; None after zero_grad

else:
    GradTensor = Tensor  # at run time every tensor takes a .g


def Parameter(data: Tensor, requires_grad: bool = False) -> GradTensor:
    """Mark ``data`` as a parameter and return the *same* tensor object (no copy, no subclass).

    The result stays a plain ``torch.Tensor``: ``.g`` (manual backward) and ``.grad``
    (autograd) can both be read from it. ``requires_grad=True`` also enables autograd on it;
    a whole model can be switched with :meth:`Module.requires_grad_`.
    """
    if not isinstance(data, Tensor):
        raise TypeError(f"Parameter expects a torch.Tensor, got {type(data).__name__}")
    setattr(data, _FLAG, True)
    if requires_grad:
        data.requires_grad_(True)
    return cast(GradTensor, data)


def is_parameter(t: object) -> bool:
    """True if ``t`` is a tensor marked by :func:`Parameter` or a ``torch.nn.Parameter``."""
    if isinstance(t, torch.nn.Parameter):
        return True
    return isinstance(t, Tensor) and getattr(t, _FLAG, False) is True


class Module:
    """Base class: subclass it and write ``forward(*inputs)`` and ``bwd(out, *inputs)``.

    Calling ``super().__init__()`` is optional: the registries are created on first use.
    """

    _modules: dict[str, Module]
    _params: dict[str, GradTensor]
    args: tuple[Any, ...]  # the inputs of the last call (set by __call__)
    out: Any  # the output of the last call (set by __call__)

    def __init__(self) -> None:
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_params", {})

    def _registries(self) -> tuple[dict[str, Module], dict[str, GradTensor]]:
        d = self.__dict__
        if "_modules" not in d:
            Module.__init__(self)
        return d["_modules"], d["_params"]

    def __setattr__(self, name: str, value: Any) -> None:
        """Register Modules as children and parameter tensors as parameters, then assign."""
        modules, params = self._registries()
        modules.pop(name, None)
        params.pop(name, None)
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, Module) for v in value):
            from pluglearn.scratch.layers import Sequential  # layers.py imports this module

            value = Sequential(*value)
        if isinstance(value, Module):
            modules[name] = value
        elif is_parameter(value):
            params[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        modules, params = self._registries()
        modules.pop(name, None)
        params.pop(name, None)
        object.__delattr__(self, name)

    # ---- forward / backward -------------------------------------------------------------
    def __call__(self, *args: Any) -> Any:
        """Run ``forward``, remembering inputs (``self.args``) and output (``self.out``)."""
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "out", self.forward(*args))
        return self.out

    def forward(self, *args: Any) -> Any:
        """Compute the output from the inputs with differentiable torch ops."""
        raise NotImplementedError(
            f"{type(self).__name__}.forward is not implemented: define "
            "`def forward(self, *inputs)` returning the output tensor"
        )

    def bwd(self, out: GradTensor, *args: Any) -> None:
        """Read ``out.g`` and assign ``.g`` on every input and parameter."""
        raise NotImplementedError(
            f"{type(self).__name__}.bwd is not implemented: define "
            "`def bwd(self, out, *inputs)` that reads out.g and sets .g on each input "
            "(and on each parameter of the module)"
        )

    def backward(self) -> None:
        """Back-propagate ``self.out.g`` through this module into ``.g`` of inputs/params."""
        if "out" not in self.__dict__:
            raise RuntimeError(
                f"{type(self).__name__}.backward() called before a forward pass: "
                "call the module on its inputs first, e.g. `out = module(x)`"
            )
        out = self.out
        if getattr(out, "g", None) is None:
            if isinstance(out, GradTensor) and out.ndim == 0:  # (a Tensor at run time)
                out.g = torch.ones_like(out).detach()  # dL/dL = 1 for a scalar loss
            else:
                raise RuntimeError(
                    f"{type(self).__name__}.backward(): out.g is missing, so there is no "
                    "upstream gradient; run the backward of the next layer (or the loss) first, "
                    "or set module.out.g yourself"
                )
        with torch.no_grad():
            self.bwd(out, *self.args)

    # ---- parameters and children ---------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        """Yield ``(name, child)`` for the direct child modules, in assignment order."""
        yield from self._registries()[0].items()

    def children(self) -> Iterator[Module]:
        """Yield the direct child modules."""
        for _, m in self.named_children():
            yield m

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, GradTensor]]:
        """Yield ``(dotted_name, tensor)`` for every parameter, own ones first, then children's.

        A tensor shared by several modules is yielded once, under its first name.
        """
        seen: set[int] = set()
        for name, p in self._named_parameters_all(prefix):
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def _named_parameters_all(self, prefix: str) -> Iterator[tuple[str, GradTensor]]:
        modules, params = self._registries()
        for name, p in params.items():
            yield prefix + name, p
        for name, m in modules.items():
            yield from m._named_parameters_all(f"{prefix}{name}.")

    def parameters(self) -> Iterator[GradTensor]:
        """Yield every parameter tensor, recursively (each shared tensor once)."""
        for _, p in self.named_parameters():
            yield p

    # ---- the few nn.Module habits a training loop relies on -------------------------------
    @property
    def training(self) -> bool:
        """True in train mode (the default), False after ``eval()``."""
        return bool(self.__dict__.get("_training", True))

    def train(self, mode: bool = True) -> Module:
        """Set train mode (or eval mode with ``mode=False``) here and in every child."""
        object.__setattr__(self, "_training", bool(mode))
        for child in self.children():
            child.train(mode)
        return self

    def eval(self) -> Module:
        """Set eval mode: ``train(False)``."""
        return self.train(False)

    def state_dict(self) -> dict[str, Tensor]:
        """``{dotted_name: tensor}`` of every parameter (the tensors themselves, not copies)."""
        return dict(self.named_parameters())

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Copy ``state``'s tensors into the parameters, in place; names and shapes must match."""
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(
                f"{type(self).__name__}.load_state_dict: missing {missing}, unexpected "
                f"{unexpected}: load a state saved from the same architecture"
            )
        with torch.no_grad():
            for name, p in own.items():
                if p.shape != state[name].shape:
                    raise ValueError(
                        f"{name}: saved shape {tuple(state[name].shape)} != {tuple(p.shape)}"
                    )
                p.copy_(state[name])

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear autograd's gradient of every parameter, as ``nn.Module.zero_grad`` does:
        ``p.grad = None``, or zeroed in place with ``set_to_none=False``.

        The manual ``.g`` needs no clearing: each ``backward()`` assigns it afresh.

        >>> loss = loss_func(model(xb), yb)
        >>> loss.backward()
        >>> with torch.no_grad():
        ...     for p in model.parameters(): p -= p.grad * lr
        ...     model.zero_grad()
        """
        for p in self.parameters():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()  # (*p.shape) zeroed in place, out of any graph, as torch

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Switch autograd on (or off) for every parameter; returns ``self``."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    # ---- repr -----------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """The text between the parentheses of this module's one-line repr."""
        return ""

    def __repr__(self) -> str:
        children = list(self.named_children())
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not children:
            return head + ")"
        lines = [head]
        for name, m in children:
            lines.append(f"  ({name}): " + repr(m).replace("\n", "\n  "))
        return "\n".join(lines) + "\n)"
