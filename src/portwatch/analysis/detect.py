"""What the traffic is, beside what the registry says: nDPI's detection per flow.

portwatch names a flow by its port; nDPI (through nfstream, which bundles it)
reads the first packets of a flow and names the protocol in the payload.
This module puts the two side by side:

1. ``FirstPackets`` rides along the fast path: for each batch the analyzer
   counted, it keeps the first ``limit`` packets of every flow (numpy, no
   per-packet Python) and appends them to a private nanosecond pcap, one per
   link type. Later packets of a flow are never copied, so what nDPI reads is
   bounded by the number of flows, not of packets.
2. ``run_ndpi`` gives that file to ``nfstream.NFStreamer`` (``n_dissections``
   = ``limit``) and returns nDPI's answer per flow.
3. ``match`` joins nDPI's flows to portwatch's by 5-tuple (and, when a
   5-tuple was reused, by time); ``judge`` compares the detected protocol
   with what IANA assigns to the service port (``ndpi_names``), and
   ``apply_detections`` writes ``detected``, ``confidence`` and
   ``detection`` into the report's flows, a ``protocol-mismatch`` flag with
   the sentence of ``verdict.reasons`` when the payload says another protocol.

Rules: only a payload detection can confirm or contradict the registry; a
guess from the port (or nothing) leaves the flow ``unconfirmed``, so a flow
without payload is never a mismatch. A port with nothing to compare with
(dynamic, or unlisted by sources that list assigned ports only) stays
``unconfirmed`` too; an unassigned or reserved port that carries a detected
protocol is a mismatch (something squats on it).

nfstream is imported only here, inside functions: ``--detect`` without it is
a ``UsageError`` carrying ``INSTALL_HINT`` (exit 2).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from portwatch.analysis.flows import FlowTable
from portwatch.analysis.ndpi_names import confirms
from portwatch.analysis.report import Report
from portwatch.analysis.verdict import Confidence, Detection, FlagReason, reasons
from portwatch.capture.batch import PacketBatch
from portwatch.decode.native import NO_TRANSPORT, TRANSPORT_OF_PROTO
from portwatch.errors import UsageError
from portwatch.ports import PortStatus, Transport
from portwatch.porttable.table import PortTable

__all__ = [
    "DEFAULT_PACKETS",
    "INSTALL_HINT",
    "FirstPackets",
    "FlowDetection",
    "NdpiFlow",
    "apply_detections",
    "detector_version",
    "first_packets",
    "judge",
    "match",
    "ndpi_protocols",
    "require_ndpi",
    "run_ndpi",
]

#: Packets of each flow nDPI reads (nfstream's default ``n_dissections``).
DEFAULT_PACKETS = 20
INSTALL_HINT = ("--detect needs nDPI: pip install 'portwatch[detect]' "
                "(nfstream, which bundles nDPI)")
#: nDPI's ``ndpi_confidence_t`` values read in the flow's own payload; the others
#: (by port, by IP, from a cache of earlier flows, a custom rule) are guesses.
_PAYLOAD_CONFIDENCES = frozenset({3, 6, 8})  # DPI_PARTIAL, DPI, DPI_AGGRESSIVE
_UNKNOWN = "unknown"
#: Records longer than this are cut in the copy nDPI reads (libpcap refuses
#: records beyond the file's snaplen; nDPI needs the first bytes only).
_SNAPLEN = 65535
_PCAP_NSEC_MAGIC = 0xA1B23C4D
_RECORD = np.dtype([("sec", "<u4"), ("nsec", "<u4"), ("incl", "<u4"), ("orig", "<u4")])
#: nfstream splits flows on timeouts; portwatch's analysis of a file never
#: does, so nDPI's flows must not either (seconds, well inside uint64 ms).
_NO_TIMEOUT_S = 10 ** 9

I64 = npt.NDArray[np.int64]


# -- nDPI's presence ------------------------------------------------------------------

def require_ndpi() -> None:
    """Raise ``UsageError`` (exit 2) with the install hint unless nfstream imports."""
    try:
        import nfstream  # noqa: F401
    except ImportError as exc:
        raise UsageError(INSTALL_HINT) from exc


def detector_version() -> str:
    """``nDPI 5.0.0-1-375f99e (nfstream 6.6.0)``: what detected, for reports and docs."""
    require_ndpi()
    import nfstream
    from nfstream.engine.engine import create_engine

    ffi, lib = create_engine()
    ndpi = ffi.string(lib.engine_lib_ndpi_version()).decode()
    return f"nDPI {ndpi} (nfstream {nfstream.__version__})"


def ndpi_protocols() -> list[str]:
    """Every protocol name the bundled nDPI knows, as it spells them (``ndpi_get_proto_name``).

    nfstream does not export the list, but its engine library links nDPI with
    its symbols visible: one dissector is made the way nfstream makes it and
    asked through ``ctypes``.
    """
    require_ndpi()
    import ctypes

    import _lib_engine  # nfstream's compiled engine
    from nfstream.engine.engine import create_engine, setup_dissector

    ffi, lib = create_engine()
    dissector = setup_dissector(ffi, lib, 1)
    if dissector == ffi.NULL:
        raise RuntimeError("nDPI's dissector could not be initialised")
    try:
        so = ctypes.CDLL(_lib_engine.__file__)
        so.ndpi_get_num_protocols.restype = ctypes.c_uint
        so.ndpi_get_num_protocols.argtypes = [ctypes.c_void_p]
        so.ndpi_get_proto_name.restype = ctypes.c_char_p
        so.ndpi_get_proto_name.argtypes = [ctypes.c_void_p, ctypes.c_uint16]
        handle = int(ffi.cast("uintptr_t", dissector))
        count = so.ndpi_get_num_protocols(handle)
        return [so.ndpi_get_proto_name(handle, i).decode() for i in range(count)]
    finally:
        lib.dissector_cleanup(dissector)


# -- the first packets of each flow --------------------------------------------------

class FirstPackets:
    """The first ``limit`` packets of every flow, appended to one pcap per link type.

    ``add`` is called with each batch and the flow row of each of its packets
    (``Analyzer.feed``'s answer), after the analyzer counted it. A row the
    flow table reused for a new flow (its ``first_ns`` changed) starts again
    from zero.
    """

    def __init__(self, directory: str, limit: int = DEFAULT_PACKETS) -> None:
        if not 1 <= limit <= 255:
            raise UsageError(f"nDPI reads 1-255 packets of a flow, not {limit}")
        self.directory = directory
        self.limit = limit
        self.packets = 0  # written
        self._seen = np.zeros(0, dtype=np.int64)
        self._first_ns = np.zeros(0, dtype=np.int64)
        self._files: dict[int, tuple[str, BinaryIO]] = {}

    def _grow(self, size: int) -> None:
        if size <= self._seen.size:
            return
        new = max(size, 2 * self._seen.size, 1024)
        self._seen = np.concatenate([self._seen, np.zeros(new - self._seen.size, np.int64)])
        self._first_ns = np.concatenate(
            [self._first_ns, np.full(new - self._first_ns.size, np.iinfo(np.int64).min)])

    def add(self, batch: PacketBatch, flow_of_packet: I64, flows: FlowTable) -> None:
        rows = np.flatnonzero(flow_of_packet >= 0)
        if rows.size == 0:
            return
        fid = flow_of_packet[rows]
        self._grow(flows.size)
        current = flows.first_ns[fid]
        renewed = np.unique(fid[self._first_ns[fid] != current])
        if renewed.size:
            self._seen[renewed] = 0
            self._first_ns[renewed] = flows.first_ns[renewed]
        # rank of each packet among its flow's packets in this batch (stable: in order)
        order = np.argsort(fid, kind="stable")
        sorted_fid = fid[order]
        starts = np.flatnonzero(np.r_[True, sorted_fid[1:] != sorted_fid[:-1]])
        lengths = np.diff(np.r_[starts, sorted_fid.size])
        rank = np.empty(fid.size, dtype=np.int64)
        rank[order] = np.arange(fid.size) - np.repeat(starts, lengths)
        keep = rank + self._seen[fid] < self.limit
        self._seen[sorted_fid[starts]] += lengths
        chosen = rows[keep]
        if chosen.size:
            for linktype in np.unique(batch.linktypes[chosen]).tolist():
                self._write(batch, chosen[batch.linktypes[chosen] == linktype], linktype)

    def _file(self, linktype: int) -> BinaryIO:
        got = self._files.get(linktype)
        if got is None:
            path = os.path.join(self.directory, f"first-packets-{linktype}.pcap")
            out = open(path, "xb")  # noqa: SIM115  # closed by close()
            out.write(struct.pack("<IHHiIII", _PCAP_NSEC_MAGIC, 2, 4, 0, 0, _SNAPLEN, linktype))
            got = self._files[linktype] = (path, out)
        return got[1]

    def _write(self, batch: PacketBatch, idx: I64, linktype: int) -> None:
        """Records for packets ``idx`` of ``batch``, built with numpy in one buffer."""
        incl = np.minimum(batch.caplens[idx].astype(np.int64), _SNAPLEN)
        ts = np.maximum(batch.timestamps_ns[idx], 0)
        head = np.empty(idx.size, dtype=_RECORD)
        head["sec"], head["nsec"] = ts // 1_000_000_000, ts % 1_000_000_000
        head["incl"], head["orig"] = incl, batch.wirelens[idx]
        record_start = np.zeros(idx.size, dtype=np.int64)
        np.cumsum(incl[:-1] + _RECORD.itemsize, out=record_start[1:])
        total_data = int(incl.sum())
        out = np.empty(int(record_start[-1] + _RECORD.itemsize + incl[-1]), dtype=np.uint8)
        out[(record_start[:, None] + np.arange(_RECORD.itemsize)).ravel()] = (
            head.view(np.uint8))
        data_start = np.zeros(idx.size, dtype=np.int64)
        np.cumsum(incl[:-1], out=data_start[1:])
        within = np.arange(total_data) - np.repeat(data_start, incl)
        src = np.repeat(batch.offsets[idx], incl) + within
        dst = np.repeat(record_start + _RECORD.itemsize, incl) + within
        out[dst] = batch.data[src]
        self._file(linktype).write(out.tobytes())
        self.packets += int(idx.size)

    def close(self) -> list[str]:
        """Close the files; their paths, one per link type seen."""
        for _, out in self._files.values():
            out.close()
        return [path for path, _ in self._files.values()]


@contextlib.contextmanager
def first_packets(directory: str | None, limit: int = DEFAULT_PACKETS) -> Iterator[FirstPackets]:
    """A ``FirstPackets`` in a private temporary directory, removed on the way out."""
    private = tempfile.mkdtemp(prefix="portwatch-detect-", dir=directory)
    keeper = FirstPackets(private, limit)
    try:
        yield keeper
    finally:
        keeper.close()
        shutil.rmtree(private, ignore_errors=True)


# -- nDPI's answer ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class NdpiFlow:
    """One flow as nDPI saw it (nfstream's ``NFlow``, the fields used here)."""

    transport: int  # Transport value
    a: tuple[int, int]  # (address as 128 bits, IPv4 mapped into ::ffff:0:0/96; port)
    b: tuple[int, int]
    first_ns: int
    name: str  # nDPI's application name, ``master.app`` (``TLS.Google``), or "Unknown"
    guessed: bool
    confidence: int  # nDPI's ndpi_confidence_t value


@dataclass(frozen=True, slots=True)
class FlowDetection:
    """What nDPI says of one flow: the protocol (lower case, "" for none) and how sure."""

    detected: str
    confidence: Confidence

    @classmethod
    def of(cls, flow: NdpiFlow) -> FlowDetection:
        if not flow.name or flow.name.lower() == _UNKNOWN:
            return cls("", Confidence.NONE)
        sure = not flow.guessed and flow.confidence in _PAYLOAD_CONFIDENCES
        return cls(flow.name.lower(), Confidence.PAYLOAD if sure else Confidence.PORT_GUESS)


def _address(text: str) -> int:
    addr = ipaddress.ip_address(text)
    return (0xFFFF << 32 | int(addr)) if addr.version == 4 else int(addr)


def _ndpi_flow(f: Any) -> NdpiFlow | None:
    transport = int(TRANSPORT_OF_PROTO[int(f.protocol) & 0xFF])
    if transport == NO_TRANSPORT:
        return None
    return NdpiFlow(transport, (_address(f.src_ip), int(f.src_port)),
                    (_address(f.dst_ip), int(f.dst_port)),
                    int(f.bidirectional_first_seen_ms) * 1_000_000,
                    str(f.application_name or ""), bool(f.application_is_guessed),
                    int(f.application_confidence or 0))


def run_ndpi(paths: Sequence[str], limit: int = DEFAULT_PACKETS) -> list[NdpiFlow]:
    """nDPI's flows of each capture in ``paths`` (TCP, UDP, SCTP, DCCP only).

    One nfstream meter process per file, tunnels not decoded (portwatch
    counts the outer flow), no timeouts (a file's flow is one flow). nfstream
    pins the calling process's CPUs and may print warnings: the affinity is
    restored and its prints go to standard error, never into a report.
    """
    require_ndpi()
    from nfstream import NFStreamer

    out: list[NdpiFlow] = []
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            for path in paths:
                streamer = NFStreamer(source=path, decode_tunnels=False, n_dissections=limit,
                                      statistical_analysis=False, splt_analysis=0, n_meters=1,
                                      idle_timeout=_NO_TIMEOUT_S, active_timeout=_NO_TIMEOUT_S)
                for f in streamer:
                    flow = _ndpi_flow(f)
                    if flow is not None:
                        out.append(flow)
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)
    return out


# -- joining and judging -------------------------------------------------------------

def _key(transport: int, a: tuple[int, int], b: tuple[int, int]) -> tuple[int, tuple[int, int],
                                                                         tuple[int, int]]:
    return (transport, a, b) if a <= b else (transport, b, a)


def match(ndpi: Sequence[NdpiFlow], flows: FlowTable,
          rows: I64) -> dict[int, FlowDetection]:
    """nDPI's answer for each of ``rows`` it saw, by 5-tuple, then by time.

    When several nDPI flows share a row's 5-tuple, the row takes the one
    whose start falls within it (else the closest start); of several answers
    for one row, a payload detection wins over a guess.
    """
    keys = flows.keys[rows]
    by_key: dict[tuple[int, tuple[int, int], tuple[int, int]], list[int]] = {}
    a_addr = [(h << 64) | lo for h, lo in zip(keys["ah"].tolist(), keys["al"].tolist(),
                                             strict=True)]
    b_addr = [(h << 64) | lo for h, lo in zip(keys["bh"].tolist(), keys["bl"].tolist(),
                                             strict=True)]
    for j, (t, ap, bp) in enumerate(zip(keys["t"].tolist(), keys["ap"].tolist(),
                                        keys["bp"].tolist(), strict=True)):
        by_key.setdefault(_key(t, (a_addr[j], ap), (b_addr[j], bp)), []).append(j)
    first = flows.first_ns[rows].tolist()
    last = flows.last_ns[rows].tolist()
    out: dict[int, FlowDetection] = {}
    for nf in ndpi:
        candidates = by_key.get(_key(nf.transport, nf.a, nf.b))
        if not candidates:
            continue
        j = min(candidates, key=lambda c: (not first[c] - 1_000_000 <= nf.first_ns <= last[c],
                                           abs(first[c] - nf.first_ns)))
        row = int(rows[j])
        found = FlowDetection.of(nf)
        got = out.get(row)
        if got is None or found.confidence > got.confidence:
            out[row] = found
    return out


def judge(found: FlowDetection, service: str, aliases: Sequence[str],
          status: PortStatus) -> Detection:
    """``found`` against the registry's answer for the flow's service port."""
    if found.confidence is not Confidence.PAYLOAD:
        return Detection.UNCONFIRMED
    if confirms(found.detected, service, aliases):
        return Detection.CONFIRMED
    if status in (PortStatus.ASSIGNED, PortStatus.RESERVED, PortStatus.UNASSIGNED):
        return Detection.MISMATCH
    return Detection.UNCONFIRMED


_NOTHING = FlowDetection("", Confidence.NONE)
_TRANSPORT_BY_LABEL = {t.label: t for t in Transport}
_STATUS_BY_LABEL = {s.label: s for s in PortStatus}


def apply_detections(report: Report, detections: dict[int, FlowDetection], rows: I64,
                     table: PortTable) -> int:
    """Write each flow's detection into ``report`` (built from ``rows``, in order).

    Returns the number of mismatches. A flow nDPI did not report (it had no
    packet nDPI could read) is ``unconfirmed`` with confidence ``none``.
    """
    mismatches = 0
    row_list = rows.tolist()
    if len(row_list) != len(report.flows):
        raise ValueError("the report's flows are not the rows detected")
    for flow, row in zip(report.flows, row_list, strict=True):
        found = detections.get(row, _NOTHING)
        transport = _TRANSPORT_BY_LABEL[flow.transport]
        status = _STATUS_BY_LABEL[flow.status]
        aliases = table.lookup(transport, flow.service_port).aliases
        verdict = judge(found, flow.service, aliases, status)
        flow.detected = found.detected
        flow.confidence = found.confidence.label
        flow.detection = verdict.label
        if verdict is Detection.MISMATCH:
            mismatches += 1
            flow.flags.append(FlagReason.PROTOCOL_MISMATCH.label)
            flow.reasons.extend(reasons(flow.transport, flow.service_port,
                                        FlagReason.PROTOCOL_MISMATCH, service=flow.service,
                                        status=flow.status, detected=found.detected))
    return mismatches
