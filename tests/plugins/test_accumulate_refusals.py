"""GradientAccumulation's refusals, each with its whole advice: settings, loaders without a
length, backward providers that answer first, groups counting no items, a resume into another
model."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import DataLoaders, Learner, ManualBackward, hookimpl
from pluglearn.plugins.accumulate import GradientAccumulation
from tests.helpers import first_line, tiny_data
from tests.support.accumulation import assert_same_weights, data, model, sized_batches, split


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


def test_a_count_with_a_sum_loss_is_refused_naming_the_reduction():
    from functools import partial

    x, y = data(8)
    loss = partial(F.cross_entropy, reduction="sum")
    accumulate = GradientAccumulation(2, count=lambda learn: len(learn.yb))
    learn = Learner(model(), DataLoaders(split(x, y, [4, 4])), loss, plugins=[accumulate])
    with pytest.raises(ValueError, match=r"sums over them \(reduction='sum'\).*drop count="):
        learn.fit(1)


class NoLen:
    """Batches without a length: the loader a generator or a stream gives."""

    def __init__(self, batches) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


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
