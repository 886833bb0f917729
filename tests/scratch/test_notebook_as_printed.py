"""The course notebooks 03_backprop and 04_minibatch_training run as printed on pluglearn.scratch.

``notebook_cells.txt`` holds every code cell of both, with only their imports changed (its
header says how). Each notebook runs in order in a namespace of its own, as in its kernel; the
checks are what the notebook shows: shapes, values against torch (the oracle), the notebook's own
gradient checks (cells that raise if they fail), and that every training cell trains.

The data is ../shared/data/mnist's 10,000-image split in the notebook's pickle layout when it is
there, else the cells' stand-in of MNIST's shapes; the checks hold for both.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import io
import multiprocessing
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

CELLS_FILE = Path(__file__).with_name("notebook_cells.txt")
MNIST_PICKLE = Path(__file__).parents[2].parent / "shared/data/mnist/mnist-t10k-split.pkl.gz"
_CELL_HEADER = re.compile(r"^# %% \[(\S+) (\d+)\] .*$", re.MULTILINE)
_REPORT = re.compile(r"^(\d+\.\d\d), (\d+\.\d\d)$", re.MULTILINE)  # the notebook's report()


def read_cells(notebook: str) -> list[tuple[int, str]]:
    """``(index in the notebook, code)`` of each of the notebook's cells in the file, in order."""
    parts = _CELL_HEADER.split(CELLS_FILE.read_text())
    cells = [(parts[i], int(parts[i + 1]), parts[i + 2]) for i in range(1, len(parts), 3)]
    return [(index, code) for name, index, code in cells if name == notebook]


@dataclass
class CellRun:
    """What a cell showed: its last expression's value (Jupyter's ``Out``) and what it printed."""

    out: Any
    printed: str


class Notebook:
    """Runs one notebook's cells, in order, in one namespace: ``run_through(n)`` runs every cell
    up to cell ``n`` (included) and returns all that ran so far, by index. Leaving its ``with``
    block empties the namespace, as a kernel's shutdown would (ending any worker pool a live
    iterator holds)."""

    def __init__(self, name: str):
        self.ns: dict[str, Any] = {"__name__": "__main__", "MNIST_PICKLE": str(MNIST_PICKLE)}
        self.pending = read_cells(name)
        assert self.pending, f"no cells of {name} in {CELLS_FILE}"
        self.name, self.runs = name, {}

    def __enter__(self) -> Notebook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.ns.clear()
        self.runs.clear()
        gc.collect()

    def run_through(self, last: int) -> dict[int, CellRun]:
        while self.pending and self.pending[0][0] <= last:
            index, code = self.pending.pop(0)
            self.runs[index] = self._run(index, code)
        return self.runs

    def _run(self, index: int, code: str) -> CellRun:
        code = re.sub(r"^%time ", "", code, flags=re.MULTILINE)  # IPython's %time: just run it
        tree = ast.parse(code)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        where, printed = f"<{self.name} cell {index}>", io.StringIO()
        out = None
        with contextlib.redirect_stdout(printed):
            exec(compile(tree, where, "exec"), self.ns)
            if last is not None:
                out = eval(compile(ast.Expression(last.value), where, "eval"), self.ns)
        return CellRun(out, printed.getvalue())


@pytest.fixture
def kernel_state():
    """Puts back what the cells change for the whole process: torch's print options (to its
    defaults), numpy's, the random states and torch's thread count. The cells run on one thread:
    on two shared cores a second one only makes their small matrix products wait."""
    threads, np_print, py_random = torch.get_num_threads(), np.get_printoptions(), random.getstate()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(threads)
        torch.set_printoptions(profile="default")
        np.set_printoptions(**np_print)
        random.setstate(py_random)


def _scaled_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    # float32 sums over many rows: errors are relative to the gradient's scale, not each entry's
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * expected.abs().max().item())


def _trained(printed: str, epochs: int = 3) -> None:
    """A training cell printed report()'s `loss, accuracy` of its last batch once per epoch, and
    they are a trained model's (untrained: about log(10) = 2.30 and 0.10)."""
    reports = [(float(loss), float(acc)) for loss, acc in _REPORT.findall(printed)]
    assert len(reports) == epochs, printed
    assert all(loss < 1.0 and acc >= 0.7 for loss, acc in reports), printed


# --- 03_backprop -------------------------------------------------------------------------------


@pytest.mark.slow
def test_backprop_notebook_runs_as_printed_and_its_gradients_equal_autograd(kernel_state):
    with Notebook("03_backprop") as notebook:
        _check_backprop(notebook)


