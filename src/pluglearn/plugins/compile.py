"""Compile: ``torch.compile`` for the fit, with the plain model's weights, checkpoints and resume.

Example::

    learn = Learner(model, dls, plugins=[Compile()])               # inductor, the default
    learn.fit(3, plugins=[Compile(mode="max-autotune")])           # any torch.compile argument

``Compile(**torch_compile_kwargs)`` sets ``learn.wrapped_model`` to
``torch.compile(module, **torch_compile_kwargs)``, which the default ``predict`` calls;
``learn.model`` stays the user's module, so ``state_dict`` keys, ``learn.save``, checkpoints
and ``SaveBest`` carry no ``_orig_mod.`` prefix, and a checkpoint of a compiled fit resumes into
a plain one and the reverse (the compiled module shares the model's parameters: there is
nothing else to save).

What is compiled, and when:

* **Training**: at the end of ``before_fit`` (a ``tryfirst`` wrapper, so after every other
  ``before_fit``: ``Device`` has moved the model and ``DDP`` has wrapped it).
* **Under DDP the DDP-wrapped module is compiled**, as PyTorch recommends: dynamo's
  DDPOptimizer then splits the graph at DDP's gradient buckets, so each bucket's all-reduce
  overlaps the rest of the backward. Compiling the inner module instead would hand DDP one fused
  backward whose gradients all appear at its end, with no overlap.
* **Validation** (in a fit, ``learn.validate()``, ``get_preds``) runs the compiled user's
  module. Eval mode and ``no_grad`` are guarded by dynamo, so the first validation compiles a
  second graph; the compiled module is kept for the plugin's life, so later epochs and later
  fits reuse both graphs (no recompilation per epoch or per fit). Under DDP validation calls the
  user's module, as DDP's validation does (no collective per batch).
* **``learn.predict``** outside a fit runs the plain model: one-off calls of new shapes would
  each cost a compilation. Its results equal the compiled model's exactly with
  ``backend="eager"``, and to float rounding with inductor (fused kernels round differently).
"""

from __future__ import annotations

import inspect
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..hooks.markers import hookimpl

if TYPE_CHECKING:
    from ..learner import Learner


class Compile:
    """Trains (and validates) through ``torch.compile(model, **torch_compile_kwargs)``; see the
    module doc. The compiled modules are kept and reused across epochs and fits.

    Example::

        learn.fit(3, plugins=[Compile(backend="eager")])   # dynamo only: exact, for tests
    """

    def __init__(self, **torch_compile_kwargs: Any) -> None:
        accepted = [
            name
            for name, param in inspect.signature(torch.compile).parameters.items()
            if param.kind is inspect.Parameter.KEYWORD_ONLY
        ]
        unknown = sorted(set(torch_compile_kwargs) - set(accepted))
        if unknown:
            raise TypeError(
                f"Compile({', '.join(unknown)}=...): torch.compile takes no such argument; it "
                f"takes {', '.join(accepted)}."
            )
        self.kwargs = torch_compile_kwargs
        torch.compile(nn.Identity(), **torch_compile_kwargs)  # a bad mode or backend fails now
        self._compiled: list[tuple[nn.Module, nn.Module]] = []  # (module, its compiled form)
        self._base: nn.Module | None = None  # learn.wrapped_model before the fit's compile
        self._outer: list[tuple[int, nn.Module | None]] = []  # before each validation

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"Compile({args})"

    def compiled(self, module: nn.Module) -> nn.Module:
        """``module`` compiled with this plugin's arguments: made once, then reused."""
        for source, done in self._compiled:
            if source is module:
                return done
        made = torch.compile(module, **self.kwargs)
        assert isinstance(made, nn.Module)  # a compiled Module is a Module (an OptimizedModule)
        self._compiled.append((module, made))
        return made

    def _source(self, wrapped: Any) -> nn.Module | None:
        """What ``wrapped`` compiles when it is one of this plugin's compiled modules."""
        return next((source for source, done in self._compiled if done is wrapped), None)

    @hookimpl(wrapper=True, tryfirst=True)  # outermost: after DDP's wrapper has wrapped
    def before_fit(self, learn: Learner) -> Generator[None, Any, Any]:
        result = yield
        self._base = learn.wrapped_model
        learn.wrapped_model = self.compiled(learn.model if self._base is None else self._base)
        return result

    @hookimpl(wrapper=True, tryfirst=True)
    def before_validate(self, learn: Learner) -> Generator[None, Any, Any]:
        wrapped = learn.wrapped_model
        self._outer.append((len(learn.run.entries), wrapped))
        source = self._source(wrapped)
        if source is not None:  # the other plugins (DDP) see the module they know
            learn.wrapped_model = None if source is learn.model else source
        result = yield
        inner = learn.wrapped_model  # None, or DDP's module in a fit: validation calls the model
        learn.wrapped_model = self.compiled(learn.model if inner is None else inner)
        return result

    @hookimpl(trylast=True)  # after DDP put its own module back
    def cleanup_validate(self, learn: Learner) -> None:
        if self._outer and self._outer[-1][0] == len(learn.run.entries):
            learn.wrapped_model = self._outer.pop()[1]

    @hookimpl(tryfirst=True)  # before DDP's: it unwraps only its own module
    def cleanup_fit(self, learn: Learner) -> None:
        if self._source(learn.wrapped_model) is not None:
            learn.wrapped_model = self._base
        self._base = None
        # a DDP wrapper is made per fit: keep only the compiled forms of the user's model
        self._compiled = [(s, d) for s, d in self._compiled if s is learn.model]
