"""The eBPF backend: the kernel counts flows by service port; user space reads arrays.

``bpf/portwatch.bpf.c`` is a socket filter attached to one AF_PACKET socket
per watched interface (both directions, the interface unchanged; the filter
returns 0, so nothing is queued or copied out, and closing the socket,
even by a crash, detaches it). For every frame it finds the flow in an LRU
hash, decides the flow's service port with the rules of ``analyze``
(handshake, registry, dynamic range, lower port) and adds the packet to
per-CPU counters indexed by ``transport * 65536 + service port``.

User space never sees a packet: ``KernelCounter.read`` reads the counter
arrays with batched map lookups (only the 1024-slot blocks that a mapped
``touched`` array says were used), sums the CPUs with numpy, and returns the
increments since the previous read as ``KernelCounts``, which
``TrafficCounters.add_kernel_counts`` turns into the same series as the
user-space backends. ``EbpfSource`` does that on a short timer inside the
daemon's capture thread.

What can still be lost is documented in ``docs/ebpf.md``: flows evicted from
the LRU hash before they ended (counted: ``portwatch_flow_evictions_total``),
and nothing else: per-CPU values of a CPU that went offline stay readable.
"""

from __future__ import annotations

import contextlib
import mmap
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from portwatch.analysis.flows import FlowLimits
from portwatch.capture.batch import PacketBatch
from portwatch.daemon._libbpf import LibbpfError, Map, Object
from portwatch.decode.native import DecodeStatus
from portwatch.errors import BackendError
from portwatch.ports import Transport
from portwatch.porttable.table import PortTable

__all__ = [
    "OBJECT_PATH",
    "PROGRAM",
    "EbpfSource",
    "KernelCounter",
    "KernelCounts",
    "SocketFactory",
    "load_error",
    "registry_array",
]

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

#: The object built from ``bpf/portwatch.bpf.c`` (``make bpf``), shipped as package data.
OBJECT_PATH = Path(__file__).with_name("bpf") / "portwatch.bpf.o"
PROGRAM = "portwatch_count"
NPORTS = 65536
SLOTS = len(Transport) * NPORTS
BLOCK = 1024  # traffic slots read per batched lookup
_SO_ATTACH_BPF = 50
_ETH_P_ALL = 0x0003
# Slots of the `stats` array (portwatch.bpf.c ST_*).
_ST_NEW_FLOWS, _ST_FRAG_ATTRIBUTED = 1, 2
IFSLOTS = 4096  # `received` is indexed by ifindex modulo this

#: Opens an unbound AF_PACKET socket with protocol 0 (it receives nothing until bound).
SocketFactory = Callable[[str], socket.socket]


def _own_packet_socket(interface: str) -> socket.socket:
    return socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)


@dataclass(slots=True)
class KernelCounts:
    """What the kernel counted since the previous read (``active_flows`` is a level)."""

    slots: I64  # transport * 65536 + service port, for slots that changed
    packets: U64
    bytes: U64
    flows: U64
    portless: I64  # packets by DecodeStatus value (OK's slot stays 0)
    received: dict[str, int] = field(default_factory=dict)
    new_flows: int = 0
    evictions: int = 0
    active_flows: int = 0
    fragments_attributed: int = 0

    @property
    def packets_total(self) -> int:
        return int(self.packets.sum()) + int(self.portless.sum())


def registry_array(table: PortTable) -> npt.NDArray[np.uint8]:
    """The ``registry`` map's value: one PortStatus byte per (transport, port)."""
    ports = np.arange(NPORTS, dtype=np.uint16)
    out = np.empty(SLOTS, dtype=np.uint8)
    for t in Transport:
        status, _, _ = table.lookup_many(np.full(NPORTS, t.value, dtype=np.uint8), ports)
        out[t.value * NPORTS:(t.value + 1) * NPORTS] = status
    return out


def _config_value(limits: FlowLimits, generation: int = 0) -> bytes:
    """The ``config`` map's value; ``generation`` tells the program the registry changed
    (each flow caches its service port decided under one generation)."""
    idle = [int(limits.idle_s[t] * 1e9) for t in Transport]
    return struct.pack("<6Q", *idle, int(limits.active_s * 1e9), generation)


def load_error(exc: LibbpfError) -> str:
    """One line: what failed and, when the verifier refused, its message."""
    line = exc.verifier_line() if exc.log else ""
    hint = ""
    if exc.errno in (1, 13):  # EPERM, EACCES
        hint = " (needs CAP_BPF and CAP_NET_RAW, see docs/ebpf.md)"
    return f"eBPF backend unavailable: {exc.strerror or exc}{hint}" + (
        f"; libbpf: {line.removeprefix('libbpf: ')}" if line and line not in str(exc) else "")


