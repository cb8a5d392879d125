"""Write annotated copies of captures as pcapng, one comment per packet.

``PcapngWriter`` writes a Section Header Block, one Interface Description
Block per source interface (link type, snaplen, name, ``if_tsresol`` copied so
timestamps keep their precision) and an Enhanced Packet Block per packet with
an ``opt_comment`` when the packet has one; Wireshark shows it as
``frame.comment``. Block headers of a whole batch are laid out with numpy in
one pass; only packet payloads and comments are copied one by one, straight
between buffers.

The CLI writes through ``portwatch._atomic.atomic_output``, so an annotated
copy is either complete or absent.

Whatever the source held, the copy is one that readers accept: an option
value longer than 65,535 bytes (an interface name of invalid UTF-8 grows by
half when its bytes become replacement characters) is cut on a character
boundary, and packet data longer than :data:`MAX_WRITE_CAPLEN` (Wireshark's
262,144-byte limit: tshark refuses ``cap_len`` beyond it, and portwatch's
own pcapng reader refuses blocks over 16 MiB) is cut with its original
length kept. Each cut is reported in :attr:`PcapngWriter.warnings`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from portwatch.capture.batch import PacketBatch
from portwatch.capture.files._framing import Interface
from portwatch.capture.files.pcap import DEFAULT_MAX_CAPLEN
from portwatch.capture.files.pcapng import (
    BLOCK_CUSTOM_NOCOPY,
    BLOCK_EPB,
    BLOCK_IDB,
    BLOCK_SHB,
    BYTE_ORDER_MAGIC,
    IF_DESCRIPTION,
    IF_FCSLEN,
    IF_NAME,
    IF_TSOFFSET,
    IF_TSRESOL,
    OPT_COMMENT,
    RawBlock,
    split_epb,
)

__all__ = [
    "MAX_OPTION_LEN",
    "MAX_WRITE_CAPLEN",
    "WRITE_BYTES",
    "WRITE_PACKETS",
    "PcapngCopyWriter",
    "PcapngWriter",
    "ns_to_ticks",
]

#: Packets laid out per write: bounds the writer's buffer (about 9 MB of 500-byte packets).
WRITE_PACKETS = 16_384
#: Bytes laid out per write (at least one packet): big packets must not multiply it.
WRITE_BYTES = 16 << 20
#: Packet bytes written per packet at most: tshark refuses a larger ``cap_len``
#: ("pcapng: cap_len 262145 is larger than 262144") for the link types portwatch reads.
MAX_WRITE_CAPLEN = DEFAULT_MAX_CAPLEN
#: An option's length field is 16 bits.
MAX_OPTION_LEN = 0xFFFF

SHB_USERAPPL = 4
_OPT = struct.Struct("<HH")
_BLOCK_HEAD = struct.Struct("<II")
_EPB_HEAD_WORDS = 7


def _pad(n: int) -> int:
    return -n % 4


def _option(code: int, value: bytes) -> bytes:
    return _OPT.pack(code, len(value)) + value + b"\0" * _pad(len(value))


def _utf8(text: str, limit: int = MAX_OPTION_LEN) -> tuple[bytes, int]:
    """``text`` as UTF-8 cut to ``limit`` bytes on a character boundary; and its full length.

    Lone surrogates (from ``surrogateescape`` decoding) become ``?`` rather than raise.
    """
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return raw, len(raw)
    return raw[:limit].decode("utf-8", "ignore").encode("utf-8"), len(raw)


def _block(btype: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return _BLOCK_HEAD.pack(btype, length) + body + struct.pack("<I", length)


def ns_to_ticks(tsresol: int, ns: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    """Nanoseconds to ``if_tsresol`` units (the inverse of ``pcapng.tsresol_to_ns``).

    Binary resolutions round up: the reader floors ``ticks * 1e9 / 2**shift``,
    so the smallest tick count at or above ``ns`` reads back as ``ns`` again
    (rounding down lost up to a nanosecond per copy, found by the fuzzer).
    """
    ns_u = ns.astype(np.uint64)
    billion = np.uint64(1_000_000_000)
    if tsresol & 0x80 and tsresol & 0x7F > 34:
        # as the reader does: through float64 (whole seconds shifted this far overflow uint64)
        scaled = np.ceil(ns.astype(np.float64) * (2.0 ** (tsresol & 0x7F) / 1e9))
        return np.minimum(scaled, 2.0**64 - 2048).astype(np.uint64)
    if tsresol & 0x80:
        shift = np.uint64(tsresol & 0x7F)
        ticks: npt.NDArray[np.uint64] = ((ns_u // billion) << shift) + (
            ((ns_u % billion) << shift) + billion - np.uint64(1)
        ) // billion
        return ticks
    if tsresol <= 9:
        return ns_u // np.uint64(10 ** (9 - tsresol))
    return ns_u * np.uint64(10 ** (tsresol - 9))


class PcapngWriter:
    """Writes one little-endian pcapng section to ``fileobj``.

    Interfaces are numbered in the order added; ``PacketBatch.interfaces``
    must index them (as a reader's batches index ``reader.interfaces``).
    """

    def __init__(
        self,
        fileobj: BinaryIO,
        interfaces: Sequence[Interface] = (),
        *,
        application: str = "portwatch",
    ) -> None:
        self._out = fileobj
        self._interfaces: list[Interface] = []
        self._notes: list[str] = []
        self._cut_packets = 0
        self._first_cut: tuple[int, int] | None = None  # (source file offset, captured length)
        body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
        body += _option(SHB_USERAPPL, self._text("application name", application))
        body += b"\0\0\0\0"
        self._out.write(_block(BLOCK_SHB, body))
        for iface in interfaces:
            self.add_interface(iface)

    @property
    def interfaces(self) -> list[Interface]:
        return list(self._interfaces)

    @property
    def warnings(self) -> list[str]:
        """What the copy holds differently from the source, one line each."""
        out = list(self._notes)
        if self._first_cut is not None:
            at, caplen = self._first_cut
            more = f" ({self._cut_packets - 1:,} more after it)" if self._cut_packets > 1 else ""
            out.append(
                f"packet data longer than {MAX_WRITE_CAPLEN:,} bytes is cut to that in the "
                f"copy, original length kept: the record at byte {at} of the source holds "
                f"{caplen:,}{more}"
            )
        return out

    def _text(self, what: str, text: str) -> bytes:
        raw, full = _utf8(text)
        if full > len(raw):
            self._notes.append(
                f"{what} is {full:,} bytes in UTF-8, more than a pcapng option holds: "
                f"cut to {len(raw):,}"
            )
        return raw

    def add_interface(self, iface: Interface) -> int:
        """Write an Interface Description Block; returns its interface id."""
        opts = b""
        which = f"interface {len(self._interfaces)}"
        if iface.name:
            opts += _option(IF_NAME, self._text(f"{which} name", iface.name))
        if iface.description:
            opts += _option(IF_DESCRIPTION, self._text(f"{which} description", iface.description))
        if iface.tsresol != 6:
            opts += _option(IF_TSRESOL, bytes([iface.tsresol]))
        if iface.tsoffset:
            opts += _option(IF_TSOFFSET, struct.pack("<q", iface.tsoffset))
        if iface.fcs_len is not None:
            opts += _option(IF_FCSLEN, bytes([iface.fcs_len]))
        if opts:
            opts += b"\0\0\0\0"
        body = struct.pack("<HHI", iface.link_type, 0, iface.snaplen) + opts
        self._out.write(_block(BLOCK_IDB, body))
        self._interfaces.append(iface)
        return len(self._interfaces) - 1

    def sync_interfaces(self, interfaces: Sequence[Interface]) -> None:
        """Add the interfaces of ``interfaces`` not written yet (a reader's list grows)."""
        for iface in interfaces[len(self._interfaces) :]:
            self.add_interface(iface)

    def write_batch(self, batch: PacketBatch, comments: Sequence[str | None] | None = None) -> None:
        """Write every packet of ``batch``; ``comments[i]`` (None or "" for none) per packet.

        Blocks are laid out at most ``WRITE_PACKETS`` packets and about
        ``WRITE_BYTES`` bytes at a time (always at least one packet), so the
        buffer for one write stays a few MB whatever the batch (peak RSS of
        annotating a 1M-packet capture: 204 MB in whole 65,536-packet batches).
        """
        n = len(batch)
        if comments is not None and len(comments) != n:
            raise ValueError(f"{len(comments)} comments for {n} packets")
        if n == 0:
            return
        ifaces = batch.interfaces.astype(np.int64)
        if int(ifaces.max()) >= len(self._interfaces):
            raise ValueError(
                f"packet names interface {int(ifaces.max())}; only {len(self._interfaces)} written"
            )
        encoded = [self._comment(c) for c in comments] if comments is not None else [b""] * n
        clen = np.fromiter((len(c) for c in encoded), dtype=np.int64, count=n)
        cap = self._caplens(batch)
        sizes = 32 + cap + (-cap % 4) + np.where(clen > 0, 8 + clen + (-clen % 4), 0)
        ends = np.cumsum(sizes)
        lo = 0
        while lo < n:
            base = int(ends[lo - 1]) if lo else 0
            hi = int(np.searchsorted(ends, base + WRITE_BYTES, side="right"))
            hi = min(max(hi, lo + 1), lo + WRITE_PACKETS, n)
            self._write_part(batch.slice(lo, hi), cap[lo:hi], encoded[lo:hi], clen[lo:hi])
            lo = hi

    def _comment(self, text: str | None) -> bytes:
        if not text:
            return b""
        return self._text("a packet comment", text)

    def _caplens(self, batch: PacketBatch) -> npt.NDArray[np.int64]:
        """Captured lengths to write: at most ``MAX_WRITE_CAPLEN``; cuts are counted."""
        cap = batch.caplens.astype(np.int64)
        over = np.flatnonzero(cap > MAX_WRITE_CAPLEN)
        if over.size:
            if self._first_cut is None:
                first = int(over[0])
                self._first_cut = (int(batch.file_offsets[first]), int(cap[first]))
            self._cut_packets += int(over.size)
            cap = np.minimum(cap, MAX_WRITE_CAPLEN)
        return cap

    def _write_part(
        self,
        batch: PacketBatch,
        cap: npt.NDArray[np.int64],
        encoded: Sequence[bytes],
        clen: npt.NDArray[np.int64],
    ) -> None:
        n = len(batch)
        ifaces = batch.interfaces.astype(np.int64)
        data_end = 28 + cap + (-cap % 4)
        opt_len = np.where(clen > 0, 8 + clen + (-clen % 4), 0)
        block = data_end + opt_len + 4
        starts = np.zeros(n, dtype=np.int64)
        np.cumsum(block[:-1], out=starts[1:])
        out = np.zeros(int(starts[-1] + block[-1]), dtype=np.uint8)
        words = out.view("<u4")
        w = starts // 4
        words[w] = BLOCK_EPB
        words[w + 1] = block
        words[w + 2] = ifaces
        ticks = self._ticks(batch.timestamps_ns, ifaces)
        words[w + 3] = (ticks >> np.uint64(32)).astype(np.uint32)
        words[w + 4] = (ticks & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        words[w + 5] = cap
        words[w + 6] = batch.wirelens
        words[(starts + block) // 4 - 1] = block
        has = np.flatnonzero(clen)
        halves = out.view("<u2")
        opt_at = (starts + data_end)[has]
        halves[opt_at // 2] = OPT_COMMENT
        halves[opt_at // 2 + 1] = clen[has]
        dst = memoryview(out)  # type: ignore[arg-type]
        src = memoryview(batch.data)  # type: ignore[arg-type]
        for d, s, c in zip(
            (starts + 28).tolist(), batch.offsets.tolist(), cap.tolist(), strict=True
        ):
            dst[d : d + c] = src[s : s + c]
        for i, at in zip(has.tolist(), opt_at.tolist(), strict=True):
            text = encoded[i]
            dst[at + 4 : at + 4 + len(text)] = text
        self._out.write(dst)

    def _ticks(
        self, ns: npt.NDArray[np.int64], ifaces: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.uint64]:
        ticks = np.zeros(ns.shape[0], dtype=np.uint64)
        for idx in np.unique(ifaces).tolist():
            sel = ifaces == idx
            iface = self._interfaces[idx]
            ticks[sel] = ns_to_ticks(iface.tsresol, ns[sel] - iface.tsoffset * 1_000_000_000)
        return ticks


class PcapngCopyWriter:
    """A pcapng copy that keeps every block, adding a comment beside a packet's own.

    The source's blocks are written as they were, in their section's byte
    order: section headers (and their comments), interfaces, name resolution,
    decryption secrets, interface statistics, custom blocks, and each Enhanced
    Packet Block's options (its comments, flags, hashes ...). Three changes,
    each one the format asks for or a reader needs:

    - a section header's section length becomes -1 (unknown): comments make
      the section longer than it said;
    - custom blocks of type 0x40000BAD ("must not be copied") are left out;
    - packet data past :data:`MAX_WRITE_CAPLEN` is cut, as :class:`PcapngWriter` cuts it.

    A Simple Packet Block cannot carry options: it is copied without a comment.
    What was changed or left out is counted in :attr:`warnings`.
    """

    def __init__(self, fileobj: BinaryIO) -> None:
        self._out = fileobj
        self._long_comments = 0
        self._nocopy = 0
        self._spb_uncommented = 0
        self._cut_packets = 0
        self._first_cut: tuple[int, int] | None = None
        self.packets = 0

    @property
    def warnings(self) -> list[str]:
        out: list[str] = []
        if self._long_comments:
            out.append(f"{self._long_comments:,} packet comment(s) longer than a pcapng "
                       f"option holds ({MAX_OPTION_LEN:,} bytes of UTF-8): cut")
        if self._nocopy:
            out.append(f"{self._nocopy:,} custom block(s) marked 'do not copy' (0x40000BAD) "
                       "left out of the copy")
        if self._spb_uncommented:
            out.append(f"{self._spb_uncommented:,} simple packet block(s) cannot carry a "
                       "comment: copied without one")
        if self._first_cut is not None:
            at, caplen = self._first_cut
            more = f" ({self._cut_packets - 1:,} more after it)" if self._cut_packets > 1 else ""
            out.append(
                f"packet data longer than {MAX_WRITE_CAPLEN:,} bytes is cut to that in the "
                f"copy, original length kept: the record at byte {at} of the source holds "
                f"{caplen:,}{more}"
            )
        return out

    def copy(self, block: RawBlock) -> None:
        """Write a block that carries no packet as it was (see the class for the exceptions)."""
        if block.btype == BLOCK_SHB:
            data = bytearray(block.data)
            struct.pack_into(block.order + "q", data, 16, -1)
            self._out.write(data)
        elif block.btype == BLOCK_CUSTOM_NOCOPY:
            self._nocopy += 1
        else:
            self._out.write(block.data)

    def packet(self, block: RawBlock, comment: str | None) -> None:
        """Write a packet block, with ``comment`` (if any) after its existing options."""
        self.packets += 1
        if block.btype != BLOCK_EPB:
            self._spb_uncommented += bool(comment)
            self._out.write(block.data)
            return
        parts = split_epb(block)
        if parts is None:  # the framer refuses such a block; never reached from a reader
            raise ValueError(f"enhanced packet block at byte {block.offset} overruns itself")
        caplen, data_end, opts_end = parts
        raw = block.data
        if not comment and caplen <= MAX_WRITE_CAPLEN:
            self._out.write(raw)
            return
        order = block.order
        if opts_end is None:  # options that do not parse: ours first, theirs kept after
            opts_end = data_end
        keep = caplen
        if caplen > MAX_WRITE_CAPLEN:
            keep = MAX_WRITE_CAPLEN
            if self._first_cut is None:
                self._first_cut = (block.offset, caplen)
            self._cut_packets += 1
        text, full = _utf8(comment) if comment else (b"", 0)
        self._long_comments += full > len(text)
        new_opt = (
            struct.pack(order + "HH", OPT_COMMENT, len(text)) + text + b"\0" * _pad(len(text))
            if text
            else b""
        )
        body = b"".join((
            raw[8:20],
            struct.pack(order + "I", keep),
            raw[24:28],
            raw[28 : 28 + keep],
            b"\0" * _pad(keep),
            raw[data_end:opts_end],
            new_opt,
            raw[opts_end:-4],
        ))
        length = 12 + len(body)
        head = struct.pack(order + "II", BLOCK_EPB, length)
        self._out.write(head + body + struct.pack(order + "I", length))
