"""DDP under torchrun (gloo on 127.0.0.1): the same weights as one process, sharded loaders,
checkpoints written once and resumed bit-identically after a SIGKILL of the whole group, resume
with another number of processes, stopping together, one rank's error ending the group, and two
launchers joined by a c10d rendezvous (two "machines")."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pluglearn
from tests import processes
from tests.helpers import tiny_learner
from tests.jobs.launch import (
    ENV,
    JOB,
    free_port,
    launch,
    run_case,
    run_job,
    start_and_kill,
    torchrun,
)

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)


def assert_close(a: dict, b: dict, tol: float = 1e-10) -> None:
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= tol, key


def assert_equal(a: dict, b: dict) -> None:
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One process, global batch 8, three epochs."""
    return run_job(tmp_path_factory.mktemp("oracle"), nproc=1)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run_job(tmp_path_factory.mktemp("two"))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_ranks_with_half_batches_give_the_weights_of_one_process(oracle, two_ranks):
    assert two_ranks["world"] == 2 and oracle["world"] == 1
    assert_close(oracle["weights"], two_ranks["weights"])
    for one, two in zip(oracle["history"], two_ranks["history"], strict=True):
        for key in ("train_loss", "valid_loss", "accuracy"):
            assert one[key] == pytest.approx(two[key], rel=1e-12, abs=1e-12), key


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_each_rank_gets_its_contiguous_half_of_every_global_batch(oracle, two_ranks):
    (alone,), (rank0, rank1) = oracle["seen"], two_ranks["seen"]
    assert len(alone) == len(rank0) == len(rank1) == 18  # 6 global batches x 3 epochs
    for whole, a, b in zip(alone, rank0, rank1, strict=True):
        assert whole[:2] == a[:2] == b[:2]
        assert a[3] + b[3] == whole[3]  # disjoint, contiguous, in the global order
        assert len(a[3]) == -(-len(whole[3]) // 2)
    assert rank1[5][2] == []  # the last batch has 1 item: rank 1's slice is empty
    epochs = [sorted(x for s in alone if s[0] == e for x in s[3]) for e in range(3)]
    assert epochs[0] == epochs[1] == epochs[2]  # every item once per epoch
    assert [s[3] for s in alone[:6]] != [s[3] for s in alone[6:12]]  # reshuffled


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("loader", ["item", "multiprocess"])
def test_map_style_and_multiprocess_loaders_shard_exactly(tmp_path, oracle, loader):
    result = run_job(tmp_path, "--loader", loader, "--epochs", "2")
    alone = run_job(tmp_path / "alone", "--loader", loader, "--epochs", "2", nproc=1)
    assert_close(alone["weights"], result["weights"])
    assert result["history"][1]["valid_loss"] == pytest.approx(alone["history"][1]["valid_loss"])


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_gradient_accumulation_under_ddp_equals_one_process(tmp_path):
    two = run_job(tmp_path / "two", "--accum", "2", "--batch-size", "6")
    one = run_job(tmp_path / "one", "--accum", "2", "--batch-size", "6", nproc=1)
    assert_close(one["weights"], two["weights"])


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_compile_wraps_the_ddp_module_trains_like_one_process_and_validates_the_model(tmp_path):
    for accum in ("1", "2"):  # with accumulation too: it must see DDP through the compiled one
        args = ("--compile", "--accum", accum, "--batch-size", "6")
        two = run_job(tmp_path / f"two{accum}", *args, timeout=180)
        one = run_job(tmp_path / f"one{accum}", *args, nproc=1, timeout=180)
        assert_close(one["weights"], two["weights"])
        assert two["compiled"] == {(True, "DistributedDataParallel"), (False, "Sequential")}
        assert one["compiled"] == {(True, "Sequential"), (False, "Sequential")}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_distributed_sampler_gets_set_epoch_and_validation_counts_each_item_once(tmp_path):
    two = run_job(tmp_path / "two", "--loader", "sampler", "--epochs", "2")
    one = run_job(tmp_path / "one", "--loader", "sampler", "--epochs", "2", nproc=1)
    rank0 = two["seen"][0]
    first, second = ([s[3] for s in rank0 if s[0] == e] for e in (0, 1))
    assert first != second  # set_epoch(epoch): a new permutation each epoch
    # 23 validation items on 2 ranks: torch pads one repeat, which must not count
    model_valid = two["history"][-1]
    assert 0 < model_valid["accuracy"] <= 1
    # the valid metrics are those of the same weights over the 23 real items, alone
    from tests.jobs.ddp_job import data

    _, _, xv, yv = data()
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    net = net.double()
    net.load_state_dict(two["weights"])
    with torch.no_grad():
        preds = net(xv)
    loss = torch.nn.functional.cross_entropy(preds, yv).item()
    accuracy = (preds.argmax(1) == yv).double().mean().item()
    assert model_valid["valid_loss"] == pytest.approx(loss, rel=1e-12)
    assert model_valid["accuracy"] == pytest.approx(accuracy, rel=1e-12)
    assert one["world"] == 1


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_of_the_group_mid_epoch_then_resume_is_bit_identical(tmp_path, two_ranks):
    ckpt = tmp_path / "ckpt"
    start_and_kill(tmp_path / "killed", ckpt, at_batch=8)  # epoch 1, batch 2 of 6
    files = sorted(ckpt.glob("*.pt"))
    assert len(files) == 2  # keep_last=2, written once (rank 0), not once per rank
    state = torch.load(files[-1], weights_only=True)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    resumed = run_job(tmp_path / "out", "--ckpt", str(ckpt), "--resume")
    assert_equal(two_ranks["weights"], resumed["weights"])
    assert resumed["history"][-1]["train_loss"] == two_ranks["history"][-1]["train_loss"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_resume_on_another_number_of_processes_continues_the_same_global_order(tmp_path, two_ranks):
    ckpt = tmp_path / "ckpt"
    start_and_kill(tmp_path / "killed", ckpt, at_batch=9)
    kept = tmp_path / "kept"
    shutil.copytree(ckpt, kept)  # the resume below writes on into ckpt
    alone = run_job(tmp_path / "alone", "--ckpt", str(ckpt), "--resume", nproc=1)
    assert_close(two_ranks["weights"], alone["weights"])
    for key in ("train_loss", "valid_loss"):  # the running sums of both ranks were merged
        assert alone["history"][-1][key] == pytest.approx(two_ranks["history"][-1][key])
    # another global batch is refused, naming both batch sizes and both numbers of processes
    refused = processes.run(
        [sys.executable, str(JOB), str(tmp_path / "x"), "--ckpt", str(kept), "--resume",
         "--batch-size", "4"],
        warm=True, capture_output=True, text=True, timeout=60, env=ENV,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "batch_size=8 (this one has batch_size=4)" in refused.stderr
    assert "2 process(es) then, 1 now" in refused.stderr


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_nan_on_one_rank_stops_every_rank_at_the_same_batch(tmp_path, oracle):
    result = run_job(tmp_path, "--nan-rank", "1", "--nan-at", "3")  # the job asserts agreement
    assert result["stop_reason"].startswith("TerminateOnNaN: loss is nan at epoch 0, train batch 3")
    assert [len(s) for s in result["seen"]] == [4, 4]  # no rank trained past the stop


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_an_error_on_one_rank_ends_the_group_quickly_with_that_error(tmp_path):
    start = time.monotonic()
    done = processes.run(
        [*torchrun(2, free_port()), str(JOB), str(tmp_path), "--fail-rank", "1", "--fail-at", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    elapsed = time.monotonic() - start
    assert done.returncode != 0
    assert "ValueError: planted failure on rank 1" in done.stderr
    assert elapsed < 60  # not the 30-minute collective timeout


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_launchers_joined_by_c10d_rendezvous_train_like_one_process(tmp_path, oracle):
    port = free_port()
    launchers = [
        processes.popen(
            [*torchrun(1, port, nnodes=2, node_rank=rank), str(JOB), str(tmp_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for rank in (0, 1)
    ]
    errors = [p.communicate(timeout=120)[1] for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], errors
    result = torch.load(tmp_path / "result.pt", weights_only=False)
    assert result["world"] == 2
    assert_close(oracle["weights"], result["weights"])


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_example_trains_alike_under_torchrun_and_alone():
    example = Path(__file__).parents[2] / "examples" / "train_ddp.py"
    outputs = []
    for launcher in (torchrun(2, free_port()), [sys.executable]):  # the command users type
        done = processes.run(
            [*launcher, str(example), "--epochs", "2", "--target", "0.7"],
            warm=launcher == [sys.executable],
            capture_output=True,
            text=True,
            timeout=120,
            env=ENV,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        # nothing goes wrong on the way out either (an exit hook that raises leaves rc 0)
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        outputs.append(done.stdout.strip().splitlines()[-1])
    assert outputs[0].startswith("2 process(es): accuracy")
    assert outputs[0].split()[-1] == outputs[1].split()[-1]  # the same accuracy


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("hook", "accum"),
    # under accumulation the ranks agree before each backward (batches that do not step have
    # no gradient all-reduce to carry a mark)
    [("compute_loss", "1"), ("after_loss", "1"), ("after_loss", "2")],
)
def test_a_cancel_on_one_rank_before_the_backward_equals_one_process_cancelling_there(
    tmp_path, hook, accum
):
    plant = ["--cancel-in", hook, "--cancel-at", "3", "--epochs", "2", "--accum", accum]
    two = run_job(tmp_path / "two", *plant, "--cancel-rank", "1")
    one = run_job(tmp_path / "one", *plant, "--cancel-rank", "0", nproc=1)
    assert_close(one["weights"], two["weights"])  # the batch's step was skipped on every rank
    # train_iter 3 comes twice (a cancelled batch does not count): epoch 0's batch 3, then
    # epoch 1's first batch; every rank stopped both epochs there, as the one process did
    assert [len(s) for s in two["seen"]] == [5, 5] and len(one["seen"][0]) == 5


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_rank_whose_batches_are_all_cancelled_in_an_epoch_still_joins_the_metric_reduction(
    tmp_path,
):
    # rank 1 cancels its batch in after_loss (before AvgLoss counts it there) at train_iter 3,
    # which a cancelled batch does not advance: every later batch of the epoch is cancelled, so
    # in epoch 1 rank 1 counts no training item; it still joins the all-reduce of the sums
    # (it skipped it, and the ranks' collectives crossed: a gloo abort)
    plant = ["--cancel-in", "after_loss", "--cancel-at", "3", "--epochs", "2", "--cancel-batch"]
    two = run_job(tmp_path / "two", *plant, "--cancel-rank", "1")
    one = run_job(tmp_path / "one", *plant, "--cancel-rank", "0", nproc=1)
    assert_close(one["weights"], two["weights"])  # every cancelled batch skipped on every rank
    assert len(two["history"]) == len(one["history"]) == 2


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_cancel_after_the_step_takes_effect_at_the_next_batch_with_its_step_skipped(tmp_path):
    plant = ["--cancel-in", "after_batch", "--cancel-at", "3", "--epochs", "2"]
    two = run_job(tmp_path / "two", *plant, "--cancel-rank", "1")
    one = run_job(tmp_path / "one", *plant, "--cancel-rank", "0", nproc=1)
    assert_close(one["weights"], two["weights"])  # batch 4 was computed, not stepped
    # one process: 3 batches, then a whole epoch; two ranks: batch 3 too, computed, not stepped
    assert [len(s) for s in two["seen"]] == [10, 10] and len(one["seen"][0]) == 9


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("hook", ["before_fit", "before_epoch", "after_fit"])
def test_a_fit_cancel_on_one_rank_outside_the_batches_stops_every_rank_like_one_process(
    tmp_path, hook
):
    # before_fit: the rank that cancelled would skip the fit and leave the other waiting in
    # its first collective; the job also checks that every rank gives the same stop_reason
    plant = ["--cancel-in", hook, "--cancel-at", "1", "--epochs", "2"]
    two = run_job(tmp_path / "two", *plant, "--cancel-rank", "1", timeout=60)
    one = run_job(tmp_path / "one", *plant, "--cancel-rank", "0", nproc=1)
    assert_close(one["weights"], two["weights"])
    assert two["stop_reason"] == f"Probe: planted in {hook} on rank 1"
    assert one["stop_reason"] == f"Probe: planted in {hook} on rank 0"
    epochs = {"before_fit": 0, "before_epoch": 1, "after_fit": 2}[hook]
    assert len(two["history"]) == len(one["history"]) == epochs


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("hook", "kind", "where"),
    [
        ("predict", "Epoch", "train"),
        ("predict", "Batch", "train"),  # a batch's own skip too, in training
        ("backward", "Epoch", "train"),
        ("step", "Epoch", "train"),
        ("zero_grad", "Batch", "train"),
        ("compute_loss", "Epoch", "valid"),  # in validation only a batch's skip is rank-local
    ],
)
def test_a_cancel_from_a_step_hook_on_one_rank_is_refused_naming_the_hook(
    tmp_path, hook, kind, where
):
    plant = ["--cancel-in", hook, "--cancel-rank", "1", "--cancel-at", "2"]
    plant += ["--cancel-batch"] if kind == "Batch" else []
    plant += ["--cancel-valid", "--cancel-at", "0"] if where == "valid" else []
    launched = launch(JOB, [tmp_path, *plant], 2, warm=True, run_dir=tmp_path)
    done = processes.run(
        launched.command, capture_output=True, text=True, timeout=120, env=ENV,
        **launched.options,
    )  # fmt: skip
    assert done.returncode != 0
    assert (
        f"RuntimeError: DDP: Cancel{kind}Exception(planted in {hook} on rank 1) was raised by "
        f"the {hook!r} hook on rank 1, where the other ranks cannot follow it: under DDP every "
        "rank takes part in each batch's gradient all-reduce. Raise it from an event hook "
        "(before_batch, after_pred, after_loss, ...) or from compute_loss, and DDP stops every "
        "rank together at the next optimizer step."
    ) in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("hook", ["before_batch", "predict"])
def test_a_validation_batch_cancelled_on_one_rank_leaves_its_items_out_of_the_metrics(
    tmp_path, hook
):
    # rank 1 skips its slice of validation batch 0 (items 8 to 15 of the global batch of 16):
    # no collective runs in validation, so the other rank goes on; the metrics are those of the
    # other 15 items under the final weights, computed by hand
    plant = ["--cancel-in", hook, "--cancel-rank", "1", "--cancel-at", "0", "--cancel-batch"]
    two = run_job(tmp_path, *plant, "--cancel-valid", "--epochs", "1")
    from tests.jobs.ddp_job import data

    _, _, xv, yv = data()
    kept = torch.cat([torch.arange(0, 8), torch.arange(16, len(yv))])
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    net = net.double()
    net.load_state_dict(two["weights"])
    with torch.no_grad():
        preds = net(xv[kept])
    metrics = two["history"][-1]
    loss = torch.nn.functional.cross_entropy(preds, yv[kept]).item()
    assert metrics["valid_loss"] == pytest.approx(loss, rel=1e-12)
    accuracy = (preds.argmax(1) == yv[kept]).double().mean().item()
    assert metrics["accuracy"] == pytest.approx(accuracy, rel=1e-12)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ctrl_c_on_one_rank_saves_one_checkpoint_stops_every_rank_and_resumes_exactly(
    tmp_path, two_ranks
):
    ckpt = tmp_path / "ckpt"
    run = run_job(tmp_path / "cut", "--ckpt", str(ckpt), "--sigint-rank", "1", "--sigint-at", "7")
    (msg0, *where0), (msg1, *where1) = run["interrupted"]  # every rank stopped, at one batch
    assert where0 == where1 == [1, 8]
    assert msg0 == msg1 and msg0.startswith("interrupted; resume with")
    assert [len(s) for s in run["seen"]] == [8, 8]
    resumed = run_job(tmp_path / "out", "--ckpt", str(ckpt), "--resume")
    assert_equal(two_ranks["weights"], resumed["weights"])


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "args",
    [
        ("--accum", "1"),
        ("--accum", "2"),
        ("--accum", "1", "--every-parameter-used"),  # DDP() waits for each one's gradient
        ("--accum", "1", "--object"),
    ],
    ids=["dict", "dict-accumulated", "dict-every-parameter-used", "object"],
)
def test_an_empty_slice_of_a_model_whose_output_is_no_tensor_trains_like_one_process(
    tmp_path, args
):
    # the rank with no item adds a zero gradient built from the output's tensors (a dict's),
    # from the parameters where no walk sees one (an object of its own); DDP(
    # find_unused_parameters=True) passed through for an unused parameter, and the mark of a
    # held cancel probed on the one-element parameter (accumulated: no weight of zero hides it)
    one = run_case(tmp_path / "one", "dict-output", *args, nproc=1)[0]
    for rank in run_case(tmp_path / "two", "dict-output", *args):
        for key, value in one["weights"].items():
            assert (rank["weights"][key] - value).abs().max().item() <= 1e-10, key


@pytest.mark.parametrize("plugin", ["DDP", "FSDP"])
def test_alone_it_warns_once_naming_the_launch_and_trains_as_without_it(monkeypatch, plugin):
    monkeypatch.delenv("WORLD_SIZE", raising=False)  # not launched by torchrun
    with pytest.warns(UserWarning) as caught:
        alone = getattr(pluglearn, plugin)()
    assert [str(w.message) for w in caught] == [
        f"{plugin}(): this process was not launched by torchrun with several processes "
        f"(WORLD_SIZE unset or 1), so it trains alone and {plugin}() does nothing; launch with "
        "`torchrun --nproc_per_node N script.py` to train on N processes."
    ]
    assert "src/pluglearn" not in caught[0].filename  # the user's line, not pluglearn's
    assert not alone.created  # no process group made, none to destroy at exit
    with_it, without = tiny_learner([alone]), tiny_learner()
    with_it.fit(2)
    without.fit(2)
    assert_equal(with_it.model.state_dict(), without.model.state_dict())
    assert with_it.wrapped_model is None and alone.module is None
