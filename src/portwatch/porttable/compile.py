"""Compile a merged registry into a ``PortTable``: every slot resolved once.

The per-slot decisions (which record names the port, its aliases, whether a
reported unauthorized use covers this very port) are made here, so that a
lookup afterwards is array indexing alone.
"""

from __future__ import annotations

import re

import numpy as np
import numpy.typing as npt

from portwatch.ports import DYNAMIC_PORTS, PortFlag, PortStatus, Transport
from portwatch.porttable.table import PORTS, PortTable, SlotEntry
from portwatch.registry.merge import Registry, SlotView
from portwatch.registry.model import RecordKind, ServiceRecord

__all__ = ["compile_table"]

_ALIAS_NOTE = re.compile(r'alias (?:to|of) "?([^"\s]+)"?', re.I)
_PORT_NUMBER = re.compile(r"\b\d{1,5}\b")


def _canonical_first(named: list[ServiceRecord]) -> list[str]:
    """Distinct names, canonical first: file order, unless a row says it is an alias."""
    names: list[str] = []
    for rec in named:
        if rec.name.lower() not in (n.lower() for n in names):
            names.append(rec.name)
    for rec in named:
        m = _ALIAS_NOTE.search(rec.notes)
        if m and names and names[0] == rec.name:
            target = m.group(1)
            if target in names:
                names.remove(target)
                names.insert(0, target)
            break
    return names


def _remark_ports(rec: ServiceRecord) -> set[int] | None:
    """Ports an unauthorized-use remark names inside the record, or None for all of them."""
    if rec.port_low is None or rec.port_high is None:
        return None
    named = {int(m) for m in _PORT_NUMBER.findall(rec.unauthorized_use)}
    inside = {p for p in named if rec.port_low <= p <= rec.port_high}
    return inside or None


def _entry_for(
    registry: Registry, view: SlotView
) -> tuple[PortStatus, str, tuple[str, ...], str, ServiceRecord | None]:
    records = [registry.records[i] for i in view.record_ids]
    for kind, status in (
        (RecordKind.ASSIGNED, PortStatus.ASSIGNED),
        (RecordKind.RESERVED, PortStatus.RESERVED),
        (RecordKind.UNASSIGNED, PortStatus.UNASSIGNED),
    ):
        chosen = [r for r in records if r.kind is kind]
        if not chosen:
            continue
        names = _canonical_first([r for r in chosen if r.name])
        service = names[0] if names else ""
        main = next((r for r in chosen if r.name == service), chosen[0])
        remarked = next((r for r in records if r.unauthorized_use), None)
        return status, service, tuple(names[1:]), main.description, remarked
    raise AssertionError("slot view without records")  # slot_views never yields one


_Facts = tuple[PortStatus, str, tuple[str, ...], str, ServiceRecord | None]


def _first_seen_ranks(keys: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64],
                                                           npt.NDArray[np.intp]]:
    """The distinct ``keys`` in order of first appearance, and each key's rank in that order."""
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    by_first = np.argsort(first, kind="stable")
    rank = np.empty(len(uniq), dtype=np.intp)
    rank[by_first] = np.arange(len(uniq))
    return uniq[by_first], rank[inverse]


def _flags(facts: list[_Facts], vid: npt.NDArray[np.int32],
           ports: npt.NDArray[np.intp]) -> npt.NDArray[np.uint8]:
    """UNAUTHORIZED_USE where a slot's remark covers it: all the record's ports, or those named."""
    everywhere = np.zeros(len(facts) + 1, dtype=bool)
    named: dict[int, set[int]] = {}
    for v, (*_, remarked) in enumerate(facts):
        if remarked is not None:
            ports_named = _remark_ports(remarked)
            if ports_named is None:
                everywhere[v] = True
            else:
                named[v] = ports_named
    flags = everywhere[vid].astype(np.uint8) * np.uint8(PortFlag.UNAUTHORIZED_USE)
    if named:
        for i in np.flatnonzero(np.isin(vid, np.fromiter(named, dtype=np.int32))).tolist():
            if int(ports[i]) in named[int(vid[i])]:
                flags[i] = PortFlag.UNAUTHORIZED_USE
    return flags


def compile_table(registry: Registry) -> PortTable:
    """Resolve every slot once; the result answers by indexing alone.

    Work is per distinct view (about 13,000 for the official registry), not
    per slot (110,000): slots are filled with numpy fancy indexing, and
    entries and names are numbered by first appearance in the order of
    ``Registry.slot_views`` so the table is the same, byte for byte.
    """
    sv = registry.slot_view_arrays()
    facts = [_entry_for(registry, view) for view in sv.views]
    vid = sv.view_id[sv.order]
    ports = sv.order % PORTS
    flags_of_slot = _flags(facts, vid, ports)

    keys, entry_of_slot = _first_seen_ranks(vid.astype(np.int64) * 2 + flags_of_slot)
    entries = []
    for key in keys.tolist():
        view = sv.views[key >> 1]
        st, service, aliases, description, remarked = facts[key >> 1]
        entries.append(SlotEntry(st, service, aliases, description, PortFlag(key & 1),
                                 remarked.unauthorized_use if remarked else "",
                                 view.record_ids, view.source_index))

    service_ids: dict[str, int] = {"": 0}
    service_of_view = np.array([service_ids.setdefault(f[1], len(service_ids)) for f in facts],
                               dtype=np.int64)
    seen, _ = _first_seen_ranks(service_of_view[vid])
    by_id = list(service_ids)
    names = [""] + [by_id[i] for i in seen.tolist() if i != 0]
    name_ids = {name: i for i, name in enumerate(names)}
    sid_of_view = np.array([name_ids.get(f[1], 0) for f in facts], dtype=np.int32)
    status_of_view = np.array([f[0] for f in facts], dtype=np.uint8)

    status = np.zeros(len(Transport) * PORTS, dtype=np.uint8)
    service_id = np.zeros(len(Transport) * PORTS, dtype=np.int32)
    flags = np.zeros(len(Transport) * PORTS, dtype=np.uint8)
    entry = np.full(len(Transport) * PORTS, -1, dtype=np.int32)
    if facts:
        status[sv.order] = status_of_view[vid]
        service_id[sv.order] = sid_of_view[vid]
    flags[sv.order] = flags_of_slot
    entry[sv.order] = entry_of_slot
    shape = (len(Transport), PORTS)
    status_rows = status.reshape(shape)
    dynamic = slice(DYNAMIC_PORTS.start, DYNAMIC_PORTS.stop)
    unlisted = status_rows[:, dynamic] == PortStatus.UNLISTED
    status_rows[:, dynamic][unlisted] = PortStatus.DYNAMIC
    return PortTable(
        status=status_rows, service_id=service_id.reshape(shape), flags=flags.reshape(shape),
        entry=entry.reshape(shape), names=names, entries=entries,
        sources=list(registry.sources),
    )
