"""What the pcap and pcapng framers share: stop reasons, interfaces, batch gathering.

A framer walks record headers and reports where records start (``Framed``)
and why it stopped (``Stop``); the reader turns that into batches and
warnings. ``Interface`` describes a capture interface for readers and the
pcapng writer alike.
"""

from __future__ import annotations

import enum
import sys
from array import array
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "REGION_SLACK",
    "Buffer",
    "Framed",
    "Interface",
    "RegionPool",
    "Stop",
    "copy_region",
    "gather_words",
]

#: What a framer walks: a whole file (bytes, mmap) or a stream's rolling buffer.
Buffer = bytes | bytearray | memoryview

#: Gathering fixed-width headers may read past the last record; regions get this slack.
REGION_SLACK = 32
#: File bytes one batch may span (records and the blocks between them), unless a single
#: record is bigger. A count bound alone lets 65,536 records of 64 KiB copy 4 GiB at once.
DEFAULT_BATCH_BYTES = 64 << 20


class Stop(enum.Enum):
    """Why a framing call returned."""

    LIMIT = "limit"  # batch is full (or a boundary such as a new pcapng section)
    END = "end"  # consumed everything given, exactly at a record boundary
    PARTIAL = "partial"  # the data ends inside a record
    CORRUPT = "corrupt"  # a record header cannot be right


@dataclass(frozen=True, slots=True)
class Interface:
    """One capture interface: what a writer needs to describe packets again.

    ``tsresol`` is the pcapng ``if_tsresol`` byte (6 = microseconds, 9 =
    nanoseconds, high bit set = negative power of two). ``section`` is the
    pcapng section the interface belongs to (always 0 for classic pcap).
    """

    link_type: int
    snaplen: int
    name: str = ""
    tsresol: int = 6
    tsoffset: int = 0
    description: str = ""
    fcs_len: int | None = None
    section: int = 0


@dataclass(slots=True)
class Framed:
    """The outcome of one framing call: records start at ``positions``."""

    positions: array[int] | npt.NDArray[np.int64]
    end: int
    stop: Stop
    message: str = ""
    # pcapng: which block type each position is
    kinds: array[int] | npt.NDArray[np.uint8] | None = None
    #: The header words of each record in host order, when the compiled walk read them
    #: (pcap: 4 per record, pcapng: 7); None means build() gathers them itself.
    words: npt.NDArray[np.uint32] | None = None


def gather_words(
    region: npt.NDArray[np.uint8], rel: npt.NDArray[np.int64], nwords: int, order: str
) -> npt.NDArray[np.uint32]:
    """The ``nwords`` 32-bit words at each of ``rel`` in ``region``, as an (n, nwords) array.

    One fancy-indexing gather for the whole batch instead of a struct call per
    field per packet. ``region`` must carry :data:`REGION_SLACK` spare bytes.
    """
    idx = rel[:, None] + np.arange(4 * nwords, dtype=np.int64)
    raw = np.ascontiguousarray(region[idx])
    words = raw.view(np.dtype(order + "u4")).reshape(-1, nwords)
    return words.astype(np.uint32)


class RegionPool:
    """Batch buffers handed out again once nothing else holds them.

    A fresh 64 MiB array per batch costs the kernel a zero-filled page fault
    per 4 KiB (glibc maps allocations that size anew each time), about a
    quarter of a whole read. A buffer is reused only when the pool's own
    reference is the last one (no batch, view or export of it is alive), so
    a consumer that keeps a batch keeps its bytes: the pool then allocates.
    One pool belongs to one framer, used by one thread.
    """

    __slots__ = ("_buffers",)
    #: Buffers kept: the batch a consumer still holds while the next one is built.
    KEEP = 2

    def __init__(self) -> None:
        self._buffers: list[npt.NDArray[np.uint8]] = []

    def take(self, size: int) -> npt.NDArray[np.uint8]:
        """An uninitialised array of ``size`` bytes, reused when nobody else holds one."""
        buffers = self._buffers
        free = [i for i in range(len(buffers)) if self._unheld(i)]
        for i in free:
            if buffers[i].shape[0] >= size:
                return buffers[i][:size]
        fresh = np.empty(size, dtype=np.uint8)
        if len(buffers) < self.KEEP:
            buffers.append(fresh)
        elif free:  # one nobody holds was too small: keep the bigger one instead
            buffers[free[0]] = fresh
        return fresh

    def _unheld(self, i: int) -> bool:
        # 2 = the list's own reference + getrefcount's argument: nothing else holds it
        return sys.getrefcount(self._buffers[i]) == 2


def copy_region(
    buf: bytes | bytearray | memoryview, start: int, stop: int, pool: RegionPool | None = None
) -> npt.NDArray[np.uint8]:
    """Copy ``buf[start:stop]`` into an array of its own with zeroed slack after it.

    Batches own their bytes so a consumer may keep them after the reader moved
    on (or the mmap closed); with a ``pool``, the array is one no batch holds
    any more.
    """
    size = stop - start
    total = size + REGION_SLACK
    # zeroing all of it would cost a pass
    region = pool.take(total) if pool is not None else np.empty(total, dtype=np.uint8)
    region[:size] = np.frombuffer(buf, dtype=np.uint8, count=size, offset=start)
    region[size:] = 0
    return region
