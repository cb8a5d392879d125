"""Traffic counters for the daemon: what the exporter publishes, kept in numpy.

``TrafficCounters`` is pure: feed it ``PacketBatch``es and it keeps the counters
the exporter publishes. Per-packet work is numpy (``bincount`` over the
batch); Python loops run over the distinct label sets of a batch only.

Counting rules:

* a packet is counted when it arrives, under the *current* decision of its
  flow (``FlowTable.decide``): labels ``transport``, ``service`` (the
  registry's canonical name, or empty) and ``status``;
* a flow is counted in ``flows_total`` once, when first seen, under the
  decision of that moment (a SYN-ACK seen later may change the decision of
  later packets, not the flow count); a flow forgotten (idle, active timeout,
  or evicted) and seen again is counted again;
* flagged traffic is also counted by ``transport``, ``port``, ``status`` and
  ``reason`` (one series per flag reason, so a packet to a port that is both
  unassigned and has reported unauthorized use counts under both reasons).
  ``port`` is the flow's service port, never the client's, and at most
  ``max_flagged_ports`` distinct values are used; later ones become
  ``"other"``.

Packets that form no flow are counted by decoder status, in two families:
``PORTLESS_REASONS`` (decoded, but without transport ports of their own:
ICMP, non-IP such as ARP, IP fragments not attributed to a flow, other IP
protocols) and ``ERROR_REASONS`` (what could not be decoded: truncated,
malformed, an unsupported link type).
* with detection on (``enable_detection``, ``[detect] enabled``), a flow whose
  payload nDPI names as another protocol than the one IANA assigns to its
  service port counts once in ``mismatches`` by ``transport``, ``port`` (under
  the same cap), ``assigned`` (the registry's service, or the port's status
  when it has none) and ``detected`` (nDPI's name). nDPI reads the first
  packets of each flow in its own thread (``analysis.detect.LiveDetection``)
  and reports a flow once it is done with it; the count follows then.

``daemon.collector`` reads a snapshot of these counters at scrape time.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.detect import DEFAULT_PACKETS, LiveJudge, require_ndpi
from portwatch.analysis.flows import FlowLimits
from portwatch.analysis.report import PORTLESS_STATUSES, UNDECODABLE_STATUSES
from portwatch.analysis.verdict import STATUS_REASONS, Detection, FlagReason
from portwatch.capture.batch import PacketBatch
from portwatch.daemon.ebpf import KernelCounts
from portwatch.ports import PortFlag, PortStatus, Transport
from portwatch.porttable.table import PortTable
from portwatch.registry.merge import Registry
from portwatch.registry.model import RecordKind
from portwatch.registry.packaged import source_label

__all__ = [
    "ERROR_REASONS",
    "OTHER_PORT",
    "PORTLESS_REASONS",
    "RegistryFacts",
    "Snapshot",
    "TrafficCounters",
]

I64 = npt.NDArray[np.int64]

#: The ``port`` label value of flagged traffic beyond the distinct-port cap.
OTHER_PORT = "other"

TRANSPORT_LABELS = tuple(t.label for t in Transport)
STATUS_LABELS = tuple(s.label for s in PortStatus)
FLAGS = tuple(FlagReason)
#: Decoded packets without transport ports: ``portwatch_portless_packets_total{reason}``.
PORTLESS_REASONS = PORTLESS_STATUSES
#: Packets that could not be decoded: ``portwatch_decode_errors_total{reason}``.
ERROR_REASONS = UNDECODABLE_STATUSES
_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class RegistryFacts:
    """What the registry metrics say about the loaded table.

    ``by_transport`` counts records by (kind, transport label); a record the
    source gave no transport (a name-only record) has transport ``""``.
    """

    records: Mapping[str, int]
    updated_seconds: float | None
    sources: tuple[tuple[str, str, str], ...]  # (path, format, last updated or "")
    by_transport: Mapping[tuple[str, str], int] = field(default_factory=dict)

    @classmethod
    def of(cls, table: PortTable, registry: Registry | None) -> RegistryFacts:
        counts: Counter[str] = Counter({k.value: 0 for k in RecordKind})
        by_transport: Counter[tuple[str, str]] = Counter(
            {(k.value, t): 0 for k in RecordKind for t in TRANSPORT_LABELS})
        if registry is not None:
            for rec in registry.records:
                counts[rec.kind.value] += 1
                by_transport[(rec.kind.value,
                              "" if rec.transport is None else rec.transport.label)] += 1
        updated = table.last_updated
        stamp = (datetime(updated.year, updated.month, updated.day, tzinfo=UTC).timestamp()
                 if updated is not None else None)
        sources = tuple(
            (source_label(s.path), s.format.value,
             s.last_updated.isoformat() if s.last_updated else "")
            for s in table.sources
        )
        return cls(dict(counts), stamp, sources, dict(by_transport))


@dataclass(slots=True)
class Snapshot:
    """A copy of every counter, taken under the core's lock for one scrape."""

    traffic: dict[tuple[str, str, str], tuple[int, int, int]]
    flagged: dict[tuple[str, str, str, str], tuple[int, int]]
    received: dict[str, int]
    dropped: dict[str, int]
    decode_errors: dict[str, int]
    restarts: dict[str, int]
    active_flows: int
    evictions: int
    registry_facts: RegistryFacts
    portless: dict[str, int] = field(default_factory=dict)
    # (transport, port, assigned, detected) -> flows; only with detection on
    mismatches: dict[tuple[str, str, str, str], int] = field(default_factory=dict)


