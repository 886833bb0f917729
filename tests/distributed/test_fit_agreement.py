"""The fingerprint every rank of a fit sends at its start, and how differences between the
ranks' fingerprints are named (the two-rank refusals:
tests/distributed/test_fit_agreement_ranks.py)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pluglearn import Checkpoint, DataLoaders, EarlyStopping, Learner, hookimpl
from pluglearn.distributed.fit_agreement import _items, disagreements, fingerprint, plugin_settings


@pytest.fixture
def learner(make_learner):
    """The shared tiny Learner with the default plugins: 20 shuffled training items in batches of
    8, 10 validating (``**kw`` to the Learner)."""
    return lambda **kw: make_learner(
        n_train=20, n_valid=10, bs=8, defaults=True, from_datasets=True, **kw
    )


def test_the_fingerprint_holds_the_settings_every_rank_must_share(learner):
    loss = partial(F.cross_entropy, reduction="sum")
    learn = learner(lr=0.3, loss_func=loss, plugins=[EarlyStopping(patience=4)])
    learn.opt = torch.optim.Adam(learn.model.parameters())
    said = fingerprint(learn)
    assert said["lr"] == 0.3 and said["batch_size"] == 8 and said["valid_batch_size"] == 16
    assert said["train data"] == "20 items" and said["valid data"] == "10 items"
    defaults = ["AvgLoss", "ProgressBar", "TrainStep", "DefaultLoader", "Device"]
    assert said["plugins"] == ["EarlyStopping", *defaults]
    assert said["EarlyStopping(patience=)"] == 4
    assert said["loss"] == "torch.nn.functional.cross_entropy"
    assert said["loss reduction"] == "sum"
    assert said["optimizer"] == "torch.optim.adam.Adam"
    assert said["loader generators"] == 1  # the DataLoaders' shuffling generator


def test_plugin_settings_are_the_simple_constructor_arguments_kept_by_name():
    settings = plugin_settings(Checkpoint("runs", every_n_batches=5, keep_last=2))
    assert settings["every_n_batches"] == 5 and settings["keep_last"] == 2
    assert "directory" not in settings  # a Path: not a simple value
    assert isinstance(Checkpoint("runs").directory, Path)


def test_each_differing_setting_is_named_with_every_ranks_value():
    a = {"lr": 0.1, "plugins": ["A"], "A(n=)": 1, "epochs": 2}
    b = {"lr": 0.3, "plugins": ["A", "B"], "A(n=)": 1, "B(k=)": 5, "epochs": 2}
    assert disagreements([a, b]) == [
        "lr: 0.1 on rank 0, 0.3 on rank 1",
        "plugins: ['A'] on rank 0, ['A', 'B'] on rank 1",
    ]
    assert disagreements([a, dict(a)]) == []


class Scaled:
    """A loss that is a callable object of a plain class: it has no ``__qualname__`` itself."""

    def __call__(self, preds, targets):
        return F.cross_entropy(preds, targets)


@pytest.mark.parametrize(
    ("loss", "name"),
    [
        (F.cross_entropy, "torch.nn.functional.cross_entropy"),
        (partial(partial(F.mse_loss), reduction="sum"), "torch.nn.functional.mse_loss"),
        (torch.nn.CrossEntropyLoss(), "torch.nn.modules.loss.CrossEntropyLoss"),
        (Scaled(), f"{__name__}.Scaled"),
    ],
    ids=["function", "partials", "module", "callable-object"],
)
def test_the_loss_is_named_by_its_function_or_its_class(learner, loss, name):
    assert fingerprint(learner(loss_func=loss))["loss"] == name


def test_the_data_a_rank_reads_is_counted_in_items_else_in_batches():
    x, y = torch.zeros(12, 2), torch.zeros(12)
    tensors = torch.utils.data.TensorDataset(x, y)
    pairs = [(x[i], y[i]) for i in range(7)]  # a dataset that is not tensors: its length
    assert _items(None, torch.utils.data.DataLoader(tensors, batch_size=4)) == "12 items"
    assert _items(None, torch.utils.data.DataLoader(pairs, batch_size=4)) == "7 items"
    assert _items(pairs, None) == "7 items"
    assert _items(None, [(x[:4], y[:4])] * 3) == "3 batches"  # no dataset: the loader's length
    assert _items(None, iter([(x, y)])) is None  # neither: nothing to compare
    assert _items(None, None) is None


def test_loaders_of_the_user_s_own_give_their_batch_sizes_and_datasets_lengths():
    """DataLoaders over torch DataLoaders knows no batch size nor dataset itself: the loaders'
    are compared."""
    x, y = torch.zeros(12, 4), torch.zeros(12, dtype=torch.long)
    data = torch.utils.data.TensorDataset
    dls = DataLoaders(
        torch.utils.data.DataLoader(data(x, y), batch_size=4),
        torch.utils.data.DataLoader(data(x[:6], y[:6]), batch_size=3),
    )
    said = fingerprint(Learner(torch.nn.Linear(4, 3), dls, defaults=False))
    assert (said["batch_size"], said["valid_batch_size"]) == (4, 3)
    assert (said["train data"], said["valid data"]) == ("12 items", "6 items")
    lists = DataLoaders([(x[:4], y[:4])] * 3, [(x[:6], y[:6])])  # batches: no size, no dataset
    said = fingerprint(Learner(torch.nn.Linear(4, 3), lists, defaults=False))
    assert (said["batch_size"], said["valid_batch_size"]) == (None, None)
    assert (said["train data"], said["valid data"]) == ("3 batches", "1 batches")


def test_differences_are_listed_in_rank_0_s_order_past_the_settings_only_some_ranks_have():
    rank_0 = {"lr": 0.1, "A(n=)": 1, "epochs": 2}
    rank_1 = {"B(k=)": 5, "epochs": 3, "lr": 0.3}
    assert disagreements([rank_0, rank_1]) == [
        "lr: 0.1 on rank 0, 0.3 on rank 1",
        "epochs: 2 on rank 0, 3 on rank 1",
    ]


class Slotted:
    """A plugin whose instances have no ``__dict__``."""

    __slots__ = ("patience",)

    def __init__(self, patience: int = 2) -> None:
        self.patience = patience

    @hookimpl
    def before_fit(self, learn):
        pass


def test_a_plugin_without_a_dict_has_no_settings_to_compare():
    assert plugin_settings(Slotted(3)) == {}
