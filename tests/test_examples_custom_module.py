"""examples/custom_module.py runs, trains on its own Tanh and catches the slipped one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests import processes

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_custom_module_example_passes_its_own_checks():
    result = processes.run(
        [sys.executable, str(ROOT / "examples" / "custom_module.py")],
        warm=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "GradCheck passed on 7 batches" in out  # batch 0, 20, 40, ... of 3 x 45 batches
    table = out.split("GradCheck (manual backward vs autograd), epoch 2, batch 30\n")[1]
    assert [line.split()[0] for line in table.splitlines()[1:6]] == [
        "0.w",
        "0.b",
        "2.w",
        "2.b",
        "input",
    ]
    caught = out.split("caught: ")[1].splitlines()[0]
    assert caught.startswith("0.b of Linear(n_in=64, n_out=64, bias=True): max rel error")
    assert "check SlippedTanh.bwd (module '1')" in caught
    accuracy = float(out.split("validation accuracy ")[1].split()[0])
    assert accuracy >= 0.90
    assert out.rstrip().endswith("OK")
    assert "epoch 3/3" in result.stderr  # the progress report, one line per epoch off a terminal
