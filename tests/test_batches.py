"""Batches of any structure: collate, move, inputs/targets, item counts, through real fits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import Accuracy, DataLoaders, Learner, hookimpl
from pluglearn.batches import collate, count_items, inputs_of, targets_of, to_device

META = torch.device("meta")


@dataclass
class Sample:
    x: torch.Tensor
    y: int


class Pair(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor


def test_dict_items_collate_to_a_dict_of_stacked_tensors():
    items = [{"x": torch.full((3,), float(i)), "labels": i, "w": 0.5} for i in range(4)]
    batch = collate(items)
    assert list(batch) == ["x", "labels", "w"]
    assert torch.equal(batch["x"], torch.stack([it["x"] for it in items]))
    assert batch["labels"].tolist() == [0, 1, 2, 3] and batch["labels"].dtype == torch.int64
    assert batch["w"].dtype == torch.float64  # as torch's default_collate


def test_dataclasses_named_and_nested_tuples_keep_their_structure():
    batch = collate([Sample(torch.ones(2), 1), Sample(torch.zeros(2), 0)])
    assert isinstance(batch, Sample) and batch.x.shape == (2, 2) and batch.y.tolist() == [1, 0]
    nested = collate([((torch.ones(2), torch.zeros(1)), 3), ((torch.zeros(2), torch.ones(1)), 4)])
    (a, b), c = nested
    assert a.shape == (2, 2) and b.shape == (2, 1) and c.tolist() == [3, 4]
    pairs = collate([Pair(torch.ones(1), torch.tensor(1)), Pair(torch.zeros(1), torch.tensor(0))])
    assert isinstance(pairs, Pair) and pairs.y.tolist() == [1, 0]


def test_collate_refuses_mixed_structures_with_the_fix():
    with pytest.raises(ValueError, match="different keys"):
        collate([{"x": 1}, {"y": 1}])
    with pytest.raises(TypeError, match="different types"):
        collate([{"x": 1}, (1, 2)])
    with pytest.raises(TypeError, match="is a `return` missing"):
        collate([None, None])
    with pytest.raises(TypeError, match="collate_fn=your_function"):
        collate([object()])


def test_to_device_moves_dataclasses_and_mappings_inside_tuples():
    batch = ({"a": torch.ones(2)}, Sample(torch.ones(2), 3), [torch.ones(1)])
    moved = to_device(batch, META)
    assert moved[0]["a"].device == META and moved[1].x.device == META and moved[1].y == 3
    assert moved[2][0].device == META and isinstance(moved[1], Sample)


def test_inputs_targets_and_counts_of_pairs_dicts_and_others():
    x, y = torch.zeros(5, 2), torch.zeros(5)
    assert inputs_of((x, y)) is x and targets_of((x, y)) is y and count_items((x, y)) == 5
    d = {"input": x, "labels": y[:3]}
    assert list(inputs_of(d)) == ["input"] and targets_of(d) is d["labels"]
    assert count_items(d) == 3 and count_items(Sample(x, 1)) == 5
    with pytest.raises(KeyError, match="name the targets 'labels'"):
        targets_of({"input": x})
    with pytest.raises(TypeError, match=r"read learn\.batch directly"):
        targets_of(Sample(x, 1))


# -------------------------------------------------------------------------- through a fit


class DictData(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(n)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x[:, 0] > 0).long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"features": self.x[i], "labels": int(self.y[i])}


class DictModel(nn.Module):
    """A model for dict batches written by hand: returns logits, its own plugin trains it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.lin(features)


class DictStep:
    @hookimpl
    def predict(self, learn):
        return learn.model(**learn.xb)


def test_dict_items_train_with_a_predict_plugin_and_metrics_count_per_item():
    torch.manual_seed(0)
    dls = DataLoaders.from_datasets(DictData(30), DictData(11), batch_size=8, seed=1)
    learn = Learner(DictModel(), dls, plugins=[DictStep(), Accuracy()], defaults=True)
    learn.remove_plugin("ProgressBar")
    learn.fit(2)
    valid = DictData(11)
    with torch.no_grad():
        logits = learn.model.lin(valid.x)
    expected_loss = F.cross_entropy(logits, valid.y).item()
    assert learn.metrics["valid_loss"] == pytest.approx(expected_loss, rel=1e-6)
    expected_acc = (logits.argmax(1) == valid.y).float().mean().item()
    assert learn.metrics["accuracy"] == pytest.approx(expected_acc)
    preds, targets = learn.get_preds()
    assert torch.allclose(preds, logits, atol=1e-6) and torch.equal(targets, valid.y)


def test_without_an_adapter_a_dict_batch_says_what_to_do():
    dls = DataLoaders.from_datasets(DictData(8), batch_size=4)
    learn = Learner(DictModel(), dls, defaults=False)
    with pytest.raises(TypeError) as info:
        learn.fit(1)
    text = str(info.value)
    assert "a batch must be an (xb, yb) pair, got a dict of length 2" in text
    assert "plugins=[HFModel()]" in text and "answer 'predict'" in text
