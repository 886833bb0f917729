"""The tree of a batch: node types registered in pluglearn's optree namespace only, rebuilt
with their own type and without their constructors, lists per item below the top."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, UserDict
from typing import NamedTuple

import optree
import pytest
import torch
import torch.utils._pytree as torch_pytree

from pluglearn.data.batch_tree import NAMESPACE, flatten, mismatch, path_names, unflatten, walk_map


@dataclasses.dataclass(frozen=True, slots=True)
class Slotted:
    x: torch.Tensor
    calls: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "calls", self.calls + 1)


class _Base(NamedTuple):
    a: object
    b: object


class Counted(_Base):
    """A named tuple whose __new__ counts its calls."""

    made = 0

    def __new__(cls, a, b):
        Counted.made += 1
        return super().__new__(cls, a, b)


class Keyed(UserDict):
    """A mapping that is not a dict (as Hugging Face's BatchEncoding)."""


def test_dataclasses_and_named_tuples_are_rebuilt_without_their_constructors():
    made = Counted.made
    tree = (Slotted(torch.ones(2)), Counted(torch.ones(1), "z"))
    doubled = walk_map(lambda t: t * 2 if isinstance(t, torch.Tensor) else t, tree)
    assert type(doubled[0]) is Slotted and doubled[0].calls == 1  # __post_init__ ran once
    assert torch.equal(doubled[0].x, torch.full((2,), 2.0))
    assert type(doubled[1]) is Counted and Counted.made == made + 1  # only the one above
    assert torch.equal(doubled[1].a, torch.full((1,), 2.0)) and doubled[1].b == "z"
    with pytest.raises(dataclasses.FrozenInstanceError):
        doubled[0].x = torch.zeros(2)  # still frozen


def test_registration_changes_nothing_outside_pluglearn_s_namespace():
    tree = {"s": Slotted(torch.ones(1)), "k": Keyed(a=torch.ones(1)), "c": Counted(1, 2)}
    assert len(flatten(tree, top=True).leaves) == 5  # registered here on first sight
    leaves, spec = optree.tree_flatten(tree)  # optree's global namespace: as before
    assert any(isinstance(leaf, Slotted) for leaf in leaves) and "CustomTreeNode" not in str(spec)
    assert any(isinstance(leaf, Keyed) for leaf in leaves)
    made = Counted.made
    optree.tree_map(lambda v: v, Counted(1, 2))  # optree's own named tuples call __new__
    assert Counted.made == made + 2
    assert torch_pytree.tree_leaves(Slotted(torch.ones(1)))[0].__class__ is Slotted


def test_a_user_s_own_registration_in_the_namespace_stands():
    @dataclasses.dataclass
    class Opaque:
        x: torch.Tensor

    optree.register_pytree_node(
        Opaque, lambda o: ([], o.x, None), lambda x, _: Opaque(x), namespace=NAMESPACE
    )
    try:
        assert flatten((Opaque(torch.ones(1)),), top=True).leaves == []
    finally:
        optree.unregister_pytree_node(Opaque, namespace=NAMESPACE)


def test_mappings_keep_their_type_and_order_dicts_walk_in_sorted_key_order():
    tree = {"b": 1, "a": OrderedDict(z=2, y=3), "c": Keyed(q=4, p=5)}
    flat = flatten(tree, top=True)
    assert flat.leaves == [2, 3, 1, 4, 5]
    rebuilt = unflatten(flat, [v * 10 for v in flat.leaves])
    assert list(rebuilt) == ["b", "a", "c"] and type(rebuilt["c"]) is Keyed
    assert list(rebuilt["a"].items()) == [("z", 20), ("y", 30)] and rebuilt["c"]["p"] == 50


def test_a_list_is_a_structure_at_the_top_and_one_entry_per_item_below():
    top = flatten([torch.zeros(2), ["a", "b"]], top=True)
    assert len(top.leaves) == 2 and top.leaves[1] == ["a", "b"] and top.top_list
    assert type(unflatten(top, top.leaves)) is list
    part = flatten(["a", "b"], top=False)  # learn.yb, predictions: their own list is per item
    assert part.leaves == [["a", "b"]]
    assert walk_map(str.upper, (["a", ["b"]],)) == (["A", ["B"]],)  # the maps walk into lists


def test_paths_and_mismatches_name_the_place_in_the_batch():
    batch = (torch.zeros(1), {"a": [1], "b": Slotted(torch.ones(1))}, Counted(1, "z"))
    names = path_names(batch, True, "batch")
    assert names == ["batch[0]", "batch[1]['a']", "batch[1]['b'].x", "batch[1]['b'].calls",
                     "batch[2].a", "batch[2].b"]  # fmt: skip
    error = mismatch((1, {"a": 1}), (1, {"a": 1, "b": 2}), "collate: the items", "item")
    assert isinstance(error, ValueError)
    assert "collate: the items have different keys at item[1] (['a'] and ['a', 'b'])" in str(error)
    assert "one structure for every item" in str(error)
    error = mismatch((1, Counted(1, 2)), (1, (1, 2)), "concat: batch 0 and batch 1", "preds")
    assert isinstance(error, TypeError) and "at preds[1] (Counted, tuple)" in str(error)
