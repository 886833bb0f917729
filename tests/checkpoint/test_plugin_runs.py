"""Checkpoint's runs in a directory: a new run keeps its checkpoints next to an older run's, a
resume continues the run written most recently (warning when later checkpoints of it exist), a
saved run id that is none is not resumed, a resumed run removes its killed writes' temporaries,
and "nothing to resume yet" is its own error."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from pluglearn import Learner, hookimpl
from pluglearn.checkpoint.files import (
    RUN_ID,
    NoCheckpointError,
    checkpoint_name,
    load_checkpoint,
    parse_name,
    runs_in,
)
from pluglearn.checkpoint.plugin import Checkpoint
from tests.helpers import CrashAt, DieAtStep

BATCHES = 5  # training batches an epoch


@pytest.fixture
def learner(make_learner):
    """A small seeded run that saves after every batch (``seed`` makes another run): the shared
    tiny Learner with a dropout MLP, 40 shuffled training items in batches of 8, 8 validating."""

    def build(directory: Path, seed: int = 0, keep_last: int | None = 2) -> Learner:
        checkpoint = Checkpoint(directory, every_n_batches=1, keep_last=keep_last)
        return make_learner(
            [checkpoint],
            n_train=40,
            n_valid=8,
            bs=8,
            defaults=True,
            seed=seed,
            from_datasets=True,
            loader_seed=1,
            model=lambda: nn.Sequential(
                nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3)
            ),
        )

    return build


def weights(learn: Learner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in learn.model.parameters()]


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def steps_of(files: list[Path]) -> list[tuple[int, int]]:
    return [
        (load_checkpoint(f)["loop"]["train_iter"], load_checkpoint(f)["loop"]["epoch"])
        for f in files
    ]


def test_a_new_run_in_a_used_directory_keeps_its_checkpoints_and_is_the_one_resumed(
    tmp_path, learner
):
    learner(tmp_path, seed=0).fit(3)  # an older run: checkpoints at step 15
    new = learner(tmp_path, seed=1)
    new.fit(1)  # a new run in the same directory: steps 1 to 5
    old_run, new_run = runs_in(tmp_path)
    assert steps_of(new_run.files) == [(5, 0), (5, 1)]  # keep_last=2 kept the new run's files
    assert steps_of(old_run.files) == [(15, 2), (15, 3)]  # and deleted none of the older run's
    reference = learner(tmp_path / "reference", seed=1)
    reference.fit(2)
    resumed = learner(tmp_path / "resumed", seed=2)
    with pytest.warns(UserWarning, match=rf"2 runs: resuming .*run {new_run.id} \(not run"):
        resumed.fit(2, resume_from=tmp_path)
    assert_same(weights(resumed), weights(reference))  # the new run went on, not the older one


def test_a_resumed_fit_writes_under_its_run_and_a_new_fit_under_a_new_one(tmp_path, learner):
    with pytest.raises(RuntimeError, match="die"):
        learner(tmp_path).fit(3, plugins=[DieAtStep(7)])
    [killed] = runs_in(tmp_path)
    resumed = learner(tmp_path)
    resumed.fit(3, resume_from=tmp_path)
    [run] = runs_in(tmp_path)  # keep_last replaced the files written before the cut
    assert run.id == killed.id and steps_of(run.files) == [(15, 2), (15, 3)]
    resumed.fit(1)  # the same Learner and plugin, a fresh fit: a new run
    ids = [r.id for r in runs_in(tmp_path)]
    assert len(ids) == 2 and ids[0] == killed.id


def test_files_without_a_run_id_are_one_older_run_and_are_kept(tmp_path, learner):
    learner(tmp_path / "old", seed=0).fit(3)
    legacy = []
    for path in runs_in(tmp_path / "old")[0].files:  # the names pluglearn gave before run ids
        legacy.append(tmp_path / checkpoint_name(load_checkpoint(path), "ckpt"))
        shutil.copy2(path, legacy[-1])
    new = learner(tmp_path, seed=1)
    new.fit(1)
    assert all(p.exists() for p in legacy)
    runs = runs_in(tmp_path)
    assert [r.id is None for r in runs] == [True, False] and runs[0].files == legacy
    resumed = learner(tmp_path / "resumed", seed=2)
    with pytest.warns(UserWarning) as said:
        resumed.fit(1, resume_from=tmp_path)
    messages = [str(w.message) for w in said]
    assert any("not the run of files without a run id" in m for m in messages)
    assert any("finished its 1 epoch(s): nothing to train" in m for m in messages)
    assert_same(weights(resumed), weights(new))  # the newer run, at its end: nothing to train


def test_resuming_an_earlier_checkpoint_of_a_run_keeps_its_later_ones(tmp_path, learner):
    learner(tmp_path, keep_last=None).fit(2)
    [run] = runs_in(tmp_path)
    earlier = run.files[6]  # step 6 (after 1 to 5 and the end of epoch 0), mid-epoch 1
    with pytest.warns(UserWarning, match=f"resuming run {run.id} from before its newest"):
        learner(tmp_path, keep_last=None).fit(2, resume_from=earlier)
    old, new = runs_in(tmp_path)
    assert old.files == run.files  # all kept
    assert steps_of(new.files) == [(s, 1) for s in range(7, 11)] + [(10, 2)]


def test_resuming_a_directory_with_no_checkpoint_yet_is_a_no_checkpoint_error(tmp_path, learner):
    for missing in (tmp_path / "never-created", tmp_path):
        with pytest.raises(NoCheckpointError, match="missing_ok=True") as info:
            learner(tmp_path / "out").fit(1, resume_from=missing)
        assert str(missing) in str(info.value)


@pytest.mark.xfail(
    "missing_ok" not in inspect.signature(Learner.fit).parameters,
    reason="fit(..., missing_ok=True) is wired by the Learner (it catches NoCheckpointError)",
    strict=True,
)
def test_a_restart_script_resumes_if_a_checkpoint_exists_and_starts_fresh_otherwise(
    tmp_path, learner
):
    reference = learner(tmp_path / "reference")
    reference.fit(2)
    first = learner(tmp_path / "run")  # the first start: nothing to resume yet
    with (
        pytest.raises(RuntimeError, match="die"),
        pytest.warns(UserWarning, match="starting a fresh run"),
    ):
        first.fit(2, resume_from=tmp_path / "run", missing_ok=True, plugins=[DieAtStep(7)])
    again = learner(tmp_path / "run")  # the same command after the crash: resumes
    again.fit(2, resume_from=tmp_path / "run", missing_ok=True)
    assert_same(weights(again), weights(reference))
    assert [parse_name(p).run for p in runs_in(tmp_path / "run")[0].files] != [None]


class SeesRunId:
    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt, self.ids = ckpt, []

    @hookimpl
    def after_batch(self, learn):
        self.ids.append(self.ckpt.run_id)


@pytest.mark.parametrize("run", [None, "not-a-run-id", "20250102T030405123-9f3a1"])
def test_a_saved_run_id_that_is_no_run_id_is_not_resumed(tmp_path, run, small_learner):
    ckpt = Checkpoint(tmp_path)
    learn = small_learner([ckpt])
    ckpt.load_state_dict(learn, {"run": run})
    seen = SeesRunId(ckpt)
    learn.fit(1, plugins=[seen])
    assert RUN_ID.fullmatch(seen.ids[0]) and seen.ids[0] != run


def test_resuming_before_the_newest_checkpoint_names_it_in_the_warning(tmp_path, small_learner):
    first = Checkpoint(tmp_path, every_n_batches=1, keep_last=None)
    small_learner([first]).fit(1)
    (run,) = runs_in(tmp_path)
    newest = run.files[-1]  # 4 batch checkpoints and the epoch end's: 4 later than the first
    with pytest.warns(UserWarning) as warned:
        small_learner([Checkpoint(tmp_path)]).fit(1, resume_from=run.files[0])
    message = str(warned[0].message)
    assert message.startswith(f"resuming run {parse_name(newest).run} from before its newest")
    assert f"checkpoint ({newest.name}): this fit writes its checkpoints as a new run" in message


def test_a_resumed_run_removes_its_killed_writes_temporaries_also_from_other_hosts(
    tmp_path, small_learner
):
    ckpt = Checkpoint(tmp_path, every_n_batches=1)
    with pytest.raises(RuntimeError, match="killed"):
        small_learner([ckpt, CrashAt(0, 2)]).fit(1)
    path = ckpt.latest
    mine = tmp_path / f".ckpt-{parse_name(path).run}-s000000003-e0000.pt.otherhost.1.tmp"
    other_run = tmp_path / ".ckpt-20000101T000000000-abcdef-s000000001-e0000.pt.otherhost.1.tmp"
    mine.write_bytes(b"partial")
    other_run.write_bytes(b"partial")
    small_learner([Checkpoint(tmp_path, every_n_batches=1)]).fit(1, resume_from=path)
    assert not mine.exists()  # the resumed run's own temporary: removed wherever it came from
    assert other_run.exists()  # another run's, of a host that may still be writing: kept
