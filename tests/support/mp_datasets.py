"""Module-level datasets for the MultiprocessLoader tests.

They live in an importable module (not in a test's locals) because spawn workers unpickle them
by reference: ``tests.support.mp_datasets.<name>``.
"""

from __future__ import annotations

import random
import time

import torch

from pluglearn.scratch.data import collate


class NoisyPoints:
    """``n`` fixed points in ``n_in`` dimensions, labelled by ``n_classes`` clusters; each fetch
    adds fresh noise from torch's and python's RNGs, so two runs agree only when every batch is
    made under the same seed."""

    def __init__(
        self, n: int = 48, n_in: int = 4, n_classes: int = 3, seed: int = 0, noise: float = 0.3
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, n_classes, (n,), generator=g)
        centres = torch.randn(n_classes, n_in, generator=g) * 2
        self.x = centres[self.y] + torch.randn(n, n_in, generator=g)
        self.noise = noise

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        jitter = self.noise * (torch.randn(self.x.shape[1]) + random.random())
        return self.x[i] + jitter, self.y[i]


def _corrupt_item(i: int) -> None:
    raise ValueError(f"item {i} is corrupt")


class CorruptAt(NoisyPoints):
    """Like ``NoisyPoints`` but fetching index ``bad`` raises (from ``_corrupt_item``, a name
    to find in the worker's traceback)."""

    def __init__(self, bad: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bad = bad

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i == self.bad:
            _corrupt_item(i)
        return super().__getitem__(i)


def collate_doubled(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    """A collate_fn of one's own: the scratch collate, inputs doubled (to see it was used)."""
    xb, yb = collate(items)
    return 2 * xb, yb


class ManyKinds:
    """Items of many dtypes and layouts, one of them large: a batch of 4 of ``big`` exceeds the
    size sent inline, so both ways from the workers to the parent are used."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> tuple:
        g = torch.Generator().manual_seed(i)
        x = torch.randn(4, 3, generator=g)
        return (
            x.t(),  # not contiguous
            x.to(torch.bfloat16),
            x > 0,
            torch.tensor(i),
            torch.complex(x, -x).conj(),
            torch.randn(300, 300, generator=g),  # 360 kB; 1.4 MB a batch
        ), i


class SlowItems(NoisyPoints):
    """``NoisyPoints`` whose every item takes ``delay`` seconds to fetch (a slow disk)."""

    def __init__(self, n: int, delay: float) -> None:
        super().__init__(n=n, noise=0.0)
        self.delay = delay

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(self.delay)
        return super().__getitem__(i)
