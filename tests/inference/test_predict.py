"""learn.predict: one item or a batch, in eval mode without gradients, inside a hook without
changing the fit, and asking for ``batched=`` when it cannot tell."""

from __future__ import annotations

import pytest
import torch

from pluglearn import DataLoaders, Learner, hookimpl
from tests.support.bn_classifier import X, Y, equal, learner, make_model, state


def test_predict_one_item_and_a_batch_match_the_model_in_eval_mode():
    learn = learner()
    learn.fit(1)
    learn.model.train()
    learn.model[2].eval()  # a mixed mode, put back as it was
    modes = [m.training for m in learn.model.modules()]
    one, batch = learn.predict(X[3]), learn.predict(X[:6])
    assert [m.training for m in learn.model.modules()] == modes
    reference = make_model()
    reference.load_state_dict(learn.model.state_dict())
    reference.eval()
    with torch.no_grad():
        expected = reference(X[:6])
    assert one.shape == (2,) and torch.equal(one, reference(X[3:4]).detach()[0])
    assert torch.equal(batch, expected) and not batch.requires_grad


def test_predict_inside_a_hook_leaves_the_fit_unchanged():
    class Peek:
        def __init__(self):
            self.seen = []

        @hookimpl
        def after_batch(self, learn):
            self.seen.append(learn.predict(X[0]))

    torch.manual_seed(9)
    plain = learner()
    plain.fit(2)
    torch.manual_seed(9)
    peek = Peek()
    peeking = learner(plugins=[peek])
    peeking.fit(2)
    assert equal(state(peeking.model), state(plain.model))
    assert len(peek.seen) == 2 * (4 + 1) and all(p.shape == (2,) for p in peek.seen)


def test_predict_asks_for_batched_when_it_cannot_tell():
    learn = Learner(make_model(), DataLoaders([(X[:8], Y[:8])]), defaults=False)
    with pytest.raises(ValueError, match=r"Pass batched=True \(x is a batch\)"):
        learn.predict(X[0])
    assert learn.predict(X[0], batched=False).shape == (2,)
    assert learn.predict(X[:3], batched=True).shape == (3, 2)
    with pytest.raises(ValueError, match="an item of the dataset has 1"):
        learner().predict(X[None, None])
