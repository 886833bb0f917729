"""DDP skips the cancel agreements that no plugin needs: whether a plugin may cancel is derived
from its hooks' code (pluglearn's defaults may not); a plugin that may turns them on; one judged
unable (by its code, or its own ``may_cancel = False``) that cancels anyway is refused by name.
Run under torchrun (gloo on 127.0.0.1); the refusal's text on one process."""

from __future__ import annotations

import subprocess
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from pluglearn import CancelException, CancelFitException, DataLoaders, Learner, hookimpl
from pluglearn.distributed.cancel_agreement import CancelAgreement
from tests import processes
from tests.helpers import tiny_data
from tests.jobs import JOBS
from tests.jobs.cancel_elsewhere import stop
from tests.jobs.launch import ENV, launch, run_case

JOB = JOBS / "agreement_job.py"
EPOCHS = 2  # as in the job

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)


def run(out: Path, plugin: str, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    launched = launch(JOB, [out, "--plugin", plugin, *args], nproc, warm=True, run_dir=out)
    return processes.run(
        launched.command, capture_output=True, text=True, timeout=90, env=ENV,
        **launched.options,
    )  # fmt: skip


def result(out: Path, plugin: str, *args: str, nproc: int = 2) -> dict:
    done = run(out, plugin, *args, nproc=nproc)
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(out / "result.pt", weights_only=False)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_agreements_run_only_where_a_plugin_may_cancel_and_the_weights_stay_one_process(tmp_path):
    one = result(tmp_path / "one", "none", nproc=1)
    bare = result(tmp_path / "bare", "none")
    watched = result(tmp_path / "watched", "watcher")
    for run_ in (bare, watched):
        for key, value in one["weights"].items():
            assert (run_["weights"][key] - value).abs().max().item() <= 1e-10, key
    # the ends of before_epoch, before_train, after_train, before_validate, after_validate and
    # after_epoch in each epoch, and of after_fit: agreed only when a plugin may cancel there
    assert watched["count"] - bare["count"] == 6 * EPOCHS + 1
    assert one["count"] == 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_plugin_declaring_may_cancel_false_that_cancels_is_refused_by_name(tmp_path):
    done = run(tmp_path, "liar")
    assert done.returncode != 0
    assert "CancelFitException(said it never cancels) was raised by Liar on rank 1" in done.stderr
    assert "Remove may_cancel = False from Liar" in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_plugin_whose_cancel_its_code_does_not_show_is_refused_naming_the_declaration(tmp_path):
    done = run(tmp_path, "hidden")
    assert done.returncode != 0
    assert "was raised by Hidden on rank 1" in done.stderr
    assert "pluglearn found no cancel in the code of Hidden's hooks" in done.stderr
    assert "Declare `may_cancel = True` on Hidden's class" in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_accumulation_with_plugins_that_never_cancel_adds_no_agreement_per_batch(tmp_path):
    one = result(tmp_path / "one", "none", "--accum", "2", nproc=1)
    bare = result(tmp_path / "bare", "none")
    accum = result(tmp_path / "accum", "none", "--accum", "2")
    watched = result(tmp_path / "watched", "watcher", "--accum", "2")
    for run_ in (accum, watched):
        for key, value in one["weights"].items():
            assert (run_["weights"][key] - value).abs().max().item() <= 1e-10, key
    # GradientAccumulation's own all-reduce of each group's items: one per step
    steps = EPOCHS * 3  # 5 batches of 8 per epoch, a step every 2 and at the epoch's end
    assert accum["count"] == bare["count"] + steps
    # the gradients are all-reduced only for the batches that step (one bucket each)
    assert (accum["grad_reduces"], bare["grad_reduces"]) == (steps, EPOCHS * 5)
    # a plugin that may cancel: the ranks agree before each of the 5 backwards of an epoch too
    assert watched["count"] == accum["count"] + EPOCHS * 5 + 6 * EPOCHS + 1


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_plugin_that_may_cancel_added_mid_fit_beside_accumulation_turns_the_agreements_on(
    tmp_path,
):
    one = result(tmp_path / "one", "none", "--accum", "2", nproc=1)
    accum = result(tmp_path / "accum", "none", "--accum", "2")
    added = result(tmp_path / "added", "added-watcher", "--accum", "2")
    for key, value in one["weights"].items():
        assert (added["weights"][key] - value).abs().max().item() <= 1e-10, key
    # added in epoch 1's before_epoch: from its end, epoch 1's six pass-hook ends and
    # after_fit's are agreed, and (batches that do not step have no gradient all-reduce to
    # carry a mark) the ranks agree before each of epoch 1's 5 backwards
    assert added["count"] == accum["count"] + 6 + 1 + 5


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_cancel_from_the_loss_in_a_batch_that_does_not_step_is_refused_when_none_agree(
    tmp_path,
):
    done = run(tmp_path, "none", "--accum", "2", "--loss-cancel")
    assert done.returncode != 0
    assert (
        "CancelFitException(from the loss) was raised by TrainStep on rank 1 in compute_loss, "
        "where the ranks do not agree on cancels"
    ) in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_cancel_from_the_loss_is_refused_when_no_plugin_may_cancel_and_agreed_when_one_may(
    tmp_path,
):
    # no plugin may cancel: DDP looks for no mark after the backward (a host sync per step on a
    # GPU), so the loss function's cancel in a batch that steps is refused too
    done = run(tmp_path / "none", "none", "--loss-cancel")
    assert done.returncode != 0
    assert "raised by TrainStep on rank 1 in compute_loss, where the ranks" in done.stderr
    # a plugin that may cancel: the mark carries it, and every rank stops at that batch's step
    one = result(tmp_path / "one", "watcher", "--loss-cancel", nproc=1)
    two = result(tmp_path / "two", "watcher", "--loss-cancel")
    assert two["stop_reason"] == one["stop_reason"] == "TrainStep: from the loss"
    for key, value in one["weights"].items():
        assert (two["weights"][key] - value).abs().max().item() <= 1e-10, key


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_fit_cancel_held_after_a_batch_cancel_on_the_same_rank_wins_on_every_rank(tmp_path):
    # rank 1 cancels training batch 3 in before_batch, then the fit in its after_loss: both are
    # held until the batch's step, where the stronger one, the fit's, stops every rank; one
    # process cancelling only the fit there is the oracle
    one = run_case(tmp_path / "one", "cancels", "--plant", "fit", nproc=1)[0]
    two = run_case(tmp_path / "two", "cancels")
    assert one["stop_reason"] == "Planted: after the batch cancel"
    for rank in two:
        assert rank["stop_reason"] == one["stop_reason"]
        for key, value in one["weights"].items():
            assert (rank["weights"][key] - value).abs().max().item() <= 1e-10, key


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("plant", "reason"),
    [
        ("batch", None),  # held to the step, which every rank skips
        ("two-fits", "Planted: the first fit cancel"),  # as strong: the first held wins
        ("after-batch", None),  # dropped: after the step a batch cancel has nothing to skip
        ("added", "Planted: after the batch cancel"),  # added in the fit: agreements turn on
        ("reason", "Planted: a reason of its own"),  # the run's reason, not the cancel's
        ("loss", "LossPlanted: from its loss"),  # a plugin's own compute_loss may cancel
        ("before-step", "Planted: before the step"),  # agreed before every rank's step
        ("after-backward", "BackwardPlanted: after the backward"),  # before the step too
        ("added-before-step", "Planted: before the step"),  # added in the fit: the same
        ("added-loss", "AfterLossPlanted: after the batch cancel"),  # only the mark carries it
        ("after-pred", "Planted: after the forward"),  # held to the step, which is skipped
        ("after-step", "Planted: after the step"),  # the step taken: the fit ends after it
        ("batch-after-pred", None),  # held to the step, which every rank skips
        ("split", "Planted: after the batch cancel"),  # a batch cancel on rank 0: the fit's wins
    ],
)
def test_cancels_held_on_one_rank_end_every_rank_as_they_end_one_process(tmp_path, plant, reason):
    one = run_case(tmp_path / "one", "cancels", "--plant", plant, nproc=1)[0]
    two = run_case(tmp_path / "two", "cancels", "--plant", plant)
    assert one["stop_reason"] == reason
    for rank in two:
        assert rank["stop_reason"] == one["stop_reason"]
        assert rank["unwrapped"]  # DDP's wrapper left with the fit
        for key, value in one["weights"].items():
            assert (rank["weights"][key] - value).abs().max().item() <= 1e-10, key


