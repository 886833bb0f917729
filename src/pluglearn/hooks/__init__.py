"""The hook machinery: markers (``hookspec``, ``hookimpl``), specs (every hook and registry
extension point, documented where declared, with its kind), guards (checks at registration),
cancels (whether a plugin may cancel, derived from its code), dispatch (the one caller of every
hook), registry (the ordered plugins) and entrypoints (plugins of installed packages). Plugin
authors need only ``from pluglearn import hookimpl``; everything else is imported from its
defining module."""
