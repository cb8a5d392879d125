"""``--filter`` expressions: parsed and checked once, then applied to a ``Report``.

An expression is ``status:S``, ``service:NAME``, ``port:N`` (or ``port:N-M``),
``transport:T`` or ``flagged``; several must all match. A typo must not
silently give an empty report, so every value is checked when parsed: an
unknown status, transport or service name, or a port outside 0-65535, is a
:class:`~portwatch.errors.UsageError` that lists what is valid and suggests
the nearest spelling. Service names match case-insensitively and by alias
(``service:www`` keeps ``http`` traffic), using the names of the loaded table.

The filtered report's totals (packets, bytes, flows) count only what was kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from portwatch.analysis.report import FlowReport, Report, ServiceCount
from portwatch.errors import UsageError
from portwatch.ports import PortStatus, Transport
from portwatch.porttable.table import PortTable

__all__ = ["FilterField", "ReportFilter", "apply_filters", "parse_filter", "parse_filters"]


class FilterField(Enum):
    STATUS = "status"
    SERVICE = "service"
    PORT = "port"
    TRANSPORT = "transport"
    FLAGGED = "flagged"


_FORMS = "status:S, service:NAME, port:N, transport:T or flagged"
_STATUSES = tuple(s.label for s in PortStatus)
_TRANSPORTS = tuple(t.label for t in Transport)


@dataclass(frozen=True, slots=True)
class ReportFilter:
    """One checked expression. ``values`` are lower-case service names or labels;
    ``low``/``high`` bound a port range."""

    field: FilterField
    values: frozenset[str] = frozenset()
    low: int = 0
    high: int = 65535
    text: str = ""

    def keeps_service(self, s: ServiceCount) -> bool:
        return self._keeps(s.transport, s.port, s.service, s.status, bool(s.flags))

    def keeps_flow(self, f: FlowReport) -> bool:
        return self._keeps(f.transport, f.service_port, f.service, f.status, f.flagged)

    def _keeps(self, transport: str, port: int, service: str, status: str,
               flagged: bool) -> bool:
        match self.field:
            case FilterField.FLAGGED:
                return flagged
            case FilterField.PORT:
                return self.low <= port <= self.high
            case FilterField.STATUS:
                return status in self.values
            case FilterField.TRANSPORT:
                return transport in self.values
            case FilterField.SERVICE:
                return service.lower() in self.values


def _nearest(word: str, choices: Iterable[str]) -> str:
    """``; did you mean 'a', 'b' or 'c'?`` for up to three close spellings, else ``""``."""
    import difflib  # only a mistyped filter needs it

    close = [repr(c) for c in difflib.get_close_matches(word.lower(), list(choices), n=3,
                                                         cutoff=0.6)]
    if not close:
        return ""
    said = close[0] if len(close) == 1 else f"{', '.join(close[:-1])} or {close[-1]}"
    return f"; did you mean {said}?"


def _choice(expr: str, what: str, value: str, choices: Sequence[str]) -> frozenset[str]:
    key = value.lower()
    if key not in choices:
        raise UsageError(f"bad --filter {expr!r}: unknown {what} {value!r}; expected one of "
                         f"{', '.join(choices)}{_nearest(key, choices)}")
    return frozenset({key})


def _port(expr: str, value: str) -> tuple[int, int]:
    low_text, dash, high_text = value.partition("-")
    try:
        low = int(low_text, 10)
        high = int(high_text, 10) if dash else low
    except ValueError:
        raise UsageError(f"bad --filter {expr!r}: a port is a number 0-65535 or a range "
                         f"N-M, not {value!r} (for a service name use service:{value})"
                         ) from None
    if not 0 <= low <= high <= 65535:
        raise UsageError(f"bad --filter {expr!r}: ports run from 0 to 65535 (a range "
                         f"N-M needs N <= M), not {value!r}")
    return low, high


def _service(expr: str, value: str, table: PortTable) -> frozenset[str]:
    """Canonical names ``value`` stands for: itself, or the services it is an alias of."""
    key = value.lower()
    names = {n.lower() for n in table.names if n}
    found = {key} if key in names else set()
    aliases: dict[str, set[str]] = {}
    for entry in table.entries:
        for alias in entry.aliases:
            aliases.setdefault(alias.lower(), set()).add(entry.service.lower())
    found |= aliases.get(key, set())
    if not found:
        raise UsageError(f"bad --filter {expr!r}: no service or alias {value!r} in the "
                         f"registry (see `portwatch lookup NAME`)"
                         f"{_nearest(key, names | aliases.keys())}")
    return frozenset(found)


_FIELDS = tuple(f.value for f in FilterField)


def parse_filter(expr: str, table: PortTable) -> ReportFilter:
    """One expression, checked against the vocabulary and ``table``'s service names."""
    key, sep, value = expr.partition(":")
    if not sep:
        key, sep, value = expr.partition("=")
    key, value = key.strip().lower(), value.strip()
    if key not in _FIELDS:
        raise UsageError(f"bad --filter {expr!r}: unknown field {key!r}; expected "
                         f"{_FORMS}{_nearest(key, _FIELDS)}")
    field = FilterField(key)
    if field is FilterField.FLAGGED:
        if sep:
            raise UsageError(f"bad --filter {expr!r}: 'flagged' takes no value")
        return ReportFilter(field, text=expr)
    if not value:
        raise UsageError(f"bad --filter {expr!r}: {key} needs a value, e.g. {key}:"
                         + {"status": "unassigned", "service": "http", "port": "443",
                            "transport": "udp"}[key])
    parsers: dict[FilterField, Callable[[], ReportFilter]] = {
        FilterField.STATUS: lambda: ReportFilter(
            field, _choice(expr, "status", value, _STATUSES), text=expr),
        FilterField.TRANSPORT: lambda: ReportFilter(
            field, _choice(expr, "transport", value, _TRANSPORTS), text=expr),
        FilterField.SERVICE: lambda: ReportFilter(
            field, _service(expr, value, table), text=expr),
        FilterField.PORT: lambda: ReportFilter(field, frozenset(), *_port(expr, value),
                                               text=expr),
    }
    return parsers[field]()


def parse_filters(exprs: Iterable[str], table: PortTable) -> list[ReportFilter]:
    return [parse_filter(e, table) for e in exprs]


def apply_filters(report: Report, filters: Sequence[ReportFilter], *,
                  top: int | None = None) -> Report:
    """The services and flows every filter keeps, then the ``top`` busiest of them.

    With filters, ``packets``/``bytes`` are the kept services' totals and the
    undecodable-packet counts are dropped (those packets have no port, so no
    filter can keep them). ``top`` limits services and flagged flows shown; it
    is a display limit, so the totals are those of the filtered report.
    """
    if top is not None and top < 1:
        raise UsageError(f"--top takes a positive number, not {top}")
    services = [s for s in report.services if all(f.keeps_service(s) for f in filters)]
    flows = [fl for fl in report.flows if all(f.keeps_flow(fl) for f in filters)]
    packets, nbytes, decode = report.packets, report.bytes, report.decode
    if filters:
        packets = sum(s.packets for s in services)
        nbytes = sum(s.bytes for s in services)
        decode = {}
    if top is not None:
        services = services[:top]
        keep = {id(f) for f in [f for f in flows if f.flagged][:top]}
        flows = [f for f in flows if not f.flagged or id(f) in keep]
    return Report(list(report.captures), packets, nbytes, services, flows, dict(decode),
                  report.registry, list(report.warnings), report.partial)
