"""Compile: a fit through torch.compile equals a hand-written loop on the same compiled model,
keeps the plain model's keys, reuses its graphs across epochs and fits, and resumes across
compiled and plain runs bit for bit.

The fast tests use ``backend="eager"`` (dynamo traces the model, torch runs the graph as it is):
the same numbers as the plain model, so a compiled and a plain run can be compared bit for
bit. The inductor tests (real code generation, tens of seconds here) are marked slow.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluglearn import Checkpoint, Compile, DataLoaders, Learner, hookimpl
from pluglearn.checkpoint.weights import read_weights

N_TRAIN, N_VALID, BS = 24, 16, 8  # 3 training batches, 1 validation batch of 16


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch: dynamo's caches (and recompile limits) are global."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + N_VALID, 6, generator=g)
    y = torch.randint(0, 3, (N_TRAIN + N_VALID,), generator=g)
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


def make_model(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))


# Not the shared make_learner: 6-feature data and the test's own model.
def make_learner(model: nn.Module, plugins=(), **kwargs) -> Learner:
    train, valid = data()
    dls = DataLoaders.from_datasets(train, valid, batch_size=BS, seed=1)
    opt = lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9)  # noqa: E731
    return Learner(model, dls, opt_func=opt, lr=0.1, plugins=plugins, defaults=False, **kwargs)


def hand_loop(compiled: nn.Module, model: nn.Module, n_epochs: int) -> list[float]:
    """What a person writes around a compiled model: the Learner's order, its validation too
    (it decides which graphs dynamo compiles), and its losses."""
    (x, y), (xv, yv) = data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    order = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(n_epochs):
        model.train()
        perm = torch.randperm(N_TRAIN, generator=order)
        for i in range(0, N_TRAIN, BS):
            idx = perm[i : i + BS]
            loss = F.cross_entropy(compiled(x[idx]), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            losses.append(F.cross_entropy(compiled(xv), yv).item())
    return losses


class Losses:
    """Every batch's loss, training and validation, in order."""

    def __init__(self) -> None:
        self.values: list[float] = []

    @hookimpl
    def after_loss(self, learn):
        self.values.append(learn.loss.item())


class Wrapped:
    """What ``learn.wrapped_model`` is in each pass."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    @hookimpl
    def after_pred(self, learn):
        self.seen.append(("train" if learn.training else "valid", learn.wrapped_model))


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.slow
def test_a_compiled_fit_equals_a_hand_loop_on_the_same_compiled_model():
    losses, model = Losses(), make_model()
    reference = copy.deepcopy(model)
    learn = make_learner(model, [Compile(backend="eager"), losses])
    learn.fit(3)
    expected = hand_loop(torch.compile(reference, backend="eager"), reference, 3)
    assert losses.values == expected
    assert_same_weights(model, reference)


def test_the_model_keeps_its_own_keys_and_wrapped_model_is_set_for_the_fit_only(tmp_path):
    wrapped = Wrapped()
    learn = make_learner(make_model(), [Compile(backend="eager"), wrapped])
    learn.fit(1)
    kinds = {(phase, type(w).__name__) for phase, w in wrapped.seen}
    assert kinds == {("train", "OptimizedModule"), ("valid", "OptimizedModule")}
    assert {getattr(w, "_orig_mod", None) for _, w in wrapped.seen} == {learn.model}
    assert learn.wrapped_model is None  # after the fit: predict runs the plain model
    assert not any("_orig_mod" in k for k in learn.model.state_dict())
    assert not any("_orig_mod" in k for k in read_weights(learn.save(tmp_path / "w.safetensors")))


def test_validation_compiles_once_and_every_later_epoch_and_fit_reuses_the_graphs():
    graphs = []

    def counting(gm, example_inputs):  # a dynamo backend: counts the graphs it is given
        graphs.append(gm)
        return gm.forward

    learn = make_learner(make_model(), [Compile(backend=counting)])
    learn.fit(1)
    first_epoch = len(graphs)
    assert 2 <= first_epoch <= 3  # training, then eval mode under no_grad (+ a dynamic shape)
    learn.fit(3)
    learn.validate()
    learn.get_preds()
    assert len(graphs) == first_epoch


def test_predict_outside_a_fit_runs_the_plain_model_and_gives_the_compiled_result():
    learn = make_learner(make_model(), [Compile(backend="eager")])
    learn.fit(1)
    (_, _), (xv, _) = data()
    preds, _ = learn.get_preds()  # through the compiled model
    assert torch.equal(learn.predict(xv), preds)


class DieAt:
    """Raises at training batch ``n`` of the Learner's life, as a crash would."""

    def __init__(self, n: int) -> None:
        self.n = n

    @hookimpl
    def before_batch(self, learn):
        if learn.training and learn.train_iter == self.n:
            raise RuntimeError("killed")


@pytest.mark.parametrize(("before", "after"), [(True, False), (False, True)])
def test_a_checkpoint_resumes_across_compiled_and_plain_runs_bit_identically(
    tmp_path, before, after
):
    def plugins(compiled: bool) -> list[object]:
        return [Compile(backend="eager")] if compiled else []

    whole = make_learner(make_model(dropout=0.3), plugins(False))
    whole.fit(3)
    cut = make_learner(make_model(dropout=0.3), plugins(before))
    with pytest.raises(RuntimeError, match="killed"):
        cut.fit(3, plugins=[Checkpoint(tmp_path, every_n_batches=1), DieAt(5)])
    resumed = make_learner(make_model(dropout=0.3), plugins(after))
    resumed.fit(3, resume_from=tmp_path)
    assert resumed.train_iter == whole.train_iter == 9
    assert_same_weights(resumed.model, whole.model)


def test_unknown_arguments_and_a_bad_mode_are_refused_when_the_plugin_is_made():
    with pytest.raises(TypeError, match=r"Compile\(fulgraph=...\): torch.compile takes no such"):
        Compile(fulgraph=True)
    with pytest.raises(RuntimeError, match="Unrecognized mode=fastest"):
        Compile(mode="fastest")


# ------------------------------------------------------------------ inductor (slow)


@pytest.mark.slow
def test_inductor_fit_equals_a_hand_loop_on_the_same_inductor_model_and_resumes_exactly(tmp_path):
    losses, model = Losses(), make_model()
    reference = copy.deepcopy(model)
    learn = make_learner(model, [Compile(), losses])
    learn.fit(2)
    expected = hand_loop(torch.compile(reference), reference, 2)
    assert losses.values == expected
    assert_same_weights(model, reference)

    cut = make_learner(make_model(), [Compile()])
    with pytest.raises(RuntimeError, match="killed"):
        cut.fit(2, plugins=[Checkpoint(tmp_path, every_n_batches=1), DieAt(4)])
    resumed = make_learner(make_model(), [Compile()])
    resumed.fit(2, resume_from=tmp_path)
    assert_same_weights(resumed.model, model)
