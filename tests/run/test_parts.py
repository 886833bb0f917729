"""The parts of a run (pluglearn.run.parts) taken by RunState.capture and put back by restore:
each part comes back as it was captured, a captured part is a copy training cannot change, and a
part that cannot be put back is named, never half-applied in silence."""

from __future__ import annotations

import pytest
import torch

from pluglearn import hookimpl
from pluglearn.run.state import SWEEP, RunState
from tests.helpers import tiny_learner


def _trained(learn):
    learn.fit(1)
    return learn


def test_captured_gradients_are_copies_that_later_in_place_updates_do_not_reach():
    learn = _trained(tiny_learner())
    loss = learn.model(torch.randn(2, 4)).sum()
    loss.backward()
    before = [p.grad.clone() for p in learn.model.parameters()]
    snapshot = learn.run.capture(learn, ["grads"])
    for p in learn.model.parameters():
        p.grad.add_(1.0)  # zero_grad(set_to_none=False) and accumulation write in place
    assert learn.run.restore(learn, snapshot) == []
    for p, grad in zip(learn.model.parameters(), before, strict=True):
        assert torch.equal(p.grad, grad)


def test_captured_weights_are_copies_that_an_optimizer_step_does_not_reach():
    learn = _trained(tiny_learner())
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    snapshot = learn.run.capture(learn, ["model"])
    with torch.no_grad():
        for p in learn.model.parameters():
            p.mul_(3.0)
    learn.run.restore(learn, snapshot)
    for key, value in learn.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_the_epoch_order_and_the_raw_batch_come_back_as_captured():
    learn = tiny_learner()
    order = {"torch": torch.random.get_rng_state()}
    learn.run.order, learn.run.raw_batch = order, ("x", "y")
    snapshot = learn.run.capture(learn, ["order", "batch"])
    learn.run.order, learn.run.raw_batch = None, None
    learn.run.restore(learn, snapshot)
    assert learn.run.order is order and learn.run.raw_batch == ("x", "y")


def test_the_metrics_and_their_owners_come_back_each_as_captured():
    learn = tiny_learner()
    learn.metrics = metrics = {"accuracy": 0.75, "valid_loss": 0.5}
    learn.run.metric_owner = owners = {"accuracy": "Accuracy"}  # a swap of the two would show
    snapshot = learn.run.capture(learn, ["metrics"])
    learn.metrics["valid_loss"] = -1.0
    learn.run.metric_owner.clear()
    learn.run.restore(learn, snapshot)
    assert (learn.metrics, learn.run.metric_owner) == (
        {"accuracy": 0.75, "valid_loss": 0.5},
        {"accuracy": "Accuracy"},
    )
    assert learn.metrics is not metrics and learn.run.metric_owner is not owners  # copies


def test_a_nested_validate_leaves_the_training_batch_the_loader_yielded():
    seen = []

    class ValidateMidBatch:
        @hookimpl
        def after_loss(self, learn):
            if learn.training and learn.iter == 0:
                raw = learn.run.raw_batch
                learn.validate()
                seen.append(learn.run.raw_batch is raw and raw is not None)

    tiny_learner(plugins=[ValidateMidBatch()]).fit(1)
    assert seen == [True]


def test_gradients_of_another_model_are_named_as_not_put_back():
    learn, other = tiny_learner(), tiny_learner()
    other.model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 3))
    snapshot = other.run.capture(other, ["grads"])
    failed = learn.run.restore(learn, snapshot)
    assert len(failed) == 1 and failed[0].startswith("the gradients (ValueError")


class Unloadable:
    """A plugin whose saved state cannot be put back."""

    @hookimpl
    def state_dict(self, learn):
        return {"n": 1}

    @hookimpl
    def load_state_dict(self, learn, state):
        raise ValueError("no way back")


def test_a_failed_put_back_raises_naming_the_part_and_the_way_out():
    learn = tiny_learner(plugins=[Unloadable()])
    snapshot = learn.run.capture(learn, SWEEP)
    with pytest.raises(RuntimeError) as caught:
        learn.run.put_back(learn, snapshot, "lr_find")
    assert str(caught.value) == (
        "pluglearn: putting the run back after lr_find failed for the plugins (ValueError: no "
        "way back): the Learner is half-restored; build a new Learner before training it."
    )


