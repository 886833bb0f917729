"""Which hooks MixedPrecision implements: the GradScaler's only with float16 (LossScaling).

bfloat16 needs no loss scaling, so its plugin leaves ``backward``, ``before_step`` and ``step``
to the other providers entirely; float16 adds them, for ``MixedPrecision`` and for a user's
subclass alike, and the plugin keeps its name, its type and its hooks through copy and pickle.
"""

from __future__ import annotations

import copy
import pickle

import torch
from torch import nn

from pluglearn import DataLoaders, Learner, MixedPrecision
from pluglearn.hooks.markers import hookimpl
from pluglearn.plugins.mixed_precision import LossScaling

SCALER_HOOKS = ("backward", "before_step", "step")


def providers(plugin: object) -> dict[str, list[str]]:
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    learn = Learner(nn.Linear(3, 2), DataLoaders.from_datasets((x, y), None, 4), plugins=[plugin])
    return {hook: [i.plugin for i in learn.hooks.impls[hook]] for hook in SCALER_HOOKS}


def test_bfloat16_implements_none_of_the_scaler_hooks():
    plugin = MixedPrecision(torch.bfloat16)
    assert not isinstance(plugin, LossScaling)
    assert type(plugin) is MixedPrecision
    for hook, names in providers(plugin).items():
        assert "MixedPrecision" not in names, hook


def test_float16_implements_the_scaler_hooks_under_its_own_name():
    plugin = MixedPrecision(torch.float16)
    assert isinstance(plugin, MixedPrecision) and isinstance(plugin, LossScaling)
    assert type(plugin).__name__ == "MixedPrecision"
    for hook, names in providers(plugin).items():
        assert "MixedPrecision" in names, hook


class LoudBackward(MixedPrecision):
    """A user's subclass that answers backward itself."""

    @hookimpl
    def backward(self, learn) -> bool:
        learn.loss.backward()
        return True


def test_a_subclass_keeps_its_overrides_and_gets_the_scaler_hooks():
    plugin = LoudBackward(torch.float16)
    assert isinstance(plugin, LoudBackward) and isinstance(plugin, LossScaling)
    assert type(plugin).__name__ == "LoudBackward"
    assert type(plugin).backward is LoudBackward.backward  # its own, not LossScaling's
    assert type(plugin).step is LossScaling.step
    assert "LoudBackward" in providers(plugin)["step"]
    assert not isinstance(LoudBackward(torch.bfloat16), LossScaling)


def test_copy_and_pickle_keep_the_class_and_the_settings():
    plugin = MixedPrecision(torch.float16, init_scale=1024.0)
    for clone in (copy.deepcopy(plugin), pickle.loads(pickle.dumps(plugin))):
        assert type(clone) is type(plugin)
        assert clone.dtype == torch.float16 and clone.scaler_kwargs == {"init_scale": 1024.0}
    bf16 = pickle.loads(pickle.dumps(MixedPrecision()))
    assert type(bf16) is MixedPrecision and bf16.dtype == torch.bfloat16
