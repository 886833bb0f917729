"""Building from a record: only modules, plugins and configs are called, the standard library is
refused, and a rebuilt model's differences from its original are each named."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pluglearn import ExportError, load_learner
from pluglearn.inference.export_build import build, rebuild_differences
from pluglearn.inference.export_file import FORMAT, VERSION, write_export
from tests.support.export_models import MLP, Hidden


def linear(**kwargs) -> dict:
    return {"$object": "torch.nn.modules.linear:Linear", "args": [], "kwargs": kwargs}


def crafted(tmp_path, model: dict, plugins=(), loss=None, tensors=None):
    """An export whose record says ``model``, with a valid digest: what an attacker can write."""
    record = {
        "format": FORMAT,
        "version": VERSION,
        "pickled": False,
        "item_shape": [3],
        "dtype": "float32",
        "default_dtype": "float32",
        "model": model,
        "plugins": list(plugins),
        "loss_func": loss,
    }
    weights = {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)} if tensors is None else tensors
    return write_export(weights, record, tmp_path / "crafted.export")


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"$object": "os:system", "args": ["echo hacked"]}, "standard library"),
        ({"$object": "builtins:eval", "args": ["1"]}, "standard library"),
        (linear(in_features=3, out_features={"$ref": "subprocess:run"}), "standard library"),
        ({"$object": "pluglearn.learner:Learner"}, "not one"),  # a class, not a module
        ({"$object": "torch:save", "args": []}, "not one"),
        ({"$object": "no_such_package.models:Net"}, "cannot be imported.*install the package"),
        ({"$object": "torch.nn:NoSuchLayer"}, "code changed since the export"),
        ({"$weird": 1}, "damaged"),
        (linear(in_features=3, out_features={"$config": "torch.nn:Linear", "dict": {}}), "config"),
    ],
)
def test_a_crafted_or_stale_record_is_refused_before_anything_is_called(tmp_path, model, message):
    with pytest.raises(ExportError, match=message):
        load_learner(crafted(tmp_path, model))


def test_a_record_naming_a_module_as_a_plugin_is_refused(tmp_path):
    path = crafted(tmp_path, linear(in_features=3, out_features=2), plugins=[linear()])
    with pytest.raises(ExportError, match="as a plugin class, but it is not one"):
        load_learner(path)


def test_a_class_that_now_builds_another_model_is_an_error_naming_the_cause(tmp_path):
    path = crafted(tmp_path, linear(in_features=4, out_features=2))  # weights of a (2, 3)
    with pytest.raises(ExportError, match=r"weight \(2, 3\) != \(2, 4\).*code or its package"):
        load_learner(path)


def test_a_crafted_record_builds_only_what_it_may(tmp_path):
    path = crafted(tmp_path, linear(in_features=3, out_features=2))
    learn = load_learner(path, loss_func=nn.functional.mse_loss)
    assert isinstance(learn.model, nn.Linear) and torch.equal(learn.model.weight, torch.zeros(2, 3))


# ---------------------------------------------------------------------------------- differences


def test_an_identical_rebuild_has_no_differences():
    torch.manual_seed(0)
    a, b = MLP(4, 5, 2), MLP(4, 5, 2)
    assert rebuild_differences(a, b) == []


def test_every_kind_of_difference_is_named():
    torch.manual_seed(0)
    model = MLP(4, 5, 2)
    assert rebuild_differences(model, MLP(4, 6, 2)) == [
        "model.n_hidden is 6 rebuilt, 5 in the model",
        "model.body.0.out_features is 6 rebuilt, 5 in the model",
        "model.head.in_features is 6 rebuilt, 5 in the model",
        "body.0.weight is (6, 4) float32 rebuilt, (5, 4) float32 in the model",
        "body.0.bias is (6,) float32 rebuilt, (5,) float32 in the model",
        "head.weight is (2, 6) float32 rebuilt, (2, 5) float32 in the model",
    ]
    other = MLP(4, 5, 2)
    other.body[1] = nn.Tanh()
    assert rebuild_differences(model, other) == [
        "model.body.1 is a Tanh rebuilt, a ReLU in the model"
    ]
    assert rebuild_differences(model, MLP(4, 5, 2).double())[-1] == (
        "head.bias is (2,) float64 rebuilt, (2,) float32 in the model"
    )
    fewer = MLP(4, 5, 2)
    del fewer.head
    assert rebuild_differences(model, fewer)[:2] == [
        "the rebuilt model lacks submodules head",
        "the rebuilt model lacks the weights head.weight, head.bias",
    ]
    assert rebuild_differences(Hidden(4, 3, scale=2.0), Hidden(4, 3))[0] == (
        "buffer model.scale (not saved with the weights) differs"
    )


def test_build_refuses_a_plugin_class_that_implements_no_hook():
    with pytest.raises(ExportError, match="as a plugin class"):
        build({"$object": "pluglearn.data.loaders:DataLoaders", "args": [None]}, "plugin")
    plugin = build({"$object": "pluglearn.plugins.hf:HFModel", "kwargs": {}}, "plugin")
    assert type(plugin).__name__ == "HFModel"
