"""The leaf rules: the table in pluglearn.data.batch_ops' doc and LEAF_RULES stay in step."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import pluglearn.data.batch_ops
from pluglearn.data.batch_rules import LEAF_RULES, leaf_kind


def documented_kinds() -> list[str]:
    doc = pluglearn.data.batch_ops.__doc__
    table = doc.split("    kind    collate")[1].split("\n\n")[0]
    return re.findall(r"^    (\w+)  ", table, flags=re.M)


def test_the_doc_table_lists_every_leaf_rule_in_order():
    assert documented_kinds() == list(LEAF_RULES)


@pytest.mark.parametrize(
    ("leaf", "kind"),
    [
        (torch.zeros(()), "tensor"),
        (torch.nn.Parameter(torch.zeros(2)), "tensor"),
        (np.zeros(2), "array"),
        (np.float32(1.5), "array"),
        (True, "number"),
        (3, "number"),
        (0.5, "number"),
        ("a", "text"),
        (b"a", "text"),
        ([1, "a"], "items"),
        (object(), "other"),
        ({1, 2}, "other"),
    ],
)
def test_every_leaf_has_one_kind(leaf, kind):
    assert leaf_kind(leaf) == kind


def test_numbers_and_arrays_collate_as_torch_s_default_collate():
    from torch.utils.data import default_collate

    for values in ([1, 2], [True, False], [1.5, 2], [np.float32(1), np.float32(2)]):
        ours = LEAF_RULES[leaf_kind(values[0])].collate(list(values), "item")
        theirs = default_collate(list(values))
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), values


class Opaque:
    """A dataset value no leaf rule batches."""


STACK_FIX = (
    "so they do not stack into one tensor: pad them to one shape in the dataset, or return a "
    "list of per-item tensors from your own collate_fn (DataLoaders.from_datasets(..., "
    "collate_fn=...))."
)


@pytest.mark.parametrize(
    ("items", "where"),
    [
        ([{"x": torch.zeros(2)}, {"x": torch.zeros(3)}], "item['x']"),
        ([(np.zeros(2), 1), (np.zeros(3), 2)], "item[0]"),  # arrays become tensors first
    ],
    ids=["tensors", "arrays"],
)
def test_items_whose_tensors_differ_in_shape_are_refused_naming_the_place_and_the_fix(items, where):
    with pytest.raises(ValueError) as info:
        pluglearn.data.batch_ops.collate(items)
    assert str(info.value) == (
        f"collate: the items' tensors at {where} have different shapes [(2,), (3,)], {STACK_FIX}"
    )


def test_a_value_no_rule_batches_is_refused_naming_its_type_place_and_the_fix():
    with pytest.raises(TypeError) as info:
        pluglearn.data.batch_ops.collate([(Opaque(), 1), (Opaque(), 2)])
    assert str(info.value) == (
        "collate does not know how to batch a Opaque (at item[0]): return tensors, numbers, "
        "strings, or tuples/dicts/dataclasses of them from the dataset, or pass "
        "DataLoaders.from_datasets(..., collate_fn=your_function)."
    )


@pytest.mark.parametrize(
    ("parts", "where", "second"),
    [
        ([torch.zeros(2, 3), torch.zeros(2, 4)], "batch", "(2, 4)"),
        ([{"p": torch.zeros(2, 3)}, {"p": torch.zeros(1, 4)}], "batch['p']", "(1, 4)"),
    ],
)
def test_predictions_that_differ_beyond_dim_0_are_refused_naming_both_shapes_and_the_fix(
    parts, where, second
):
    with pytest.raises(ValueError) as info:
        pluglearn.data.batch_ops.concat(parts)
    assert str(info.value) == (
        f"concat: {where} has shape (2, 3) in batch 0 but {second} in batch 1: tensors join on "
        "dim 0 only, so every other dimension must agree. Pad them to one length where they are "
        "made (predictions in `predict`, targets in the loader's collate_fn; e.g. to the "
        "dataset's longest sequence), or make them a list of per-item tensors."
    )


def test_the_per_item_list_rule_takes_one_count_per_batch():
    """LEAF_RULES is public: its concat refuses counts that do not pair with the batches, rather
    than joining the lists it could pair."""
    join = LEAF_RULES["items"].concat
    assert join([["a"], ["b", "c"]], [1, 2], "here") == ["a", "b", "c"]
    with pytest.raises(ValueError, match="zip"):
        join([["a"], ["b"]], [1], "here")
    with pytest.raises(ValueError, match="zip"):
        join([["a"]], [1, 1], "here")
