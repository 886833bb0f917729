"""ConsoleReport: a table row per epoch (epoch, losses, metrics, time), and the shared formatting.

A table instead of the progress bar's one line per epoch, e.g. for a log file::

    learn = Learner(model, dls, plugins=[Accuracy(), ConsoleReport()])

         epoch  train_loss  valid_loss    accuracy        time
           1/3      0.8131      0.4207      0.8872        0.9s

The default ``ProgressBar`` yields to it: the bars still move on a terminal, but each epoch is
printed once, as a row of this table. Epochs read as people count them, from 1 (``1/3`` is the
first of three); the ``"epoch"`` field of the metrics (``learn.metrics``, CSV, JSON lines,
TensorBoard) is data and counts from 0.
"""

from __future__ import annotations

import sys
from typing import IO, TYPE_CHECKING, Any

from tqdm.std import tqdm  # tqdm.auto warns on import in a kernel without ipywidgets

from ..distributed.ranks import is_main_process
from ..hooks.markers import hookimpl

if TYPE_CHECKING:
    from ..learner import Learner


def format_value(key: str, value: Any) -> str:
    """How a metric reads in a report: 4 decimals, seconds for ``time``, ints as they are."""
    if key == "time" and isinstance(value, float):
        return f"{value:.1f}s"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def human_epoch(epoch: int, n_epochs: int | None = None) -> str:
    """The 0-based ``epoch`` of the data as people read it: ``"1/3"`` (or ``"1"``)."""
    return f"{epoch + 1}/{n_epochs}" if n_epochs else str(epoch + 1)


def format_line(metrics: dict[str, Any], n_epochs: int | None = None) -> str:
    """``epoch 1/3  train_loss 0.4120  valid_loss 0.3521  accuracy 0.9012  time 1.2s``."""
    parts = []
    for key, value in metrics.items():
        if key == "epoch" and isinstance(value, int):
            parts.append(f"epoch {human_epoch(value, n_epochs)}")
        else:
            parts.append(f"{key} {format_value(key, value)}")
    return "  ".join(parts)


class ConsoleReport:
    """Prints the header once, then one table row per epoch (on the main process).

    The ``epoch`` column counts from 1 (``2/3``); the metrics' ``"epoch"`` field stays 0-based.
    """

    def __init__(self, file: IO[str] | None = None) -> None:
        self.file = file
        self.columns: list[str] = []

    @hookimpl
    def before_fit(self) -> None:
        self.columns = []

    @hookimpl
    def report(self, learn: Learner, metrics: dict[str, Any]) -> None:
        if not is_main_process():
            return
        file = self.file or sys.stdout
        if not self.columns or set(metrics) - set(self.columns):
            self.columns = [*self.columns, *(k for k in metrics if k not in self.columns)]
            tqdm.write("  ".join(f"{c:>10}" for c in self.columns), file=file)
        cells = [
            human_epoch(metrics[c], learn.n_epochs)
            if c == "epoch" and isinstance(metrics.get(c), int)
            else format_value(c, metrics[c])
            if c in metrics
            else "-"
            for c in self.columns
        ]
        tqdm.write("  ".join(f"{c:>10}" for c in cells), file=file)
