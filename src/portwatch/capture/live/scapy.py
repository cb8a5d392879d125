"""The scapy backend: AF_PACKET sockets opened by scapy, read in the daemon's thread.

scapy opens one ``L2ListenSocket`` per interface (needs CAP_NET_RAW) and
attaches the BPF filter; packets are then read as raw bytes straight from the
socket (``recv_into`` with ``MSG_TRUNC`` for the wire length) and grouped into
``PacketBatch``es, never dissected by scapy. Drops are the socket's own
counter (``PACKET_STATISTICS``: packets the kernel could not queue).
scapy is imported only here.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from typing import Any

from portwatch.capture.batch import LinkType, PacketBatch
from portwatch.capture.live.source import BatchCollector, InterfaceSource
from portwatch.errors import BackendError

__all__ = ["ScapySource"]

SOL_PACKET = 263
SO_RCVBUFFORCE = 33
PACKET_STATISTICS = 6
_STATS = struct.Struct("=II")  # struct tpacket_stats: tp_packets, tp_drops


def _set_receive_buffer(sock: Any, size: int) -> None:
    """As ``dumpcap -B``: SO_RCVBUFFORCE passes net.core.rmem_max with CAP_NET_ADMIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class ScapySource(InterfaceSource):
    backend = "scapy"

    def __init__(self, interfaces: Sequence[str], bpf_filter: str = "", snaplen: int = 128,
                 *, buffer_mib: int | None = None, batch_packets: int = 4096,
                 batch_age_s: float = 0.2) -> None:
        super().__init__(interfaces, bpf_filter, snaplen)
        self.buffer_mib = buffer_mib
        self._batch_packets = batch_packets
        self._batch_age_s = batch_age_s
        self._sockets: list[Any] = []
        self._drops: dict[str, int] = {}

    def _open(self) -> list[Any]:
        try:
            from scapy.arch.linux import L2ListenSocket
        except ImportError as exc:
            raise BackendError(f"the scapy backend needs scapy: {exc}") from None
        opened = []
        try:
            for name in self.interfaces:
                opened.append(L2ListenSocket(iface=name, filter=self.bpf_filter or None,
                                            promisc=False))
        except Exception as exc:  # scapy raises OSError or Scapy_Exception
            for s in opened:
                s.close()
            raise BackendError(f"scapy cannot capture on {self.interfaces}: {exc}") from None
        return opened

    def batches(self) -> Iterator[PacketBatch]:
        self._closed.clear()
        self._drops = {}
        opened = self._open()
        with self._lock:
            self._sockets = opened
        raw = [s.ins for s in opened]
        for r in raw:
            r.setblocking(False)
            if self.buffer_mib:
                _set_receive_buffer(r, self.buffer_mib << 20)
        linktype = [int(LinkType.ETHERNET) if s.lvl == 2 else int(LinkType.RAW) for s in opened]
        collector = BatchCollector(self._batch_packets, self._batch_age_s)
        buf = bytearray(self.snaplen)
        view = memoryview(buf)
        try:
            while not self._closed.is_set():
                try:
                    ready, _, _ = select.select(raw, [], [], self._batch_age_s)
                except (OSError, ValueError):
                    if self._closed.is_set():
                        return
                    raise BackendError("scapy capture socket failed") from None
                for r in ready:
                    i = raw.index(r)
                    while len(collector.packets) < self._batch_packets:
                        try:
                            wirelen = r.recv_into(buf, self.snaplen, socket.MSG_TRUNC)
                        except BlockingIOError:
                            break
                        except OSError as exc:
                            raise BackendError(f"scapy capture on {self.interfaces[i]} failed: "
                                               f"{exc.strerror}") from None
                        collector.add(bytes(view[: min(wirelen, self.snaplen)]),
                                      time.time_ns(), wirelen, linktype[i], i)
                if collector.full():
                    yield collector.take()
                    self._poll_drops(raw)
            if collector.packets:
                yield collector.take()
        finally:
            self._poll_drops(raw)
            for s in opened:
                s.close()
            with self._lock:
                self._sockets = []

    def _poll_drops(self, raw: list[socket.socket]) -> None:
        """PACKET_STATISTICS resets on read: accumulate per interface."""
        for name, r in zip(self.interfaces, raw, strict=True):
            try:
                _packets, drops = _STATS.unpack(r.getsockopt(SOL_PACKET, PACKET_STATISTICS,
                                                             _STATS.size))
            except OSError:
                continue
            with self._lock:
                self._drops[name] = self._drops.get(name, 0) + drops

    def dropped(self) -> dict[str, int]:
        with self._lock:
            return dict(self._drops)
