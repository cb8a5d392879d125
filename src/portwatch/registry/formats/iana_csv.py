"""The official IANA CSV export of the service-names/port-numbers registry.

The file is ``service-names-port-numbers.csv`` exactly as IANA serves it:
records end in CRLF while newlines inside quoted fields are bare LF, so one
row may span several physical lines. Every record keeps the physical line it
starts on, so that a user can open the file at the row a verdict came from.

The CSV carries no "Last Updated" date; the newest registration or
modification date in it stands in for one.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections.abc import Iterable, Iterator
from datetime import date

from portwatch.errors import RegistryFormatError
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
    ServiceRecord,
    SourceFormat,
    SourceInfo,
    classify_description,
    parse_registry_date,
)

__all__ = [
    "HEADER",
    "MAX_FIELD_CHARS",
    "looks_like_iana_csv",
    "newest_date",
    "parse_iana_csv",
    "parse_port_text",
    "parse_transport_text",
    "split_bracketed",
]

#: The official header, in order; any other header is some other file.
HEADER: tuple[str, ...] = (
    "Service Name",
    "Port Number",
    "Transport Protocol",
    "Description",
    "Assignee",
    "Contact",
    "Registration Date",
    "Modification Date",
    "Reference",
    "Service Code",
    "Unauthorized Use Reported",
    "Assignment Notes",
)

_BOM = "\ufeff"
_BINARY_RE = re.compile("[\x00\ud800-\udfff]")  # NUL, or bytes kept by surrogateescape
#: The csv module's own limit on one field; the longest official field is
#: under 2 KB, so a longer one is damage, not data.
MAX_FIELD_CHARS = csv.field_size_limit()


def looks_like_iana_csv(head: str) -> bool:
    """True when ``head`` (the first bytes of a file, decoded) opens with the official header.

    Sniffing by content, not by file name: renamed downloads are common.
    """
    first = head.removeprefix(_BOM).split("\n", 1)[0].rstrip("\r")
    try:
        fields = next(csv.reader([first]), [])
    except csv.Error:
        return False
    return tuple(fields) == HEADER


def parse_port_text(text: str) -> tuple[int | None, int | None]:
    """``''`` -> (None, None); ``'80'`` -> (80, 80); ``'6000-6063'`` -> (6000, 6063).

    Raises ``ValueError`` with a message quoting the text when it is no port
    number or range of ASCII digits, is above 65535, or runs backwards.
    """
    if not text.strip():
        return None, None
    return parse_port_range(text)


def parse_transport_text(text: str) -> Transport | None:
    """Blank -> ``None`` (IANA means tcp and udp); else the transport or ``ValueError``."""
    if not text.strip():
        return None
    try:
        return Transport.parse(text)
    except ValueError:
        raise ValueError(
            f"unknown transport protocol {text!r}: expected tcp, udp, sctp, dccp or blank"
        ) from None


def split_bracketed(text: str) -> tuple[str, ...]:
    """``'[RFC4743][RFC9900]'`` -> ``('RFC4743', 'RFC9900')``.

    Nested brackets stay inside their item; text outside any bracket is kept
    as an item of its own so that nothing published is silently dropped.
    """
    items: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "[":
            if depth == 0:
                _flush(current, items)
            else:
                current.append(ch)
            depth += 1
        elif ch == "]" and depth > 0:
            depth -= 1
            if depth == 0:
                _flush(current, items)
            else:
                current.append(ch)
        else:
            current.append(ch)
    _flush(current, items)
    return tuple(items)


def _flush(current: list[str], items: list[str]) -> None:
    item = "".join(current).strip()
    if item:
        items.append(item)
    current.clear()


def newest_date(dates: Iterable[str]) -> date | None:
    """The latest of published dates (``YYYY-MM`` or ``YYYY-MM-DD``); unparseable ones ignored."""
    parsed = [d for d in map(parse_registry_date, dates) if d is not None]
    return max(parsed, default=None)


def _physical_lines(text: str) -> Iterator[str]:
    """Lines split on LF only, so that counting them counts lines as editors do."""
    parts = text.split("\n")
    for part in parts[:-1]:
        yield part + "\n"
    if parts[-1]:
        yield parts[-1]


def _check_text(text: str, path: str) -> None:
    """Refuse input that cannot be a CSV at all, before the csv module sees it."""
    if not text.strip():
        raise RegistryFormatError("empty file: expected the IANA registry CSV", path=path)
    bad = _BINARY_RE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        what = "a NUL byte" if bad[0] == "\x00" else "bytes that are not UTF-8"
        raise RegistryFormatError(
            f"binary content ({what}): expected the IANA registry CSV", path=path, line=line
        )


def _field(value: str) -> str:
    """Field text as the csv module gives it, with CRLF inside a field made LF."""
    return value.replace("\r\n", "\n")


def _record(fields: list[str], path: str, line: int) -> ServiceRecord:
    """One data row -> a record; ``ValueError`` says what is wrong with it."""
    (name, port, transport, description, assignee, contact, registered, modified,
     reference, service_code, unauthorized, notes) = (_field(f) for f in fields)
    port_low, port_high = parse_port_text(port)
    return ServiceRecord(
        name=name,
        port_low=port_low,
        port_high=port_high,
        transport=parse_transport_text(transport),
        description=description,
        kind=classify_description(name, port_low is not None, description),
        provenance=Provenance(path, line, None),
        assignees=split_bracketed(assignee),
        contacts=split_bracketed(contact),
        registered=registered.strip(),
        modified=modified.strip(),
        references=split_bracketed(reference),
        service_code=service_code,
        unauthorized_use=unauthorized,
        notes=notes,
    )


def _rows(text: str, path: str) -> Iterator[tuple[int, list[str] | str]]:
    """(start line, fields) per CSV row, or (start line, what is wrong) for a malformed one.

    A quoted field still open at the end of the file means the file was cut
    short: that is fatal, because the csv module would otherwise hand back
    the remains as if they were a complete row.
    """
    reader = csv.reader(_physical_lines(text), strict=True)
    consumed = 0
    while True:
        start = consumed + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            reason = str(exc)
            if "unexpected end of data" in reason:
                raise RegistryFormatError(
                    f"file ends inside a quoted field: the row starting on line {start}"
                    f" is truncated (its closing '\"' is missing; reached line {reader.line_num})",
                    path=path,
                    line=start,
                ) from None
            if "field larger than field limit" in reason:
                raise RegistryFormatError(
                    f"a field of the row starting on line {start} is longer than the"
                    f" {MAX_FIELD_CHARS:,}-character limit (reading reached line"
                    f" {reader.line_num}; is a closing '\"' missing?)",
                    path=path,
                    line=start,
                ) from None
            consumed = reader.line_num
            yield start, f"malformed CSV row: {reason}"
            continue
        consumed = reader.line_num
        if fields:  # a blank line is no row
            yield start, fields


def parse_iana_csv(text: str, path: str) -> ParsedSource:
    """Parse the official IANA CSV export held in ``text``; ``path`` names it in messages.

    A row that cannot be understood becomes a ``ParseProblem`` and the rest
    still loads; a file that is not the registry CSV at all raises
    ``RegistryFormatError``.
    """
    _check_text(text, path)
    rows = _rows(text.removeprefix(_BOM), path)
    first = next(rows, None)
    if first is None or isinstance(first[1], str) or tuple(first[1]) != HEADER:
        # The file is not recognised: say what was expected, never quote what
        # it holds (``--registry /etc/shadow`` must not echo a password hash).
        found = "no row" if first is None else (
            "a malformed row" if isinstance(first[1], str)
            else f"a row of {len(first[1])} field{'s' if len(first[1]) != 1 else ''}"
        )
        raise RegistryFormatError(
            f"not the official IANA CSV header: expected {','.join(HEADER)!r}"
            f" ({len(HEADER)} fields), found {found}",
            path=path,
            line=1 if first is None else first[0],
        )
    records: list[ServiceRecord] = []
    problems: list[ParseProblem] = []
    for line, fields in rows:
        if len(problems) >= MAX_PROBLEMS:
            raise too_many_problems(path, line, "the IANA registry CSV")
        if isinstance(fields, str):
            problems.append(ParseProblem(path, line, fields))
            continue
        if len(fields) != len(HEADER):
            problems.append(ParseProblem(
                path, line,
                f"expected {len(HEADER)} fields, found {len(fields)}:"
                f" {shorten(','.join(fields))!r}",
            ))
            continue
        try:
            records.append(_record(fields, path, line))
        except ValueError as exc:
            problems.append(ParseProblem(path, line, str(exc)))
    last_updated = newest_date(d for r in records for d in (r.registered, r.modified))
    records = [
        dataclasses.replace(
            r, provenance=Provenance(path, r.provenance.line, last_updated)
        )
        for r in records
    ]
    info = SourceInfo(path, SourceFormat.IANA_CSV, last_updated, assigned_only=False)
    return ParsedSource(info=info, records=records, problems=problems)
