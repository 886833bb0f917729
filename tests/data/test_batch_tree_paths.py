"""What pluglearn.data.batch_tree says about a batch: where each leaf lies (``path_names``), the
first place two structures differ with the fix (``mismatch``, exact messages), and the leaves and
structure text a batch digest reads (``all_leaves``, ``leaves_and_structure``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import pytest

from pluglearn.data.batch_tree import all_leaves, leaves_and_structure, mismatch, path_names

ITEMS = "collate: the items of one batch"
BATCHES = "concat: batch 0 and batch 1"
ITEM_FIX = "make the dataset return one structure for every item"
BATCH_FIX = "return one structure for every batch"


@dataclasses.dataclass
class Pair:
    x: object
    y: object


class Named(NamedTuple):
    a: object
    b: object


class Frozen(Mapping):
    """A mapping that is not a dict: batch_tree registers it on sight."""

    def __init__(self, entries: dict[str, Any]) -> None:
        self._entries = dict(entries)

    def __getitem__(self, key: str) -> Any:
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


@pytest.mark.parametrize(
    ("first", "other", "what", "root", "top", "error"),
    [
        (
            {"x": 1, "y": [1]}, {"x": 1, "y": (1,)}, ITEMS, "item", True,
            TypeError(f"{ITEMS} have different types at item['y'] (list, tuple): {ITEM_FIX}."),
        ),
        (
            {"a": 1}, {"b": 1}, ITEMS, "item", True,
            ValueError(f"{ITEMS} have different keys (['a'] and ['b']): {ITEM_FIX}."),
        ),
        (
            (1, 2), (1, 2, 3), BATCHES, "preds", True,
            ValueError(f"{BATCHES} have different numbers of fields (2 and 3): {BATCH_FIX}."),
        ),
        (  # a list at the top is a batch's fields; deeper, one list of per-item things
            [1, 2], [1, 2, 3], BATCHES, "targets", True,
            ValueError(f"{BATCHES} have different numbers of fields (2 and 3): {BATCH_FIX}."),
        ),
        (
            (Pair(1, {"k": 1}),), (Pair(1, {"j": 1}),), BATCHES, "preds", True,
            ValueError(
                f"{BATCHES} have different keys at preds[0].y (['k'] and ['j']): {BATCH_FIX}."
            ),
        ),
        (
            {1: Named(1, 2)}, {1: Named(1, (2, 3))}, ITEMS, "item", True,
            TypeError(f"{ITEMS} have different types at item[1][1] (int, tuple): {ITEM_FIX}."),
        ),
        (
            {(1, 2): (1,)}, {(1, 2): (1, 2)}, ITEMS, "item", True,
            ValueError(
                f"{ITEMS} have different numbers of fields at item[(1, 2)] (1 and 2): {ITEM_FIX}."
            ),
        ),
        (
            Pair(1, 2), Named(1, 2), BATCHES, "batch", True,
            TypeError(f"{BATCHES} have different types (Pair, Named): {BATCH_FIX}."),
        ),
        (  # not at the top: both lists are single leaves, so the structures are shown whole
            [1, 2], [1, 2, 3], BATCHES, "targets", False,
            TypeError(
                f"{BATCHES} have different structures (PyTreeSpec(*) and PyTreeSpec(*)): "
                f"{BATCH_FIX}."
            ),
        ),
    ],
)  # fmt: skip
def test_a_mismatch_names_the_first_difference_its_place_and_the_fix(
    first, other, what, root, top, error
):
    found = mismatch(first, other, what, root, top)
    assert type(found) is type(error) and str(found) == str(error)


def test_a_mismatch_in_a_dataclass_first_seen_there_names_its_field():
    @dataclasses.dataclass
    class Fresh:  # a type no walk has met yet: mismatch itself must register it
        x: object

    found = mismatch({"a": (Fresh([1]),)}, {"a": (Fresh((1,)),)}, ITEMS, "item", top=False)
    assert (
        str(found) == f"{ITEMS} have different types at item['a'][0].x (list, tuple): {ITEM_FIX}."
    )


def test_a_mismatch_is_about_a_batchs_top_unless_told_otherwise():
    assert str(mismatch([1], [1, 2], BATCHES, "targets")) == (
        f"{BATCHES} have different numbers of fields (1 and 2): {BATCH_FIX}."
    )


def test_path_names_say_where_each_leaf_lies_as_code():
    assert path_names([1, {"a": 2}], True, "batch") == ["batch[0]", "batch[1]['a']"]
    assert path_names([1, {"a": 2}], False, "batch") == ["batch"]  # one per-item list
    assert path_names((1, Pair(2, [3, 4])), True, "b") == ["b[0]", "b[1].x", "b[1].y"]
    by_name = (Named(1, 2), Frozen({"k": 3}))
    assert path_names(by_name, True, "b") == ["b[0].a", "b[0].b", "b[1]['k']"]


def test_all_leaves_walks_into_lists_and_the_structure_text_names_keys_and_classes():
    assert all_leaves({"b": 1, "a": [2, 3]}) == [2, 3, 1]
    assert all_leaves(Pair([1, (2,)], {"k": 3})) == [1, 2, 3]
    assert leaves_and_structure({"a": [1]}) == ([1], "PyTreeSpec({'a': [*]})")
    leaves, text = leaves_and_structure(Pair(1, (2,)))
    assert leaves == [1, 2]
    assert text == "PyTreeSpec(CustomTreeNode(Pair[None], [*, (*,)]), namespace='pluglearn')"
    assert leaves_and_structure({"a": 1})[1] != leaves_and_structure({"b": 1})[1]


def test_a_dataclass_first_met_by_a_digest_is_walked_into_not_taken_as_one_leaf():
    @dataclasses.dataclass
    class FreshLeaves:  # no walk has met this type: all_leaves must register it on sight
        x: object
        y: object

    @dataclasses.dataclass
    class FreshStructure:
        x: object

    assert all_leaves([FreshLeaves(1, (2,))]) == [1, 2]
    leaves, text = leaves_and_structure({"k": FreshStructure(3)})
    assert leaves == [3] and "FreshStructure" in text and "namespace='pluglearn'" in text
