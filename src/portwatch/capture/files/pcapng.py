"""pcapng framing: sections, interfaces, enhanced and simple packet blocks.

Every block's total length is checked (at least 12, a multiple of 4, not
absurd, the leading copy equal to the trailing one) before it is trusted.
Blocks that carry no packets (name resolution, interface statistics, custom,
decryption secrets, ...) are skipped after that check. A batch never spans two
sections, so one byte order applies to a whole batch and the per-packet fields
can be gathered with numpy afterwards.

``PacketBatch.interfaces`` holds an index into :attr:`PcapngFramer.interfaces`,
which lists the interfaces of every section seen so far in file order (for a
single-section file that is the pcapng interface id itself). A batch is built
from its own section's interfaces only (a table per section), so the work per
section does not grow with the sections before it: 50,000 one-packet
sections once took 58 s because every batch rebuilt the link types of all
interfaces seen so far.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable, Iterator
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
    "BLOCK_SHB",
    "MAGIC",
    "NS_MAX",
    "PcapngFramer",
    "RawBlock",
    "exact_ns",
    "iter_raw_blocks",
    "max_ticks",
    "parse_options",
    "split_epb",
    "tsresol_to_ns",
]

BLOCK_SHB = 0x0A0D0D0A
BLOCK_IDB = 0x00000001
BLOCK_SPB = 0x00000003
BLOCK_EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
#: The first four bytes of every pcapng file (the SHB type is a palindrome).
MAGIC = b"\x0a\x0d\x0d\x0a"
#: No block we accept is larger than this; a bigger length is damage.
MAX_BLOCK_LEN = 16 * 1024 * 1024

OPT_ENDOFOPT = 0
OPT_COMMENT = 1
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9
IF_FCSLEN = 13
IF_TSOFFSET = 14

_KIND_EPB = 0
_KIND_SPB = 1


class _Damage(Exception):
    """Internal: a block's contents are inconsistent (turned into Stop.CORRUPT)."""


def parse_options(
    buf: bytes | bytearray | memoryview, pos: int, end: int, order: str
) -> list[tuple[int, bytes]]:
    """The ``(code, value)`` options in ``buf[pos:end]``; stops at opt_endofopt.

    Only used for the rare non-packet blocks (interfaces, section headers).
    """
    head = struct.Struct(order + "HH")
    out: list[tuple[int, bytes]] = []
    while end - pos >= 4:
        code, length = head.unpack_from(buf, pos)
        if code == OPT_ENDOFOPT:
            break
        value_end = pos + 4 + length
        if value_end > end:
            raise _Damage(f"option {code} claims {length} bytes, past the end of its block")
        out.append((code, bytes(buf[pos + 4 : value_end])))
        pos = value_end + (-length % 4)
    return out


#: Timestamps are int64 nanoseconds since 1970: they end at 2262-04-11T23:47:16.854775807Z.
NS_MAX = (1 << 63) - 1


def _unit(tsresol: int) -> int:
    """How many ticks make a second under ``if_tsresol``."""
    return 1 << (tsresol & 0x7F) if tsresol & 0x80 else 10 ** tsresol


