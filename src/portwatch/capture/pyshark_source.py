"""The pyshark backend: tshark through pyshark's ``LiveCapture``.

Choice: ``use_json=True, include_raw=True``, so tshark hands over each frame's
raw bytes (``get_raw_packet()``) and portwatch decodes them with its own
vectorised decoder like every other backend; tshark's dissection is not used
for counting. This is the slowest backend (tshark dissects and serialises
every packet to JSON); use it where only tshark is allowed. pyshark runs its
own asyncio loop in the capture thread. Drops are not reported by tshark
while running: ``dropped()`` is always empty. pyshark is imported only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import BackendError
from .batch import PacketBatch
from .decode import LinkType
from .live import BatchCollector

__all__ = ["PysharkSource"]


class PysharkSource:
    backend = "pyshark"
    finite = False

    def __init__(self, interfaces: Sequence[str], bpf_filter: str = "", snaplen: int = 128,
                 *, batch_packets: int = 1024, batch_age_s: float = 0.2) -> None:
        self.interfaces = tuple(interfaces)
        self.bpf_filter = bpf_filter
        self.snaplen = snaplen
        self._batch_packets = batch_packets
        self._batch_age_s = batch_age_s
        self._closed = threading.Event()
        self._capture: Any = None

    def batches(self) -> Iterator[PacketBatch]:
        try:
            import pyshark
        except ImportError as exc:
            raise BackendError(f"the pyshark backend needs pyshark: {exc}") from None
        self._closed.clear()
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        capture = pyshark.LiveCapture(
            interface=list(self.interfaces), bpf_filter=self.bpf_filter or None,
            use_json=True, include_raw=True, eventloop=loop,
            custom_parameters=["-s", str(self.snaplen)])
        self._capture = capture
        collector = BatchCollector(self._batch_packets, self._batch_age_s)
        index = {name: i for i, name in enumerate(self.interfaces)}
        try:
            for packet in capture.sniff_continuously():
                raw = packet.get_raw_packet()
                iface = index.get(str(getattr(packet, "interface_captured", "")), 0)
                ts_ns = int(float(packet.sniff_timestamp) * 1e9) if hasattr(
                    packet, "sniff_timestamp") else time.time_ns()
                collector.add(raw, ts_ns, int(packet.length), int(LinkType.ETHERNET), iface)
                if collector.full():
                    yield collector.take()
                if self._closed.is_set():
                    break
        except Exception as exc:  # pyshark raises TSharkCrashException and friends
            if not self._closed.is_set():
                raise BackendError(f"tshark capture failed: {exc}") from None
        finally:
            if collector.packets:
                yield collector.take()
            with contextlib.suppress(Exception):  # a dead tshark may raise anything
                capture.close()
            loop.close()

    def interface_names(self) -> Sequence[str]:
        return self.interfaces

    def dropped(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        self._closed.set()
