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

Rules: only a payload detection (nDPI's ``NDPI_CONFIDENCE_DPI``) can confirm or
contradict the registry; a guess from the port, a partial or aggressive match
(or nothing) leaves the flow ``unconfirmed``, so a flow
without payload is never a mismatch. A port with nothing to compare with
(dynamic, or unlisted by sources that list assigned ports only) stays
``unconfirmed`` too; an unassigned or reserved port that carries a detected
protocol is a mismatch (something squats on it).

nfstream is imported only here, inside functions: ``--detect`` without it is
a ``UsageError`` carrying ``INSTALL_HINT`` (exit 2).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import ipaddress
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from portwatch.analysis import _ndpi_meter
from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.flows import FlowTable
from portwatch.analysis.ndpi_names import confirms
from portwatch.analysis.report import Report
from portwatch.analysis.verdict import Confidence, Detection, FlagReason, Verdict, reasons
from portwatch.capture.batch import LinkType, PacketBatch
from portwatch.decode.native import NO_TRANSPORT, TRANSPORT_OF_PROTO, DecodedBatch, DecodeStatus
from portwatch.errors import UsageError
from portwatch.ports import PortStatus, Transport
from portwatch.porttable.table import PortTable

__all__ = [
    "DEFAULT_PACKETS",
    "INSTALL_HINT",
    "LIVE_IDLE_S",
    "FirstPackets",
    "FlowDetection",
    "LiveDetection",
    "LiveJudge",
    "NdpiFlow",
    "annotation_comments",
    "apply_detections",
    "detection_note",
    "detector_version",
    "first_packets",
    "flow_keys",
    "judge",
    "live_detection",
    "match",
    "ndpi_key",
    "ndpi_protocols",
    "require_ndpi",
    "run_ndpi",
    "worth_reading",
]

#: Packets of each flow nDPI reads (nfstream's default ``n_dissections``).
DEFAULT_PACKETS = 20
INSTALL_HINT = ("--detect needs nDPI: pip install 'portwatch[detect]' "
                "(nfstream, which bundles nDPI)")
#: nDPI's ``ndpi_confidence_t`` values that count as read in the flow's own payload:
#: NDPI_CONFIDENCE_DPI only. The others are guesses or hedges, and so ``port-guess``:
#: by port, by IP, from a cache of earlier flows, a custom rule, and also
#: DPI_PARTIAL (incomplete information), DPI_PARTIAL_CACHE and DPI_AGGRESSIVE (nDPI's
#: own "might be a false positive"): none of them may contradict the registry.
_PAYLOAD_CONFIDENCES = frozenset({6})  # NDPI_CONFIDENCE_DPI
_UNKNOWN = "unknown"
#: Records longer than this are cut in the copy nDPI reads (libpcap refuses
#: records beyond the file's snaplen; nDPI needs the first bytes only).
_SNAPLEN = 65535
_PCAP_NSEC_MAGIC = 0xA1B23C4D
_RECORD = np.dtype([("sec", "<u4"), ("nsec", "<u4"), ("incl", "<u4"), ("orig", "<u4")])
_NO_TIMEOUT_S = _ndpi_meter.NO_TIMEOUT_S  # a file's flow never times out

I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]


# -- nDPI's presence ------------------------------------------------------------------
#
# nfstream ships its engine as a top-level cffi module, ``_lib_engine``: its
# libpcap reader, its flow meter and nDPI, statically linked. ``import
# nfstream`` would also import pandas (0.4 s); the engine alone imports in 1 ms.



def _engine() -> tuple[Any, Any]:
    """nfstream's compiled engine, ``(ffi, lib)``; ``UsageError`` with the hint if absent."""
    try:
        return _ndpi_meter.engine()
    except ImportError as exc:
        raise UsageError(INSTALL_HINT) from exc


def require_ndpi() -> None:
    """Raise ``UsageError`` (exit 2) with the install hint unless nfstream's engine loads."""
    _engine()
    try:
        import importlib.util

        found = importlib.util.find_spec("nfstream") is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules (tests)
        found = False
    if not found:
        raise UsageError(INSTALL_HINT)


def detector_version() -> str:
    """``nDPI 5.0.0-1-375f99e (nfstream 6.6.0)``: what detected, for reports and docs."""
    ffi, lib = _engine()
    ndpi = ffi.string(lib.engine_lib_ndpi_version()).decode()
    return f"nDPI {ndpi} (nfstream {ffi.string(lib.engine_lib_version()).decode()})"


_dissector = _ndpi_meter.dissector


