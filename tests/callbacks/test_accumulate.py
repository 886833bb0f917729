"""GradientAccumulation against its oracle: one big batch of the same items, in float64."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import DataLoaders, Learner, ManualBackward, hookimpl
from pluglearn.checkpoint.plugin import Checkpoint
from pluglearn.plugins.accumulate import GradientAccumulation
from tests.helpers import CrashAt, tiny_data

DT = torch.float64


def data(n: int, seed: int = 0):
    x, y = tiny_data(n, seed=seed)
    return x.to(DT), y


def split(x, y, sizes):
    out, at = [], 0
    for s in sizes:
        out.append((x[at : at + s], y[at : at + s]))
        at += s
    assert at == len(x)
    return out


def groups_of(train, n):
    """The big batches the groups of n batches make (the last group may be short)."""
    return [
        (torch.cat([b[0] for b in train[i : i + n]]), torch.cat([b[1] for b in train[i : i + n]]))
        for i in range(0, len(train), n)
    ]


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(DT)


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


def test_the_loss_metrics_see_stays_the_batch_loss():
    x, y = data(20)
    train = split(x, y, [8, 8, 4])
    net, ref = model(), model()
    learn = Learner(net, DataLoaders(train), lr=0.5, plugins=[GradientAccumulation(3)])
    learn.fit(1)
    with torch.no_grad():
        expected = F.cross_entropy(ref(x), y).item()  # one group: the weights before the step
    assert learn.metrics["train_loss"] == pytest.approx(expected, rel=1e-12)


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


def test_manual_backward_is_refused_unless_the_batch_gradients_are_summed():
    from pluglearn.scratch import CrossEntropy, Linear, Sequential

    x, y = tiny_data(8)
    dls = DataLoaders(split(x, y, [4, 4]))
    net = Sequential(Linear(4, 3, generator=torch.Generator().manual_seed(0)))
    learn = Learner(net, dls, loss_func=CrossEntropy(), plugins=[ManualBackward()])
    with pytest.raises(ValueError, match="scale_loss=False"):
        learn.fit(1, plugins=[GradientAccumulation(2)])
    learn.fit(1, plugins=[GradientAccumulation(2, scale_loss=False)])


def test_a_loader_without_length_is_refused():
    x, y = tiny_data(8)

    class NoLen:
        def __iter__(self):
            return iter(split(x, y, [4, 4]))

    learn = Learner(nn.Linear(4, 3), DataLoaders(NoLen()), plugins=[GradientAccumulation(2)])
    with pytest.raises(ValueError, match="needs a training loader with a length"):
        learn.fit(1)


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_the_number_of_batches_must_be_a_positive_int(n):
    with pytest.raises(ValueError, match="give an int >= 1"):
        GradientAccumulation(n)


def test_count_must_be_a_function():
    with pytest.raises(TypeError, match="give a function of the Learner"):
        GradientAccumulation(2, count=16)


class FirstBackward:
    """A backward provider that answers before GradientAccumulation (tryfirst, registered
    earlier): the weighting never happens, which must be refused, not trained on."""

    @hookimpl(tryfirst=True)
    def backward(self, learn):
        learn.loss.backward()
        return True


def test_a_backward_provider_answering_before_the_weighting_is_refused():
    x, y = data(12)
    learn = Learner(model(), DataLoaders(split(x, y, [4, 4, 4])), lr=0.1)
    learn.add_plugin(FirstBackward())
    learn.add_plugin(GradientAccumulation(2))
    with pytest.raises(RuntimeError, match=r"answered before it weighted the loss.*FirstBackward"):
        learn.fit(1)


class BackwardFails:
    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    @hookimpl
    def backward(self, learn):
        raise ValueError("backward broke")

    @hookimpl
    def on_error(self, learn):
        self.seen.append(learn.loss)

    @hookimpl
    def cleanup_batch(self, learn):
        self.seen.append(learn.loss)


def test_a_failed_backward_leaves_the_batch_loss_for_on_error_and_the_cleanups():
    x, y = data(12)
    failing = BackwardFails()
    learn = Learner(model(), DataLoaders(split(x, y, [4, 4, 4])), lr=0.1)
    learn.add_plugin(GradientAccumulation(2))
    learn.add_plugin(failing)
    with pytest.raises(ValueError, match="backward broke"):
        learn.fit(1)
    with torch.no_grad():
        own = F.cross_entropy(model()(x[:4]), y[:4])
    assert len(failing.seen) == 2
    for loss in failing.seen:  # the batch's own loss, not the loss weighted by its 4 items
        assert torch.equal(loss.detach(), own)


def test_one_batch_groups_are_accepted_and_step_every_batch_like_no_accumulation():
    x, y = data(24, seed=5)
    batches = split(x, y, [8, 8, 8])
    plain = Learner(model(), DataLoaders(batches), lr=0.1, defaults=False)
    one = Learner(copy.deepcopy(plain.model), DataLoaders(batches), lr=0.1, defaults=False)
    one.add_plugin(GradientAccumulation(1))
    plain.fit(2)
    one.fit(2)
    assert_close(plain.model, one.model, tol=1e-12)


def test_a_0_dim_target_counts_one_item_and_uncountable_targets_name_the_fix():
    from pluglearn.plugins.accumulate import count_targets

    learn = Learner(model(), DataLoaders(split(*data(4), [4])), defaults=False)
    learn.batch = (None, torch.tensor(3))
    assert count_targets(learn) == 1
    learn.batch = (None, object())
    with pytest.raises(TypeError, match=r"batch of type tuple: .* answer the count_items hook"):
        count_targets(learn)


def test_count_with_summed_batches_is_refused_naming_both():
    with pytest.raises(ValueError, match=r"^count= weights the batches, scale_loss=False sums"):
        GradientAccumulation(2, count=lambda learn: 1, scale_loss=False)
    with pytest.raises(TypeError, match=r"e\.g\. count=lambda learn: len\(learn\.yb\)\.$"):
        GradientAccumulation(2, count=3)


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


def test_a_count_with_a_sum_loss_is_refused_naming_the_reduction():
    from functools import partial

    x, y = data(8)
    loss = partial(F.cross_entropy, reduction="sum")
    accumulate = GradientAccumulation(2, count=lambda learn: len(learn.yb))
    learn = Learner(model(), DataLoaders(split(x, y, [4, 4])), loss, plugins=[accumulate])
    with pytest.raises(ValueError, match=r"sums over them \(reduction='sum'\).*drop count="):
        learn.fit(1)
