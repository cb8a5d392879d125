"""The report of an analysis: per-service counts and every flow, its verdict in words.

``build_report`` turns what an ``Analyzer`` counted into a ``Report``; the
verdicts are worded by ``portwatch.analysis.verdict`` like every other output.
``merge_reports`` joins the reports of captures analysed apart (``--jobs``).
Rendering a report as text is ``portwatch.analysis.render``'s job.

Flows come sorted by start time, then by their canonical 5-tuple (transport,
then the smaller address and port, then the other), so two runs over the same
capture list them alike. ``docs/flow-records.md`` documents every field.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from portwatch.analysis.community_id import flow_community_ids
from portwatch.analysis.conn_state import CONN_STATE_LABELS, conn_states
from portwatch.analysis.verdict import (
    FlagReason,
    FlowDecisions,
    ServiceSideRule,
    flag_labels,
    port_reasons,
    reasons,
)
from portwatch.decode.native import DecodeStatus, encapsulation_labels
from portwatch.ports import DYNAMIC_PORTS, PortStatus, Transport
from portwatch.porttable.table import PortTable

if TYPE_CHECKING:  # the analyzer calls build_report; only its type is needed here
    from portwatch.analysis.analyzer import Analyzer
    from portwatch.analysis.flows import FlowTable

__all__ = [
    "DETECTION_FIELDS",
    "PORTLESS_STATUSES",
    "UNDECODABLE_STATUSES",
    "FlowReport",
    "Report",
    "ServiceCount",
    "build_report",
    "by_start",
    "flow_reports",
    "merge_reports",
    "registry_summary",
    "service_counts",
]

I64 = npt.NDArray[np.int64]

#: Packets decoded without transport ports of their own (``Report.decode`` keys by label):
#: the ``portless`` metrics.
PORTLESS_STATUSES = (DecodeStatus.ICMP, DecodeStatus.NON_IP, DecodeStatus.FRAGMENT,
                     DecodeStatus.OTHER_IP)
#: Packets that could not be decoded: the ``decode_errors`` metrics.
UNDECODABLE_STATUSES = (DecodeStatus.TRUNCATED, DecodeStatus.MALFORMED,
                        DecodeStatus.UNSUPPORTED_LINK)
#: ``FlowReport`` fields present only when detection ran.
DETECTION_FIELDS = ("detected", "confidence", "detection")


@dataclass(slots=True)
class ServiceCount:
    """Traffic of all flows whose service is (transport, port), both directions."""

    transport: str
    port: int
    service: str
    status: str
    packets: int = 0
    bytes: int = 0
    flows: int = 0
    flags: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"transport": self.transport, "port": self.port, "service": self.service,
                "status": self.status, "packets": self.packets, "bytes": self.bytes,
                "flows": self.flows, "flags": self.flags}


@dataclass(slots=True)
class FlowReport:
    """One flow, with its service side decided and its flags explained."""

    transport: str
    client: str
    client_port: int
    server: str
    service_port: int
    service: str
    status: str
    method: str
    flags: list[str]
    reasons: list[str]
    packets: int
    bytes: int
    packets_to_service: int
    packets_from_service: int
    bytes_to_service: int
    bytes_from_service: int
    first_seen: str
    last_seen: str
    capture: str = ""
    #: Unix time of the first packet, seconds (``first_seen`` as a number).
    start_time: float = 0.0
    #: Seconds from the first packet to the last (0.0 for a single packet).
    duration: float = 0.0
    #: Zeek-style connection state (``portwatch.analysis.conn_state.ConnState``).
    conn_state: str = ""
    #: Community ID v1 of the flow (seed 0), as Zeek, Suricata and Wireshark give it.
    community_id: str = ""
    #: Encapsulations the flow's first packet was found in, outermost first
    #: ("vxlan", "gre+mpls"); "" for none.
    encapsulation: str = ""
    # Set only when nDPI ran (``--detect``, ``portwatch.analysis.detect``): the
    # protocol in the payload ("" for none), ``Confidence`` and ``Detection`` labels.
    detected: str | None = None
    confidence: str | None = None
    detection: str | None = None

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    def as_dict(self) -> dict[str, Any]:
        """Every field in declaration order; the detection fields only when detection ran.

        One C-level ``attrgetter`` call per flow: a per-field ``getattr`` loop was
        half the time of rendering 20,000 flows as JSON.
        """
        if self.detection is None:
            return dict(zip(_PLAIN_FIELDS, _plain_values(self), strict=True))
        return dict(zip(_ALL_FIELDS, _all_values(self), strict=True))


_ALL_FIELDS: tuple[str, ...] = FlowReport.__slots__
_PLAIN_FIELDS = tuple(name for name in _ALL_FIELDS if name not in DETECTION_FIELDS)
_all_values = attrgetter(*_ALL_FIELDS)
_plain_values = attrgetter(*_PLAIN_FIELDS)


@dataclass(slots=True)
class Report:
    """What ``portwatch analyze`` prints, in every format."""

    captures: list[str]
    packets: int
    bytes: int
    services: list[ServiceCount]
    flows: list[FlowReport]
    decode: dict[str, int]
    registry: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    partial: bool = False
    #: Flows in the captures when ``flows`` holds only some of them (a bounded
    #: run: the first flagged ones, see ``portwatch.analysis.retire``); None: all.
    flow_total: int | None = None

    @property
    def flagged(self) -> list[FlowReport]:
        return [f for f in self.flows if f.flagged]

    @property
    def flow_count(self) -> int:
        """Flows in the captures, whether or not ``flows`` lists them all."""
        return len(self.flows) if self.flow_total is None else self.flow_total

    def flagged_flow_counts(self) -> dict[tuple[str, int, str, str], int]:
        """Flagged flows by (transport, service port, status, reason), listed or not.

        A flow's flags are its service port's, so when ``flows`` lists only
        some (``flow_total`` set) the counts come from ``services``, exactly.
        """
        counts: dict[tuple[str, int, str, str], int] = {}
        if self.flow_total is None:
            for f in self.flagged:
                for reason in f.flags:
                    key = (f.transport, f.service_port, f.status, reason)
                    counts[key] = counts.get(key, 0) + 1
            return counts
        for s in self.services:
            for reason in s.flags:
                key = (s.transport, s.port, s.status, reason)
                counts[key] = counts.get(key, 0) + s.flows
        return counts

    def as_dict(self, *, include_flows: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "captures": self.captures,
            "packets": self.packets,
            "bytes": self.bytes,
            "flow_count": self.flow_count,
            "services": [s.as_dict() for s in self.services],
            "flagged": [f.as_dict() for f in self.flagged],
            "decode": self.decode,
            "registry": self.registry,
            "warnings": self.warnings,
            "partial": self.partial,
        }
        if include_flows:
            doc["flows"] = [f.as_dict() for f in self.flows]
        return doc


def _address(hi: int, lo: int) -> str:
    value = (hi << 64) | lo
    if value >> 32 == 0xFFFF:  # IPv4-mapped ::ffff:a.b.c.d
        return str(ipaddress.IPv4Address(value & 0xFFFF_FFFF))
    return str(ipaddress.IPv6Address(value))


def _times(ns: I64) -> list[str]:
    """ISO 8601 UTC times, microsecond precision, for a whole column at once."""
    text = np.datetime_as_string(ns.astype("datetime64[ns]").astype("datetime64[us]"),
                                 unit="us")
    return [t + "+00:00" for t in text.tolist()]


def _seconds(ns: I64) -> npt.NDArray[np.float64]:
    """Unix seconds, the nearest float to the exact value (``ns / 1e9`` rounds twice)."""
    whole, frac = np.divmod(ns, 1_000_000_000)
    seconds: npt.NDArray[np.float64] = whole.astype(np.float64) + frac / 1e9
    return seconds


_STATUS_LABELS = [s.label for s in PortStatus]
_RULE_LABELS = [r.label for r in ServiceSideRule]
_TRANSPORT_LABELS = [t.label for t in Transport]


def build_report(analyzer: Analyzer) -> Report:
    """Every live flow of ``analyzer`` decided, counted per service and worded."""
    ft = analyzer.flows
    table = analyzer.table
    live = by_start(ft, np.flatnonzero(ft.alive[: ft.size]))
    dec = ft.decide(table, live)
    return Report(
        captures=[analyzer.capture] if analyzer.capture else [],
        packets=analyzer.packets,
        bytes=analyzer.bytes,
        services=_service_counts(analyzer, live, dec),
        flows=_flow_reports(analyzer, live, dec),
        decode=analyzer.decode_summary(),
        registry=registry_summary(table),
        warnings=list(analyzer.warnings),
        partial=analyzer.partial,
    )


def by_start(ft: FlowTable, rows: I64) -> I64:
    """``rows`` ordered by first packet time, then by the canonical 5-tuple."""
    k = ft.keys[rows]
    order = np.lexsort((k["bp"], k["bl"], k["bh"], k["ap"], k["al"], k["ah"], k["t"],
                        ft.first_ns[rows]))
    ordered: I64 = rows[order]
    return ordered


def registry_summary(table: PortTable) -> dict[str, Any]:
    """Which registry answered, for the report's ``registry`` entry."""
    return {
        "snapshot": table.snapshot,
        "last_updated": table.last_updated.isoformat() if table.last_updated else None,
        "assigned_only": table.assigned_only,
        "sources": [s.path for s in table.sources],
    }


