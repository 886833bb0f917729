"""The export file: damaged tensors or records, other formats and versions are clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pluglearn import DataLoaders, ExportError, Learner, WeightsError, load_learner
from pluglearn.inference.export_file import FORMAT, write_export

X = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def exported(tmp_path):
    torch.manual_seed(0)
    learn = Learner(nn.Linear(3, 2), DataLoaders.from_datasets((X, X[:, 0].long().abs())))
    return learn.export(tmp_path / "m.export")


def test_a_damaged_tensor_is_refused(exported, tmp_path):
    data = bytearray(exported.read_bytes())
    data[-3] ^= 0xFF
    flipped = tmp_path / "flipped.export"
    flipped.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"export .* is corrupt.*do not match the digest"):
        load_learner(flipped)


def test_a_changed_record_is_refused_even_when_it_is_valid_json(exported, tmp_path):
    data = exported.read_bytes()
    changed = data.replace(b'\\"out_features\\": 2', b'\\"out_features\\": 3')
    assert changed != data  # the record is JSON inside the header's JSON
    edited = tmp_path / "edited.export"
    edited.write_bytes(changed)
    with pytest.raises(ExportError, match="record does not match the digest"):
        load_learner(edited)


def test_a_truncated_export_is_refused(exported, tmp_path):
    cut = tmp_path / "cut.export"
    cut.write_bytes(exported.read_bytes()[:100])
    with pytest.raises(ExportError, match="corrupt or truncated"):
        load_learner(cut)
    assert issubclass(ExportError, WeightsError)  # one except clause catches both


def test_other_files_are_named_as_what_they_are(tmp_path):
    learn = Learner(nn.Linear(3, 2), DataLoaders([(X, X)]))
    weights = learn.save(tmp_path / "w.safetensors")
    with pytest.raises(ExportError, match="format 'pluglearn-weights', not an export"):
        load_learner(weights)
    torch.save(learn.model.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ExportError, match=r"torch.save file .* not an export"):
        load_learner(tmp_path / "w.pt")
    with pytest.raises(FileNotFoundError, match="no export at"):
        load_learner(tmp_path / "absent.export")


def test_another_version_or_a_record_without_its_parts_is_refused(tmp_path):
    record = {"format": FORMAT, "version": 99, "pickled": False}
    with pytest.raises(ExportError, match="version 99; this pluglearn reads version 1"):
        load_learner(write_export({}, record, tmp_path / "v.export"))
    record["version"] = 1
    with pytest.raises(ExportError, match="damaged: its record lacks"):
        load_learner(write_export({}, record, tmp_path / "parts.export"))
    record.update(model=None, plugins=[], loss_func=None, dtype="save", default_dtype="float32")
    with pytest.raises(ExportError, match="damaged: its record lacks its dtypes"):
        load_learner(write_export({}, record, tmp_path / "dtype.export"))


def test_the_record_is_plain_json_in_the_safetensors_header(exported):
    from safetensors import safe_open

    with safe_open(exported, "pt") as f:
        meta = f.metadata()
        assert sorted(f.keys()) == ["bias", "weight"]
    record = json.loads(meta["pluglearn_export"])
    assert record["model"]["$object"] == "torch.nn.modules.linear:Linear"
    assert record["loss_func"] == {"$ref": "torch.nn.functional:cross_entropy"}
    assert record["item_shape"] == [3] and record["dtype"] == "float32"
