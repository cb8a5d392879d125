"""The unit of work between capture readers and the decoder: a batch of packets.

Readers never build one Python object per packet. They hand over a batch: one
contiguous byte buffer and parallel numpy arrays describing where each packet
lies in it. The decoder (``capture.decode``) turns a batch into field arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["PacketBatch"]


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
