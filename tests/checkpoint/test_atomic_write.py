"""Writing a checkpoint atomically: a failed write leaves the previous file intact and no
temporary; a full disk, a quota or a file-size limit is explained with the fix; a Ctrl-C while
``save_checkpoint`` writes is held, then handed to the installed handler where the writer records
what it raises.

Left to Python, the handler ran at any bytecode, also the first one of the writer's ``write``,
outside its ``try``; torch's C++ zip writer then raised ``RuntimeError: [enforce fail ...]
unexpected pos`` instead of the ``KeyboardInterrupt`` (seen once in CI under load). Here the
signal is sent from inside ``torch.save`` itself (while it pickles the state), so every case is
deterministic.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import sys
import traceback
from pathlib import Path

import pytest
import torch

from pluglearn.checkpoint.atomic_write import explain_write_error
from pluglearn.checkpoint.files import (
    FORMAT,
    VERSION,
    load_checkpoint,
    save_checkpoint,
)
from pluglearn.checkpoint.resume import capture
from tests import processes
from tests.jobs import resume_job


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path):
    learn = resume_job.make_learner(str(tmp_path / "unused"))
    learn.fit(1)
    path = save_checkpoint(capture(learn, epoch_end=True), tmp_path / "ckpt.pt")
    before = path.read_bytes()
    broken = capture(learn, epoch_end=True)
    broken["plugins"]["Bad"] = {"fn": lambda: None}  # torch.save cannot pickle a lambda
    with pytest.raises((AttributeError, pickle_error_types())):
        save_checkpoint(broken, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    load_checkpoint(path)


def pickle_error_types() -> type[Exception]:
    import pickle

    return pickle.PicklingError


def a_state(**loop):
    return {"format": FORMAT, "version": VERSION, "loop": {"train_iter": 1, "epoch": 0, **loop}}


def test_a_write_over_the_file_size_limit_names_the_directory_and_leaves_no_file(tmp_path):
    ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, hard))
    try:
        with pytest.raises(OSError) as failed:
            save_checkpoint({**a_state(), "w": torch.zeros(1 << 16)}, tmp_path / "c.pt")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, ignored)
    assert failed.value.errno == errno.EFBIG
    assert failed.value.strerror == (
        f"cannot write a checkpoint in {tmp_path}: the file is larger than this process may "
        "write (a file-size limit, `ulimit -f`, or the filesystem's largest file) "
        f"({os.strerror(errno.EFBIG)}). The checkpoints already there are intact. Raise the "
        "limit, keep fewer checkpoints (Checkpoint(keep_last=...)), or save them to another "
        "directory."
    )
    assert list(tmp_path.iterdir()) == []  # the partial temporary file is removed


@pytest.mark.parametrize(
    ("code", "why", "fix"),
    [
        (errno.ENOSPC, "the disk is full", "Free space there"),
        (errno.EDQUOT, "the disk quota is exhausted", "Free space there or raise the quota"),
    ],
)
def test_no_room_on_the_disk_or_quota_is_explained_with_its_fix(tmp_path, code, why, fix):
    explained = explain_write_error(OSError(code, os.strerror(code)), tmp_path)
    assert explained.errno == code
    assert explained.strerror == (
        f"cannot write a checkpoint in {tmp_path}: {why} ({os.strerror(code)}). The checkpoints "
        f"already there are intact. {fix}, keep fewer checkpoints (Checkpoint(keep_last=...)), "
        "or save them to another directory."
    )
    assert explain_write_error(OSError(errno.EACCES, "denied"), tmp_path) is None
    assert explain_write_error(KeyboardInterrupt(), tmp_path) is None


class SendsCtrlC:
    """Pickling it sends this process a SIGINT: a Ctrl-C in the middle of torch.save."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGINT)
        return (int, (0,))


def state() -> dict:
    return {"weights": torch.arange(1000.0), "ctrl_c": SendsCtrlC(), "more": torch.ones(4000)}


