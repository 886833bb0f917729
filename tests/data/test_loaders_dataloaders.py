"""DataLoaders: the defaults loader plugins read, each refusal naming the dataset, loaders made by
a plugin closed and released, the repr."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from pluglearn import DataLoaders, Learner, hookimpl
from tests.helpers import exact, tiny_data

X, Y = tiny_data(12)


def test_ready_loaders_carry_no_datasets_and_no_loader_settings():
    train, valid = [(X, Y)], [(X[:4], Y[:4])]
    dls = DataLoaders(train, valid)
    assert (dls.train, dls.valid) == (train, valid)
    assert (dls.train_ds, dls.valid_ds, dls.collate_fn) == (None, None, None)
    assert (dls.batch_size, dls.valid_batch_size, dls.drop_last) == (0, 0, False)
    assert isinstance(dls.generator, torch.Generator)
    assert repr(dls) == "DataLoaders(train=list, valid=list)"
    assert repr(DataLoaders(train)) == "DataLoaders(train=list, valid=None)"


@pytest.mark.parametrize("which", ["train", "valid"])
def test_a_loader_that_is_no_iterable_is_refused_by_its_name(which):
    loaders = {"train": [(X, Y)], "valid": None, which: 5}
    message = (
        f"the {which} loader must be an iterable of (xb, yb) batches, got int: for a dataset "
        "use DataLoaders.from_datasets(...)."
    )
    with pytest.raises(TypeError, match=exact(message)):
        DataLoaders(loaders["train"], loaders["valid"])


def test_from_datasets_defaults_and_settings():
    dls = DataLoaders.from_datasets((X, Y))
    assert (dls.batch_size, dls.valid_batch_size, dls.drop_last) == (64, 128, False)
    assert (dls.train, dls.valid, dls.collate_fn) == (None, None, None)
    assert repr(dls) == "DataLoaders(train=dataset tuple, valid=None)"
    dls = DataLoaders.from_datasets((X, Y), (X, Y), 5, valid_batch_size=1)
    assert (dls.batch_size, dls.valid_batch_size) == (5, 1)
    assert repr(dls) == "DataLoaders(train=dataset tuple, valid=dataset tuple)"


@pytest.mark.parametrize("columns", [(X, Y), [X, Y], (X.numpy(), Y.numpy())])
def test_a_collate_fn_gets_the_items_of_a_tuple_of_columns(columns):
    calls = []

    def collate(items):  # each item: (x_i, y_i), as from a TensorDataset
        assert all(x.shape == (4,) and y.shape == () for x, y in items)
        calls.append(len(items))
        return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])

    dls = DataLoaders.from_datasets(columns, batch_size=4, collate_fn=collate, seed=0)
    assert dls.collate_fn is collate
    Learner(nn.Linear(4, 3), dls, defaults=False).fit(1)
    assert calls == [4, 4, 4]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_ds": None}, "train_ds is None: a Learner needs training data."),
        (
            {"train_ds": (X, Y), "valid_batch_size": 1.5},
            "valid_batch_size must be a positive int, got 1.5.",
        ),
        (
            {"train_ds": (X, Y), "batch_size": 8, "valid_batch_size": 0},
            "valid_batch_size must be a positive int, got 0: pass None for twice batch_size (16).",
        ),
        ({"train_ds": (X[:0], Y[:0])}, "train_ds is empty: a dataset needs at least one item."),
        (
            {"train_ds": (X, Y), "valid_ds": (X[:0], Y[:0])},
            "valid_ds is empty: a dataset needs at least one item.",
        ),
        ({"train_ds": (X, Y), "drop_last": 1}, "drop_last must be True or False, got 1."),
    ],
)
def test_bad_datasets_and_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=exact(message)):
        DataLoaders.from_datasets(**kwargs)


def test_one_item_datasets_are_enough():
    dls = DataLoaders.from_datasets((X[:1], Y[:1]), (X[:1], Y[:1]), 1, valid_batch_size=1)
    Learner(nn.Linear(4, 3), dls, defaults=False).fit(1)


@pytest.mark.parametrize("which", ["train_ds", "valid_ds"])
def test_a_dataset_that_is_no_map_style_dataset_is_refused_by_its_name(which):
    datasets = {"train_ds": (X, Y), "valid_ds": None, which: {1, 2, 3}}
    message = (
        f"{which} must be a map-style dataset (with __len__ and __getitem__) or a tuple of "
        "tensors or numpy arrays, got set: for a ready iterable of batches use "
        "DataLoaders(train_dl, valid_dl)."
    )
    with pytest.raises(TypeError, match=exact(message)):
        DataLoaders.from_datasets(**datasets)
    single = {"train_ds": (X, Y), "valid_ds": None, which: np.zeros((4, 2), "float32")}
    with pytest.raises(TypeError, match=f"^{which} is a single array"):
        DataLoaders.from_datasets(**single)


def test_validating_checks_the_validation_inputs_not_the_training_ones():
    xd = X.double()
    learn = Learner(nn.Linear(4, 3), DataLoaders.from_datasets((xd, Y), (X, Y), 4), defaults=False)
    learn.validate()  # the float64 training set is not needed, so not refused
    learn = Learner(nn.Linear(4, 3), DataLoaders.from_datasets((X, Y), (xd, Y), 4), defaults=False)
    with pytest.raises(TypeError, match=r"^valid_ds's inputs are float64"):
        learn.validate()


class Closing:
    """A loader of ready batches that records its close()."""

    def __init__(self, log: list, name: str) -> None:
        self.log, self.name = log, name

    def __iter__(self):
        return iter([(X, Y)])

    def __len__(self):
        return 1

    def close(self):
        self.log.append(self.name)


class MakesClosing:
    def __init__(self, fail_valid: bool = False, answer=None) -> None:
        self.log: list = []
        self.fail_valid, self.answer = fail_valid, answer

    @hookimpl(tryfirst=True)
    def make_dataloader(self, learn, dataset, train):
        if self.answer is not None:
            return self.answer
        if not train and self.fail_valid:
            raise RuntimeError("no valid loader")
        return Closing(self.log, "train" if train else "valid")


def test_the_loaders_a_plugin_made_are_closed_and_forgotten_after_the_fit():
    maker = MakesClosing()
    dls = DataLoaders.from_datasets((X, Y), (X, Y), 4)
    Learner(nn.Linear(4, 3), dls, plugins=[maker], defaults=False).fit(1)
    assert maker.log == ["train", "valid"]
    assert (dls.train, dls.valid) == (None, None)


def test_a_loader_failing_to_be_made_closes_those_made_before_it():
    maker = MakesClosing(fail_valid=True)
    dls = DataLoaders.from_datasets((X, Y), (X, Y), 4)
    with pytest.raises(RuntimeError, match="no valid loader"):
        Learner(nn.Linear(4, 3), dls, plugins=[maker], defaults=False).fit(1)
    assert maker.log == ["train"]
    assert (dls.train, dls.valid) == (None, None)


def test_a_plugin_answering_no_iterable_is_refused_naming_the_dataset():
    dls = DataLoaders.from_datasets((X, Y), None, 4)
    learn = Learner(nn.Linear(4, 3), dls, plugins=[MakesClosing(answer=42)], defaults=False)
    message = (
        "'make_dataloader' gave int for the train dataset: a plugin must return an iterable of "
        "batches (or None to pass)."
    )
    with pytest.raises(TypeError, match=f"^{re.escape(message)}"):
        learn.fit(1)
