"""A live summary: rates per service and flagged ports over a sliding window.

``LiveSummary`` is what ``portwatch top`` draws and what ``analyze
--interval`` prints: fed batches as they arrive, it counts packets and bytes
per service (transport and service port, decided as the report decides
them) into one-second buckets, and answers with a :class:`LiveSnapshot`:
rates over the last ``window_s`` seconds, totals since the start, and the
flagged ports with why they are flagged.

It is pure: the caller says what time it is (``feed(batch, now)``,
``snapshot(now)``, seconds on any monotonic clock), so a fake clock tests it.
Arrival time, not packet time, drives the window: a capture replayed from a
file is shown as it is played. Flows are kept as the daemon keeps them
(idle and active timeouts on packet time, a maximum count), so memory stays
bounded however long it runs; the per-service counters are bounded by the
ports that exist (four transports of 65,536 ports).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from portwatch.analysis.flows import FlowLimits, FlowTable
from portwatch.analysis.verdict import reasons
from portwatch.capture.batch import PacketBatch
from portwatch.decode.native import DecodedBatch, DecodeStatus, decode_batch
from portwatch.ports import PortStatus, Transport
from portwatch.porttable.table import PortTable

__all__ = ["DEFAULT_WINDOW_S", "FlaggedPortRate", "LiveSnapshot", "LiveSummary", "ServiceRate"]

#: Rates are averaged over this many seconds unless told otherwise (iftop's middle column).
DEFAULT_WINDOW_S = 10.0
_BUCKET_S = 1.0


@dataclass(frozen=True, slots=True)
class ServiceRate:
    """One service: rates over the window, totals since the start."""

    transport: Transport
    port: int
    service: str
    status: PortStatus
    packets_per_s: float
    bytes_per_s: float
    packets: int
    bytes: int
    flows: int  # flows of this service still tracked (not idle, not evicted)
    flagged: bool

    @property
    def label(self) -> str:
        return f"{self.transport.label}/{self.port}"


@dataclass(frozen=True, slots=True)
class FlaggedPortRate:
    """A flagged service port: its rate, totals, when last seen and why it is flagged."""

    transport: Transport
    port: int
    service: str
    status: PortStatus
    why: str
    packets_per_s: float
    packets: int
    bytes: int
    last_seen_s: float  # seconds before the snapshot

    @property
    def label(self) -> str:
        return f"{self.transport.label}/{self.port}"


@dataclass(frozen=True, slots=True)
class LiveSnapshot:
    """What the screen shows at one moment."""

    elapsed_s: float
    window_s: float  # the window rates are over (shorter at the start)
    packets_per_s: float
    bytes_per_s: float
    packets: int
    bytes: int
    portless: dict[str, int]  # packets without ports since the start, by reason
    services: list[ServiceRate]  # busiest first
    flagged: list[FlaggedPortRate]  # most recent first


@dataclass(slots=True)
class _Service:
    transport: Transport
    port: int
    service: str
    status: PortStatus
    why: str
    packets: int = 0
    bytes: int = 0
    last_seen: float = -math.inf


@dataclass(slots=True)
class _Bucket:
    start: float
    packets: int = 0
    bytes: int = 0
    by_key: dict[int, list[int]] = field(default_factory=dict)  # key -> [packets, bytes]


class LiveSummary:
    """Counts per service in one-second buckets; see the module docstring."""

    def __init__(self, table: PortTable, *, window_s: float = DEFAULT_WINDOW_S,
                 limits: FlowLimits | None = None, start: float = 0.0) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be positive, not {window_s}")
        self.table = table
        self.window_s = window_s
        self.limits = limits or FlowLimits()
        self._idle_ns = self.limits.idle_ns()
        self._flows = FlowTable()
        self._start = start
        self._buckets: deque[_Bucket] = deque()
        self._services: dict[int, _Service] = {}
        self._portless = np.zeros(len(DecodeStatus), dtype=np.int64)
        self.packets = 0
        self.bytes = 0

    def feed(self, batch: PacketBatch, now: float) -> None:
        """Count ``batch`` as arrived at ``now`` (seconds, monotonic)."""
        if len(batch):
            self.feed_decoded(decode_batch(batch), batch.timestamps_ns, now)

    def feed_decoded(self, decoded: DecodedBatch, timestamps_ns: npt.NDArray[np.int64],
                     now: float) -> None:
        """Count a batch already decoded (by an ``Analyzer`` reading the same batches)."""
        if not len(decoded):
            return
        flows = self._flows.update(decoded, timestamps_ns)
        wire = decoded.wirelen.astype(np.int64)
        bucket = self._bucket(now)
        n, nbytes = len(decoded), int(wire.sum())
        bucket.packets += n
        bucket.bytes += nbytes
        self.packets += n
        self.bytes += nbytes
        has = flows >= 0
        self._portless += np.bincount(decoded.status[~has], minlength=len(DecodeStatus))[
            : len(DecodeStatus)]
        if has.any():
            self._count(flows[has], wire[has], bucket, now)
        self._forget(int(timestamps_ns.max()))

    def _count(self, flows: np.ndarray, wire: np.ndarray, bucket: _Bucket, now: float) -> None:
        rows, inverse = np.unique(flows, return_inverse=True)
        decisions = self._flows.decide(self.table, rows)
        row_keys = (decisions.transport.astype(np.int64) << 16) | decisions.service_port
        keys, key_of_row = np.unique(row_keys, return_inverse=True)
        per_packet = key_of_row[inverse]
        packets = np.bincount(per_packet, minlength=keys.size)
        nbytes = np.bincount(per_packet, weights=wire, minlength=keys.size)
        first_row = np.full(keys.size, -1, dtype=np.int64)
        first_row[key_of_row[::-1]] = np.arange(rows.size)[::-1]
        for k, key in enumerate(keys.tolist()):
            p, b = int(packets[k]), int(nbytes[k])
            service = self._services.get(key)
            if service is None:
                verdict = decisions.verdict(int(first_row[k]), self.table)
                service = self._services[key] = _Service(
                    verdict.transport, verdict.service_port, verdict.service, verdict.status,
                    "; ".join(reasons(verdict.transport.label, verdict.service_port,
                                      verdict.flags, remark=verdict.remark,
                                      assigned_only=verdict.assigned_only)))
            service.packets += p
            service.bytes += b
            service.last_seen = now
            slot = bucket.by_key.setdefault(key, [0, 0])
            slot[0] += p
            slot[1] += b

    def _forget(self, now_ns: int) -> None:
        """Flows over as the daemon ends them (idle, too long, too many)."""
        self._flows.expire(now_ns, self._idle_ns, int(self.limits.active_s * 1e9))
        self._flows.enforce_limit(self.limits.max_flows)

    def _bucket(self, now: float) -> _Bucket:
        start = self._start + math.floor((now - self._start) / _BUCKET_S) * _BUCKET_S
        if not self._buckets or self._buckets[-1].start < start:
            self._buckets.append(_Bucket(start))
        self._drop_old(now)
        return self._buckets[-1]

    def _drop_old(self, now: float) -> None:
        while self._buckets and self._buckets[0].start + _BUCKET_S <= now - self.window_s:
            self._buckets.popleft()

    def snapshot(self, now: float) -> LiveSnapshot:
        """Rates over the last ``window_s`` seconds (or since the start, if shorter)."""
        self._drop_old(now)
        elapsed = max(now - self._start, 0.0)
        span = min(self.window_s, max(elapsed, _BUCKET_S))
        lo = now - self.window_s
        window: dict[int, list[int]] = {}
        packets = nbytes = 0
        for bucket in self._buckets:
            if bucket.start + _BUCKET_S <= lo:
                continue
            packets += bucket.packets
            nbytes += bucket.bytes
            for key, (p, b) in bucket.by_key.items():
                slot = window.setdefault(key, [0, 0])
                slot[0] += p
                slot[1] += b
        flows = self._flows_per_key()
        services = []
        flagged = []
        for key, s in self._services.items():
            p, b = window.get(key, (0, 0))
            services.append(ServiceRate(s.transport, s.port, s.service, s.status, p / span,
                                        b / span, s.packets, s.bytes, flows.get(key, 0),
                                        bool(s.why)))
            if s.why:
                flagged.append(FlaggedPortRate(s.transport, s.port, s.service, s.status, s.why,
                                               p / span, s.packets, s.bytes, now - s.last_seen))
        services.sort(key=lambda r: (-r.bytes_per_s, -r.packets_per_s, -r.bytes, r.label))
        flagged.sort(key=lambda r: (r.last_seen_s, -r.packets, r.label))
        portless = {st.label: int(self._portless[st]) for st in DecodeStatus
                    if st is not DecodeStatus.OK and self._portless[st]}
        return LiveSnapshot(elapsed, span, packets / span, nbytes / span, self.packets,
                            self.bytes, portless, services, flagged)

    def _flows_per_key(self) -> dict[int, int]:
        live = np.flatnonzero(self._flows.alive[: self._flows.size]).astype(np.int64)
        if live.size == 0:
            return {}
        d = self._flows.decide(self.table, live)
        keys, counts = np.unique((d.transport.astype(np.int64) << 16) | d.service_port,
                                 return_counts=True)
        return dict(zip(keys.tolist(), counts.tolist(), strict=True))
