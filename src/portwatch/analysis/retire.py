"""Flows finished before the end of a capture: exact totals, the first flagged ones in full.

A scan capture (a million SYNs to random ports) has more flows than a table
should hold. An ``Analyzer`` given ``FlowLimits`` keeps at most
``max_flows`` flows live: when a batch leaves more, it retires first the
flows idle past their transport's timeout or active too long (by the
capture's own timestamps, as the daemon does by the clock), then, if still
too many, the least recently seen ones ("finished early"). A later packet of
a retired flow's 5-tuple starts a new flow, as in Zeek after a timeout, so a
SYN-ACK after retirement cannot change the retired flow's service side:
decisions are made when a flow retires.

A capture that never has more than ``max_flows`` flows at once retires
nothing and is reported exactly as by an unbounded analyzer.

What a retired flow leaves behind (``RetiredFlows``):

- its packets, bytes and one flow in dense per-service arrays indexed by
  ``transport * 65536 + service port`` (6 MiB, allocated at the first
  retirement), so the per-service totals stay exact;
- if flagged, a ``FlowReport`` while fewer than ``max_flagged`` are held
  (exact flagged-flow counts per service are in the totals: a flow's flags
  are those of its service port);
- if a ``RecordSink`` was given, its ``FlowReport`` handed to the sink at
  once, in chunks, so ``-f jsonl``/``-f csv`` stream records instead of
  holding them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from portwatch.analysis.report import (
    FlowReport,
    Report,
    flow_reports,
    registry_summary,
    service_counts,
)
from portwatch.analysis.verdict import FlowDecisions
from portwatch.ports import Transport

if TYPE_CHECKING:  # the analyzer owns a RetiredFlows; only its type is needed here
    from portwatch.analysis.analyzer import Analyzer

__all__ = ["MAX_FLAGGED", "RECORD_CHUNK", "RecordSink", "RetiredFlows", "bounded_report",
           "take"]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

#: Flagged flows a bounded report lists in full (all are counted).
MAX_FLAGGED = 10_000
#: Flows turned into ``FlowReport``s at a time for a ``RecordSink``.
RECORD_CHUNK = 8192
#: Receives finished flows' records, in the order the flows finished.
RecordSink = Callable[[list[FlowReport]], None]

_SERVICE_KEYS = len(Transport) * 65536


def take(dec: FlowDecisions, idx: npt.NDArray[np.int64]) -> FlowDecisions:
    """The decisions of rows ``idx`` of ``dec`` (positions in ``dec``, not flow rows)."""
    return FlowDecisions(*(getattr(dec, f.name)[idx] for f in fields(dec)))


def _zeros() -> U64:
    return np.zeros(0, dtype=np.uint64)


@dataclass(slots=True)
class RetiredFlows:
    """What flows retired from an analyzer's table left behind (see the module docstring)."""

    max_flagged: int = MAX_FLAGGED
    max_flows: int = 0  # the limit that retired flows early, for the warning
    flows: int = 0
    early: int = 0  # retired by the limit before their idle timeout
    flagged_total: int = 0
    flagged: list[FlowReport] = field(default_factory=list)
    packets: U64 = field(default_factory=_zeros)  # per service key, once anything retired
    bytes: U64 = field(default_factory=_zeros)
    service_flows: U64 = field(default_factory=_zeros)

    def add(self, analyzer: Analyzer, rows: I64, dec: FlowDecisions, *, early: bool) -> None:
        """Count live ``rows`` of ``analyzer.flows`` (decided as ``dec``) before eviction."""
        if rows.size == 0:
            return
        if self.packets.size == 0:
            self.packets, self.bytes, self.service_flows = (
                np.zeros(_SERVICE_KEYS, dtype=np.uint64) for _ in range(3))
        ft = analyzer.flows
        key = dec.transport.astype(np.int64) * 65536 + dec.service_port
        self.packets += _sums(key, ft.packets_ab[rows] + ft.packets_ba[rows])
        self.bytes += _sums(key, ft.bytes_ab[rows] + ft.bytes_ba[rows])
        self.service_flows += np.bincount(key, minlength=_SERVICE_KEYS).astype(np.uint64)
        self.flows += int(rows.size)
        if early:
            self.early += int(rows.size)
        flagged = np.flatnonzero(dec.flags)
        self.flagged_total += int(flagged.size)
        room = self.max_flagged - len(self.flagged)
        if room > 0 and flagged.size:
            kept = flagged[:room]
            self.flagged.extend(flow_reports(analyzer, rows[kept], take(dec, kept)))

    def warnings(self, flagged_total: int, *, streamed: bool) -> list[str]:
        """What a reader of a bounded report must know: flows split early, flagged cut."""
        out = []
        if self.early:
            out.append(f"{self.early} flows were finished before their idle timeout because "
                       f"more than {self.max_flows} were open at once; a later packet of one "
                       f"of them counts as a new flow")
        if not streamed and flagged_total > self.max_flagged:
            out.append(f"{flagged_total} flagged flows: the report lists the first "
                       f"{self.max_flagged} (their totals per service are exact; -f jsonl or "
                       f"-f csv writes every flow)")
        return out


def _sums(key: I64, values: U64) -> U64:
    """Per-service sums of ``values`` (float64 bincount: exact below 2**53 per batch)."""
    return np.bincount(key, weights=values, minlength=_SERVICE_KEYS).astype(np.uint64)


def bounded_report(analyzer: Analyzer, *, streamed: bool = False) -> Report:
    """The retired flows' totals plus the live flows': services exact, flagged flows capped.

    ``flows`` holds the first ``max_flagged`` flagged flows (retired ones first);
    ``flow_total`` counts every flow. ``streamed``: every record went to a sink,
    so the cap is no loss worth a warning.
    """
    retired = analyzer.retired
    ft, table = analyzer.flows, analyzer.table
    live = np.flatnonzero(ft.alive[: ft.size]).astype(np.int64)
    dec = ft.decide(table, live)
    key = dec.transport.astype(np.int64) * 65536 + dec.service_port
    packets = _sums(key, ft.packets()[live])
    nbytes = _sums(key, ft.bytes()[live])
    flows = np.bincount(key, minlength=_SERVICE_KEYS).astype(np.uint64)
    if retired.packets.size:
        packets += retired.packets
        nbytes += retired.bytes
        flows += retired.service_flows
    used = np.flatnonzero(flows)
    live_flagged = np.flatnonzero(dec.flags)
    room = max(retired.max_flagged - len(retired.flagged), 0)
    kept = live_flagged[:room]
    listed = retired.flagged + flow_reports(analyzer, live[kept], take(dec, kept))
    flagged_total = retired.flagged_total + int(live_flagged.size)
    return Report(
        captures=[analyzer.capture] if analyzer.capture else [],
        packets=analyzer.packets,
        bytes=analyzer.bytes,
        services=service_counts(table, used, packets[used], nbytes[used], flows[used]),
        flows=listed,
        decode=analyzer.decode_summary(),
        registry=registry_summary(table),
        warnings=list(analyzer.warnings) + retired.warnings(flagged_total, streamed=streamed),
        partial=analyzer.partial,
        flow_total=retired.flows + int(live.size),
    )
