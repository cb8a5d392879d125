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

With ``detect=True`` (``portwatch top --detect``) nDPI reads the first packets
of each flow beside the counting, in its own thread, the daemon's way
(``analysis.detect.LiveDetection``): each flow nDPI is done with is judged
against the registry (``detect.judge``) and counted under its service as
``confirmed``, ``mismatch`` (with the protocol found) or ``unconfirmed``; a
mismatch makes the service flagged, with the sentence every output uses
(``tcp/443 https (assigned) carries ssh``). ``close`` stops nDPI.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from portwatch.analysis.detect import DEFAULT_PACKETS, LiveJudge
from portwatch.analysis.flows import FlowLimits, FlowTable
from portwatch.analysis.verdict import Detection, FlagReason, reasons
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
    # with detection on: "confirmed", "mismatch: ssh", "unconfirmed", or "" (no answer yet)
    detection: str = ""

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
    detection: str = ""  # as ``ServiceRate.detection``

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
    detecting: bool = False  # nDPI's verdicts are in ``detection`` (``detect=True``)


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
    # nDPI's verdicts on this service's flows (detection on); detected name -> flows
    confirmed: int = 0
    unconfirmed: int = 0
    mismatched: dict[str, int] = field(default_factory=dict)

    def detection(self) -> str:
        """The most telling verdict: any mismatch (what was found), else confirmed, else
        unconfirmed; "" while nDPI has answered for none of its flows."""
        if self.mismatched:
            return "mismatch: " + ",".join(sorted(self.mismatched))
        if self.confirmed:
            return "confirmed"
        return "unconfirmed" if self.unconfirmed else ""

    def flag_sentences(self) -> str:
        """Why the service is flagged: the registry's reasons, then each mismatch."""
        found = [sentence for name in sorted(self.mismatched)
                 for sentence in reasons(self.transport.label, self.port,
                                         FlagReason.PROTOCOL_MISMATCH, service=self.service,
                                         status=self.status.label, detected=name)]
        return "; ".join([self.why, *found] if self.why else found)


@dataclass(slots=True)
class _Bucket:
    start: float
    packets: int = 0
    bytes: int = 0
    by_key: dict[int, list[int]] = field(default_factory=dict)  # key -> [packets, bytes]


class LiveSummary:
    """Counts per service in one-second buckets; see the module docstring."""

    def __init__(self, table: PortTable, *, window_s: float = DEFAULT_WINDOW_S,
                 limits: FlowLimits | None = None, start: float = 0.0,
                 detect: bool = False, detect_dir: str | None = None,
                 detect_packets: int = DEFAULT_PACKETS) -> None:
        """``detect``: nDPI's verdict per flow (``UsageError`` with the install hint if
        nDPI is missing); its FIFOs go in a private directory under ``detect_dir``."""
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
        # detection (``detect``): nDPI beside the flow table, its verdicts judged in ``feed``
        self._detecting = detect
        self._detector = (LiveJudge(detect_dir, detect_packets, min(self.limits.idle_s.values()))
                          if detect else None)
        self._known = np.zeros(0, dtype=np.bool_)  # rows the detector was told about

    @property
    def detecting(self) -> bool:
        """Whether nDPI's verdicts are counted (they stay shown after ``close``)."""
        return self._detecting

    def close(self) -> None:
        """Stop nDPI (it finishes what it was given, judged here) and remove its FIFOs."""
        detector, self._detector = self._detector, None
        if detector is None:
            return
        detector.finish()
        self._judge_reported(detector)

    def feed(self, batch: PacketBatch, now: float) -> None:
        """Count ``batch`` as arrived at ``now`` (seconds, monotonic)."""
        if not len(batch):
            return
        decoded = decode_batch(batch)
        flows = self._feed(decoded, batch.timestamps_ns, now)
        if self._detector is not None:
            self._detector.add(batch, decoded, flows, self._flows)
            self._judge_reported(self._detector)
        self._forget(int(batch.timestamps_ns.max()))

    def feed_decoded(self, decoded: DecodedBatch, timestamps_ns: npt.NDArray[np.int64],
                     now: float) -> None:
        """Count a batch already decoded (by an ``Analyzer`` reading the same batches).

        Without the packets themselves there is nothing for nDPI to read: detection
        needs ``feed``.
        """
        if not len(decoded):
            return
        self._feed(decoded, timestamps_ns, now)
        self._forget(int(timestamps_ns.max()))

    def _feed(self, decoded: DecodedBatch, timestamps_ns: npt.NDArray[np.int64],
              now: float) -> npt.NDArray[np.int64]:
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
            if self._detector is not None:
                self._remember(flows[has])
        return flows

    def _remember(self, rows: npt.NDArray[np.int64]) -> None:
        """The 5-tuple of each new flow row, to find it when nDPI reports (per flow)."""
        if self._known.size < self._flows.capacity:
            grown = np.zeros(self._flows.capacity, dtype=np.bool_)
            grown[: self._known.size] = self._known
            self._known = grown
        new = np.unique(rows[~self._known[rows]])
        if new.size == 0:
            return
        self._known[new] = True
        if self._detector is not None:
            self._detector.remember(self._flows, new)

    def _judge_reported(self, detector: LiveJudge) -> None:
        """Count each flow nDPI reported since the last call, under its service."""
        for verdict, found, result in detector.judged(self._flows, self.table):
            service = self._services.get((int(verdict.transport) << 16) | verdict.service_port)
            if service is None:
                continue
            if result is Detection.MISMATCH:
                service.mismatched[found.detected] = service.mismatched.get(found.detected,
                                                                            0) + 1
            elif result is Detection.CONFIRMED:
                service.confirmed += 1
            else:
                service.unconfirmed += 1

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
        gone = [self._flows.expire(now_ns, self._idle_ns, int(self.limits.active_s * 1e9)),
                self._flows.enforce_limit(self.limits.max_flows)]
        if self._detector is not None:
            for rows in gone:
                self._known[rows[rows < self._known.size]] = False
                self._detector.forget(rows)

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
        if self._detector is not None:
            self._judge_reported(self._detector)
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
            why, detection = s.flag_sentences(), s.detection()
            services.append(ServiceRate(s.transport, s.port, s.service, s.status, p / span,
                                        b / span, s.packets, s.bytes, flows.get(key, 0),
                                        bool(why), detection))
            if why:
                flagged.append(FlaggedPortRate(s.transport, s.port, s.service, s.status, why,
                                               p / span, s.packets, s.bytes, now - s.last_seen,
                                               detection))
        services.sort(key=lambda r: (-r.bytes_per_s, -r.packets_per_s, -r.bytes, r.label))
        flagged.sort(key=lambda r: (r.last_seen_s, -r.packets, r.label))
        portless = {st.label: int(self._portless[st]) for st in DecodeStatus
                    if st is not DecodeStatus.OK and self._portless[st]}
        return LiveSnapshot(elapsed, span, packets / span, nbytes / span, self.packets,
                            self.bytes, portless, services, flagged, self.detecting)

    def _flows_per_key(self) -> dict[int, int]:
        live = np.flatnonzero(self._flows.alive[: self._flows.size]).astype(np.int64)
        if live.size == 0:
            return {}
        d = self._flows.decide(self.table, live)
        keys, counts = np.unique((d.transport.astype(np.int64) << 16) | d.service_port,
                                 return_counts=True)
        return dict(zip(keys.tolist(), counts.tolist(), strict=True))