def max_ticks(tsresol: int, tsoffset: int) -> int:
    """The largest tick count whose time (``tsoffset`` seconds added) fits in int64 ns.

    A record past it would wrap (to 1677 or 1969 instead of after 2262): it is
    refused, as the scapy engine refuses it, rather than misdated.
    """
    room = NS_MAX - tsoffset * 1_000_000_000
    if room < 0:
        return -1
    # floor(t * 1e9 / unit) <= room  <=>  t * 1e9 <= (room + 1) * unit - 1
    return min(((room + 1) * _unit(tsresol) - 1) // 1_000_000_000, (1 << 64) - 1)


def exact_ns(tsresol: int, tsoffset: int, ticks: int) -> int:
    """One timestamp in nanoseconds with Python integers (for messages)."""
    return ticks * 1_000_000_000 // _unit(tsresol) + tsoffset * 1_000_000_000


def tsresol_to_ns(tsresol: int, ticks: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    """Convert timestamps in ``if_tsresol`` units (uint64) to int64 nanoseconds."""
    if tsresol & 0x80:
        shift = tsresol & 0x7F
        if shift <= 34:
            whole = (ticks >> np.uint64(shift)).astype(np.int64) * 1_000_000_000
            frac = (ticks & np.uint64((1 << shift) - 1)) * np.uint64(1_000_000_000)
            return whole + (frac >> np.uint64(shift)).astype(np.int64)
        return (ticks.astype(np.float64) * (1e9 / 2.0**shift)).astype(np.int64)
    if tsresol <= 9:
        decimal: npt.NDArray[np.int64] = ticks.astype(np.int64) * (10 ** (9 - tsresol))
        return decimal
    scaled: npt.NDArray[np.int64] = (ticks // np.uint64(10 ** (tsresol - 9))).astype(np.int64)
    return scaled


class PcapngFramer:
    """Walks pcapng blocks; keeps the section and interface state between calls."""

    format = "pcapng"

    def __init__(self) -> None:
        self.interfaces: list[Interface] = []
        self.sections = 0
        self._order = "<"
        self._section_base = 0  # index in ``interfaces`` of this section's interface 0
        self._section_ifaces: list[Interface] = []  # this section's, by interface id
        self._section_links = array("H")
        self._runs = RunPredictor()
        self._regions = RegionPool()  # batch buffers, reused once no batch holds them
        self._set_order("<")

    def _set_order(self, order: str) -> None:
        self._order = order
        self._head = struct.Struct(order + "II")
        self._u32 = struct.Struct(order + "I")
        self._epb = struct.Struct(order + "8xI8xI")  # interface id, captured length
        self._fast = struct.Struct(order + "III8xI")  # type, length, interface, captured
        self._u4: np.dtype[np.uint32] = np.dtype(order + "u4")

    # -- the rare blocks ------------------------------------------------------

    def _section(self, buf: bytes | bytearray | memoryview, pos: int, end: int) -> int | None:
        """Start a new section at ``pos``; its length, or None if more bytes are needed."""
        if end - pos < 12:
            return None
        (bom,) = struct.unpack_from("<I", buf, pos + 8)
        if bom == BYTE_ORDER_MAGIC:
            order = "<"
        elif bom == 0x4D3C2B1A:
            order = ">"
        else:
            raise _Damage(f"section header byte-order magic is {bom:#010x}, not 0x1a2b3c4d")
        (length,) = struct.unpack_from(order + "I", buf, pos + 4)
        if length < 28 or length % 4 or length > MAX_BLOCK_LEN:
            raise _Damage(f"section header block claims a total length of {length}")
        if end - pos < length:
            return None
        (major,) = struct.unpack_from(order + "H", buf, pos + 12)
        if major != 1:
            raise _Damage(f"unsupported pcapng major version {major}")
        (trailer,) = struct.unpack_from(order + "I", buf, pos + length - 4)
        if trailer != length:
            raise _Damage(f"section header block length {length} but trailing copy {trailer}")
        self._set_order(order)
        self.sections += 1
        self._section_base = len(self.interfaces)
        self._section_ifaces = []
        self._section_links = array("H")
        return int(length)

    def _interface(self, buf: bytes | bytearray | memoryview, pos: int, length: int) -> None:
        if length < 20:
            raise _Damage(f"interface description block too short ({length} bytes)")
        link_type, _reserved, snaplen = struct.unpack_from(self._order + "HHI", buf, pos + 8)
        name = description = ""
        tsresol, tsoffset, fcs_len = 6, 0, None
        for code, value in parse_options(buf, pos + 16, pos + length - 4, self._order):
            if code == IF_NAME:
                name = value.decode("utf-8", "replace").rstrip("\0")
            elif code == IF_DESCRIPTION:
                description = value.decode("utf-8", "replace").rstrip("\0")
            elif code == IF_TSRESOL and value:
                tsresol = value[0]
            elif code == IF_TSOFFSET and len(value) == 8:
                (tsoffset,) = struct.unpack(self._order + "q", value)
            elif code == IF_FCSLEN and value:
                fcs_len = value[0]
        if tsresol > (0x80 | 63) or 19 < tsresol < 0x80:
            raise _Damage(f"interface timestamp resolution {tsresol:#x} is out of range")
        if abs(tsoffset) > 1 << 33:
            raise _Damage(f"interface timestamp offset {tsoffset} s is out of range")
        iface = Interface(
            link_type=link_type,
            snaplen=snaplen,
            name=name,
            tsresol=tsresol,
            tsoffset=tsoffset,
            description=description,
            fcs_len=fcs_len,
            section=self.sections - 1,
        )
        self.interfaces.append(iface)
        self._section_ifaces.append(iface)
        self._section_links.append(link_type)

    # -- framing ----------------------------------------------------------------

    def start(
        self, buf: bytes | bytearray | memoryview, pos: int, end: int, path: str
    ) -> int | None:
        """Read the first section header; bytes it took, or None if more are needed."""
        try:
            return self._section(buf, pos, end)
        except _Damage as exc:
            raise CaptureFormatError(f"not a pcapng file: {exc}", path=path, offset=0) from None

    def frame(
        self,
        buf: bytes | bytearray | memoryview,
        pos: int,
        end: int,
        limit: int,
        max_bytes: int = DEFAULT_BATCH_BYTES,
    ) -> Framed:
        """Find up to ``limit`` packet blocks in ``buf[pos:end]`` (one section at most).

        From the first packet block on, the blocks taken span at most
        ``max_bytes`` unless the first alone is bigger: blocks skipped between
        packets count too, as the batch copies them.
        """
        kinds = array("B")
        framed = self._frame(buf, pos, end, limit, max_bytes, kinds=kinds)
        framed.kinds = kinds
        return framed

    def _frame(
        self,
        buf: bytes | bytearray | memoryview,
        pos: int,
        end: int,
        limit: int,
        max_bytes: int,
        *,
        kinds: array[int],
    ) -> Framed:
        positions: array[int] = array("q")
        append, kind = positions.append, kinds.append
        head, u32, epb = self._head.unpack_from, self._u32.unpack_from, self._epb.unpack_from
        fast = self._fast.unpack_from
        nif = len(self.interfaces) - self._section_base
        view: npt.NDArray[np.uint8] | None = None
        previous = -1
        budget_end = end  # set by the first packet block: it may span max_bytes from there
        n = 0
        while n < limit:
            if end - pos < 8:
                return Framed(positions, pos, Stop.END if pos == end else Stop.PARTIAL)
            if end - pos >= 28:
                # Fast path for the common case, a sound EPB; anything else falls through
                # to the checks below, which also name what is wrong.
                btype, length, iface, caplen = fast(buf, pos)
                if (
                    btype == BLOCK_EPB
                    and 32 <= length <= end - pos
                    and length <= MAX_BLOCK_LEN
                    and not length % 4
                    and iface < nif
                    and caplen <= length - 32
                    and u32(buf, pos + length - 4)[0] == length
                ):
                    if not n:
                        budget_end = pos + max_bytes
                    elif pos + length > budget_end:
                        break
                    append(pos)
                    kind(_KIND_EPB)
                    n += 1
                    pos += length
                    if length == previous and n < limit:
                        if view is None:
                            view = np.frombuffer(buf, dtype=np.uint8)
                        stop_at = min(end, budget_end, pos + (limit - n) * length)
                        run = self._run(view, pos, stop_at, length, nif)
                        if run:
                            positions.extend(range(pos, pos + run * length, length))
                            kinds.extend(bytes([_KIND_EPB]) * run)
                            pos += run * length
                            n += run
                    previous = length
                    continue
            btype, length = head(buf, pos)
            if btype == BLOCK_SHB:
                if n:  # a new section may change byte order: end this batch first
                    return Framed(positions, pos, Stop.LIMIT)
                try:
                    taken = self._section(buf, pos, end)
                except _Damage as exc:
                    return Framed(positions, pos, Stop.CORRUPT, str(exc))
                if taken is None:
                    return Framed(positions, pos, Stop.PARTIAL)
                pos += taken
                head, u32 = self._head.unpack_from, self._u32.unpack_from
                epb, fast = self._epb.unpack_from, self._fast.unpack_from
                nif = 0
                continue
            if length < 12 or length % 4 or length > MAX_BLOCK_LEN:
                return Framed(
                    positions, pos, Stop.CORRUPT, f"block of type {btype:#x} claims length {length}"
                )
            if end - pos < length:
                return Framed(positions, pos, Stop.PARTIAL)
            if n and pos + length > budget_end:
                break
            (trailer,) = u32(buf, pos + length - 4)
            if trailer != length:
                return Framed(
                    positions,
                    pos,
                    Stop.CORRUPT,
                    f"block of type {btype:#x} has length {length} but trailing copy {trailer}",
                )
            if btype == BLOCK_EPB:
                if length < 32:
                    msg = f"packet block too short ({length})"
                    return Framed(positions, pos, Stop.CORRUPT, msg)
                iface, caplen = epb(buf, pos)
                if iface >= nif or caplen > length - 32:
                    return Framed(
                        positions,
                        pos,
                        Stop.CORRUPT,
                        f"packet block names interface {iface} of {nif}"
                        if iface >= nif
                        else f"packet block claims {caplen} bytes in a {length}-byte block",
                    )
                if not n:
                    budget_end = pos + max_bytes
                append(pos)
                kind(_KIND_EPB)
                n += 1
            elif btype == BLOCK_SPB:
                if length < 16 or nif == 0:
                    return Framed(
                        positions, pos, Stop.CORRUPT, "simple packet block without an interface"
                    )
                if not n:
                    budget_end = pos + max_bytes
                append(pos)
                kind(_KIND_SPB)
                n += 1
            elif btype == BLOCK_IDB:
                try:
                    self._interface(buf, pos, length)
                except _Damage as exc:
                    return Framed(positions, pos, Stop.CORRUPT, str(exc))
                nif += 1
            pos += length
        return Framed(positions, pos, Stop.LIMIT)

    def _run(self, view: npt.NDArray[np.uint8], pos: int, end: int, length: int, nif: int) -> int:
        """How many sound EPBs of ``length`` bytes follow at ``pos``, checked at once.

        The checks are the fast path's, applied to every predicted block.
        """
        tried = self._runs.budget((end - pos) // length)
        if tried < 2:
            return 0
        starts = pos + length * np.arange(tried, dtype=np.int64)
        ok = words_at(view, starts, self._u4) == BLOCK_EPB
        ok &= words_at(view, starts + 4, self._u4) == length
        ok &= words_at(view, starts + length - 4, self._u4) == length
        ok &= words_at(view, starts + 8, self._u4) < nif
        ok &= words_at(view, starts + 20, self._u4) <= length - 32
        wrong = np.flatnonzero(~ok)
        got = tried if wrong.size == 0 else int(wrong[0])
        self._runs.accepted(tried, got)
        return got

    def build(
        self,
        buf: bytes | bytearray | memoryview,
        start: int,
        framed: Framed,
        base: int,
    ) -> PacketBatch:
        """Turn framed blocks in ``buf[start:framed.end]`` into a batch.

        Only the bytes from the first packet block on are copied: blocks
        skipped before it (interfaces, statistics) are not the batch's.
        """
        first = int(framed.positions[0])
        region = copy_region(buf, first, framed.end, self._regions)
        pos = np.frombuffer(framed.positions, dtype=np.int64)
        assert framed.kinds is not None
        is_spb = np.frombuffer(framed.kinds, dtype=np.uint8) == _KIND_SPB
        rel = pos - first
        # EPB: type, length, interface, ts high, ts low, captured, original
        words = (
            framed.words if framed.words is not None else gather_words(region, rel, 7, self._order)
        )
        local = np.where(is_spb, 0, words[:, 2]).astype(np.int64)
        table = self._section_ifaces
        caplens = words[:, 5].copy()
        wirelens = words[:, 6].copy()
        offsets = rel + 28
        ticks = (words[:, 3].astype(np.uint64) << np.uint64(32)) | words[:, 4].astype(np.uint64)
        ts = np.zeros(pos.shape[0], dtype=np.int64)
        late = np.zeros(pos.shape[0], dtype=np.bool_)
        # bincount, not np.unique: unique imports numpy.ma (tens of ms of start-up)
        for idx in np.flatnonzero(np.bincount(local[~is_spb])).tolist():
            sel = (local == idx) & ~is_spb
            iface = table[idx]
            late |= sel & (ticks > np.uint64(max(max_ticks(iface.tsresol, iface.tsoffset), 0)))
            ts[sel] = tsresol_to_ns(iface.tsresol, ticks[sel]) + iface.tsoffset * 1_000_000_000
        if is_spb.any():
            # SPB: type, length, original length, data. No timestamp: it stays 0.
            snap = table[0].snaplen or 0xFFFFFFFF
            orig = words[is_spb, 2]
            room = words[is_spb, 1].astype(np.int64) - 16
            caplens[is_spb] = np.minimum(np.minimum(orig.astype(np.int64), room), snap)
            wirelens[is_spb] = orig
            offsets[is_spb] = rel[is_spb] + 12
        batch = PacketBatch(
            data=region,
            offsets=offsets,
            caplens=caplens,
            wirelens=wirelens,
            timestamps_ns=ts,
            # a transient view: the array may grow again once this returns
            linktypes=np.frombuffer(self._section_links, dtype=np.uint16)[local],
            interfaces=(local + self._section_base).astype(np.uint32),
            file_offsets=pos + base,
        )
        if late.any():
            batch = self._refuse_from(batch, framed, int(np.flatnonzero(late)[0]), ticks, local)
        return batch

    def _refuse_from(
        self,
        batch: PacketBatch,
        framed: Framed,
        bad: int,
        ticks: npt.NDArray[np.uint64],
        local: npt.NDArray[np.int64],
    ) -> PacketBatch:
        """Keep the records before ``bad``; the framing now stops, damaged, at ``bad``."""
        iface = self._section_ifaces[int(local[bad])]
        stamp = exact_ns(iface.tsresol, iface.tsoffset, int(ticks[bad]))
        framed.end = int(framed.positions[bad])
        framed.stop = Stop.CORRUPT
        framed.message = (
            f"record timestamp {stamp} ns is out of range "
            "(64-bit nanoseconds end in April 2262)"
        )
        return batch.slice(0, bad)


# -- raw blocks, for copies that keep what the framer skips ---------------------

#: Custom blocks that a rewriter must not copy into a new file (pcapng spec, 4.8).
BLOCK_CUSTOM_NOCOPY = 0x40000BAD


@dataclass(frozen=True, slots=True)
class RawBlock:
    """One block exactly as stored: ``data`` runs from its type to its trailing length.

    ``order`` is its section's byte order (``"<"`` or ``">"``); ``offset`` is
    where it starts in the (decompressed) file.
    """

    offset: int
    btype: int
    order: str
    data: bytes

    @property
    def is_packet(self) -> bool:
        return self.btype in (BLOCK_EPB, BLOCK_SPB)


def iter_raw_blocks(read: Callable[[int], bytes], chunk: int = 1 << 20) -> Iterator[RawBlock]:
    """Every block of a pcapng stream in file order, bytes untouched.

    A separate walk from :class:`PcapngFramer` (which skips the blocks it does
    not interpret): a copy that must lose nothing needs name resolution,
    decryption secrets, statistics and custom blocks as they were. A block
    is yielded only after the checks the framer makes on every block (length
    at least 12, a multiple of 4, at most 16 MiB, trailing copy equal); the
    walk ends quietly at the first one that fails them or is cut short: the
    reader reports that damage.
    """
    buf = bytearray()
    pos = base = 0
    order = "<"
    eof = False

    def need(count: int) -> bool:
        nonlocal buf, pos, base, eof
        while len(buf) - pos < count and not eof:
            data = read(chunk)
            if not data:
                eof = True
                break
            if pos:
                del buf[:pos]
                base += pos
                pos = 0
            buf += data
        return len(buf) - pos >= count

    while need(12):
        (btype,) = struct.unpack_from("<I", buf, pos)
        if btype == BLOCK_SHB:
            (bom,) = struct.unpack_from("<I", buf, pos + 8)
            if bom == BYTE_ORDER_MAGIC:
                order = "<"
            elif bom == 0x4D3C2B1A:
                order = ">"
            else:
                return
        else:
            (btype,) = struct.unpack_from(order + "I", buf, pos)
        (length,) = struct.unpack_from(order + "I", buf, pos + 4)
        if length < 12 or length % 4 or length > MAX_BLOCK_LEN or not need(length):
            return
        if struct.unpack_from(order + "I", buf, pos + length - 4)[0] != length:
            return
        yield RawBlock(base + pos, btype, order, bytes(buf[pos : pos + length]))
        pos += length


def split_epb(block: RawBlock) -> tuple[int, int, int | None] | None:
    """``(captured length, data end, options end)`` of an Enhanced Packet Block.

    ``data end`` is where its options start (after the padded packet data);
    ``options end`` is where a new option goes: before ``opt_endofopt`` when
    the options end with one, else before the trailing length; None when the
    options do not parse. The whole result is None when the packet data
    overruns the block (the framer refuses such blocks).
    """
    raw = block.data
    (caplen,) = struct.unpack_from(block.order + "I", raw, 20)
    data_end = 28 + caplen + (-caplen % 4)
    end = len(raw) - 4
    if data_end > end:
        return None
    head = struct.Struct(block.order + "HH")
    at = data_end
    while end - at >= 4:
        code, length = head.unpack_from(raw, at)
        if code == OPT_ENDOFOPT:
            return caplen, data_end, at
        at += 4 + length + (-length % 4)
    return caplen, data_end, at if at == end else None
