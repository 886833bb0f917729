"""Module-level datasets and collate functions for the multiprocessing tests.

They live in an importable module (not in the test file's locals) because spawn workers
unpickle them by reference: `tests.support.worker_datasets.<name>`.
"""

from __future__ import annotations

import os
import random
import signal
import time

import numpy as np
import torch

from pluglearn.scratch.data import collate


class Items:
    """Item i is `(tensor([i, i]) as float, i)`: values name their index."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((2,), float(i)), i


class Noisy(Items):
    """Item i carries draws from torch, random and numpy: equal only under equal seeding."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        noise = torch.randn(2) + torch.tensor([random.random(), float(np.random.rand())])
        return noise, i


class Stamped(Items):
    """Items of `slow` sleep first; each item reports when it was made (CLOCK_MONOTONIC is
    shared by all processes), to show batches finishing out of order."""

    def __init__(self, n: int, slow: range, delay: float):
        super().__init__(n)
        self.slow, self.delay = slow, delay

    def __getitem__(self, i: int) -> tuple[float, int]:
        if i in self.slow:
            time.sleep(self.delay)
        return time.monotonic(), i


class CtrlC(Items):
    """Presses Ctrl-C for its parent (the loader's process) when fetching index `at`."""

    def __init__(self, n: int, at: int):
        super().__init__(n)
        self.at = at

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if i == self.at:
            os.kill(os.getppid(), signal.SIGINT)
        return super().__getitem__(i)


def _explode(i: int) -> None:
    raise ValueError(f"item {i} is corrupt")


class Failing(Items):
    """Raises (from `_explode`, a name to find in the remote traceback) at index `bad`."""

    def __init__(self, n: int, bad: int):
        super().__init__(n)
        self.bad = bad

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if i == self.bad:
            _explode(i)
        return super().__getitem__(i)


class Dying(Failing):
    """Kills its process at index `bad`, like a segfault or the OOM killer would."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if i == self.bad:
            os._exit(3)
        return Items.__getitem__(self, i)


class Counted(Items):
    """Counts fetches in a shared-memory integer (inherited by fork workers)."""

    def __init__(self, n: int, counter):
        super().__init__(n)
        self.counter = counter

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with self.counter.get_lock():
            self.counter.value += 1
        return super().__getitem__(i)


def collate_with_pid(items: list) -> tuple:
    """Collates and records which process did it."""
    return collate(items), os.getpid()
