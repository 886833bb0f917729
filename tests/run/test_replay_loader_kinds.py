"""Which loaders a resume can replay exactly (pluglearn.run.replay.loader_kind): those with
state resume from it, a list or a torch DataLoader over torch's own samplers is replayed from
the random states its epoch started from, anything else is checked batch by batch."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    Sampler,
    TensorDataset,
)

from pluglearn.run.replay import KNOWN, STATEFUL, UNKNOWN, loader_kind

DATA = TensorDataset(torch.arange(8.0))
SHUFFLED = RandomSampler(DATA)


class Stream(IterableDataset):
    def __iter__(self):
        yield from range(4)


class EveryOther(Sampler):
    def __init__(self) -> None:
        self.n = 8

    def __iter__(self):
        return iter(range(0, self.n, 2))

    def __len__(self) -> int:
        return self.n // 2


class OwnBatches(BatchSampler):
    pass


class MyLoader(DataLoader):
    pass


class SavesOnly:
    def state_dict(self):
        return {}


class Resumable(SavesOnly):
    def load_state_dict(self, state):
        pass


@pytest.mark.parametrize(
    "make, kind",
    [
        (lambda: [(1, 2)], KNOWN),
        (lambda: ((1, 2),), KNOWN),
        (lambda: DataLoader(DATA, batch_size=2), KNOWN),
        (lambda: DataLoader(DATA, batch_size=2, shuffle=True), KNOWN),
        (lambda: DataLoader(DATA, 2, shuffle=True, generator=torch.Generator()), KNOWN),
        (lambda: DataLoader(DATA, batch_sampler=BatchSampler(SHUFFLED, 2, False)), KNOWN),
        (lambda: DataLoader(DATA, batch_size=2, num_workers=2), KNOWN),
        (lambda: DataLoader(DATA, batch_size=2, num_workers=2, persistent_workers=True), UNKNOWN),
        (lambda: DataLoader(DATA, batch_size=2, num_workers=1, persistent_workers=True), UNKNOWN),
        (lambda: DataLoader(DATA, batch_size=2, sampler=EveryOther()), UNKNOWN),
        (lambda: DataLoader(DATA, batch_sampler=OwnBatches(SHUFFLED, 2, False)), UNKNOWN),
        (lambda: DataLoader(Stream(), batch_size=2), UNKNOWN),
        (lambda: MyLoader(DATA, batch_size=2), UNKNOWN),
        (lambda: iter([(1, 2)]), UNKNOWN),
        (SavesOnly, UNKNOWN),
        (Resumable, STATEFUL),
    ],
    ids=[
        "list", "tuple", "dataloader", "shuffled", "own-generator", "torch-batch-sampler",
        "workers", "persistent-workers", "one-persistent-worker", "custom-sampler",
        "custom-batch-sampler", "iterable", "subclass", "iterator", "state-without-load",
        "state-and-load",
    ],
)  # fmt: skip
def test_each_loader_is_replayed_the_way_its_order_can_be_known(make, kind):
    assert loader_kind(make()) == kind
