"""learn.load refusing what it cannot load exactly, each message in full (the file, what is wrong,
the fix); and what learn.save writes: tied and transposed tensors, a new folder, the header."""

from __future__ import annotations

import struct

import pytest
import torch
from safetensors import safe_open
from torch import nn

from pluglearn import Checkpoint, Learner, WeightsError
from pluglearn.checkpoint import weights
from pluglearn.checkpoint.files import checkpoints_in
from pluglearn.checkpoint.weights import load_state_checked, own_keys, storable
from tests.checkpoint.test_weights import Payload
from tests.helpers import raised_by
from tests.support.bn_classifier import equal, learner, make_model, state

FIX = "save it again, or load another copy."
STATE_DICT_FIX = "save weights with learn.save(path) or torch.save(model.state_dict(), path)."


def refusal(path, error=WeightsError) -> str:
    return raised_by(lambda: learner().load(path), error)


# ------------------------------------------------------------------------ damaged files


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x01" * 7, "7 bytes"),  # shorter than the header's length
        (struct.pack("<Q", 0), "its header is not a safetensors header"),  # a length, no header
        (struct.pack("<Q", 3) + b"[1]", "its header is not a safetensors header"),  # not a dict
        (
            struct.pack("<Q", 2**63 + 2) + b"{}",  # a length read unsigned: past the end
            "SafetensorError: Error while deserializing: header too large",
        ),
        (
            struct.pack("<Q", 2) + b"{}xx",
            "SafetensorError: Error while deserializing: incomplete metadata, file not fully "
            "covered",
        ),
    ],
    ids=["7-bytes", "8-bytes", "list-header", "huge-length", "bad-data"],
)
def test_a_damaged_weights_file_is_refused_naming_the_file_and_the_damage(tmp_path, data, why):
    path = tmp_path / "w.safetensors"
    path.write_bytes(data)
    assert refusal(path) == f"weights file {path} is corrupt or truncated ({why}): {FIX}"


def test_tensors_that_do_not_match_their_digest_are_refused_naming_the_file(tmp_path):
    path = learner().save(tmp_path / "w.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))  # one bit of the last tensor
    assert refusal(path) == (
        f"weights file {path} is corrupt or truncated (its tensors do not match the digest "
        f"written with them): {FIX}"
    )


def test_a_missing_file_names_the_path_and_what_to_pass(tmp_path):
    path = tmp_path / "absent.safetensors"
    assert refusal(path, FileNotFoundError) == (
        f"no weights file at {path}: pass the path learn.save() wrote (e.g. 'model.safetensors')."
    )


# ------------------------------------------------------------------ files of torch.save


def test_a_torch_file_with_objects_is_refused_with_torch_s_reason_cut_to_200_characters(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"0.weight": Payload()}, path)
    text = refusal(path)
    head = f"{path} cannot be read safely (UnpicklingError: "
    tail = "): it is corrupt, or holds objects other than tensors (weights_only=True refuses them)."
    assert text.startswith(head) and text.endswith(tail)
    assert len(text) - len(head) - len(tail) == 200  # torch's own message is long


@pytest.mark.parametrize(
    ("saved", "kind"),
    [
        ([torch.zeros(2)], "list"),
        ({"0.weight": 1.5}, "dict"),  # a value that is not a tensor
        ({0: torch.zeros(2)}, "dict"),  # a key that is not a name
    ],
    ids=["list", "number-value", "int-key"],
)
def test_a_torch_file_that_is_not_a_state_dict_of_tensors_is_refused_naming_what_it_holds(
    tmp_path, saved, kind
):
    path = tmp_path / "w.pt"
    torch.save(saved, path)
    assert refusal(path) == f"{path} holds a {kind}, not a state dict of tensors: {STATE_DICT_FIX}"


def test_the_model_of_a_pluglearn_checkpoint_loads_as_weights(tmp_path):
    trained = learner(plugins=[Checkpoint(tmp_path)])
    trained.fit(1)
    (path,) = checkpoints_in(tmp_path)
    fresh = learner(seed=1)
    assert not equal(state(fresh.model), state(trained.model))
    fresh.load(path)
    assert equal(state(fresh.model), state(trained.model))


# ------------------------------------------------------------------------- keys, dtypes


def test_two_keys_that_become_one_without_prefixes_are_refused_naming_the_source(tmp_path):
    saved = {k: v.clone() for k, v in make_model().state_dict().items()}
    saved["module.0.weight"] = saved["0.weight"]  # a second copy, under DDP's prefix
    collision = (
        "keys 'module.0.weight' and another both become '0.weight' without their wrapper "
        "prefixes ('_orig_mod.', 'module.'): save the unwrapped model's state dict."
    )
    with pytest.raises(WeightsError) as info:
        load_state_checked(make_model(), saved, "my state")
    assert str(info.value) == f"my state: {collision}"
    path = tmp_path / "w.pt"
    torch.save(saved, path)
    assert refusal(path) == f"weights file {path}: {collision}"


