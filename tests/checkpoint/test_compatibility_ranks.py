"""Each rank's view of a checkpoint (``rank_view``, the rules of pluglearn.checkpoint.resume's
module doc, on hand-made states): the same number of processes takes its own record; another
number merges running sums into rank 0 and keeps what agrees, or is refused naming both numbers;
damaged per-rank records are refused; states compared through and through."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from pluglearn import CheckpointError
from pluglearn.checkpoint.compatibility import rank_view
from tests.support.checkpoints import checkpoint, refused

P = Path("run.pt")


REFUSE = "checkpoint run.pt was written by 2 process(es) and this run has {}: "


def saved_by(*ranks, position=3):
    return {"loop": {"position": position}, "ranks": list(ranks), "world_size": len(ranks),
            "rng": "rank 0's", "plugins": {}, "loader": None}  # fmt: skip


def rank(rng, plugins, loader=(("cursor", 8),)):
    return {"rng": rng, "plugins": plugins, "loader": dict(loader) if loader else None}


def test_a_one_process_checkpoint_is_its_own_view():
    state = {"loop": {"position": 0}, "rng": "r", "plugins": {"p": 1}, "loader": {"cursor": 0}}
    assert rank_view(state, P, 0, 1) == state


def test_the_same_number_of_processes_takes_each_rank_own_record():
    a, b = (
        rank("a", {"m": {"total": 1.0, "count": 1}}),
        rank("b", {"m": {"total": 2.0, "count": 3}}),
    )
    view = rank_view(saved_by(a, b), P, 1, 2)
    assert (view["rng"], view["plugins"], view["loader"]) == ("b", b["plugins"], b["loader"])


@pytest.mark.parametrize("world", [1, 3])
def test_another_number_merges_running_sums_into_rank_0_and_keeps_what_agrees(world):
    a = rank("a", {"m": {"total": 1.5, "count": 2}, "same": {"k": torch.ones(2)}})
    b = rank("b", {"m": {"total": 2.0, "count": 3}, "same": {"k": torch.ones(2)}})
    views = [rank_view(saved_by(a, b), P, r, world) for r in range(world)]
    assert views[0]["plugins"]["m"] == {"total": 3.5, "count": 5}
    for r, view in enumerate(views):
        assert view["loader"] == {"cursor": 8}
        assert torch.equal(view["plugins"]["same"]["k"], torch.ones(2))
        assert view["rng"] == ("a", "b")[r % 2]
        if r:
            assert view["plugins"]["m"] == {"total": 0.0, "count": 0}


def test_another_number_is_refused_when_the_state_cannot_be_split():
    a, b = rank("a", {"acc": {"total": 1, "grads": [1]}}), rank("b", {"acc": {"total": 2}})
    with pytest.raises(CheckpointError, match=re.escape(
        REFUSE.format(3) + "plugin 'acc' saved a different state on each rank (e.g. an open "
        "gradient-accumulation group), which cannot be split across 3 process(es). Resume with "
        "2 process(es), or from a checkpoint written where that state agrees (an epoch's end)."
    )):  # fmt: skip
        rank_view(saved_by(a, b), P, 0, 3)
    other = rank("b", {}, loader=(("cursor", 16),))
    with pytest.raises(CheckpointError, match=re.escape(
        REFUSE.format(1) + "the ranks' loader states differ, so they cannot be split across 1 "
        "process(es). Resume with 2 process(es)."
    )):  # fmt: skip
        rank_view(saved_by(rank("a", {}), other), P, 0, 1)
    stateless = [rank(r, {}, loader=None) for r in "ab"]
    with pytest.raises(CheckpointError, match=re.escape(
        REFUSE.format(1) + "its training loader has no state_dict (a torch DataLoader: its "
        "sampler splits the data by the number of processes), so the order would change. Resume "
        "with 2 process(es), or use DataLoaders.from_datasets (batch_size is then the global "
        "batch, the same on any number of processes)."
    )):  # fmt: skip
        rank_view(saved_by(*stateless), P, 0, 1)
    with pytest.raises(CheckpointError, match="its training loader has no state_dict"):
        rank_view(saved_by(stateless[0], rank("b", {})), P, 0, 1)  # rank 0's loader decides
    assert rank_view(saved_by(*stateless, position=0), P, 0, 1)["loader"] is None  # epoch start


@pytest.mark.parametrize("ranks", ["not a list", [{"rng": 1, "plugins": {}}]])
def test_a_damaged_per_rank_record_is_refused(ranks):
    with pytest.raises(CheckpointError, match=re.escape(
        "checkpoint run.pt has a damaged per-rank record: resume from another checkpoint."
    )):  # fmt: skip
        rank_view({**saved_by(), "ranks": ranks}, P, 0, 1)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (torch.ones(2), torch.ones(2), True),
        (torch.ones(2), torch.zeros(2), False),
        ({"k": [1, (2.0, "s")]}, {"k": [1, (2.0, "s")]}, True),
        ({"k": 1}, {"k": 2}, False),
        ({"k": 1}, [1], False),
        ([1], 5, False),
        ([torch.ones(1), 2], (torch.ones(1), 2), True),  # a tuple and a list alike
        ([1, [2]], [1, [3]], False),
        ([1, 2], [1], False),
        (1, 1.0, False),  # another type: not the same state
    ],
)
def test_states_are_the_same_when_equal_through_and_through(a, b, same):
    from pluglearn.checkpoint.compatibility import _same

    assert _same(a, b) is same
    assert _same(b, a) is same


def test_a_checkpoint_of_two_processes_whose_loaders_differ_is_refused_naming_it(tmp_path):
    state = checkpoint(tmp_path)
    other_loader = {**state["loader"], "cursor": state["loader"]["cursor"] + 8}
    state["ranks"] = [
        {"rng": state["rng"], "plugins": state["plugins"], "loader": state["loader"]},
        {"rng": state["rng"], "plugins": state["plugins"], "loader": other_loader},
    ]
    assert refused(tmp_path, state) == (
        "checkpoint <path> was written by 2 process(es) and this run has 1: the ranks' loader "
        "states differ, so they cannot be split across 1 process(es). Resume with 2 process(es)."
    )
