"""On-disk cache of compiled tables, keyed by the sources' contents.

Compiling the full official registry takes a fraction of a second; loading
the compiled arrays takes milliseconds. The key hashes every source's bytes,
so an edited or updated source can never be answered from a stale table.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from portwatch import __version__
from portwatch.errors import RegistryRowError
from portwatch.porttable.table import TABLE_FORMAT_VERSION, PortTable
from portwatch.registry.loader import parse_source, read_bytes

if TYPE_CHECKING:  # a warm start needs neither: they are imported on a cache miss
    from portwatch.registry.merge import Registry

__all__ = ["LoadedTable", "load_table", "table_key"]


def table_key(sources: Sequence[tuple[str, bytes]]) -> str:
    h = hashlib.sha256(f"portwatch {__version__} table {TABLE_FORMAT_VERSION}\n".encode())
    for path, data in sources:
        h.update(f"{path}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return h.hexdigest()


@dataclass(slots=True)
class LoadedTable:
    """A table and, when it had to be compiled, the registry it came from."""

    table: PortTable
    registry: Registry | None
    from_cache: bool
    sources: tuple[tuple[str, bytes], ...]

    def full_registry(self) -> Registry:
        """The parsed records (needed for record details), parsed on demand."""
        if self.registry is None:
            from portwatch.registry.merge import merge_sources

            self.registry = merge_sources([parse_source(d, p) for p, d in self.sources])
        return self.registry


#: A compiled table is about 3.5 MB; a cache file far larger is not one of ours.
_MAX_CACHED_BYTES = 256 * 1024 * 1024


def _read_cached(target: Path) -> bytes:
    """The cache file's bytes; ``ValueError`` for one too large to be a table."""
    with target.open("rb") as f:
        data = f.read(_MAX_CACHED_BYTES + 1)
    if len(data) > _MAX_CACHED_BYTES:
        raise ValueError(f"{target}: too large to be a compiled table")
    return data


def load_table(
    paths: Sequence[str], *, cache: Path | None, strict: bool = False
) -> LoadedTable:
    """The compiled table of ``paths``, from the cache when it is there."""
    sources = tuple((p, read_bytes(p)) for p in paths)
    target = cache / f"table-{table_key(sources)}.npz" if cache is not None else None
    if target is not None and not strict:
        try:
            table = PortTable.from_bytes(_read_cached(target))
            return LoadedTable(table, None, True, sources)
        except (OSError, ValueError):
            pass  # absent, cut short or tampered with: compile afresh and overwrite
    from portwatch.porttable.compile import compile_table
    from portwatch.registry.merge import merge_sources

    registry = merge_sources([parse_source(d, p) for p, d in sources])
    if strict and registry.problems:
        first = registry.problems[0]
        raise RegistryRowError(first.message, path=first.path, line=first.line)
    table = compile_table(registry)
    if target is not None:
        from portwatch._atomic import atomic_write_bytes  # tempfile: a cache miss only

        with contextlib.suppress(OSError):  # a read-only cache only costs speed
            atomic_write_bytes(target, table.to_bytes())
    return LoadedTable(table, registry, False, sources)
