"""ProgressBar: tqdm bars for epochs and batches with the loss, and one line per epoch.

On a terminal: an epoch bar, a batch bar per pass showing the current loss, and the epoch's metrics
written above the bars. In a Jupyter notebook (:func:`pluglearn.plugins.notebook.in_notebook`): the
same bars as live widgets (``tqdm.notebook``, with ``ipywidgets`` installed), each pass's bar hidden
when its pass ends and the epoch lines printed to the cell's output below the epoch bar; without
``ipywidgets``, one text bar per pass that redraws in place, and the epoch lines. When the output is
neither (a log file, CI), it writes one line per epoch and never one per batch (Lightning #8975 and
fastai #3959 fill logs with a line per update). Reporters print on the main process only.
``lr_find``'s sweep shows only its batch bar.

Epochs are numbered for people here, from 1: ``epoch 5/6`` is the last-but-one of six. The
metrics' ``"epoch"`` field (``learn.metrics``, CSV, JSON lines, TensorBoard steps) is data and
counts from 0, like ``learn.epoch``.

With a :class:`~pluglearn.plugins.console_report.ConsoleReport` registered, the bar yields: it still
draws its bars on a terminal but leaves the per-epoch line to the table, so no epoch is printed
twice.

Example::

    learn = Learner(model, dls)                     # a ProgressBar is a default plugin
    learn = Learner(model, dls, plugins=[ProgressBar(file=sys.stdout, mininterval=0.5)])

A ``learn.validate()`` from inside a training hook (validate every n batches) draws its own
bar below the training one, removes it when done, and the training bar goes on (as text in a
cell, where bars cannot stack, it draws none).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from tqdm.std import tqdm

from ..distributed.ranks import is_main_process
from ..hooks.markers import hookimpl
from .console_report import format_line
from .notebook import in_notebook, notebook_bar
from .validate_every import is_step_report

if TYPE_CHECKING:
    from ..learner import Learner


@dataclass
class _Open:
    """One open batch bar: its pass (``"train"``/``"valid"``), the tqdm bar (None when no bar is
    drawn) and when it next shows the loss."""

    kind: str
    depth: int  # how many entry points (fit, validate) were running when it opened
    bar: Any = None
    next_show: float = 0.0


class ProgressBar:
    """Epoch and batch bars on a terminal or in a notebook; one line per epoch elsewhere."""

    def __init__(self, file: IO[str] | None = None, mininterval: float = 0.1) -> None:
        self.file = file
        self.mininterval = mininterval
        self.epoch_bar: Any = None
        # the open batch bars, innermost last: a validate() called from a training hook opens
        # its own bar over the training one, closes it, and the training bar goes on
        self._bars: list[_Open] = []
        self._table_reports = False  # a ConsoleReport prints the epochs: the bar yields
        self._failed = False  # an error ends the run: a notebook bar closed early shows red
        self._text_bars = False  # tqdm's text bars: a line must clear and redraw them

    def _notebook(self) -> bool:
        """The output is a notebook cell's: no file given (or the cell's own stdout/stderr)."""
        return (self.file is None or self.file in (sys.stdout, sys.stderr)) and in_notebook()

    def _out(self) -> IO[str]:
        if self.file is not None:
            return self.file
        return sys.stdout if self._notebook() else sys.stderr  # a cell's stderr shows red

    def _bar_class(self) -> tuple[Any, bool]:
        """The tqdm class to draw with (None: one line per epoch only), and whether bars may
        stack (an epoch bar above a batch bar, a nested validation's bar below the training
        one). Text in a cell cannot stack: Jupyter ignores the cursor-up code that tqdm moves
        between lines with, so every refresh of a second bar would add a line."""
        if not is_main_process():
            return None, False
        if self._notebook():  # the widget bar, or text redrawn in place in the cell
            widgets = notebook_bar()
            return (widgets, True) if widgets is not None else (tqdm, False)
        isatty = getattr(self._out(), "isatty", None)
        return (tqdm, True) if isatty and isatty() else (None, False)

    @hookimpl
    def before_fit(self, learn: Learner) -> None:
        from .console_report import ConsoleReport

        self._table_reports = any(isinstance(p, ConsoleReport) for p in learn.plugins)
        self._failed = False
        bar_class, stacks = self._bar_class()
        self._text_bars = bar_class is tqdm
        if stacks and learn.run.running != "lr_find":  # a sweep has no epochs to count
            self.epoch_bar = bar_class(
                total=learn.n_epochs,
                initial=learn.epoch,
                desc="epoch",
                file=self._out(),
                dynamic_ncols=True,
            )

    @property
    def bar(self) -> Any:
        """The batch bar of the innermost running pass (None when no bar is drawn, or between
        passes)."""
        return self._bars[-1].bar if self._bars else None

    def _open(self, learn: Learner, kind: str) -> None:
        bar = None
        if not self._bars and self.epoch_bar is None:
            self._failed = False  # a validate() outside a fit
        bar_class, stacks = self._bar_class()
        if bar_class is not None and (stacks or all(o.bar is None for o in self._bars)):
            bar = bar_class(
                total=learn.n_iter,
                initial=learn.iter if learn.iter else 0,
                desc=kind,
                leave=False,
                file=self._out(),
                mininterval=self.mininterval,
                dynamic_ncols=True,
            )
        self._bars.append(_Open(kind, len(learn.run.entries), bar))

    @hookimpl
    def before_train(self, learn: Learner) -> None:
        self._open(learn, "train")

    @hookimpl
    def before_validate(self, learn: Learner) -> None:
        self._open(learn, "valid")

    @hookimpl
    def after_batch(self, learn: Learner) -> None:
        if not self._bars or self._bars[-1].bar is None:
            return
        top = self._bars[-1]
        top.bar.update(1)
        now = time.monotonic()
        if now >= top.next_show:  # read the loss (a sync on GPUs) only when it is shown
            top.next_show = now + self.mininterval
            loss = learn.loss
            assert loss is not None  # a batch that ran to after_batch has one
            top.bar.set_postfix_str(f"loss {loss.item():.4f}", refresh=False)

    def _close(self, learn: Learner | None = None, kind: str = "") -> None:
        """Close the bar this ``kind`` pass opened, if it opened one (a pass whose ``before_X``
        failed before this plugin's ran did not); without ``learn``: close every bar."""
        while self._bars:
            top = self._bars[-1]
            if learn is not None and (top.kind, top.depth) != (kind, len(learn.run.entries)):
                return
            self._bars.pop()
            if top.bar is not None:
                _close_bar(top.bar, self._failed)
            if learn is not None:
                return

    @hookimpl
    def cleanup_train(self, learn: Learner) -> None:
        self._close(learn, "train")

    @hookimpl
    def cleanup_validate(self, learn: Learner) -> None:
        self._close(learn, "valid")

    @hookimpl
    def on_error(self) -> None:
        self._failed = True

    @hookimpl
    def report(self, learn: Learner, metrics: dict[str, Any]) -> None:
        if not is_main_process():
            return
        line = format_line(metrics, learn.n_epochs)
        if self.epoch_bar is not None and not is_step_report(metrics):
            self.epoch_bar.update(1)  # a validation between epochs ends no epoch
        if self._table_reports:
            return
        if self._text_bars:  # clears any open text bar, writes, redraws it below the line
            tqdm.write(line, file=self._out())
        else:  # widgets (outputs of their own, above the lines) or no bar
            print(line, file=self._out(), flush=True)

    @hookimpl
    def cleanup_fit(self) -> None:
        self._close()
        if self.epoch_bar is not None:
            _close_bar(self.epoch_bar, self._failed)
            self.epoch_bar = None


def _close_bar(bar: Any, failed: bool) -> None:
    """Close a bar; a notebook bar closed short of its total turns red only when ``failed``."""
    if failed:
        bar.failed = True  # read by pluglearn.plugins.notebook's widget bar; text bars ignore it
    bar.close()