def ndpi_protocols() -> list[str]:
    """Every protocol name the bundled nDPI knows, as it spells them (``ndpi_get_proto_name``).

    The engine's cffi interface does not declare these two nDPI functions, but
    the library exports them: they are called through ``ctypes``.
    """
    import ctypes

    import _lib_engine

    ffi, lib = _engine()
    dissector = _dissector(ffi, lib)
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

#: Where the network layer starts, by link type (before VLAN tags); -1: unknown.
_L3_AT = np.full(512, -1, dtype=np.int64)
for _linktype, _at in {LinkType.NULL: 4, LinkType.ETHERNET: 14, LinkType.RAW_DLT12: 0,
                       LinkType.RAW_DLT14: 0, LinkType.RAW: 0, LinkType.LOOP: 4,
                       LinkType.LINUX_SLL: 16, LinkType.IPV4: 0, LinkType.IPV6: 0,
                       LinkType.LINUX_SLL2: 20}.items():
    _L3_AT[_linktype] = _at
_VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
_TCP_OPENS_OR_CLOSES = 0x07  # FIN, SYN, RST


def worth_reading(batch: PacketBatch, decoded: DecodedBatch, rows: I64) -> Bool:
    """Which packets ``rows`` nDPI can learn from: a transport payload, or a SYN, FIN or RST.

    nDPI reads nothing in a bare ACK (and nfstream spends ~25 us of Python on
    every packet it is handed), so those are not kept; everything this cannot
    tell (IP fragments, extension headers, a total length of 0 from TSO,
    SCTP, DCCP, an unknown link) is kept. Lengths come from the IP and
    transport headers, never from the frame length (Ethernet pads short frames).
    """
    keep = np.ones(rows.size, dtype=np.bool_)
    ok = decoded.status[rows] == DecodeStatus.OK
    proto = decoded.ip_proto[rows]
    version = decoded.ip_version[rows]
    linktypes = batch.linktypes[rows].astype(np.int64)
    l3_at = np.where(linktypes < _L3_AT.size, _L3_AT[np.minimum(linktypes, _L3_AT.size - 1)],
                     -1)
    check = ok & ((proto == 6) | (proto == 17)) & (l3_at >= 0)
    idx = np.flatnonzero(check)
    if idx.size == 0:
        return keep
    data = batch.data
    last = data.size - 1
    start = batch.offsets[rows[idx]]
    end = start + batch.caplens[rows[idx]].astype(np.int64)

    def u8(pos: I64) -> I64:
        return data[np.clip(pos, 0, last)].astype(np.int64)

    def be16(pos: I64) -> I64:
        return (u8(pos) << 8) | u8(pos + 1)

    l3 = start + l3_at[idx]
    ethernet = linktypes[idx] == LinkType.ETHERNET
    for _ in range(2):  # 802.1Q, 802.1ad (QinQ)
        tagged = ethernet & np.isin(be16(l3 - 2), _VLAN_TPIDS)
        l3 = l3 + 4 * tagged
    v4 = version[idx] == 4
    ihl = (u8(l3) & 15) * 4
    total = be16(l3 + 2)
    ip_payload = np.where(v4, total - ihl, be16(l3 + 4))
    l4 = np.where(v4, l3 + ihl, l3 + 40)
    direct = v4 | (u8(l3 + 6) == proto[idx])  # IPv6 without extension headers
    tcp = proto[idx] == 6
    header = np.where(tcp, (u8(l4 + 12) >> 4) * 4, 8)
    flags = decoded.tcp_flags[rows[idx]]
    known = direct & (ip_payload > 0) & (l4 + header <= end)
    bare = known & (ip_payload - header <= 0) & ~(tcp & ((flags & _TCP_OPENS_OR_CLOSES) != 0))
    keep[idx[bare]] = False
    return keep


#: Packets of a batch handled at a time when nDPI runs beside (``FirstPackets.add``):
#: about what the FIFO holds, so nDPI's answers come back within a window or two.
_WINDOW = 4096