def _check_backprop(notebook: Notebook) -> None:
    cells = notebook.run_through(30)  # the forward pass, the MSE, the manual backward
    ns = notebook.ns
    x_train, y_train, x_valid = (ns[k] for k in ("x_train", "y_train", "x_valid"))
    n, n_valid = len(x_train), len(x_valid)
    w1, b1, w2, b2 = (ns[k] for k in ("w1", "b1", "w2", "b2"))
    assert cells[4].out[:2] == (n, 784) and int(cells[4].out[2]) == 10
    assert cells[8].out == (n_valid, 50)
    torch.testing.assert_close(cells[10].out, (x_valid @ w1 + b1).clamp_min(0.0))
    assert cells[12].out == (n_valid, 1) and cells[16].out == (n_valid, n_valid)
    assert cells[18].out == cells[19].out == cells[20].out == (n_valid,)
    assert cells[21].out == (n, 1)
    torch.testing.assert_close(cells[23].out, F.mse_loss(ns["preds"][:, 0], y_train))
    assert (str(cells[25].out), str(cells[26].out)) == ("2*x", "6*x")

    # the manual gradients (cell 29, saved by cell 30) against autograd through torch's own ops
    refs = [t.detach().clone().requires_grad_() for t in (w1, w2, b1, b2, x_train)]
    rw1, rw2, rb1, rb2, rx = refs
    loss = F.mse_loss(F.linear(F.relu(F.linear(rx, rw1.T, rb1)), rw2.T, rb2)[:, 0], y_train)
    for saved, ref in zip(ns["grads"], torch.autograd.grad(loss, refs), strict=True):
        _scaled_close(saved, ref)

    cells = notebook.run_through(45)  # cells 35 and 45 are the notebook's test_close checks
    assert ns["model"].__class__.__module__.startswith("pluglearn.scratch")
    torch.testing.assert_close(ns["loss"], loss.detach())
    for t, saved in zip((w1, w2, b1, b2, x_train), ns["grads"], strict=True):
        _scaled_close(t.g, saved)

    cells = notebook.run_through(61)  # Module, Linear and Model(n_in, nh, n_out) with autograd
    model = ns["model"]
    layers = [model.layers[0], model.layers[2]]
    refs = [t.detach().clone().requires_grad_() for layer in layers for t in (layer.w, layer.b)]
    pred = F.relu(x_train @ refs[0] + refs[1]) @ refs[2] + refs[3]
    loss = F.mse_loss(pred, y_train[:, None])
    torch.testing.assert_close(ns["loss"], loss)
    expected = torch.autograd.grad(loss, refs)
    assert cells[60].out.shape == (50,)
    _scaled_close(cells[60].out, expected[1])  # l0.b.grad, the value the notebook prints
    got = [t.grad for layer in layers for t in (layer.w, layer.b)]
    for g, ref in zip(got, expected, strict=True):
        _scaled_close(g, ref)


# --- 04_minibatch_training -----------------------------------------------------------------------


@pytest.mark.slow
def test_minibatch_training_notebook_runs_as_printed_and_trains(kernel_state):
    with Notebook("04_minibatch_training") as notebook:
        _check_minibatch_training(notebook)
    # cell 130's iterator held a worker pool until the namespace went: it ended with it
    assert multiprocessing.active_children() == []


