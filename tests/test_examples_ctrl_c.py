"""Ctrl-C during an example's fit: one line saying what was saved and how to resume, exit 130.

A real SIGINT is sent to the example script once its progress shows a finished epoch; the
resume command the script prints is then run as printed, and must finish the run as an
uninterrupted one does.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests import processes

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 12  # digits: about 0.1 s an epoch, so the run is still going when the signal lands


def interrupt_after_first_epoch(script: str, *args: str) -> tuple[int, str]:
    """Run ``examples/script``, send it SIGINT once epoch 1's line is out; (exit code, stderr)."""
    child = processes.popen(
        [sys.executable, f"examples/{script}", *args],
        warm=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert child.stderr is not None
    lines = []
    for line in child.stderr:  # the progress bar's epoch lines (not a terminal: one per epoch)
        lines.append(line)
        if line.startswith("epoch 1/"):
            os.kill(child.pid, signal.SIGINT)
            break
    rest = child.communicate(timeout=120)[1]
    return child.returncode, "".join(lines) + rest


def final_accuracy(stdout: str) -> str:
    return re.search(r"final validation accuracy: (\S+)", stdout).group(1)


def mlp_args(*extra: str) -> list[str]:
    return ["--data", "digits", "--epochs", str(EPOCHS), "--plot", "", "--target", "0", *extra]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_in_train_mlp_saves_says_how_to_resume_and_the_resume_completes_the_run(tmp_path):
    checkpoints = tmp_path / "ckpt"
    code, stderr = interrupt_after_first_epoch(
        "train_mlp.py", *mlp_args("--checkpoints", str(checkpoints))
    )
    assert code == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    last = stderr.strip().splitlines()[-1]
    found = re.fullmatch(r"interrupted: the newest checkpoint is (\S+); resume with: (.+)", last)
    assert found, last
    saved, command = Path(found.group(1)), shlex.split(found.group(2))
    assert saved.parent == checkpoints and saved.exists()
    assert command[1:] == ["examples/train_mlp.py", *mlp_args("--checkpoints", str(checkpoints))]

    resumed = processes.run(
        [sys.executable, *command[1:]], warm=True, capture_output=True, text=True, timeout=120,
        cwd=ROOT,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    epochs = re.findall(r"^epoch (\d+)/", resumed.stderr, re.M)
    assert epochs and int(epochs[0]) > 1 and epochs[-1] == str(EPOCHS)  # went on, not over
    whole = processes.run(
        [sys.executable, "examples/train_mlp.py", *mlp_args()],
        warm=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert final_accuracy(resumed.stdout) == final_accuracy(whole.stdout)


@pytest.mark.slow
def test_ctrl_c_in_train_mlp_without_checkpoints_says_nothing_was_saved():
    code, stderr = interrupt_after_first_epoch("train_mlp.py", *mlp_args())
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "interrupted: nothing was saved (--checkpoints DIR makes a run resumable)"
    )


@pytest.mark.slow
def test_ctrl_c_in_train_ddp_alone_saves_and_says_how_to_resume(tmp_path):
    checkpoints = tmp_path / "ckpt"
    args = ["--epochs", "40", "--checkpoints", str(checkpoints), "--target", "0"]
    code, stderr = interrupt_after_first_epoch("train_ddp.py", *args)
    assert code == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"interrupted: the newest checkpoint is {re.escape(str(checkpoints))}/\S+; resume with: "
        r"\S+ examples/train_ddp.py .*",
        last,
    ), last