class FirstPackets:
    """What nDPI reads of the first ``limit`` packets of every flow, one pcap per link type.

    ``limit`` is nfstream's ``n_dissections``: the first packets of a flow,
    bare ACKs included. Of those, the packets ``worth_reading`` rejects (bare
    ACKs, empty datagrams) are not copied, as nDPI would learn nothing from
    them, except the first packet of each flow, so nDPI still sees (and may
    guess from the port) a flow without payload. Later packets of a flow cost
    one array lookup. ``add`` is called with each batch, its decoding and the
    flow row of each of its packets (``Analyzer.feed``'s answer). A row the
    flow table reused for a new flow (its ``first_ns`` changed) starts again.
    """

    def __init__(self, directory: str, limit: int = DEFAULT_PACKETS) -> None:
        if not 1 <= limit <= 255:
            raise UsageError(f"nDPI reads 1-255 packets of a flow, not {limit}")
        self.directory = directory
        self.limit = limit
        self.packets = 0  # written
        self._seen = np.zeros(0, dtype=np.int64)  # packets of each flow row looked at
        self._first_ns = np.zeros(0, dtype=np.int64)  # the flow each row held then
        self._evicted = 0
        self._files: dict[int, tuple[str, BinaryIO]] = {}
        # flows nDPI is done with (set by a subclass whose nDPI runs meanwhile), and the
        # flow row (and its first_ns) of each 5-tuple whose first packets are being kept
        self._finished: deque[NdpiFlow] | None = None
        self._row_of_key: dict[FlowKey, tuple[int, int]] = {}
        self.closed = 0  # flows nDPI was done with before their first ``limit`` packets
        self._window = _WINDOW

    def _grow(self, size: int) -> None:
        if size <= self._seen.size:
            return
        new = max(size, 2 * self._seen.size, 1024)
        self._seen = np.concatenate([self._seen, np.zeros(new - self._seen.size, np.int64)])
        self._first_ns = np.concatenate(
            [self._first_ns, np.full(new - self._first_ns.size, np.iinfo(np.int64).min)])

    def add(self, batch: PacketBatch, decoded: DecodedBatch, flow_of_packet: I64,
            flows: FlowTable) -> None:
        """Keep what nDPI reads of this batch: ``Analyzer.feed``'s decoding and flow rows.

        With nDPI running meanwhile (``LiveDetection``), a large batch is taken
        ``_WINDOW`` packets at a time, so that what nDPI finished with while
        one window was written stops the copying of that flow in the next.
        """
        step = self._window if self._finished is not None else len(flow_of_packet)
        for lo in range(0, len(flow_of_packet), max(step, 1)):
            self._add(batch, decoded, flow_of_packet, flows, slice(lo, lo + step))

    def _add(self, batch: PacketBatch, decoded: DecodedBatch, flow_of_packet: I64,
             flows: FlowTable, window: slice) -> None:
        rows = window.start + np.flatnonzero(flow_of_packet[window] >= 0)
        if rows.size == 0:
            return
        fid = flow_of_packet[rows]
        self._grow(flows.size)
        if flows.evicted != self._evicted:  # rows may have been reused for new flows
            self._evicted = flows.evicted
            renewed = np.unique(fid[self._first_ns[fid] != flows.first_ns[fid]])
            self._seen[renewed] = 0
            self._first_ns[renewed] = flows.first_ns[renewed]
        if self._finished:
            self._close_finished()
        room = self._seen[fid] < self.limit  # flows whose first packets are not all past
        rows, fid = rows[room], fid[room]
        if rows.size == 0:
            return
        # rank of each packet among its flow's packets in this batch (stable: in order)
        order = np.argsort(fid, kind="stable")
        sorted_fid = fid[order]
        starts = np.flatnonzero(np.r_[True, sorted_fid[1:] != sorted_fid[:-1]])
        lengths = np.diff(np.r_[starts, sorted_fid.size])
        rank = np.empty(fid.size, dtype=np.int64)
        rank[order] = np.arange(fid.size) - np.repeat(starts, lengths)
        before = self._seen[fid]
        flow_rows = sorted_fid[starts]
        fresh = flow_rows[self._seen[flow_rows] == 0]
        self._first_ns[fresh] = flows.first_ns[fresh]
        if self._finished is not None and fresh.size:
            self._remember(flows, fresh)
        self._seen[flow_rows] += lengths
        first = rank + before < self.limit
        rows, opens = rows[first], (rank + before == 0)[first]
        chosen = rows[opens | worth_reading(batch, decoded, rows)]
        if chosen.size:
            for linktype in np.unique(batch.linktypes[chosen]).tolist():
                self._write(batch, chosen[batch.linktypes[chosen] == linktype], linktype)

    def _remember(self, flows: FlowTable, fresh: I64) -> None:
        """The 5-tuple of each new flow, so nDPI's word that it is done can close it.

        One Python step per flow (never per packet); at most ``_DONE_KEYS`` are
        kept, the oldest forgotten first (a flow forgotten is merely not closed early).
        """
        keys = self._row_of_key
        for key, row, first in zip(flow_keys(flows, fresh), fresh.tolist(),
                                   self._first_ns[fresh].tolist(), strict=True):
            keys[key] = (row, first)
        for _ in range(len(keys) - _DONE_KEYS):
            del keys[next(iter(keys))]

    def _close_finished(self) -> None:
        """Stop keeping packets of the flows nDPI has decided or given up on.

        nDPI reads nothing more of such a flow, so its later packets are not
        copied: its row counts as past its first packets. A row that holds
        another flow by now (``first_ns`` changed) is left alone.
        """
        finished = self._finished
        assert finished is not None
        while finished:
            got = self._row_of_key.pop(ndpi_key(finished.popleft()), None)
            if got is None:
                continue
            row, first = got
            if row < self._seen.size and self._first_ns[row] == first \
                    and self._seen[row] < self.limit:
                self._seen[row] = self.limit
                self.closed += 1

    def _file(self, linktype: int) -> BinaryIO:
        got = self._files.get(linktype)
        if got is None:
            path = os.path.join(self.directory, f"first-packets-{linktype}.pcap")
            out = open(path, "xb")  # noqa: SIM115  # closed by close()
            out.write(_pcap_header(linktype))
            got = self._files[linktype] = (path, out)
        return got[1]

    def _sink(self, linktype: int) -> BinaryIO | None:
        return self._file(linktype)

    def _write(self, batch: PacketBatch, idx: I64, linktype: int) -> None:
        """Records for packets ``idx`` of ``batch``: headers built with numpy, data sliced.

        The one Python loop here runs per *kept* packet (at most ``limit`` per
        flow), slicing a memoryview: a vectorised gather of variable-length
        slices needs an 8-byte index per payload byte (or a mask over the
        whole batch span), which measured 10-30x slower on the 1M-packet capture.
        """
        start = batch.offsets[idx]
        incl = np.minimum(batch.caplens[idx].astype(np.int64), _SNAPLEN)
        ts = np.maximum(batch.timestamps_ns[idx], 0)
        head = np.empty(idx.size, dtype=_RECORD)
        head["sec"], head["nsec"] = ts // 1_000_000_000, ts % 1_000_000_000
        head["incl"], head["orig"] = incl, batch.wirelens[idx]
        heads = memoryview(head.tobytes())
        data = batch.data.data  # a memoryview of the (contiguous) batch buffer
        size = _RECORD.itemsize
        ends = (start + incl).tolist()
        parts: list[memoryview] = [heads] * (2 * idx.size)  # header, data, header, data...
        parts[::2] = [heads[k:k + size] for k in range(0, idx.size * size, size)]
        parts[1::2] = [data[a:b] for a, b in zip(start.tolist(), ends, strict=True)]
        sink = self._sink(linktype)
        if sink is not None:
            sink.writelines(parts)
            self.packets += int(idx.size)

    def close(self) -> list[str]:
        """Close the files; their paths, one per link type seen."""
        for _, out in self._files.values():
            out.close()
        return [path for path, _ in self._files.values()]


