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
