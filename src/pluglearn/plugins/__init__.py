"""pluglearn's plugin machinery: markers (hookspec, hookimpl), specs (every hook), manager."""

from .manager import (
    HOOKS,
    HookCalls,
    PluginError,
    PluginRegistry,
    PluginWarning,
    check_plugin,
    load_entry_point_plugins,
    plugin_name,
)
from .markers import PROJECT_NAME, hookimpl, hookspec

__all__ = [
    "HOOKS",
    "PROJECT_NAME",
    "HookCalls",
    "PluginError",
    "PluginRegistry",
    "PluginWarning",
    "check_plugin",
    "hookimpl",
    "hookspec",
    "load_entry_point_plugins",
    "plugin_name",
]
