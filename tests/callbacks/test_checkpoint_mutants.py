"""Checkpoint: what its mutation survivors showed untested, in one process (the Ctrl-C paths
are otherwise tested in subprocesses, out of mutmut's reach): a Ctrl-C raised by a plugin stops
after the batch with a checkpoint, a second one stops at once with a note, the handler is put
back; the run ids, prefixes and the checks of the settings."""

from __future__ import annotations

import re
import signal

import pytest
import torch
from torch import nn

from pluglearn import DataLoaders, Learner, hookimpl
from pluglearn.checkpoint.files import RUN_ID, parse_name
from pluglearn.checkpoint.plugin import Checkpoint
from tests.helpers import tiny_data


def learner(plugins=()):
    x, y = tiny_data(40, seed=2)
    dls = DataLoaders.from_datasets((x[:32], y[:32]), (x[32:], y[32:]), batch_size=8, seed=1)
    torch.manual_seed(0)
    return Learner(nn.Linear(4, 3), dls, lr=0.1, plugins=list(plugins))


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


def test_a_ctrl_c_finishes_the_batch_saves_there_and_stops_naming_the_checkpoint(tmp_path, capsys):
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


def test_a_second_ctrl_c_stops_at_once_with_a_note_naming_the_newest_checkpoint(tmp_path):
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


def test_a_second_ctrl_c_during_the_write_says_the_partial_file_was_removed(tmp_path):
    ckpt = Checkpoint(tmp_path)
    with pytest.raises(KeyboardInterrupt) as stopped:
        learner([CtrlCWhileSaving(), ckpt]).fit(1)
    notes = [n for n in stopped.value.__notes__ if n.startswith("Checkpoint:")]
    assert notes == [  # and no "stopped mid-batch" note as well
        "Checkpoint: the second Ctrl-C came during the checkpoint write; its partial file was "
        "removed. The newest checkpoint is none."
    ]
    assert list(tmp_path.iterdir()) == []


def test_without_on_interrupt_the_handler_is_left_alone(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    seen = CtrlC(None)
    learner([seen, Checkpoint(tmp_path, on_interrupt=False)]).fit(1)
    assert seen.handler == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_batches": 0}, "Checkpoint(every_n_batches=0): give a positive int, or None."),
        ({"keep_last": True}, "Checkpoint(keep_last=True): give a positive int, or None."),
        ({"keep_last": 1.0}, "Checkpoint(keep_last=1.0): give a positive int, or None."),
        (
            {"every_epoch": False},
            "Checkpoint would never save: give every_n_batches=n and/or every_epoch=True.",
        ),
    ],
)
def test_bad_settings_are_refused_with_the_fix(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Checkpoint(tmp_path, **kwargs)


def test_one_batch_one_checkpoint_kept_and_a_save_outside_a_fit_is_a_run_of_its_own(tmp_path):
    ckpt = Checkpoint(tmp_path, every_n_batches=1, every_epoch=False, keep_last=1)
    assert ckpt.run_id is None and ckpt.latest is None
    learn = learner([ckpt])
    learn.fit(1)
    assert [(parse_name(p).steps, parse_name(p).epoch) for p in tmp_path.glob("*.pt")] == [(4, 0)]
    assert ckpt.run_id is None  # outside a fit
    path = ckpt.save(learn)
    assert RUN_ID.fullmatch(parse_name(path).run)
    assert ckpt.latest == path


def test_two_prefixes_in_one_directory_keep_their_own_last_files(tmp_path):
    a = Checkpoint(tmp_path, every_n_batches=1, keep_last=2, prefix="a")
    b = Checkpoint(tmp_path, every_n_batches=2, keep_last=1, prefix="b")
    learner([a, b]).fit(1)
    kept = {
        prefix: sorted(
            (parse_name(p).steps, parse_name(p).epoch) for p in tmp_path.glob(f"{prefix}-*")
        )
        for prefix in "ab"
    }  # each its own last files: batch 4's and the epoch end's (epoch 1 begins), or the latter
    assert kept == {"a": [(4, 0), (4, 1)], "b": [(4, 1)]}
