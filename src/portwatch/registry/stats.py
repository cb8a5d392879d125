"""What ``portwatch registry info`` reports, computed here so the daemon and
scripts get the same numbers: records per source, by kind and transport, and
how many of the 65,536 ports of each transport have each status.

Coverage needs the compiled table (merge precedence decides a slot's
status); this module takes anything with ``listed_counts()`` and
``status_counts()`` (a ``PortTable``) so that the registry stage does not
import the stage after it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

from portwatch.ports import PortStatus, Transport
from portwatch.registry.merge import Registry
from portwatch.registry.model import RecordKind
from portwatch.registry.packaged import source_label

__all__ = ["Coverage", "RegistryStats", "SourceStats", "registry_stats"]


class Coverage(Protocol):
    """The two questions about the compiled table that coverage asks."""

    def listed_counts(self) -> dict[Transport, int]: ...

    def status_counts(self) -> dict[Transport, dict[PortStatus, int]]: ...


@dataclass(frozen=True, slots=True)
class SourceStats:
    path: str
    label: str  # ``packaged:…`` for the shipped snapshot
    format: str
    last_updated: date | None
    records: int
    assigned_only: bool
    problems: int  # rows that could not be understood (skipped)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "label": self.label, "format": self.format,
                "last_updated": self.last_updated.isoformat() if self.last_updated else None,
                "records": self.records, "assigned_only": self.assigned_only,
                "problems": self.problems}


@dataclass(frozen=True, slots=True)
class RegistryStats:
    sources: tuple[SourceStats, ...]
    records_by_kind: dict[RecordKind, int]
    #: (kind, transport label or ``-`` for records without one) -> records; a
    #: record listed for several transports counts once for each.
    records_by_kind_and_transport: dict[tuple[str, str], int]
    #: transport -> ``listed`` and every status label -> ports
    coverage: dict[Transport, dict[str, int]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "sources": [s.as_dict() for s in self.sources],
            "records_by_kind": {k.value: n for k, n in self.records_by_kind.items()},
            "records_by_kind_and_transport": {
                f"{k}/{t}": n for (k, t), n in sorted(self.records_by_kind_and_transport.items())
            },
            "coverage": {t.label: dict(c) for t, c in self.coverage.items()},
        }


def registry_stats(registry: Registry, table: Coverage) -> RegistryStats:
    per_source = Counter(registry.record_source)
    problems = Counter(p.path for p in registry.problems)
    kinds: Counter[tuple[str, str]] = Counter()
    by_kind: Counter[RecordKind] = Counter()
    for rec in registry.records:
        by_kind[rec.kind] += 1
        if rec.port_low is None and rec.transport is None:
            kinds[(rec.kind.value, "-")] += 1
        else:
            for t in rec.transports:
                kinds[(rec.kind.value, t.label)] += 1
    listed = table.listed_counts()
    statuses = table.status_counts()
    return RegistryStats(
        sources=tuple(
            SourceStats(s.path, source_label(s.path), s.format.value, s.last_updated,
                        per_source.get(i, 0), s.assigned_only, problems.get(s.path, 0))
            for i, s in enumerate(registry.sources)
        ),
        records_by_kind={k: by_kind.get(k, 0) for k in RecordKind},
        records_by_kind_and_transport=dict(kinds),
        coverage={t: {"listed": listed[t], **{s.label: n for s, n in statuses[t].items()}}
                  for t in Transport},
    )
