"""Checkpoint files, continued: the order of a directory's files and runs, the records a file is
checked for (CRC, a safe load, the format version), with hand-made files."""

from __future__ import annotations

import datetime
import os
import re
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from pluglearn.checkpoint.files import (
    FORMAT,
    VERSION,
    CheckpointError,
    _unreadable,
    load_checkpoint,
    load_latest,
    new_run_id,
    parse_name,
    remove_stale_temporaries,
    runs_in,
    save_checkpoint,
)


def a_state(**extra):
    return {"format": FORMAT, "version": VERSION, "loop": {"train_iter": 1, "epoch": 0}, **extra}


def test_files_of_no_run_sort_unparsed_names_first_and_hidden_files_are_ignored(tmp_path):
    for name in ["ckpt-s000000002-e0000.pt", "ckpt-s000000000-e0000.pt", "weights.pt"]:
        save_checkpoint(a_state(), tmp_path / name)
    save_checkpoint(a_state(), tmp_path / ".ckpt-s000000009-e0000.pt")  # hidden: not listed
    (run,) = runs_in(tmp_path)
    assert run.id is None
    assert [p.name for p in run.files] == [
        "weights.pt",
        "ckpt-s000000000-e0000.pt",
        "ckpt-s000000002-e0000.pt",
    ]
    assert parse_name("ckpt-s000000001-e0000xyz") is None  # not a .pt file


def test_runs_written_at_the_same_time_put_the_files_without_a_run_first(tmp_path):
    run = new_run_id()
    with_id = save_checkpoint(a_state(), tmp_path / f"ckpt-{run}-s000000001-e0000.pt")
    without = save_checkpoint(a_state(), tmp_path / "ckpt-s000000001-e0000.pt")
    for path in (with_id, without):
        os.utime(path, ns=(10**18, 10**18))
    assert [r.id for r in runs_in(tmp_path)] == [None, run]


def test_one_run_is_resumed_without_a_warning_and_two_are_named(tmp_path):
    first = new_run_id()
    save_checkpoint(a_state(), tmp_path / f"ckpt-{first}-s000000001-e0000.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_latest(tmp_path)
    second = new_run_id()
    save_checkpoint(a_state(), tmp_path / f"ckpt-{second}-s000000001-e0000.pt")
    os.utime(tmp_path / f"ckpt-{first}-s000000001-e0000.pt", ns=(1, 1))
    chosen = f"holds checkpoints of 2 runs: resuming the one written most recently, run {second}"
    with pytest.warns(UserWarning, match=re.escape(chosen)):
        load_latest(tmp_path)


def test_a_checkpoint_deleted_since_it_was_listed_is_passed_over(tmp_path):
    run = new_run_id()
    older = save_checkpoint(a_state(), tmp_path / f"ckpt-{run}-s000000001-e0000.pt")
    (tmp_path / f"ckpt-{run}-s000000002-e0000.pt").symlink_to(tmp_path / "gone.pt")
    assert load_latest(tmp_path)[0] == older
    other = save_checkpoint(a_state(), tmp_path / f"ckpt-{new_run_id()}-s000000001-e0000.pt")
    os.utime(other, ns=(5, 5))  # written long ago, yet after a run with a vanished file
    assert [r.id for r in runs_in(tmp_path)] == [run, parse_name(other).run]


def test_a_record_changed_after_the_write_fails_its_crc_check(tmp_path):
    path = save_checkpoint(a_state(w=torch.full((256,), 7.0)), tmp_path / "c.pt")
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
    torch.save(a_state(when=datetime.date(2020, 1, 1)), path)
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
    state = a_state()
    del state["version"]
    path = save_checkpoint(state, tmp_path / "v0.pt")
    assert "version" not in load_checkpoint(path)


def test_an_error_without_a_message_is_still_named():
    assert str(_unreadable(Path("c.pt"), EOFError())) == (
        "checkpoint c.pt is corrupt or truncated (EOFError: ): resume from an earlier checkpoint, "
        "or pass its directory to use the newest readable one."
    )


def test_every_dead_writer_temporary_is_found_among_other_hidden_files(tmp_path):
    run = new_run_id()
    own = [tmp_path / f".ckpt-{run}-s{i:09d}-e0000.pt.otherhost.7.tmp" for i in range(10)]
    others = [tmp_path / f".notes-{i}.tmp" for i in range(10)]
    for path in own + others:
        path.write_bytes(b"partial")
    assert sorted(remove_stale_temporaries(tmp_path, run)) == sorted(own)
    assert all(p.exists() for p in others)
