"""examples/quickstart.ipynb: committed without outputs, and run in a real Jupyter kernel it
trains to its target, shows its figures, live bars and one line per epoch, and no traceback."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import nbformat
import pytest

from tests.support.notebook_kernel import WIDGET_VIEW, KernelRun, run_notebook

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
EPOCHS = 5  # learn.fit_one_cycle(5, ...)

# the tests share the module's kernel, started once per xdist worker: they all run on one
pytestmark = pytest.mark.xdist_group("quickstart_kernel")


def test_the_quickstart_notebook_is_committed_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code
    for cell in code:
        assert cell["outputs"] == [] and cell["execution_count"] is None, "".join(cell["source"])
    assert "widgets" not in nb["metadata"]  # no saved widget state either
    nbformat.validate(nbformat.reads(NOTEBOOK.read_text(), as_version=4))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[KernelRun, Path]:
    cwd = tmp_path_factory.mktemp("quickstart")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    return run_notebook(nb, cwd, timeout=240), cwd


def cell(run: KernelRun, tag: str) -> int:
    """The index of the one cell tagged ``tag``."""
    (index,) = [i for i, c in enumerate(run.nb.cells) if tag in c.metadata.get("tags", [])]
    return index


@pytest.mark.slow
def test_the_quickstart_trains_to_its_target(run):
    kernel, _ = run
    outputs = kernel.outputs(cell(kernel, "metrics"))
    (result,) = [o for o in outputs if o.output_type == "execute_result"]  # and validate's bar
    metrics = ast.literal_eval(result.data["text/plain"])
    assert metrics["accuracy"] >= 0.93 and metrics["valid_loss"] < 0.5


@pytest.mark.slow
def test_the_quickstart_runs_without_a_traceback_or_a_warning(run):
    kernel, _ = run
    for index, nb_cell in enumerate(kernel.nb.cells):
        if nb_cell.cell_type == "code":
            assert all(o.output_type != "error" for o in nb_cell.outputs)
            assert kernel.stream_text(index, "stderr") == "", nb_cell.source


@pytest.mark.slow
@pytest.mark.parametrize("tag", ["lr_find", "plot"])
def test_the_quickstart_shows_its_figures_once(run, tag):
    kernel, _ = run
    images = [o for o in kernel.outputs(cell(kernel, tag)) if "image/png" in o.get("data", {})]
    assert len(images) == 1 and images[0].output_type == "execute_result"


@pytest.mark.slow
def test_the_quickstart_fit_shows_live_bars_and_one_line_per_epoch(run):
    kernel, _ = run
    index = cell(kernel, "fit")
    bars = [o for o in kernel.outputs(index) if WIDGET_VIEW in o.get("data", {})]
    assert len(bars) == 1 + 2 * EPOCHS  # the epoch bar, then one bar per pass
    lines = kernel.stream_text(index).splitlines()
    assert [line.split("  ")[0] for line in lines] == [f"epoch {i}/5" for i in range(1, 6)]
    assert "\r" not in kernel.stream_text(index)


@pytest.mark.slow
def test_the_quickstart_predicts_and_its_export_loads(run):
    kernel, cwd = run
    predicted = kernel.stream_text(cell(kernel, "predict"))
    assert re.match(r"predicted \d, label \d\nvalidation accuracy: 0\.9\d{3}\n$", predicted)
    assert "the loaded Learner predicts as the trained one" in kernel.stream_text(
        cell(kernel, "export")
    )
    assert (cwd / "digits_mlp.pluglearn").is_file()
