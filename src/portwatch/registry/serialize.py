"""Records as plain JSON-ready dicts, with people resolved."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from portwatch.registry.model import Person, ServiceRecord

__all__ = ["person_dict", "record_dict"]


def person_dict(person_id: str, people: Mapping[str, Person]) -> dict[str, str]:
    person = people.get(person_id)
    if person is None:
        return {"id": person_id, "name": "", "organization": "", "email": "", "uri": ""}
    return {
        "id": person.id,
        "name": person.name,
        "organization": person.organization,
        "email": person.email,
        "uri": person.uri,
    }


def record_dict(rec: ServiceRecord, people: Mapping[str, Person]) -> dict[str, Any]:
    prov = rec.provenance
    return {
        "service": rec.name,
        "port": rec.port_text,
        "transport": rec.transport.label if rec.transport is not None else "",
        "transports": [t.label for t in rec.transports],
        "kind": rec.kind.value,
        "description": rec.description,
        "assignees": [person_dict(p, people) for p in rec.assignees],
        "contacts": [person_dict(p, people) for p in rec.contacts],
        "registered": rec.registered,
        "modified": rec.modified,
        "references": list(rec.references),
        "service_code": rec.service_code,
        "unauthorized_use": rec.unauthorized_use,
        "notes": rec.notes,
        "provenance": {
            "path": prov.path,
            "line": prov.line,
            "last_updated": prov.last_updated.isoformat() if prov.last_updated else None,
        },
    }
