"""The pyshark backend: tshark through pyshark's ``LiveCapture``.

Choice: ``use_json=True, include_raw=True``, so tshark hands over each frame's
raw bytes (``get_raw_packet()``) and portwatch decodes them with its own
vectorised decoder like every other backend; tshark's dissection is not used
for counting. This is the slowest backend (tshark dissects and serialises
every packet to JSON); use it where only tshark is allowed.

pyshark's iterator blocks until tshark prints the next packet, so it runs in
a producer thread (with its own asyncio loop) that queues raw frames; the
consumer flushes a batch when it is full or ``batch_age_s`` old, so a quiet
link still reports. ``close()`` kills pyshark's dumpcap/tshark children, which
ends the iterator at once. Drops are not reported by tshark while running:
``dropped()`` is always empty. pyshark is imported only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from portwatch.capture.batch import LinkType, PacketBatch
from portwatch.capture.live.source import BatchCollector, InterfaceSource
from portwatch.errors import BackendError

__all__ = ["PysharkSource", "link_type_of"]

#: tshark's name for a frame's first layer -> the link type portwatch decodes.
_FIRST_LAYER_LINK = {
    "eth": LinkType.ETHERNET,
    "sll": LinkType.LINUX_SLL,
    "sll2": LinkType.LINUX_SLL2,
    "null": LinkType.NULL,
    "loop": LinkType.LOOP,
    "raw": LinkType.RAW,
    "ip": LinkType.RAW,
    "ipv6": LinkType.RAW,
}

_END = object()
Frame = tuple[bytes, int, int, int, int]  # raw, ts_ns, wirelen, linktype, interface


def link_type_of(first_layer: str) -> int:
    """The link type of a frame whose first dissected layer is ``first_layer``."""
    return int(_FIRST_LAYER_LINK.get(first_layer, LinkType.ETHERNET))


class PysharkSource(InterfaceSource):
    backend = "pyshark"

    def __init__(self, interfaces: Sequence[str], bpf_filter: str = "", snaplen: int = 128,
                 *, batch_packets: int = 1024, batch_age_s: float = 0.2,
                 queue_packets: int = 100_000) -> None:
        super().__init__(interfaces, bpf_filter, snaplen)
        self._batch_packets = batch_packets
        self._batch_age_s = batch_age_s
        self._queue_packets = queue_packets
        self._capture: Any = None

    def batches(self) -> Iterator[PacketBatch]:
        try:
            import pyshark
        except ImportError as exc:
            raise BackendError(f"the pyshark backend needs pyshark: {exc}") from None
        self._closed.clear()
        frames: queue.Queue[Frame | BaseException | object] = queue.Queue(self._queue_packets)
        producer = threading.Thread(target=self._produce, args=(pyshark, frames), daemon=True,
                                    name="pyshark")
        producer.start()
        collector = BatchCollector(self._batch_packets, self._batch_age_s)
        failure: BaseException | None = None
        try:
            while not self._closed.is_set():
                try:
                    item = frames.get(timeout=self._batch_age_s / 2)
                except queue.Empty:
                    item = None
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    failure = item
                    break
                if isinstance(item, tuple):
                    collector.add(*item)
                if collector.full():
                    yield collector.take()
            if collector.packets:
                yield collector.take()
        finally:
            closed_by_caller = self._closed.is_set()
            self._closed.set()  # this run is over: the producer must not wait on the queue
            self._kill_children()
            producer.join(timeout=3)
        if failure is not None and not closed_by_caller:
            raise BackendError(f"tshark capture failed: {failure}")

    def _produce(self, pyshark: Any, frames: queue.Queue[Frame | BaseException | object]
                 ) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        index = {name: i for i, name in enumerate(self.interfaces)}
        try:
            capture = pyshark.LiveCapture(
                interface=list(self.interfaces), bpf_filter=self.bpf_filter or None,
                use_json=True, include_raw=True, eventloop=loop,
                custom_parameters=["-s", str(self.snaplen)])
            with self._lock:
                self._capture = capture
            for packet in capture.sniff_continuously():
                if self._closed.is_set():
                    break
                layers = getattr(packet, "layers", [])
                first = layers[0].layer_name if layers else "eth"
                ts = getattr(packet, "sniff_timestamp", None)
                ts_ns = int(float(ts) * 1e9) if ts is not None else time.time_ns()
                iface = index.get(str(getattr(packet, "interface_captured", "")), 0)
                self._offer(frames, (packet.get_raw_packet(), ts_ns, int(packet.length),
                                     link_type_of(first), iface))
            self._offer(frames, _END)
        except Exception as exc:  # pyshark raises TSharkCrashException and friends
            self._offer(frames, exc)
        finally:
            with self._lock:
                capture, self._capture = self._capture, None
            if capture is not None:
                with contextlib.suppress(Exception):  # a dead tshark may raise anything
                    capture.close()
            loop.close()

    def _offer(self, frames: queue.Queue[Frame | BaseException | object], item: object) -> None:
        """Queue ``item`` unless the consumer has gone: a full queue nobody reads
        must not hold this thread (and tshark's pipe) forever."""
        while not self._closed.is_set():
            try:
                frames.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _kill_children(self) -> None:
        """End tshark and dumpcap; safe from any thread (signals, not the asyncio loop)."""
        with self._lock:
            capture = self._capture
        for process in list(getattr(capture, "_running_processes", ())):
            with contextlib.suppress(ProcessLookupError, OSError):
                os.kill(process.pid, signal.SIGTERM)

    def close(self) -> None:
        super().close()
        self._kill_children()
