"""Batches of any structure: collate, move, inputs/targets, item counts, through real fits."""

from __future__ import annotations

import copy
import dataclasses
from collections import UserDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pluglearn import (
    Accuracy,
    AvgLoss,
    DataLoaders,
    Device,
    GradientAccumulation,
    HFModel,
    Learner,
    hookimpl,
)
from pluglearn.data.batch_ops import (
    collate,
    concat,
    count_items,
    detach,
    head,
    inputs_of,
    take,
    targets_of,
    to_device,
)

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


# ------------------------------------------------------- the users' batches, through real fits


def quiet(learn: Learner) -> Learner:
    learn.remove_plugin("ProgressBar")
    return learn


class NamedItems(torch.utils.data.Dataset):
    """Items ``(x, (y, name))``: a class label and the item's name (a file name, say)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x[:, 0] > 0).long()
        self.names = [f"item{seed}-{i}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple:
        return self.x[i], (self.y[i], self.names[i])


class LossOnFirstTarget:
    """The targets are a structure whose first part is the class label."""

    @hookimpl
    def compute_loss(self, learn):
        return F.cross_entropy(learn.preds, learn.yb[0])


@pytest.mark.parametrize("n_valid", [10, 8])  # batches of 4, 4, 2 (ragged) and of 4, 4
def test_get_preds_gives_per_item_names_in_item_order(n_valid):
    torch.manual_seed(0)
    dls = DataLoaders.from_datasets(
        NamedItems(12, 0), NamedItems(n_valid, 1), batch_size=4, valid_batch_size=4, seed=0
    )
    learn = quiet(Learner(nn.Linear(4, 2), dls, plugins=[LossOnFirstTarget()]))
    learn.fit(1)
    preds, (y, names) = learn.get_preds()
    valid = NamedItems(n_valid, 1)
    assert names == valid.names and torch.equal(y, valid.y)
    with torch.no_grad():
        logits = learn.model(valid.x)
    torch.testing.assert_close(preds, logits)
    expected_loss = F.cross_entropy(logits, valid.y).item()  # per item over the ragged batches
    assert learn.metrics["valid_loss"] == pytest.approx(expected_loss, rel=1e-6)


class Boxes(torch.utils.data.Dataset):
    """Detection style: each image has its own number of boxes, a tensor (k, 4) per item."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        counts = torch.randint(1, 4, (n,), generator=g).tolist()
        self.boxes = [torch.randn(k, 4, generator=g) for k in counts]

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, i: int) -> tuple:
        return self.x[i], self.boxes[i]


def detection_collate(items: list) -> tuple:
    return torch.stack([x for x, _ in items]), [boxes for _, boxes in items]


class BoxLoss:
    """Each image's one predicted box against the mean of its boxes."""

    @hookimpl
    def compute_loss(self, learn):
        means = torch.stack([boxes.mean(0) for boxes in learn.yb])
        return F.mse_loss(learn.preds, means)


def test_get_preds_gives_detection_targets_one_tensor_per_item_in_order():
    torch.manual_seed(0)
    train, valid = Boxes(8, 0), Boxes(10, 1)
    loaders = [
        torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=detection_collate)
        for ds in (train, valid)
    ]
    learn = quiet(Learner(nn.Linear(4, 4), DataLoaders(*loaders), plugins=[BoxLoss()]))
    learn.fit(1)
    preds, targets = learn.get_preds()
    assert isinstance(targets, list) and len(targets) == 10  # batches of 4, 4, 2
    assert all(torch.equal(t, b) for t, b in zip(targets, valid.boxes, strict=True))
    with torch.no_grad():
        torch.testing.assert_close(preds, learn.model(valid.x))


class Sentences(torch.utils.data.Dataset):
    """Sentences of 1 to 6 tokens with a class per token; each batch is padded to its longest."""

    lengths = (2, 3, 1, 2, 6, 1, 1, 2)  # batches of 4: padded to 3 tokens, then to 6

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.tokens = [torch.randint(1, 10, (n,), generator=g) for n in self.lengths]

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple:
        return self.tokens[i], self.tokens[i] % 3


def pad_collate(items: list) -> tuple:
    longest = max(len(t) for t, _ in items)
    ids = torch.zeros(len(items), longest, dtype=torch.long)
    labels = torch.full((len(items), longest), -100)
    for row, (t, y) in enumerate(items):
        ids[row, : len(t)], labels[row, : len(y)] = t, y
    return ids, labels


