"""HFModel: dict batches and models returning .loss/.logits, against a hand-written loop.

A hand-made module returning such an object runs always; a tiny random-weight transformers
BERT (built from a config, nothing downloaded) runs when transformers is installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import Accuracy, Checkpoint, DataLoaders, HFModel, Learner, MetricAdapter, hookimpl


@dataclass
class Output:
    loss: torch.Tensor | None
    logits: torch.Tensor


class TinyHF(nn.Module):
    """Hugging Face's convention by hand: model(**batch) -> .loss (from labels) and .logits."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(8, 2)

    def forward(self, input_ids, attention_mask, labels=None):
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.emb(input_ids) * mask).sum(1) / mask.sum(1)
        logits = self.head(self.drop(pooled))
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return Output(loss, logits)


class Tokens(torch.utils.data.Dataset):
    """Sequences whose label is whether token 1 occurs: a task a tiny model learns."""

    def __init__(self, n: int, vocab: int = 20, length: int = 6, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(2, vocab, (n, length), generator=g)
        hit = torch.rand(n, generator=g) < 0.5
        self.ids[hit, 0] = 1
        self.labels = hit.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.labels[i]}


def ready_batches(ds: Tokens, bs: int) -> list[dict]:
    return [
        {"input_ids": ds.ids[i : i + bs], "attention_mask": torch.ones_like(ds.ids[i : i + bs]),
         "labels": ds.labels[i : i + bs]}
        for i in range(0, len(ds), bs)
    ]  # fmt: skip


def tiny_bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=20, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16, num_labels=2,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


MODELS = {"hand-made": TinyHF, "transformers BERT": tiny_bert}


@pytest.mark.parametrize("name", list(MODELS))
def test_training_equals_the_hand_written_loop_bit_for_bit(name):
    train = ready_batches(Tokens(24), 8)
    torch.manual_seed(0)
    model = MODELS[name]()
    learn = Learner(model, DataLoaders(train), lr=0.1, plugins=[HFModel()], defaults=False)
    torch.manual_seed(1)
    learn.fit(2)
    torch.manual_seed(0)
    ref = MODELS[name]()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    torch.manual_seed(1)
    for _ in range(2):
        ref.train()
        for batch in train:
            ref(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
    for (k, a), b in zip(learn.model.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


class Mean:
    """A metric object with the torchmetrics protocol: the mean of argmax == target."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.hits, self.n = 0, 0

    def update(self, preds, targets) -> None:
        self.hits += int((preds.argmax(1) == targets).sum())
        self.n += len(targets)

    def compute(self) -> float:
        return self.hits / self.n


class SeeTargets:
    def __init__(self) -> None:
        self.yb: list[torch.Tensor] = []

    @hookimpl
    def after_loss(self, learn) -> None:
        self.yb.append(learn.yb)


@pytest.mark.parametrize("name", list(MODELS))
def test_metrics_get_preds_and_yb_work_unchanged(name):
    torch.manual_seed(0)
    valid = Tokens(13, seed=1)
    dls = DataLoaders.from_datasets(Tokens(32), valid, batch_size=8, seed=2)
    seen = SeeTargets()
    learn = Learner(
        MODELS[name](), dls, lr=0.1, plugins=[HFModel(), Accuracy(), MetricAdapter(Mean(), "m")]
    )
    learn.remove_plugin("ProgressBar")
    learn.add_plugin(seen)
    learn.fit(1)
    preds, targets = learn.get_preds()
    learn.model.eval()
    with torch.no_grad():
        out = learn.model(**{k: v for k, v in ready_batches(valid, 13)[0].items()})
    assert preds.shape == (13, 2) and torch.equal(targets, valid.labels)
    assert torch.allclose(preds, out.logits, atol=1e-5)
    accuracy = (out.logits.argmax(1) == valid.labels).float().mean().item()
    assert learn.metrics["accuracy"] == pytest.approx(accuracy)
    assert learn.metrics["m"] == pytest.approx(accuracy)
    assert learn.metrics["valid_loss"] == pytest.approx(out.loss.item(), rel=1e-5)
    assert all(y.dtype == torch.int64 and y.ndim == 1 for y in seen.yb)
    one = learn.predict({"input_ids": valid.ids[0], "attention_mask": torch.ones(6).long()})
    assert torch.allclose(one, out.logits[0], atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_a_resumed_fit_gives_the_weights_of_an_uninterrupted_one(name, tmp_path):
    def make(directory):
        torch.manual_seed(0)
        dls = DataLoaders.from_datasets(Tokens(24), Tokens(8, seed=1), batch_size=8, seed=3)
        plugins = [HFModel(), Checkpoint(directory, every_n_batches=2)]
        return Learner(MODELS[name](), dls, lr=0.1, plugins=plugins, defaults=False)

    whole = make(tmp_path / "a")
    whole.fit(2)

    class Crash:
        @hookimpl
        def after_batch(self, learn):
            if learn.training and learn.train_iter == 4:
                raise KeyboardInterrupt

    cut = make(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        cut.fit(2, plugins=[Crash()])
    resumed = make(tmp_path / "b")
    resumed.fit(2, resume_from=tmp_path / "b")
    for (k, a), b in zip(
        resumed.model.state_dict().items(), whole.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k


def test_a_model_without_logits_or_batches_without_labels_say_what_to_do():
    class NoLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(1, 1)

        def forward(self, **batch):
            return (self.lin(batch["x"]),)

    dls = DataLoaders([{"x": torch.ones(2, 1), "labels": torch.zeros(2).long()}])
    with pytest.raises(TypeError, match=r"without 'logits'.*HFModel\(logits='...'\)"):
        Learner(NoLogits(), dls, plugins=[HFModel()], defaults=False).fit(1)
    no_labels = DataLoaders(
        [{"input_ids": torch.ones(2, 3).long(), "attention_mask": torch.ones(2, 3)}]
    )
    with pytest.raises(KeyError, match="add 'labels' to the dataset's items"):
        Learner(TinyHF(), no_labels, plugins=[HFModel()], defaults=False).fit(1)
    with pytest.raises(TypeError, match="HFModel expects dict batches"):
        Learner(TinyHF(), DataLoaders([(torch.ones(2), torch.ones(2))]), plugins=[HFModel()]).fit(1)
