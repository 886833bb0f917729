"""Installed plugins: the ``pluglearn`` entry-point group, its environment variables and errors.

Each test builds real distributions on ``sys.path`` (a ``.dist-info`` folder with
``entry_points.txt`` next to the plugin's module), which importlib.metadata finds as it finds
pip-installed ones; tests/hooks/test_entrypoints_package.py installs a real package with pip.
"""

from __future__ import annotations

import importlib
import itertools
import random
import sys

import pytest
import torch
from torch import nn

from pluglearn import DataLoaders, Learner, PluginError, PluginWarning
from pluglearn.hooks.entrypoints import (
    BLOCK_ENV,
    DISABLE_ENV,
    PLUGINS_ENV,
    PluginLoadError,
    autoload_plugins,
    installed_plugins,
)

_ids = itertools.count()

PLUGIN_SOURCE = """
from pluglearn import hookimpl

class {cls}:
    def __init__(self):
        self.fits = 0

    @hookimpl
    def before_fit(self, learn):
        self.fits += 1
"""


class Site:
    """A folder on sys.path holding fake installed distributions."""

    def __init__(self, root, monkeypatch):
        self.root, self.prefix = root, f"plfake{next(_ids)}_"
        monkeypatch.syspath_prepend(str(root))
        self.modules: list[str] = []

    def install(self, package: str, entry: str, cls: str, source: str | None = None) -> None:
        module = self.prefix + package
        (self.root / f"{module}.py").write_text(source or PLUGIN_SOURCE.format(cls=cls))
        info = self.root / f"{module}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[pluglearn]\n{entry} = {module}:{cls}\n")
        self.modules.append(module)
        importlib.invalidate_caches()

    def mine(self, plugins: list[object]) -> list[str]:
        """The class names of the plugins that come from this site, in order."""
        return [type(p).__name__ for p in plugins if type(p).__module__.startswith(self.prefix)]


@pytest.fixture
def site(tmp_path, monkeypatch, plugin_autoload):
    """Fake installed packages; installed plugins load again (the suite disables them)."""
    made = Site(tmp_path, monkeypatch)
    yield made
    for module in made.modules:  # unique names: forgetting them only keeps sys.modules small
        sys.modules.pop(module, None)


def test_installed_plugins_are_made_in_entry_point_name_order(site):
    site.install("zeta", "zeta", "Zeta")
    site.install("alpha", "alpha", "Alpha")
    site.install("mid", "mid", "Mid")
    plugins = autoload_plugins()
    assert site.mine(plugins) == ["Alpha", "Mid", "Zeta"]
    assert all(not isinstance(p, type) for p in plugins)  # classes are instantiated
    names = [p.name for p in installed_plugins() if p.package.startswith(site.prefix)]
    assert names == ["alpha", "mid", "zeta"]
    (alpha,) = [p for p in installed_plugins() if p.name == "alpha"]
    assert alpha.describe() == f"alpha = {site.prefix}alpha:Alpha ({site.prefix}alpha 1.0)"


def test_each_call_makes_fresh_plugin_objects(site):
    site.install("one", "one", "One")
    (first,) = [p for p in autoload_plugins() if type(p).__name__ == "One"]
    (second,) = [p for p in autoload_plugins() if type(p).__name__ == "One"]
    assert first is not second


def test_block_argument_and_env_var_block_by_entry_point_name(site, monkeypatch):
    site.install("a", "first", "A")
    site.install("b", "second", "B")
    site.install("c", "third", "C")
    assert site.mine(autoload_plugins(block=["second"])) == ["A", "C"]
    monkeypatch.setenv(BLOCK_ENV, "first, third")
    assert site.mine(autoload_plugins()) == ["B"]
    assert site.mine(autoload_plugins(block=["second"])) == []


def test_disable_env_loads_only_the_plugins_named_in_plugins_env(site, monkeypatch):
    site.install("a", "first", "A")
    site.install("b", "second", "B")
    monkeypatch.setenv(DISABLE_ENV, "1")
    assert site.mine(autoload_plugins()) == []
    monkeypatch.setenv(PLUGINS_ENV, "second")
    assert site.mine(autoload_plugins()) == ["B"]
    assert site.mine(autoload_plugins(block=["second"])) == []  # blocking wins
    monkeypatch.setenv(DISABLE_ENV, "0")  # "0" means not disabled
    assert site.mine(autoload_plugins()) == ["A", "B"]


def test_blocking_an_unknown_name_is_an_error_listing_the_installed_ones(site):
    site.install("a", "first", "A")
    with pytest.raises(PluginError, match="'frist'") as info:
        autoload_plugins(block=["frist"])
    assert f"first = {site.prefix}a:A" in str(info.value)
    assert "pluglearn plugins" in str(info.value)


def test_an_unknown_name_in_the_environment_only_warns(site, monkeypatch):
    site.install("a", "first", "A")
    monkeypatch.setenv(BLOCK_ENV, "frist")
    with pytest.warns(PluginWarning, match=r"\$PLUGLEARN_BLOCK_PLUGINS names no installed"):
        assert site.mine(autoload_plugins()) == ["A"]