class TokenLoss:
    @hookimpl
    def compute_loss(self, learn):
        return F.cross_entropy(learn.preds.flatten(0, 1), learn.yb.flatten(), ignore_index=-100)


def test_per_token_predictions_of_different_lengths_are_a_clear_error_with_the_fix():
    torch.manual_seed(0)
    dl = torch.utils.data.DataLoader(Sentences(), batch_size=4, collate_fn=pad_collate)
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 3))
    learn = quiet(Learner(model, DataLoaders(dl, dl), plugins=[TokenLoss()]))
    with pytest.raises(ValueError) as info:
        learn.get_preds()
    text = str(info.value)
    assert "preds has shape (4, 3, 3) in batch 0 but (4, 6, 3) in batch 1" in text
    assert "predictions in `predict`, targets in the loader's collate_fn" in text
    assert "a list of per-item tensors" in text


@dataclass
class Scaled:
    """An item whose ``__post_init__`` transforms it: it must run once, when the item is made."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        self.x = self.x * 2


class ScaledData(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(n, 3, generator=g, dtype=torch.float64)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Scaled:
        return Scaled(self.x[i], self.y[i])


class ScaledStep:
    @hookimpl
    def predict(self, learn):
        return learn.model(learn.batch.x)

    @hookimpl
    def compute_loss(self, learn):
        return F.mse_loss(learn.preds, learn.batch.y)


@pytest.mark.parametrize("device", [None, "cpu"])
def test_a_post_init_transform_runs_once_per_item_with_and_without_device(device):
    ds = ScaledData(12)
    torch.manual_seed(0)
    net = nn.Linear(3, 1).double()
    hand = copy.deepcopy(net)
    plugins = [ScaledStep(), *([Device(device)] if device else [])]
    dls = DataLoaders.from_datasets(ds, batch_size=12, seed=0)  # one batch: full-batch steps
    Learner(net, dls, lr=0.1, plugins=plugins, defaults=False).fit(3)
    items = [ds[i] for i in range(len(ds))]  # the items as the dataset makes them
    x, y = torch.stack([it.x for it in items]), torch.stack([it.y for it in items])
    opt = torch.optim.SGD(hand.parameters(), lr=0.1)
    for _ in range(3):
        F.mse_loss(hand(x), y).backward()
        opt.step()
        opt.zero_grad()
    for p, q in zip(net.parameters(), hand.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


class TinyDictModel(nn.Module):
    """Hugging Face's convention in float64, without dropout: model(**batch) -> .loss, .logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(20, 4).double()
        self.head = nn.Linear(4, 2).double()

    def forward(self, input_ids, attention_mask, labels=None):
        mask = attention_mask.unsqueeze(-1).double()
        logits = self.head((self.emb(input_ids) * mask).sum(1) / mask.sum(1))
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return SimpleNamespace(loss=loss, logits=logits)


class TokenIds(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 20, (n, 5), generator=g)
        self.mask = (torch.rand(n, 5, generator=g) < 0.8).long()
        self.mask[:, 0] = 1
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def test_hf_model_with_gradient_accumulation_steps_as_one_big_batch():
    ds = TokenIds(10)
    net, hand = TinyDictModel(), TinyDictModel()
    dls = DataLoaders.from_datasets(ds, batch_size=4, seed=0)  # 4 + 4 + 2 items, one group
    learn = Learner(net, dls, lr=0.5, plugins=[HFModel(), GradientAccumulation(3), AvgLoss()])
    learn.fit(2)
    assert learn.opt_steps == 2
    whole = collate([ds[i] for i in range(len(ds))])
    opt = torch.optim.SGD(hand.parameters(), lr=0.5)
    for _ in range(2):
        hand(**whole).loss.backward()
        opt.step()
        opt.zero_grad()
    for p, q in zip(net.parameters(), hand.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-10)


class SquaredCounts:
    """Weighs a batch by the square of its size (a stand-in for, e.g., its tokens)."""

    @hookimpl
    def count_items(self, batch):
        return len(batch[1]) ** 2


