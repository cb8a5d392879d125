"""What changed between two snapshots of the registry.

Records are matched by identity ``(name, port, transport)``. A record present
only in the new snapshot is *added* (an *assignment* when it is an assigned
port); present only in the old one, *withdrawn*. When the same port and
transport lose one service name and gain another, the pair is a *rename*.
Same identity with other field values is *changed*, naming the fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from enum import Enum

from portwatch.registry.model import ServiceRecord

__all__ = ["Change", "ChangeKind", "diff_records"]

_COMPARED = tuple(
    f.name for f in fields(ServiceRecord) if f.name not in ("name", "port_low", "port_high",
                                                             "transport", "provenance")
)


class ChangeKind(Enum):
    ADDED = "added"
    WITHDRAWN = "withdrawn"
    RENAMED = "renamed"
    CHANGED = "changed"


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    old: ServiceRecord | None
    new: ServiceRecord | None
    fields: tuple[str, ...] = ()  # for CHANGED: which fields differ

    @property
    def record(self) -> ServiceRecord:
        rec = self.new if self.new is not None else self.old
        assert rec is not None
        return rec


def _normal(value: object) -> object:
    return " ".join(value.split()) if isinstance(value, str) else value


def _index(records: Sequence[ServiceRecord]) -> dict[tuple[str, str, str], ServiceRecord]:
    out: dict[tuple[str, str, str], ServiceRecord] = {}
    for rec in records:
        out.setdefault(rec.key, rec)  # duplicate keys (the two `rdp` rows) keep the first
    return out


def diff_records(old: Sequence[ServiceRecord], new: Sequence[ServiceRecord]) -> list[Change]:
    """Changes from ``old`` to ``new``, in the new snapshot's order (withdrawals last)."""
    old_by_key, new_by_key = _index(old), _index(new)
    added = [r for k, r in new_by_key.items() if k not in old_by_key]
    withdrawn = [r for k, r in old_by_key.items() if k not in new_by_key]

    def slot(rec: ServiceRecord) -> tuple[str, str]:
        return (rec.port_text, rec.key[2])

    gone_named: dict[tuple[str, str], ServiceRecord] = {}
    for rec in withdrawn:
        if rec.name and rec.port_low is not None:
            gone_named.setdefault(slot(rec), rec)
    renamed_old: set[int] = set()
    changes: list[Change] = []
    for rec in added:
        before = gone_named.get(slot(rec)) if rec.name and rec.port_low is not None else None
        if before is not None and id(before) not in renamed_old:
            renamed_old.add(id(before))
            changes.append(Change(ChangeKind.RENAMED, before, rec))
        else:
            changes.append(Change(ChangeKind.ADDED, None, rec))
    for key, rec in new_by_key.items():
        prev = old_by_key.get(key)
        if prev is None:
            continue
        differing = tuple(
            name for name in _COMPARED
            if _normal(getattr(prev, name)) != _normal(getattr(rec, name))
        )
        if differing:
            changes.append(Change(ChangeKind.CHANGED, prev, rec, differing))
    changes.extend(
        Change(ChangeKind.WITHDRAWN, rec, None) for rec in withdrawn if id(rec) not in renamed_old
    )
    return changes
