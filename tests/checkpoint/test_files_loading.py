"""Reading a checkpoint: what a file is checked for before it is used (every record's CRC, a safe
load, its format and version), and the error for each file that fails, naming it and the fix:
corrupt, truncated, unreadable, not a pluglearn checkpoint, a directory with none yet."""

from __future__ import annotations

import datetime
import re
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from pluglearn.checkpoint.files import (
    FORMAT,
    VERSION,
    CheckpointError,
    NoCheckpointError,
    _unreadable,
    checkpoints_in,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)
from pluglearn.checkpoint.resume import capture
from tests.helpers import exact, raised_by
from tests.jobs import resume_job


def a_state(**loop):
    return {"format": FORMAT, "version": VERSION, "loop": {"train_iter": 1, "epoch": 0, **loop}}


def test_an_unreadable_file_is_named_with_what_went_wrong(tmp_path):
    path = tmp_path / "ckpt-s000000001-e0000.pt"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(CheckpointError, match=exact(
        f"checkpoint {path} is corrupt or truncated (BadZipFile: File is not a zip file): resume "
        "from an earlier checkpoint, or pass its directory to use the newest readable one."
    )):  # fmt: skip
        load_checkpoint(path)


def test_files_that_are_no_pluglearn_checkpoints_are_refused_with_the_fix(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save({"weight": torch.zeros(2)}, bare)
    with pytest.raises(CheckpointError, match=exact(
        f"{bare} is not a pluglearn checkpoint (no '{FORMAT}' marker): for bare weights use "
        "model.load_state_dict(torch.load(path, weights_only=True))."
    )):  # fmt: skip
        load_checkpoint(bare)
    newer = tmp_path / "newer.pt"
    torch.save({**a_state(), "version": VERSION + 1}, newer)
    with pytest.raises(CheckpointError, match=exact(
        f"{newer} was written by a newer pluglearn (format {VERSION + 1} > {VERSION}): upgrade "
        "pluglearn to resume it."
    )):  # fmt: skip
        load_checkpoint(newer)
    with pytest.raises(NoCheckpointError, match=exact(
        f"no checkpoint file at {tmp_path / 'gone.pt'}: pass a file or a directory of them (or "
        "fit(..., missing_ok=True) to start fresh when no checkpoint was written yet)."
    )):  # fmt: skip
        load_checkpoint(tmp_path / "gone.pt")
    with pytest.raises(CheckpointError) as directory:
        load_checkpoint(tmp_path)  # exists, but is no file
    assert type(directory.value) is CheckpointError


def test_a_directory_without_checkpoints_says_so_and_how_to_start_fresh(tmp_path):
    with pytest.raises(NoCheckpointError, match=exact(
        f"no checkpoint to resume: {tmp_path / 'nope'} does not exist. Check the path, or pass "
        "fit(..., missing_ok=True) to start fresh when no checkpoint was written yet."
    )):  # fmt: skip
        load_latest(tmp_path / "nope")
    with pytest.raises(NoCheckpointError, match=exact(
        f"no checkpoint (*.pt) in {tmp_path}: was the Checkpoint plugin saving there? Pass "
        "fit(..., missing_ok=True) to start fresh when no checkpoint was written yet."
    )):  # fmt: skip
        load_latest(tmp_path)


def a_record(**extra):
    return {"format": FORMAT, "version": VERSION, "loop": {"train_iter": 1, "epoch": 0}, **extra}


def test_a_record_changed_after_the_write_fails_its_crc_check(tmp_path):
    path = save_checkpoint(a_record(w=torch.full((256,), 7.0)), tmp_path / "c.pt")
    data = bytearray(path.read_bytes())
    at = data.find(torch.full((4,), 7.0).numpy().tobytes())
    data[at + 1] ^= 0xFF
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as archive:
        damaged = archive.testzip()
    assert damaged is not None
    with pytest.raises(CheckpointError, match=re.escape(
        f"checkpoint {path} is corrupt or truncated: its record {damaged!r} fails its CRC check "
        "(the file changed after it was written): resume from an earlier checkpoint, or pass its "
        "directory to use the newest readable one."
    )):  # fmt: skip
        load_checkpoint(path)


def test_a_file_holding_an_object_a_safe_load_refuses_is_not_loaded(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save(a_record(when=datetime.date(2020, 1, 1)), path)
    with pytest.raises(Exception) as theirs:
        torch.load(path, weights_only=True)
    last = str(theirs.value).splitlines()[-1][:200]
    with pytest.raises(CheckpointError, match=re.escape(
        f"checkpoint {path} holds an object that a safe load (weights_only=True) refuses, so it "
        "is not resumed: it was not written by pluglearn's Checkpoint, or a plugin's state held "
        f"such an object ({last})."
    )):  # fmt: skip
        load_checkpoint(path)


def test_a_file_of_the_first_format_has_no_version_and_loads(tmp_path):
    state = a_record()
    del state["version"]
    path = save_checkpoint(state, tmp_path / "v0.pt")
    assert "version" not in load_checkpoint(path)


def test_an_error_without_a_message_is_still_named():
    assert str(_unreadable(Path("c.pt"), EOFError())) == (
        "checkpoint c.pt is corrupt or truncated (EOFError: ): resume from an earlier checkpoint, "
        "or pass its directory to use the newest readable one."
    )


def test_truncated_newest_checkpoint_in_a_directory_is_skipped_with_a_warning(tmp_path):
    learn = resume_job.make_learner(str(tmp_path))
    learn.fit(1)
    newest = checkpoints_in(tmp_path)[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(newest)
    resumed = resume_job.make_learner(str(tmp_path / "again"))
    with pytest.warns(UserWarning, match="skipping an unreadable checkpoint"):
        resumed.fit(2, resume_from=tmp_path)
    assert resumed.epoch == 1 and resumed.train_iter == 40


@pytest.fixture
def one_epoch_checkpoint(tmp_path, make_learner) -> Path:
    """A real checkpoint of one epoch of the tiny learner."""
    learn = make_learner()
    learn.fit(1)
    return save_checkpoint(capture(learn, epoch_end=True), tmp_path / "ckpt.pt")


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def flip_header(data: bytes) -> bytes:
    return bytes(b ^ 0xFF for b in data[:64]) + data[64:]


@pytest.mark.parametrize("damage", [half, flip_header, lambda data: b""], ids=["half", "flip", "0"])
def test_a_corrupt_checkpoint_names_the_file_and_the_fix(
    one_epoch_checkpoint, damage, make_learner
):
    one_epoch_checkpoint.write_bytes(damage(one_epoch_checkpoint.read_bytes()))
    learn = make_learner()
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    text = raised_by(lambda: learn.fit(2, resume_from=one_epoch_checkpoint), CheckpointError)
    assert f"checkpoint {one_epoch_checkpoint} is corrupt or truncated" in text
    assert "resume from an earlier checkpoint" in text
    assert all(torch.equal(v, learn.model.state_dict()[k]) for k, v in before.items())


def test_a_flipped_byte_inside_the_weights_is_detected(one_epoch_checkpoint, make_learner):
    data = bytearray(one_epoch_checkpoint.read_bytes())
    saved = torch.load(one_epoch_checkpoint, weights_only=True)["model"]["weight"]
    at = bytes(data).find(saved.numpy().tobytes())  # the stored weight matrix, as raw floats
    assert at > 0
    data[at + 1] ^= 0x40
    one_epoch_checkpoint.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails its CRC check"):
        make_learner().fit(2, resume_from=one_epoch_checkpoint)


def test_a_file_that_is_not_a_checkpoint_says_how_to_load_it(tmp_path, make_learner):
    bare = tmp_path / "weights.pt"
    torch.save(nn.Linear(4, 3).state_dict(), bare)
    text = raised_by(lambda: make_learner().fit(1, resume_from=bare), CheckpointError)
    assert f"{bare} is not a pluglearn checkpoint" in text and "model.load_state_dict" in text
    text = raised_by(
        lambda: make_learner().fit(1, resume_from=tmp_path / "nope.pt"), CheckpointError
    )
    assert "no checkpoint to resume" in text and "missing_ok=True" in text and "nope.pt" in text
