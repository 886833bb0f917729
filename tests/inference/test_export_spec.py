"""Constructor arguments recovered from torch layers and user classes, checked against the
original by an independent oracle: the same repr, and the same output once the weights are
loaded into the rebuilt layer."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

from pluglearn import ExportError, MixedPrecision
from pluglearn.inference.export_build import build
from pluglearn.inference.export_spec import constructor_args, import_path, object_spec
from tests.support.export_models import MLP, Configured

LAYERS = {
    "Linear without bias": (lambda: nn.Linear(4, 3, bias=False), (2, 4)),
    "Conv2d": (lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1, dilation=1, groups=2), (1, 2, 7, 7)),
    "Conv2d same, reflect": (
        lambda: nn.Conv2d(2, 3, (3, 5), padding="same", padding_mode="reflect", bias=False),
        (1, 2, 6, 6),
    ),
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(2, 3, 3, stride=2, output_padding=1), (1, 2, 5)),
    "BatchNorm1d": (lambda: nn.BatchNorm1d(4, eps=1e-3, momentum=None), (3, 4)),
    "BatchNorm2d without affine": (lambda: nn.BatchNorm2d(2, affine=False), (2, 2, 3, 3)),
    "LayerNorm": (lambda: nn.LayerNorm((3, 4), eps=1e-6, bias=False), (2, 3, 4)),
    "GroupNorm": (lambda: nn.GroupNorm(2, 4), (2, 4, 3)),
    "Embedding": (lambda: nn.Embedding(10, 3, padding_idx=0, max_norm=None), None),
    "Dropout": (lambda: nn.Dropout(0.25), (2, 4)),
    "ReLU inplace": (lambda: nn.ReLU(inplace=True), (2, 4)),
    "GELU tanh": (lambda: nn.GELU(approximate="tanh"), (2, 4)),
    "LeakyReLU": (lambda: nn.LeakyReLU(0.3), (2, 4)),
    "Softmax": (lambda: nn.Softmax(dim=0), (2, 4)),
    "Flatten": (lambda: nn.Flatten(0, 1), (2, 3, 4)),
    "Unflatten": (lambda: nn.Unflatten(1, (2, 2)), (3, 4)),
    "MaxPool2d": (lambda: nn.MaxPool2d(2, stride=1, ceil_mode=True), (1, 1, 5, 5)),
    "AdaptiveAvgPool2d": (lambda: nn.AdaptiveAvgPool2d((2, 1)), (1, 2, 5, 5)),
    "Identity": (lambda: nn.Identity(), (2, 4)),
    "LSTM": (
        lambda: nn.LSTM(4, 3, num_layers=2, batch_first=True, bidirectional=True, proj_size=2),
        (2, 5, 4),
    ),
    "GRU": (lambda: nn.GRU(4, 3, bias=False), (5, 2, 4)),
    "RNN": (lambda: nn.RNN(4, 3, nonlinearity="relu"), (5, 2, 4)),
    "Sequential": (lambda: nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)), (2, 4)),
    "Sequential of an OrderedDict": (
        lambda: nn.Sequential(OrderedDict(fc=nn.Linear(4, 2), act=nn.Sigmoid())),
        (2, 4),
    ),
    "a user's MLP": (lambda: MLP(4, 5, 2, p=0.2), (3, 4)),
    "get_config": (lambda: Configured((4, 6, 2), activation=nn.SiLU), (3, 4)),
}


def output(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    result = module.eval()(x)
    return result[0] if isinstance(result, tuple) else result


@pytest.mark.parametrize("name", list(LAYERS))
def test_a_layer_rebuilt_from_its_spec_computes_what_the_layer_computes(name):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = make()
    spec = json.loads(json.dumps(object_spec(layer)))  # through JSON, as in the file
    torch.manual_seed(1)  # another initialisation: only the loaded weights make them agree
    rebuilt = build(spec)
    assert type(rebuilt) is type(layer) and repr(rebuilt) == repr(layer)
    rebuilt.load_state_dict(layer.state_dict())
    x = torch.randint(0, 10, (2, 5)) if shape is None else torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(output(rebuilt, x.clone()), output(layer, x.clone()))


def test_module_containers_keep_their_kind_and_names():
    torch.manual_seed(0)
    holder = nn.Module()
    holder.blocks = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])
    holder.heads = nn.ModuleDict({"a": nn.Linear(2, 1), "b": nn.Linear(2, 3)})
    for container in (holder.blocks, holder.heads):
        rebuilt = build(object_spec(container))
        assert type(rebuilt) is type(container) and repr(rebuilt) == repr(container)


def test_model_args_fill_what_no_attribute_holds_and_override_attributes():
    mlp = MLP(4, 5, 2, p=0.2)
    args, kwargs = constructor_args(mlp, {"p": 0.5})
    assert args == [] and kwargs == {"n_in": 4, "n_hidden": 5, "n_out": 2, "p": 0.5}


def test_a_plugin_is_recorded_from_its_attributes_with_its_keyword_arguments():
    plugin = MixedPrecision(torch.bfloat16)
    spec = object_spec(plugin, where="plugin MixedPrecision")
    assert spec["kwargs"] == {"dtype": {"$dtype": "bfloat16"}}
    assert build(spec, "plugin").dtype == torch.bfloat16


def test_a_bool_argument_recovered_from_a_missing_parameter_is_false():
    _, kwargs = constructor_args(nn.Linear(3, 2, bias=False))
    assert kwargs == {"in_features": 3, "out_features": 2, "bias": False}


def test_classes_and_functions_are_recorded_by_their_import_path():
    spec = object_spec(Configured((3, 2), activation=nn.Tanh))
    assert spec["kwargs"]["activation"] == {"$ref": "torch.nn.modules.activation:Tanh"}
    assert build(spec).config["activation"] is nn.Tanh
    assert import_path(nn.functional.cross_entropy, "f") == "torch.nn.functional:cross_entropy"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (print, "standard library"),  # builtins: a crafted file's way to os.system
        (json.dumps, "standard library"),
        (lambda x: x, "is a lambda"),
    ],
)
def test_references_that_load_learner_would_refuse_are_refused_at_export(value, message):
    model = Configured((3, 2))
    model.config["activation"] = value
    with pytest.raises(ExportError, match=message):
        object_spec(model)


def test_get_config_must_return_a_dict():
    model = Configured((3, 2))
    model.get_config = lambda: [3, 2]
    with pytest.raises(ExportError, match=r"get_config\(\) returned list, not a dict"):
        object_spec(model)
