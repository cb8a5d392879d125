"""The analysis engine: batches in, flows counted and fragments attributed.

``Analyzer`` is I/O-free: feed it ``PacketBatch``es (from a file reader, a live
backend or a test). It decodes each batch with numpy, groups packets into
flows, attributes non-first IP fragments to the flow of their datagram when the
first fragment was seen, and counts what it could not decode by reason, so
nothing is dropped silently. ``portwatch.analysis.report`` turns what it
counted into a ``Report``.

Given ``FlowLimits``, the table is bounded: when a batch leaves more than
``max_flows`` flows live, flows idle past their timeout (by the capture's own
timestamps), then the least recently seen, are retired into
``portwatch.analysis.retire.RetiredFlows`` (see there). Without limits every
flow stays, as the annotated copy and the daemon need (their rows must stay
stable).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from portwatch.analysis.flows import FlowLimits, FlowTable
from portwatch.analysis.report import Report, build_report, by_start, flow_reports
from portwatch.analysis.retire import (
    MAX_FLAGGED,
    RECORD_CHUNK,
    RecordSink,
    RetiredFlows,
    bounded_report,
    take,
)
from portwatch.analysis.verdict import FlowDecisions
from portwatch.capture.batch import PacketBatch
from portwatch.decode.native import DecodedBatch, DecodeStatus, decode_batch
from portwatch.porttable.table import PortTable

__all__ = ["MAX_PENDING_FRAGMENTS", "Analyzer"]

I64 = npt.NDArray[np.int64]

#: Upper bound on first fragments remembered for attributing later fragments.
MAX_PENDING_FRAGMENTS = 65536


class Analyzer:
    """Accumulates flows over any number of batches (one capture or many).

    ``limits``: bound the flow table (None: keep every flow). ``records``: every
    flow's ``FlowReport`` goes there when it retires, and the rest at
    ``finish()``. ``max_flagged``: flagged flows a bounded report lists in full.
    """

    def __init__(self, table: PortTable, *, capture: str = "",
                 limits: FlowLimits | None = None, records: RecordSink | None = None,
                 max_flagged: int = MAX_FLAGGED) -> None:
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
        self.limits = limits
        self.records = records
        self.retired = RetiredFlows(max_flagged, limits.max_flows if limits else 0)
        self.latest_ns = np.iinfo(np.int64).min  # newest packet timestamp fed
        self._idle_ns = limits.idle_ns() if limits else np.zeros(0, dtype=np.int64)
        self._active_ns = int(limits.active_s * 1_000_000_000) if limits else 0

    # -- feeding --------------------------------------------------------------
    def feed(self, batch: PacketBatch) -> tuple[DecodedBatch, I64]:
        """Count one batch; return its decoding and each packet's flow (-1: none)."""
        decoded = decode_batch(batch)
        return decoded, self.feed_decoded(decoded, batch.timestamps_ns)

    def feed_decoded(self, decoded: DecodedBatch, timestamps_ns: I64) -> I64:
        """Count packets another dissector decoded (the scapy and pyshark engines).

        With ``limits``, a returned flow row may already have been retired.
        """
        flow_of_packet = self.flows.update(decoded, timestamps_ns)
        self.packets += len(decoded)
        self.bytes += int(decoded.wirelen.sum(dtype=np.uint64))
        self.decode_counts += np.bincount(decoded.status, minlength=len(DecodeStatus))[
            : len(DecodeStatus)
        ]
        self._remember_first_fragments(decoded, flow_of_packet)
        self._attribute_fragments(decoded, flow_of_packet, timestamps_ns)
        if timestamps_ns.size:
            self.latest_ns = max(self.latest_ns, int(timestamps_ns.max()))
        if self.limits is not None and len(self.flows) > self.limits.max_flows:
            self._sweep(self.limits.max_flows)
        return flow_of_packet

    # -- retiring ---------------------------------------------------------------
    def _sweep(self, max_flows: int) -> None:
        """Retire idle and too-long flows, then the least recently seen beyond ``max_flows``."""
        ft = self.flows
        self._retire(ft.expired(self.latest_ns, self._idle_ns, self._active_ns), early=False)
        self._retire(ft.least_recent(len(ft) - max_flows), early=True)

    def _retire(self, rows: I64, *, early: bool) -> None:
        """Decide ``rows`` for good, count them, pass their records on, and evict them."""
        if rows.size == 0:
            return
        rows = by_start(self.flows, rows)  # records in start order, as the report lists them
        dec = self.flows.decide(self.table, rows)
        self.retired.add(self, rows, dec, early=early)
        if self.records is not None:
            for start in range(0, rows.size, RECORD_CHUNK):
                part = np.arange(start, min(start + RECORD_CHUNK, rows.size))
                self.records(flow_reports(self, rows[part], take(dec, part)))
        self._forget_fragments(rows)
        self.flows.evict(rows)

    def _forget_fragments(self, rows: I64) -> None:
        """First fragments of retired flows must not pull later fragments into a reused row."""
        if not self._first_fragments:
            return
        gone = np.zeros(self.flows.size, dtype=np.bool_)
        gone[rows] = True
        is_gone = gone.tolist()
        self._first_fragments = {k: v for k, v in self._first_fragments.items()
                                 if not is_gone[v[0]]}

    def finish(self) -> None:
        """Retire every live flow, so ``records`` gets the rest; call after the last batch.

        Live flows go in row order, which for a capture that never retired is
        the order ``build_report`` lists them in.
        """
        self._retire(np.flatnonzero(self.flows.alive[: self.flows.size]).astype(np.int64),
                     early=False)

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
        """Every flow row decided (evicted rows too: mask them with ``flows.alive``)."""
        return self.flows.decide(self.table)

    def decode_summary(self) -> dict[str, int]:
        out = {s.label: int(self.decode_counts[s]) for s in DecodeStatus
               if s is not DecodeStatus.OK and self.decode_counts[s]}
        if self.fragments_attributed:
            out["fragment-attributed"] = self.fragments_attributed
        return out

    def report(self) -> Report:
        """``build_report(self)``; once flows were retired, ``retire.bounded_report``."""
        if self.retired.flows == 0:
            return build_report(self)
        return bounded_report(self, streamed=self.records is not None)
