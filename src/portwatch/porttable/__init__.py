"""The port table: every (transport, port) answered by array indexing.

``open_table()`` is the one call a library user needs: it picks the registry
as the CLI does (named files, else the data directory, else the packaged
official snapshot) and returns the compiled table, from the cache when it can.
"""

from __future__ import annotations

from collections.abc import Sequence

from portwatch._paths import cache_dir
from portwatch.porttable.cache import load_table
from portwatch.porttable.table import PortInfo, PortTable
from portwatch.registry.store import select_sources

__all__ = ["PortInfo", "PortTable", "open_table"]


def open_table(
    paths: Sequence[str] = (), *, use_cache: bool = True, strict: bool = False
) -> PortTable:
    """The compiled table of ``paths``, or of the default registry when none are given."""
    selection = select_sources(paths)
    cache = cache_dir() if use_cache else None
    return load_table(selection.paths, cache=cache, strict=strict).table