# The refusal of a cancel where the ranks do not agree, built on one process from a real hook
# call (the cancel carries the implementation it left); rank 0 here.
class Liar:
    may_cancel = False

    @hookimpl
    def before_batch(self, learn):
        raise CancelFitException("said it never cancels")


class Hidden:
    @hookimpl
    def before_batch(self, learn):
        stop("raised in another module")


def raised_in_before_batch(plugin) -> CancelException:
    x, y = tiny_data(8)
    dls = DataLoaders.from_datasets((x, y), (x, y), batch_size=4)
    learn = Learner(nn.Linear(4, 3), dls, plugins=[plugin], defaults=False)
    with pytest.raises(CancelException) as caught:
        learn.hooks.before_batch(learn)
    return caught.value


def module_plugin() -> types.ModuleType:
    """A module registered as a plugin: its hook is a plain function, with no ``__self__``."""
    module = types.ModuleType("stopper")
    module.before_batch = hookimpl(lambda learn: stop("from a module"))
    return module


WHY_FIX = {
    "declared": (
        "Liar declares may_cancel = False",
        "Remove may_cancel = False from Liar",
    ),
    "derived": (
        "pluglearn found no cancel in the code of {who}'s hooks",
        "Declare `may_cancel = True` on {who}'s class (its cancel is raised where pluglearn "
        "cannot see it: a function of another module, the loss function)",
    ),
}


@pytest.mark.parametrize(
    ("plugin", "who", "said", "hook"),
    [
        (Liar, "Liar", "declared", "compute_loss"),
        (Hidden, "Hidden", "derived", None),
        (module_plugin, "stopper", "derived", None),
        (None, "a plugin", "derived", "after_loss"),  # a cancel no hook call tagged
    ],
    ids=["declared-false", "code-shows-none", "module", "untagged"],
)
def test_a_cancel_where_the_ranks_do_not_agree_is_refused_naming_plugin_reason_and_fix(
    plugin, who, said, hook
):
    if plugin is None:
        cancel: CancelException = CancelFitException("raised in another module")
    else:
        cancel = raised_in_before_batch(plugin())
    where = f"in {hook}" if hook else "in its hook"
    why, fix = (part.format(who=who) for part in WHY_FIX[said])
    error = CancelAgreement.undeclared(cancel, hook)
    assert isinstance(error, RuntimeError)
    assert str(error) == (
        f"DDP: CancelFitException({cancel}) was raised by {who} on rank 0 {where}, where the "
        "ranks do not agree on cancels: no plugin that may cancel there was given, and "
        f"{why}, so the other ranks would not stop. {fix}, or raise the cancel from a plugin "
        "whose hook raises it itself."
    )