def _check_minibatch_training(notebook: Notebook) -> None:
    cells, ns = notebook.run_through(40), notebook.ns
    x_train, y_train, x_valid, y_valid = (
        ns[k] for k in ("x_train", "y_train", "x_valid", "y_valid")
    )
    n = len(x_train)
    pred = ns["pred"]
    assert cells[7].out == (n, 10)
    torch.testing.assert_close(cells[11].out, F.log_softmax(pred, -1))  # the naive one
    torch.testing.assert_close(cells[18].out, F.log_softmax(pred, -1))  # the stable one
    assert torch.equal(cells[20].out, y_train[:3])
    sm_pred = ns["sm_pred"]  # cell 21 picks the notebook's labels 5, 0, 4 by hand; 22 indexes
    assert torch.equal(torch.stack(cells[21].out), sm_pred[[0, 1, 2], [5, 0, 4]])
    assert torch.equal(cells[22].out, torch.stack([sm_pred[i, y_train[i]] for i in range(3)]))
    torch.testing.assert_close(cells[24].out, F.cross_entropy(pred, y_train))
    preds0, shape = cells[32].out
    assert preds0.shape == (10,) and shape == (50, 10)
    assert torch.equal(cells[33].out, y_train[:50])
    preds, yb = ns["preds"], ns["yb"]
    assert torch.equal(cells[35].out, preds.argmax(1))
    assert cells[37].out.item() == pytest.approx((preds.argmax(1) == yb).sum().item() / 50)
    untrained = [(float(a), float(b)) for a, b in _REPORT.findall(cells[40].printed)]
    assert len(untrained) == 1 and abs(untrained[0][0] - 2.30) < 0.2, cells[40].printed

    cells = notebook.run_through(58)  # nn.Linear layers by hand, then the scratch MLP, MyModule
    _trained(cells[41].printed)
    assert (cells[49].out.n_in, cells[49].out.n_out) == (784, 50)
    assert [line.split(":")[0] for line in cells[51].printed.splitlines()] == ["l1", "l2", "relu"]
    # scratch weights are (in, out), the notebook's lin layout; nn.Linear prints (out, in)
    assert cells[52].printed.splitlines() == [
        "torch.Size([784, 50])",
        "torch.Size([50])",
        "torch.Size([50, 10])",
        "torch.Size([10])",
    ]
    _trained(cells[54].printed)  # loss.backward(), p -= p.grad * lr, model.zero_grad()
    assert all(p.grad is None for p in ns["model"].parameters())  # zero_grad's set_to_none
    assert repr(cells[57].out) == (
        "{'l1': Linear(in_features=784, out_features=50, bias=True), "
        "'l2': Linear(in_features=50, out_features=10, bias=True)}"
    )
    assert cells[58].printed.splitlines() == [
        "torch.Size([50, 784])",
        "torch.Size([50])",
        "torch.Size([10, 50])",
        "torch.Size([10])",
    ]

    cells = notebook.run_through(131)  # torch's containers, Optimizer, Dataset, the DataLoaders
    assert cells[65].out == (50, 10)
    for index in (70, 74, 80, 85, 93, 103, 123):
        _trained(cells[index].printed)
    for index in (74, 103):  # loss and accuracy on the last batch
        assert cells[index].out[0] < 1.0 and cells[index].out[1] >= 0.7, cells[index].out
    assert abs(cells[84].out.item() - 2.30) < 0.2  # a fresh model
    assert torch.equal(cells[91].out[0], x_train[:5]) and torch.equal(cells[91].out[1], y_train[:5])
    assert cells[98].out == (50, 784) and torch.equal(cells[99].out, y_valid[:50])
    assert cells[100].out == y_valid[0] and cells[120].out == y_valid[0]
    assert cells[110].printed == "0\n1\n2\n3\n4\n" and cells[111].out == [0, 1, 2, 3, 4]
    assert len(set(cells[112].out)) == 5 and all(0 <= i < n for i in cells[112].out)
    drawn = [i for batch in cells[115].out for i in batch]
    assert [len(b) for b in cells[115].out] == [4] * 5 and len(set(drawn)) == 20
    assert cells[121].out == ((50, 784), (50,))
    picked = [3, 6, 8, 1]
    for index in (126, 127):
        assert torch.equal(cells[index].out[0], x_train[picked])
        assert torch.equal(cells[index].out[1], y_train[picked])
    # cell 131: the first batch from the worker pool pairs each image with its own label
    xb, yb = ns["xb"], ns["yb"]
    assert cells[131].out == ((50, 784), (50,))
    key = torch.randn(784, dtype=torch.float64)
    rows = ((x_train.double() @ key)[None] - (xb.double() @ key)[:, None]).abs().argmin(1)
    assert torch.equal(x_train[rows], xb) and torch.equal(y_train[rows], yb)

    cells = notebook.run_through(156)  # torch's DataLoader, then fit and get_dls
    for index in (136, 141):
        _trained(cells[index].printed)
        assert cells[index].out[0] < 1.0 and cells[index].out[1] >= 0.7, cells[index].out
    assert torch.equal(cells[143].out[1], y_train[[4, 6, 7]])
    assert cells[146].out == ((1, 50, 784), (1, 50))
    epochs = [line.split() for line in cells[153].printed.splitlines()]
    assert [int(e[0]) for e in epochs] == [0, 1, 2, 3, 4], cells[153].printed
    assert all(float(e[2]) >= 0.9 for e in epochs) and float(epochs[-1][2]) >= 0.93, epochs
    with torch.no_grad():  # fit's numbers are the whole validation set's: one big batch agrees
        logits = ns["model"](x_valid)
    assert ns["loss"] == pytest.approx(F.cross_entropy(logits, y_valid).item(), rel=1e-4)
    assert ns["acc"] == pytest.approx((logits.argmax(1) == y_valid).float().mean().item())
    assert (ns["loss"], ns["acc"]) == (float(epochs[-1][1]), float(epochs[-1][2]))
