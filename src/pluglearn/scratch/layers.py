"""Layers with a hand-written backward pass: the notebook's ``Lin``, ``Relu`` and ``Model``.

Each follows the convention of :class:`~pluglearn.scratch.modules.Module`: ``forward`` computes
the output with differentiable torch ops and ``bwd(out, *inputs)`` reads ``out.g`` and assigns
``.g`` on each input and parameter. Weights are ``(in, out)``, as in the notebook's
``lin(x, w, b) = x @ w + b``.

* ``Lin(w, b)`` wraps given tensors; ``Linear(n_in, n_out)`` creates its own (Kaiming init), like
  the notebook's ``Linear`` built on ``nn.Module``.
* ``Model`` is the notebook's 784-50-1 regression model, whose call returns the MSE loss, in
  both of its forms: ``Model(w1, b1, w2, b2)`` on given tensors, trained by its manual
  ``backward()``, and ``Model(n_in, nh, n_out)``, which makes its weights with autograd on.
* ``MLP(n_in, nh, n_out)`` is the notebook's ``l1``/``relu``/``l2`` model, autograd on as the
  notebook trains it; ``Sequential`` chains any layers, like ``nn.Sequential``.

Autograd: the notebook's whole models (``Model(n_in, nh, n_out)``, ``MLP``) train with
``loss.backward()``, so their parameters require grad, as ``nn.Linear``'s do. The building
blocks (``Lin``, ``Linear``) leave it off: the manual backward needs no graph.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, overload

import torch
from torch import Tensor

from pluglearn.scratch.functional import lin, relu
from pluglearn.scratch.losses import Mse
from pluglearn.scratch.modules import GradTensor, Module, Parameter

__all__ = ["MLP", "Lin", "Linear", "Model", "Relu", "Sequential"]


class Lin(Module):
    """Affine layer ``x @ w + b`` on the given tensors ``w`` (in, out) and ``b`` (out,).

    ``w`` and ``b`` are marked as parameters (the same tensor objects, not copies), so a model
    built from ``Lin`` layers lists them in ``parameters()``.
    """

    def __init__(self, w: Tensor, b: Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(w, Tensor) or w.ndim != 2:
            shape = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
            raise ValueError(
                f"Lin: w must be a 2-D tensor (in, out), got {shape}; e.g. torch.randn(784, 50)"
            )
        self.w = Parameter(w)
        self.b = Parameter(b) if b is not None else None

    @property
    def n_in(self) -> int:
        return self.w.shape[0]

    @property
    def n_out(self) -> int:
        return self.w.shape[1]

    def forward(self, x: Tensor) -> Tensor:
        return lin(x, self.w, self.b)  # (n, in) @ (in, out) + (out,) -> (n, out)

    def bwd(self, out: GradTensor, x: GradTensor) -> None:
        g = out.g.reshape(-1, self.n_out)  # (*, out) -> (n, out)
        x2 = x.reshape(-1, self.n_in)  # (*, in) -> (n, in)
        x.g = (g @ self.w.T).reshape(x.shape)  # dL/dx = dL/dy · Wᵀ: (n, out) @ (out, in)
        self.w.g = x2.T @ g  # dL/dW = xᵀ · dL/dy: (in, n) @ (n, out) -> (in, out)
        if self.b is not None:
            self.b.g = g.sum(0)  # dL/db = Σ_rows dL/dy: (n, out) -> (out,)

    def extra_repr(self) -> str:
        return f"n_in={self.n_in}, n_out={self.n_out}, bias={self.b is not None}"


class Linear(Lin):
    """A ``Lin`` that creates its weights: ``w`` (n_in, n_out) with Kaiming/He init
    ``randn * sqrt(2 / n_in)`` (keeps activations' scale through ReLU layers), ``b`` zeros.

    Pass a ``torch.Generator`` for reproducible weights.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        bias: bool = True,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if n_in < 1 or n_out < 1:
            raise ValueError(f"Linear needs n_in >= 1 and n_out >= 1, got ({n_in}, {n_out})")
        w = torch.randn(n_in, n_out, generator=generator, dtype=dtype)  # (in, out)
        b = torch.zeros(n_out, dtype=dtype) if bias else None  # (out,)
        super().__init__(w * math.sqrt(2.0 / n_in), b)  # Var(w) = 2 / n_in


class Relu(Module):
    """``max(x, 0)`` elementwise."""

    def forward(self, x: Tensor) -> Tensor:
        return relu(x)  # (*) -> (*)

    def bwd(self, out: GradTensor, x: GradTensor) -> None:
        x.g = (x > 0).to(out.g.dtype) * out.g  # dL/dx = dL/dy · 1[x > 0]  (0 at x == 0, as torch)


class Sequential(Module):
    """Chain of layers: ``forward`` feeds each output to the next; ``bwd`` runs in reverse.

    Children are named ``"0"``, ``"1"``, ... like ``torch.nn.Sequential``; it supports
    ``len``, indexing, iteration and ``reversed``.
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

    def __reversed__(self) -> Iterator[Module]:
        return reversed(list(self.children()))

    def forward(self, x: Any) -> Any:
        for layer in self:
            x = layer(x)
        return x

    def bwd(self, out: Tensor, x: Any) -> None:
        for layer in reversed(self):
            layer.backward()  # each layer reads its out.g (set by the next) and sets inp.g


class Model(Module):
    """The notebook's regression model ``Lin -> Relu -> Lin`` with its MSE loss, in both forms.

    * ``Model(w1, b1, w2, b2)`` ("Layers as classes"): the layers wrap the given tensors (w is
      (in, out)); after ``loss = model(x, targ)``, ``model.backward()`` fills ``.g`` of the
      weights, biases and ``x``.
    * ``Model(n_in, nh, n_out)`` ("Autograd"): ``Linear`` layers make their weights (Kaiming
      init; ``generator`` and ``dtype`` as for ``Linear``) with ``requires_grad`` on, so
      ``loss.backward()`` fills ``.grad``; ``model.backward()`` works as well.

    ``model(x, targ)`` returns the loss (a 0-d tensor); ``model.layers`` is the ``Sequential``
    of the three layers, whose call gives the predictions.

    >>> model = Model(784, 50, 1)
    >>> loss = model(torch.rand(64, 784), torch.rand(64))
    >>> loss.backward()
    >>> model.layers[0].b.grad.shape
    torch.Size([50])
    """

    @overload
    def __init__(self, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, /) -> None: ...

    @overload
    def __init__(
        self,
        n_in: int,
        nh: int,
        n_out: int,
        /,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
    ) -> None: ...

    def __init__(
        self,
        *args: Tensor | int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        tensors = [a for a in args if isinstance(a, Tensor)]
        ints = [a for a in args if isinstance(a, int) and not isinstance(a, bool)]
        if len(args) == len(tensors) == 4:
            if generator is not None or dtype is not None:
                raise TypeError(
                    "Model(w1, b1, w2, b2) uses the tensors it is given: generator and dtype "
                    "belong to Model(n_in, nh, n_out), which makes its weights"
                )
            w1, b1, w2, b2 = tensors
            self.layers = [Lin(w1, b1), Relu(), Lin(w2, b2)]  # stored as a Sequential
        elif len(args) == len(ints) == 3:
            n_in, nh, n_out = ints
            self.layers = [
                Linear(n_in, nh, generator=generator, dtype=dtype),
                Relu(),
                Linear(nh, n_out, generator=generator, dtype=dtype),
            ]
            self.requires_grad_(True)  # the notebook trains this form with loss.backward()
        else:
            given = ", ".join(type(a).__name__ for a in args)
            raise TypeError(
                f"Model takes four tensors (w1, b1, w2, b2) or three ints (n_in, nh, n_out), "
                f"got ({given}): e.g. Model(w1, b1, w2, b2) or Model(784, 50, 1)"
            )
        self.loss = Mse()

    def forward(self, x: Tensor, targ: Tensor | None = None) -> Tensor:
        if targ is None:
            raise TypeError(
                "Model(x, targ) returns the MSE loss, so it needs the targets: pass them, or "
                "call model.layers(x) for the predictions"
            )
        for layer in self.layers:
            x = layer(x)  # (n, in) -> (n, nh) -> (n, nh) -> (n, out)
        loss: Tensor = self.loss(x, targ)  # (n, 1), (n,) -> ()
        return loss

    def bwd(self, out: GradTensor, x: GradTensor, targ: Tensor) -> None:
        self.loss.backward()  # self.loss.out is out: it reads the same out.g (1 for the loss)
        for layer in reversed(self.layers):
            layer.backward()


class MLP(Module):
    """The notebook's ``MLP(n_in, nh, n_out)``: ``l2(relu(l1(x)))`` with ``Linear`` layers.

    Parameters are named ``l1.w``, ``l1.b``, ``l2.w``, ``l2.b``; weights are (in, out), the
    transpose of ``nn.Linear``'s. They require grad, as the notebook trains this model with
    ``loss.backward()``, ``p -= p.grad * lr`` and ``model.zero_grad()``; the manual
    ``model.backward()`` works too, and ``requires_grad=False`` spares it autograd's graph.

    >>> import torch.nn.functional as F
    >>> model = MLP(784, 50, 10)
    >>> F.cross_entropy(model(torch.rand(64, 784)), torch.randint(0, 10, (64,))).backward()
    >>> [tuple(p.grad.shape) for p in model.parameters()]
    [(784, 50), (50,), (50, 10), (10,)]
    """

    def __init__(
        self,
        n_in: int,
        nh: int,
        n_out: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        requires_grad: bool = True,
    ) -> None:
        super().__init__()
        self.l1 = Linear(n_in, nh, generator=generator, dtype=dtype)
        self.l2 = Linear(nh, n_out, generator=generator, dtype=dtype)
        self.relu = Relu()
        self.requires_grad_(requires_grad)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.l2(self.relu(self.l1(x)))  # (n, in) -> (n, nh) -> (n, out)
        return out

    def bwd(self, out: GradTensor, x: GradTensor) -> None:
        self.l2.backward()  # self.l2.out is out, so it reads the same out.g
        self.relu.backward()
        self.l1.backward()
