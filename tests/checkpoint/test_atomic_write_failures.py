"""Checkpoint writes that fail or are cut off: a full disk, a second Ctrl-C, a SIGKILL.

Each is met for real in a child process (tests/jobs/checkpoint_write_job.py): the error is the one
that happened, named, never torch's ``RuntimeError: [enforce fail at inline_container.cc]``, and
no partial temporary file is left behind (or it is removed by the next fit).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pluglearn.checkpoint.files import checkpoint_name, new_run_id, temporary_path
from pluglearn.checkpoint.plugin import Checkpoint
from tests import processes
from tests.jobs import JOBS

JOB = JOBS / "checkpoint_write_job.py"


def run_job(directory: Path, mode: str) -> dict:
    result = processes.run(
        [sys.executable, str(JOB), str(directory), mode],
        warm=True,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_a_full_disk_during_a_write_is_an_oserror_naming_the_directory(tmp_path):
    # a file-size limit makes the write fail with EFBIG, as a full disk fails it with ENOSPC
    report = run_job(tmp_path, "file-size-limit")
    assert report["type"] == "OSError" and report["errno"] == errno.EFBIG, report
    assert f"cannot write a checkpoint in {tmp_path}" in report["message"]
    assert "file-size limit" in report["message"] and "keep_last" in report["message"]
    assert report["files"] == []  # the partial temporary file is removed


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_a_second_ctrl_c_during_a_write_is_a_keyboard_interrupt_and_leaves_no_file(tmp_path):
    report = run_job(tmp_path, "second-ctrl-c")
    assert report["type"] == "KeyboardInterrupt", report
    assert any("second Ctrl-C came during the checkpoint write" in n for n in report["notes"])
    assert report["files"] == []  # neither a checkpoint nor the partial temporary file


@pytest.fixture
def small_learner(make_learner):
    """The shared tiny Learner, default plugins and a Checkpoint: 16 shuffled training items in
    batches of 8, 8 validating."""
    return lambda directory: make_learner(
        [Checkpoint(directory)],
        n_train=16,
        n_valid=8,
        bs=8,
        defaults=True,
        from_datasets=True,
        loader_seed=1,
    )


def kill_mid_write(directory: Path, attempts: int = 5) -> list[Path]:
    """SIGKILL the job while it writes a checkpoint; returns the temporary files it left."""
    for _ in range(attempts):
        child = processes.popen(
            [sys.executable, str(JOB), str(directory), "forever"],
            warm=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 120
            while not any(p.stat().st_size > 0 for p in directory.glob(".*.tmp")):
                assert child.poll() is None, child.stderr.read() if child.stderr else ""
                assert time.monotonic() < deadline, "the job wrote no checkpoint"
                time.sleep(0.001)
        finally:
            child.kill()
            child.communicate(timeout=60)
        left = list(directory.glob(".*.tmp"))
        if left:  # else the write ended between the look and the kill: try again
            return left
    pytest.fail(f"no write was cut off in {attempts} tries")


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_a_new_fit_removes_the_temporary_a_killed_write_left(tmp_path, small_learner):
    stale = kill_mid_write(tmp_path)
    # a write in progress in a live process (another run), and a killed one of another machine
    sleeper = processes.popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        state = {"loop": {"train_iter": 1, "epoch": 0}}
        target = tmp_path / checkpoint_name(state, "ckpt", new_run_id())
        own = temporary_path(target).name
        live = tmp_path / own.replace(f".{os.getpid()}.tmp", f".{sleeper.pid}.tmp")
        elsewhere = tmp_path / f".{target.name}.another-host.{stale_pid(stale[0])}.tmp"
        for path in (live, elsewhere):
            path.write_bytes(b"partial")
        small_learner(tmp_path).fit(1)
        left = sorted(p.name for p in tmp_path.glob(".*.tmp"))
        assert left == sorted([live.name, elsewhere.name])  # only the killed write's is gone
    finally:
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait(timeout=60)


def stale_pid(path: Path) -> int:
    return int(path.name.split(".")[-2])