@pytest.fixture
def restore_sigint():
    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)


def test_python_s_handler_raises_the_keyboard_interrupt_itself_and_no_file_is_left(
    tmp_path, restore_sigint
):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(KeyboardInterrupt) as info:
        save_checkpoint(state(), tmp_path / "ckpt.pt")
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    # delivered inside the writer's write (under mutmut: its trampolined copy), which records it
    assert any("write" in name for name in frames), frames
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_handler_that_does_not_raise_is_called_once_and_the_save_completes(
    tmp_path, restore_sigint
):
    calls = []
    signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    path = save_checkpoint(state(), tmp_path / "ckpt.pt")
    assert calls == [signal.SIGINT]
    assert torch.equal(torch.load(path, weights_only=False)["weights"], torch.arange(1000.0))


def test_an_ignored_ctrl_c_stays_ignored(tmp_path, restore_sigint):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    assert save_checkpoint(state(), tmp_path / "ckpt.pt").exists()
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_a_handler_that_puts_back_another_one_keeps_it(tmp_path, restore_sigint):
    """The Checkpoint plugin's second Ctrl-C puts back the handler it replaced, then raises."""

    def second_ctrl_c(signum, frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt("second")

    signal.signal(signal.SIGINT, second_ctrl_c)
    with pytest.raises(KeyboardInterrupt, match="second"):
        save_checkpoint(state(), tmp_path / "ckpt.pt")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert list(tmp_path.iterdir()) == []


def test_a_save_outside_the_main_thread_holds_nothing_and_completes(tmp_path):
    import threading

    done = []
    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(
        target=lambda: done.append(save_checkpoint({"w": torch.ones(3)}, tmp_path / "c.pt"))
    )
    thread.start()
    thread.join()
    assert done and torch.equal(torch.load(done[0], weights_only=False)["w"], torch.ones(3))
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
def test_with_the_default_action_the_process_still_dies_of_the_ctrl_c(tmp_path):
    root = Path(__file__).resolve().parents[2]
    script = (
        "import os, signal, sys, torch\n"
        f"sys.path[:0] = [{str(root / 'src')!r}, {str(root)!r}]\n"
        "from pluglearn.checkpoint.files import save_checkpoint\n"
        "from tests.checkpoint.test_atomic_write import state\n"
        "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
        f"save_checkpoint(state(), {str(tmp_path / 'ckpt.pt')!r})\n"
        "print('saved')\n"
    )
    done = processes.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == -signal.SIGINT, done.stderr[-2000:]
    assert "saved" not in done.stdout
    assert not (tmp_path / "ckpt.pt").exists()


@pytest.fixture
def ctrl_c_in_the_first_fsync(monkeypatch):
    """The first os.fsync (the temporary file's, after the last write) receives a Ctrl-C."""
    real_fsync, sent = os.fsync, []

    def fsync_then_ctrl_c(fd):
        real_fsync(fd)
        if not sent:
            sent.append(fd)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(os, "fsync", fsync_then_ctrl_c)
    return sent


def test_a_ctrl_c_during_the_fsync_after_the_last_write_is_not_lost(
    tmp_path, restore_sigint, ctrl_c_in_the_first_fsync
):
    calls = []
    signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    path = save_checkpoint({"weights": torch.arange(10.0)}, tmp_path / "ckpt.pt")
    assert ctrl_c_in_the_first_fsync and calls == [signal.SIGINT]  # the Checkpoint plugin's stop
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.arange(10.0))


def test_python_s_handler_raises_a_ctrl_c_from_the_fsync_and_no_file_is_left(
    tmp_path, restore_sigint, ctrl_c_in_the_first_fsync
):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"weights": torch.arange(10.0)}, tmp_path / "ckpt.pt")
    assert ctrl_c_in_the_first_fsync and list(tmp_path.iterdir()) == []
