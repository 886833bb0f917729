"""Checkpoint and Ctrl-C, continued (in one process, a plugin pressing it): during validation
the checkpoint is the epoch's end, a batch that saves anyway is written once, a second Ctrl-C
before any checkpoint says there is none."""

from __future__ import annotations

import signal

import pytest
import torch

from pluglearn import hookimpl
from pluglearn.checkpoint.files import load_checkpoint, parse_name
from pluglearn.checkpoint.plugin import Checkpoint
from tests.callbacks.test_checkpoint_mutants import CtrlC, learner


class CtrlCInValidation:
    """Presses Ctrl-C in the first validation batch of epoch 0."""

    @hookimpl
    def after_batch(self, learn):
        if not learn.training and learn.epoch == 0:
            signal.raise_signal(signal.SIGINT)


class CountsSaves:
    """Counts the checkpoints written: each one asks every plugin for its state once."""

    def __init__(self) -> None:
        self.saves = 0

    @hookimpl
    def state_dict(self):
        self.saves += 1
        return {}


def checkpoint_notes(error: BaseException) -> list[str]:
    return [n for n in getattr(error, "__notes__", []) if n.startswith("Checkpoint:")]


def test_a_ctrl_c_in_validation_saves_the_epoch_end_and_resumes_exactly(tmp_path):
    done = learner()
    done.fit(2)
    ckpt = Checkpoint(tmp_path, every_n_batches=100, every_epoch=False)
    with pytest.raises(KeyboardInterrupt) as stopped:
        learner([CtrlCInValidation(), ckpt]).fit(2)
    assert checkpoint_notes(stopped.value) == []  # its own stop, with the file in its message
    assert (parse_name(ckpt.latest).steps, parse_name(ckpt.latest).epoch) == (4, 1)
    assert load_checkpoint(ckpt.latest)["loop"]["position"] == 0  # the next epoch's start
    resumed = learner()
    resumed.fit(2, resume_from=ckpt.latest)
    for p, q in zip(done.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    ("press", "written"),
    [(CtrlC((0, 1)), 2), (CtrlCInValidation(), 4 + 1)],  # batches 0, 1 / all 4 and the epoch's
    ids=["in-a-batch", "at-the-epoch-end"],
)
def test_a_ctrl_c_where_a_checkpoint_is_saved_anyway_writes_it_once(tmp_path, press, written):
    counts = CountsSaves()
    ckpt = Checkpoint(tmp_path, every_n_batches=1, keep_last=None)
    with pytest.raises(KeyboardInterrupt):
        learner([press, counts, ckpt]).fit(2)
    assert counts.saves == written == len(list(tmp_path.glob("*.pt")))


def test_a_second_ctrl_c_before_any_checkpoint_says_there_is_none(tmp_path):
    ckpt = Checkpoint(tmp_path)  # every epoch: nothing saved in batch 0
    with pytest.raises(KeyboardInterrupt) as stopped:
        learner([CtrlC((0, 0), times=2), ckpt]).fit(1)
    assert checkpoint_notes(stopped.value) == [
        "Checkpoint: stopped mid-batch, so no checkpoint was saved now; the newest is none."
    ]
