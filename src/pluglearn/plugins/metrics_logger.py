"""MetricsLogger: every epoch's metrics appended to a CSV or JSON-lines file.

Example::

    learn.fit(5, plugins=[MetricsLogger("runs/metrics.csv")])     # or "metrics.jsonl"

The format follows the suffix (``.csv``, ``.jsonl``/``.json``). Each row is written and flushed
when the epoch is reported, so a run that dies keeps every finished epoch. A CSV whose columns
grow (a metric added later) is rewritten with the wider header; earlier rows get empty cells.

A fit resumed from a checkpoint (``fit(..., resume_from=...)``) rewrites the file with the rows
of the saved run (the plugin's state), dropping any written after that checkpoint, so the file
reads as the uninterrupted run's.

The ``epoch`` column is data and counts from 0, like ``learn.epoch`` (the progress bar and
``ConsoleReport`` show people ``epoch 1/3`` for the row whose ``epoch`` is 0).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..distributed.ranks import is_main_process
from ..hooks.markers import hookimpl

if TYPE_CHECKING:
    from ..learner import Learner

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}


class MetricsLogger:
    """Appends the merged metrics of each epoch to ``path`` (on the main process)."""

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
    def before_fit(self, learn: Learner) -> None:
        if not is_main_process() or learn.run.running != "fit":  # not lr_find's throwaway run
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if learn.run.resumed:  # the rows of the saved run, without any written after it
            self._rewrite()
        elif not self.append:
            self.path.write_text("")
            self.rows = []
        elif self.path.exists() and self.path.stat().st_size:
            with self.path.open(newline="") as f:
                if self.format == "csv":
                    self.rows = list(csv.DictReader(f))
                else:
                    self.rows = [json.loads(line) for line in f if line.strip()]
        self.append = True  # a later fit of the same Learner continues the file

    @hookimpl
    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(row) for row in self.rows]}

    @hookimpl
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = [dict(row) for row in state["rows"]]

    def _rewrite(self) -> None:
        with self.path.open("w", newline="") as f:
            if self.format == "jsonl":
                f.writelines(json.dumps(row) + "\n" for row in self.rows)
            elif self.rows:
                columns = list(dict.fromkeys(k for r in self.rows for k in r))
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self.rows)
        self.append = True

    @hookimpl
    def report(self, learn: Learner, metrics: dict[str, Any]) -> None:
        if not is_main_process() or learn.run.running != "fit":
            return
        # tolist(): a number for a 0-d tensor or numpy scalar, a list for a per-class metric
        row = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in metrics.items()}
        if self.format == "jsonl":
            self.rows.append(row)
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
