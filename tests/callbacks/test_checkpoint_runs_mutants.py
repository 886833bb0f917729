"""Checkpoint's runs and files: what its mutation survivors showed untested (the defaults, the
warning naming the run's newest later checkpoint, a killed write's temporary of the resumed run,
a run id refused, a fit cancelled before any save, fits from another thread)."""

from __future__ import annotations

import signal
import threading

import pytest
import torch
from torch import nn

from pluglearn import CancelFitException, DataLoaders, Learner, hookimpl
from pluglearn.checkpoint.files import RUN_ID, parse_name, runs_in
from pluglearn.checkpoint.plugin import Checkpoint
from tests.helpers import CrashAt, tiny_data


def learner(plugins=()):
    x, y = tiny_data(40, seed=2)
    dls = DataLoaders.from_datasets((x[:32], y[:32]), (x[32:], y[32:]), batch_size=8, seed=1)
    torch.manual_seed(0)
    return Learner(nn.Linear(4, 3), dls, lr=0.1, plugins=list(plugins))


def test_by_default_the_last_three_ckpt_files_and_one_each_epoch(tmp_path):
    ckpt = Checkpoint(tmp_path / "runs" / "a")  # a directory that does not exist yet
    learner([ckpt]).fit(5)
    names = sorted(p.name for p in (tmp_path / "runs" / "a").iterdir())
    assert len(names) == 3 and all(n.startswith("ckpt-") for n in names)
    assert [(parse_name(n).steps, parse_name(n).epoch) for n in names] == [(12, 3), (16, 4),
                                                                          (20, 5)]  # fmt: skip
    only_batches = Checkpoint(tmp_path / "b", every_n_batches=1, every_epoch=False, keep_last=1)
    learner([only_batches]).fit(1)
    assert [(parse_name(p).steps, parse_name(p).epoch) for p in (tmp_path / "b").iterdir()] == [
        (4, 0)
    ]


class SeesRunId:
    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt, self.ids = ckpt, []

    @hookimpl
    def after_batch(self, learn):
        self.ids.append(self.ckpt.run_id)


@pytest.mark.parametrize("run", [None, "not-a-run-id", "20250102T030405123-9f3a1"])
def test_a_saved_run_id_that_is_no_run_id_is_not_resumed(tmp_path, run):
    ckpt = Checkpoint(tmp_path)
    learn = learner([ckpt])
    ckpt.load_state_dict(learn, {"run": run})
    seen = SeesRunId(ckpt)
    learn.fit(1, plugins=[seen])
    assert RUN_ID.fullmatch(seen.ids[0]) and seen.ids[0] != run


def test_resuming_before_the_newest_checkpoint_names_it_in_the_warning(tmp_path):
    first = Checkpoint(tmp_path, every_n_batches=1, keep_last=None)
    learner([first]).fit(1)
    (run,) = runs_in(tmp_path)
    newest = run.files[-1]  # 4 batch checkpoints and the epoch end's: 4 later than the first
    with pytest.warns(UserWarning) as warned:
        learner([Checkpoint(tmp_path)]).fit(1, resume_from=run.files[0])
    message = str(warned[0].message)
    assert message.startswith(f"resuming run {parse_name(newest).run} from before its newest")
    assert f"checkpoint ({newest.name}): this fit writes its checkpoints as a new run" in message


def test_a_resumed_run_removes_its_killed_writes_temporaries_also_from_other_hosts(tmp_path):
    ckpt = Checkpoint(tmp_path, every_n_batches=1)
    with pytest.raises(RuntimeError, match="killed"):
        learner([ckpt, CrashAt(0, 2)]).fit(1)
    path = ckpt.latest
    mine = tmp_path / f".ckpt-{parse_name(path).run}-s000000003-e0000.pt.otherhost.1.tmp"
    other_run = tmp_path / ".ckpt-20000101T000000000-abcdef-s000000001-e0000.pt.otherhost.1.tmp"
    mine.write_bytes(b"partial")
    other_run.write_bytes(b"partial")
    learner([Checkpoint(tmp_path, every_n_batches=1)]).fit(1, resume_from=path)
    assert not mine.exists()  # the resumed run's own temporary: removed wherever it came from
    assert other_run.exists()  # another run's, of a host that may still be writing: kept


class CancelsFirstBatch:
    @hookimpl
    def after_batch(self, learn):
        raise CancelFitException()


def test_a_fit_cancelled_before_any_checkpoint_ends_cleanly(tmp_path):
    ckpt = Checkpoint(tmp_path)  # every epoch: nothing saved before the cancel
    learn = learner([CancelsFirstBatch(), ckpt])
    learn.fit(2)
    assert learn.stop_reason is not None
    assert ckpt.latest is None and list(tmp_path.iterdir()) == []


def test_fits_from_another_thread_leave_ctrl_c_alone(tmp_path):
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
