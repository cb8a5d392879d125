"""The one interface every live capture backend implements.

A backend is a ``PacketSource``: ``batches()`` yields :class:`PacketBatch`es
until the capture ends (a replayed file is finished) or fails (it raises
``BackendError``); ``close()`` may be called from another thread and makes
``batches()`` return soon. ``interface_names`` maps a batch's ``interfaces``
values to names for the per-interface capture counters, and ``dropped()``
reports packets the kernel or the backend lost, cumulative for this run.

The daemon restarts a source whose ``batches()`` ended or failed (unless it is
``finite``), so a backend need not retry anything itself. A scripted fake
for tests is ``portwatch.testing.FakeSource``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from portwatch.capture.batch import PacketBatch

__all__ = ["BatchCollector", "InterfaceSource", "PacketSource", "sysfs_counter"]


class PacketSource(Protocol):
    """A capture that hands over packets in batches."""

    backend: str
    #: True when the source ends by itself (a replayed file): not restarted.
    finite: bool

    def batches(self) -> Iterator[PacketBatch]:
        """Yield batches until the capture ends; raise ``BackendError`` on failure."""
        ...

    def interface_names(self) -> Sequence[str]:
        """Name of each interface index used in ``PacketBatch.interfaces``."""
        ...

    def dropped(self) -> dict[str, int]:
        """Packets lost per interface name, cumulative since this run began."""
        ...

    def close(self) -> None:
        """Stop capturing; safe to call from any thread, more than once."""
        ...


class InterfaceSource:
    """What the backends that capture named interfaces share (scapy, pyshark).

    The interfaces, filter and snap length they were asked for, the event that
    ``close()`` sets and the lock their drop counters live under.
    Subclasses provide ``batches()`` and override ``dropped()`` when they
    can see drops.
    """

    backend = "interfaces"
    finite = False

    def __init__(self, interfaces: Sequence[str], bpf_filter: str = "",
                 snaplen: int = 128) -> None:
        self.interfaces = tuple(interfaces)
        self.bpf_filter = bpf_filter
        self.snaplen = snaplen
        self._closed = threading.Event()
        self._lock = threading.Lock()

    def interface_names(self) -> Sequence[str]:
        return self.interfaces

    def dropped(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        self._closed.set()


class BatchCollector:
    """Groups packets received one by one into batches of bounded size and age.

    Backends that receive packets singly (scapy, pyshark) append raw bytes
    here and flush when ``full()``: at ``max_packets`` or ``max_age_s``
    after the first packet, so a quiet link still reports within that time.
    """

    def __init__(
        self,
        max_packets: int = 4096,
        max_age_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_packets = max_packets
        self.max_age_s = max_age_s
        self._clock = clock
        self.packets: list[bytes] = []
        self.timestamps_ns: list[int] = []
        self.wirelens: list[int] = []
        self.linktypes: list[int] = []
        self.interfaces: list[int] = []
        self._started = 0.0

    def add(self, packet: bytes, ts_ns: int, wirelen: int, linktype: int, iface: int) -> None:
        if not self.packets:
            self._started = self._clock()
        self.packets.append(packet)
        self.timestamps_ns.append(ts_ns)
        self.wirelens.append(wirelen)
        self.linktypes.append(linktype)
        self.interfaces.append(iface)

    def full(self) -> bool:
        return len(self.packets) >= self.max_packets or (
            bool(self.packets) and self._clock() - self._started >= self.max_age_s
        )

    def take(self) -> PacketBatch:
        """The collected packets as one batch; the collector starts empty again."""
        batch = PacketBatch.from_packets(
            self.packets,
            self.linktypes,
            timestamps_ns=self.timestamps_ns,
            wirelens=self.wirelens,
        )
        batch.interfaces = np.asarray(self.interfaces, dtype=np.uint32)
        self.packets, self.timestamps_ns, self.wirelens = [], [], []
        self.linktypes, self.interfaces = [], []
        return batch


def sysfs_counter(interface: str, name: str, root: Path = Path("/sys")) -> int | None:
    """``/sys/class/net/IFACE/statistics/NAME``, or ``None`` when unreadable."""
    try:
        return int((root / "class/net" / interface / "statistics" / name).read_text())
    except (OSError, ValueError):
        return None
