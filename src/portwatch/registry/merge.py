"""Several sources, one registry: merge with provenance.

Precedence is decided per (port, transport) slot, in two steps:

1. *Within* a source, a specific entry beats a range that covers it (the
   official registry has ``7748-7776 Unassigned`` around ``inetfs 7775/tcp``).
2. *Across* sources, the source with the newer ``Last Updated`` wins wherever
   it says anything about the slot; an undated source (a services(5) file)
   ranks oldest, and ties go to the source loaded later.

The result keeps every record; ``SlotView`` says which records answer for a
slot and from which source. ``slot_views`` gives that as a dict, one item per
slot; ``slot_view_arrays`` gives the same answers as arrays, painting ranges
whole (the official registry's 760 ranges cover 86,000 slots), which is what
the compiler uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from portwatch.ports import Transport
from portwatch.registry.model import (
    ParsedSource,
    ParseProblem,
    Person,
    RecordKind,
    ServiceRecord,
    SourceInfo,
)

__all__ = ["Registry", "SlotView", "SlotViews", "merge_sources"]

_PORTS = 65536
_NEVER = np.iinfo(np.int64).max


@dataclass(frozen=True, slots=True)
class SlotView:
    """The records that answer for one (transport, port), all from one source."""

    source_index: int
    record_ids: tuple[int, ...]
    from_range: bool


@dataclass(frozen=True, slots=True)
class SlotViews:
    """``Registry.slot_views()`` as arrays.

    ``view_id`` is flat (transport * 65536 + port): an index into ``views``,
    or -1 where no source says anything. ``order`` lists the flat indices of
    the slots some source speaks about, in the order ``slot_views()`` yields
    them, so that whatever is numbered by first appearance (entries, names)
    comes out numbered the same.
    """

    views: list[SlotView]
    view_id: npt.NDArray[np.int32]
    order: npt.NDArray[np.intp]


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


    def slot_view_arrays(self) -> SlotViews:
        """The winning view of every slot, as ``slot_views`` decides it, in arrays.

        Each source paints its ranges (cut where they overlap), then its
        specific entries, over what older sources painted. The order is the
        dict's: a slot comes where the first "stroke" (a record on one
        transport, sources oldest first, ranges before specific entries)
        reaches it, ports ascending within a stroke.
        """
        view_id = np.full(len(Transport) * _PORTS, -1, dtype=np.int32)
        first = np.full(len(Transport) * _PORTS, _NEVER, dtype=np.int64)
        views: list[SlotView] = []
        interned: dict[tuple[int, ...], int] = {}

        def vid(src: int, rids: tuple[int, ...], from_range: bool) -> int:
            index = interned.get(rids)
            if index is None:
                index = interned[rids] = len(views)
                views.append(SlotView(src, rids, from_range))
            return index

        stroke = 0
        single_flat: list[int] = []
        single_stroke: list[int] = []
        by_source = self._port_records()
        for src in sorted(range(len(self.sources)), key=self.source_rank):
            ranged, specific = by_source[src]
            for rid in ranged:
                rec = self.records[rid]
                for t in rec.transports:
                    low = t * _PORTS + (rec.port_low or 0)
                    span = first[low : t * _PORTS + (rec.port_high or 0) + 1]
                    np.minimum(span, stroke, out=span)
                    stroke += 1
            for t, low, high, rids in _segments(self.records, ranged):
                view_id[t * _PORTS + low : t * _PORTS + high + 1] = vid(src, rids, True)
            owners: dict[int, list[int]] = {}
            for rid in specific:
                rec = self.records[rid]
                for t in rec.transports:
                    flat = t * _PORTS + (rec.port_low or 0)
                    owners.setdefault(flat, []).append(rid)
                    single_flat.append(flat)
                    single_stroke.append(stroke)
                    stroke += 1
            if owners:
                flats = np.fromiter(owners, dtype=np.intp, count=len(owners))
                view_id[flats] = [vid(src, tuple(r), False) for r in owners.values()]
        if single_flat:
            np.minimum.at(first, np.array(single_flat, dtype=np.intp),
                          np.array(single_stroke, dtype=np.int64))
        listed = np.flatnonzero(first != _NEVER)
        order = listed[np.argsort(first[listed], kind="stable")]
        return SlotViews(views, view_id, order)

    def _port_records(self) -> list[tuple[list[int], list[int]]]:
        """Per source, the ids of records that name ports: ranges, single ports; file order."""
        out: list[tuple[list[int], list[int]]] = [([], []) for _ in self.sources]
        for rid, rec in enumerate(self.records):
            if rec.kind is RecordKind.NAME_ONLY or rec.port_low is None:
                continue
            ranged, specific = out[self.record_source[rid]]
            (ranged if rec.is_range else specific).append(rid)
        return out


def _segments(
    records: list[ServiceRecord], rids: list[int]
) -> Iterator[tuple[Transport, int, int, tuple[int, ...]]]:
    """(transport, low, high, covering record ids) for each run of ports the ranges ``rids``
    cover alike; record ids in file order, as ``slot_views`` lists them."""
    by_transport: dict[Transport, list[tuple[int, int, int]]] = {}
    for rid in rids:
        rec = records[rid]
        for t in rec.transports:
            by_transport.setdefault(t, []).append((rec.port_low or 0, rec.port_high or 0, rid))
    for t, spans in by_transport.items():
        starts: dict[int, list[int]] = {}
        ends: dict[int, list[int]] = {}
        for low, high, rid in spans:
            starts.setdefault(low, []).append(rid)
            ends.setdefault(high + 1, []).append(rid)
        bounds = sorted(starts.keys() | ends.keys())
        active: set[int] = set()
        for here, after in pairwise(bounds):
            active.difference_update(ends.get(here, ()))
            active.update(starts.get(here, ()))
            if active:
                yield t, here, after - 1, tuple(sorted(active))


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
