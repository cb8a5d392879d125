"""The analysis engine: batches in, per-service counts and flagged flows out.

``Analyzer`` is I/O-free: feed it ``PacketBatch``es (from a file reader, a live
backend or a test) and ask for a ``Report``. It decodes each batch with numpy,
groups packets into flows, attributes non-first IP fragments to the flow of
their datagram when the first fragment was seen, and counts what it could not
decode by reason, so nothing is dropped silently.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from portwatch.analysis.flows import (
    Decision,
    FlowDecisions,
    FlowFlag,
    FlowTable,
    Method,
    flag_labels,
)
from portwatch.capture.batch import PacketBatch
from portwatch.decode.native import DecodedBatch, DecodeStatus, decode_batch
from portwatch.ports import PortStatus, Transport
from portwatch.porttable.table import PortTable

__all__ = ["Analyzer", "FlowReport", "Report", "ServiceCount", "flag_reasons", "merge_reports"]

I64 = npt.NDArray[np.int64]

#: Upper bound on first fragments remembered for attributing later fragments.
MAX_PENDING_FRAGMENTS = 65536


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

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


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

    @property
    def flagged(self) -> list[FlowReport]:
        return [f for f in self.flows if f.flagged]

    def as_dict(self, *, include_flows: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "captures": self.captures,
            "packets": self.packets,
            "bytes": self.bytes,
            "flow_count": len(self.flows),
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


_STATUS_LABELS = [s.label for s in PortStatus]
_METHOD_LABELS = [m.label for m in Method]


def flag_reasons(transport: str, port: int, bits: int, remark: str,
                 assigned_only: bool) -> list[str]:
    """One sentence per flag, for reports, comments and the annotation API alike."""
    out = []
    where = f"{transport}/{port}"
    if bits & FlowFlag.RESERVED:
        out.append(f"{where} is reserved in the IANA registry")
    if bits & FlowFlag.UNASSIGNED:
        out.append(f"{where} is unassigned in the IANA registry")
    if bits & FlowFlag.UNLISTED:
        scope = " (they list assigned ports only)" if assigned_only else ""
        out.append(f"{where} is not listed by the loaded registry sources{scope}")
    if bits & FlowFlag.UNAUTHORIZED_USE:
        out.append(f"unauthorized use reported on {where}: {remark}")
    if bits & FlowFlag.DYNAMIC:
        out.append(f"both ports of the flow are in the dynamic range 49152-65535 ({where})")
    return out


class Analyzer:
    """Accumulates flows over any number of batches (one capture or many)."""

    def __init__(self, table: PortTable, *, capture: str = "") -> None:
        self.table = table
        self.flows = FlowTable()
        self.capture = capture
        self.packets = 0
        self.bytes = 0
        self.decode_counts = np.zeros(len(DecodeStatus), dtype=np.int64)
        self.fragments_attributed = 0
        self._first_fragments: dict[tuple[int, int, int, int, int, int], tuple[int, bool]] = {}
        self.warnings: list[str] = []
        self.partial = False

    # -- feeding --------------------------------------------------------------
    def feed(self, batch: PacketBatch) -> tuple[DecodedBatch, I64]:
        """Count one batch; return its decoding and each packet's flow (-1: none)."""
        decoded = decode_batch(batch)
        return decoded, self.feed_decoded(decoded, batch.timestamps_ns)

    def feed_decoded(self, decoded: DecodedBatch, timestamps_ns: I64) -> I64:
        """Count packets another dissector decoded (the scapy and pyshark engines)."""
        flow_of_packet = self.flows.update(decoded, timestamps_ns)
        self.packets += len(decoded)
        self.bytes += int(decoded.wirelen.sum(dtype=np.uint64))
        self.decode_counts += np.bincount(decoded.status, minlength=len(DecodeStatus))[
            : len(DecodeStatus)
        ]
        self._remember_first_fragments(decoded, flow_of_packet)
        self._attribute_fragments(decoded, flow_of_packet, timestamps_ns)
        return flow_of_packet

    def feed_all(self, batches: Iterable[PacketBatch]) -> None:
        for batch in batches:
            self.feed(batch)

    def _remember_first_fragments(self, d: DecodedBatch, flows: I64) -> None:
        rows = np.flatnonzero(d.is_first_fragment & (flows >= 0))
        if rows.size == 0:
            return
        keys = self.flows.keys
        for i in rows.tolist():
            fid = int(flows[i])
            from_a = bool(keys["ah"][fid] == d.src_hi[i] and keys["al"][fid] == d.src_lo[i]
                          and keys["ap"][fid] == d.src_port[i])
            key = (int(d.src_hi[i]), int(d.src_lo[i]), int(d.dst_hi[i]), int(d.dst_lo[i]),
                   int(d.ip_proto[i]), int(d.frag_id[i]))
            if len(self._first_fragments) >= MAX_PENDING_FRAGMENTS:
                self._first_fragments.pop(next(iter(self._first_fragments)))
            self._first_fragments[key] = (fid, from_a)

    def _attribute_fragments(self, d: DecodedBatch, flows: I64, ts: I64) -> None:
        rows = np.flatnonzero(d.status == DecodeStatus.FRAGMENT)
        if rows.size == 0 or not self._first_fragments:
            return
        hits: list[int] = []
        fids: list[int] = []
        dirs: list[bool] = []
        for i in rows.tolist():
            found = self._first_fragments.get(
                (int(d.src_hi[i]), int(d.src_lo[i]), int(d.dst_hi[i]), int(d.dst_lo[i]),
                 int(d.ip_proto[i]), int(d.frag_id[i])))
            if found is not None and self.flows.alive[found[0]]:
                hits.append(i)
                fids.append(found[0])
                dirs.append(found[1])
        if not hits:
            return
        idx = np.asarray(hits, dtype=np.int64)
        fid_arr = np.asarray(fids, dtype=np.int64)
        self.flows.add_fragments(fid_arr, np.asarray(dirs, dtype=np.bool_),
                                 d.wirelen[idx], ts[idx])
        flows[idx] = fid_arr
        self.decode_counts[DecodeStatus.FRAGMENT] -= len(hits)
        self.fragments_attributed += len(hits)

    def note_damage(self, message: str) -> None:
        """A capture was damaged after good data: keep counts, mark the report partial."""
        self.warnings.append(message)
        self.partial = True

    # -- answers ----------------------------------------------------------------
    def decisions(self) -> FlowDecisions:
        return self.flows.decide(self.table)

    def decision(self, decisions: FlowDecisions, flow: int) -> Decision:
        return Decision(
            int(decisions.service_port[flow]),
            Method(int(decisions.method[flow])),
            PortStatus(int(decisions.status[flow])),
            self.table.names[int(decisions.service_id[flow])],
            int(decisions.flags[flow]),
        )

    def decode_summary(self) -> dict[str, int]:
        out = {s.label: int(self.decode_counts[s]) for s in DecodeStatus
               if s is not DecodeStatus.OK and self.decode_counts[s]}
        if self.fragments_attributed:
            out["fragment-attributed"] = self.fragments_attributed
        return out

    def report(self) -> Report:
        ft = self.flows
        live = np.flatnonzero(ft.alive[: ft.size])
        dec = ft.decide(self.table, live)
        packets = ft.packets()[live]
        nbytes = ft.bytes()[live]
        transport = ft.keys["t"][live]
        # per (transport, service port): one pass with numpy
        service_key = transport.astype(np.int64) * 65536 + dec.service_port
        uniq, inverse = np.unique(service_key, return_inverse=True)
        svc_packets = np.bincount(inverse, weights=packets, minlength=uniq.size)
        svc_bytes = np.bincount(inverse, weights=nbytes, minlength=uniq.size)
        svc_flows = np.bincount(inverse, minlength=uniq.size)
        services = []
        for j, key in enumerate(uniq.tolist()):
            t, port = Transport(key // 65536), key % 65536
            info = self.table.lookup(t, port)
            flags = [info.status.label] if info.status.flagged or (
                info.status is PortStatus.DYNAMIC) else []
            if info.remark:
                flags.append("unauthorized-use")
            services.append(ServiceCount(t.label, port, info.service, info.status.label,
                                         int(svc_packets[j]), int(svc_bytes[j]),
                                         int(svc_flows[j]), flags))
        services.sort(key=lambda s: (-s.packets, s.transport, s.port))
        flows = self._flow_reports(live, dec)
        return Report(
            captures=[self.capture] if self.capture else [],
            packets=self.packets,
            bytes=self.bytes,
            services=services,
            flows=flows,
            decode=self.decode_summary(),
            registry=self.registry_summary(),
            warnings=list(self.warnings),
            partial=self.partial,
        )

    def registry_summary(self) -> dict[str, Any]:
        t = self.table
        return {
            "snapshot": t.snapshot,
            "last_updated": t.last_updated.isoformat() if t.last_updated else None,
            "assigned_only": t.assigned_only,
            "sources": [s.path for s in t.sources],
        }

    def _flow_reports(self, live: I64, dec: FlowDecisions) -> list[FlowReport]:
        ft = self.flows
        keys = ft.keys[live]
        out: list[FlowReport] = []
        assigned_only = self.table.assigned_only
        cols = {name: getattr(ft, name)[live].tolist() for name in
                ("packets_ab", "packets_ba", "bytes_ab", "bytes_ba")}
        first_seen = _times(ft.first_ns[live])
        last_seen = _times(ft.last_ns[live])
        addresses: dict[tuple[int, int], str] = {}

        def address(hi: int, lo: int) -> str:
            text = addresses.get((hi, lo))
            if text is None:
                text = addresses[(hi, lo)] = _address(hi, lo)
            return text

        k_t, k_ah, k_al = keys["t"].tolist(), keys["ah"].tolist(), keys["al"].tolist()
        k_bh, k_bl = keys["bh"].tolist(), keys["bl"].tolist()
        svc_is_a, svc_port = dec.service_is_a.tolist(), dec.service_port.tolist()
        cli_port, statuses = dec.client_port.tolist(), dec.status.tolist()
        flag_bits, methods, sids = dec.flags.tolist(), dec.method.tolist(), dec.service_id.tolist()
        labels = [t.label for t in Transport]
        for j in range(live.size):
            a = address(k_ah[j], k_al[j])
            b = address(k_bh[j], k_bl[j])
            svc_a = svc_is_a[j]
            transport = labels[k_t[j]]
            port = svc_port[j]
            bits = flag_bits[j]
            remark = ""
            if bits & FlowFlag.UNAUTHORIZED_USE:
                remark = self.table.lookup(Transport(k_t[j]), port).remark
            p_ab, p_ba = cols["packets_ab"][j], cols["packets_ba"][j]
            b_ab, b_ba = cols["bytes_ab"][j], cols["bytes_ba"][j]
            out.append(FlowReport(
                transport=transport,
                client=b if svc_a else a,
                client_port=cli_port[j],
                server=a if svc_a else b,
                service_port=port,
                service=self.table.names[sids[j]],
                status=_STATUS_LABELS[statuses[j]],
                method=_METHOD_LABELS[methods[j]],
                flags=flag_labels(bits),
                reasons=flag_reasons(transport, port, bits, remark, assigned_only),
                packets=p_ab + p_ba,
                bytes=b_ab + b_ba,
                packets_to_service=p_ba if svc_a else p_ab,
                packets_from_service=p_ab if svc_a else p_ba,
                bytes_to_service=b_ba if svc_a else b_ab,
                bytes_from_service=b_ab if svc_a else b_ba,
                first_seen=first_seen[j],
                last_seen=last_seen[j],
                capture=self.capture,
            ))
        return out


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
        flows=[f for rep in reports for f in rep.flows],
        decode=decode,
        registry=reports[0].registry if reports else {},
        warnings=[w for rep in reports for w in rep.warnings],
        partial=any(r.partial for r in reports),
    )
