"""The two pluggy markers of pluglearn: ``hookspec`` declares a hook, ``hookimpl`` implements one.

Plugin authors need only ``from pluglearn import hookimpl``::

    class PrintLoss:
        @hookimpl
        def after_batch(self, learn):
            print(learn.loss.item())

``@hookimpl(tryfirst=True)`` / ``@hookimpl(trylast=True)`` move one implementation to the front or
the back of a hook's call order; everything else runs in the order the plugins were given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pluggy

F = TypeVar("F", bound=Callable[..., Any])

PROJECT_NAME = "pluglearn"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""pluggy's marker of a hook declaration; pluglearn's specs use :func:`declare`, which adds the
hook's kind."""

#: the kinds of hook, as the dispatcher calls them (``pluglearn.hooks.specs.KIND_DOCS``)
KINDS = ("event", "run_all", "first", "collect", "addressed", "context")


def declare(kind: str = "event") -> Callable[[F], F]:
    """Declares a hook and its kind, in one place (``pluglearn.hooks.specs``): how the
    dispatcher calls it. A ``"first"`` hook (a step: first result wins) is pluggy's
    ``firstresult``. Example::

        @declare("run_all")
        def cleanup_fit(learn): ...
    """
    if kind not in KINDS:
        raise ValueError(f"declare({kind!r}): a hook's kind is one of {', '.join(KINDS)}.")

    def mark(fn: F) -> F:
        marked = hookspec(firstresult=kind == "first")(fn)
        setattr(marked, f"{PROJECT_NAME}_kind", kind)
        return marked

    return mark


hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marks a plugin's method as its implementation of the hook of the same name.

The method takes any subset of the hook's arguments. ``@hookimpl(tryfirst=True)`` /
``@hookimpl(trylast=True)`` move it to the front or the back of the hook's call order;
``@hookimpl(wrapper=True)`` (a generator that yields once) wraps the whole call. Example::

    class PrintLoss:
        @hookimpl
        def after_batch(self, learn):
            print(learn.loss.item())

    learn.fit(1, plugins=[PrintLoss()])
"""
