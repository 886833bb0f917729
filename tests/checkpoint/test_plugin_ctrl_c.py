"""Checkpoint and Ctrl-C, in one process (a plugin presses it): the batch finishes, a checkpoint is
saved there and the fit stops naming it; during validation the checkpoint is the epoch's end; a
batch that saves anyway is written once; a second Ctrl-C stops at once with a note (naming the
newest checkpoint, or saying there is none, or that the partial file was removed); the handler
is put back, and left alone without on_interrupt or in a fit from another thread."""

from __future__ import annotations

import signal
import threading

import pytest
import torch

from pluglearn import hookimpl
from pluglearn.checkpoint.files import load_checkpoint, parse_name
from pluglearn.checkpoint.plugin import Checkpoint


@pytest.fixture
def learner(small_learner):
    """tests/checkpoint/conftest.py's small Learner."""
    return small_learner


class CtrlC:
    """Presses Ctrl-C ``times`` times in training batch ``at = (epoch, batch)``."""

    def __init__(self, at, times=1) -> None:
        self.at, self.times = at, times
        self.handler = None  # the SIGINT handler the batch saw

    @hookimpl
    def after_batch(self, learn):
        self.handler = signal.getsignal(signal.SIGINT)
        if learn.training and (learn.epoch, learn.iter) == self.at:
            for _ in range(self.times):
                signal.raise_signal(signal.SIGINT)


def test_a_ctrl_c_finishes_the_batch_saves_there_and_stops_naming_the_checkpoint(
    tmp_path, capsys, learner
):
    done = learner()
    done.fit(2)
    before = signal.getsignal(signal.SIGINT)
    press = CtrlC((0, 1))
    ckpt = Checkpoint(tmp_path)  # every epoch only: the Ctrl-C saves a checkpoint of its own
    with pytest.raises(KeyboardInterrupt) as stopped:
        learner([press, ckpt]).fit(2)
    assert press.handler == ckpt._on_sigint
    assert capsys.readouterr().out.endswith(
        "\nCtrl-C: finishing this batch to save a checkpoint (press Ctrl-C again to stop at once)\n"
    )
    assert signal.getsignal(signal.SIGINT) == before  # put back after the fit
    path = ckpt.latest
    assert (parse_name(path).steps, parse_name(path).epoch) == (2, 0)  # after batch 1 of epoch 0
    assert str(stopped.value) == f"interrupted; resume with fit(..., resume_from='{path}')"
    resumed = learner([Checkpoint(tmp_path)])
    resumed.fit(2, resume_from=path)
    for p, q in zip(done.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_second_ctrl_c_stops_at_once_with_a_note_naming_the_newest_checkpoint(tmp_path, learner):
    ckpt = Checkpoint(tmp_path, every_n_batches=1)
    with pytest.raises(KeyboardInterrupt) as stopped:
        learner([CtrlC((0, 2), times=2), ckpt]).fit(1)
    assert parse_name(ckpt.latest).steps == 2  # batch 2 was not saved
    assert (
        "Checkpoint: stopped mid-batch, so no checkpoint was saved now; the newest is "
        f"{ckpt.latest}."
    ) in stopped.value.__notes__


class CtrlCWhileSaving:
    """Presses Ctrl-C in batch 0, then again while the checkpoint of that batch is written."""

    def __init__(self) -> None:
        self.pressed = False

    @hookimpl
    def after_batch(self, learn):
        if learn.training and not self.pressed:
            self.pressed = True
            signal.raise_signal(signal.SIGINT)

    @hookimpl
    def state_dict(self):
        if self.pressed:
            signal.raise_signal(signal.SIGINT)
        return {}


def test_a_second_ctrl_c_during_the_write_says_the_partial_file_was_removed(tmp_path, learner):
    ckpt = Checkpoint(tmp_path)
    with pytest.raises(KeyboardInterrupt) as stopped:
        learner([CtrlCWhileSaving(), ckpt]).fit(1)
    notes = [n for n in stopped.value.__notes__ if n.startswith("Checkpoint:")]
    assert notes == [  # and no "stopped mid-batch" note as well
        "Checkpoint: the second Ctrl-C came during the checkpoint write; its partial file was "
        "removed. The newest checkpoint is none."
    ]
    assert list(tmp_path.iterdir()) == []


def test_without_on_interrupt_the_handler_is_left_alone(tmp_path, learner):
    before = signal.getsignal(signal.SIGINT)
    seen = CtrlC(None)
    learner([seen, Checkpoint(tmp_path, on_interrupt=False)]).fit(1)
    assert seen.handler == before


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


def test_a_ctrl_c_in_validation_saves_the_epoch_end_and_resumes_exactly(tmp_path, learner):
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
def test_a_ctrl_c_where_a_checkpoint_is_saved_anyway_writes_it_once(
    tmp_path, press, written, learner
):
    counts = CountsSaves()
    ckpt = Checkpoint(tmp_path, every_n_batches=1, keep_last=None)
    with pytest.raises(KeyboardInterrupt):
        learner([press, counts, ckpt]).fit(2)
    assert counts.saves == written == len(list(tmp_path.glob("*.pt")))


def test_a_second_ctrl_c_before_any_checkpoint_says_there_is_none(tmp_path, learner):
    ckpt = Checkpoint(tmp_path)  # every epoch: nothing saved in batch 0
    with pytest.raises(KeyboardInterrupt) as stopped:
        learner([CtrlC((0, 0), times=2), ckpt]).fit(1)
    assert checkpoint_notes(stopped.value) == [
        "Checkpoint: stopped mid-batch, so no checkpoint was saved now; the newest is none."
    ]


def test_fits_from_another_thread_leave_ctrl_c_alone(tmp_path, learner):
    before = signal.getsignal(signal.SIGINT)
    ckpt = Checkpoint(tmp_path)
    learn = learner([ckpt])
    learn.fit(1)  # the main thread: the handler is set and put back
    errors = []

    def fit():
        try:
            learn.fit(1)
        except BaseException as error:  # reported below
            errors.append(error)

    thread = threading.Thread(target=fit)
    thread.start()
    thread.join()
    assert errors == []
    assert signal.getsignal(signal.SIGINT) == before
