"""pluglearn.data.batch_ops refusing what it cannot do: each message in full, naming the place in
the batch, what was found and the fix; and the defaults that decide what a list is."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from pluglearn.data.batch_ops import collate, concat, count_items, inputs_of, targets_of, to_device
from tests.helpers import raised_by

zeros = torch.zeros
SPLIT_FIX = (
    "pluglearn knows of (it knows (inputs, targets) pairs and dicts with a 'labels' key): read "
    "learn.batch directly in your plugin, or make the dataset return (x, y) pairs."
)
ONE_ITEM_STRUCTURE = "make the dataset return one structure for every item."
ONE_BATCH_STRUCTURE = "return one structure for every batch."


# ------------------------------------------------------------------------- inputs, targets


@pytest.mark.parametrize(
    ("batch", "kind"),
    [((zeros(1), zeros(1), zeros(1)), "tuple"), (zeros(2), "Tensor")],
    ids=["three-fields", "a-tensor"],
)
def test_a_batch_neither_a_pair_nor_a_dict_has_no_inputs_nor_targets_named_by_its_type(batch, kind):
    assert raised_by(lambda: inputs_of(batch), TypeError) == (
        f"learn.xb: the batch is a {kind}, which has no inputs {SPLIT_FIX}"
    )
    assert raised_by(lambda: targets_of(batch), TypeError) == (
        f"learn.yb: the batch is a {kind}, which has no targets {SPLIT_FIX}"
    )


def test_a_dict_batch_without_labels_has_no_targets_and_the_error_lists_its_keys():
    with pytest.raises(KeyError) as info:  # str() of a KeyError is its message's repr
        targets_of({"ids": zeros(1), "mask": zeros(1)})
    assert info.value.args[0] == (
        "this dict batch has no 'labels' entry (keys: ids, mask), so it has no targets "
        "(learn.yb): name the targets 'labels' in the dataset's items."
    )


# ------------------------------------------------------------------------------- collate


def test_collate_refuses_an_empty_batch_and_counts_the_items_the_dataset_returned_as_none():
    empty = raised_by(lambda: collate([]), ValueError)
    assert empty == "collate needs at least one item: the batch is empty."
    assert raised_by(lambda: collate([None, (zeros(1), 1), None]), TypeError) == (
        "the dataset returned None for 2 of the 3 items of this batch: its __getitem__ must "
        "return the item, e.g. (x, y) (is a `return` missing?)."
    )


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([(zeros(1), 1), {"x": zeros(1)}], "have different types (tuple, dict)"),
        ([{"x": zeros(1), "y": 1}, {"x": zeros(1)}], "have different keys (['x', 'y'] and ['x'])"),
        (
            [(zeros(1), (1, 2)), (zeros(1), (1,))],
            "have different numbers of fields at item[1] (2 and 1)",
        ),
        ([(zeros(1), 1), ("a", 1)], "have different types at item[0] (Tensor, str)"),
    ],
    ids=["types", "keys", "nested-fields", "leaf-kinds"],
)
def test_items_of_different_structures_are_refused_naming_the_place_and_both_sides(items, expected):
    error = TypeError if "different types" in expected else ValueError  # a type, or a shape
    assert raised_by(lambda: collate(items), error) == (
        f"collate: the items of one batch {expected}: {ONE_ITEM_STRUCTURE}"
    )


def test_an_item_that_is_a_list_is_a_structure_whose_fields_errors_name():
    """At the top of an item a list is a structure (its fields collate one by one), so a
    tensor of another shape is named by its field, not as the whole item."""
    assert raised_by(lambda: collate([[zeros(2), "a"], [zeros(3), "b"]]), ValueError).startswith(
        "collate: the items' tensors at item[0] have different shapes [(2,), (3,)]"
    )


# -------------------------------------------------------------------------------- concat


def test_concat_refuses_no_batches_and_counts_that_do_not_pair_with_the_batches():
    none = raised_by(lambda: concat([]), ValueError)
    assert none == "concat needs at least one batch: the pass yielded none."
    assert raised_by(lambda: concat([zeros(1), zeros(1)], counts=[1]), ValueError) == (
        "concat: 2 batches but 1 counts."
    )


@pytest.mark.parametrize(
    ("parts", "options", "expected"),
    [
        ([(zeros(1), zeros(1)), {"x": zeros(1)}], {}, "batch 1 have different types (tuple, dict)"),
        ([[zeros(1)] * 2, (zeros(1), zeros(1))], {}, "batch 1 have different types (list, tuple)"),
        ([[zeros(1)] * 2, [zeros(1)]], {}, "batch 1 have different numbers of fields (2 and 1)"),
        (
            [(zeros(1), {"a": zeros(1)}), (zeros(1), {"b": zeros(1)})],
            {},
            "batch 1 have different keys at batch[1] (['a'] and ['b'])",
        ),
        (
            [(zeros(1), {"a": zeros(1)}), (zeros(1), {"b": zeros(1)})],
            {"name": "preds"},
            "batch 1 have different keys at preds[1] (['a'] and ['b'])",
        ),
        (
            [(zeros(1),), (zeros(1),), (zeros(1), zeros(1))],
            {},
            "batch 2 have different numbers of fields (1 and 2)",
        ),
        (  # below a batch's top a list is the items' own: the whole part differs in type
            [[zeros(1), zeros(1)], (zeros(1),)],
            {"top": False},
            "batch 1 have different types at batch (list, tuple)",
        ),
    ],
    ids=["types", "list-and-tuple", "list-lengths", "nested-keys", "named", "third-batch",
         "part-of-a-batch"],
)  # fmt: skip
def test_batches_of_different_structures_are_refused_naming_the_batches_and_the_place(
    parts, options, expected
):
    error = TypeError if "different types" in expected else ValueError  # a type, or a shape
    said = raised_by(lambda: concat(parts, **options), error)
    assert said == f"concat: batch 0 and {expected}: {ONE_BATCH_STRUCTURE}"


def test_a_leaf_of_another_kind_in_a_later_batch_is_refused_naming_both_types():
    assert raised_by(lambda: concat([(zeros(1), zeros(1)), (zeros(1), "a")]), TypeError) == (
        f"concat: batch[1] is a Tensor in batch 0 but a str in batch 1: {ONE_BATCH_STRUCTURE}"
    )


def test_a_batch_that_is_a_list_is_a_structure_by_default_and_a_list_of_items_below_the_top():
    parts = [[zeros(1), torch.ones(1)], [zeros(1), torch.ones(1)]]
    fields = concat(parts)  # the default top=True: each field joins its own
    assert [f.tolist() for f in fields] == [[0.0, 0.0], [1.0, 1.0]]
    items = concat(parts, top=False)  # a part of a batch: one entry per item, in item order
    assert [i.tolist() for i in items] == [[0.0], [1.0], [0.0], [1.0]]
    assert raised_by(
        lambda: concat([[zeros(2, 3), zeros(2)], [zeros(2, 4), zeros(2)]]), ValueError
    ).startswith("concat: batch[0] has shape (2, 3) in batch 0 but (2, 4) in batch 1")


# ---------------------------------------------------------------------- count, to_device


def test_a_batch_without_a_tensor_has_no_count_and_the_error_names_the_hook():
    assert raised_by(lambda: count_items(("a", "b")), TypeError) == (
        "cannot count the items of a batch of type tuple: it holds no tensor. Make the dataset "
        "return tensors (or numbers, which collate to tensors), or answer the count_items hook "
        "in a plugin."
    )


class RecordedMoves(torch.Tensor):
    """A tensor that records the keyword arguments of each ``.to`` call made on it."""

    moves: ClassVar[list[dict]] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.to:
            cls.moves.append(dict(kwargs or {}))
        return super().__torch_function__(func, types, args, kwargs)


def test_to_device_copies_blocking_unless_asked_and_passes_non_blocking_on():
    RecordedMoves.moves.clear()
    x = zeros(2).as_subclass(RecordedMoves)
    to_device({"x": x}, "cpu")
    to_device({"x": x}, "cpu", non_blocking=True)
    assert RecordedMoves.moves == [{"non_blocking": False}, {"non_blocking": True}]
