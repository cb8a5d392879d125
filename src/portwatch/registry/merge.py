"""Several sources, one registry: merge with provenance.

Precedence is decided per (port, transport) slot, in two steps:

1. *Within* a source, a specific entry beats a range that covers it (the
   official registry has ``7748-7776 Unassigned`` around ``inetfs 7775/tcp``).
2. *Across* sources, the source with the newer ``Last Updated`` wins wherever
   it says anything about the slot; an undated source (a services(5) file)
   ranks oldest, and ties go to the source loaded later.

The result keeps every record; ``SlotView`` says which records answer for a
slot and from which source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

from portwatch.ports import Transport
from portwatch.registry.model import (
    ParsedSource,
    ParseProblem,
    Person,
    RecordKind,
    ServiceRecord,
    SourceInfo,
)

__all__ = ["Registry", "SlotView", "merge_sources"]


@dataclass(frozen=True, slots=True)
class SlotView:
    """The records that answer for one (transport, port), all from one source."""

    source_index: int
    record_ids: tuple[int, ...]
    from_range: bool


@dataclass(slots=True)
class Registry:
    """Merged records of several sources, in load order, with their people."""

    sources: list[SourceInfo]
    records: list[ServiceRecord]
    record_source: list[int]  # index into sources, parallel to records
    people: dict[str, Person]
    problems: list[ParseProblem] = field(default_factory=list)
    _by_name: dict[str, list[int]] | None = None

    @property
    def last_updated(self) -> date | None:
        dates = [s.last_updated for s in self.sources if s.last_updated is not None]
        return max(dates) if dates else None

    def records_named(self, name: str) -> list[int]:
        """Record ids whose service name is ``name`` (case-insensitive)."""
        if self._by_name is None:
            index: dict[str, list[int]] = {}
            for i, rec in enumerate(self.records):
                if rec.name:
                    index.setdefault(rec.name.lower(), []).append(i)
            self._by_name = index
        return self._by_name.get(name.lower(), [])

    def source_rank(self, index: int) -> tuple[date, int]:
        """Sort key: newer ``Last Updated`` first wins; undated ranks oldest."""
        return (self.sources[index].last_updated or date.min, index)

    def slot_views(self) -> dict[tuple[Transport, int], SlotView]:
        """The winning records of every slot any source speaks about."""
        per_source: list[dict[tuple[Transport, int], SlotView]] = [
            {} for _ in self.sources
        ]
        specific: list[dict[tuple[Transport, int], list[int]]] = [{} for _ in self.sources]
        ranged: list[dict[tuple[Transport, int], list[int]]] = [{} for _ in self.sources]
        for rid, rec in enumerate(self.records):
            if rec.kind is RecordKind.NAME_ONLY or rec.port_low is None:
                continue
            src = self.record_source[rid]
            target = ranged[src] if rec.is_range else specific[src]
            for transport in rec.transports:
                for port in rec.ports():
                    target.setdefault((transport, port), []).append(rid)
        for src in range(len(self.sources)):
            views = per_source[src]
            for slot, rids in ranged[src].items():
                views[slot] = SlotView(src, tuple(rids), from_range=True)
            for slot, rids in specific[src].items():
                views[slot] = SlotView(src, tuple(rids), from_range=False)
        order = sorted(range(len(self.sources)), key=self.source_rank)
        merged: dict[tuple[Transport, int], SlotView] = {}
        for src in order:  # oldest first, so newer sources overwrite
            merged.update(per_source[src])
        return merged


def merge_sources(parsed: Sequence[ParsedSource]) -> Registry:
    """Concatenate sources into one registry; people from newer sources win."""
    sources: list[SourceInfo] = []
    records: list[ServiceRecord] = []
    record_source: list[int] = []
    problems: list[ParseProblem] = []
    for index, source in enumerate(parsed):
        sources.append(source.info)
        records.extend(source.records)
        record_source.extend([index] * len(source.records))
        problems.extend(source.problems)
    registry = Registry(sources, records, record_source, {}, problems)
    for index in sorted(range(len(parsed)), key=registry.source_rank):
        registry.people.update(parsed[index].people)
    return registry
