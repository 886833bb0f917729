"""The notebook's ``MyModule``: how ``nn.Module`` finds its layers, in a dozen lines.

Assigning an attribute goes through ``__setattr__``, which records every public one in
``self._modules``; ``parameters()`` then yields the parameters of each recorded layer. This is
the idea behind :class:`~pluglearn.scratch.modules.Module`'s registration (which also records
bare parameter tensors, nests, and names them). Like the notebook, the two layers are
``torch.nn.Linear``, so the printed shapes are torch's ``(out, in)``.

>>> mdl = MyModule(784, 50, 10)
>>> [tuple(p.shape) for p in mdl.parameters()]
[(50, 784), (50,), (10, 50), (10,)]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn

__all__ = ["MyModule"]


class MyModule:
    """Two ``nn.Linear`` layers, ``l1`` (n_in -> nh) and ``l2`` (nh -> n_out), registered by
    ``__setattr__`` (no forward: the point is the registration)."""

    def __init__(self, n_in: int, nh: int, n_out: int) -> None:
        self._modules: dict[str, Any] = {}  # starts with "_": not recorded itself
        self.l1 = nn.Linear(n_in, nh)
        self.l2 = nn.Linear(nh, n_out)

    def __setattr__(self, k: str, v: Any) -> None:
        if not k.startswith("_"):
            self._modules[k] = v  # every public attribute is a layer
        super().__setattr__(k, v)

    def __repr__(self) -> str:
        return f"{self._modules}"

    def parameters(self) -> Iterator[Tensor]:
        """The parameters of every registered layer, in assignment order."""
        for layer in self._modules.values():
            yield from layer.parameters()