class WeightBesideModule(nn.Module):
    """A model whose own ``weight`` and submodule ``module``'s weight share a name once
    ``module.`` (DDP's prefix) is stripped."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(3))
        self.module = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        return self.module(x) + self.weight


def test_a_model_whose_own_keys_collide_without_prefixes_is_refused_naming_the_model(tmp_path):
    learn = Learner(WeightBesideModule(), learner().dls, defaults=False)
    with pytest.raises(WeightsError) as info:
        learn.save(tmp_path / "w.safetensors")
    assert str(info.value).startswith(
        "the model: keys 'module.weight' and another both become 'weight' without their wrapper"
    )


class Floats(nn.Module):
    """Seven float tensors, as a model's state dict."""

    def __init__(self) -> None:
        super().__init__()
        for i in range(7):
            self.register_buffer(f"b{i}", torch.zeros(2))


def test_casts_that_change_values_are_refused_listing_five_keys_and_counting_the_rest(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({f"b{i}": torch.zeros(2, dtype=torch.int64) for i in range(7)}, path)
    listed = ", ".join(f"b{i} int64 -> float32" for i in range(5))
    with pytest.raises(WeightsError) as info:
        Learner(Floats(), learner().dls, defaults=False).load(path)
    assert str(info.value) == (
        f"weights file {path} holds tensors whose values would change if cast to the model's "
        f"dtypes: {listed} (and 2 more) (file -> model). If that change is intended, convert the "
        "file yourself (read the tensors, .to() the model's dtype, save them again); else build "
        "the model in the file's dtypes (e.g. model.to(torch.float64) for a float64 file). A "
        "cast that keeps every value (float16 or bfloat16 into float32) loads as it is."
    )


@pytest.mark.skipif(not hasattr(torch, "float8_e5m2fnuz"), reason="needs torch's float8 formats")
def test_a_float8_file_into_a_format_without_infinities_is_refused(tmp_path):
    """float8_e5m2 has infinities, float8_e5m2fnuz has none (inf would load as NaN)."""
    model = nn.Module()
    model.register_buffer("scale", torch.zeros(2, dtype=torch.float8_e5m2fnuz))
    path = tmp_path / "w.safetensors"
    weights.write_tensors({"scale": torch.tensor([1.0, float("inf")]).to(torch.float8_e5m2)}, path)
    with pytest.raises(WeightsError, match="scale float8_e5m2 -> float8_e5m2fnuz"):
        Learner(model, learner().dls, defaults=False).load(path)


def test_keys_the_model_lacks_keep_their_names_without_prefixes():
    linear = nn.Linear(2, 1)
    extra = torch.zeros(1)
    assert own_keys(linear, {"module.weight": linear.weight, "module.extra": extra}) == {
        "weight": linear.weight,
        "extra": extra,
    }


# ----------------------------------------------------------------------------- writing


def test_storable_copies_only_what_safetensors_refuses_tied_and_transposed_tensors():
    w, other = torch.zeros(2, 3), torch.ones(3)
    stored = storable({"a": w, "b": w, "t": w.t(), "c": other})
    assert stored["a"].data_ptr() == w.data_ptr() and stored["c"].data_ptr() == other.data_ptr()
    assert stored["b"].data_ptr() != w.data_ptr() and torch.equal(stored["b"], w)  # tied: copied
    assert stored["t"].is_contiguous() and torch.equal(stored["t"], w.t())


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(4, 3)
        self.head = nn.Linear(3, 4, bias=False)
        self.head.weight = self.embed.weight  # tied, as language models tie them


def test_a_tied_model_saves_into_a_new_folder_with_its_format_and_loads_back(tmp_path):
    torch.manual_seed(0)
    source = Learner(Tied(), learner().dls, defaults=False)
    path = source.save(tmp_path / "new" / "folder" / "w.safetensors")
    with safe_open(path, "pt") as f:
        assert f.metadata()["format"] == "pluglearn-weights"
    target = Learner(Tied(), learner().dls, defaults=False)
    target.load(path)
    assert equal(state(target.model), state(source.model))


def test_a_write_that_fails_raises_its_own_error(tmp_path, monkeypatch):
    """When the temporary file cannot even be created, its clean-up has nothing to remove and
    raises nothing of its own over the error."""
    unwritable = tmp_path / "no-such-folder" / "w.tmp"
    monkeypatch.setattr(weights, "temporary_path", lambda path: unwritable)
    with pytest.raises(FileNotFoundError) as info:
        weights.write_tensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    assert info.value.filename == str(unwritable) and info.value.__context__ is None
