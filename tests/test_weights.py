"""learn.save / learn.load and learn.predict: roundtrips, wrapper prefixes, damaged files, modes."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from torch import nn

from pluglearn import DataLoaders, Learner, WeightsError, hookimpl

X = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))
Y = (X[:, 0] > 0).long()


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))


def learner(seed: int = 0, **kw) -> Learner:
    dls = DataLoaders.from_datasets((X[:32], Y[:32]), (X[32:], Y[32:]), batch_size=8)
    return Learner(make_model(seed), dls, defaults=False, **kw)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Compiled(nn.Module):
    """What torch.compile's OptimizedModule looks like to a state dict: keys `_orig_mod.*`."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._orig_mod = inner


class Wrapped(nn.Module):
    """DDP / DataParallel style: keys `module.*`."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.module = inner


# ------------------------------------------------------------------------------ save / load


def test_save_then_load_gives_the_same_weights_and_buffers(tmp_path):
    trained = learner()
    trained.fit(2)
    path = trained.save(tmp_path / "model.safetensors")
    fresh = learner(seed=1)
    assert not equal(state(fresh.model), state(trained.model))
    fresh.load(path)
    assert equal(state(fresh.model), state(trained.model))  # BatchNorm's running stats too
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary left


@pytest.mark.parametrize("wrapper", [Compiled, Wrapped, lambda m: Wrapped(Compiled(m))])
def test_wrapper_prefixes_are_stripped_on_save_and_accepted_on_load(tmp_path, wrapper):
    plain = make_model(3)
    wrapped = wrapper(make_model(3))
    path = tmp_path / "w.safetensors"
    Learner(wrapped, learner().dls).save(path)
    with safe_open(path, "pt") as f:
        assert sorted(f.keys()) == sorted(plain.state_dict())
    target = make_model(4)
    Learner(target, learner().dls).load(path)
    assert equal(state(target), state(plain))
    back_into_wrapper = wrapper(make_model(5))  # a plain file into a wrapped model
    Learner(back_into_wrapper, learner().dls).load(path)
    assert equal(state(back_into_wrapper), state(wrapper(make_model(3))))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_a_torch_saved_prefixed_state_dict_loads_into_a_plain_model(tmp_path, prefix):
    source = make_model(6)
    path = tmp_path / "w.pt"
    torch.save({prefix + k: v for k, v in source.state_dict().items()}, path)
    target = learner()
    target.load(path)
    assert equal(state(target.model), state(source))


def test_missing_and_unexpected_keys_are_named_and_nothing_changes(tmp_path):
    path = tmp_path / "w.safetensors"
    Learner(nn.Sequential(nn.Linear(5, 8), nn.Linear(8, 2)), learner().dls).save(path)
    target = learner()
    before = state(target.model)
    with pytest.raises(WeightsError) as info:
        target.load(path)
    text = str(info.value)
    assert "missing keys: 1.running_mean, 1.running_var, 1.num_batches_tracked, 3.weight" in text
    assert "shape mismatches (saved != model): 1.weight (2, 8) != (8,)" in text
    assert "Build the model the weights were saved from" in text
    assert equal(state(target.model), before)
    other = tmp_path / "o.safetensors"
    Learner(nn.Sequential(nn.Linear(5, 3)), learner().dls).save(other)
    with pytest.raises(WeightsError, match=r"0.weight \(3, 5\) != \(8, 5\)"):
        target.load(other)


def test_a_damaged_file_is_refused_and_names_the_problem(tmp_path):
    path = tmp_path / "w.safetensors"
    learner().save(path)
    data = bytearray(path.read_bytes())
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(bytes(data[:-3]) + bytes([data[-3] ^ 0xFF]) + bytes(data[-2:]))
    with pytest.raises(WeightsError, match="do not match the digest"):
        learner().load(flipped)
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        learner().load(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(WeightsError, match="not a safetensors header"):
        learner().load(garbage)
    with pytest.raises(FileNotFoundError, match="no weights file"):
        learner().load(tmp_path / "absent.safetensors")


class Payload:
    pass


def test_a_pickle_with_objects_is_refused_by_the_safe_load(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"0.weight": Payload()}, path)
    with pytest.raises(WeightsError, match="weights_only=True refuses"):
        learner().load(path)


# ---------------------------------------------------------------------------------- predict


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
