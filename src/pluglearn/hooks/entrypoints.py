"""Plugins from installed packages: the entry-point group ``pluglearn`` (pytest's ``pytest11``).

A package publishes a plugin by declaring it in its ``pyproject.toml``::

    [project.entry-points.pluglearn]
    grad_norm = "pluglearn_gradnorm:GradNorm"      # a class (made with no arguments) or an object

and every ``Learner`` then gets it, after the user's plugins and before the defaults. Users
control this as in pytest:

- ``PLUGLEARN_DISABLE_PLUGIN_AUTOLOAD=1``: load no installed plugin ...
- ``PLUGLEARN_PLUGINS=grad_norm,other``: ... except these (by entry-point name);
- ``PLUGLEARN_BLOCK_PLUGINS=grad_norm``, or ``Learner(..., block_plugins=["grad_norm"])``: never
  load these.

Example::

    from pluglearn.hooks.entrypoints import autoload_plugins, installed_plugins
    [p.name for p in installed_plugins()]          # what is installed, in load order
    autoload_plugins(block=["grad_norm"])          # the plugin objects a Learner would get
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from .guards import PluginError, PluginWarning

__all__ = [
    "BLOCK_ENV",
    "DISABLE_ENV",
    "GROUP",
    "PLUGINS_ENV",
    "InstalledPlugin",
    "PluginLoadError",
    "autoload_plugins",
    "installed_plugins",
]

#: the entry-point group a package declares its plugins under
GROUP = "pluglearn"
#: set (to anything but "" or "0") to load no installed plugin unless PLUGINS_ENV names it
DISABLE_ENV = "PLUGLEARN_DISABLE_PLUGIN_AUTOLOAD"
#: comma-separated entry-point names to load even when autoloading is disabled
PLUGINS_ENV = "PLUGLEARN_PLUGINS"
#: comma-separated entry-point names never to load
BLOCK_ENV = "PLUGLEARN_BLOCK_PLUGINS"


class PluginLoadError(PluginError):
    """An installed plugin could not be imported or made; names the package and entry point."""


@dataclass(frozen=True)
class InstalledPlugin:
    """One entry point of the ``pluglearn`` group: ``name = value`` from ``package version``."""

    name: str
    value: str
    package: str
    version: str
    entry_point: EntryPoint

    def describe(self) -> str:
        """``grad_norm = pluglearn_gradnorm:GradNorm (pluglearn-gradnorm 0.1.0)``."""
        return f"{self.name} = {self.value} ({self.package} {self.version})"

    def load(self) -> object:
        """Import the object and make the plugin (a class is called with no arguments).

        The global random states (python, numpy, torch, CUDA when initialised) are put back
        afterwards: a package that seeds at import, or a plugin that draws weights when made,
        must not change the user's run. Any exception, ``sys.exit()`` included, becomes a
        :class:`PluginLoadError` naming the plugin, its package and its entry point.
        """
        from ..run.rng import random_states_kept

        try:
            with random_states_kept():
                obj = self.entry_point.load()
                return obj() if isinstance(obj, type) else obj
        except (Exception, SystemExit) as error:
            if isinstance(error, SystemExit):  # would end the user's program without a word
                reason = f"it raised SystemExit({error.code!r}) (a sys.exit() call)"
            else:
                reason = f"{type(error).__name__}: {error}"
            raise PluginLoadError(
                f"installed plugin {self.describe()} failed to load: {reason}. Fix or upgrade "
                f"the package (pip install -U {self.package}), uninstall it, or skip it with "
                f"{BLOCK_ENV}={self.name} or Learner(..., block_plugins=[{self.name!r}])."
            ) from error


def installed_plugins(group: str = GROUP) -> list[InstalledPlugin]:
    """Every entry point of ``group`` in the installed packages, sorted by name then package."""
    found = []
    for ep in entry_points(group=group):
        dist = ep.dist
        package = dist.metadata["Name"] if dist is not None else "?"
        version = dist.version if dist is not None else "?"
        found.append(InstalledPlugin(ep.name, ep.value, package, version, ep))
    return sorted(found, key=lambda p: (p.name, p.package))


def _env_names(var: str) -> list[str]:
    return [n.strip() for n in os.environ.get(var, "").split(",") if n.strip()]


def _autoload_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _unknown(names: Iterable[str], installed: list[InstalledPlugin], how: str) -> str | None:
    known = {p.name for p in installed}
    missing = [n for n in names if n not in known]
    if not missing:
        return None
    listing = ", ".join(p.describe() for p in installed) or "none"
    return (
        f"{how} names no installed pluglearn plugin: {', '.join(map(repr, missing))}. "
        f"Installed (entry-point names): {listing}. Check the spelling, or run `pluglearn plugins`."
    )


def autoload_plugins(block: Iterable[str] = (), group: str = GROUP) -> list[object]:
    """The plugin objects of the installed packages, in entry-point name order.

    ``block`` (entry-point names) and ``$PLUGLEARN_BLOCK_PLUGINS`` are never loaded; with
    ``$PLUGLEARN_DISABLE_PLUGIN_AUTOLOAD`` set, only those named in ``$PLUGLEARN_PLUGINS`` are.
    A name in ``block`` that matches no installed plugin is a :class:`PluginError`; one in the
    environment variables only warns (the variable may be meant for another environment).
    A plugin that fails to import raises :class:`PluginLoadError` naming the package and entry
    point, with the original error chained; two packages declaring one entry-point name is a
    :class:`PluginError` naming both. The global random states are as before the call.
    """
    if isinstance(block, str):
        block = [n.strip() for n in block.split(",") if n.strip()]
    block = list(block)
    installed = installed_plugins(group)
    problem = _unknown(block, installed, "block_plugins")
    if problem:
        raise PluginError(problem)
    for var in (BLOCK_ENV, PLUGINS_ENV):
        problem = _unknown(_env_names(var), installed, f"${var}")
        if problem:
            warnings.warn(problem, PluginWarning, stacklevel=2)
    blocked = {*block, *_env_names(BLOCK_ENV)}
    wanted = set(_env_names(PLUGINS_ENV))
    disabled = _autoload_disabled()
    chosen = [p for p in installed if p.name not in blocked and (not disabled or p.name in wanted)]
    _refuse_shared_names(chosen)
    return [p.load() for p in chosen]


def _refuse_shared_names(plugins: list[InstalledPlugin]) -> None:
    """Two packages under one entry-point name: which one is meant cannot be told (and blocking
    the name would block both)."""
    for name in dict.fromkeys(p.name for p in plugins):
        sharing = [p for p in plugins if p.name == name]
        if len(sharing) > 1:
            raise PluginError(
                f"{len(sharing)} installed packages declare the pluglearn plugin {name!r}: "
                f"{' and '.join(p.describe() for p in sharing)}. An entry-point name must be "
                f"unique: uninstall one of them (pip uninstall {sharing[-1].package}), or block "
                f"both with {BLOCK_ENV}={name}."
            )
