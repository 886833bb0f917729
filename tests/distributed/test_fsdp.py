"""FSDP (FSDP2's fully_shard) under torchrun (gloo on 127.0.0.1, CPU): two ranks, each holding
half of every parameter, train to the weights of one process; a SIGKILL of the whole group and a
resume give the uninterrupted run's weights bit for bit."""

from __future__ import annotations

import sys

import pytest
import torch

from tests import processes
from tests.jobs.launch import ENV, JOB, run_job, start_and_kill

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

N_PARAMS = 5 * 16 + 16 + 16 * 3 + 3  # the job's MLP


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run_job(tmp_path_factory.mktemp("fsdp"), "--fsdp")


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("batch_size", [8, 11])
def test_two_sharded_ranks_with_half_batches_give_the_weights_of_one_process(
    tmp_path, fsdp_run, batch_size
):
    # 8: equal halves; 11: slices of 6 and 5 (weighted), and 23 validation items end in a
    # batch of 1, so rank 1 skips its empty slice and catches up with a zero-item forward
    size = ("--batch-size", str(batch_size))
    one = run_job(tmp_path / "one", *size, nproc=1)
    two = fsdp_run if batch_size == 8 else run_job(tmp_path / "two", "--fsdp", *size)
    assert two["world"] == 2 and one["world"] == 1
    assert sum(two["held"]) == N_PARAMS and max(two["held"]) < N_PARAMS  # sharded
    assert two["full_keys"] == [4, 0]  # the full state on rank 0 only (the others' memory)
    # every validation pass: the 23 items split 12 + 11, each rank's in batches of 8 (8 + 4,
    # 8 + 3), or of 11 (11 + 1, and 11: rank 1 catches up with a forward of no item, then its
    # own last batch is put back)
    forwards = [[8, 4], [8, 3]] if batch_size == 8 else [[11, 1], [11, 0]]
    after = [4, 3] if batch_size == 8 else [1, 11]
    for rank, (passes, batches) in enumerate(two["valid"]):
        assert passes == [forwards[rank]] * 3 and batches == [after[rank]] * 3, rank
    for key in one["weights"]:
        assert (one["weights"][key] - two["weights"][key]).abs().max().item() <= 1e-10, key
    assert len(one["history"]) == len(two["history"]) == 3
    for a, b in zip(one["history"], two["history"], strict=True):
        assert a["accuracy"] == b["accuracy"]
        for key in ("train_loss", "valid_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-12), key


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_of_the_sharded_group_mid_epoch_then_resume_is_bit_identical(tmp_path, fsdp_run):
    ckpt = tmp_path / "ckpt"
    start_and_kill(tmp_path / "killed", ckpt, at_batch=8, args=("--fsdp",))  # epoch 1, batch 2
    files = sorted(ckpt.glob("*.pt"))
    assert len(files) == 2  # written once, by rank 0
    state = torch.load(files[-1], weights_only=True)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert {k: tuple(v.shape) for k, v in state["model"].items()}["0.weight"] == (16, 5)  # whole
    resumed = run_job(tmp_path / "out", "--ckpt", str(ckpt), "--resume", "--fsdp")
    for key in fsdp_run["weights"]:
        assert torch.equal(fsdp_run["weights"][key], resumed["weights"][key]), key
    for a, b in zip(fsdp_run["history"][-1:], resumed["history"][-1:], strict=True):
        assert [a[k] for k in ("train_loss", "valid_loss")] == [
            b[k] for k in ("train_loss", "valid_loss")
        ]
    # the optimizer state is keyed by parameter name: without FSDP() the resume is refused
    refused = processes.run(
        [sys.executable, str(JOB), str(tmp_path / "x"), "--ckpt", str(ckpt), "--resume"],
        warm=True,
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert refused.returncode != 0
    assert "was written under FSDP()" in refused.stderr


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_gradient_accumulation_under_fsdp_is_refused_naming_the_fix(tmp_path):
    with pytest.raises(AssertionError) as refused:
        run_job(tmp_path, "--fsdp", "--accum", "2", "--batch-size", "6", timeout=60)
    assert (
        "ValueError: FSDP() with GradientAccumulation: not built yet (its group's item count is "
        "summed across ranks only under DDP, so the step would not be one process's). Raise "
        "batch_size instead (it is the global batch), or use DDP()."
    ) in str(refused.value)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_fsdp_alone_trains_as_one_process(tmp_path):
    alone = run_job(tmp_path / "fsdp", "--fsdp", "--epochs", "1", nproc=1)
    plain = run_job(tmp_path / "plain", "--epochs", "1", nproc=1)
    for key in plain["weights"]:
        assert torch.equal(plain["weights"][key], alone["weights"][key]), key


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("first_epochs", [0, 1])
def test_lr_find_on_a_sharded_model_leaves_the_next_fit_bit_identical(tmp_path, first_epochs):
    # 0: lr_find before the first fit (the sweep's own fit shards the model); 1: after a fit,
    # on a sharded model (the sweep captures and puts back the full state, a collective)
    split = ("--first-epochs", str(first_epochs))
    swept = run_job(tmp_path / "swept", "--fsdp", *split, "--lr-find")
    plain = run_job(tmp_path / "plain", "--fsdp", *split)
    for key in plain["weights"]:
        assert torch.equal(plain["weights"][key], swept["weights"][key]), key
    untimed = [[{k: v for k, v in r.items() if k != "time"} for r in run["history"]]
               for run in (plain, swept)]  # fmt: skip
    assert untimed[0] == untimed[1] and len(untimed[0]) == 3


@pytest.mark.parametrize("layers", [int, (torch.nn.Linear, "Linear"), torch.nn.Linear(2, 2)])
def test_layers_that_are_not_module_classes_are_refused_naming_an_example(layers):
    from pluglearn import FSDP

    shown = layers if isinstance(layers, tuple) else (layers,)
    with pytest.raises(TypeError) as refused:
        FSDP(layers=layers)
    assert str(refused.value) == (
        f"FSDP(layers={shown!r}): layers must be nn.Module subclasses, e.g. "
        "FSDP(layers=(nn.TransformerEncoderLayer,))."
    )
