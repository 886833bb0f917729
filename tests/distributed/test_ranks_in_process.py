"""The rank facts on this process, with no second rank: alone, in a real gloo group of one, the
environment ``torchrun`` describes (its world size, an elastic restart's store) and the backend a
machine gets. The two-rank behaviour is tested in the jobs of the other files here."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from pluglearn.distributed import ranks
from tests.jobs.launch import free_port

pytestmark = pytest.mark.skipif(
    not dist.is_available(), reason="torch.distributed is not available"
)


@pytest.fixture
def group_of_one(tmp_path):
    """A real gloo process group of this process alone, destroyed afterwards."""
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_alone_every_fact_is_one_process_s_and_the_group_rank_is_0():
    assert not ranks.is_initialized() and not ranks.is_distributed()
    assert ranks.is_main_process()
    assert (ranks.rank(), ranks.group_rank(), ranks.world_size()) == (0, 0, 1)
    assert ranks.device() == "cpu"
    with ranks.local():
        assert not ranks.is_local()  # no group: nothing to be local to
    # the collectives are the identity, with no group to run them in
    assert ranks.reduce_sum(1.5, -2.0) == [1.5, -2.0]
    assert ranks.gather_to_main({"a": 1}) == [{"a": 1}]
    assert ranks.all_gather(("x", 3)) == [("x", 3)]
    assert ranks.broadcast_from_main([7]) == [7]
    ranks.barrier()


def test_in_a_group_of_one_the_collectives_run_and_give_this_process_s_values(group_of_one):
    assert ranks.is_initialized() and ranks.is_distributed()
    assert (ranks.rank(), ranks.group_rank(), ranks.world_size()) == (0, 0, 1)
    assert ranks.is_main_process() and ranks.device() == "cpu"
    assert ranks.reduce_sum(1.5, -2.0) == [1.5, -2.0]  # through a real all_reduce
    assert ranks.reduce_sum(1 + 1e-12) == [1 + 1e-12]  # in float64: float32 would give 1.0
    assert ranks.gather_to_main({"a": 1}) == [{"a": 1}]
    assert ranks.all_gather(("x", 3)) == [("x", 3)]
    assert ranks.broadcast_from_main([7]) == [7]
    ranks.barrier()
    assert ranks.rendezvous("alone", timeout=0.1)  # nobody to wait for


def test_rank_local_mode_in_a_group_of_one_is_no_local_call(group_of_one):
    # a group of one has no other rank to leave out: is_local() is for groups of several
    with ranks.local():
        assert not ranks.is_distributed() and not ranks.is_local()
        with ranks.local():  # nested
            assert not ranks.is_distributed()
        assert not ranks.is_distributed()
    assert ranks.is_distributed()


@pytest.mark.parametrize(("told", "size"), [(None, 1), ("1", 1), ("3", 3)])
def test_the_launched_world_size_is_torchrun_s_or_1(monkeypatch, told, size):
    if told is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", told)
    assert ranks.launched_world_size() == size


def test_a_world_size_that_is_no_number_is_refused_naming_it(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError) as refused:
        ranks.launched_world_size()
    assert str(refused.value) == (
        "WORLD_SIZE='two' in the environment is not a number of processes: torchrun sets it "
        "(`torchrun --nproc_per_node N script.py`); unset it to train on one process."
    )
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        ranks.init_from_env()  # DDP() joins the group through this


def test_not_launched_with_several_ranks_no_group_is_made(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert ranks.init_from_env() is False
    assert not ranks.is_initialized()


@pytest.mark.parametrize(
    ("nccl", "env", "expected"),
    [
        (True, {"LOCAL_RANK": "1"}, ("nccl", torch.device("cuda", 1))),
        (True, {}, ("nccl", torch.device("cuda", 0))),  # LOCAL_RANK unset: GPU 0
        (False, {"LOCAL_RANK": "1"}, ("gloo", None)),  # no GPU, or a torch without NCCL
    ],
)
def test_the_group_is_nccl_on_the_local_rank_s_gpu_where_there_is_one_else_gloo(
    nccl, env, expected
):
    how = ranks.group_settings(nccl, env)
    assert how == {"backend": expected[0], "device_id": expected[1]}


def elastic_env(monkeypatch, port: int, restart: str, agent_store: str) -> None:
    told = {"TORCHELASTIC_RESTART_COUNT": restart, "TORCHELASTIC_USE_AGENT_STORE": agent_store}
    told |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "1", "WORLD_SIZE": "3"}
    for key, value in told.items():
        monkeypatch.setenv(key, value)


@pytest.mark.timeout(60)
def test_a_restarted_try_meets_in_the_agent_s_store_under_a_prefix_of_its_own(monkeypatch):
    port = free_port()
    agent = dist.TCPStore(
        "127.0.0.1", port, 1, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=20)
    )
    elastic_env(monkeypatch, port, restart="2", agent_store="True")
    where = ranks._restart_store()
    assert (where["rank"], where["world_size"]) == (1, 3)
    where["store"].set("address", "rank 1's")
    try2 = dist.PrefixStore("pluglearn/try2/", agent)  # the other ranks of this try
    assert try2.get("address") == b"rank 1's"
    assert not agent.check(["address"])  # not where try 0 met (torch's own env://)
    try2.set("seen", "yes")
    assert where["store"].get("seen") == b"yes"


@pytest.mark.parametrize(("restart", "agent_store"), [(None, "True"), ("2", "False")])
def test_without_the_agent_s_store_the_group_meets_as_torch_s_env_says(
    monkeypatch, restart, agent_store
):
    # no store is opened at all: MASTER_PORT names a port nobody listens on
    elastic_env(monkeypatch, free_port(), restart="0", agent_store=agent_store)
    if restart is None:
        monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    assert ranks._restart_store() == {}