def test_a_count_items_plugin_changes_what_avg_loss_and_accumulation_weigh_by():
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(10, 4, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (10,), generator=g),
    )
    train = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]
    weights = torch.tensor([16.0, 16.0, 4.0], dtype=torch.float64)
    torch.manual_seed(0)
    net = nn.Linear(4, 3).double()
    hand = copy.deepcopy(net)

    def weighted_loss(model):
        losses = torch.stack([F.cross_entropy(model(xb), yb) for xb, yb in train])
        return (losses * weights).sum() / weights.sum()

    with torch.no_grad():
        train_loss = weighted_loss(hand).item()
    plugins = [SquaredCounts(), GradientAccumulation(3), AvgLoss()]
    learn = Learner(net, DataLoaders(train, train), lr=0.5, plugins=plugins, defaults=False)
    learn.fit(1)
    opt = torch.optim.SGD(hand.parameters(), lr=0.5)
    weighted_loss(hand).backward()
    opt.step()
    for p, q in zip(net.parameters(), hand.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-10)
    with torch.no_grad():
        valid_loss = weighted_loss(hand).item()
        per_item = F.cross_entropy(hand(x), y).item()
    assert learn.metrics["train_loss"] == pytest.approx(train_loss, rel=1e-9)
    assert learn.metrics["valid_loss"] == pytest.approx(valid_loss, rel=1e-9)
    assert valid_loss != pytest.approx(per_item, rel=1e-3)  # the weights make a difference


# ------------------------------------------------------------------ clear errors, with the fix


class TupleTargets(torch.utils.data.Dataset):
    """Items ``(x, (y, w))``: torch's default_collate makes the targets a list ``[yb, wb]``."""

    def __init__(self, n: int) -> None:
        self.x, self.y = torch.randn(n, 4), torch.arange(n) % 2
        self.w = torch.rand(n)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple:
        return self.x[i], (self.y[i], self.w[i])


@pytest.mark.parametrize("collate_fn", [None, collate])
def test_torch_s_list_of_tuple_targets_is_refused_and_the_named_fix_works(collate_fn):
    ds = TupleTargets(8)
    kwargs = {} if collate_fn is None else {"collate_fn": collate_fn}
    dl = torch.utils.data.DataLoader(ds, batch_size=4, **kwargs)
    learn = quiet(Learner(nn.Linear(4, 2), DataLoaders(dl, dl), plugins=[LossOnFirstTarget()]))
    if collate_fn is None:
        with pytest.raises(ValueError) as info:
            learn.get_preds()
        text = str(info.value)
        assert "the targets (learn.yb) are a list of 2 entries, one per item" in text
        assert "the batch's first tensor holds 4 items" in text
        assert "collate_fn=pluglearn.data.batch_ops.collate" in text
    else:
        _, (y, w) = learn.get_preds()
        assert torch.equal(y, ds.y) and torch.equal(w, ds.w)


def test_concat_names_the_per_item_list_that_does_not_match_its_batch():
    parts = [
        (torch.zeros(4), (torch.zeros(4), ["a", "b", "c", "d"])),
        (torch.zeros(2), (torch.zeros(2), ["e"])),
    ]
    with pytest.raises(ValueError) as info:
        concat(parts, top=False, name="targets")
    text = str(info.value)
    assert "targets[1][1] is a list of 1 entry in batch 1, which holds 2 items" in text
    assert "one entry per item" in text and "collate_fn=pluglearn.data.batch_ops.collate" in text


def test_collate_of_tensors_of_different_shapes_names_the_place_and_the_fix():
    with pytest.raises(ValueError) as info:
        collate([{"x": torch.zeros(2), "boxes": torch.zeros(k, 4)} for k in (1, 3)])
    text = str(info.value)
    assert "the items' tensors at item['boxes'] have different shapes [(1, 4), (3, 4)]" in text
    assert "pad them to one shape" in text and "collate_fn" in text


# ------------------------------------------- property tests against a plainly written reference
#
# The reference below is the rules of the module doc as a straightforward recursion, with no
# optree: structures are tuples (named ones too), mappings and dataclasses, and a list at the
# top; a list below the top is one entry per item; dicts are walked in sorted key order.

CALLS = {"post_init": 0, "new": 0}  # constructors run by the walks: there must be none


@dataclass
class Post:
    a: object
    b: object

    def __post_init__(self) -> None:
        CALLS["post_init"] += 1


@dataclass(frozen=True)
class Frozen:
    a: object
    b: object

    def __post_init__(self) -> None:
        CALLS["post_init"] += 1


