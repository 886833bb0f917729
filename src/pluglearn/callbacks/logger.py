"""MetricsLogger: every epoch's metrics appended to a CSV or JSON-lines file.

Example::

    learn.fit(5, plugins=[MetricsLogger("runs/metrics.csv")])     # or "metrics.jsonl"

The format follows the suffix (``.csv``, ``.jsonl``/``.json``). Each row is written and flushed
when the epoch is reported, so a run that dies keeps every finished epoch. A CSV whose columns
grow (a metric added later) is rewritten with the wider header; earlier rows get empty cells.

The ``epoch`` column is data and counts from 0, like ``learn.epoch`` (the progress bar and
``ConsoleReport`` show people ``epoch 1/3`` for the row whose ``epoch`` is 0).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..dist import is_main_process
from ..plugins.markers import hookimpl

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}


class MetricsLogger:
    """Appends the merged metrics of each epoch to ``path`` (on the main process)."""

    may_cancel = False  # never raises a cancel: DDP need not agree on one after its hooks

    def __init__(self, path: str | Path, append: bool = False) -> None:
        self.path = Path(path)
        if self.path.suffix not in FORMATS:
            raise ValueError(
                f"MetricsLogger({str(path)!r}): unknown format {self.path.suffix!r}; use a path "
                f"ending in {', '.join(FORMATS)}."
            )
        self.format = FORMATS[self.path.suffix]
        self.append = append
        self.rows: list[dict[str, Any]] = []

    @hookimpl
    def before_fit(self) -> None:
        if not is_main_process():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.append:
            self.path.write_text("")
            self.rows = []
        elif self.format == "csv" and self.path.exists() and self.path.stat().st_size:
            with self.path.open(newline="") as f:
                self.rows = list(csv.DictReader(f))
        self.append = True  # a later fit of the same Learner continues the file

    @hookimpl
    def report(self, metrics: dict[str, Any]) -> None:
        if not is_main_process():
            return
        # tolist(): a number for a 0-d tensor or numpy scalar, a list for a per-class metric
        row = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in metrics.items()}
        if self.format == "jsonl":
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            return
        columns = list(dict.fromkeys(k for r in [*self.rows, row] for k in r))
        rewrite = not self.rows or columns != list(dict.fromkeys(k for r in self.rows for k in r))
        self.rows.append(row)
        with self.path.open("w" if rewrite else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            if rewrite:
                writer.writeheader()
                writer.writerows(self.rows)
            else:
                writer.writerow(row)
