"""learn.predict: one item or a batch, in eval mode without gradients, inside a hook without
changing the fit, and asking for ``batched=`` when it cannot tell."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pluglearn import DataLoaders, Learner, hookimpl

X = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))


Y = (X[:, 0] > 0).long()


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))


# Not the shared make_learner: 5-feature, 2-class data of its own.
def learner(seed: int = 0, **kw) -> Learner:
    dls = DataLoaders.from_datasets((X[:32], Y[:32]), (X[32:], Y[32:]), batch_size=8)
    return Learner(make_model(seed), dls, defaults=False, **kw)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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
