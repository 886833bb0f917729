"""Checkpoint: what it saves and keeps (every n batches, each epoch's end, the last k, prefixes
of their own in one directory, a save outside a fit as a run of its own), the checks of its
settings, and a fit cancelled before any checkpoint."""

from __future__ import annotations

import re

import pytest

from pluglearn import CancelFitException, hookimpl
from pluglearn.checkpoint.files import (
    RUN_ID,
    checkpoints_in,
    load_checkpoint,
    parse_name,
)
from pluglearn.checkpoint.plugin import Checkpoint
from tests.jobs import resume_job


def test_keep_last_and_names_sort_in_run_order(tmp_path):
    learn = resume_job.make_learner(str(tmp_path))
    learn.fit(1)
    files = checkpoints_in(tmp_path)
    assert len(files) == 2  # keep_last=2 in the job
    steps = [load_checkpoint(f)["loop"]["train_iter"] for f in files]
    epochs = [load_checkpoint(f)["loop"]["epoch"] for f in files]
    assert steps == [20, 20] and epochs == [0, 1]  # the last batch, then the epoch's end


@pytest.fixture
def learner(small_learner):
    """tests/checkpoint/conftest.py's small Learner."""
    return small_learner


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


def test_one_batch_one_checkpoint_kept_and_a_save_outside_a_fit_is_a_run_of_its_own(
    tmp_path, learner
):
    ckpt = Checkpoint(tmp_path, every_n_batches=1, every_epoch=False, keep_last=1)
    assert ckpt.run_id is None and ckpt.latest is None
    learn = learner([ckpt])
    learn.fit(1)
    assert [(parse_name(p).steps, parse_name(p).epoch) for p in tmp_path.glob("*.pt")] == [(4, 0)]
    assert ckpt.run_id is None  # outside a fit
    path = ckpt.save(learn)
    assert RUN_ID.fullmatch(parse_name(path).run)
    assert ckpt.latest == path


def test_two_prefixes_in_one_directory_keep_their_own_last_files(tmp_path, learner):
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


def test_by_default_the_last_three_ckpt_files_and_one_each_epoch(tmp_path, learner):
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


class CancelsFirstBatch:
    @hookimpl
    def after_batch(self, learn):
        raise CancelFitException()


def test_a_fit_cancelled_before_any_checkpoint_ends_cleanly(tmp_path, learner):
    ckpt = Checkpoint(tmp_path)  # every epoch: nothing saved before the cancel
    learn = learner([CancelsFirstBatch(), ckpt])
    learn.fit(2)
    assert learn.stop_reason is not None
    assert ckpt.latest is None and list(tmp_path.iterdir()) == []
