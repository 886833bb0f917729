"""Tiny models for the export tests, in a module that a fresh process can import."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """A user's class whose arguments are stored under their own names."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int, p: float = 0.1) -> None:
        super().__init__()
        self.n_in, self.n_hidden, self.n_out, self.p = n_in, n_hidden, n_out, p
        self.body = nn.Sequential(nn.Linear(n_in, n_hidden), nn.ReLU(), nn.Dropout(p))
        self.head = nn.Linear(n_hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Hidden(nn.Module):
    """A user's class that keeps none of its arguments: export needs ``model_args``."""

    def __init__(self, n_in: int, width: int, scale: float = 1.0) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(n_in, width), nn.Tanh(), nn.Linear(width, 2))
        self.register_buffer("scale", torch.tensor(scale), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x) * self.scale


class Configured(nn.Module):
    """A user's class that says its arguments with ``get_config()``."""

    def __init__(self, sizes: tuple[int, ...], activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.config = {"sizes": tuple(sizes), "activation": activation}
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), activation()]
        self.net = nn.Sequential(*layers[:-1])

    def get_config(self) -> dict:
        return dict(self.config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class Output:
    loss: torch.Tensor | None
    logits: torch.Tensor


class TinyHF(nn.Module):
    """Hugging Face's convention by hand: ``model(**batch)`` -> ``.loss`` and ``.logits``."""

    def __init__(self, vocab: int = 20, dim: int = 8) -> None:
        super().__init__()
        self.vocab, self.dim = vocab, dim
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, input_ids, attention_mask, labels=None):
        mask = attention_mask.unsqueeze(-1).float()
        logits = self.head((self.emb(input_ids) * mask).sum(1) / mask.sum(1))
        return Output(None if labels is None else F.cross_entropy(logits, labels), logits)


def smooth_loss(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A loss function of the user's own module: recorded by its import path."""
    return F.cross_entropy(preds, targets, label_smoothing=0.1)
