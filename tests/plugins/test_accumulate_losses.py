"""What plugins see as ``learn.loss`` under GradientAccumulation: each batch's own loss, never the
weighted one, also when a batch is cancelled in its backward or an error comes before the first
loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pluglearn import CancelBatchException, DataLoaders, Learner, hookimpl
from pluglearn.plugins.accumulate import GradientAccumulation
from tests.support.accumulation import data, model, sized_batches, split


def test_the_loss_metrics_see_stays_the_batch_loss():
    x, y = data(20)
    train = split(x, y, [8, 8, 4])
    net, ref = model(), model()
    learn = Learner(net, DataLoaders(train), lr=0.5, plugins=[GradientAccumulation(3)])
    learn.fit(1)
    with torch.no_grad():
        expected = F.cross_entropy(ref(x), y).item()  # one group: the weights before the step
    assert learn.metrics["train_loss"] == pytest.approx(expected, rel=1e-12)


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
