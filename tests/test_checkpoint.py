"""Checkpoints and exact resume: SIGKILL and Ctrl-C at random batches, atomic writes, bad files."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pluglearn import CancelFitException, DataLoaders, Learner, hookimpl
from pluglearn.checkpoint.files import (
    CheckpointError,
    checkpoints_in,
    load_checkpoint,
    save_checkpoint,
)
from pluglearn.checkpoint.plugin import Checkpoint
from pluglearn.checkpoint.resume import capture
from tests.helpers import DieAtStep, EventLog, batches, tiny_data
from tests.jobs import JOBS
from tests.jobs.resume_job import make_learner, run_and_signal

JOB = JOBS / "resume_job.py"
BATCHES_PER_EPOCH, EPOCHS = 20, 3


def run_job(directory: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(JOB), str(directory), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The final weights of a run that was never interrupted."""
    tmp = tmp_path_factory.mktemp("reference")
    result = run_job(tmp / "ckpt", "--out", str(tmp / "ref.pt"))
    assert result.returncode == 0, result.stderr
    return load_weights(tmp / "ref.pt")


def assert_bit_identical(weights: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]):
    assert weights.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(weights[name], value), f"{name} differs after resume"


def assert_resumed_after(stdout: str, saved_at: int) -> None:
    """The resumed job trained batches ``saved_at + 1 ...`` only: it did not start over (a
    resume that is silently ignored would give the same weights, from batch 1)."""
    trained = [int(line.split()[1]) for line in stdout.splitlines() if line.startswith("batch ")]
    assert trained == list(range(saved_at + 1, BATCHES_PER_EPOCH * EPOCHS + 1))


def saved_at(directory: Path) -> int:
    """The training step of the newest checkpoint in ``directory``."""
    return load_checkpoint(checkpoints_in(directory)[-1])["loop"]["train_iter"]


@pytest.mark.timeout(300)
def test_sigkill_at_random_batches_then_resume_is_bit_identical(tmp_path, reference):
    cuts = random.Random(7).sample(range(1, BATCHES_PER_EPOCH * EPOCHS), 2)
    for cut in [BATCHES_PER_EPOCH, *cuts]:  # an epoch boundary and two random batches
        directory = tmp_path / f"cut{cut}"
        returncode, _ = run_and_signal(directory, cut, signal.SIGKILL)
        assert returncode == -signal.SIGKILL
        assert checkpoints_in(directory), "the job was killed before any checkpoint"
        step = saved_at(directory)
        assert cut <= step < BATCHES_PER_EPOCH * EPOCHS  # killed after batch `cut` was saved
        resumed = run_job(directory, "--resume", "--out", str(tmp_path / f"out{cut}.pt"))
        assert resumed.returncode == 0, resumed.stderr
        assert_bit_identical(load_weights(tmp_path / f"out{cut}.pt"), reference)
        assert_resumed_after(resumed.stdout, step)


@pytest.mark.timeout(120)
def test_ctrl_c_saves_a_checkpoint_after_the_batch_then_resume_is_bit_identical(
    tmp_path, reference
):
    returncode, stderr = run_and_signal(tmp_path / "ckpt", 27, signal.SIGINT)
    assert returncode != 0 and "KeyboardInterrupt: interrupted; resume with" in stderr
    step = saved_at(tmp_path / "ckpt")
    # saved after the batch that was running when Ctrl-C came (later if the machine is slow)
    assert 27 <= step < BATCHES_PER_EPOCH * EPOCHS
    resumed = run_job(tmp_path / "ckpt", "--resume", "--out", str(tmp_path / "out.pt"))
    assert resumed.returncode == 0, resumed.stderr
    assert_bit_identical(load_weights(tmp_path / "out.pt"), reference)
    assert_resumed_after(resumed.stdout, step)


def test_resume_starts_at_the_cut_without_replaying_batches(tmp_path):
    class StopAt:
        @hookimpl
        def after_batch(self, learn):
            if learn.training and learn.train_iter == 25:
                raise RuntimeError("die")

    learn = make_learner(str(tmp_path))
    with pytest.raises(RuntimeError, match="die"):
        learn.fit(EPOCHS, plugins=[StopAt()])
    saved_at = load_checkpoint(checkpoints_in(tmp_path)[-1])["loop"]["train_iter"]
    assert saved_at == 24  # batch 25 raised before its checkpoint (Checkpoint runs trylast)
    resumed = make_learner(str(tmp_path))
    log = EventLog()
    resumed.fit(EPOCHS, resume_from=tmp_path, plugins=[log])
    train_batches = sum(1 for e in log.events if e == "after_backward")
    assert train_batches == BATCHES_PER_EPOCH * EPOCHS - saved_at  # nothing before the cut
    assert resumed.train_iter == BATCHES_PER_EPOCH * EPOCHS


