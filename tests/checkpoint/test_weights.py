"""learn.save / learn.load: roundtrips, wrapper prefixes, damaged files, exact dtypes only."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from torch import nn

from pluglearn import Learner, WeightsError
from tests.support.bn_classifier import equal, learner, make_model, state


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


def test_an_integer_file_into_a_float_model_is_refused_naming_key_and_dtypes(tmp_path):
    source = make_model(6)
    path = tmp_path / "w.pt"
    saved = {k: v.clone() for k, v in source.state_dict().items()}
    saved["0.weight"] = (saved["0.weight"] * 100).long()  # once cast silently: 39.6 off
    torch.save(saved, path)
    target = learner()
    before = state(target.model)
    with pytest.raises(WeightsError) as info:
        target.load(path)
    assert "0.weight int64 -> float32" in str(info.value)
    assert "build the model in the file's dtypes" in str(info.value)
    assert "0.bias" not in str(info.value)  # the float32 keys fit: only the culprit is named
    assert equal(state(target.model), before)  # every key checked before anything changed


@pytest.mark.parametrize(
    ("file_dtype", "model_dtype"),
    [
        (torch.float64, torch.float32),
        (torch.float32, torch.float16),
        (torch.float16, torch.bfloat16),
        (torch.bfloat16, torch.float16),
        (torch.complex64, torch.float32),
        (torch.float32, torch.int32),
    ],
)
def test_a_cast_that_loses_information_is_refused(tmp_path, file_dtype, model_dtype):
    path = tmp_path / "w.pt"
    torch.save({"weight": torch.tensor([[1 / 3, 70000.0]]).to(file_dtype)}, path)
    model = Holder(torch.zeros(1, 2, dtype=model_dtype))
    before = state(model)
    name = lambda d: str(d).removeprefix("torch.")  # noqa: E731
    with pytest.raises(WeightsError, match=f"weight {name(file_dtype)} -> {name(model_dtype)}"):
        Learner(model, learner().dls).load(path)
    assert equal(state(model), before)


class Holder(nn.Module):
    """A module whose state is one buffer of any dtype."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)


@pytest.mark.parametrize(
    ("file_dtype", "model_dtype"),
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.bfloat16, torch.float64),
        (torch.float32, torch.float64),
        (torch.int32, torch.int64),
        (torch.uint8, torch.int16),
    ],
)
def test_a_widening_that_keeps_every_value_loads_exactly(tmp_path, file_dtype, model_dtype):
    path = tmp_path / "w.pt"
    values = torch.tensor([[3.0, -7.0, 1 / 3, 250.0]]).to(file_dtype)  # 1/3 rounded in the file
    torch.save({"weight": values}, path)
    model = Holder(torch.zeros(1, 4, dtype=model_dtype))
    Learner(model, learner().dls).load(path)
    assert model.weight.dtype == model_dtype
    assert torch.equal(model.weight.to(file_dtype), values)  # back to the file's: nothing lost
    assert torch.equal(model.weight, values.to(model_dtype))


SIXTEEN_BIT = [torch.float16, torch.bfloat16, torch.int16]


FLOAT8 = [
    getattr(torch, name)
    for name in (
        "float8_e4m3fn",
        "float8_e5m2",
        "float8_e4m3fnuz",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
    )
    if hasattr(torch, name)
]
FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64, *FLOAT8]
INTS = [torch.int8, torch.uint8, torch.int16, torch.uint16, torch.int32, torch.uint32, torch.int64,
        torch.uint64]  # fmt: skip


def every_value(dtype: torch.dtype) -> torch.Tensor:
    """Each bit pattern of an 8- or 16-bit dtype, as a tensor of that dtype."""
    bits = 8 if dtype.itemsize == 1 else 16
    patterns = torch.arange(2**bits, dtype=torch.int32)
    return patterns.to(torch.uint8 if bits == 8 else torch.int16).view(dtype)


WIDER = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int16, torch.int32,
         torch.int64, torch.uint8, torch.int8, torch.complex64]  # fmt: skip


def kind(dtype: torch.dtype) -> str:
    return "complex" if dtype.is_complex else "float" if dtype.is_floating_point else "int"


@pytest.mark.parametrize("source", [*SIXTEEN_BIT, torch.int8, torch.uint8])
def test_exact_casts_are_those_that_keep_every_value_and_the_kind(source):
    """The oracle: every bit pattern of an 8- or 16-bit dtype, cast, compared as float64 (which
    holds each of their values exactly); int <-> float is refused even where values survive."""
    from pluglearn.checkpoint.weights import is_exact_cast

    every = every_value(source)
    before = every.to(torch.float64)
    for target in WIDER:
        after = every.to(target)
        after = (after.real if target.is_complex else after).to(torch.float64)
        nan = before.isnan()
        kept = torch.equal(after[~nan], before[~nan]) and bool(after[nan].isnan().all())
        expected = kept and kind(source) == kind(target)
        assert is_exact_cast(source, target) == expected, (source, target)


@pytest.mark.parametrize(
    ("key", "stripped"),
    [
        ("module.0.weight", "0.weight"),
        ("_orig_mod.0.weight", "0.weight"),
        ("module._orig_mod.module.x", "x"),  # repeatedly, in any order
        ("block.module.weight", "block.module.weight"),  # never inside a key
        ("head._orig_mod.bias", "head._orig_mod.bias"),
        ("modules.0.weight", "modules.0.weight"),  # a prefix is a whole name
    ],
)
def test_wrapper_prefixes_are_stripped_only_at_the_start(key, stripped):
    from pluglearn.checkpoint.weights import strip_prefixes

    assert strip_prefixes(key) == stripped


class WithModuleNamedModule(nn.Module):
    """A model with a submodule that happens to be called ``module``, inside a block."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Module()
        self.block.module = nn.Linear(5, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.block.module(x))


def test_a_model_with_a_submodule_named_module_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    source = WithModuleNamedModule()
    path = Learner(source, learner().dls).save(tmp_path / "w.safetensors")
    with safe_open(path, "pt") as f:
        assert sorted(f.keys()) == sorted(source.state_dict())  # block.module.weight kept
    for target in (WithModuleNamedModule(), Compiled(WithModuleNamedModule())):
        Learner(target, learner().dls).load(path)
        inner = target._orig_mod if isinstance(target, Compiled) else target
        assert equal(state(inner), state(source))


@pytest.mark.parametrize("source", [*FLOAT8, *SIXTEEN_BIT, *INTS[:4]], ids=str)
def test_a_cast_is_exact_when_every_value_of_the_source_is_the_same_python_number_after_it(source):
    """The oracle reads Python numbers: each value before and after the cast, NaN for NaN. The
    float8 formats are where torch.finfo misleads (float8_e5m2fnuz: the eps of a 3-bit
    mantissa; no infinities), and uint64 where a comparison in int64 would wrap."""
    from pluglearn.checkpoint.weights import is_exact_cast

    values = every_value(source)
    before = values.tolist()
    for target in FLOATS if source.is_floating_point else INTS:
        after = values.to(target).tolist()
        kept = all(a == b or (a != a and b != b) for a, b in zip(before, after, strict=True))
        assert is_exact_cast(source, target) == kept, (source, target)
