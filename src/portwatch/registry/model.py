"""The typed model every registry parser produces.

One ``ServiceRecord`` is one row of the registry in whatever form it was
published (CSV row, XML ``<record>``, text-table row, services(5) line). The
records keep their provenance so that a merged view can say where each answer
came from and which source won.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from enum import Enum

from portwatch.ports import Transport
from portwatch.registry.formats._fields import DATE_RE

__all__ = [
    "ParseProblem",
    "ParsedSource",
    "Person",
    "Provenance",
    "RecordKind",
    "ServiceRecord",
    "SourceFormat",
    "SourceInfo",
    "classify_description",
    "parse_registry_date",
]

class RecordKind(Enum):
    """What a registry row says about its port(s)."""

    ASSIGNED = "assigned"
    RESERVED = "reserved"
    UNASSIGNED = "unassigned"
    NAME_ONLY = "name-only"  # a service name with no port (DNS-SD / SRV use)


class SourceFormat(Enum):
    IANA_CSV = "iana-csv"
    IANA_XML = "iana-xml"
    TEXT_TABLE = "text-table"  # the text/Markdown renderings of the registry page
    SERVICES = "services"  # services(5): /etc/services, Wireshark's services


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a record came from: file, 1-based line, and the source's date."""

    path: str
    line: int
    last_updated: date | None


@dataclass(frozen=True, slots=True)
class Person:
    """An entry of the registry's people list (``[Mark_Lottor]``)."""

    id: str
    name: str = ""
    organization: str = ""
    uri: str = ""  # mailto:user@example.org, or an http(s) URI
    updated: str = ""

    @property
    def email(self) -> str:
        return self.uri.removeprefix("mailto:") if self.uri.startswith("mailto:") else ""


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """One registry row.

    ``transport`` is ``None`` where the source left it blank; ``transports``
    expands that as IANA means it (tcp and udp). ``port_low``/``port_high``
    are ``None`` for name-only records; equal for a single port.
    """

    name: str
    port_low: int | None
    port_high: int | None
    transport: Transport | None
    description: str
    kind: RecordKind
    provenance: Provenance
    assignees: tuple[str, ...] = ()
    contacts: tuple[str, ...] = ()
    registered: str = ""  # "YYYY-MM" or "YYYY-MM-DD" as published
    modified: str = ""
    references: tuple[str, ...] = ()  # "RFC6335", "ITU-T X.510 / ISO/IEC 9584-11"
    service_code: str = ""
    unauthorized_use: str = ""
    notes: str = ""

    @property
    def transports(self) -> tuple[Transport, ...]:
        if self.transport is None:
            return (Transport.TCP, Transport.UDP)
        return (self.transport,)

    @property
    def is_range(self) -> bool:
        return self.port_low is not None and self.port_high != self.port_low

    @property
    def port_text(self) -> str:
        if self.port_low is None:
            return ""
        if self.port_high == self.port_low:
            return str(self.port_low)
        return f"{self.port_low}-{self.port_high}"

    def ports(self) -> Iterator[int]:
        if self.port_low is None or self.port_high is None:
            return iter(())
        return iter(range(self.port_low, self.port_high + 1))

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity across snapshots: (name, port text, transport text)."""
        return (self.name, self.port_text, "" if self.transport is None else self.transport.label)


@dataclass(frozen=True, slots=True)
class ParseProblem:
    """A row a parser could not understand; the rest of the file still loads."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What one loaded source is.

    ``assigned_only`` marks services(5) files: they list assigned ports only,
    so a port absent from them is *unlisted*, never *unassigned*.
    """

    path: str
    format: SourceFormat
    last_updated: date | None
    assigned_only: bool = False
    sha256: str = ""


@dataclass(slots=True)
class ParsedSource:
    """Everything one parser took from one file."""

    info: SourceInfo
    records: list[ServiceRecord] = field(default_factory=list)
    people: dict[str, Person] = field(default_factory=dict)
    problems: list[ParseProblem] = field(default_factory=list)


def parse_registry_date(text: str) -> date | None:
    """``'2007-06'`` -> 2007-06-01, ``'2020-04-29'`` -> that day; else ``None``."""
    m = DATE_RE.match(text.strip())
    if not m:
        return None
    year, month, day = int(m[1]), int(m[2]), int(m[3] or 1)
    try:
        return date(year, month, day)
    except ValueError:
        return None


_UNASSIGNED_RE = re.compile(
    r"unassigned|de-?registered|removed|deprecated|decom+is+ioned|de-commissioned", re.I
)
_RESERVED_RE = re.compile(r"^\s*reserved\b", re.I)


def classify_description(name: str, port_given: bool, description: str) -> RecordKind:
    """The kind of a row, as IANA's own conventions imply it.

    A named row with a port is assigned; a named row without one is a
    name-only (DNS-SD) registration. Unnamed rows say what they are in the
    description: ``Reserved``, ``Unassigned`` and its variants (``unassigned``,
    ``De-registered``, ``Removed``, ``Decomissioned Port``). Unnamed rows with
    any other text (``any private mail system``) are assignments without a
    service name.
    """
    if name:
        return RecordKind.ASSIGNED if port_given else RecordKind.NAME_ONLY
    if _RESERVED_RE.match(description):
        return RecordKind.RESERVED
    if _UNASSIGNED_RE.search(description):
        return RecordKind.UNASSIGNED
    return RecordKind.ASSIGNED
