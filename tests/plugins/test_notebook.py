"""pluglearn.plugins.notebook: a Jupyter kernel is told from a terminal IPython and a script, and in
a kernel the plots show inline exactly once and ``show_hooks`` prints its table."""

from __future__ import annotations

import sys

import pytest

from pluglearn.plugins.notebook import in_notebook, kernel_shell
from tests import processes
from tests.support.notebook_kernel import KernelRun, run_cells

SETUP = """
import sys
import torch
from torch import nn
from pluglearn import DataLoaders, Learner, Recorder
from pluglearn.plugins.notebook import in_notebook

g = torch.Generator().manual_seed(0)
x, y = torch.randn(64, 3, generator=g), torch.randint(0, 2, (64,), generator=g)
train = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 64, 4)]
recorder = Recorder()
learn = Learner(nn.Linear(3, 2), DataLoaders(train, train[:2]), plugins=[recorder], defaults=False)
learn.fit(2)
"""
CELLS = [
    SETUP,
    'print(in_notebook(), "matplotlib.pyplot" in sys.modules)',  # 1
    "recorder.plot()",  # 2: no pyplot imported yet
    "learn.lr_find(num_it=10).plot()",  # 3
    "figure = recorder.plot()",  # 4: not the cell's value: nothing to show
    "import matplotlib.pyplot as plt\nrecorder.plot()",  # 5: pyplot's inline backend active
    "learn.show_hooks()",  # 6
    "print(learn.hooks_table())",  # 7
]

# the tests share the module's kernel, started once per xdist worker: they all run on one
pytestmark = pytest.mark.xdist_group("notebook_kernel")


@pytest.fixture(scope="module")
def kernel(tmp_path_factory) -> KernelRun:
    return run_cells(CELLS, tmp_path_factory.mktemp("kernel"))


def test_a_script_is_not_a_notebook():
    assert not in_notebook() and kernel_shell() is None


@pytest.mark.slow  # IPython starts and imports torch
def test_a_terminal_ipython_is_not_a_notebook_even_with_ipykernel_imported():
    code = (
        "import ipykernel.zmqshell\n"
        "from pluglearn.plugins.notebook import in_notebook\n"
        "print(type(get_ipython()).__name__, in_notebook())"
    )
    result = processes.run(
        [sys.executable, "-m", "IPython", "--quick", "--no-banner", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["TerminalInteractiveShell", "False"]


@pytest.mark.slow
def test_a_jupyter_kernel_is_a_notebook(kernel):
    assert kernel.stream_text(1) == "True False\n"


def image_outputs(kernel: KernelRun, index: int) -> list[str]:
    """The output types of a cell that carry an image."""
    return [o.output_type for o in kernel.outputs(index) if "image/png" in o.get("data", {})]


@pytest.mark.slow
@pytest.mark.parametrize("index", [2, 3, 5], ids=["recorder", "lr_find", "after-pyplot"])
def test_a_plot_as_a_cells_value_shows_once_as_an_image(kernel, index):
    outputs = kernel.outputs(index)
    assert image_outputs(kernel, index) == ["execute_result"]  # no copy displayed by pyplot
    assert len(outputs) == 1


@pytest.mark.slow
def test_a_plot_kept_in_a_variable_shows_nothing(kernel):
    assert kernel.outputs(4) == []


@pytest.mark.slow
def test_show_hooks_prints_the_resolved_order_in_a_notebook(kernel):
    (output,) = kernel.outputs(6)
    assert (output.output_type, output.name) == ("stream", "stdout")  # no value shown after it
    assert output.text == kernel.stream_text(7)
    assert "Recorder" in output.text and "before_batch" in output.text
