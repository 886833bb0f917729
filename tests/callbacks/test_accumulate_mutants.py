"""GradientAccumulation: what its mutation survivors showed untested (hook bodies, messages,
resumes at a group's edges), each against hand values, a plain run or an uninterrupted run."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import CancelBatchException, DataLoaders, Learner, ManualBackward, hookimpl
from pluglearn.checkpoint.plugin import Checkpoint
from pluglearn.plugins.accumulate import GradientAccumulation
from tests.helpers import CrashAt, tiny_data

DT = torch.float64


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(DT)


def sized_batches(sizes, seed=0):
    x, y = tiny_data(sum(sizes), seed=seed)
    x, out, at = x.to(DT), [], 0
    for s in sizes:
        out.append((x[at : at + s], y[at : at + s]))
        at += s
    return out


class NoLen:
    """Batches without a length: the loader a generator or a stream gives."""

    def __init__(self, batches) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def assert_same_weights(a: Learner, b: Learner) -> None:
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-15)


def first_line(error: BaseException) -> str:
    """The error's own message (the Learner adds a line naming the plugin and hook)."""
    return str(error).split("\n")[0]


class LossSeen:
    """Records ``learn.loss`` in the events named (after GradientAccumulation's tryfirst ones)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    def _keep(self, event, learn):
        loss = learn.loss
        self.seen.append((event, loss.detach().clone() if torch.is_tensor(loss) else loss))

    @hookimpl
    def after_batch(self, learn):
        if learn.training:
            self._keep("after_batch", learn)

    @hookimpl
    def on_error(self, learn):
        self._keep("on_error", learn)

    @hookimpl
    def cleanup_batch(self, learn):
        if learn.training:
            self._keep("cleanup_batch", learn)


def test_plugins_after_the_backward_see_each_batch_own_loss_not_the_weighted_one():
    train = sized_batches([4, 4, 2])
    seen = LossSeen()
    learn = Learner(model(), DataLoaders(train), lr=0.0, defaults=False, plugins=[seen])
    learn.add_plugin(GradientAccumulation(2))
    learn.fit(1)  # lr 0: every batch sees the initial weights
    with torch.no_grad():
        own = [F.cross_entropy(model()(xb), yb) for xb, yb in train]
    after = [loss for event, loss in seen.seen if event == "after_batch"]
    assert len(after) == 3
    for got, want in zip(after, own, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


class CancelsFirstBackward:
    @hookimpl
    def backward(self, learn):
        if learn.iter == 0:
            raise CancelBatchException()


def test_a_batch_cancelled_in_its_backward_leaves_its_own_loss_for_the_cleanups():
    train = sized_batches([4, 4])
    seen = LossSeen()
    learn = Learner(model(), DataLoaders(train), lr=0.0, defaults=False)
    learn.add_plugin(GradientAccumulation(2))
    learn.add_plugin(CancelsFirstBackward())
    learn.add_plugin(seen)
    learn.fit(1)
    with torch.no_grad():
        own = F.cross_entropy(model()(train[0][0]), train[0][1])
    event, loss = seen.seen[0]
    assert event == "cleanup_batch"  # the cancelled batch: no after_batch
    torch.testing.assert_close(loss, own, rtol=0, atol=0)  # not 4 x own


class FailsInForward:
    @hookimpl
    def after_pred(self, learn):
        raise ValueError("forward broke")


@pytest.mark.parametrize("accumulate", [False, True])
def test_an_error_before_the_first_loss_leaves_learn_loss_as_it_was(accumulate):
    seen = LossSeen()
    learn = Learner(model(), DataLoaders(sized_batches([4, 4])), lr=0.1, defaults=False)
    if accumulate:
        learn.add_plugin(GradientAccumulation(2))
    learn.add_plugin(FailsInForward())
    learn.add_plugin(seen)
    with pytest.raises(ValueError, match="forward broke"):
        learn.fit(1)
    assert seen.seen == [("on_error", None), ("cleanup_batch", None)]  # no loss yet


def test_groups_of_one_item_step_like_plain_training():
    train = sized_batches([1, 1, 1])
    plain = Learner(model(), DataLoaders(train), lr=0.3, defaults=False)
    one = Learner(model(), DataLoaders(train), lr=0.3, defaults=False)
    one.add_plugin(GradientAccumulation(1))  # each group counts exactly 1 item
    plain.fit(1)
    one.fit(1)
    assert_same_weights(plain, one)


def test_one_batch_groups_need_no_loader_length():
    train = sized_batches([4, 4])

    plain = Learner(model(), DataLoaders(train), lr=0.3, defaults=False)
    learn = Learner(model(), DataLoaders(NoLen(train)), lr=0.3, defaults=False)
    learn.add_plugin(GradientAccumulation(1))
    plain.fit(1)
    learn.fit(1)
    assert_same_weights(plain, learn)


def test_the_refusals_give_their_whole_advice():
    train = sized_batches([4, 4])

    learn = Learner(model(), DataLoaders(NoLen(train)), plugins=[GradientAccumulation(2)])
    with pytest.raises(ValueError) as no_len:
        learn.fit(1)
    assert first_line(no_len.value) == (
        "GradientAccumulation(2) needs a training loader with a length to close the last group "
        "of each epoch: give the loader a __len__ (or use DataLoaders.from_datasets)."
    )
    from pluglearn.scratch import CrossEntropy, Linear, Sequential

    net = Sequential(Linear(4, 3, generator=torch.Generator().manual_seed(0)))
    x, y = tiny_data(8)
    learn = Learner(
        net, DataLoaders([(x, y)]), loss_func=CrossEntropy(), plugins=[ManualBackward()]
    )
    with pytest.raises(ValueError) as manual:
        learn.fit(1, plugins=[GradientAccumulation(2)])
    assert first_line(manual.value) == (
        "GradientAccumulation weights each batch through learn.loss, which ManualBackward does "
        "not differentiate, so the accumulated gradient would be wrong: use "
        "GradientAccumulation(n, scale_loss=False) (a plain sum of the batch gradients)."
    )


class FirstBackward:
    @hookimpl(tryfirst=True)
    def backward(self, learn):
        learn.loss.backward()
        return True


def test_a_provider_answering_first_is_refused_with_the_fix():
    learn = Learner(model(), DataLoaders(sized_batches([4, 4])), lr=0.1)
    learn.add_plugin(FirstBackward())
    learn.add_plugin(GradientAccumulation(2))
    with pytest.raises(RuntimeError) as refused:
        learn.fit(1)
    assert str(refused.value).startswith("GradientAccumulation: another backward provider")
    assert first_line(refused.value).endswith(
        "so the gradient is a plain sum: register GradientAccumulation after any plugin "
        "answering backward with tryfirst=True, or drop tryfirst there."
    )


def test_a_group_counting_no_items_is_refused_naming_the_batch():
    learn = Learner(model(), DataLoaders(sized_batches([4, 4, 4])), lr=0.1)
    learn.add_plugin(GradientAccumulation(2, count=lambda learn: 0))
    message = (
        "GradientAccumulation: the group ending at batch 1 counted 0 items, so its gradient is "
        "undefined: check count= (it must return the number of items the loss averages over, "
        "> 0 for every group)."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}(\n|$)"):
        learn.fit(1)


def test_an_open_group_of_another_model_is_refused():
    learn = Learner(model(), DataLoaders(sized_batches([4])), lr=0.1)
    acc = GradientAccumulation(2)
    message = (
        "GradientAccumulation: the checkpoint holds 1 gradients of an open group, the model has "
        "4 parameters: resume with the model the run used."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}(\n|$)"):
        acc.load_state_dict(learn, {"total": 3, "grads": [torch.zeros(3)]})


def resumable(plugins=(), frozen=False, batch_size=4, n=60):
    x, y = tiny_data(n, seed=3)
    x = x.to(DT)
    dls = DataLoaders.from_datasets((x, y), (x[:4], y[:4]), batch_size=batch_size, seed=4)
    net = model()
    if frozen:  # a parameter without gradient: None in the group's saved gradients
        net.append(nn.Linear(3, 3).to(DT))  # unused by forward below
        net = FirstTwo(net)
    return Learner(net, dls, lr=0.2, plugins=[GradientAccumulation(3), *plugins])


class FirstTwo(nn.Module):
    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net[2](self.net[1](self.net[0](x)))


@pytest.mark.parametrize(
    ("crash_batch", "kwargs"),
    [
        (3, {}),  # checkpoint of batch 2: a group just closed (total 0)
        (2, {"frozen": True}),  # inside a group, one parameter has no gradient
        (1, {"batch_size": 1, "n": 12}),  # after one batch of one item: total 1
    ],
    ids=["group-closed", "no-grad-parameter", "one-item-so-far"],
)
def test_resuming_at_the_edges_of_a_group_is_exact(tmp_path, crash_batch, kwargs):
    done = resumable(**kwargs)
    done.fit(2)
    crashing = [Checkpoint(tmp_path, every_n_batches=1), CrashAt(1, crash_batch)]
    with pytest.raises(RuntimeError, match="killed"):
        resumable(crashing, **kwargs).fit(2)
    resumed = resumable([Checkpoint(tmp_path, every_n_batches=1)], **kwargs)
    resumed.fit(2, resume_from=tmp_path)
    for p, q in zip(done.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


class OneRankDDP:
    """Wraps the model in a one-process DistributedDataParallel for the fit, as DDP() does on
    several (DDP() itself wraps nothing on one process)."""

    @hookimpl(trylast=True)
    def before_fit(self, learn):
        learn.wrapped_model = nn.parallel.DistributedDataParallel(learn.model)

    @hookimpl
    def cleanup_fit(self, learn):
        learn.wrapped_model = None


def test_under_a_one_rank_ddp_wrapper_the_step_is_still_the_big_batch_step(tmp_path):
    import torch.distributed as dist

    train = sized_batches([4, 2, 4, 3])
    plain = Learner(model(), DataLoaders(train), lr=0.5, defaults=False)
    plain.add_plugin(GradientAccumulation(2))
    plain.fit(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        wrapped = Learner(model(), DataLoaders(train), lr=0.5, defaults=False)
        wrapped.add_plugin(GradientAccumulation(2))
        wrapped.add_plugin(OneRankDDP())
        wrapped.fit(1)
    finally:
        dist.destroy_process_group()
    assert_same_weights(plain, wrapped)


class CreateGraphBackward:
    """A backward provider that keeps the graph of the gradients (create_graph=True), as a
    gradient penalty needs: the accumulated gradients then require grad themselves."""

    seen: list

    def __init__(self) -> None:
        self.seen = []

    @hookimpl
    def backward(self, learn):
        learn.loss.backward(create_graph=True)
        return True

    @hookimpl(trylast=True)  # after the accumulation divided the group's gradients
    def before_step(self, learn):
        grads = [p.grad for p in learn.model.parameters()]
        self.seen.append(all(g.requires_grad for g in grads))
        self.divided_in_graph = any("Div" in type(g.grad_fn).__name__ for g in grads)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_create_graph_gradients_are_divided_like_plain_ones_and_keep_autograd_out():
    def fit(plugins):
        torch.manual_seed(0)
        net = model()
        dls = DataLoaders(sized_batches([3, 5, 2, 4]), None)
        learn = Learner(net, dls, lr=0.1, plugins=[GradientAccumulation(2), *plugins])
        learn.fit(1)
        return [p.detach().clone() for p in net.parameters()], learn

    plain, _ = fit([])
    graph = CreateGraphBackward()
    kept, _ = fit([graph])
    assert graph.seen == [True, True]  # the provider really made gradients that require grad
    assert not graph.divided_in_graph  # the division is not part of their graph
    for a, b in zip(plain, kept, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
