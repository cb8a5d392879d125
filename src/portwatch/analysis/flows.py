"""Bidirectional flows and the service port of each, computed batch by batch.

The engine is pure: it takes decoded batches (numpy arrays) and timestamps and
keeps per-flow counters in growable numpy arrays. Per-packet work is array
arithmetic; Python loops run over the *distinct flows of a batch* only.

A flow is the 5-tuple (transport, address A, port A, address B, port B) with
the endpoints in canonical order (A <= B), so both directions meet in one
flow. Which side is the *service* is decided from the whole flow
(``FlowTable.decide``):

1. ``handshake``: the side that received the TCP SYN (or sent the SYN-ACK);
2. ``registry``: the side whose port the registry lists as assigned while the
   other's is not;
3. ``dynamic-range``: the side whose port is outside 49152-65535 while the
   other's is inside;
4. ``lower-port``: the lower port.

For a Zeek-style connection state (``portwatch.analysis.conn_state``) each
flow also keeps the OR of the TCP flags sent in each direction and the flags
and direction of its first packet.

Tunnels: a decoded row is the innermost packet (``DecodedBatch``), and the
outer layers the decoder opened are in ``DecodedBatch.tunnels``. ``update``
counts both: a VXLAN packet adds one packet and its whole wire length to its
inner flow *and* to its udp/4789 flow, as ``tshark -z conv`` counts a frame in
every conversation it belongs to. (Capture totals, in ``Analyzer``, count it
once.) ``encap`` is the encapsulation stack of a flow's first packet.

Two engines count a batch, with identical results (``tests/analysis/
test_flowcore.py``): the compiled core (``_flowcore``: a C hash index of
flow keys and one pass over the batch with the GIL released) when it is
built, and the numpy engine here, the fallback and the reference.
``PORTWATCH_FLOWS=numpy`` forces numpy; ``PORTWATCH_VERBOSE=1`` says once
which one runs. Either way new flows take the most recently freed row first,
else the next row, in order of first appearance in the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from portwatch._engines import ENGINES, use_compiled
from portwatch.analysis.verdict import STATUS_REASONS, FlagReason, FlowDecisions, ServiceSideRule
from portwatch.decode.native import TRANSPORT_OF_PROTO, DecodedBatch, DecodeStatus
from portwatch.ports import DYNAMIC_PORTS, PortFlag, PortStatus, Transport
from portwatch.porttable.table import PortTable

try:
    from portwatch.analysis._flowcore import KEY_BYTES as _CORE_KEY_BYTES
    from portwatch.analysis._flowcore import FlowIndex
except ImportError as _exc:  # not built (no compiler): numpy counts flows
    COMPILED = False
    _WHY_NOT = f"the compiled flow table is not built ({_exc})"
else:
    COMPILED = True
    _WHY_NOT = ""

__all__ = ["COMPILED", "FLOW_ENGINES", "FlowLimits", "FlowTable"]

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

_SYN = np.uint8(0x02)
_ACK = np.uint8(0x10)
#: ``FlowTable.handshake_side`` codes: no SYN or SYN-ACK seen yet, the service is A, is B.
_SIDE_UNKNOWN, _SIDE_A, _SIDE_B = 0, 1, 2
_FIRST_DYNAMIC = DYNAMIC_PORTS.start
_NO_ROWS = np.empty(0, dtype=np.int64)
_NO_ROWS.flags.writeable = False
_TRANSPORT_OF_PROTO = np.ascontiguousarray(TRANSPORT_OF_PROTO, dtype=np.uint8)
_KEY_DTYPE = np.dtype([("t", "u1"), ("ah", "u8"), ("al", "u8"), ("ap", "u2"),
                       ("bh", "u8"), ("bl", "u8"), ("bp", "u2")])
if COMPILED and _KEY_DTYPE.itemsize != _CORE_KEY_BYTES:  # the C side reads keys as bytes
    COMPILED = False
    _WHY_NOT = f"_flowcore reads {_CORE_KEY_BYTES}-byte keys, not {_KEY_DTYPE.itemsize}"

#: ``FlowTable(engine=...)`` and ``PORTWATCH_FLOWS``: ``auto`` is compiled when built.
FLOW_ENGINES = ENGINES
_said: set[str] = set()  # what PORTWATCH_VERBOSE=1 has said already


def _choose(engine: str | None) -> bool:
    """Whether to count with the compiled core; says which once under PORTWATCH_VERBOSE=1.

    ``engine=None`` reads ``PORTWATCH_FLOWS`` (``numpy`` forces the reference
    engine, for comparisons and benchmarks).
    """
    return use_compiled(engine, variable="PORTWATCH_FLOWS", noun="flow engine",
                        stage="flow table", label="compiled (_flowcore)", built=COMPILED,
                        why_not=_WHY_NOT, said=_said)


@dataclass(frozen=True, slots=True)
class FlowLimits:
    """Bounds of the flow table: size, and when a flow is over."""

    max_flows: int = 100_000
    idle_s: Mapping[Transport, float] = field(
        default_factory=lambda: {Transport.TCP: 300.0, Transport.UDP: 60.0,
                                 Transport.SCTP: 300.0, Transport.DCCP: 120.0})
    active_s: float = 1800.0
    max_flagged_ports: int = 100

    def idle_ns(self) -> npt.NDArray[np.int64]:
        """One idle timeout per ``Transport`` value, as ``FlowTable.expire`` wants."""
        return np.asarray([int(self.idle_s[t] * 1_000_000_000) for t in Transport], dtype=np.int64)


def _mix(x: U64) -> U64:
    """splitmix64 finaliser: spreads key bits so a 64-bit hash groups flows."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class FlowTable:
    """Counters of every flow seen, in growable column arrays.

    ``engine``: ``auto`` (compiled when built), ``compiled`` or ``numpy``;
    ``None`` reads ``PORTWATCH_FLOWS``.
    """

    def __init__(self, capacity: int = 1024, *, engine: str | None = None) -> None:
        #: The compiled key index, or None when numpy counts (``_rows`` is the index then).
        self._core: FlowIndex | None = FlowIndex() if _choose(engine) else None
        self._rows: dict[bytes, int] = {}
        self._free: list[int] = []  # rows of evicted flows, reused first
        self.size = 0  # rows in use or freed; row indices stay stable
        self.evicted = 0
        #: The last ``update``'s outer tunnel layers: (packet, flow (-1: none)) of each.
        self.last_tunnel_flows: tuple[I64, I64] = (_NO_ROWS, _NO_ROWS)
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        def grow(name: str, dtype: Any, fill: int = 0) -> None:
            new = np.full(capacity, fill, dtype=dtype)
            old = getattr(self, name, None)
            if old is not None:
                new[: self.size] = old[: self.size]
            setattr(self, name, new)

        grow("keys", _KEY_DTYPE)
        grow("packets_ab", np.uint64)
        grow("packets_ba", np.uint64)
        grow("bytes_ab", np.uint64)
        grow("bytes_ba", np.uint64)
        grow("first_ns", np.int64, np.iinfo(np.int64).max)
        grow("last_ns", np.int64, np.iinfo(np.int64).min)
        grow("handshake_side", np.uint8)
        grow("tcp_flags_ab", np.uint8)
        grow("tcp_flags_ba", np.uint8)
        grow("first_flags", np.uint8)
        grow("first_from_a", np.bool_)
        grow("alive", np.bool_)
        grow("encap", np.uint16)
        self.capacity = capacity

    # typed views of the columns
    keys: npt.NDArray[np.void]
    packets_ab: U64
    packets_ba: U64
    bytes_ab: U64
    bytes_ba: U64
    first_ns: I64
    last_ns: I64
    handshake_side: U8  # _SIDE_* codes
    tcp_flags_ab: U8  # OR of the TCP flags of every packet from A to B
    tcp_flags_ba: U8
    first_flags: U8  # TCP flags of the flow's earliest packet (0: not TCP)
    first_from_a: Bool  # the earliest packet went from A to B
    alive: Bool
    encap: npt.NDArray[np.uint16]  # DecodedBatch.encap of the flow's first packet

    def __len__(self) -> int:
        """Flows currently held (evicted ones excluded)."""
        return self.size - len(self._free)

    @property
    def compiled(self) -> bool:
        """Whether the compiled core counts this table's batches."""
        return self._core is not None

    @property
    def _index(self) -> dict[bytes, int]:
        """Key bytes -> row of every live flow (with the compiled core: a copy, as looked up)."""
        if self._core is None:
            return self._rows
        keys = self.keys[np.flatnonzero(self.alive[: self.size])]
        found = np.empty(keys.shape[0], dtype=np.int64)
        self._core.lookup(keys.view(np.uint8), found)
        raw = keys.tobytes()
        width = _KEY_DTYPE.itemsize
        return {raw[i * width : (i + 1) * width]: int(r) for i, r in enumerate(found) if r >= 0}

    @_index.setter
    def _index(self, rows: dict[bytes, int]) -> None:
        # ``merge.MergedCapture.analyzer`` assigns the index of the rows it filled.
        if self._core is None:
            self._rows = rows
            return
        self._core.clear()
        if rows:
            self._core.insert(np.frombuffer(b"".join(rows), dtype=np.uint8),
                              np.fromiter(rows.values(), dtype=np.int64, count=len(rows)))

    def reindex(self) -> None:
        """Rebuild the key index from the live rows (after filling ``keys``/``alive`` directly)."""
        live = np.flatnonzero(self.alive[: self.size])
        raw = self.keys[live].tobytes()
        width = _KEY_DTYPE.itemsize
        self._index = {raw[i * width : (i + 1) * width]: int(r) for i, r in enumerate(live)}

    @property
    def transport(self) -> U8:
        return self.keys["t"][: self.size]

    @property
    def port_a(self) -> U16:
        return self.keys["ap"][: self.size]

    @property
    def port_b(self) -> U16:
        return self.keys["bp"][: self.size]

    def packets(self) -> U64:
        return self.packets_ab[: self.size] + self.packets_ba[: self.size]

    def bytes(self) -> U64:
        return self.bytes_ab[: self.size] + self.bytes_ba[: self.size]

    def update(self, decoded: DecodedBatch, timestamps_ns: I64) -> I64:
        """Add a batch; return each packet's flow index (-1: not in any flow).

        Outer tunnel layers are counted first, in flows of their own; the
        index returned is the flow of each packet's row (its inner packet).
        """
        if decoded.tunnels.shape[1]:
            packet, outer = decoded.tunnel_batch()
            self.last_tunnel_flows = (packet, self._update_rows(outer, timestamps_ns[packet]))
        else:
            self.last_tunnel_flows = (_NO_ROWS, _NO_ROWS)
        return self._update_rows(decoded, timestamps_ns)

    def _update_rows(self, decoded: DecodedBatch, timestamps_ns: I64) -> I64:
        if self._core is not None:
            return self._update_compiled(self._core, decoded, timestamps_ns)
        n = len(decoded)
        flow_of_packet = np.full(n, -1, dtype=np.int64)
        transport = TRANSPORT_OF_PROTO[decoded.ip_proto]
        ok = (decoded.status == DecodeStatus.OK) & (transport != 255)
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            return flow_of_packet
        t = transport[idx]
        sh, sl, sp = decoded.src_hi[idx], decoded.src_lo[idx], decoded.src_port[idx]
        dh, dl, dp = decoded.dst_hi[idx], decoded.dst_lo[idx], decoded.dst_port[idx]
        swap = (sh > dh) | ((sh == dh) & ((sl > dl) | ((sl == dl) & (sp > dp))))
        keys = np.empty(idx.size, dtype=_KEY_DTYPE)
        keys["t"] = t
        keys["ah"] = np.where(swap, dh, sh)
        keys["al"] = np.where(swap, dl, sl)
        keys["ap"] = np.where(swap, dp, sp)
        keys["bh"] = np.where(swap, sh, dh)
        keys["bl"] = np.where(swap, sl, dl)
        keys["bp"] = np.where(swap, sp, dp)
        inverse, first = self._group(keys)
        flows = self._flow_ids(keys[first])
        fresh = (self.packets_ab[flows] == 0) & (self.packets_ba[flows] == 0)
        self.encap[flows[fresh]] = decoded.encap[idx[first[fresh]]]
        per_packet = flows[inverse]
        flow_of_packet[idx] = per_packet
        self._count(decoded, idx, per_packet, ~swap, timestamps_ns[idx])
        return flow_of_packet

    def _update_compiled(self, core: FlowIndex, decoded: DecodedBatch,
                         timestamps_ns: I64) -> I64:
        """``_update_rows`` by the compiled core: one pass, straight into the columns."""
        n = len(decoded)
        flow_of_packet = np.empty(n, dtype=np.int64)
        if n == 0:
            return flow_of_packet
        needed = self.size + n - len(self._free)  # at most one new flow per packet
        if needed > self.capacity:
            self._alloc(max(needed, self.capacity * 2))
        free = np.asarray(self._free[-n:], dtype=np.int64) if self._free else _NO_ROWS
        c = np.ascontiguousarray
        self.size, used = core.update(
            c(decoded.status, np.uint8), c(decoded.ip_proto, np.uint8),
            c(decoded.src_hi, np.uint64), c(decoded.src_lo, np.uint64),
            c(decoded.dst_hi, np.uint64), c(decoded.dst_lo, np.uint64),
            c(decoded.src_port, np.uint16), c(decoded.dst_port, np.uint16),
            c(decoded.tcp_flags, np.uint8), c(decoded.wirelen, np.uint32),
            c(decoded.encap, np.uint16), c(timestamps_ns, np.int64), _TRANSPORT_OF_PROTO,
            self.keys.view(np.uint8), self.packets_ab, self.packets_ba,
            self.bytes_ab, self.bytes_ba, self.first_ns, self.last_ns,
            self.handshake_side, self.tcp_flags_ab, self.tcp_flags_ba, self.first_flags,
            self.first_from_a.view(np.uint8), self.alive.view(np.uint8), self.encap,
            free, self.size, flow_of_packet)
        if used:
            del self._free[-used:]
        return flow_of_packet

    @staticmethod
    def _group(keys: npt.NDArray[np.void]) -> tuple[I64, I64]:
        """Group equal keys: (group of each row, first row of each group).

        Groups are numbered in order of first appearance, so new flows get
        rows in that order (as the compiled core gives them).
        """
        if keys.shape[0] == 1:  # one packet at a time (the Annotator): nothing to group
            return np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
        h = _mix(keys["ah"] ^ _mix(keys["al"] + keys["t"].astype(np.uint64)))
        h = _mix(h ^ keys["bh"] ^ _mix(keys["bl"] ^ (keys["ap"].astype(np.uint64) << np.uint64(16))
                                       ^ keys["bp"].astype(np.uint64)))
        _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
        # A 64-bit collision would merge two flows: check every field of every
        # row against its group's first row (per field: structured compares are slow).
        representative = first[inverse]
        if not all(np.array_equal(keys[name][representative], keys[name])
                   for name in _KEY_DTYPE.names or ()):
            void = keys.view(np.dtype((np.void, _KEY_DTYPE.itemsize)))
            _, first, inverse = np.unique(void, return_index=True, return_inverse=True)
        order = np.argsort(first)
        rank = np.empty(order.size, dtype=np.int64)
        rank[order] = np.arange(order.size, dtype=np.int64)
        return rank[inverse.reshape(-1)], first[order].astype(np.int64)

    def _flow_ids(self, distinct: npt.NDArray[np.void]) -> I64:
        """Flow row of each distinct key, adding rows for keys not seen before.

        The dictionary is probed with ``map`` over all keys at once; only new
        keys go through a Python loop (on a live link most keys are known).
        """
        raw = distinct.tobytes()
        width = _KEY_DTYPE.itemsize
        index = self._rows
        keys = [raw[at : at + width] for at in range(0, len(raw), width)]
        found = list(map(index.get, keys))
        new_rows = [i for i, fid in enumerate(found) if fid is None]
        if new_rows:
            free = self._free
            appended = 0
            for i in new_rows:
                if free:
                    fid = free.pop()
                else:
                    fid = self.size + appended
                    appended += 1
                index[keys[i]] = fid
                found[i] = fid
            needed = self.size + appended
            if needed > self.capacity:
                self._alloc(max(needed, self.capacity * 2))
            self.size = needed
            rows = np.asarray([found[i] for i in new_rows], dtype=np.int64)
            self.keys[rows] = distinct[new_rows]
            self.alive[rows] = True
        return np.asarray(found, dtype=np.int64)

    def _count(self, decoded: DecodedBatch, idx: I64, flows: I64, from_a: Bool,
               ts: I64) -> None:
        size = self.size
        wire = decoded.wirelen[idx].astype(np.uint64)
        self.packets_ab[:size] += np.bincount(flows[from_a], minlength=size).astype(np.uint64)
        self.packets_ba[:size] += np.bincount(flows[~from_a], minlength=size).astype(np.uint64)
        self.bytes_ab[:size] += np.bincount(flows[from_a], weights=wire[from_a],
                                            minlength=size).astype(np.uint64)
        self.bytes_ba[:size] += np.bincount(flows[~from_a], weights=wire[~from_a],
                                            minlength=size).astype(np.uint64)
        earlier = ts < self.first_ns[flows]  # before this batch's own packets count
        np.minimum.at(self.first_ns, flows, ts)
        np.maximum.at(self.last_ns, flows, ts)
        flags = decoded.tcp_flags[idx]
        tcp = decoded.ip_proto[idx] == 6
        self._note_flags(flows, from_a, ts, flags=flags, tcp=tcp, earlier=earlier)
        syn = tcp & ((flags & _SYN) != 0) & ((flags & _ACK) == 0)  # to the server
        synack = tcp & ((flags & _SYN) != 0) & ((flags & _ACK) != 0)  # from the server
        server_is_a = np.where(syn, ~from_a, from_a)
        seen = syn | synack
        if seen.any():
            code = np.where(server_is_a[seen], _SIDE_A, _SIDE_B).astype(np.uint8)
            self.handshake_side[flows[seen]] = code

    def _note_flags(self, flows: I64, from_a: Bool, ts: I64, *, flags: U8, tcp: Bool,
                    earlier: Bool) -> None:
        """OR each direction's TCP flags; remember the earliest packet's flags and direction."""
        if flows.shape[0] == 1:  # one packet at a time (the Annotator): plain scalars
            row, a = int(flows[0]), bool(from_a[0])
            bits = int(flags[0]) if tcp[0] else 0
            (self.tcp_flags_ab if a else self.tcp_flags_ba)[row] |= bits
            if earlier[0]:
                self.first_flags[row] = bits
                self.first_from_a[row] = a
            return
        if tcp.any():
            ab, ba = tcp & from_a, tcp & ~from_a
            np.bitwise_or.at(self.tcp_flags_ab, flows[ab], flags[ab])
            np.bitwise_or.at(self.tcp_flags_ba, flows[ba], flags[ba])
        # The earliest packet of a flow in this batch, if earlier than any seen before:
        # a packet at its flow's (new) first time, first of those in batch order.
        first = np.flatnonzero(earlier & (ts == self.first_ns[flows]))
        if first.size > 1:
            _, at = np.unique(flows[first], return_index=True)
            first = first[at]
        if first.size:
            self.first_flags[flows[first]] = np.where(tcp[first], flags[first], 0)
            self.first_from_a[flows[first]] = from_a[first]

    def evict(self, rows: I64) -> None:
        """Forget flows (idle, or over the limit); their rows are reused."""
        if rows.size == 0:
            return
        if self._core is not None:
            self._core.delete(self.keys[rows].view(np.uint8))
        else:
            raw = self.keys[rows].tobytes()
            width = _KEY_DTYPE.itemsize
            for i in range(rows.size):
                self._rows.pop(raw[i * width : (i + 1) * width], None)
        for name in ("packets_ab", "packets_ba", "bytes_ab", "bytes_ba", "handshake_side",
                     "tcp_flags_ab", "tcp_flags_ba", "first_flags", "first_from_a",
                     "encap"):
            getattr(self, name)[rows] = 0
        self.first_ns[rows] = np.iinfo(np.int64).max
        self.last_ns[rows] = np.iinfo(np.int64).min
        self.alive[rows] = False
        self._free.extend(int(r) for r in rows)
        self.evicted += int(rows.size)

    def expire(self, now_ns: int, idle_ns: npt.NDArray[np.int64], active_ns: int) -> I64:
        """Evict flows idle longer than their transport's timeout, or active too long.

        ``idle_ns`` holds one timeout per transport value (tcp, udp, sctp, dccp).
        """
        rows = self.expired(now_ns, idle_ns, active_ns)
        self.evict(rows)
        return rows

    def expired(self, now_ns: int, idle_ns: npt.NDArray[np.int64], active_ns: int) -> I64:
        """The rows ``expire`` would evict, left in place (to be read before eviction)."""
        size = self.size
        alive = self.alive[:size]
        idle = (now_ns - self.last_ns[:size]) > idle_ns[self.keys["t"][:size]]
        active = (now_ns - self.first_ns[:size]) > active_ns
        return np.flatnonzero(alive & (idle | active)).astype(np.int64)

    def enforce_limit(self, max_flows: int) -> I64:
        """Evict the least recently seen flows beyond ``max_flows``."""
        rows = self.least_recent(len(self) - max_flows)
        self.evict(rows)
        return rows

    def least_recent(self, count: int) -> I64:
        """The ``count`` live rows seen least recently (none if ``count`` <= 0), left in place."""
        if count <= 0:
            return np.empty(0, dtype=np.int64)
        live = np.flatnonzero(self.alive[: self.size])
        if count >= live.size:
            return live.astype(np.int64)
        return live[np.argpartition(self.last_ns[live], count - 1)[:count]].astype(np.int64)

    def add_fragments(self, flows: I64, from_a: Bool, wirelen: npt.NDArray[Any],
                      ts: I64) -> None:
        """Count non-first fragments attributed to known flows."""
        wire = wirelen.astype(np.uint64)
        np.add.at(self.packets_ab, flows[from_a], np.uint64(1))
        np.add.at(self.packets_ba, flows[~from_a], np.uint64(1))
        np.add.at(self.bytes_ab, flows[from_a], wire[from_a])
        np.add.at(self.bytes_ba, flows[~from_a], wire[~from_a])
        np.minimum.at(self.first_ns, flows, ts)
        np.maximum.at(self.last_ns, flows, ts)

    def decide(self, table: PortTable, rows: I64 | None = None) -> FlowDecisions:
        """The service port of every flow (or of ``rows``), how decided, and flags.

        Rows of evicted flows get answers too; mask them with ``alive``.
        """
        sel = slice(0, self.size) if rows is None else rows
        t = self.keys["t"][sel]
        pa, pb = self.keys["ap"][sel], self.keys["bp"][sel]
        st_a, _, _ = table.lookup_many(t, pa)
        st_b, _, _ = table.lookup_many(t, pb)
        assigned_a = st_a == PortStatus.ASSIGNED
        assigned_b = st_b == PortStatus.ASSIGNED
        dyn_a = pa >= _FIRST_DYNAMIC
        dyn_b = pb >= _FIRST_DYNAMIC
        side = self.handshake_side[sel]
        handshake = side != _SIDE_UNKNOWN
        registry = ~handshake & (assigned_a ^ assigned_b)
        dynamic = ~handshake & ~registry & (dyn_a ^ dyn_b)
        lower = ~handshake & ~registry & ~dynamic
        service_is_a = np.select(
            [handshake, registry, dynamic], [side == _SIDE_A, assigned_a, ~dyn_a],
            default=pa <= pb,
        )
        rule = np.select(
            [handshake, registry, dynamic, lower],
            [ServiceSideRule.HANDSHAKE, ServiceSideRule.REGISTRY, ServiceSideRule.DYNAMIC_RANGE,
             ServiceSideRule.LOWER_PORT],
        ).astype(np.uint8)
        service_port = np.where(service_is_a, pa, pb).astype(np.uint16)
        client_port = np.where(service_is_a, pb, pa).astype(np.uint16)
        status, service_id, port_flags = table.lookup_many(t, service_port)
        flags = STATUS_REASONS[status] | np.where(
            (port_flags & PortFlag.UNAUTHORIZED_USE) != 0, FlagReason.UNAUTHORIZED_USE, 0
        ).astype(np.uint8)
        return FlowDecisions(service_is_a, service_port, client_port, rule, status,
                             service_id, flags, t.copy())
