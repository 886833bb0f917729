"""Checkpoint files: what the mutation survivors of pluglearn.checkpoint.files showed untested, in
one process (the failed writes are otherwise met in subprocesses, out of mutmut's reach): a write
over the file-size limit, the advice for a full disk, unreadable files and directories."""

from __future__ import annotations

import errno
import os
import re
import resource
import signal
import warnings

import pytest
import torch

from pluglearn.checkpoint.atomic_write import explain_write_error
from pluglearn.checkpoint.files import (
    FORMAT,
    VERSION,
    CheckpointError,
    NoCheckpointError,
    load_checkpoint,
    load_latest,
    new_run_id,
    save_checkpoint,
)
from tests import processes


def exact(message: str) -> str:
    return f"^{re.escape(message)}$"


def a_state(**loop):
    return {"format": FORMAT, "version": VERSION, "loop": {"train_iter": 1, "epoch": 0, **loop}}


def test_a_write_over_the_file_size_limit_names_the_directory_and_leaves_no_file(tmp_path):
    ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, hard))
    try:
        with pytest.raises(OSError) as failed:
            save_checkpoint({**a_state(), "w": torch.zeros(1 << 16)}, tmp_path / "c.pt")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, ignored)
    assert failed.value.errno == errno.EFBIG
    assert failed.value.strerror == (
        f"cannot write a checkpoint in {tmp_path}: the file is larger than this process may "
        "write (a file-size limit, `ulimit -f`, or the filesystem's largest file) "
        f"({os.strerror(errno.EFBIG)}). The checkpoints already there are intact. Raise the "
        "limit, keep fewer checkpoints (Checkpoint(keep_last=...)), or save them to another "
        "directory."
    )
    assert list(tmp_path.iterdir()) == []  # the partial temporary file is removed


@pytest.mark.parametrize(
    ("code", "why", "fix"),
    [
        (errno.ENOSPC, "the disk is full", "Free space there"),
        (errno.EDQUOT, "the disk quota is exhausted", "Free space there or raise the quota"),
    ],
)
def test_no_room_on_the_disk_or_quota_is_explained_with_its_fix(tmp_path, code, why, fix):
    explained = explain_write_error(OSError(code, os.strerror(code)), tmp_path)
    assert explained.errno == code
    assert explained.strerror == (
        f"cannot write a checkpoint in {tmp_path}: {why} ({os.strerror(code)}). The checkpoints "
        f"already there are intact. {fix}, keep fewer checkpoints (Checkpoint(keep_last=...)), "
        "or save them to another directory."
    )
    assert explain_write_error(OSError(errno.EACCES, "denied"), tmp_path) is None
    assert explain_write_error(KeyboardInterrupt(), tmp_path) is None


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


def test_the_newest_run_is_resumed_naming_the_others_and_never_replaced_by_them(tmp_path):
    old, new = new_run_id(), new_run_id()
    save_checkpoint(a_state(), tmp_path / f"ckpt-{old}-s000000001-e0000.pt")
    save_checkpoint(a_state(), tmp_path / "ckpt-s000000001-e0000.pt")  # no run id
    newest = tmp_path / f"ckpt-{new}-s000000002-e0000.pt"
    save_checkpoint(a_state(train_iter=2), newest)
    os.utime(tmp_path / f"ckpt-{old}-s000000001-e0000.pt", ns=(1, 1))
    os.utime(tmp_path / "ckpt-s000000001-e0000.pt", ns=(2, 2))
    with pytest.warns(UserWarning) as warned:
        path, state = load_latest(tmp_path)
    assert (path, state["loop"]["train_iter"]) == (newest, 2)
    assert str(warned[0].message) == (
        f"{tmp_path} holds checkpoints of 3 runs: resuming the one written most recently, run "
        f"{new} (not run {old}, the run of files without a run id). Pass a checkpoint file to "
        "resume another run, or give each run its own directory."
    )
    newest.write_bytes(b"garbage")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match=exact(
            f"every checkpoint of run {new} in {tmp_path} is unreadable (see the warnings), so "
            "no other run is resumed in its place: pass a checkpoint file to resume one "
            "explicitly."
        )):  # fmt: skip
            load_latest(tmp_path)
    skipped = [str(w.message) for w in caught if "skipping" in str(w.message)]
    assert skipped == [
        f"skipping an unreadable checkpoint: checkpoint {newest} is corrupt or truncated "
        "(BadZipFile: File is not a zip file): resume from an earlier checkpoint, or pass its "
        "directory to use the newest readable one."
    ]