def test_keep_last_and_names_sort_in_run_order(tmp_path):
    learn = make_learner(str(tmp_path))
    learn.fit(1)
    files = checkpoints_in(tmp_path)
    assert len(files) == 2  # keep_last=2 in the job
    steps = [load_checkpoint(f)["loop"]["train_iter"] for f in files]
    epochs = [load_checkpoint(f)["loop"]["epoch"] for f in files]
    assert steps == [20, 20] and epochs == [0, 1]  # the last batch, then the epoch's end


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path):
    learn = make_learner(str(tmp_path / "unused"))
    learn.fit(1)
    path = save_checkpoint(capture(learn, epoch_end=True), tmp_path / "ckpt.pt")
    before = path.read_bytes()
    broken = capture(learn, epoch_end=True)
    broken["plugins"]["Bad"] = {"fn": lambda: None}  # torch.save cannot pickle a lambda
    with pytest.raises((AttributeError, pickle_error_types())):
        save_checkpoint(broken, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    load_checkpoint(path)


def pickle_error_types() -> type[Exception]:
    import pickle

    return pickle.PicklingError


def test_truncated_newest_checkpoint_in_a_directory_is_skipped_with_a_warning(tmp_path):
    learn = make_learner(str(tmp_path))
    learn.fit(1)
    newest = checkpoints_in(tmp_path)[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(newest)
    resumed = make_learner(str(tmp_path / "again"))
    with pytest.warns(UserWarning, match="skipping an unreadable checkpoint"):
        resumed.fit(2, resume_from=tmp_path)
    assert resumed.epoch == 1 and resumed.train_iter == 40


def test_checkpoint_of_another_model_names_the_keys(tmp_path):
    learn = make_learner(str(tmp_path))
    learn.fit(1)
    x, y = tiny_data(8, n_in=20)
    other = Learner(
        nn.Sequential(nn.Linear(20, 32), nn.Linear(32, 3)), DataLoaders(batches(x, y, 4))
    )
    with pytest.raises(CheckpointError, match=r"different model.*missing keys: 1.weight") as info:
        other.fit(1, resume_from=tmp_path)
    assert "unexpected keys: 3.weight" in str(info.value)
    assert "shape mismatches" in str(info.value) and "0.weight (64, 20) != (32, 20)" in str(
        info.value
    )


def test_stop_reason_survives_a_resume(tmp_path):
    class StopAfterOne:
        @hookimpl
        def after_epoch(self, learn):
            raise CancelFitException("enough after one epoch")

    learn = make_learner(str(tmp_path))
    learn.fit(EPOCHS, plugins=[StopAfterOne()])
    assert learn.stop_reason == "StopAfterOne: enough after one epoch"
    resumed = make_learner(str(tmp_path))
    with pytest.warns(UserWarning, match="had stopped"):
        resumed.fit(EPOCHS, resume_from=tmp_path)
    assert resumed.stop_reason == "StopAfterOne: enough after one epoch"
    assert resumed.train_iter == BATCHES_PER_EPOCH  # it did not train past the stop


def test_a_loader_without_state_replays_to_the_cut_with_a_warning(tmp_path):
    def learner(directory=tmp_path):
        torch.manual_seed(0)
        x, y = tiny_data(40, n_in=4)
        dls = DataLoaders(batches(x[:32], y[:32], 4), batches(x[32:], y[32:], 4))
        return Learner(nn.Linear(4, 3), dls, plugins=[Checkpoint(directory, every_n_batches=1)])

    reference = learner(tmp_path / "reference")
    reference.fit(2)

    class Die:
        @hookimpl
        def after_batch(self, learn):
            if learn.training and learn.train_iter == 11:
                raise RuntimeError("die")

    with pytest.raises(RuntimeError):
        learner().fit(2, plugins=[Die()])
    resumed = learner()
    with pytest.warns(UserWarning, match="replays 2 batches"):  # saved at step 10 = 8 + 2
        resumed.fit(2, resume_from=tmp_path)
    for a, b in zip(reference.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


class _TrainSteps:
    """The training steps a fit ran (``train_iter`` after each training batch)."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    @hookimpl
    def after_batch(self, learn):
        if learn.training:
            self.steps.append(learn.train_iter)


def _map_style_learner(directory: Path) -> Learner:
    """A generic map-style dataset, so the default loader is the scratch DataLoader."""
    from pluglearn.scratch.data import Dataset

    torch.manual_seed(0)
    x, y = tiny_data(50, n_in=4)
    dls = DataLoaders.from_datasets(Dataset(x[:40], y[:40]), Dataset(x[40:], y[40:]), 8, seed=3)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.25), nn.Linear(8, 3))
    return Learner(model, dls, plugins=[Checkpoint(directory, every_n_batches=1)])


@pytest.mark.parametrize("cut", [2, 5, 6, 11])  # 5 batches an epoch: 5 ends epoch 0
def test_resume_with_the_scratch_dataloader_is_bit_identical(tmp_path, cut):
    reference = _map_style_learner(tmp_path / "reference")
    reference.fit(3)
    with pytest.raises(RuntimeError, match="die"):
        _map_style_learner(tmp_path / "run").fit(3, plugins=[DieAtStep(cut)])
    step = saved_at(tmp_path / "run")
    assert step == cut - 1  # batch `cut` raised before its own checkpoint
    resumed, ran = _map_style_learner(tmp_path / "run"), _TrainSteps()
    resumed.fit(3, resume_from=tmp_path / "run", plugins=[ran])
    for a, b in zip(reference.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert resumed.metrics["train_loss"] == reference.metrics["train_loss"]
    assert ran.steps == list(range(step + 1, 16))  # not from scratch: 15 steps in 3 epochs
