"""How a checkpoint's bytes reach the disk: ``torch.save`` through a writer that records what
``write`` raised (torch's C++ writer would turn it into a ``RuntimeError``), a Ctrl-C held
during the write and delivered where that writer records it, and the errors of a full disk said
in words. :func:`pluglearn.checkpoint.files.save_checkpoint` puts them together with the temporary
file, the fsync and the rename.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class RecordingWriter:
    """What ``torch.save`` writes through. Its C++ writer turns any exception that ``write``
    raises (a Ctrl-C, a full disk) into ``RuntimeError: [enforce fail ...]``: this remembers the
    exception, so that :func:`~pluglearn.checkpoint.files.save_checkpoint` raises it instead. A
    Ctrl-C during the write is delivered here, inside the ``try`` (see
    :func:`ctrl_c_deferred`)."""

    def __init__(self, file: Any, deliver: Any = None) -> None:
        self.file, self.deliver = file, deliver
        self.error: BaseException | None = None  # what write() raised, to raise it as itself

    def write(self, data: Any) -> int:
        try:
            if self.deliver is not None:
                self.deliver()  # a Ctrl-C that came since the last write (its handler may raise)
            view = memoryview(data).cast("B")
            size = len(view)
            while view:  # an unbuffered file may write less than asked
                view = view[self.file.write(view) :]
            return size
        except BaseException as error:
            self.error = error
            raise

    def flush(self) -> None:
        """Nothing to flush: the file is unbuffered, and fsync'ed once complete."""


@contextmanager
def ctrl_c_deferred() -> Iterator[Any]:
    """While ``torch.save`` runs, a Ctrl-C is held and handed to the handler that was installed
    (the ``Checkpoint`` plugin's, or Python's ``KeyboardInterrupt``) by the function this yields,
    at a point where the writer records what it raises. Left to Python, the handler would run at
    any bytecode, also the first one of ``write``, outside its ``try``: torch then reported a
    broken zip record (``RuntimeError: [enforce fail ...] unexpected pos``) instead of the
    ``KeyboardInterrupt``. One still held when the block ends (it came after the last delivery)
    is delivered on the way out. Outside the main thread (no handler can be set) nothing is
    held."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    held: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        held.append(signum)

    previous = signal.signal(signal.SIGINT, hold)

    def deliver() -> None:
        while held:
            signum = held.pop()
            if callable(previous):
                previous(signum, None)
            elif previous == signal.SIG_DFL:  # the process asked to die of it: it does now
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

    try:
        yield deliver
    finally:
        if signal.getsignal(signal.SIGINT) is hold:  # a handler may have put back another
            signal.signal(signal.SIGINT, previous)
    # reached when the block ends without an error: a Ctrl-C held since the caller's last
    # delivery (during the fsync) is delivered now, not dropped with the handler that held it
    deliver()


_NO_ROOM = {
    errno.ENOSPC: ("the disk is full", "free space there"),
    errno.EDQUOT: ("the disk quota is exhausted", "free space there or raise the quota"),
    errno.EFBIG: (
        "the file is larger than this process may write (a file-size limit, `ulimit -f`, or the "
        "filesystem's largest file)",
        "raise the limit",
    ),
}


def explain_write_error(error: BaseException, directory: Path) -> OSError | None:
    """A full disk, an exhausted quota or a file-size limit, said in words with the fix (None
    for any other error)."""
    if not isinstance(error, OSError) or error.errno not in _NO_ROOM:
        return None
    why, fix = _NO_ROOM[error.errno]
    return OSError(
        error.errno,
        f"cannot write a checkpoint in {directory}: {why} ({os.strerror(error.errno)}). The "
        f"checkpoints already there are intact. {fix.capitalize()}, keep fewer checkpoints "
        "(Checkpoint(keep_last=...)), or save them to another directory.",
    )
