"""ProgressBar: tqdm bars for epochs and batches with the loss, and one line per epoch.

On a terminal: an epoch bar, a batch bar per pass showing the current loss, and the epoch's
metrics written above the bars. When the output is not a terminal (a log file, CI), it writes
one line per epoch and never one per batch (Lightning #8975 and fastai #3959 fill logs with a
line per update). Reporters print on the main process only.

Epochs are numbered for people here, from 1: ``epoch 5/6`` is the last-but-one of six. The
metrics' ``"epoch"`` field (``learn.metrics``, CSV, JSON lines, TensorBoard steps) is data and
counts from 0, like ``learn.epoch``.

With a :class:`~pluglearn.callbacks.report.ConsoleReport` registered, the bar yields: it still
draws its bars on a terminal but leaves the per-epoch line to the table, so no epoch is printed
twice.

Example::

    learn = Learner(model, dls)                     # a ProgressBar is a default plugin
    learn = Learner(model, dls, plugins=[ProgressBar(file=sys.stdout, mininterval=0.5)])

A ``learn.validate()`` from inside a training hook (validate every n batches) draws its own
bar below the training one, removes it when done, and the training bar goes on.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ..dist import is_main_process
from ..plugins.markers import hookimpl
from .report import format_line

if TYPE_CHECKING:
    from ..learner import Learner


@dataclass
class _Open:
    """One open batch bar: its pass (``"train"``/``"valid"``), the tqdm bar (None off a terminal)
    and when it next shows the loss."""

    kind: str
    depth: int  # how many entry points (fit, validate) were running when it opened
    bar: Any = None
    next_show: float = 0.0


class ProgressBar:
    """Epoch and batch bars on a terminal; one line per epoch elsewhere."""

    def __init__(self, file: IO[str] | None = None, mininterval: float = 0.1) -> None:
        self.file = file
        self.mininterval = mininterval
        self.epoch_bar: Any = None
        # the open batch bars, innermost last: a validate() called from a training hook opens
        # its own bar over the training one, closes it, and the training bar goes on
        self._bars: list[_Open] = []
        self._table_reports = False  # a ConsoleReport prints the epochs: the bar yields

    def _out(self) -> IO[str]:
        return self.file or sys.stderr

    def _interactive(self) -> bool:
        isatty = getattr(self._out(), "isatty", None)
        return bool(isatty and isatty()) and is_main_process()

    @hookimpl
    def before_fit(self, learn: Learner) -> None:
        from .report import ConsoleReport

        self._table_reports = any(isinstance(p, ConsoleReport) for p in learn.plugins)
        if self._interactive():
            self.epoch_bar = tqdm(
                total=learn.n_epochs,
                initial=learn.epoch,
                desc="epoch",
                file=self._out(),
                dynamic_ncols=True,
            )

    @property
    def bar(self) -> Any:
        """The batch bar of the innermost running pass (None off a terminal, or between passes)."""
        return self._bars[-1].bar if self._bars else None

    def _open(self, learn: Learner, kind: str) -> None:
        bar = None
        if self._interactive():
            bar = tqdm(
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
            top.bar.set_postfix_str(f"loss {learn.loss.item():.4f}", refresh=False)

    def _close(self, learn: Learner | None = None, kind: str = "") -> None:
        """Close the bar this ``kind`` pass opened, if it opened one (a pass whose ``before_X``
        failed before this plugin's ran did not); without ``learn``: close every bar."""
        while self._bars:
            top = self._bars[-1]
            if learn is not None and (top.kind, top.depth) != (kind, len(learn.run.entries)):
                return
            self._bars.pop()
            if top.bar is not None:
                top.bar.close()
            if learn is not None:
                return

    @hookimpl
    def cleanup_train(self, learn: Learner) -> None:
        self._close(learn, "train")

    @hookimpl
    def cleanup_validate(self, learn: Learner) -> None:
        self._close(learn, "valid")

    @hookimpl
    def report(self, learn: Learner, metrics: dict[str, Any]) -> None:
        if not is_main_process():
            return
        line = format_line(metrics, learn.n_epochs)
        if self.epoch_bar is not None:
            self.epoch_bar.update(1)
            if not self._table_reports:
                tqdm.write(line, file=self._out())
        elif not self._table_reports:
            print(line, file=self._out(), flush=True)

    @hookimpl
    def cleanup_fit(self) -> None:
        self._close()
        if self.epoch_bar is not None:
            self.epoch_bar.close()
            self.epoch_bar = None
