"""A Ctrl-C while ``save_checkpoint`` writes: held, then handed to the installed handler where
the writer records what it raises.

Left to Python, the handler ran at any bytecode, also the first one of the writer's ``write``,
outside its ``try``; torch's C++ zip writer then raised ``RuntimeError: [enforce fail ...]
unexpected pos`` instead of the ``KeyboardInterrupt`` (seen once in CI under load). Here the
signal is sent from inside ``torch.save`` itself (while it pickles the state), so every case is
deterministic.
"""

from __future__ import annotations

import os
import signal
import traceback

import pytest
import torch

from pluglearn.checkpoint.files import save_checkpoint
from tests import processes


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
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = (
        "import os, signal, sys, torch\n"
        f"sys.path[:0] = [{str(root / 'src')!r}, {str(root)!r}]\n"
        "from pluglearn.checkpoint.files import save_checkpoint\n"
        "from tests.test_checkpoint_signals import state\n"
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
