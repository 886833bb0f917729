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

import pluggy

PROJECT_NAME = "pluglearn"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""Declares a hook (``pluglearn.plugins.specs`` is where every hook is declared)."""

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
