"""Parser for services(5) files: ``/etc/services`` and Wireshark's ``services``.

Each line is ``name port/proto[/proto...] [alias ...] [# comment]``. The
``proto/proto`` merging is Wireshark's extension (``discard 9/tcp/udp/sctp/dccp``);
plain services(5) has one protocol per line. Such files list assigned ports
only, so the source is marked ``assigned_only``: a port they omit is
*unlisted*, never *unassigned*.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from portwatch.ports import Transport
from portwatch.registry.formats._fields import (
    MAX_PROBLEMS,
    parse_port_range,
    shorten,
    too_many_problems,
)
from portwatch.registry.model import (
    ParsedSource,
    ParseProblem,
    Provenance,
    RecordKind,
    ServiceRecord,
    SourceFormat,
    SourceInfo,
    parse_registry_date,
)

__all__ = ["ServicesEntry", "looks_like_services", "parse_services", "parse_services_line"]

_ENTRY_RE = re.compile(r"^\S+\s+[0-9]+(?:-[0-9]+)?/[A-Za-z]+(?:/[A-Za-z]+)*(?:\s|$)")
#: services(5) protocols that are valid but carry no IANA port assignment:
#: AppleTalk's Datagram Delivery Protocol (Debian's ``rtmp 1/ddp``).
_UNTRACKED_PROTOCOLS = frozenset({"ddp"})
#: A header comment that dates the file: ``# Updated: 2024-06-11``,
#: ``# Last updated 2024-06``, ``# generated on 2024-06-11``.
_DATED_RE = re.compile(
    r"\b(?:last[- ]updated|updated|generated|date|as of)\b"
    r"[^0-9]*?([0-9]{4}-[0-9]{2}(?:-[0-9]{2})?)\b",
    re.I | re.ASCII,
)
_SNIFF_LINES = 40


@dataclass(frozen=True, slots=True)
class ServicesEntry:
    """One services(5) line, before it is expanded into records."""

    name: str
    port_low: int
    port_high: int
    transports: tuple[Transport, ...]
    aliases: tuple[str, ...]
    comment: str


def parse_services_line(line: str) -> ServicesEntry | None:
    """One line -> its entry; ``None`` for blank and comment lines.

    Protocols portwatch does not track (``ddp``) are dropped from the entry,
    which may leave it with no transports at all.

    Raises ``ValueError`` with a message saying what was expected.
    """
    body, _, comment = line.partition("#")
    fields = body.split()
    if not fields:
        return None
    if len(fields) < 2:
        raise ValueError(f"expected 'name port/protocol', found only {fields[0]!r}")
    name, spec, *aliases = fields
    port_text, slash, protos = spec.partition("/")
    if not slash:
        raise ValueError(f"expected port/protocol, found {spec!r} (no '/')")
    try:
        low, high = parse_port_range(port_text)
    except ValueError:
        raise ValueError(
            f"expected a port 0-65535 or a range low-high, found {shorten(port_text)!r}"
        ) from None
    transports: list[Transport] = []
    for proto in protos.split("/"):
        if proto.lower() in _UNTRACKED_PROTOCOLS:
            continue
        try:
            transport = Transport.parse(proto)
        except ValueError:
            raise ValueError(
                f"unknown protocol {proto!r} in {spec!r}: expected tcp, udp, sctp or dccp"
            ) from None
        if transport not in transports:
            transports.append(transport)
    return ServicesEntry(name, low, high, tuple(transports), tuple(aliases), comment.strip())


def looks_like_services(head: str) -> bool:
    """Most of the first entry lines read ``name port/proto``."""
    lines = [ln for ln in head.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    sample = lines[:_SNIFF_LINES]
    if not sample:
        return False
    good = sum(1 for ln in sample if _ENTRY_RE.match(ln.strip()))
    return good > 0 and good * 5 >= len(sample) * 4


def _header_date(lines: list[str]) -> date | None:
    """A date stated in the comment block before the first entry, if any."""
    for line in lines:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return None
        m = _DATED_RE.search(stripped)
        if m:
            when = parse_registry_date(m[1])
            if when is not None:
                return when
    return None


def parse_services(text: str, path: str) -> ParsedSource:
    """Records from a services(5) file: one per (name, port, transport).

    Aliases follow their primary name as records of their own whose notes
    say ``alias of <primary>``, so the first named record for a (port,
    transport) stays the canonical one. Bad lines become ``ParseProblem``\\ s.
    """
    # Split on newlines only: a U+2028 inside a comment is not a line break
    # to the C library, and line numbers must match what an editor shows.
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    last_updated = _header_date(lines)
    result = ParsedSource(SourceInfo(path, SourceFormat.SERVICES, last_updated, assigned_only=True))
    seen: set[tuple[str, int, int, Transport]] = set()
    for number, line in enumerate(lines, start=1):
        if len(result.problems) >= MAX_PROBLEMS:
            raise too_many_problems(path, number, "a services(5) file")
        try:
            entry = parse_services_line(line)
        except ValueError as exc:
            result.problems.append(ParseProblem(path, number, str(exc)))
            continue
        if entry is None:
            continue
        provenance = Provenance(path, number, last_updated)
        for name, notes in [(entry.name, "")] + [
            (alias, f"alias of {entry.name}") for alias in entry.aliases
        ]:
            for transport in entry.transports:
                key = (name, entry.port_low, entry.port_high, transport)
                if key in seen:
                    continue
                seen.add(key)
                result.records.append(
                    ServiceRecord(
                        name=name,
                        port_low=entry.port_low,
                        port_high=entry.port_high,
                        transport=transport,
                        description=entry.comment,
                        kind=RecordKind.ASSIGNED,
                        provenance=provenance,
                        notes=notes,
                    )
                )
    return result
