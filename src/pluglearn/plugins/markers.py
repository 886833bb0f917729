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
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