def _pcap_header(linktype: int) -> bytes:
    return struct.pack("<IHHiIII", _PCAP_NSEC_MAGIC, 2, 4, 0, 0, _SNAPLEN, linktype)


class _Meter(threading.Thread):
    """nDPI reading one FIFO until its writer closes it, in a child process.

    The child (``python .../_ndpi_meter.py``, which imports no more than
    nfstream's engine) runs nDPI's Python loop on its own GIL, on
    the other core; this thread reads its lines, hands each finished flow to
    ``on_flow`` (else keeps it in ``flows``) and each "records read" count to
    ``on_read``. The child ends at the end of the FIFO; its error, if any,
    is ``error``.
    """

    def __init__(self, path: str, limit: int, on_flow: Callable[[NdpiFlow], None] | None = None,
                 idle_ms: int = 0, on_read: Callable[[int], None] | None = None) -> None:
        super().__init__(name=f"portwatch-ndpi-{os.path.basename(path)}", daemon=True)
        self.path = path
        self.limit = limit
        self.on_flow = on_flow
        self.idle_ms = idle_ms
        self.on_read = on_read
        self.flows: list[NdpiFlow] = []
        self.error: BaseException | None = None
        self._child: subprocess.Popen[str] | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # handed to the analysing thread by LiveDetection.finish
            self.error = exc

    def _run(self) -> None:
        # the module's file, not ``-m``: the child imports nothing of portwatch at all
        with tempfile.TemporaryFile("w+") as errors, subprocess.Popen(
                [sys.executable, _ndpi_meter.__file__, self.path, str(self.limit),
                 str(self.idle_ms), "1" if self.on_read is not None else "0"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, text=True,
                start_new_session=True) as child:  # a terminal's ^C is the parent's alone
            self._child = child
            self._read_lines(child)
            status = child.wait()
            errors.seek(0)
            err = errors.read().strip()
        if status != 0:
            raise ValueError(err.splitlines()[-1] if err else
                             f"nDPI's meter exited with status {status}")

    def _read_lines(self, child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("R\t"):
                if self.on_read is not None:
                    self.on_read(int(line[2:]))
                continue
            flow = _flow_of_record(_parse_record(line))
            if flow is None:
                continue
            if self.on_flow is not None:
                self.on_flow(flow)
            else:
                self.flows.append(flow)

    def stop(self) -> None:
        """End the child now (its FIFO is closed or gone: nothing more to read)."""
        child = self._child
        if child is not None and child.poll() is None:
            child.terminate()


#: The FIFO's size: 64 KiB (Linux's default) holds about 120 full frames, so the
#: analysis and nDPI took turns every few hundred microseconds; 1 MiB lets each run
#: through most of a batch (and stays within the unprivileged pipe-max-size).
_PIPE_BYTES = 1 << 20


def _open_writer(path: str, meter: _Meter) -> BinaryIO:
    """The FIFO's writing end, once nDPI's thread opened the reading end (or died)."""
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            if not meter.is_alive():
                raise ValueError(str(meter.error or "nDPI stopped before reading")) from None
            time.sleep(0.001)
    os.set_blocking(fd, True)
    with contextlib.suppress(OSError, AttributeError):  # Linux only; a smaller pipe still works
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    return os.fdopen(fd, "wb", buffering=1 << 16)


class LiveDetection(FirstPackets):
    """``FirstPackets`` streamed through a FIFO to nDPI, which runs in a thread meanwhile.

    nDPI's C code runs without the GIL, so on two cores the detection costs
    little more than the longer of the two (the analysis, or nDPI on the
    first packets). The FIFO's 64 KiB buffer paces the analysis when nDPI
    falls behind; nothing reaches the disk. ``finish`` closes the streams and
    returns nDPI's flows and, per link type nDPI could not read, why.
    """

    def __init__(self, directory: str, limit: int = DEFAULT_PACKETS, *,
                 on_flow: Callable[[NdpiFlow], None] | None = None, idle_ms: int = 0,
                 waitable: bool = False) -> None:
        """``on_flow``/``idle_ms``: report each flow as soon as nDPI is done with it
        (``_meter_in_process``), from nDPI's thread, for a capture that never ends.
        ``waitable``: nDPI's thread says how far it has read, so that ``wait`` works
        (a little Python per packet read: off unless asked for)."""
        super().__init__(directory, limit)
        self.on_flow = on_flow
        self.idle_ms = idle_ms
        self._finished = deque()
        self._collected: list[NdpiFlow] = []
        # records each link type's nDPI thread has dealt with (``wait``), and their writes
        self._read: dict[int, int] = {}
        self._written: dict[int, int] = {}
        self._progress = threading.Condition()
        self.waitable = waitable
        self._meters: dict[int, _Meter] = {}
        self._sinks: dict[int, BinaryIO | None] = {}
        self._flows: list[NdpiFlow] | None = None
        self.errors: list[str] = []

    def _sink(self, linktype: int) -> BinaryIO | None:
        if linktype in self._sinks:
            return self._sinks[linktype]
        path = os.path.join(self.directory, f"first-packets-{linktype}.fifo")
        os.mkfifo(path, 0o600)
        meter = self._meters[linktype] = _Meter(
            path, self.limit, self._reported, self.idle_ms,
            functools.partial(self._dealt_with, linktype) if self.waitable else None)
        meter.start()
        sink: BinaryIO | None = None
        try:
            sink = _open_writer(path, meter)
            sink.write(_pcap_header(linktype))
        except (ValueError, BrokenPipeError) as exc:
            self.errors.append(f"link type {linktype}: {exc}")
            meter.stop()
            sink = None
        self._sinks[linktype] = sink
        return sink

    def _dealt_with(self, linktype: int, records: int) -> None:
        """nDPI's thread has read and dealt with ``records`` records of ``linktype``."""
        if records >= self._written.get(linktype, 0):  # someone may be waiting: wake them
            with self._progress:
                self._read[linktype] = records
                self._progress.notify_all()
        else:
            self._read[linktype] = records

    def wait(self, timeout: float = 5.0) -> bool:
        """Wait until nDPI has dealt with every packet written so far (its answers given).

        For a caller that wants nDPI's word on the packet it just added (the
        per-packet API); False if nDPI took longer than ``timeout`` seconds, or
        stopped. A stream's own pace needs no waiting: ``add`` never waits.
        """
        if not self.waitable:
            raise ValueError("LiveDetection.wait needs LiveDetection(..., waitable=True)")
        deadline = time.monotonic() + timeout
        with self._progress:
            while True:
                behind = [lt for lt, n in self._written.items() if self._read.get(lt, 0) < n
                          and self._meters[lt].is_alive() and self._sinks.get(lt) is not None]
                left = deadline - time.monotonic()
                if not behind:
                    return True
                if left <= 0:
                    return False
                self._progress.wait(min(left, 0.05))

    def _reported(self, flow: NdpiFlow) -> None:
        """nDPI is done with ``flow`` (called in nDPI's thread; deque appends are atomic)."""
        if self._finished is not None:
            self._finished.append(flow)
        if self.on_flow is not None:
            self.on_flow(flow)
        else:
            self._collected.append(flow)

    def _write(self, batch: PacketBatch, idx: I64, linktype: int) -> None:
        try:
            super()._write(batch, idx, linktype)
            sink = self._sinks.get(linktype)
            if sink is not None:
                sink.flush()  # a live capture may pause: nDPI reads each batch as it comes
                self._written[linktype] = self._written.get(linktype, 0) + int(idx.size)
        except BrokenPipeError:  # nDPI's thread stopped reading: its error says why
            sink = self._sinks.pop(linktype, None)
            with contextlib.suppress(OSError):
                if sink is not None:
                    sink.close()
            self._sinks[linktype] = None

    def close(self) -> list[str]:
        for sink in self._sinks.values():
            with contextlib.suppress(OSError):
                if sink is not None:
                    sink.close()
        return [m.path for m in self._meters.values()]

    def finish(self) -> list[NdpiFlow]:
        """Close the streams, wait for nDPI, and return its flows (``errors`` say what failed)."""
        if self._flows is None:
            self.close()
            self._flows = []
            for linktype, meter in self._meters.items():
                meter.join()
                if meter.error is not None:
                    self.errors.append(f"link type {linktype}: {meter.error}")
            self._flows = self._collected
            self._finished = None
        return self._flows


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


@contextlib.contextmanager
def live_detection(directory: str | None,
                   limit: int = DEFAULT_PACKETS) -> Iterator[LiveDetection]:
    """A ``LiveDetection`` with its FIFOs in a private directory; nDPI stopped on the way out."""
    private = tempfile.mkdtemp(prefix="portwatch-detect-", dir=directory)
    keeper = LiveDetection(private, limit)
    try:
        yield keeper
    finally:
        keeper.finish()
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


@functools.lru_cache(maxsize=1 << 16)
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

    nfstream's engine (its libpcap reader, flow meter and nDPI) is driven in
    this process, packet by packet, the way its meter process drives it:
    ``NFStreamer`` would fork a meter and pickle every flow (some 100 fields)
    through a queue, about 300 us a flow measured here, 15x the rest of the
    work. Tunnels are not decoded (portwatch counts the outer flow) and flows
    never time out (a file's flow is one flow). Should nfstream's engine
    change shape, ``NFStreamer`` itself is used instead.
    """
    require_ndpi()
    out: list[NdpiFlow] = []
    for path in paths:
        try:
            out += _meter_in_process(path, limit)
        except AttributeError:  # another nfstream than the 6.x this was written for
            out += _meter_by_streamer(path, limit)
    return out


#: Flows a live meter finished early, remembered so their later packets are ignored.
_DONE_KEYS = _ndpi_meter.DONE_KEYS


def _meter_in_process(path: str, limit: int, on_flow: Callable[[NdpiFlow], None] | None = None,
                      idle_ms: int = 0,
                      on_read: Callable[[int], None] | None = None) -> list[NdpiFlow]:
    """nDPI over the capture (or FIFO) at ``path`` in this process (``_ndpi_meter.meter``).

    Each flow goes to ``on_flow`` as soon as nDPI is done with it; without
    ``on_flow`` they are returned at the end of the input.
    """
    finished: list[NdpiFlow] = []
    report = finished.append if on_flow is None else on_flow

    def got(found: _ndpi_meter.Record) -> None:
        if (flow := _flow_of_record(found)) is not None:
            report(flow)

    _ndpi_meter.meter(path, limit, got, idle_ms, on_read)
    return finished


def _flow_of_record(found: _ndpi_meter.Record) -> NdpiFlow | None:
    protocol, src_ip, src_port, dst_ip, dst_port, first_ms, name, guessed, confidence = found
    transport = int(TRANSPORT_OF_PROTO[protocol & 0xFF])
    if transport == NO_TRANSPORT:
        return None
    return NdpiFlow(transport, (_address(src_ip), src_port), (_address(dst_ip), dst_port),
                    first_ms * 1_000_000, name, guessed, confidence)


def _parse_record(line: str) -> _ndpi_meter.Record:
    """A child meter's ``F`` line (tab-separated ``Record`` fields, after the ``F``)."""
    _, protocol, src_ip, src_port, dst_ip, dst_port, first_ms, name, guessed, confidence = \
        line.rstrip("\n").split("\t")
    return (int(protocol), src_ip, int(src_port), dst_ip, int(dst_port), int(first_ms), name,
            guessed == "True", int(confidence))


def _meter_by_streamer(path: str, limit: int) -> list[NdpiFlow]:
    """nfstream's public way: one forked meter, flows back through a queue.

    nfstream pins the calling process's CPUs and may print warnings: the
    affinity is restored and its prints go to standard error, never into a
    report.
    """
    from nfstream import NFStreamer

    out: list[NdpiFlow] = []
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        with contextlib.redirect_stdout(sys.stderr):
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


FlowKey = tuple[int, tuple[int, int], tuple[int, int]]


def ndpi_key(flow: NdpiFlow) -> FlowKey:
    """The direction-free 5-tuple of one of nDPI's flows (``flow_keys`` spells them alike)."""
    return _key(flow.transport, flow.a, flow.b)


def flow_keys(flows: FlowTable, rows: I64) -> list[FlowKey]:
    """The direction-free 5-tuple of each of ``rows`` of portwatch's flow table."""
    keys = flows.keys[rows]
    a_addr = [(h << 64) | lo for h, lo in zip(keys["ah"].tolist(), keys["al"].tolist(),
                                             strict=True)]
    b_addr = [(h << 64) | lo for h, lo in zip(keys["bh"].tolist(), keys["bl"].tolist(),
                                             strict=True)]
    return [_key(t, (a_addr[j], ap), (b_addr[j], bp)) for j, (t, ap, bp) in enumerate(
        zip(keys["t"].tolist(), keys["ap"].tolist(), keys["bp"].tolist(), strict=True))]


def match(ndpi: Sequence[NdpiFlow], flows: FlowTable,
          rows: I64) -> dict[int, FlowDetection]:
    """nDPI's answer for each of ``rows`` it saw, by 5-tuple, then by time.

    When several nDPI flows share a row's 5-tuple, the row takes the one
    whose start falls within it (else the closest start); of several answers
    for one row, a payload detection wins over a guess.
    """
    by_key: dict[FlowKey, list[int]] = {}
    for j, key in enumerate(flow_keys(flows, rows)):
        by_key.setdefault(key, []).append(j)
    first = flows.first_ns[rows].tolist()
    last = flows.last_ns[rows].tolist()
    row_list = rows.tolist()
    out: dict[int, FlowDetection] = {}
    for nf in ndpi:
        candidates = by_key.get(_key(nf.transport, nf.a, nf.b))
        if not candidates:
            continue
        if len(candidates) == 1:  # the usual case: a 5-tuple used once
            j = candidates[0]
        else:
            start = nf.first_ns
            j = min(candidates, key=lambda c: (not first[c] - 1_000_000 <= start <= last[c],
                                               abs(first[c] - start)))
        row = row_list[j]
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


#: A live flow nDPI has not finished with after this long without a packet (packet
#: time) is reported anyway: a live view gets its verdict without waiting for every
#: first packet (capped by the shortest flow idle timeout).
LIVE_IDLE_S = 10.0


class LiveJudge:
    """nDPI beside a live flow table that forgets flows (the daemon, ``top``).

    Runs ``LiveDetection`` in a private directory, keeps the row of each flow
    by its 5-tuple while the table holds it, and judges each flow nDPI
    reports against the registry under its row's decision at that moment.
    """

    def __init__(self, directory: str | None, packets: int, idle_s: float) -> None:
        require_ndpi()
        self.directory = tempfile.mkdtemp(prefix="portwatch-detect-", dir=directory)
        self._reported: deque[NdpiFlow] = deque()  # nDPI's thread appends, ``judged`` pops
        self.detector = LiveDetection(self.directory, packets, on_flow=self._reported.append,
                                      idle_ms=int(min(LIVE_IDLE_S, idle_s) * 1000))
        self._row_of_key: dict[FlowKey, int] = {}
        self._key_of_row: dict[int, FlowKey] = {}

    def add(self, batch: PacketBatch, decoded: DecodedBatch, flow_of_packet: I64,
            flows: FlowTable) -> None:
        """The first packets of each flow of ``batch``, to nDPI."""
        self.detector.add(batch, decoded, flow_of_packet, flows)

    def remember(self, flows: FlowTable, rows: I64) -> None:
        """New flow rows, so that nDPI's reports find them (one Python step per new flow)."""
        for row, key in zip(rows.tolist(), flow_keys(flows, rows), strict=True):
            self._row_of_key[key] = row
            self._key_of_row[row] = key

    def forget(self, rows: I64) -> None:
        """Rows the table ended (idle, too long, evicted): a later report on them is dropped."""
        if not self._key_of_row:
            return
        for row in rows.tolist():
            key = self._key_of_row.pop(row, None)
            if key is not None and self._row_of_key.get(key) == row:
                del self._row_of_key[key]

    def judged(self, flows: FlowTable,
               table: PortTable) -> Iterator[tuple[Verdict, FlowDetection, Detection]]:
        """Each flow nDPI reported since the last call, with its row's verdict and the judgement."""
        while self._reported:
            flow = self._reported.popleft()
            row = self._row_of_key.get(ndpi_key(flow))
            if row is None:  # forgotten meanwhile
                continue
            verdict = flows.decide(table, np.asarray([row], dtype=np.int64)).verdict(0, table)
            found = FlowDetection.of(flow)
            aliases = table.lookup(verdict.transport, verdict.service_port).aliases
            yield verdict, found, judge(found, verdict.service, aliases, verdict.status)

    def finish(self) -> None:
        """Let nDPI finish what it was given (still to be ``judged``) and remove its FIFOs."""
        try:
            self.detector.finish()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


_NOTHING = FlowDetection("", Confidence.NONE)


def detection_note(found: FlowDetection, verdict: Detection) -> str:
    """``[nDPI: ssh, mismatch]``, ``[nDPI: tls (port-guess), unconfirmed]``: for comments."""
    what = found.detected or "nothing"
    if found.confidence is Confidence.PORT_GUESS:
        what += " (port-guess)"
    return f"[nDPI: {what}, {verdict.label}]"


def annotation_comments(analyzer: Analyzer, found: Mapping[int, FlowDetection],
                        rows: I64) -> dict[int, tuple[str, bool]]:
    """Each row's annotated-copy comment with nDPI's verdict, and whether it is flagged.

    The verdict is worded by ``Verdict.summary`` like every other output; a
    mismatch adds its reason there (``... carries ssh``).
    """
    decisions = analyzer.decisions()
    table = analyzer.table
    out: dict[int, tuple[str, bool]] = {}
    for row in rows.tolist():
        verdict = decisions.verdict(row, table)
        got = found.get(row, _NOTHING)
        aliases = table.lookup(verdict.transport, verdict.service_port).aliases
        result = judge(got, verdict.service, aliases, verdict.status)
        flags = verdict.flags | (FlagReason.PROTOCOL_MISMATCH if result is Detection.MISMATCH
                                 else 0)
        verdict = replace(verdict, flags=FlagReason(flags), detected=got.detected)
        rule = verdict.rule.label if verdict.rule is not None else ""
        out[row] = (f"portwatch: {verdict.summary()} [{rule}] {detection_note(got, result)}",
                    verdict.flagged)
    return out
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
    unconfirmed = Detection.UNCONFIRMED.label
    for flow, row in zip(report.flows, row_list, strict=True):
        found = detections.get(row, _NOTHING)
        flow.detected = found.detected
        flow.confidence = found.confidence.label
        if found.confidence is not Confidence.PAYLOAD:  # judge's answer, without the lookup
            flow.detection = unconfirmed
            continue
        transport = _TRANSPORT_BY_LABEL[flow.transport]
        status = _STATUS_BY_LABEL[flow.status]
        aliases = table.lookup(transport, flow.service_port).aliases
        verdict = judge(found, flow.service, aliases, status)
        flow.detection = verdict.label
        if verdict is Detection.MISMATCH:
            mismatches += 1
            flow.flags.append(FlagReason.PROTOCOL_MISMATCH.label)
            flow.reasons.extend(reasons(flow.transport, flow.service_port,
                                        FlagReason.PROTOCOL_MISMATCH, service=flow.service,
                                        status=flow.status, detected=found.detected))
    return mismatches
