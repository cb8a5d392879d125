"""Compile a merged registry into a ``PortTable``: every slot resolved once.

The per-slot decisions (which record names the port, its aliases, whether a
reported unauthorized use covers this very port) are made here, so that a
lookup afterwards is array indexing alone.
"""

from __future__ import annotations

import re

import numpy as np

from portwatch.ports import DYNAMIC_PORTS, PortFlag, PortStatus
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


def compile_table(registry: Registry) -> PortTable:
    """Resolve every slot once; the result answers by indexing alone."""
    status = np.zeros((4, PORTS), dtype=np.uint8)
    service_id = np.zeros((4, PORTS), dtype=np.int32)
    flags = np.zeros((4, PORTS), dtype=np.uint8)
    entry = np.full((4, PORTS), -1, dtype=np.int32)
    names: list[str] = [""]
    name_ids: dict[str, int] = {"": 0}
    entries: list[SlotEntry] = []
    interned: dict[tuple[tuple[int, ...], int], int] = {}
    resolved: dict[tuple[int, ...], tuple[PortStatus, str, tuple[str, ...], str,
                                          ServiceRecord | None]] = {}

    for (transport, port), view in registry.slot_views().items():
        facts = resolved.get(view.record_ids)
        if facts is None:
            facts = resolved[view.record_ids] = _entry_for(registry, view)
        st, service, aliases, description, remarked = facts
        flag = PortFlag.NONE
        if remarked is not None:
            ports = _remark_ports(remarked)
            if ports is None or port in ports:
                flag = PortFlag.UNAUTHORIZED_USE
        key = (view.record_ids, int(flag))
        index = interned.get(key)
        if index is None:
            index = interned[key] = len(entries)
            entries.append(
                SlotEntry(st, service, aliases, description, flag,
                          remarked.unauthorized_use if remarked else "",
                          view.record_ids, view.source_index)
            )
        sid = name_ids.get(service)
        if sid is None:
            sid = name_ids[service] = len(names)
            names.append(service)
        status[transport, port] = st
        service_id[transport, port] = sid
        flags[transport, port] = flag
        entry[transport, port] = index

    dynamic = slice(DYNAMIC_PORTS.start, DYNAMIC_PORTS.stop)
    unlisted = status[:, dynamic] == PortStatus.UNLISTED
    status[:, dynamic][unlisted] = PortStatus.DYNAMIC
    return PortTable(
        status=status, service_id=service_id, flags=flags, entry=entry,
        names=names, entries=entries, sources=list(registry.sources),
    )

