"""Layers with a hand-written backward pass: ``Linear``, ``ReLU``, ``Sequential`` and ``MLP``.

Each follows the convention of :class:`~pluglearn.scratch.modules.Module`: ``forward`` computes
the output with differentiable torch ops and ``bwd(out, *inputs)`` reads ``out.g`` and assigns
``.g`` on each input and parameter.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from pluglearn.scratch.functional import lin, relu
from pluglearn.scratch.modules import Module, Parameter

__all__ = ["MLP", "Linear", "ReLU", "Sequential"]


class Linear(Module):
    """Affine layer ``x @ w.T + b`` with ``w`` (n_out, n_in) and ``b`` (n_out,).

    ``w`` gets Kaiming/He init, ``randn * sqrt(2 / n_in)`` (keeps activations' scale through
    ReLU layers); ``b`` starts at zero. Pass a ``torch.Generator`` for reproducible weights.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        bias: bool = True,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if n_in < 1 or n_out < 1:
            raise ValueError(f"Linear needs n_in >= 1 and n_out >= 1, got ({n_in}, {n_out})")
        self.n_in, self.n_out = n_in, n_out
        w = torch.randn(n_out, n_in, generator=generator, dtype=dtype)  # (out, in)
        self.w = Parameter(w * math.sqrt(2.0 / n_in))  # Var(w) = 2 / n_in
        self.b = Parameter(torch.zeros(n_out, dtype=dtype)) if bias else None  # (out,)

    def forward(self, x: Tensor) -> Tensor:
        return lin(x, self.w, self.b)  # (n, in) @ (in, out) + (out,) -> (n, out)

    def bwd(self, out: Tensor, x: Tensor) -> None:
        g = out.g.reshape(-1, self.n_out)  # (*, out) -> (n, out)
        x2 = x.reshape(-1, self.n_in)  # (*, in) -> (n, in)
        x.g = (g @ self.w).reshape(x.shape)  # dL/dx = dL/dy · W: (n, out) @ (out, in) -> (n, in)
        self.w.g = g.T @ x2  # dL/dW = (dL/dy)ᵀ · x: (out, n) @ (n, in) -> (out, in)
        if self.b is not None:
            self.b.g = g.sum(0)  # dL/db = Σ_rows dL/dy: (n, out) -> (out,)

    def extra_repr(self) -> str:
        return f"n_in={self.n_in}, n_out={self.n_out}, bias={self.b is not None}"


class ReLU(Module):
    """``max(x, 0)`` elementwise."""

    def forward(self, x: Tensor) -> Tensor:
        return relu(x)  # (*) -> (*)

    def bwd(self, out: Tensor, x: Tensor) -> None:
        x.g = (x > 0).to(out.g.dtype) * out.g  # dL/dx = dL/dy · 1[x > 0]  (0 at x == 0, as torch)


class Sequential(Module):
    """Chain of layers: ``forward`` feeds each output to the next; ``bwd`` runs in reverse.

    Children are named ``"0"``, ``"1"``, ... like ``torch.nn.Sequential``; it supports
    ``len``, indexing and iteration.
    """

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(
                    f"Sequential: layer {i} is a {type(layer).__name__}, not a scratch Module; "
                    "wrap the function in a Module subclass with forward and bwd"
                )
            setattr(self, str(i), layer)

    def __len__(self) -> int:
        return len(self._registries()[0])

    def __getitem__(self, i: int) -> Module:
        return list(self.children())[i]

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self.children()))

    def forward(self, x: Any) -> Any:
        for layer in self:
            x = layer(x)
        return x

    def bwd(self, out: Tensor, x: Any) -> None:
        for layer in reversed(list(self)):
            layer.backward()  # each layer reads its out.g (set by the next) and sets inp.g


class MLP(Module):
    """``Linear(n_in, n_hidden) -> ReLU -> Linear(n_hidden, n_out)``, the notebook's model.

    Its layers sit in ``self.layers``, so parameter names are ``layers.0.w``, ``layers.2.b``...
    """

    def __init__(
        self,
        n_in: int,
        n_hidden: int,
        n_out: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.layers = Sequential(
            Linear(n_in, n_hidden, generator=generator, dtype=dtype),
            ReLU(),
            Linear(n_hidden, n_out, generator=generator, dtype=dtype),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)  # (n, in) -> (n, out)

    def bwd(self, out: Tensor, x: Tensor) -> None:
        self.layers.backward()  # self.layers.out is out, so it reads the same out.g
