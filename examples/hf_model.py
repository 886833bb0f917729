"""Train a tiny Hugging Face transformer with pluglearn: one plugin, HFModel, adapts it.

For people who use `transformers` models: the dataset returns dicts ({"input_ids", "attention_mask",
"labels"}), the loaders collate them, and `Learner(model, dls, plugins=[HFModel()])` trains on
the model's own `output.loss` and reports accuracy on `output.logits`. The model is a random
2-layer BERT built from a config (nothing is downloaded); the task is synthetic: is token 1 in
the sequence? It trains in seconds on a CPU and checks its own accuracy.

    python examples/hf_model.py              # exits 0 with a message if transformers is absent
"""

from __future__ import annotations

import argparse
import sys

import torch

from pluglearn import Accuracy, DataLoaders, HFModel, Learner

SEED, VOCAB, LENGTH = 0, 30, 8
N_TRAIN, N_VALID, BATCH_SIZE = 512, 128, 32
EPOCHS, LR, TARGET = 4, 1e-3, 0.9


class Tokens(torch.utils.data.Dataset):
    """Random sequences; the label says whether token 1 occurs (at a random position)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(2, VOCAB, (n, LENGTH), generator=g)
        self.labels = (torch.rand(n, generator=g) < 0.5).long()
        where = torch.randint(0, LENGTH, (n,), generator=g)
        hit = self.labels.bool()
        self.ids[hit, where[hit]] = 1

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.labels[i]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--epochs", type=int, default=EPOCHS, help=f"epochs to train (default: {EPOCHS})"
    )
    parser.add_argument("--lr", type=float, default=LR, help=f"AdamW learning rate (default: {LR})")
    parser.add_argument(
        "--target",
        type=float,
        default=TARGET,
        help=f"minimum validation accuracy; below it the script exits 1 (default: {TARGET})",
    )
    args = parser.parse_args(argv)
    try:
        from transformers import BertConfig, BertForSequenceClassification
    except ImportError:
        print(
            "transformers is not installed: skipping (pip install -c constraints.txt transformers)"
        )
        return 0

    torch.manual_seed(SEED)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=LENGTH,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    dls = DataLoaders.from_datasets(
        Tokens(N_TRAIN, SEED), Tokens(N_VALID, SEED + 1), batch_size=BATCH_SIZE, seed=SEED
    )
    learn = Learner(
        model, dls, opt_func=torch.optim.AdamW, lr=args.lr, plugins=[HFModel(), Accuracy()]
    )
    learn.fit(args.epochs)

    accuracy = learn.metrics["accuracy"]
    print(f"final validation accuracy: {accuracy:.4f} (target {args.target:.2f})")
    if accuracy < args.target:
        print(f"FAILED: accuracy {accuracy:.4f} is below {args.target:.2f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
