"""pluglearn's plugin machinery: markers (hookspec, hookimpl), specs (every hook and the dispatch
table), guards (checks at registration), dispatch (the one caller of every hook), manager (the
ordered registry) and entrypoints (plugins of installed packages). Plugin authors need only
``from pluglearn import hookimpl``; everything else is imported from its defining module."""