def test_every_other_part_is_put_back_when_one_fails():
    learn = tiny_learner(plugins=[Unloadable()])
    snapshot = learn.run.capture(learn, ["lr", "plugins", "rng"])
    expected = torch.rand(3)
    learn.run.restore(learn, learn.run.capture(learn, ["rng"]))  # the same state again
    learn._lr = 5.0
    torch.rand(7)
    failed = learn.run.restore(learn, snapshot)
    assert [f.split(" (")[0] for f in failed] == ["the plugins"]
    assert learn.lr == 0.1 and torch.equal(torch.rand(3), expected)


def test_strict_restore_raises_the_first_failure_itself():
    learn, other = tiny_learner(), tiny_learner()
    other.model = torch.nn.Linear(4, 5)
    snapshot = other.run.capture(other, ["model"])
    with pytest.raises(RuntimeError, match="size mismatch"):
        learn.run.restore(learn, snapshot, strict=True)


class _NoStateSGD:
    """An optimizer with step and zero_grad only (no state_dict): a hand-written one."""

    def __init__(self, params, lr):
        self.params, self.lr = list(params), lr
        self.param_groups = [{"params": self.params, "lr": lr}]

    def step(self):
        with torch.no_grad():
            for p in self.params:
                if p.grad is not None:
                    p -= self.param_groups[0]["lr"] * p.grad

    def zero_grad(self):
        for p in self.params:
            p.grad = None


def test_an_optimizer_without_state_is_put_back_as_the_same_object():
    learn = tiny_learner(opt_func=_NoStateSGD)
    learn.fit(1)
    opt = learn.opt
    snapshot = learn.run.capture(learn, ["opt"])
    assert learn.run.restore(learn, snapshot) == []  # no state_dict: nothing to load
    assert learn.opt is opt


def test_a_loader_without_load_state_dict_is_left_as_it_is():
    class ReadOnlyState(list):
        def state_dict(self):
            return {"at": 0}

    learn = tiny_learner()
    learn.dls.train = ReadOnlyState(learn.dls.train)
    snapshot = learn.run.capture(learn, ["loader"])
    assert snapshot.parts["loader"] == {"at": 0}
    assert learn.run.restore(learn, snapshot) == []


def test_a_loader_with_state_gets_its_captured_state_back():
    class Counted(list):
        def __init__(self, items):
            super().__init__(items)
            self.at = 0

        def state_dict(self):
            return {"at": self.at}

        def load_state_dict(self, state):
            self.at = state["at"]

    learn = tiny_learner()
    learn.dls.train = Counted(learn.dls.train)
    learn.dls.train.at = 3
    snapshot = learn.run.capture(learn, ["loader"])
    learn.dls.train.at = 9
    learn.run.restore(learn, snapshot)
    assert learn.dls.train.at == 3


@pytest.mark.parametrize("bad", [-1, True, 2.0, "3", None])
def test_extend_refuses_what_is_not_a_count_of_epochs(bad):
    with pytest.raises(ValueError) as caught:
        RunState().extend(bad)
    assert str(caught.value) == f"n_epochs must be an int >= 0, got {bad!r}."


def test_extend_to_zero_epochs_is_a_run_that_ends_now():
    run = RunState()
    run.extend(0)
    assert run.pos.n_epochs == 0


def test_a_plain_fit_after_a_resumed_one_is_not_resumed(tmp_path):
    from pluglearn import Checkpoint

    seen = []

    class Resumed:
        @hookimpl
        def before_fit(self, learn):
            seen.append(learn.run.resumed)

    tiny_learner(plugins=[Checkpoint(tmp_path)]).fit(1)
    learn = tiny_learner(plugins=[Checkpoint(tmp_path), Resumed()])
    learn.fit(2, resume_from=tmp_path)
    learn.fit(1)
    assert seen == [True, False]


@pytest.mark.parametrize("opt", ["sgd-momentum", "adam"])
def test_lr_find_after_a_fit_leaves_the_optimizers_state_for_the_next_fit(opt):
    # the optimizer's buffers (momentum, Adam's moments) exist after the first fit; the sweep
    # updates them in place, so the snapshot must hold copies
    from functools import partial

    opt_func = partial(torch.optim.SGD, momentum=0.9) if opt == "sgd-momentum" else torch.optim.Adam

    def run(sweep: bool):
        learn = tiny_learner(opt_func=opt_func)
        learn.fit(1)
        if sweep:
            learn.lr_find(start_lr=1e-3, end_lr=1.0, num_it=5)
        learn.fit(1)
        return [p.detach().clone() for p in learn.model.parameters()]

    for plain, swept in zip(run(False), run(True), strict=True):
        assert torch.equal(plain, swept)
