"""A training job over a user's own loader, for the tests that resume it in a fresh process.

    python tests/jobs/loader_resume_job.py KIND DIR OUT [--die-after STEP] [--resume]

It trains a tiny model with dropout (so the global random state matters) for 3 epochs on 40
items whose first feature is the item's index, with a ``Checkpoint`` after every batch, and
appends to ``OUT.items`` one line per training step: the indices of the items it trained on
(and to ``OUT.fetched``, or ``OUT.resumed.fetched`` when resuming, every item its loader
fetched).
``--die-after STEP`` ends the process with ``os._exit`` right after the checkpoint of step
``STEP`` is written (a kill: no cleanup runs); ``--resume`` continues from ``DIR``. At the end
the weights go to ``OUT``. The job seeds nothing but ``torch.manual_seed(0)``.

KIND is the loader: ``shuffle`` (torch DataLoader, shuffle=True: the global generator),
``generator`` (DataLoader(generator=g)), ``workers`` (shuffle, 2 workers), ``persistent`` (2
persistent workers, a dataset with random noise), ``persistent_plain`` (2 persistent workers,
no noise), ``iterable`` (an IterableDataset), ``private`` (a sampler with a generator of its
own), ``stateful0`` / ``stateful2`` (torchdata's StatefulDataLoader, 0 or 2 workers).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from pluglearn import Checkpoint, DataLoaders, Learner, hookimpl

N, BATCH = 40, 8


def items() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 4, generator=g)
    x[:, 0] = torch.arange(N, dtype=torch.float32)
    return x, torch.randint(0, 3, (N,), generator=g)


class Items(Dataset):
    #: where every item fetched is logged (``OUT.fetched``), workers included
    fetched: Path | None = None

    def __init__(self, noise: bool = False) -> None:
        self.x, self.y = items()
        self.noise = noise

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int):
        if self.fetched is not None:
            with self.fetched.open("a") as f:
                f.write(f"{i}\n")
        x = self.x[i].clone()
        if self.noise:  # a random transform, drawn in the worker
            x[1:] += 0.01 * torch.randn(3)
        return x, self.y[i]


class Stream(IterableDataset):
    def __iter__(self):
        x, y = items()
        yield from zip(x, y, strict=True)


_HIDDEN = torch.Generator().manual_seed(5)  # reachable from no loader: pluglearn cannot save it


class PrivateSampler(Sampler):
    """Shuffles with a generator the loader does not hold."""

    def __len__(self) -> int:
        return N

    def __iter__(self):
        return iter(torch.randperm(N, generator=_HIDDEN).tolist())


def loader(kind: str):
    if kind == "shuffle":
        return DataLoader(Items(), batch_size=BATCH, shuffle=True)
    if kind == "generator":
        return DataLoader(Items(), BATCH, shuffle=True, generator=torch.Generator().manual_seed(7))
    if kind == "workers":
        return DataLoader(Items(), batch_size=BATCH, shuffle=True, num_workers=2)
    if kind in ("persistent", "persistent_plain"):
        return DataLoader(
            Items(noise=kind == "persistent"),
            batch_size=BATCH,
            shuffle=True,
            num_workers=2,
            persistent_workers=True,
        )
    if kind == "iterable":
        return DataLoader(Stream(), batch_size=BATCH)
    if kind == "private":
        return DataLoader(Items(), batch_size=BATCH, sampler=PrivateSampler())
    if kind.startswith("stateful"):
        from torchdata.stateful_dataloader import StatefulDataLoader

        return StatefulDataLoader(
            Items(), batch_size=BATCH, shuffle=True, num_workers=int(kind[-1])
        )
    raise SystemExit(f"unknown loader kind {kind!r}")


class ItemLog:
    """Appends the item indices of every training step to a file, one line per step."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @hookimpl
    def after_batch(self, learn: Learner) -> None:
        if learn.training:
            ids = learn.batch[0][:, 0].long().tolist()
            with self.path.open("a") as f:
                f.write(" ".join(map(str, ids)) + "\n")


class DieAfter:
    """Ends the process right after the checkpoint of training step ``step`` is written."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl(trylast=True)
    def after_batch(self, learn: Learner) -> None:
        if learn.training and learn.train_iter == self.step:
            os._exit(3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind")
    parser.add_argument("dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--die-after", type=int)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    # this process's fetches only (a killed run's workers may fetch a little longer)
    Items.fetched = args.out.with_suffix(".resumed.fetched" if args.resume else ".fetched")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 3))
    learn = Learner(model, DataLoaders(loader(args.kind)), lr=0.05, defaults=False)
    plugins = [ItemLog(args.out.with_suffix(".items")), Checkpoint(args.dir, every_n_batches=1)]
    if args.die_after is not None:
        plugins.append(DieAfter(args.die_after))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the replay's O(n) warning
        learn.fit(3, plugins=plugins, resume_from=args.dir if args.resume else None)
    torch.save([p.detach() for p in learn.model.parameters()], args.out)


if __name__ == "__main__":
    main()
