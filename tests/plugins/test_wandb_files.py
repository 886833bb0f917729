"""wandb_files: the transaction logs wandb itself writes, read back exactly; damage is refused."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pluglearn.plugins.wandb_files import (
    BLOCK,
    WandbFileError,
    config,
    exit_code,
    history,
    records,
    run_logs,
    summary,
)
from tests.helpers import needs

# one worker runs the W&B tests under -n: this module's run log costs seconds to write, and
# wandb a second to import (imported here by the tests, not at collection on every worker)
pytestmark = [pytest.mark.xdist_group("wandb"), needs("wandb", "'pluglearn[wandb]'")]

BIG = "x" * (3 * BLOCK)  # a config value whose record spans four blocks


def write_run(root: Path, run_id: str | None = None, exit: int = 3) -> Path:
    import wandb

    run = wandb.init(
        project="files",
        id=run_id,
        dir=root,
        mode="offline",
        reinit="create_new",
        config={"big": BIG, "lr": 0.5},
        **({"resume": "allow"} if run_id else {}),
    )
    for step in range(1, 4):
        run.log({"loss": 1.0 / step}, step=step)
    run.summary["note"] = "done"
    run.finish(exit_code=exit)
    (path,) = [p for p in run_logs(root, run.id) if p.parent == Path(run.settings.sync_dir)]
    deadline = time.monotonic() + 10
    while exit_code(path) is None and time.monotonic() < deadline:  # written just after finish
        time.sleep(0.02)
    return path


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("wandb"))


def test_history_config_summary_and_exit_code_read_back(log):
    assert [(r["_step"], r["loss"]) for r in history(log)] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert config(log)["big"] == BIG and config(log)["lr"] == 0.5  # a record over four blocks
    assert summary(log)["note"] == "done" and summary(log)["loss"] == 1 / 3
    assert exit_code(log) == 3


def test_a_file_that_is_not_a_transaction_log_is_refused(tmp_path):
    path = tmp_path / "run-x.wandb"
    path.write_bytes(b"PK\x03\x04 not a log")
    with pytest.raises(WandbFileError, match="is not a W&B transaction log"):
        list(records(path))


def test_a_damaged_chunk_fails_its_checksum(log, tmp_path):
    data = bytearray(log.read_bytes())
    data[BLOCK + 100] ^= 0xFF  # inside the big config record
    damaged = tmp_path / log.name
    damaged.write_bytes(bytes(data))
    with pytest.raises(WandbFileError, match="bad checksum"):
        config(damaged)


def test_a_log_cut_by_a_killed_writer_ends_quietly_at_the_cut(log, tmp_path):
    data = log.read_bytes()
    cut = tmp_path / log.name
    cut.write_bytes(data[: len(data) - 5])  # the last chunk loses its end
    assert exit_code(log) == 3 and exit_code(cut) is None
    assert history(cut) == history(log)[: len(history(cut))]


def test_run_logs_lists_each_attempt_of_a_run_oldest_first(tmp_path):
    first = write_run(tmp_path)
    run_id = first.name[len("run-") : -len(".wandb")]
    second = write_run(tmp_path, run_id=run_id, exit=0)
    assert (tmp_path / "wandb" / "latest-run").is_symlink()  # a link to `second`, not listed
    assert run_logs(tmp_path, run_id) == [first, second]
    assert run_logs(tmp_path / "wandb", run_id) == [first, second]
    assert run_logs(tmp_path, "other") == [] and run_logs(tmp_path / "nowhere", run_id) == []
