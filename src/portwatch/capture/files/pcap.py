"""Classic libpcap framing: file header, then ``(ts, incl_len, orig_len)`` records.

The framer walks record headers with one precompiled ``struct`` call per
record and remembers only where each record starts; every other field is
gathered afterwards with numpy from the batch's copied byte region. It never
builds a per-packet ``bytes``. It knows nothing about files: the caller
(``capture.files.reader``) owns buffering, mmap and streaming, and turns a
:class:`Stop` into an exception after handing over the good packets.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from portwatch.capture.batch import PacketBatch
from portwatch.capture.files._framing import (
    DEFAULT_BATCH_BYTES,
    Framed,
    Interface,
    RegionPool,
    Stop,
    copy_region,
    gather_words,
)
from portwatch.capture.files._run_predictor import RunPredictor, words_at
from portwatch.errors import CaptureFormatError

__all__ = [
    "MAGICS",
    "PcapFramer",
    "PcapHeader",
    "parse_header",
]

MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D
#: The four first-four-bytes of a classic pcap file, as they appear on disk.
MAGICS: frozenset[bytes] = frozenset(
    struct.pack(order + "I", magic) for order in "<>" for magic in (MAGIC_US, MAGIC_NS)
)

FILE_HEADER_LEN = 24
RECORD_HEADER_LEN = 16
#: Wireshark's largest snap length for ordinary link types; records bigger than
#: this (and bigger than the file's snaplen) are damage, not data.
DEFAULT_MAX_CAPLEN = 262144
#: Even if a header claims a larger snaplen, no single record is trusted beyond this.
HARD_MAX_CAPLEN = 1 << 26

_ARANGE16 = np.arange(RECORD_HEADER_LEN, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class PcapHeader:
    """The 24-byte libpcap file header, decoded."""

    byteorder: str  # "<" or ">"
    nanosecond: bool
    version: tuple[int, int]
    snaplen: int
    link_type: int
    fcs_len: int | None

    def interface(self) -> Interface:
        return Interface(
            link_type=self.link_type,
            snaplen=self.snaplen,
            tsresol=9 if self.nanosecond else 6,
            fcs_len=self.fcs_len,
        )


def parse_header(buf: bytes | bytearray | memoryview, path: str) -> PcapHeader:
    """Decode the file header; ``buf`` must hold at least 24 bytes."""
    magic = bytes(buf[:4])
    if magic not in MAGICS:
        raise CaptureFormatError(
            f"not a pcap file: magic {magic.hex()!r} is none of a1b2c3d4/a1b23c4d",
            path=path,
            offset=0,
        )
    order = "<" if struct.unpack_from("<I", buf, 0)[0] in (MAGIC_US, MAGIC_NS) else ">"
    (magic_value, major, minor, _zone, _sigfigs, snaplen, linkfield) = struct.unpack_from(
        order + "IHHiIII", buf, 0
    )
    if major != 2:
        raise CaptureFormatError(
            f"unsupported pcap version {major}.{minor} (expected 2.x)", path=path, offset=4
        )
    # Upper bits of the link type field: bit 28 says the next three give the FCS length.
    fcs_len = (linkfield >> 29) & 0x7 if linkfield & 0x10000000 else None
    return PcapHeader(
        byteorder=order,
        nanosecond=magic_value == MAGIC_NS,
        version=(major, minor),
        snaplen=snaplen,
        link_type=linkfield & 0xFFFF,
        fcs_len=fcs_len,
    )


class PcapFramer:
    """Frames classic pcap records after a parsed :class:`PcapHeader`."""

    format = "pcap"
    header_len = FILE_HEADER_LEN

    def __init__(self, header: PcapHeader) -> None:
        self.header = header
        self.interfaces: list[Interface] = [header.interface()]
        self._incl = struct.Struct(header.byteorder + "8xI")
        self._max_caplen = min(max(header.snaplen, DEFAULT_MAX_CAPLEN), HARD_MAX_CAPLEN)
        self._frac_ns = 1 if header.nanosecond else 1000
        self._u4 = np.dtype(header.byteorder + "u4")
        self._runs = RunPredictor()
        self._regions = RegionPool()  # batch buffers, reused once no batch holds them

    def frame(
        self,
        buf: bytes | bytearray | memoryview,
        pos: int,
        end: int,
        limit: int,
        max_bytes: int = DEFAULT_BATCH_BYTES,
    ) -> Framed:
        """Find up to ``limit`` whole records in ``buf[pos:end]``; never reads past ``end``.

        The records found span at most ``max_bytes`` of ``buf`` (headers included)
        unless the first one alone is bigger: a batch is bounded in bytes too.
        """
        positions: array[int] = array("q")
        append = positions.append
        unpack = self._incl.unpack_from
        max_caplen = self._max_caplen
        view: npt.NDArray[np.uint8] | None = None
        budget_end = pos + max_bytes
        previous = -1
        n = 0
        while n < limit:
            if end - pos < RECORD_HEADER_LEN:
                stop = Stop.END if pos == end else Stop.PARTIAL
                return Framed(positions, pos, stop)
            (incl,) = unpack(buf, pos)
            if incl > max_caplen:
                return Framed(
                    positions,
                    pos,
                    Stop.CORRUPT,
                    f"record claims {incl} captured bytes, more than the limit {max_caplen}",
                )
            nxt = pos + RECORD_HEADER_LEN + incl
            if nxt > end:
                return Framed(positions, pos, Stop.PARTIAL)
            if n and nxt > budget_end:
                break
            append(pos)
            pos = nxt
            n += 1
            if incl == previous:
                if view is None:
                    view = np.frombuffer(buf, dtype=np.uint8)
                taken = self._run(view, pos, min(end, budget_end), incl, limit - n)
                if taken:
                    stride = RECORD_HEADER_LEN + incl
                    positions.extend(range(pos, pos + taken * stride, stride))
                    pos += taken * stride
                    n += taken
            previous = incl
        return Framed(positions, pos, Stop.LIMIT)

    def _run(self, view: npt.NDArray[np.uint8], pos: int, end: int, incl: int, room: int) -> int:
        """How many records of ``incl`` captured bytes follow at ``pos``, checked at once."""
        stride = RECORD_HEADER_LEN + incl
        predictor = self._runs
        tried = predictor.budget(min(room, (end - pos) // stride))
        if tried < 2:
            return 0
        starts = pos + stride * np.arange(tried, dtype=np.int64)
        lengths = words_at(view, starts + 8, self._u4)
        wrong = np.flatnonzero(lengths != incl)
        got = tried if wrong.size == 0 else int(wrong[0])
        predictor.accepted(tried, got)
        return got

    def build(
        self,
        buf: bytes | bytearray | memoryview,
        start: int,
        framed: Framed,
        base: int,
    ) -> PacketBatch:
        """Turn framed records in ``buf[start:framed.end]`` into a batch.

        ``base`` is the file offset of ``buf[0]`` (non-zero when streaming).
        """
        first = int(framed.positions[0])
        region = copy_region(buf, first, framed.end, self._regions)
        pos = np.frombuffer(framed.positions, dtype=np.int64)
        rel = pos - first
        words = (
            framed.words
            if framed.words is not None
            else gather_words(region, rel, 4, self.header.byteorder)
        )
        n = rel.shape[0]
        ts = words[:, 0].astype(np.int64) * 1_000_000_000 + words[:, 1].astype(np.int64) * (
            self._frac_ns
        )
        return PacketBatch(
            data=region,
            offsets=rel + RECORD_HEADER_LEN,
            caplens=words[:, 2].copy(),
            wirelens=words[:, 3].copy(),
            timestamps_ns=ts,
            linktypes=np.full(n, self.header.link_type, dtype=np.uint16),
            interfaces=np.zeros(n, dtype=np.uint32),
            file_offsets=pos + base,
        )