class TrafficCounters:
    """Flows and counters over every batch fed; safe to feed and snapshot from two threads."""

    def __init__(self, table: PortTable, limits: FlowLimits,
                 registry_facts: RegistryFacts) -> None:
        self.analyzer = Analyzer(table)
        self.limits = limits
        self.registry_facts = registry_facts
        self.lock = threading.Lock()
        # label tuple -> [packets, bytes, flows]
        self.traffic: dict[tuple[str, str, str], list[int]] = {}
        # (transport, port, status, reason) -> [packets, flows]
        self.flagged: dict[tuple[str, str, str, str], list[int]] = {}
        self.flagged_ports: set[int] = set()
        self.received: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.restarts: dict[str, int] = {}
        self.evictions = 0  # flows pushed out because the table was full
        self.latest_ns = 0  # newest packet timestamp seen
        self._counted = np.zeros(0, dtype=np.bool_)  # flow row already in flows_total
        self.kernel_flows = 0  # flows the eBPF backend's kernel map holds (a level)
        # protocol detection (enable_detection): nDPI's answers, and flow rows by 5-tuple
        self.mismatches: dict[tuple[str, str, str, str], int] = {}
        self.detector: LiveJudge | None = None

    # -- configuration ----------------------------------------------------------
    @property
    def table(self) -> PortTable:
        return self.analyzer.table

    def reload(self, table: PortTable, limits: FlowLimits,
               registry_facts: RegistryFacts) -> None:
        """New registry and limits; counters and flows carry on."""
        with self.lock:
            self.analyzer.table = table
            self.limits = limits
            self.registry_facts = registry_facts
            self._enforce_limit()

    def enable_detection(self, directory: str | None = None,
                         limit: int = DEFAULT_PACKETS) -> None:
        """Ask nDPI about the first ``limit`` packets of every flow from now on.

        Needs a backend that hands over packets with their payload (dumpcap,
        pyshark, replay) and a snapshot length that keeps it. ``UsageError``
        with the install hint when nDPI (nfstream) is missing.
        """
        require_ndpi()
        with self.lock:
            if self.detector is not None:
                return
            self.detector = LiveJudge(directory, limit, min(self.limits.idle_s.values()))

    def stop_detection(self) -> None:
        """Let nDPI finish what it was given, count it, and remove its FIFOs."""
        with self.lock:
            detector, self.detector = self.detector, None
        if detector is None:
            return
        detector.finish()
        with self.lock:
            self._count_detections(detector)

    # -- feeding ----------------------------------------------------------------
    def feed(self, batch: PacketBatch, interface_names: Sequence[str] = ()) -> None:
        """Count one batch, then hold the flow table to its limit."""
        if len(batch) == 0:
            return
        with self.lock:
            self._count_received(batch, interface_names)
            decoded, flow_of_packet = self.analyzer.feed(batch)
            self.latest_ns = max(self.latest_ns, int(batch.timestamps_ns.max()))
            in_flow = flow_of_packet >= 0
            if in_flow.any():
                self._count_flows(flow_of_packet[in_flow], decoded.wirelen[in_flow])
            # a tunnelled packet counts in its outer flows too (udp/4789 ...), as analyze does
            packets, outer = self.analyzer.flows.last_tunnel_flows
            keep = outer >= 0
            if keep.any():
                self._count_flows(outer[keep], decoded.wirelen[packets[keep]])
            if self.detector is not None:
                self.detector.add(batch, decoded, flow_of_packet, self.analyzer.flows)
                self._count_detections(self.detector)
            self._enforce_limit()

    def _count_received(self, batch: PacketBatch, names: Sequence[str]) -> None:
        per_iface = np.bincount(batch.interfaces.astype(np.intp))
        for i in np.flatnonzero(per_iface).tolist():
            name = names[i] if i < len(names) else str(i)
            self.received[name] = self.received.get(name, 0) + int(per_iface[i])

    def _count_flows(self, rows: I64, wirelen: npt.NDArray[np.uint32]) -> None:
        ft = self.analyzer.flows
        table = self.analyzer.table
        flows, inverse = np.unique(rows, return_inverse=True)
        inverse = inverse.reshape(-1)
        if self._counted.shape[0] < ft.capacity:
            grown = np.zeros(ft.capacity, dtype=np.bool_)
            grown[: self._counted.shape[0]] = self._counted
            self._counted = grown
        new = ~self._counted[flows]
        self._counted[flows] = True
        if self.detector is not None and new.any():
            self.detector.remember(ft, flows[new])
        dec = ft.decide(table, flows)
        transport = ft.keys["t"][flows].astype(np.int64)
        per_flow_packets = np.bincount(inverse, minlength=flows.size)
        per_flow_bytes = np.bincount(inverse, weights=wirelen, minlength=flows.size)
        # traffic by (transport, status, service id)
        key = (transport * len(PortStatus) + dec.status) * len(table.names) + dec.service_id
        self._add_traffic(key, per_flow_packets, per_flow_bytes, new, table.names)
        flagged = np.flatnonzero(dec.flags)
        if flagged.size:
            fkey = ((transport[flagged] * len(PortStatus) + dec.status[flagged]) * 65536
                    + dec.service_port[flagged]) * 256 + dec.flags[flagged]
            self._add_flagged(fkey, per_flow_packets[flagged], new[flagged])

    def _add_traffic(self, key: I64, packets: npt.NDArray[Any], nbytes: npt.NDArray[Any],
                     new: npt.NDArray[Any], names: list[str]) -> None:
        uniq, inv = np.unique(key, return_inverse=True)
        inv = inv.reshape(-1)
        pk = np.bincount(inv, weights=packets, minlength=uniq.size)
        by = np.bincount(inv, weights=nbytes, minlength=uniq.size)
        fl = np.bincount(inv, weights=new, minlength=uniq.size)
        width = len(names)
        for j, k in enumerate(uniq.tolist()):
            ts, sid = divmod(k, width)
            t, st = divmod(ts, len(PortStatus))
            labels = (TRANSPORT_LABELS[t], names[sid], STATUS_LABELS[st])
            acc = self.traffic.setdefault(labels, [0, 0, 0])
            acc[0] += int(pk[j])
            acc[1] += int(by[j])
            acc[2] += int(fl[j])

    def _add_flagged(self, key: I64, packets: npt.NDArray[Any], new: npt.NDArray[Any]) -> None:
        uniq, inv = np.unique(key, return_inverse=True)
        inv = inv.reshape(-1)
        pk = np.bincount(inv, weights=packets, minlength=uniq.size)
        fl = np.bincount(inv, weights=new, minlength=uniq.size)
        for j, k in enumerate(uniq.tolist()):
            rest, bits = divmod(k, 256)
            ts, port = divmod(rest, 65536)
            t, st = divmod(ts, len(PortStatus))
            port_label = self._port_label(port)
            for flag in FLAGS:
                if bits & flag:
                    labels = (TRANSPORT_LABELS[t], port_label, STATUS_LABELS[st], flag.label)
                    acc = self.flagged.setdefault(labels, [0, 0])
                    acc[0] += int(pk[j])
                    acc[1] += int(fl[j])

    def _count_detections(self, detector: LiveJudge) -> None:
        """Judge what nDPI reported since the last call (its thread appends, this pops)."""
        for verdict, found, result in detector.judged(self.analyzer.flows, self.analyzer.table):
            if result is not Detection.MISMATCH:
                continue
            labels = (verdict.transport.label, self._port_label(verdict.service_port),
                      verdict.service or verdict.status.label, found.detected)
            self.mismatches[labels] = self.mismatches.get(labels, 0) + 1

    def _port_label(self, port: int) -> str:
        """The port itself while fewer than the cap are in use, else ``"other"``."""
        if port in self.flagged_ports:
            return str(port)
        if len(self.flagged_ports) < self.limits.max_flagged_ports:
            self.flagged_ports.add(port)
            return str(port)
        return OTHER_PORT

    # -- kernel counts (the eBPF backend) -------------------------------------------
    def add_kernel_counts(self, counts: KernelCounts) -> None:
        """Add what the kernel counted by (transport, service port) since its last read.

        The kernel decided each packet's service port; here the port becomes the
        labels of the per-batch path: the registry's name and status, and the
        flag reasons of that status, under the table loaded now (the kernel's
        registry array is refreshed from the same table). Flagged ports go
        through the same cap.
        """
        with self.lock:
            table = self.analyzer.table
            self.analyzer.decode_counts[: counts.portless.shape[0]] += counts.portless
            for name, n in counts.received.items():
                self.received[name] = self.received.get(name, 0) + n
            self.evictions += counts.evictions
            self.kernel_flows = counts.active_flows
            self.analyzer.fragments_attributed += counts.fragments_attributed
            if counts.slots.size == 0:
                return
            transport = (counts.slots >> 16).astype(np.uint8)
            port = (counts.slots & 0xFFFF).astype(np.uint16)
            status, service_id, port_flags = table.lookup_many(transport, port)
            key = ((transport.astype(np.int64) * len(PortStatus) + status) * len(table.names)
                   + service_id)
            self._add_traffic(key, counts.packets, counts.bytes, counts.flows, table.names)
            flags = STATUS_REASONS[status] | np.where(
                (port_flags & PortFlag.UNAUTHORIZED_USE) != 0, FlagReason.UNAUTHORIZED_USE,
                0).astype(np.uint8)
            flagged = np.flatnonzero(flags)
            if flagged.size:
                fkey = ((transport[flagged].astype(np.int64) * len(PortStatus)
                         + status[flagged]) * 65536 + port[flagged]) * 256 + flags[flagged]
                self._add_flagged(fkey, counts.packets[flagged], counts.flows[flagged])

    # -- bounds -----------------------------------------------------------------
    def _forget(self, rows: I64) -> None:
        if rows.size:
            self._counted[rows[rows < self._counted.shape[0]]] = False
        if self.detector is not None:
            self.detector.forget(rows)

    def _enforce_limit(self) -> None:
        rows = self.analyzer.flows.enforce_limit(self.limits.max_flows)
        self.evictions += int(rows.size)
        self._forget(rows)

    def expire(self, now_ns: int) -> int:
        """Forget flows idle or active too long at ``now_ns``; return how many."""
        with self.lock:
            rows = self.analyzer.flows.expire(
                now_ns, self.limits.idle_ns(), int(self.limits.active_s * _NS))
            self._forget(rows)
            return int(rows.size)

    # -- capture health ---------------------------------------------------------
    def add_dropped(self, drops: Mapping[str, int]) -> None:
        """Add packets a backend lost (increments, per interface)."""
        with self.lock:
            for name, n in drops.items():
                if n > 0:
                    self.dropped[name] = self.dropped.get(name, 0) + n

    def count_restart(self, backend: str) -> None:
        with self.lock:
            self.restarts[backend] = self.restarts.get(backend, 0) + 1

    def declare(self, backend: str, interfaces: Iterable[str]) -> None:
        """Make the capture series exist (at 0) before the first packet or failure."""
        with self.lock:
            self.restarts.setdefault(backend, 0)
            for name in interfaces:
                self.received.setdefault(name, 0)
                self.dropped.setdefault(name, 0)

    # -- reading ----------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        with self.lock:
            if self.detector is not None:
                self._count_detections(self.detector)
            counts = self.analyzer.decode_counts
            return Snapshot(
                traffic={k: (v[0], v[1], v[2]) for k, v in self.traffic.items()},
                flagged={k: (v[0], v[1]) for k, v in self.flagged.items()},
                received=dict(self.received),
                dropped=dict(self.dropped),
                decode_errors={s.label: int(counts[s]) for s in ERROR_REASONS},
                portless={s.label: int(counts[s]) for s in PORTLESS_REASONS},
                restarts=dict(self.restarts),
                active_flows=len(self.analyzer.flows) + self.kernel_flows,
                evictions=self.evictions,
                registry_facts=self.registry_facts,
                mismatches=dict(self.mismatches),
            )
