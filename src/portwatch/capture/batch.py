"""The unit of work between capture readers and the decoder: a batch of packets.

Readers never build one Python object per packet. They hand over a batch: one
contiguous byte buffer and parallel numpy arrays describing where each packet
lies in it. The decoder (``portwatch.decode``) turns a batch into field arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

__all__ = ["SUPPORTED_LINKTYPES", "LinkType", "PacketBatch"]


class LinkType(IntEnum):
    """The pcap LINKTYPE_* values the decoder reads."""

    NULL = 0  # BSD loopback: 4-byte family in the writer's byte order
    ETHERNET = 1
    PPP = 9  # PPP (RFC 1661), with or without HDLC-like address and control
    RAW_DLT12 = 12  # DLT_RAW as most BSDs and old libpcap wrote it
    RAW_DLT14 = 14  # DLT_RAW on BSD/OS-derived writers
    RAW = 101  # raw IPv4 or IPv6, sniffed from the version nibble
    C_HDLC = 104  # Cisco HDLC: address, control, ethertype
    IEEE802_11 = 105  # 802.11 without radio header or FCS: data frames with LLC/SNAP
    LOOP = 108  # OpenBSD loopback: 4-byte family in network byte order
    LINUX_SLL = 113
    PPI = 192  # Per-Packet Information header naming the link type that follows
    IPV4 = 228
    IPV6 = 229
    LINUX_SLL2 = 276


SUPPORTED_LINKTYPES = frozenset(int(t) for t in LinkType)


@dataclass(slots=True)
class PacketBatch:
    """Packets ``i = 0..n-1`` are ``data[offsets[i] : offsets[i] + caplens[i]]``.

    ``file_offsets`` is each record's byte offset in its file (or stream): it
    names positions in warnings and lets a writer copy records. ``linktypes``
    is per packet because pcapng interfaces may each have their own.
    ``interfaces`` is the pcapng interface id (0 for classic pcap).
    """

    data: npt.NDArray[np.uint8]
    offsets: npt.NDArray[np.int64]
    caplens: npt.NDArray[np.uint32]
    wirelens: npt.NDArray[np.uint32]
    timestamps_ns: npt.NDArray[np.int64]
    linktypes: npt.NDArray[np.uint16]
    interfaces: npt.NDArray[np.uint32]
    file_offsets: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    def slice(self, lo: int, hi: int) -> PacketBatch:
        """Packets ``lo:hi`` as a batch sharing this one's buffer (no copy)."""
        return PacketBatch(
            data=self.data,
            offsets=self.offsets[lo:hi],
            caplens=self.caplens[lo:hi],
            wirelens=self.wirelens[lo:hi],
            timestamps_ns=self.timestamps_ns[lo:hi],
            linktypes=self.linktypes[lo:hi],
            interfaces=self.interfaces[lo:hi],
            file_offsets=self.file_offsets[lo:hi],
        )

    def packet(self, i: int) -> bytes:
        start = int(self.offsets[i])
        return self.data[start : start + int(self.caplens[i])].tobytes()

    @classmethod
    def from_packets(
        cls,
        packets: Sequence[bytes],
        linktype: int | Sequence[int],
        *,
        timestamps_ns: Sequence[int] | None = None,
        wirelens: Sequence[int] | None = None,
        interface: int = 0,
    ) -> PacketBatch:
        """Pack already-captured packets into a ``PacketBatch``.

        For tests and for live backends that receive packets one by one; file
        readers build their batches straight from the file's bytes instead.
        """
        n = len(packets)
        lengths = np.fromiter((len(p) for p in packets), dtype=np.int64, count=n)
        offsets = np.zeros(n, dtype=np.int64)
        if n:
            np.cumsum(lengths[:-1], out=offsets[1:])
        data = np.frombuffer(b"".join(packets), dtype=np.uint8).copy()
        caplens = lengths.astype(np.uint32)
        return cls(
            data=data,
            offsets=offsets,
            caplens=caplens,
            wirelens=caplens.copy() if wirelens is None else np.asarray(wirelens, dtype=np.uint32),
            timestamps_ns=(
                np.zeros(n, dtype=np.int64)
                if timestamps_ns is None
                else np.asarray(timestamps_ns, dtype=np.int64)
            ),
            linktypes=np.broadcast_to(np.asarray(linktype, dtype=np.uint16), (n,)).copy(),
            interfaces=np.full(n, interface, dtype=np.uint32),
            file_offsets=np.full(n, -1, dtype=np.int64),
        )