def _service_counts(analyzer: Analyzer, live: I64, dec: FlowDecisions) -> list[ServiceCount]:
    """Per (transport, service port): one pass with numpy, then one row per service."""
    ft = analyzer.flows
    packets = ft.packets()[live]
    nbytes = ft.bytes()[live]
    service_key = dec.transport.astype(np.int64) * 65536 + dec.service_port
    uniq, inverse = np.unique(service_key, return_inverse=True)
    svc_packets = np.bincount(inverse, weights=packets, minlength=uniq.size)
    svc_bytes = np.bincount(inverse, weights=nbytes, minlength=uniq.size)
    svc_flows = np.bincount(inverse, minlength=uniq.size)
    return service_counts(analyzer.table, uniq, svc_packets, svc_bytes, svc_flows)


def service_counts(table: PortTable, keys: npt.NDArray[Any], packets: npt.NDArray[Any],
                   nbytes: npt.NDArray[Any], flows: npt.NDArray[Any]) -> list[ServiceCount]:
    """One ``ServiceCount`` per ``keys`` entry (transport * 65536 + port), busiest first."""
    services = []
    words: dict[tuple[PortStatus, int], tuple[str, ...]] = {}  # a handful of distinct pairs
    for j, key in enumerate(keys.tolist()):
        t, port = Transport(key // 65536), key % 65536
        info = table.lookup(t, port)
        labels = words.get((info.status, info.flags))
        if labels is None:
            labels = words[(info.status, info.flags)] = tuple(
                flag_labels(port_reasons(info.status, info.flags)))
        services.append(ServiceCount(t.label, port, info.service, info.status.label,
                                     int(packets[j]), int(nbytes[j]), int(flows[j]),
                                     list(labels)))
    services.sort(key=lambda s: (-s.packets, s.transport, s.port))
    return services


def flow_reports(analyzer: Analyzer, rows: I64, dec: FlowDecisions) -> list[FlowReport]:
    """A ``FlowReport`` for each live row in ``rows``, as ``dec`` decided them."""
    return _flow_reports(analyzer, rows, dec)


def _flow_reports(analyzer: Analyzer, live: I64, dec: FlowDecisions) -> list[FlowReport]:
    """One ``FlowReport`` per live flow, built column by column.

    Every field is a whole column (numpy, then one ``tolist``); the verdict's
    words (flag labels and reason sentences) are worded once per distinct
    (transport, service port, flags, both ports dynamic) and shared out by
    index, and the records are made by one ``map`` over the columns. Flags
    and reasons are fresh lists per flow: ``--detect`` appends to them.
    """
    ft, table = analyzer.flows, analyzer.table
    keys = ft.keys[live]
    svc_a = dec.service_is_a
    addresses = _Addresses()
    client = addresses.column(np.where(svc_a, keys["bh"], keys["ah"]),
                              np.where(svc_a, keys["bl"], keys["al"]))
    server = addresses.column(np.where(svc_a, keys["ah"], keys["bh"]),
                              np.where(svc_a, keys["al"], keys["bl"]))
    p_ab, p_ba = ft.packets_ab[live], ft.packets_ba[live]
    b_ab, b_ba = ft.bytes_ab[live], ft.bytes_ba[live]
    first_ns, last_ns = ft.first_ns[live], ft.last_ns[live]
    flags, why = _verdict_words(table, dec)
    names = table.names
    columns: dict[str, Iterable[Any]] = {
        "transport": _labels(_TRANSPORT_LABELS, dec.transport),
        "client": client,
        "client_port": dec.client_port.tolist(),
        "server": server,
        "service_port": dec.service_port.tolist(),
        "service": [names[i] for i in dec.service_id.tolist()],
        "status": _labels(_STATUS_LABELS, dec.status),
        "method": _labels(_RULE_LABELS, dec.rule),
        "flags": flags,
        "reasons": why,
        "packets": (p_ab + p_ba).tolist(),
        "bytes": (b_ab + b_ba).tolist(),
        "packets_to_service": np.where(svc_a, p_ba, p_ab).tolist(),
        "packets_from_service": np.where(svc_a, p_ab, p_ba).tolist(),
        "bytes_to_service": np.where(svc_a, b_ba, b_ab).tolist(),
        "bytes_from_service": np.where(svc_a, b_ab, b_ba).tolist(),
        "first_seen": _times(first_ns),
        "last_seen": _times(last_ns),
        "capture": repeat(analyzer.capture),
        "start_time": _seconds(first_ns).tolist(),
        "duration": ((last_ns - first_ns) / 1e9).tolist(),
        "conn_state": _labels(CONN_STATE_LABELS, conn_states(ft, live, svc_a)),
        "community_id": flow_community_ids(keys),
        "encapsulation": encapsulation_labels(ft.encap[live]),
    }
    if tuple(columns) != _ALL_FIELDS[:len(columns)]:  # positional below: names must line up
        raise AssertionError(f"FlowReport fields {_ALL_FIELDS} != columns {tuple(columns)}")
    return list(map(FlowReport, *columns.values()))


def _labels(labels: Sequence[str], codes: npt.NDArray[Any]) -> list[str]:
    """``labels[code]`` for each code of a column."""
    return [labels[c] for c in codes.tolist()]


#: A verdict-words key, low bits first: both ports dynamic (1 bit), flags (8), port (16),
#: transport.
_FLAG_SHIFT = 1
_PORT_SHIFT = 9  # flags are a uint8
_TRANSPORT_SHIFT = _PORT_SHIFT + 16


def _verdict_words(table: PortTable, dec: FlowDecisions) -> tuple[list[list[str]],
                                                                   list[list[str]]]:
    """Each flow's flag labels and reasons, worded once per distinct combination.

    A flow's words depend only on its transport, service port and flag bits
    (the unauthorized-use remark is the port's), and on whether its client
    port is dynamic too when ``DYNAMIC`` is set; any flow of a combination
    words it for all of them.
    """
    bits = dec.flags.astype(np.int64)
    both_dynamic = ((bits & FlagReason.DYNAMIC) != 0) & (dec.client_port >= DYNAMIC_PORTS.start)
    combo = ((dec.transport.astype(np.int64) << _TRANSPORT_SHIFT)
             | (dec.service_port.astype(np.int64) << _PORT_SHIFT)
             | (bits << _FLAG_SHIFT) | both_dynamic.astype(np.int64))
    distinct, first, inverse = np.unique(combo, return_index=True, return_inverse=True)
    assigned_only = table.assigned_only
    labels: list[tuple[str, ...]] = []
    sentences: list[tuple[str, ...]] = []
    for code, j in zip(distinct.tolist(), first.tolist(), strict=True):
        transport = Transport(code >> _TRANSPORT_SHIFT)
        port = (code >> _PORT_SHIFT) & 0xFFFF
        flag_bits = (code >> _FLAG_SHIFT) & 0xFF
        remark = table.lookup(transport, port).remark \
            if flag_bits & FlagReason.UNAUTHORIZED_USE else ""
        labels.append(tuple(flag_labels(flag_bits)))
        sentences.append(tuple(reasons(transport.label, port, flag_bits, remark=remark,
                                       assigned_only=assigned_only,
                                       client_port=int(dec.client_port[j]))))
    order = inverse.reshape(-1).tolist()
    return (list(map(list, map(labels.__getitem__, order))),
            list(map(list, map(sentences.__getitem__, order))))


class _Addresses:
    """Address text by (high, low) 64-bit halves, each distinct address formatted once."""

    def __init__(self) -> None:
        self._seen: dict[tuple[int, int], str] = {}

    def __call__(self, hi: int, lo: int) -> str:
        text = self._seen.get((hi, lo))
        if text is None:
            text = self._seen[(hi, lo)] = _address(hi, lo)
        return text

    def column(self, hi: npt.NDArray[np.uint64], lo: npt.NDArray[np.uint64]) -> list[str]:
        """A whole column: Python formats each distinct address, C does the rest."""
        pairs = list(zip(hi.tolist(), lo.tolist(), strict=True))
        seen = self._seen
        for pair in dict.fromkeys(pairs).keys() - seen.keys():
            seen[pair] = _address(*pair)
        return list(map(seen.__getitem__, pairs))


def merge_reports(reports: Sequence[Report]) -> Report:
    """One report of several captures analysed apart (``--jobs``)."""
    services: dict[tuple[str, int], ServiceCount] = {}
    decode: dict[str, int] = {}
    for rep in reports:
        for s in rep.services:
            got = services.get((s.transport, s.port))
            if got is None:
                services[(s.transport, s.port)] = ServiceCount(
                    s.transport, s.port, s.service, s.status, s.packets, s.bytes, s.flows,
                    list(s.flags))
            else:
                got.packets += s.packets
                got.bytes += s.bytes
                got.flows += s.flows
        for reason, n in rep.decode.items():
            decode[reason] = decode.get(reason, 0) + n
    merged = sorted(services.values(), key=lambda s: (-s.packets, s.transport, s.port))
    return Report(
        captures=[c for rep in reports for c in rep.captures],
        packets=sum(r.packets for r in reports),
        bytes=sum(r.bytes for r in reports),
        services=merged,
        # stable: flows starting together keep each report's 5-tuple order
        flows=sorted((f for rep in reports for f in rep.flows), key=lambda f: f.start_time),
        decode=decode,
        registry=reports[0].registry if reports else {},
        warnings=[w for rep in reports for w in rep.warnings],
        partial=any(r.partial for r in reports),
        flow_total=sum(r.flow_count for r in reports)
        if any(r.flow_total is not None for r in reports) else None,
    )
