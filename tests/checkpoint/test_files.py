"""Checkpoint files: names (run ids, the older format without one), the order of a directory's
files and runs, which run a resume takes, the temporaries of writes (named by host and process;
a dead writer's removed, a live one's kept), with hand-made files."""

from __future__ import annotations

import os
import re
import warnings

import pytest

from pluglearn.checkpoint.files import (
    FORMAT,
    VERSION,
    CheckpointError,
    load_checkpoint,
    load_latest,
    new_run_id,
    parse_name,
    remove_stale_temporaries,
    runs_in,
    save_checkpoint,
)
from tests import processes
from tests.helpers import exact


def a_state(**loop):
    return {"format": FORMAT, "version": VERSION, "loop": {"train_iter": 1, "epoch": 0, **loop}}


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


def a_record(**extra):
    return {"format": FORMAT, "version": VERSION, "loop": {"train_iter": 1, "epoch": 0}, **extra}


def test_files_of_no_run_sort_unparsed_names_first_and_hidden_files_are_ignored(tmp_path):
    for name in ["ckpt-s000000002-e0000.pt", "ckpt-s000000000-e0000.pt", "weights.pt"]:
        save_checkpoint(a_record(), tmp_path / name)
    save_checkpoint(a_record(), tmp_path / ".ckpt-s000000009-e0000.pt")  # hidden: not listed
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
    with_id = save_checkpoint(a_record(), tmp_path / f"ckpt-{run}-s000000001-e0000.pt")
    without = save_checkpoint(a_record(), tmp_path / "ckpt-s000000001-e0000.pt")
    for path in (with_id, without):
        os.utime(path, ns=(10**18, 10**18))
    assert [r.id for r in runs_in(tmp_path)] == [None, run]


def test_one_run_is_resumed_without_a_warning_and_two_are_named(tmp_path):
    first = new_run_id()
    save_checkpoint(a_record(), tmp_path / f"ckpt-{first}-s000000001-e0000.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_latest(tmp_path)
    second = new_run_id()
    save_checkpoint(a_record(), tmp_path / f"ckpt-{second}-s000000001-e0000.pt")
    os.utime(tmp_path / f"ckpt-{first}-s000000001-e0000.pt", ns=(1, 1))
    chosen = f"holds checkpoints of 2 runs: resuming the one written most recently, run {second}"
    with pytest.warns(UserWarning, match=re.escape(chosen)):
        load_latest(tmp_path)


def test_a_checkpoint_deleted_since_it_was_listed_is_passed_over(tmp_path):
    run = new_run_id()
    older = save_checkpoint(a_record(), tmp_path / f"ckpt-{run}-s000000001-e0000.pt")
    (tmp_path / f"ckpt-{run}-s000000002-e0000.pt").symlink_to(tmp_path / "gone.pt")
    assert load_latest(tmp_path)[0] == older
    other = save_checkpoint(a_record(), tmp_path / f"ckpt-{new_run_id()}-s000000001-e0000.pt")
    os.utime(other, ns=(5, 5))  # written long ago, yet after a run with a vanished file
    assert [r.id for r in runs_in(tmp_path)] == [run, parse_name(other).run]


def test_every_dead_writer_temporary_is_found_among_other_hidden_files(tmp_path):
    run = new_run_id()
    own = [tmp_path / f".ckpt-{run}-s{i:09d}-e0000.pt.otherhost.7.tmp" for i in range(10)]
    others = [tmp_path / f".notes-{i}.tmp" for i in range(10)]
    for path in own + others:
        path.write_bytes(b"partial")
    assert sorted(remove_stale_temporaries(tmp_path, run)) == sorted(own)
    assert all(p.exists() for p in others)
