"""Calls outside a fit's own passes are rank-local (torchrun, 2 gloo ranks): ``validate()``,
``get_preds()`` and ``predict()`` after a fit or from a training hook, on every rank or on rank
0 alone, read the whole validation set on that rank with no collective, and give one process's
results. Under FSDP a forward is a collective, so a call on one rank alone is refused quickly
(and one on every rank works)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.jobs.launch import run_case
from tests.jobs.users_job import data

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)


def assert_metrics(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-12), key


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_validate_get_preds_and_predict_on_one_rank_or_all_give_one_process_results(tmp_path):
    one = run_case(tmp_path / "one", "local", nproc=1)[0]
    two = run_case(tmp_path / "two", "local", timeout=60)  # a stray collective hangs
    # from a training hook, on rank 0 alone: validate and predict, as one process there
    metrics, preds = two[0]["hook"]
    assert_metrics(one["hook"][0], metrics)
    assert torch.allclose(one["hook"][1], preds, rtol=0, atol=1e-12)
    assert two[1]["hook"] == (None, None)
    # after the fit: get_preds on every rank gives every validation item, in order
    targets = data()[3]
    for rank in two:
        got_preds, got_targets = rank["get_preds"]
        assert torch.equal(got_targets, targets)
        assert torch.allclose(got_preds, one["get_preds"][0], rtol=0, atol=1e-12)
    # and validate on rank 0 alone, then a collective of both ranks that nothing got ahead of
    assert_metrics(one["validate"], two[0]["validate"])
    assert "validate" not in two[1]
    assert two[0]["after"] == two[1]["after"] == [0, 1]
    # DDP() joined torchrun's group, made by its own call on each rank; alone it made none
    assert [rank["created"] for rank in two] == [True, True] and one["created"] is False


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_get_preds_with_a_distributed_sampler_gives_every_item_once_in_order(tmp_path):
    two = run_case(tmp_path, "local", "--sampler")
    _, _, xv, yv = data()
    net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    net.load_state_dict(two[0]["weights"])
    with torch.no_grad():
        expected = net(xv)  # the 23 items; the sampler pads the ranks' shards to 12 each
    for rank in two:
        preds, targets = rank["get_preds"]
        assert torch.equal(targets, yv)
        assert torch.allclose(preds, expected, rtol=0, atol=1e-12)
    loss = torch.nn.functional.cross_entropy(expected, yv).item()
    assert two[0]["validate"]["valid_loss"] == pytest.approx(loss, rel=1e-12)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_under_fsdp_a_call_on_one_rank_is_refused_and_one_on_every_rank_works(tmp_path):
    one = run_case(tmp_path / "one", "local", "--fsdp", nproc=1)[0]
    two = run_case(tmp_path / "two", "local", "--fsdp")
    refused = two[0]["refused"]
    assert refused.startswith("FSDP: learn.validate() was called on rank 0, and the other ranks")
    assert "Call learn.validate() on every rank" in refused
    for rank in two:  # get_preds on every rank: the whole set, one process's predictions
        preds, targets = rank["get_preds"]
        assert torch.equal(targets, data()[3])
        assert torch.allclose(preds, one["get_preds"][0], rtol=0, atol=1e-10)
