"""The analysis engine: batches in, flows counted and fragments attributed.

``Analyzer`` is I/O-free: feed it ``PacketBatch``es (from a file reader, a live
backend or a test). It decodes each batch with numpy, groups packets into
flows, attributes non-first IP fragments to the flow of their datagram when the
first fragment was seen, and counts what it could not decode by reason, so
nothing is dropped silently. ``portwatch.analysis.report`` turns what it
counted into a ``Report``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from portwatch.analysis.flows import FlowTable
from portwatch.analysis.report import Report, build_report
from portwatch.analysis.verdict import FlowDecisions
from portwatch.capture.batch import PacketBatch
from portwatch.decode.native import DecodedBatch, DecodeStatus, decode_batch
from portwatch.porttable.table import PortTable

__all__ = ["MAX_PENDING_FRAGMENTS", "Analyzer"]

I64 = npt.NDArray[np.int64]

#: Upper bound on first fragments remembered for attributing later fragments.
MAX_PENDING_FRAGMENTS = 65536


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
        """Convenience for ``build_report(self)``."""
        return build_report(self)
