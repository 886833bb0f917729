"""GradientAccumulation against its oracle: one big batch of the same items, in float64 (also
with momentum, per-token counts, sum losses, one-rank DDP and create_graph), and resumes inside
a group and at its edges equal to the uninterrupted run."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import DataLoaders, Learner, hookimpl
from pluglearn.checkpoint.plugin import Checkpoint
from pluglearn.plugins.accumulate import GradientAccumulation
from tests.helpers import CrashAt, tiny_data
from tests.support.accumulation import DT, assert_same_weights, data, model, sized_batches, split


def groups_of(train, n):
    """The big batches the groups of n batches make (the last group may be short)."""
    return [
        (torch.cat([b[0] for b in train[i : i + n]]), torch.cat([b[1] for b in train[i : i + n]]))
        for i in range(0, len(train), n)
    ]


def hand_big_batches(net, big, epochs=1, **opt_kwargs):
    opt = torch.optim.SGD(net.parameters(), **opt_kwargs)
    for _ in range(epochs):
        for xb, yb in big:
            F.cross_entropy(net(xb), yb).backward()
            opt.step()
            opt.zero_grad()


def assert_close(a: nn.Module, b: nn.Module, tol: float = 1e-10) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=tol)


@pytest.mark.parametrize(
    ("sizes", "n"),
    [
        ([16, 16, 16, 16, 6], 4),  # 70 items, 4 x 16 then a tail of 6
        ([10, 20, 5, 25, 10], 2),  # unequal batches, a short last group
        ([7, 3, 12], 5),  # one group shorter than n
    ],
)
def test_the_accumulated_step_is_the_step_of_one_big_batch(sizes, n):
    x, y = data(sum(sizes))
    train = split(x, y, sizes)
    net, ref = model(), model()
    learn = Learner(net, DataLoaders(train), lr=1.0, plugins=[GradientAccumulation(n)])
    learn.fit(1)
    hand_big_batches(ref, groups_of(train, n), lr=1.0)
    assert_close(net, ref)
    assert learn.opt_steps == -(-len(sizes) // n)


def test_momentum_and_weight_decay_over_several_steps_and_epochs_match_a_torch_loop():
    x, y = data(70, seed=1)
    train = split(x, y, [16, 16, 16, 16, 6])
    net, ref = model(), model()
    opt_kwargs = {"lr": 0.3, "momentum": 0.9, "weight_decay": 1e-2}

    def opt_func(params, lr):
        return torch.optim.SGD(params, **{**opt_kwargs, "lr": lr})

    learn = Learner(net, DataLoaders(train), opt_func=opt_func, lr=0.3, defaults=False,
                    plugins=[GradientAccumulation(2)])  # fmt: skip
    learn.fit(3)
    hand_big_batches(ref, groups_of(train, 2), epochs=3, **opt_kwargs)
    assert learn.opt_steps == 9
    assert_close(net, ref)


def test_a_per_token_count_gives_the_big_batch_of_a_loss_averaged_per_token():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, 5, 4, generator=g, dtype=DT)  # 12 sequences of 5 tokens
    y = torch.randint(0, 3, (12, 5), generator=g)
    y[torch.rand(12, 5, generator=g) < 0.4] = -100  # padding: unequal tokens per batch
    train = split(x, y, [4, 4, 4])

    def loss(preds, targets):
        return F.cross_entropy(preds.flatten(0, 1), targets.flatten(), ignore_index=-100)

    torch.manual_seed(0)
    net = nn.Linear(4, 3).to(DT)
    ref = copy.deepcopy(net)
    acc = GradientAccumulation(3, count=lambda learn: (learn.batch[1] != -100).sum())
    Learner(net, DataLoaders(train), loss_func=loss, lr=1.0, plugins=[acc]).fit(1)
    loss(ref(x), y).backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= p.grad
    assert_close(net, ref)


# Not the shared make_learner: the accumulation data and model (float64).
def from_datasets_learner(plugins=()):
    x, y = data(70, seed=3)
    dls = DataLoaders.from_datasets((x[:60], y[:60]), (x[60:], y[60:]), batch_size=16, seed=4)
    return Learner(model(), dls, lr=0.2, plugins=[GradientAccumulation(3), *plugins])


@pytest.mark.parametrize("batch", [1, 2])  # crash inside a group (its checkpoint: batch 0, 1)
def test_a_checkpoint_inside_a_group_resumes_exactly(tmp_path, batch):
    done = from_datasets_learner()
    done.fit(2)
    with pytest.raises(RuntimeError, match="killed"):
        from_datasets_learner([Checkpoint(tmp_path, every_n_batches=1), CrashAt(1, batch)]).fit(2)
    resumed = from_datasets_learner([Checkpoint(tmp_path, every_n_batches=1)])
    resumed.fit(2, resume_from=tmp_path)
    for p, q in zip(done.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_one_batch_groups_are_accepted_and_step_every_batch_like_no_accumulation():
    x, y = data(24, seed=5)
    batches = split(x, y, [8, 8, 8])
    plain = Learner(model(), DataLoaders(batches), lr=0.1, defaults=False)
    one = Learner(copy.deepcopy(plain.model), DataLoaders(batches), lr=0.1, defaults=False)
    one.add_plugin(GradientAccumulation(1))
    plain.fit(2)
    one.fit(2)
    assert_close(plain.model, one.model, tol=1e-12)


@pytest.mark.parametrize("as_module", [False, True])
def test_a_sum_loss_accumulates_the_step_of_one_big_batch_with_that_loss(as_module):
    from functools import partial

    sizes, n = [10, 20, 5, 25, 10], 2
    x, y = data(sum(sizes))
    train = split(x, y, sizes)
    loss = (
        nn.CrossEntropyLoss(reduction="sum")
        if as_module
        else partial(F.cross_entropy, reduction="sum")
    )
    net, ref = model(), model()
    learn = Learner(net, DataLoaders(train), loss, lr=0.01, plugins=[GradientAccumulation(n)])
    learn.fit(1)
    opt = torch.optim.SGD(ref.parameters(), lr=0.01)
    for xb, yb in groups_of(train, n):  # the oracle: each group as one batch, summed
        F.cross_entropy(ref(xb), yb, reduction="sum").backward()
        opt.step()
        opt.zero_grad()
    assert_close(net, ref)


def test_groups_of_one_item_step_like_plain_training():
    train = sized_batches([1, 1, 1])
    plain = Learner(model(), DataLoaders(train), lr=0.3, defaults=False)
    one = Learner(model(), DataLoaders(train), lr=0.3, defaults=False)
    one.add_plugin(GradientAccumulation(1))  # each group counts exactly 1 item
    plain.fit(1)
    one.fit(1)
    assert_same_weights(plain, one)


# Not the shared make_learner: the data in float64, a model with a frozen part.
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


class RaiseAfterBackward:
    """Raises after the backward of training batch 1 (inside a group of 3, before its step)."""

    @hookimpl
    def after_backward(self, learn):
        if learn.iter == 1:
            raise RuntimeError("after the backward, before the step")


def test_a_fit_after_one_that_raised_inside_a_group_starts_a_group_of_its_own():
    # the crashed fit's open group (2 batches' gradients and items) is not carried into the next
    # fit: it trains as a fresh Learner from the same weights (ready batches: the same order)
    def learner():
        batches = sized_batches([5, 7, 3, 6, 4, 2, 5], seed=1)
        return Learner(model(), DataLoaders(batches[:6], batches[6:]), lr=0.2,
                       plugins=[GradientAccumulation(3)])  # fmt: skip

    crashed = learner()
    with pytest.raises(RuntimeError, match="before the step"):
        crashed.fit(1, plugins=[RaiseAfterBackward()])
    fresh = learner()
    fresh.model.load_state_dict(crashed.model.state_dict())  # no step was taken
    crashed.fit(2)
    fresh.fit(2)
    for p, q in zip(fresh.model.parameters(), crashed.model.parameters(), strict=True):
        assert torch.equal(p, q)