def test_a_plugin_that_fails_to_import_names_its_package_and_entry_point(site):
    site.install("broken", "broken", "Broken", source="import no_such_module_here\n")
    with pytest.raises(PluginLoadError) as info:
        autoload_plugins()
    message = str(info.value)
    assert f"broken = {site.prefix}broken:Broken ({site.prefix}broken 1.0)" in message
    assert "No module named 'no_such_module_here'" in message
    assert "block_plugins=['broken']" in message
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert isinstance(info.value, PluginError)
    site_blocked = autoload_plugins(block=["broken"])  # blocking it skips the import
    assert site.mine(site_blocked) == []


RESEEDS = """
import random, sys
import numpy, torch
from pluglearn import hookimpl

torch.manual_seed(123)  # at import: a package that seeds "for reproducibility"
random.seed(123)
numpy.random.seed(123)

class Reseeds:
    def __init__(self):
        self.weights = torch.randn(5)  # made with no arguments: draws from the global RNG
        random.random(), numpy.random.rand()

    @hookimpl
    def before_fit(self, learn):
        pass
"""


def draws() -> tuple:
    """The next numbers of the python, numpy and torch global generators."""
    import numpy as np

    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_a_plugin_that_reseeds_when_loaded_leaves_the_users_random_state_alone(site):
    site.install("reseeds", "reseeds", "Reseeds", source=RESEEDS)
    seed_everything(0)
    Learner(nn.Linear(3, 2), tiny_dls(), block_plugins=["reseeds"])
    expected = draws()  # the user's run without the plugin
    seed_everything(0)
    learn = Learner(nn.Linear(3, 2), tiny_dls())
    assert site.mine(learn.plugins) == ["Reseeds"]  # it was imported and made here
    assert draws() == expected
    seed_everything(0)
    Learner(nn.Linear(3, 2), tiny_dls())  # the plugin is made again, its module already imported
    assert draws() == expected


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("import sys\nsys.exit(3)\n", "SystemExit(3)"),
        ("class Exits:\n    def __init__(self):\n        raise SystemExit('bye')\n", "bye"),
        ("raise KeyError('setting')\n", "KeyError: 'setting'"),
    ],
)
def test_a_plugin_that_exits_or_raises_when_loaded_is_an_error_naming_it(site, source, reason):
    site.install("exits", "exits", "Exits", source=source)
    with pytest.raises(PluginLoadError) as info:
        Learner(nn.Linear(3, 2), tiny_dls())
    message = str(info.value)
    assert f"installed plugin exits = {site.prefix}exits:Exits ({site.prefix}exits 1.0)" in message
    assert reason in message and "block_plugins=['exits']" in message
    assert isinstance(info.value.__cause__, (SystemExit, KeyError))


def test_two_packages_declaring_one_entry_point_name_is_an_error_naming_both(site, monkeypatch):
    site.install("one", "grad_norm", "One")
    site.install("two", "grad_norm", "Two")
    with pytest.raises(PluginError) as info:
        Learner(nn.Linear(3, 2), tiny_dls())
    message = str(info.value)
    assert "'grad_norm'" in message and "uninstall one" in message
    assert f"{site.prefix}one 1.0" in message and f"{site.prefix}two 1.0" in message
    assert site.mine(autoload_plugins(block=["grad_norm"])) == []  # neither loads: no conflict
    monkeypatch.setenv(DISABLE_ENV, "1")
    assert site.mine(autoload_plugins()) == []


def test_a_plugin_whose_constructor_needs_arguments_is_a_load_error(site):
    source = "class NeedsArgs:\n    def __init__(self, size):\n        self.size = size\n"
    site.install("needy", "needy", "NeedsArgs", source=source)
    with pytest.raises(PluginLoadError, match=r"needy = .*missing 1 required"):
        autoload_plugins()


def test_an_object_entry_point_is_used_as_is(site):
    source = PLUGIN_SOURCE.format(cls="Cls") + "\nINSTANCE = Cls()\n"
    site.install("obj", "obj", "INSTANCE", source=source)
    (plugin,) = [p for p in autoload_plugins() if type(p).__name__ == "Cls"]
    assert plugin is sys.modules[f"{site.prefix}obj"].INSTANCE


# ------------------------------------------------------------------ through the Learner


def tiny_dls() -> DataLoaders:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g)
    return DataLoaders([(x[:4], y[:4]), (x[4:], y[4:])], [(x, y)])


class UserPlugin:
    """A plugin of the user's own (hooks are not needed to register)."""


def test_a_learner_registers_installed_plugins_after_the_users_and_before_the_defaults(site):
    site.install("a", "first", "A")
    user = UserPlugin()
    learn = Learner(nn.Linear(3, 2), tiny_dls(), plugins=[user], block_plugins=())
    names = [type(p).__name__ for p in learn.plugins]
    assert names[0] == "UserPlugin" and names[1] == "A"
    assert names.index("A") < names.index("AvgLoss")
    learn.fit(1)
    assert learn.plugins[1].fits == 1


def test_a_learner_blocks_installed_plugins_by_argument_and_env(site, monkeypatch):
    site.install("a", "first", "A")
    site.install("b", "second", "B")
    learn = Learner(nn.Linear(3, 2), tiny_dls(), block_plugins=["first"])
    assert site.mine(learn.plugins) == ["B"]
    monkeypatch.setenv(DISABLE_ENV, "1")
    assert site.mine(Learner(nn.Linear(3, 2), tiny_dls(), block_plugins=()).plugins) == []
    with pytest.raises(PluginError, match="'nope'"):
        Learner(nn.Linear(3, 2), tiny_dls(), block_plugins=["nope"])