class KernelCounter:
    """The loaded program, its maps, and the sockets it is attached to."""

    def __init__(self, limits: FlowLimits, *, object_path: Path = OBJECT_PATH) -> None:
        if not object_path.is_file():
            raise BackendError(
                f"eBPF backend unavailable: {object_path} is missing (build it with `make bpf`, "
                "which needs clang)")
        self.max_flows = limits.max_flows
        try:
            self._obj = Object(str(object_path))
            try:
                self._obj.set_max_entries("flows", limits.max_flows)
                self._obj.load()
                self.program_fd = self._obj.program_fd(PROGRAM)
                self.maps = {name: self._obj.map(name) for name in (
                    "flows", "traffic", "touched", "portless", "stats", "received",
                    "registry", "config")}
            except BaseException:
                self._obj.close()
                raise
        except LibbpfError as exc:
            raise BackendError(load_error(exc)) from None
        self._limits = limits
        self._generation = 0
        self.maps["config"].update(struct.pack("<I", 0), _config_value(limits))
        touched = self.maps["touched"]
        self._touched_mm = mmap.mmap(touched.fd, SLOTS * 8, mmap.MAP_SHARED, mmap.PROT_READ)
        # elements of an array map are 8-byte aligned: the value is the low byte
        self._touched = np.frombuffer(self._touched_mm, dtype="<u8")
        self._traffic = np.zeros((SLOTS, 3), dtype=np.uint64)
        self._portless = np.zeros(len(DecodeStatus), dtype=np.uint64)
        self._stats = np.zeros(4, dtype=np.uint64)
        self._received: dict[int, int] = {}
        self._evicted = 0  # flows inserted minus flows present, at the previous read
        self.sockets: dict[str, socket.socket] = {}
        self._ifnames: dict[int, str] = {}
        self._lock = threading.Lock()
        self.table: PortTable | None = None

    # -- set up ---------------------------------------------------------------------
    def set_registry(self, table: PortTable) -> None:
        """Fill (or refresh, on reload) the registry array; counters are untouched.

        The new generation in ``config`` makes every known flow decide its service
        port again at its next packet, as the user-space engine would."""
        self.maps["registry"].update(struct.pack("<I", 0), registry_array(table))
        self._generation = (self._generation + 1) & 0xFFFF
        self.maps["config"].update(struct.pack("<I", 0),
                                   _config_value(self._limits, self._generation))
        self.table = table

    def attach(self, interfaces: Sequence[str],
               open_socket: SocketFactory = _own_packet_socket) -> None:
        """One packet socket per interface, the program attached before it is bound."""
        for name in interfaces:
            sock = open_socket(name)
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_BPF,
                                struct.pack("i", self.program_fd))
                sock.bind((name, _ETH_P_ALL))
                ifindex = socket.if_nametoindex(name)
                clash = self._ifnames.get(ifindex % IFSLOTS)
                if clash is not None and clash != name:
                    raise OSError(0, f"{name} and {clash} share a counter slot (ifindex "
                                     f"{ifindex} modulo {IFSLOTS}); watch one of them")
            except OSError as exc:
                sock.close()
                self.detach()
                raise BackendError(f"eBPF backend: cannot attach to {name}: "
                                   f"{exc.strerror or exc}") from None
            self.sockets[name] = sock
            self._ifnames[ifindex % IFSLOTS] = name

    def detach(self) -> None:
        """Close every socket: the kernel detaches the program with the last one."""
        for sock in self.sockets.values():
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets.clear()
        self._ifnames.clear()  # the per-slot baselines stay: a re-attach counts on from them

    def attached(self) -> list[str]:
        return [name for name, s in self.sockets.items() if s.fileno() >= 0]

    # -- reading --------------------------------------------------------------------
    @staticmethod
    def _sum_cpus(m: Map, values: npt.NDArray[np.uint8], width: int) -> U64:
        """``(n, cpus * width*8)`` bytes of a per-CPU map as ``(n, width)`` sums."""
        cpus = values.shape[1] // (width * 8)
        per_cpu: U64 = values.view("<u8").reshape(values.shape[0], cpus, width)
        summed: U64 = per_cpu.sum(axis=1, dtype=np.uint64)
        return summed

    def _read_traffic(self) -> tuple[I64, U64]:
        used = np.flatnonzero(self._touched & 0xFF)
        if used.size == 0:
            return np.empty(0, dtype=np.int64), np.empty((0, 3), dtype=np.uint64)
        traffic = self.maps["traffic"]
        slots, sums = [], []
        for block in np.unique(used // BLOCK).tolist():
            keys, values = traffic.lookup_range(block * BLOCK, BLOCK)
            slots.append(keys.view("<u4").reshape(-1).astype(np.int64))
            sums.append(self._sum_cpus(traffic, values, 3))
        return np.concatenate(slots), np.concatenate(sums)

    def read(self) -> KernelCounts:
        """Increments since the previous read."""
        with self._lock:
            slots, now = self._read_traffic()
            delta = now - self._traffic[slots]
            self._traffic[slots] = now
            changed = np.flatnonzero(delta.any(axis=1))
            _, pv = self.maps["portless"].lookup_batch()
            portless = self._sum_cpus(self.maps["portless"], pv, 3)[:, 0]
            d_portless = (portless - self._portless).astype(np.int64)
            self._portless = portless
            _, sv = self.maps["stats"].lookup_batch()
            stats = self._sum_cpus(self.maps["stats"], sv, 1)[:, 0]
            d_stats = stats - self._stats
            self._stats = stats
            received: dict[str, int] = {}
            rmap = self.maps["received"]
            for slot, name in self._ifnames.items():
                _, rv = rmap.lookup_range(slot, 1)
                n = int(self._sum_cpus(rmap, rv, 1)[0, 0])
                received[name] = n - self._received.get(slot, 0)
                self._received[slot] = n
            active = self.maps["flows"].count()
            evicted_total = int(stats[_ST_NEW_FLOWS]) - active
            evictions = max(0, evicted_total - self._evicted)
            self._evicted = max(evicted_total, self._evicted)
            return KernelCounts(
                slots=slots[changed], packets=delta[changed, 0], bytes=delta[changed, 1],
                flows=delta[changed, 2], portless=d_portless,
                received={k: v for k, v in received.items() if v},
                new_flows=int(d_stats[_ST_NEW_FLOWS]), evictions=evictions,
                active_flows=active, fragments_attributed=int(d_stats[_ST_FRAG_ATTRIBUTED]))

    def close(self) -> None:
        """Detach, unmap and unload; safe to call more than once."""
        self.detach()
        if not self._touched_mm.closed:
            self._touched = np.zeros(0, dtype="<u8")  # drop the view before unmapping
            with contextlib.suppress(BufferError):
                self._touched_mm.close()
        self._obj.close()


#: What the daemon's counters must offer an ``EbpfSource`` (``TrafficCounters``).
KernelSink = Callable[[KernelCounts], None]


class EbpfSource:
    """A ``PacketSource`` whose "batches" are counter reads on a timer: it yields none.

    The supervisor hands it the counters (``connect``): each ``poll_s`` (and once
    more when closed) the kernel's increments go to ``add_kernel_counts``, and
    a table newer than the one in the kernel (a SIGHUP) refreshes the registry
    array in place.
    """

    backend = "ebpf"
    finite = False

    def __init__(self, interfaces: Sequence[str], limits: FlowLimits, *, poll_s: float = 1.0,
                 open_socket: SocketFactory = _own_packet_socket,
                 object_path: Path = OBJECT_PATH,
                 counter: KernelCounter | None = None) -> None:
        """``counter``: a program loaded earlier (while this process could), kept loaded
        across runs: a run ends by closing its sockets only, so flows carry on."""
        self.interfaces = tuple(interfaces)
        self.poll_s = poll_s
        self._open_socket = open_socket
        self._owns_counter = counter is None
        self.counter = counter if counter is not None else KernelCounter(
            limits, object_path=object_path)
        self._closed = threading.Event()
        self._sink: KernelSink | None = None
        self._table_of: Callable[[], PortTable] | None = None

    def connect(self, sink: KernelSink, table_of: Callable[[], PortTable]) -> None:
        self._sink = sink
        self._table_of = table_of

    def batches(self) -> Iterator[PacketBatch]:
        if self._sink is None or self._table_of is None:
            raise BackendError("eBPF backend: no counters connected (EbpfSource.connect)")
        try:
            self.counter.set_registry(self._table_of())
            self.counter.attach(self.interfaces, self._open_socket)
            while not self._closed.wait(self.poll_s):
                self.poll()
            self.poll()  # what arrived since the last tick
        finally:
            if self._owns_counter:
                self.counter.close()
            else:
                self.counter.detach()
        return
        yield  # a generator that yields no batch

    def poll(self) -> None:
        """Refresh the registry if it changed, then hand the increments to the counters."""
        if self._sink is None or self._table_of is None or not self.counter.sockets:
            return
        table = self._table_of()
        if table is not self.counter.table:
            self.counter.set_registry(table)
        try:
            counts = self.counter.read()
        except LibbpfError as exc:
            raise BackendError(f"eBPF backend: {exc}") from None
        self._sink(counts)

    def interface_names(self) -> Sequence[str]:
        return self.interfaces

    def attached(self) -> list[str]:
        """Interfaces the program is attached to now (for health)."""
        return self.counter.attached()

    def dropped(self) -> dict[str, int]:
        return {}  # no capture buffer: the kernel counts in place

    def close(self) -> None:
        self._closed.set()