def test_a_run_id_is_the_utc_start_time_to_the_millisecond_then_a_random_suffix(monkeypatch):
    import calendar
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")  # a local time that is not UTC
    time.tzset()
    try:
        before = time.time_ns() // 1_000_000
        run = new_run_id()
        after = time.time_ns() // 1_000_000
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    stamp, suffix = run.split("-")
    seconds = calendar.timegm(time.strptime(stamp[:15], "%Y%m%dT%H%M%S"))
    assert before <= seconds * 1000 + int(stamp[15:]) <= after
    assert re.fullmatch(r"[0-9a-f]{6}", suffix) and len(stamp) == 18


def test_names_without_a_run_are_the_older_format():
    from pluglearn.checkpoint.files import checkpoint_name

    state = {"loop": {"train_iter": 12, "epoch": 3}}
    assert checkpoint_name(state) == "ckpt-s000000012-e0003.pt"
    assert checkpoint_name(state, "best", "R") == "best-R-s000000012-e0003.pt"


def test_a_temporary_names_this_host_and_process(tmp_path):
    import socket

    from pluglearn.checkpoint.files import temporary_path

    host = socket.gethostname()
    if not re.fullmatch(r"[A-Za-z0-9-]+", host):
        pytest.skip(f"host name {host!r} is rewritten")
    assert temporary_path(tmp_path / "c.pt") == tmp_path / f".c.pt.{host}.{os.getpid()}.tmp"


def test_a_live_process_temporary_is_kept_and_the_process_left_alone(tmp_path):
    import subprocess
    import sys

    from pluglearn.checkpoint.files import remove_stale_temporaries, temporary_path

    sleeper = (
        "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_DFL); print('ready', "
        "flush=True); time.sleep(60)"
    )  # SIGHUP would end it (even under nohup): the check must send no signal at all
    live = processes.popen([sys.executable, "-c", sleeper], stdout=subprocess.PIPE, text=True)
    assert live.stdout is not None and live.stdout.readline() == "ready\n"
    try:
        tmp = temporary_path(tmp_path / "ckpt-s000000001-e0000.pt")
        tmp = tmp.with_name(tmp.name.replace(f".{os.getpid()}.", f".{live.pid}."))
        tmp.write_bytes(b"partial")
        pid1 = tmp_path / ".ckpt-s000000002-e0000.pt.otherhost.1.tmp"  # not this host's
        pid1.write_bytes(b"partial")
        assert remove_stale_temporaries(tmp_path) == []
        assert tmp.exists() and pid1.exists()
        with pytest.raises(subprocess.TimeoutExpired):  # still running: only asked if it exists
            live.wait(timeout=1)
        init = tmp.with_name(tmp.name.replace(f".{live.pid}.", ".1."))  # pid 1: alive, maybe
        init.write_bytes(b"partial")  # another user's (os.kill then raises PermissionError)
        assert remove_stale_temporaries(tmp_path) == []
        init.unlink()
    finally:
        live.kill()
        live.wait()
    assert remove_stale_temporaries(tmp_path) == [tmp]  # its writer is gone now


def test_a_run_removes_its_own_temporaries_from_any_host_and_only_those(tmp_path):
    from pluglearn.checkpoint.files import remove_stale_temporaries

    run, other = new_run_id(), new_run_id()
    own = tmp_path / f".ckpt-{run}-s000000003-e0000.pt.otherhost.7.tmp"
    foreign = tmp_path / f".ckpt-{other}-s000000003-e0000.pt.otherhost.7.tmp"
    unnamed = tmp_path / ".ckpt-s000000003-e0000.pt.otherhost.7.tmp"
    not_ours = [tmp_path / f".notes-{i}.tmp" for i in range(20)]  # no temporary of a checkpoint
    for path in [own, foreign, unnamed, *not_ours]:
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path, run) == [own]
    assert remove_stale_temporaries(tmp_path) == []  # without a run: only dead local writers'
    assert foreign.exists() and unnamed.exists() and all(p.exists() for p in not_ours)


@pytest.mark.parametrize(("host", "named"), [("Node.cluster_1", "Node-cluster-1"), ("", "host")])
def test_an_odd_host_name_is_made_safe_and_its_dead_writes_are_still_found(
    tmp_path, monkeypatch, host, named
):
    import socket
    import sys

    from pluglearn.checkpoint.files import remove_stale_temporaries, temporary_path

    monkeypatch.setattr(socket, "gethostname", lambda: host)
    tmp = temporary_path(tmp_path / "ckpt-s000000001-e0000.pt")
    assert tmp.name == f".ckpt-s000000001-e0000.pt.{named}.{os.getpid()}.tmp"
    gone = processes.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead = tmp.with_name(tmp.name.replace(f".{os.getpid()}.", f".{gone.stdout.strip()}."))
    dead.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == [dead]


def test_a_checkpoint_can_go_into_a_directory_that_does_not_exist_yet(tmp_path):
    path = save_checkpoint(a_state(), tmp_path / "a" / "b" / "c.pt")
    assert load_checkpoint(path)["loop"]["train_iter"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.pt"]
