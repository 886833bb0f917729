"""Jupyter: is this code running in a notebook's kernel, the widget progress bar, inline figures.

A notebook is an IPython kernel whose shell is a ``ZMQInteractiveShell`` (Jupyter, JupyterLab,
VS Code, Colab): a terminal IPython is not one, and neither is a script. The check reads only
modules that are already imported, so outside a kernel it costs nothing and imports nothing.

Example::

    from pluglearn.plugins.notebook import in_notebook

    in_notebook()          # True in a Jupyter cell, False in a script or a terminal IPython
"""

from __future__ import annotations

import functools
import sys
from typing import Any

__all__ = ["in_notebook", "kernel_shell", "notebook_bar", "show_figures_inline"]


def kernel_shell() -> Any | None:
    """The running Jupyter kernel's shell (a ``ZMQInteractiveShell``), or None outside one.

    Example::

        shell = kernel_shell()       # None in a script or a terminal IPython
    """
    ipython, zmqshell = sys.modules.get("IPython"), sys.modules.get("ipykernel.zmqshell")
    if ipython is None or zmqshell is None:  # a kernel imports both before running any cell
        return None
    shell = ipython.get_ipython()
    return shell if isinstance(shell, zmqshell.ZMQInteractiveShell) else None


def in_notebook() -> bool:
    """True when this code runs in a Jupyter kernel (see the module doc).

    Example::

        if in_notebook():
            print("a cell's output: widgets and inline figures are shown")
    """
    return kernel_shell() is not None


def notebook_bar() -> type | None:
    """tqdm's widget bar (``tqdm.notebook``) when ``ipywidgets`` can be imported, else None.

    The class returned differs from tqdm's in one way: a bar closed short of its total is
    painted red ("danger") only when its ``failed`` attribute is set. tqdm paints every such
    bar red, but a pass that ends early on purpose (a cancel, ``max_steps``, ``lr_find``'s
    sweep) did not fail.

    Example::

        Bar = notebook_bar()
        if Bar is not None:
            bar = Bar(total=100, desc="train", leave=False)
    """
    try:
        import ipywidgets  # noqa: F401  (tqdm.notebook imports without it, then fails per bar)
        from tqdm.notebook import tqdm_notebook
    except ImportError:
        return None
    return _bar_class(tqdm_notebook)


@functools.cache
def _bar_class(base: type) -> type:
    from tqdm.std import tqdm as text_tqdm

    class NotebookBar(base):
        """tqdm's widget bar; red at an early close only when ``failed`` is set."""

        failed = False

        def close(self) -> None:
            if self.failed or self.disable or not (self.total and self.n < self.total):
                return super().close()
            text_tqdm.close(self)  # what tqdm.notebook's close does, less the red
            self.disp(close=not self.leave, check_delay=False)
            return None

    return NotebookBar


def show_figures_inline() -> None:
    """In a Jupyter kernel, make sure a matplotlib ``Figure`` that a cell returns shows as an
    image; elsewhere do nothing.

    pluglearn's plots build a bare ``Figure`` rather than one from pyplot, so the inline
    backend's end-of-cell flush does not show a second copy. IPython learns to draw a
    ``Figure`` only when pyplot's inline backend loads, though; in a notebook that never
    imported pyplot the figure would print as ``<Figure size 700x600 with 2 Axes>``. This
    registers the formats the inline backend would (``InlineBackend.figure_formats``, png by
    default) when no format is registered yet, and keeps any the user chose.

    Example::

        fig = Figure()
        show_figures_inline()
        fig                        # the last line of a cell: shown once, as an image
    """
    shell = kernel_shell()
    if shell is None:
        return
    from matplotlib.figure import Figure

    formatters = shell.display_formatter.formatters
    for mime in ("image/png", "image/svg+xml", "image/jpeg", "application/pdf"):
        try:
            formatters[mime].lookup_by_type(Figure)
            return  # the inline backend (or the user) registered one already
        except KeyError:
            continue
    from IPython.core.pylabtools import select_figure_formats

    try:
        from matplotlib_inline.config import InlineBackend

        config = InlineBackend.instance(parent=shell)
        formats, options = config.figure_formats, config.print_figure_kwargs
    except ImportError:  # ipykernel depends on matplotlib-inline; this is for the odd kernel
        formats, options = {"png"}, {"bbox_inches": "tight"}
    select_figure_formats(shell, formats, **options)
