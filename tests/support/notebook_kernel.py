"""Run notebook cells in a real Jupyter kernel (nbclient + ipykernel) and keep what came back.

The kernel is this interpreter's own (ipykernel's native spec for ``sys.executable``), never a
``python3`` kernel spec installed elsewhere on the machine, so it imports the pluglearn under
test. Besides the outputs nbclient writes into the cells, every iopub message is counted per
cell and type, and the widgets' last states are kept (``widget_state``, by model id).

Example::

    run = run_cells(["print(1 + 1)"], cwd=tmp_path)
    run.outputs(0)      # [{'output_type': 'stream', 'name': 'stdout', 'text': '2\\n'}]
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


class _CountingClient(NotebookClient):
    """nbclient's executor that also counts each cell's iopub messages by type."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counts: dict[int, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )

    def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        self.counts[cell_index][msg["msg_type"]] += 1
        return super().process_message(msg, cell, cell_index)


@dataclass
class KernelRun:
    """An executed notebook, its message counts per cell and its widgets' states."""

    nb: Any
    counts: dict[int, collections.Counter[str]]
    widget_state: dict[str, dict[str, Any]] = field(default_factory=dict)

    def outputs(self, index: int) -> list[Any]:
        """The outputs of code cell ``index``."""
        return self.nb.cells[index].outputs

    def stream_text(self, index: int, name: str = "stdout") -> str:
        """Everything cell ``index`` wrote to one stream, as the kernel sent it."""
        return "".join(
            o.text for o in self.outputs(index) if o.output_type == "stream" and o.name == name
        )

    def widget_bars(self, index: int) -> list[dict[str, Any]]:
        """The tqdm widget bars cell ``index`` displayed, in order: for each, its progress
        widget's state (``value``, ``max``, ``bar_style``) and whether it was hidden."""
        bars = []
        for output in self.outputs(index):
            if output.output_type != "display_data" or WIDGET_VIEW not in output.data:
                continue
            box = self.widget_state[output.data[WIDGET_VIEW]["model_id"]]
            progress = self._child(box["children"][1])
            layout = self._child(box["layout"])
            bars.append({**progress, "hidden": layout.get("visibility") == "hidden"})
        return bars

    def _child(self, reference: str) -> dict[str, Any]:
        return self.widget_state[reference.removeprefix("IPY_MODEL_")]


def run_cells(cells: list[str], cwd: Path, timeout: int = 120) -> KernelRun:
    """Execute ``cells`` (code) one by one in a fresh kernel started in ``cwd``; a cell that
    raises stops the run with nbclient's ``CellExecutionError``."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    return run_notebook(nb, cwd, timeout)


def run_notebook(nb: Any, cwd: Path, timeout: int = 120) -> KernelRun:
    """Execute the notebook ``nb`` in place in a fresh kernel started in ``cwd``."""
    specs = KernelSpecManager(kernel_dirs=[])  # only the native kernel: this interpreter
    manager = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=specs)
    client = _CountingClient(
        nb, km=manager, timeout=timeout, resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    return KernelRun(nb, dict(client.counts), dict(client.widget_state))
