"""What every subcommand shares: the parsed global options and the table."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO

from portwatch._paths import cache_dir, data_dir
from portwatch.errors import RegistryFormatError, UsageError
from portwatch.porttable.cache import LoadedTable, load_table
from portwatch.porttable.table import PortTable
from portwatch.registry.freshness import DEFAULT_MAX_AGE_DAYS, stale_warning
from portwatch.registry.store import SourceSelection, select_sources

if TYPE_CHECKING:  # parsed records are needed only by the registry commands
    from portwatch.registry.merge import Registry

__all__ = ["Context", "PortwatchArgumentParser", "format_columns"]


class PortwatchArgumentParser(argparse.ArgumentParser):
    """argparse, but a wrong flag is a one-line ``UsageError`` (exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see --help)")


@dataclass(slots=True)
class Context:
    registry_paths: Sequence[str]
    strict: bool = False
    use_cache: bool = True
    max_age_days: int = DEFAULT_MAX_AGE_DAYS
    today: Callable[[], date] = date.today
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    _loaded: LoadedTable | None = None
    _selection: SourceSelection | None = None

    @property
    def data_dir(self) -> Path:
        return data_dir(self.env)

    def selection(self) -> SourceSelection:
        if self._selection is None:
            self._selection = select_sources(self.registry_paths, env=self.env)
        return self._selection

    def table(self) -> PortTable:
        """The port table of the selected registry (loaded once, from the cache if it can)."""
        return self._load().table

    def registry(self) -> Registry:
        """The merged registry records behind the table (parsed on first use)."""
        return self._load().full_registry()

    def _load(self) -> LoadedTable:
        if self._loaded is None:
            selection = self.selection()
            if not selection.paths:
                raise RegistryFormatError("no registry source to read")
            cache = cache_dir(self.env) if self.use_cache else None
            self._loaded = load_table(selection.paths, cache=cache, strict=self.strict)
            for problem in self._loaded.full_registry().problems if not self._loaded.from_cache \
                    else ():
                self.warn(f"{problem} (row skipped)")
            table = self._loaded.table
            stale = stale_warning(table.last_updated, self.today(), self.max_age_days,
                                  table.snapshot)
            if stale:
                self.warn(stale)
        return self._loaded

    def warn(self, message: str) -> None:
        print(f"portwatch: warning: {message}", file=self.stderr)


def format_columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned columns: readable in a terminal, easy to grep.

    The shared renderer at unlimited width and without colour: nothing is
    shortened, and control characters from registry text are shown escaped.
    """
    from portwatch._terminal import Column, render_table  # the shared renderer, stdlib only

    return render_table([Column(h) for h in header], rows)
