"""A fit with a 64 MB checkpoint, run as a child process by
tests/checkpoint/test_atomic_write_failures.py to meet a checkpoint write that fails: a full
disk, a second Ctrl-C, a SIGKILL.

    python tests/jobs/checkpoint_write_job.py DIR {file-size-limit,second-ctrl-c,forever}

``file-size-limit`` caps the size of the files this process may write (``RLIMIT_FSIZE``, with
SIGXFSZ ignored, so a write past it fails with EFBIG as on a full disk). ``second-ctrl-c`` sends
itself a Ctrl-C after the first training batch (the Checkpoint plugin then saves) and a second
one once the checkpoint write has begun. ``forever`` saves after every batch for 1000 epochs (the
parent kills it). The first two print, as one JSON line, the exception that ended the fit and
the files left in DIR.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from pluglearn import DataLoaders, Learner, hookimpl
from pluglearn.checkpoint.plugin import Checkpoint

BUFFERS, BUFFER_SIZE = 16, 1_000_000  # 16 x 4 MB of float32 in every checkpoint


class Big(nn.Module):
    """A linear model carrying 64 MB of buffers, so that a checkpoint write takes a while."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        for i in range(BUFFERS):
            self.register_buffer(f"big{i}", torch.zeros(BUFFER_SIZE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class SecondCtrlC:
    """The first Ctrl-C after training batch 1; the second once the checkpoint write began."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @hookimpl(tryfirst=True)  # before Checkpoint's after_batch, which then saves
    def after_batch(self, learn: Learner) -> None:
        if learn.training and learn.train_iter == 1:
            os.kill(os.getpid(), signal.SIGINT)
            threading.Thread(target=self._second, daemon=True).start()

    def _second(self) -> None:
        while not any(p.stat().st_size > 4 * BUFFER_SIZE for p in self.directory.glob(".*.tmp")):
            time.sleep(0.0002)
        os.kill(os.getpid(), signal.SIGINT)


def main() -> None:
    directory, mode = Path(sys.argv[1]), sys.argv[2]
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    dls = DataLoaders.from_datasets((x[:8], y[:8]), (x[8:], y[8:]), batch_size=4, seed=0)
    plugins: list[object] = []
    if mode == "forever":
        plugins.append(Checkpoint(directory, every_n_batches=1, keep_last=1))
        Learner(Big(), dls, plugins=plugins).fit(1000)
        return
    plugins.append(Checkpoint(directory, every_epoch=True))
    if mode == "second-ctrl-c":
        plugins.append(SecondCtrlC(directory))
    else:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
    learn = Learner(Big(), dls, plugins=plugins)
    try:
        learn.fit(1)
    except BaseException as error:  # the parent checks what it was
        report = {
            "type": type(error).__name__,
            "errno": getattr(error, "errno", None),
            "message": str(error),
            "notes": getattr(error, "__notes__", []),
            "files": sorted(os.listdir(directory)),
        }
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
