"""HFModel under DDP: a float64 model taking dict batches, run under torchrun (two ranks) or
alone (the one-process oracle) by tests/distributed/test_ddp_hf.py.

    [torchrun --nproc_per_node 2] python tests/jobs/hf_job.py OUT [--accum K] [--sampler]
        [--fsdp] [--n-train N] [--n-valid N] [--named-output]

Ten training items (``--n-train``) in global batches of 4 (the last has 2: one per rank; with 9
training items 1: rank 1's slice of it is empty), seven validation items (``--n-valid``); DDP()
(``--fsdp``: FSDP()), HFModel(), AvgLoss() and, with ``--accum K``, GradientAccumulation(K). The
loaders are pluglearn's, or with ``--sampler`` torch DataLoaders with a DistributedSampler. The
model returns a SimpleNamespace, or with ``--named-output`` a named tuple (FSDP needs an output
whose tensors torch's pytree sees). Rank 0 writes ``OUT/result.pt``: the final weights and the last
epoch's metrics.
"""

from __future__ import annotations

import argparse
import sys
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from pluglearn import DDP, FSDP, AvgLoss, DataLoaders, GradientAccumulation, HFModel, Learner
from pluglearn import dist as pdist

Output = namedtuple("Output", "loss logits")  # an output whose tensors torch's pytree sees


class TinyDictModel(nn.Module):
    """Hugging Face's convention in float64, without dropout: model(**batch) -> .loss, .logits
    (a SimpleNamespace, or with ``named=True`` a named tuple)."""

    def __init__(self, named: bool = False) -> None:
        super().__init__()
        self.output = Output if named else SimpleNamespace
        torch.manual_seed(0)
        self.emb = nn.Embedding(20, 4).double()
        self.head = nn.Linear(4, 2).double()

    def forward(self, input_ids, attention_mask, labels=None):
        mask = attention_mask.unsqueeze(-1).double()
        logits = self.head((self.emb(input_ids) * mask).sum(1) / mask.sum(1))
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return self.output(loss=loss, logits=logits)


class TokenIds(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 20, (n, 5), generator=g)
        self.mask = (torch.rand(n, 5, generator=g) < 0.8).long()
        self.mask[:, 0] = 1
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def sampled(dataset: TokenIds) -> DataLoader:
    """A torch DataLoader of global batches of 4 in order: on several ranks each takes its
    share through a ``DistributedSampler``, which pads the seven validation items to eight by
    repeating item 0 (on rank 1's last batch, which must count one item, not two)."""
    if not pdist.is_distributed():
        return DataLoader(dataset, batch_size=4)
    sampler = DistributedSampler(dataset, shuffle=False)
    return DataLoader(dataset, batch_size=4 // pdist.world_size(), sampler=sampler)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--accum", type=int, default=0)
    parser.add_argument("--sampler", action="store_true", help="torch DataLoaders (see above)")
    parser.add_argument("--fsdp", action="store_true", help="FSDP() instead of DDP()")
    parser.add_argument("--n-train", type=int, default=10)
    parser.add_argument("--n-valid", type=int, default=7)
    parser.add_argument("--named-output", action="store_true", help="a named tuple")
    args = parser.parse_args()
    ddp = FSDP() if args.fsdp else DDP()  # joins torchrun's group, which the loaders ask about
    train, valid = TokenIds(args.n_train, 1), TokenIds(args.n_valid, 2)
    if args.sampler:
        dls = DataLoaders(sampled(train), sampled(valid))
    else:
        dls = DataLoaders.from_datasets(train, valid, batch_size=4, valid_batch_size=4, seed=0)
    plugins = [HFModel(), ddp, AvgLoss()]
    if args.accum:
        plugins.append(GradientAccumulation(args.accum))
    learn = Learner(TinyDictModel(args.named_output), dls, lr=0.5, plugins=plugins, defaults=False)
    learn.fit(2)
    weights = learn.model.state_dict()
    if args.fsdp and pdist.is_distributed():
        from pluglearn.distributed.fsdp import full_state

        weights = full_state(learn.model)[0]  # the shards gathered (a collective)
    if pdist.is_main_process():
        weights = {k: v.clone() for k, v in weights.items()}
        result = {"weights": weights, "metrics": dict(learn.metrics), "world": pdist.world_size()}
        torch.save(result, args.out / "result.pt")


if __name__ == "__main__":
    main()