class Two(NamedTuple):
    p: object
    q: object


class _ThreeFields(NamedTuple):
    p: object
    q: object
    r: object


class Three(_ThreeFields):
    def __new__(cls, p, q, r):
        CALLS["new"] += 1
        return super().__new__(cls, p, q, r)


def ref_is_node(obj, top):
    if type(obj) is list:
        return top
    return isinstance(obj, (tuple, Mapping)) or (
        dataclasses.is_dataclass(obj) and not isinstance(obj, type)
    )


def ref_entries(obj):
    """(key, child) pairs in walk order."""
    if isinstance(obj, Mapping):
        return [(k, obj[k]) for k in (sorted(obj) if type(obj) is dict else list(obj))]
    if dataclasses.is_dataclass(obj):
        return [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    return list(enumerate(obj))


def ref_rebuild(obj, children):
    """``obj``'s type around new children (a dict key -> child), running no constructor."""
    if dataclasses.is_dataclass(obj):
        new = object.__new__(type(obj))
        for key, value in children.items():
            object.__setattr__(new, key, value)
        return new
    if isinstance(obj, Mapping):
        return type(obj)({k: children[k] for k in obj})
    ordered = [children[i] for i in range(len(obj))]
    if hasattr(obj, "_fields"):
        return tuple.__new__(type(obj), ordered)
    return type(obj)(ordered)


def ref_same_shape(values, top):
    first = values[0]
    for other in values[1:]:
        if type(other) is not type(first) and ref_is_node(first, top):
            raise TypeError("different types")
        if ref_is_node(first, top) and [k for k, _ in ref_entries(other)] != [
            k for k, _ in ref_entries(first)
        ]:
            raise ValueError("different keys or fields")


def ref_map(fn, obj):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if type(obj) is list:
        return [ref_map(fn, o) for o in obj]
    if ref_is_node(obj, True):
        return ref_rebuild(obj, {k: ref_map(fn, c) for k, c in ref_entries(obj)})
    return obj


def ref_collate(items, top=True):
    if top and any(item is None for item in items):
        raise TypeError("the dataset returned None")
    ref_same_shape(items, top)
    first = items[0]
    if ref_is_node(first, top):
        columns = {k: [dict(ref_entries(i))[k] for i in items] for k, _ in ref_entries(first)}
        return ref_rebuild(first, {k: ref_collate(col, False) for k, col in columns.items()})
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        if len({tuple(i.shape) for i in items}) > 1:
            raise ValueError("different shapes")
        return torch.stack(items)
    if isinstance(first, (bool, int, float)):
        floats = any(isinstance(i, float) for i in items)
        return torch.tensor(items, dtype=torch.float64 if floats else None)
    if isinstance(first, (str, list)):
        return list(items)
    raise TypeError("cannot collate")


def ref_count_of(obj, top):
    """The first tensor's count, else the first per-item list's; None without either."""
    tensors, lists = [], []

    def visit(o, top):
        if ref_is_node(o, top):
            for _, c in ref_entries(o):
                visit(c, False)
        elif isinstance(o, torch.Tensor):
            tensors.append(o.shape[0] if o.ndim else 1)
        elif type(o) is list:
            lists.append(len(o))

    visit(obj, top)
    return (tensors or lists or [None])[0]


def ref_first_tensor(obj, top):
    """The first tensor outside the per-item lists, or None."""
    if ref_is_node(obj, top):
        found = [ref_first_tensor(c, False) for _, c in ref_entries(obj)]
        return next((t for t in found if t is not None), None)
    return obj if isinstance(obj, torch.Tensor) else None


def ref_count(batch):
    if (isinstance(batch, (tuple, list)) and len(batch) == 2) or (
        isinstance(batch, Mapping) and "labels" in batch
    ):
        part = batch["labels"] if isinstance(batch, Mapping) else batch[1]
        n = ref_count_of(part, False)
        if n is not None:
            tensor = ref_first_tensor(batch, True)
            by_list = ref_first_tensor(part, False) is None
            if by_list and tensor is not None and n != (tensor.shape[0] if tensor.ndim else 1):
                raise ValueError("per-item targets disagree with the batch's first tensor")
            return n
    whole = ref_count_of(batch, True)
    if whole is None:
        raise TypeError("nothing to count")
    return whole


def ref_concat(parts, top=True):
    counts = [ref_count_of(p, top) or 0 for p in parts]
    return ref_join(parts, counts, top)


def ref_join(parts, counts, top):
    ref_same_shape(parts, top)
    first = parts[0]
    if ref_is_node(first, top):
        columns = {k: [dict(ref_entries(p))[k] for p in parts] for k, _ in ref_entries(first)}
        return ref_rebuild(first, {k: ref_join(col, counts, False) for k, col in columns.items()})
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        if not all(isinstance(p, torch.Tensor) for p in parts):
            raise TypeError("a tensor in some batches only")
        flat = [p if p.ndim else p.reshape(1) for p in parts]
        if len({tuple(p.shape[1:]) for p in flat}) > 1:
            raise ValueError("shapes differ beyond dim 0")
        return torch.cat(flat)
    if type(first) is list:
        if any(type(p) is not list for p in parts):
            raise TypeError("a list in some batches only")
        if any(len(p) != n for p, n in zip(parts, counts, strict=True)):
            raise ValueError("a per-item list of another length than its batch")
        return [entry for p in parts for entry in p]
    return list(parts)


def ref_take(obj, index, top=True):
    if ref_is_node(obj, top):
        return ref_rebuild(obj, {k: ref_take(c, index, False) for k, c in ref_entries(obj)})
    if isinstance(obj, torch.Tensor):
        return obj[index] if obj.ndim else obj
    if type(obj) is list:
        return obj[index]
    return obj


def assert_same(got, expected):
    """Equal values of the same types, down to every leaf (tensors: dtype, shape, grad)."""
    assert type(got) is type(expected), (type(got), type(expected))
    if isinstance(expected, torch.Tensor):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert got.requires_grad == expected.requires_grad and torch.equal(got, expected)
    elif isinstance(expected, Mapping):
        assert list(got) == list(expected)
        for k in expected:
            assert_same(got[k], expected[k])
    elif dataclasses.is_dataclass(expected):
        for f in dataclasses.fields(expected):
            assert_same(getattr(got, f.name), getattr(expected, f.name))
    elif isinstance(expected, (tuple, list)):
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            assert_same(g, e)
    else:
        assert got == expected


ERRORS = (ValueError, TypeError, IndexError)


def agree(fn, ref, *args, **kwargs):
    """``fn`` and the reference give the same result, or both refuse; no constructor runs."""
    try:
        expected = ref(*args, **kwargs)
    except ERRORS:
        expected = ERRORS
    before = dict(CALLS)
    if expected is ERRORS:
        with pytest.raises(ERRORS):
            fn(*args, **kwargs)
    else:
        assert_same(fn(*args, **kwargs), expected)
    assert before == CALLS, "a walk ran __init__, __post_init__ or a custom __new__"


# Schemas: ("kind", ...) leaves and nodes, from which items and batches are built.
ITEM_LEAVES = ["tensor", "scalar", "int", "float", "bool", "str", "entries", "none"]
BATCH_LEAVES = ["tensor", "labels", "scalar", "ragged", "strings", "dicts", "none", "number"]
KEYS = st.sampled_from(["b", "a", "labels", "c"])


def schemas(leaves, top_list=True):
    leaf = st.one_of(
        st.tuples(st.just("tensor"), st.sampled_from([(), (2,), (2, 3)])),
        st.sampled_from([k for k in leaves if k != "tensor"]).map(lambda k: (k,)),
    )

    def nodes(kids):
        return st.one_of(
            st.lists(kids, min_size=1, max_size=3).map(lambda c: ("tuple", c)),
            st.tuples(kids, kids).map(lambda c: ("two", list(c))),
            st.tuples(kids, kids, kids).map(lambda c: ("three", list(c))),
            st.dictionaries(KEYS, kids, min_size=1, max_size=3).map(lambda d: ("dict", d)),
            st.dictionaries(KEYS, kids, min_size=1, max_size=2).map(lambda d: ("userdict", d)),
            st.tuples(kids, kids).map(lambda c: ("post", list(c))),
            st.tuples(kids, kids).map(lambda c: ("frozen", list(c))),
        )

    tree = st.recursive(leaf, nodes, max_leaves=6)
    if not top_list:
        return tree
    return st.one_of(tree, st.lists(tree, min_size=1, max_size=3).map(lambda c: ("list", c)))


NODES = {"two": Two, "three": Three, "post": Post, "frozen": Frozen}


def build(schema, leaf_value):
    """A structure of ``schema``, its leaves made by ``leaf_value(schema)``."""
    kind = schema[0]
    if kind in ("tuple", "list"):
        built = [build(c, leaf_value) for c in schema[1]]
        return tuple(built) if kind == "tuple" else built
    if kind in NODES:
        return NODES[kind](*[build(c, leaf_value) for c in schema[1]])
    if kind in ("dict", "userdict"):
        built = {k: build(c, leaf_value) for k, c in schema[1].items()}
        return built if kind == "dict" else UserDict(built)
    return leaf_value(schema)


def item_leaf(g):
    def make(schema):
        kind = schema[0]
        r = torch.rand((), generator=g).item()
        return {
            "tensor": lambda: torch.randn(schema[-1], generator=g),
            "scalar": lambda: torch.randn((), generator=g),
            "int": lambda: int(r * 10),
            "float": lambda: r,
            "bool": lambda: r < 0.5,
            "str": lambda: f"w{int(r * 100)}",
            "entries": lambda: [torch.randn(2, generator=g) for _ in range(int(r * 3))],
            "none": lambda: None,
        }[kind]()

    return make


def batch_leaf(g, n):
    def make(schema):
        kind = schema[0]
        sizes = torch.randint(0, 3, (n,), generator=g).tolist()
        return {
            "tensor": lambda: torch.randn(n, *schema[-1], generator=g).requires_grad_(),
            "labels": lambda: torch.randint(0, 5, (n,), generator=g),
            "scalar": lambda: torch.randn((), generator=g),
            "ragged": lambda: [torch.randn(k, 2, generator=g) for k in sizes],
            "strings": lambda: [f"w{k}" for k in sizes],
            "dicts": lambda: [{"box": torch.randn(k, 2, generator=g), "id": k} for k in sizes],
            "none": lambda: None,
            "number": lambda: float(sizes[0]),
        }[kind]()

    return make


PROPERTY = settings(max_examples=40, deadline=None)


@PROPERTY
@given(schemas(ITEM_LEAVES), st.integers(1, 4), st.integers(0, 2**16))
def test_collate_agrees_with_the_reference(schema, n, seed):
    g = torch.Generator().manual_seed(seed)
    items = [build(schema, item_leaf(g)) for _ in range(n)]
    agree(collate, ref_collate, items)


@PROPERTY
@given(st.data(), st.booleans(), st.lists(st.integers(1, 4), min_size=1, max_size=3))
def test_concat_of_batches_agrees_with_the_reference(data, top, sizes):
    schema = data.draw(schemas(BATCH_LEAVES, top_list=top))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    parts = [build(schema, batch_leaf(g, n)) for n in sizes]  # the last batch may be short
    agree(concat, ref_concat, parts, top=top)


@PROPERTY
@given(schemas(BATCH_LEAVES), st.integers(1, 4), st.integers(0, 2**16))
def test_count_take_head_and_the_maps_agree_with_the_reference(schema, n, seed):
    batch = build(schema, batch_leaf(torch.Generator().manual_seed(seed), n))
    agree(count_items, ref_count, batch)
    agree(lambda b: to_device(b, "cpu"), lambda b: ref_map(lambda t: t.to("cpu"), b), batch)
    agree(detach, lambda b: ref_map(torch.Tensor.detach, b), batch)
    for i in range(n):
        agree(take, ref_take, batch, i)
    for k in range(n + 1):  # the first k items: what DDP keeps of a batch with padding
        agree(head, lambda b, k: ref_take(b, slice(0, k)), batch, k)


def test_the_generated_structures_exercise_every_rule():
    """The property tests can fail: the reference tells per-item lists from structures."""
    g = torch.Generator().manual_seed(0)
    batch = ([torch.zeros(1), torch.zeros(3)], (torch.zeros(2), ["a", "b"]))
    assert_same(concat([batch, batch]), ref_concat([batch, batch]))
    assert ref_count(batch) == 2 and ref_take(batch, 1)[1][1] == "b"
    assert_same(take(batch, 1), ref_take(batch, 1))
    items = [Post(torch.randn(2, generator=g), [1, 2]) for _ in range(3)]
    with pytest.raises(AssertionError):  # rebuilding through the constructor is caught
        agree(lambda items: Post(*ref_collate(items).__dict__.values()), ref_collate, items)
