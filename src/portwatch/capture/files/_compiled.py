"""The numpy framers with their record walk done by the compiled ``_core`` extension.

``CompiledPcapFramer`` and ``CompiledPcapngFramer`` answer exactly what
:class:`PcapFramer` and :class:`PcapngFramer` answer (the same records, stop
position, reason and message; ``tests/capture/test_core.py`` proves it on
every sample, damaged, fuzzed and generated capture). The walk fills the
header words of every record as it goes, so building a batch needs no gather.
Section headers and interface descriptions stay in Python (the numpy
framer's own parsing): they are rare, and they change the framing state.

Importing this module raises ``ImportError`` when the extension was not
built; ``reader.py`` then uses the numpy framers.
"""

from __future__ import annotations

import numpy as np

from portwatch.capture.files import _core
from portwatch.capture.files._framing import DEFAULT_BATCH_BYTES, Framed, Stop
from portwatch.capture.files.pcap import RECORD_HEADER_LEN, PcapFramer, PcapHeader
from portwatch.capture.files.pcapng import PcapngFramer, _Damage

__all__ = ["CompiledPcapFramer", "CompiledPcapngFramer"]

_STOPS = {_core.LIMIT: Stop.LIMIT, _core.END: Stop.END, _core.PARTIAL: Stop.PARTIAL}
#: Positions are kept below this so ``pos + max_bytes`` cannot overflow in C.
_MAX_SPAN = 1 << 62


def _rows(limit: int, pos: int, end: int, max_bytes: int, smallest: int) -> int:
    """Rows a walk can fill: records of at least ``smallest`` bytes in the span and budget.

    Capping ``limit`` by this never changes the answer (the walk runs out of
    bytes or budget first) and keeps the arrays small when ``limit`` is huge.
    """
    return max(0, min(limit, (end - pos) // smallest + 1, max_bytes // smallest + 2))


class CompiledPcapFramer(PcapFramer):
    """Classic pcap framed by ``_core.frame_pcap``."""

    def __init__(self, header: PcapHeader) -> None:
        super().__init__(header)
        self._big = header.byteorder == ">"

    def frame(
        self,
        buf: bytes | bytearray | memoryview,
        pos: int,
        end: int,
        limit: int,
        max_bytes: int = DEFAULT_BATCH_BYTES,
    ) -> Framed:
        max_bytes = min(max_bytes, _MAX_SPAN)
        rows = _rows(limit, pos, end, max_bytes, RECORD_HEADER_LEN)
        positions = np.empty(rows, dtype=np.int64)
        words = np.empty(4 * rows, dtype=np.uint32)
        n, pos, stop, incl = _core.frame_pcap(
            buf, pos, end, rows, max_bytes, self._max_caplen, self._big, positions, words
        )
        framed = Framed(positions[:n], pos, _STOPS.get(stop, Stop.CORRUPT))
        if stop == _core.CORRUPT:
            framed.message = (
                f"record claims {incl} captured bytes, more than the limit {self._max_caplen}"
            )
        framed.words = words[: 4 * n].reshape(n, 4)
        return framed


class CompiledPcapngFramer(PcapngFramer):
    """pcapng framed by ``_core.frame_pcapng``; sections and interfaces parsed in Python."""

    def frame(
        self,
        buf: bytes | bytearray | memoryview,
        pos: int,
        end: int,
        limit: int,
        max_bytes: int = DEFAULT_BATCH_BYTES,
    ) -> Framed:
        max_bytes = min(max_bytes, _MAX_SPAN)
        rows = _rows(limit, pos, end, max_bytes, 16)  # an SPB is the smallest packet block
        positions = np.empty(rows, dtype=np.int64)
        kinds = np.empty(rows, dtype=np.uint8)
        words = np.empty(7 * rows, dtype=np.uint32)
        nif = len(self.interfaces) - self._section_base
        budget_end = end
        n = 0

        def framed(count: int, stop: Stop, message: str = "") -> Framed:
            out = Framed(positions[:count], pos, stop, message, kinds=kinds[:count])
            out.words = words[: 7 * count].reshape(count, 7)
            return out

        while True:
            n, pos, code, budget_end, reason, a, b, c = _core.frame_pcapng(
                buf, pos, end, n, rows, budget_end, max_bytes, self._order == ">", nif,
                positions, kinds, words,
            )
            if code == _core.NEED_SHB:
                if n:  # a new section may change byte order: end this batch first
                    return framed(n, Stop.LIMIT)
                try:
                    taken = self._section(buf, pos, end)
                except _Damage as exc:
                    return framed(0, Stop.CORRUPT, str(exc))
                if taken is None:
                    return framed(0, Stop.PARTIAL)
                pos += taken
                nif = 0
            elif code == _core.NEED_IDB:
                try:
                    self._interface(buf, pos, a)
                except _Damage as exc:
                    return framed(n, Stop.CORRUPT, str(exc))
                nif += 1
                pos += a
            elif code == _core.CORRUPT:
                return framed(n, Stop.CORRUPT, _message(reason, a, b, c))
            else:
                return framed(n, _STOPS[code])


def _message(reason: int, a: int, b: int, c: int) -> str:
    """The numpy framer's words for the damage ``_core`` found."""
    if reason == _core.REASON_LENGTH:
        return f"block of type {a:#x} claims length {b}"
    if reason == _core.REASON_TRAILER:
        return f"block of type {a:#x} has length {b} but trailing copy {c}"
    if reason == _core.REASON_EPB_SHORT:
        return f"packet block too short ({b})"
    if reason == _core.REASON_IFACE:
        return f"packet block names interface {a} of {b}"
    if reason == _core.REASON_CAPLEN:
        return f"packet block claims {a} bytes in a {b}-byte block"
    return "simple packet block without an interface"
