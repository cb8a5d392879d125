"""Vectorised decoding of a whole ``PacketBatch`` into per-packet flow fields.

This is the hot path of portwatch, so no Python code here runs once per packet.
Every stage computes header positions for all packets as an int64 array and
gathers header fields with fancy indexing (``data[pos + k]``). Python loops run
only over protocol depth: at most four VLAN tags and eight IPv6 extension
headers, each iteration touching only the packets still inside that chain.

Bounds: a field is only trusted after checking that its bytes lie inside the
packet's captured length. Lanes that fail a check read from a harmless position
near the start of the buffer and their result is discarded, so nothing is ever
read outside ``data`` and no value derives from bytes beyond a packet's caplen.

Two limits apply to every header we read. Bytes past the *capture* (caplen)
make the packet ``TRUNCATED`` when the snapshot length cut it (caplen <
wirelen) and ``MALFORMED`` when the frame was captured whole, so the bytes were
never on the wire; bytes past the IP header's *declared* length
(IPv4 total length, IPv6 payload length; 0 means "unknown", as in TSO captures
and jumbograms) make it ``MALFORMED``, because they are link-layer padding, not
headers. TCP needs 14 bytes (ports and flags); UDP, SCTP and DCCP need 4.

What each status carries: ``OK`` has every field. ``ICMP``, ``FRAGMENT`` and
``OTHER_IP`` carry the IP fields (version, protocol, addresses, fragment id)
but no ports. ``NON_IP``, ``TRUNCATED``, ``UNSUPPORTED_LINK`` and ``MALFORMED``
carry nothing but ``wirelen``: all other fields are zero.

Tunnels (see ``_decapsulate``): a packet whose innermost decoded layer is a
tunnel (VXLAN, Geneve, GTP-U over UDP; GRE, ERSPAN, IP-in-IP, IPv6-in-IP over
IP) is decoded again from the tunnel's payload, up to ``MAX_ENCAPSULATIONS``
deep. When the inner packet carries IP, the packet's row becomes the inner
packet (what gets named and flagged), ``encap`` records the stack of
encapsulations, outermost in the low nibble, and the row it replaced moves to
``tunnels`` (the packet's outer layers, outermost first), so the tunnel flow
(for example udp/4789) is counted too. When the inner packet does not carry
IP (ARP in VXLAN, an inner header cut by the snapshot length, garbage on port
4789) the packet stays its outer row. MPLS label stacks and PPPoE sessions are
shims below IP; they are recorded in ``encap`` but carry no flow of their own.

``decode_batch`` runs the compiled decoder (``_decode.pyx``: the same rules in
one loop per packet, with the GIL released) when it is built, unless
``PORTWATCH_DECODE=numpy``; the numpy code here is the fallback and the
reference it is tested against, column for column.
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from portwatch._engines import ENGINES, use_compiled
from portwatch.capture.batch import LinkType, PacketBatch
from portwatch.ports import LabelledEnum, Transport

try:
    # Not ``from portwatch.decode import _decode``: while the package initialises that
    # form words a missing extension as a circular import; this one names the module.
    import portwatch.decode._decode as _decode  # noqa: PLR0402
except ImportError as _exc:  # the extension was not built (no compiler): numpy decodes
    COMPILED = False
    _WHY_NOT = f"the compiled decoder is not built ({_exc})"
else:
    COMPILED = True
    _WHY_NOT = ""

__all__ = [
    "COMPILED",
    "DECODERS",
    "ENCAPSULATIONS",
    "MAX_ENCAPSULATIONS",
    "MAX_GTP_EXTENSION_HEADERS",
    "MAX_IPV6_EXTENSION_HEADERS",
    "MAX_MPLS_LABELS",
    "MAX_VLAN_TAGS",
    "NO_TRANSPORT",
    "TRANSPORT_OF_PROTO",
    "TUNNEL_DTYPE",
    "TUNNEL_UNUSED",
    "DecodeStatus",
    "DecodedBatch",
    "Encapsulation",
    "address_bytes",
    "decode_batch",
    "encapsulation_label",
    "encapsulation_labels",
]

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

MAX_VLAN_TAGS = 4
MAX_IPV6_EXTENSION_HEADERS = 8
#: Encapsulations one packet may carry (tunnels, MPLS and PPPoE shims together);
#: ``DecodedBatch.encap`` keeps one per nibble of a uint16.
MAX_ENCAPSULATIONS = 4
MAX_MPLS_LABELS = 8
MAX_GTP_EXTENSION_HEADERS = 4


class Encapsulation(IntEnum):
    """One encapsulation of a packet; a nibble of ``DecodedBatch.encap``.

    Values are stable (they are stored). ``ERSPAN`` is GRE carrying ERSPAN
    (types I, II, III); ``IPIP`` is IPv4 in IP (protocol 4); ``IP6IP`` is IPv6
    in IP (protocol 41, "6in4"/"6in6").
    """

    VXLAN = 1
    GENEVE = 2
    GRE = 3
    ERSPAN = 4
    IPIP = 5
    IP6IP = 6
    GTPU = 7
    MPLS = 8
    PPPOE = 9

    @property
    def label(self) -> str:
        return _ENCAPSULATION_LABELS[self]


_ENCAPSULATION_LABELS: dict[int, str] = {
    Encapsulation.VXLAN: "vxlan", Encapsulation.GENEVE: "geneve", Encapsulation.GRE: "gre",
    Encapsulation.ERSPAN: "erspan", Encapsulation.IPIP: "ipip", Encapsulation.IP6IP: "ip6ip",
    Encapsulation.GTPU: "gtpu", Encapsulation.MPLS: "mpls", Encapsulation.PPPOE: "pppoe",
}
#: Labels by nibble value ("" for 0 and for values no version has used).
ENCAPSULATIONS: tuple[str, ...] = tuple(_ENCAPSULATION_LABELS.get(v, "") for v in range(16))


def encapsulation_label(code: int) -> str:
    """``"vxlan+mpls"`` for an ``encap`` code: outermost first, ``""`` for none."""
    names = []
    while code:
        names.append(ENCAPSULATIONS[code & 0xF] or f"encap-{code & 0xF}")
        code >>= 4
    return "+".join(names)


def encapsulation_labels(codes: npt.NDArray[Any]) -> list[str]:
    """``encapsulation_label`` of every code; Python runs once per distinct code."""
    distinct, inverse = np.unique(np.asarray(codes, dtype=np.uint16), return_inverse=True)
    labels = [encapsulation_label(int(c)) for c in distinct]
    return [labels[i] for i in inverse.reshape(-1).tolist()]


class DecodeStatus(LabelledEnum, IntEnum):
    """Why a packet does or does not yield transport ports.

    Values are stable (they are stored in ``DecodedBatch.status``). Statuses
    below ``NON_IP`` carry the IP fields; only ``OK`` carries ports.
    """

    OK = 0
    ICMP = 1
    FRAGMENT = 2
    OTHER_IP = 3
    NON_IP = 4
    TRUNCATED = 5
    UNSUPPORTED_LINK = 6
    MALFORMED = 7

    @property
    def carries_ip(self) -> bool:
        return self <= DecodeStatus.OTHER_IP



#: ``TRANSPORT_OF_PROTO[ip_proto]`` is the ``Transport`` value (table row) or 255.
NO_TRANSPORT = 255
TRANSPORT_OF_PROTO: U8 = np.full(256, NO_TRANSPORT, dtype=np.uint8)
for _t in Transport:
    TRANSPORT_OF_PROTO[_t.ip_protocol] = _t.value
TRANSPORT_OF_PROTO.flags.writeable = False

_OK = np.uint8(DecodeStatus.OK)
_ICMP = np.uint8(DecodeStatus.ICMP)
_FRAGMENT = np.uint8(DecodeStatus.FRAGMENT)
_OTHER_IP = np.uint8(DecodeStatus.OTHER_IP)
_NON_IP = np.uint8(DecodeStatus.NON_IP)
_TRUNCATED = np.uint8(DecodeStatus.TRUNCATED)
_UNSUPPORTED = np.uint8(DecodeStatus.UNSUPPORTED_LINK)
_MALFORMED = np.uint8(DecodeStatus.MALFORMED)

_SNIFF = np.uint8(255)  # link layer says "IP, version unknown": read the nibble
_UNKNOWN_LIMIT = np.int64(np.iinfo(np.int64).max // 4)  # declared length 0: no limit
_IPV4_MAPPED = np.uint64(0xFFFF_0000_0000)
_PAD = 64  # buffers shorter than this are padded so discarded lanes stay inside

_TPIDS = (0x8100, 0x88A8, 0x9100)
_IS_TPID = np.zeros(65536, dtype=np.bool_)
_IS_TPID[list(_TPIDS)] = True

_ICMP_PROTOS = (1, 58)
_IS_ICMP = np.zeros(256, dtype=np.bool_)
_IS_ICMP[list(_ICMP_PROTOS)] = True

# Hop-by-hop, routing, fragment, destination options, AH, and the RFC 7045
# "same format" headers (mobility, HIP, shim6). ESP (50) and no-next-header
# (59) end the chain and leave the packet OTHER_IP.
_IPV6_EXT = (0, 43, 44, 60, 51, 135, 139, 140)
_IS_EXT = np.zeros(256, dtype=np.bool_)
_IS_EXT[list(_IPV6_EXT)] = True

_AF_INET6 = (24, 28, 30)  # NetBSD/OpenBSD, FreeBSD, Darwin

_ETH_IPV4, _ETH_IPV6, _ETH_TEB = 0x0800, 0x86DD, 0x6558
_ETH_MPLS, _ETH_MPLS_MC, _ETH_PPPOE, _ETH_FABRICPATH = 0x8847, 0x8848, 0x8864, 0x8903
_ETH_ERSPAN_2, _ETH_ERSPAN_3 = 0x88BE, 0x22EB
#: PPP protocol -> the ethertype of the same payload (0: not one we read).
_PPP_TO_ETHERTYPE = np.zeros(65536, dtype=np.uint16)
_PPP_TO_ETHERTYPE[[0x0021, 0x0057, 0x0281, 0x0283]] = [_ETH_IPV4, _ETH_IPV6, _ETH_MPLS,
                                                        _ETH_MPLS_MC]
_PPP_TO_ETHERTYPE.flags.writeable = False

#: Decoding modes beyond the link types: where a tunnel's payload starts.
_MODE_MPLS = 1 << 20  # an MPLS label stack (GRE or Geneve payload 0x8847/0x8848)
_VXLAN_PORT, _GENEVE_PORT, _GTPU_PORT = 4789, 6081, 2152
_TUNNEL_PORTS = (_VXLAN_PORT, _GENEVE_PORT, _GTPU_PORT)
_IS_TUNNEL_PORT = np.zeros(65536, dtype=np.bool_)
_IS_TUNNEL_PORT[list(_TUNNEL_PORTS)] = True
_IS_TUNNEL_PORT.flags.writeable = False
_IS_TUNNEL_PROTO = np.zeros(256, dtype=np.bool_)  # GRE, IPv4 and IPv6 in IP
_IS_TUNNEL_PROTO[[47, 4, 41]] = True
_IS_TUNNEL_PROTO.flags.writeable = False
_IS_TAG_OR_FABRICPATH = _IS_TPID.copy()
_IS_TAG_OR_FABRICPATH[_ETH_FABRICPATH] = True
_IS_TAG_OR_FABRICPATH.flags.writeable = False
_IS_SHIM = np.zeros(65536, dtype=np.bool_)  # ethertypes with a shim before IP
_IS_SHIM[[0x8847, 0x8848, 0x8864]] = True
_IS_SHIM.flags.writeable = False

#: One outer layer of a packet (``DecodedBatch.tunnels``): the row it had
#: before its tunnel was opened. ``status`` ``TUNNEL_UNUSED`` marks no layer.
TUNNEL_DTYPE = np.dtype([
    ("status", "u1"), ("ip_version", "u1"), ("ip_proto", "u1"), ("tcp_flags", "u1"),
    ("src_port", "u2"), ("dst_port", "u2"), ("encap", "u2"),
    ("src_hi", "u8"), ("src_lo", "u8"), ("dst_hi", "u8"), ("dst_lo", "u8"),
])
TUNNEL_UNUSED = 255
_TUNNEL_FIELDS = tuple(TUNNEL_DTYPE.names or ())


@dataclass(slots=True)
class DecodedBatch:
    """Field arrays, one element per packet of the batch they came from.

    Addresses are 128-bit, IPv4 as IPv4-mapped IPv6 (``::ffff:a.b.c.d``), split
    into big-endian halves ``hi``/``lo`` as uint64: the flow engine combines
    integers with numpy far faster than it compares 16-byte rows.
    """

    status: U8
    ip_version: U8
    ip_proto: U8
    src_hi: U64
    src_lo: U64
    dst_hi: U64
    dst_lo: U64
    src_port: U16
    dst_port: U16
    tcp_flags: U8
    frag_id: U32
    is_first_fragment: Bool
    wirelen: U32
    #: Encapsulations of the row, one ``Encapsulation`` per nibble, outermost lowest.
    encap: U16 = field(default_factory=lambda: np.zeros(0, dtype=np.uint16))
    #: ``(n, depth)`` of ``TUNNEL_DTYPE``: the outer layers of each packet whose
    #: tunnel was opened, outermost first (``status == TUNNEL_UNUSED``: none).
    tunnels: npt.NDArray[np.void] = field(
        default_factory=lambda: np.zeros((0, 0), dtype=TUNNEL_DTYPE))

    def __post_init__(self) -> None:
        # Builders that predate tunnels leave ``encap``/``tunnels`` out: no tunnels.
        n = self.status.shape[0]
        if self.encap.shape[0] != n:
            if self.encap.shape[0]:
                raise ValueError(f"encap has {self.encap.shape[0]} rows, status {n}")
            self.encap = np.zeros(n, dtype=np.uint16)
        if self.tunnels.shape[0] != n:
            if self.tunnels.shape[0]:
                raise ValueError(f"tunnels has {self.tunnels.shape[0]} rows, status {n}")
            self.tunnels = np.zeros((n, 0), dtype=TUNNEL_DTYPE)

    def __len__(self) -> int:
        return int(self.status.shape[0])

    def tunnel_rows(self) -> tuple[I64, npt.NDArray[np.void]]:
        """(packet of each outer layer, the layers), outermost layers first.

        The flow engine counts these as flows of their own: a VXLAN packet is
        in its inner flow (its row) and in its udp/4789 flow (here).
        """
        if self.tunnels.shape[1] == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=TUNNEL_DTYPE)
        used = (self.tunnels["status"] != TUNNEL_UNUSED).T  # (depth, n): outermost first
        depth, packet = np.nonzero(used)
        return packet.astype(np.int64), self.tunnels.T[depth, packet]

    def tunnel_batch(self) -> tuple[I64, DecodedBatch]:
        """``tunnel_rows`` as a ``DecodedBatch`` (each layer with its packet's wirelen)."""
        packet, layers = self.tunnel_rows()
        m = packet.shape[0]
        columns = {name: layers[name].copy() for name in _TUNNEL_FIELDS}
        return packet, DecodedBatch(
            **columns, frag_id=np.zeros(m, dtype=np.uint32),
            is_first_fragment=np.zeros(m, dtype=np.bool_), wirelen=self.wirelen[packet])

    def src_ip(self, i: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The source address of packet ``i`` for reports; ``None`` if it has none."""
        return _ip(self.ip_version[i], self.src_hi[i], self.src_lo[i])

    def dst_ip(self, i: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        return _ip(self.ip_version[i], self.dst_hi[i], self.dst_lo[i])


def _ip(
    version: np.uint8, hi: np.uint64, lo: np.uint64
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if version == 4:
        return ipaddress.IPv4Address(int(lo) & 0xFFFF_FFFF)
    if version == 6:
        return ipaddress.IPv6Address((int(hi) << 64) | int(lo))
    return None


def address_bytes(hi: U64, lo: U64) -> U8:
    """``(n, 16)`` network-order address bytes from the ``hi``/``lo`` halves."""
    words = np.empty((hi.shape[0], 2), dtype=">u8")
    words[:, 0] = hi
    words[:, 1] = lo
    return words.view(np.uint8).reshape(-1, 16)


class _FieldLoads:
    """Big-endian (and little-endian u32) loads at arbitrary byte positions.

    The 32- and 64-bit views overlap themselves with a stride of one byte, so
    ``view[pos]`` loads a whole field per packet in one gather. numpy gathers
    such unaligned elements slowly, so 16-bit fields (the most frequent) are
    assembled from two byte gathers instead.
    """

    __slots__ = ("_le32", "_n32", "_n64", "u8")

    def __init__(self, data: U8) -> None:
        self.u8 = data
        self._n32 = _overlapping(data, np.dtype(np.uint32))
        self._n64 = _overlapping(data, np.dtype(np.uint64))
        self._le32 = _overlapping(data, np.dtype("<u4"))

    def be16(self, pos: I64) -> U16:
        # Two byte gathers beat one unaligned 16-bit gather about fourfold.
        high = self.u8[pos].astype(np.uint16)
        high <<= 8
        high |= self.u8[pos + 1]
        return high

    def be32(self, pos: I64) -> U32:
        return _from_network(self._n32[pos])

    def be64(self, pos: I64) -> U64:
        return _from_network(self._n64[pos])

    def le32(self, pos: I64) -> U32:
        return self._le32[pos].astype(np.uint32, copy=False)


def _overlapping(data: U8, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    count = max(data.shape[0] - dtype.itemsize + 1, 0)
    return np.ndarray(shape=(count,), dtype=dtype, buffer=data, strides=(1,))


if sys.byteorder == "little":

    def _from_network(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return values.byteswap(inplace=True)

else:  # pragma: no cover - big-endian hosts

    def _from_network(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return values


def _i64(values: npt.NDArray[Any]) -> I64:
    return values.astype(np.int64)


def _limit_status(need_end: I64, declared_end: I64, captured_end: I64) -> U8:
    """MALFORMED past the IP header's declared length, TRUNCATED past caplen."""
    status = np.zeros(need_end.shape[0], dtype=np.uint8)
    status[need_end > captured_end] = _TRUNCATED
    status[need_end > declared_end] = _MALFORMED
    return status


@dataclass(slots=True)
class _Link:
    """Link-layer result for a group: where IP starts, which version, and the
    shims (MPLS, PPPoE) crossed on the way, as a relative ``encap`` stack."""

    l3: I64
    version: U8
    status: U8
    encap: U16 = field(default_factory=lambda: np.zeros(0, dtype=np.uint16))
    depth: U8 = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))

    def __post_init__(self) -> None:
        n = self.l3.shape[0]
        if self.encap.shape[0] != n:
            self.encap = np.zeros(n, dtype=np.uint16)
        if self.depth.shape[0] != n:
            self.depth = np.zeros(n, dtype=np.uint8)


def _push(encap: U16, depth: U8, lanes: I64, kind: Encapsulation) -> None:
    """Append ``kind`` to the encapsulation stacks of ``lanes`` (in place)."""
    shift = (depth[lanes].astype(np.uint16) * 4).astype(np.uint16)
    encap[lanes] |= (np.uint16(kind) << shift).astype(np.uint16)
    depth[lanes] += 1


def _ethertype_link(r: _FieldLoads, start: I64, end: I64, proto_at: int, header: int) -> _Link:
    """Cooked captures and Cisco HDLC: a fixed header with an ethertype field."""
    ok = start + header <= end
    proto = r.be16(np.where(ok, start, 0) + proto_at)
    return _by_ethertype(r, start + header, proto, ok, end)


def _by_ethertype(r: _FieldLoads, l3: I64, ethertype: U16, ok: Bool, end: I64) -> _Link:
    """IP by ethertype, through a PPPoE session header and an MPLS label stack."""
    n = l3.shape[0]
    status = np.where(ok, _OK, _TRUNCATED).astype(np.uint8)
    encap = np.zeros(n, dtype=np.uint16)
    depth = np.zeros(n, dtype=np.uint8)
    shimmed = np.flatnonzero(ok & _IS_SHIM[ethertype])
    if shimmed.size:  # callers hand over arrays of their own: l3 and ethertype change in place
        _shims(r, shimmed, l3=l3, ethertype=ethertype, status=status, end=end, encap=encap,
               depth=depth)
    version = np.zeros(n, dtype=np.uint8)
    version[ethertype == _ETH_IPV4] = 4
    version[ethertype == _ETH_IPV6] = 6
    status[(status == _OK) & (version == 0)] = _NON_IP
    version[status != _OK] = 0
    return _Link(l3, version, status, encap, depth)


def _shims(r: _FieldLoads, shimmed: I64, *, l3: I64, ethertype: U16, status: U8, end: I64,
           encap: U16, depth: U8) -> None:
    """A PPPoE session header, then an MPLS label stack, for the lanes ``shimmed``."""
    lanes = shimmed[ethertype[shimmed] == _ETH_PPPOE]
    if lanes.size:
        # version/type, code, session id, length, then the PPP protocol
        p = l3[lanes]
        cut = p + 8 > end[lanes]
        status[lanes[cut]] = _TRUNCATED
        lanes, p = lanes[~cut], p[~cut]
        ethertype[lanes] = _PPP_TO_ETHERTYPE[r.be16(p + 6)]
        l3[lanes] = p + 8
        _push(encap, depth, lanes, Encapsulation.PPPOE)
    kind = ethertype[shimmed]
    lanes = shimmed[(status[shimmed] == _OK) & ((kind == _ETH_MPLS) | (kind == _ETH_MPLS_MC))]
    if lanes.size:
        _mpls(r, lanes, l3, ethertype, status=status, end=end)
        _push(encap, depth, lanes, Encapsulation.MPLS)


def _mpls(r: _FieldLoads, lanes: I64, l3: I64, ethertype: U16, *, status: U8, end: I64) -> None:
    """Walk label stacks to the bottom of stack; the payload's version nibble
    says IPv4 or IPv6 (anything else, a pseudowire, is not IP)."""
    p = l3[lanes].copy()
    e = end[lanes]
    active = np.arange(lanes.size)
    for _ in range(MAX_MPLS_LABELS):
        cut = p[active] + 4 > e[active]
        status[lanes[active[cut]]] = _TRUNCATED
        active = active[~cut]
        bottom = (r.u8[p[active] + 2] & 1) != 0
        p[active] += 4
        active = active[~bottom]
        if active.size == 0:
            break
    status[lanes[active]] = _MALFORMED  # a deeper stack than MAX_MPLS_LABELS
    good = status[lanes] == _OK
    has = good & (p + 1 <= e)
    status[lanes[good & ~has]] = _TRUNCATED
    nibble = r.u8[np.where(has, p, 0)] >> 4
    ethertype[lanes] = np.where(has & (nibble == 4), _ETH_IPV4,
                                np.where(has & (nibble == 6), _ETH_IPV6, 0)).astype(np.uint16)
    l3[lanes] = p


def _ethernet(r: _FieldLoads, start: I64, end: I64) -> _Link:
    ok = start + 14 <= end
    ethertype = r.be16(np.where(ok, start, 0) + 12)
    l3 = start + 14
    # Only frames with a VLAN tag or a FabricPath header go through the loop.
    lanes = np.flatnonzero(ok & _IS_TAG_OR_FABRICPATH[ethertype])
    if lanes.size:
        # Cisco FabricPath: outer MACs, 0x8903, a 2-byte FTag/TTL, then the
        # whole classical Ethernet frame (its MACs and ethertype).
        fabric = lanes[ethertype[lanes] == _ETH_FABRICPATH]
        if fabric.size:
            cut = l3[fabric] + 16 > end[fabric]
            ok[fabric[cut]] = False
            fabric = fabric[~cut]
            ethertype[fabric] = r.be16(l3[fabric] + 14)
            l3[fabric] += 16
        for _ in range(MAX_VLAN_TAGS):
            lanes = lanes[ok[lanes] & _IS_TPID[ethertype[lanes]]]
            if lanes.size == 0:
                break
            cut = l3[lanes] + 4 > end[lanes]
            ok[lanes[cut]] = False
            lanes = lanes[~cut]
            ethertype[lanes] = r.be16(l3[lanes] + 2)
            l3[lanes] += 4
        lanes = lanes[ok[lanes] & _IS_TPID[ethertype[lanes]]]
    link = _by_ethertype(r, l3, ethertype, ok, end)
    link.status[lanes] = _MALFORMED  # deeper than MAX_VLAN_TAGS
    return link


def _ppp(r: _FieldLoads, start: I64, end: I64) -> _Link:
    """LINKTYPE_PPP: optional HDLC-like address/control (0xFF 0x03), then the
    PPP protocol, one byte when its low bit says so (protocol compression)."""
    ok = start + 2 <= end
    hdlc = ok & (r.be16(np.where(ok, start, 0)) == 0xFF03)
    p = start + np.where(hdlc, 2, 0)
    ok &= p + 1 <= end
    first = r.u8[np.where(ok, p, 0)]
    short = (first & 1) != 0
    ok &= p + np.where(short, 1, 2) <= end
    proto = np.where(short, first.astype(np.uint16), r.be16(np.where(ok & ~short, p, 0)))
    return _by_ethertype(r, p + np.where(short, 1, 2), _PPP_TO_ETHERTYPE[proto], ok, end)


def _dot11(r: _FieldLoads, start: I64, end: I64) -> _Link:
    """IEEE 802.11 data frames: the MAC header (a fourth address between access
    points, QoS control, HT control), then LLC/SNAP with an ethertype. Other
    frames (management, control, null data, protected payloads) are not IP."""
    ok = start + 2 <= end  # frame control; control frames are shorter than 24 bytes
    base = np.where(ok, start, 0)
    control = r.u8[base]
    flags = r.u8[base + 1]
    subtype = control >> 4
    data = ok & (((control >> 2) & 3) == 2) & ((subtype & 0x4) == 0) & ((flags & 0x40) == 0)
    qos = (subtype & 0x8) != 0
    header = (24 + np.where((flags & 3) == 3, 6, 0) + np.where(qos, 2, 0)
              + np.where(qos & ((flags & 0x80) != 0), 4, 0))
    snap = start + header
    has = data & (snap + 8 <= end)
    at = np.where(has, snap, 0)
    llc = (r.be16(at) == 0xAAAA) & (r.u8[at + 2] == 0x03) & (r.be16(at + 3) == 0) & (
        (r.u8[at + 5] == 0) | (r.u8[at + 5] == 0xF8))
    ethertype = np.where(has & llc, r.be16(at + 6), 0).astype(np.uint16)
    return _by_ethertype(r, snap + 8, ethertype, ok & (~data | has), end)


def _ppi(r: _FieldLoads, start: I64, end: I64) -> _Link:
    """Per-Packet Information: a little-endian header naming the link type of
    the frame that follows it (version 0, header length >= 8)."""
    n = start.shape[0]
    ok = start + 8 <= end
    base = np.where(ok, start, 0)
    header_len = _i64(r.le32(base) >> 16)
    dlt = r.le32(base + 4)
    bad = ok & ((r.u8[base] != 0) | (header_len < 8))
    inner = start + header_len
    cut = ok & ~bad & (inner > end)
    out = _Link(inner.copy(), np.zeros(n, dtype=np.uint8),
                np.full(n, _UNSUPPORTED, dtype=np.uint8))
    out.status[~ok | cut] = _TRUNCATED
    out.status[bad] = _MALFORMED
    go = ok & ~bad & ~cut & (dlt != LinkType.PPI)
    for linktype in np.unique(dlt[go]).tolist():
        idx = np.flatnonzero(go & (dlt == linktype))
        link = _link(r, int(linktype), inner[idx], end[idx])
        out.l3[idx], out.version[idx], out.status[idx] = link.l3, link.version, link.status
        out.encap[idx], out.depth[idx] = link.encap, link.depth
    return out


def _family_link(start: I64, end: I64, family: U32, ok: Bool) -> _Link:
    version = np.zeros(start.shape[0], dtype=np.uint8)
    version[family == 2] = 4
    version[np.isin(family, _AF_INET6)] = 6
    version[~ok] = 0
    status = np.where(ok, np.where(version == 0, _NON_IP, _OK), _TRUNCATED).astype(np.uint8)
    return _Link(start + 4, version, status)


def _null(r: _FieldLoads, start: I64, end: I64) -> _Link:
    """Host byte order of the writer: a family above 0xFFFF was written swapped."""
    ok = start + 4 <= end
    family = r.le32(np.where(ok, start, 0))
    swapped = family > 0xFFFF
    family[swapped] = family[swapped].byteswap()
    return _family_link(start, end, family, ok)


def _loop(r: _FieldLoads, start: I64, end: I64) -> _Link:
    ok = start + 4 <= end
    return _family_link(start, end, r.be32(np.where(ok, start, 0)), ok)


def _fixed_ip(start: I64, version: np.uint8) -> _Link:
    n = start.shape[0]
    return _Link(start.copy(), np.full(n, version, dtype=np.uint8), np.zeros(n, dtype=np.uint8))


def _link(r: _FieldLoads, linktype: int, start: I64, end: I64) -> _Link:
    if linktype == LinkType.ETHERNET:
        return _ethernet(r, start, end)
    if linktype == LinkType.LINUX_SLL:
        return _ethertype_link(r, start, end, proto_at=14, header=16)
    if linktype == LinkType.LINUX_SLL2:
        return _ethertype_link(r, start, end, proto_at=0, header=20)
    if linktype == LinkType.NULL:
        return _null(r, start, end)
    if linktype == LinkType.LOOP:
        return _loop(r, start, end)
    if linktype in (LinkType.RAW, LinkType.RAW_DLT12, LinkType.RAW_DLT14):
        return _fixed_ip(start, _SNIFF)
    if linktype == LinkType.IPV4:
        return _fixed_ip(start, np.uint8(4))
    if linktype == LinkType.IPV6:
        return _fixed_ip(start, np.uint8(6))
    if linktype == LinkType.PPP:
        return _ppp(r, start, end)
    if linktype == LinkType.C_HDLC:
        return _ethertype_link(r, start, end, proto_at=2, header=4)
    if linktype == LinkType.PPI:
        return _ppi(r, start, end)
    if linktype == LinkType.IEEE802_11:
        return _dot11(r, start, end)
    if linktype == _MODE_MPLS:
        n = start.shape[0]
        return _by_ethertype(r, start.copy(), np.full(n, _ETH_MPLS, dtype=np.uint16),
                             np.ones(n, dtype=np.bool_), end)
    n = start.shape[0]
    return _Link(start, np.zeros(n, dtype=np.uint8), np.full(n, _UNSUPPORTED, dtype=np.uint8))


@dataclass(slots=True)
class _State:
    """Per-packet arrays the stages fill in; the decoded fields plus scratch."""

    out: DecodedBatch
    l3: I64
    version: U8
    l4: I64
    declared_end: I64
    end: I64
    depth: U8  # entries in out.encap

    def take(self, idx: I64) -> _State:
        return _State(_take(self.out, idx), self.l3[idx], self.version[idx], self.l4[idx],
                      self.declared_end[idx], self.end[idx], self.depth[idx])


_ROW_FIELDS = ("status", "ip_version", "ip_proto", "src_hi", "src_lo", "dst_hi", "dst_lo",
               "src_port", "dst_port", "tcp_flags", "frag_id", "is_first_fragment", "wirelen",
               "encap")


def _take(d: DecodedBatch, idx: I64) -> DecodedBatch:
    """Rows ``idx`` of ``d`` (without their outer layers)."""
    return DecodedBatch(**{name: getattr(d, name)[idx] for name in _ROW_FIELDS})


def _new_state(n: int, wirelen: U32, end: I64) -> _State:
    def z(dtype: type[np.generic]) -> npt.NDArray[Any]:
        return np.zeros(n, dtype=dtype)

    out = DecodedBatch(
        status=z(np.uint8),
        ip_version=z(np.uint8),
        ip_proto=z(np.uint8),
        src_hi=z(np.uint64),
        src_lo=z(np.uint64),
        dst_hi=z(np.uint64),
        dst_lo=z(np.uint64),
        src_port=z(np.uint16),
        dst_port=z(np.uint16),
        tcp_flags=z(np.uint8),
        frag_id=z(np.uint32),
        is_first_fragment=z(np.bool_),
        wirelen=wirelen,
        encap=z(np.uint16),
    )
    return _State(out, z(np.int64), z(np.uint8), z(np.int64), z(np.int64), end, z(np.uint8))


def _decode_links(r: _FieldLoads, st: _State, modes: npt.NDArray[Any], start: I64) -> None:
    first = int(modes[0])
    if bool((modes == first).all()):
        groups: list[tuple[int, I64 | None]] = [(first, None)]
    else:
        # bincount over link types (uint16); tunnel payload modes reach 1 << 20
        present = (np.flatnonzero(np.bincount(modes)) if modes.dtype == np.uint16
                   else np.unique(modes))
        groups = [(int(t), np.flatnonzero(modes == t)) for t in present.tolist()]
    for mode, idx in groups:
        if idx is None:
            link = _link(r, mode, start, st.end)
            st.l3, st.version, st.out.status = link.l3, link.version, link.status
            st.out.encap, st.depth = link.encap, link.depth
        else:
            link = _link(r, mode, start[idx], st.end[idx])
            st.l3[idx], st.version[idx], st.out.status[idx] = link.l3, link.version, link.status
            if link.depth.any():
                st.out.encap[idx], st.depth[idx] = link.encap, link.depth


def _check_versions(r: _FieldLoads, st: _State) -> tuple[I64, I64]:
    """Read the version nibble; split continuing packets into IPv4 and IPv6."""
    idx = np.flatnonzero(st.out.status == _OK)
    l3, end, version = st.l3[idx], st.end[idx], st.version[idx]
    has = l3 + 1 <= end
    nibble = r.u8[np.where(has, l3, 0)] >> 4
    version = np.where(version == _SNIFF, nibble, version)
    bad = has & ((nibble != version) | ((version != 4) & (version != 6)))
    status = np.where(has, np.where(bad, _MALFORMED, _OK), _TRUNCATED).astype(np.uint8)
    st.out.status[idx] = status
    good = status == _OK
    return idx[good & (version == 4)], idx[good & (version == 6)]


def _ipv4(r: _FieldLoads, st: _State, idx: I64) -> None:
    out = st.out
    l3, end = st.l3[idx], st.end[idx]
    ok = l3 + 20 <= end
    base = np.where(ok, l3, 0)
    header_len = _i64(r.u8[base] & 0x0F) * 4
    total_len = _i64(r.be16(base + 2))
    malformed = ok & ((header_len < 20) | ((total_len != 0) & (total_len < header_len)))
    ok &= ~malformed
    cut = ~ok | (l3 + header_len > end)
    frag = r.be16(base + 6)
    offset = frag & 0x1FFF
    addrs = r.be64(base + 12)
    status = np.where(offset != 0, _FRAGMENT, _OK).astype(np.uint8)
    status[cut] = _TRUNCATED
    status[malformed] = _MALFORMED
    out.status[idx] = status
    out.ip_version[idx] = 4
    out.ip_proto[idx] = r.u8[base + 9]
    out.src_lo[idx] = (addrs >> np.uint64(32)) | _IPV4_MAPPED
    out.dst_lo[idx] = (addrs & np.uint64(0xFFFF_FFFF)) | _IPV4_MAPPED
    out.frag_id[idx] = r.be16(base + 4)
    out.is_first_fragment[idx] = (offset == 0) & ((frag & 0x2000) != 0)
    st.l4[idx] = l3 + header_len
    st.declared_end[idx] = np.where(total_len == 0, _UNKNOWN_LIMIT, l3 + total_len)


def _ipv6(r: _FieldLoads, st: _State, idx: I64) -> None:
    out = st.out
    l3, end = st.l3[idx], st.end[idx]
    ok = l3 + 40 <= end
    base = np.where(ok, l3, 0)
    payload_len = _i64(r.be16(base + 4))
    declared_end = np.where(payload_len == 0, _UNKNOWN_LIMIT, l3 + 40 + payload_len)
    status = np.where(ok, _OK, _TRUNCATED).astype(np.uint8)
    next_header = r.u8[base + 6]
    frag_id = np.zeros(idx.shape[0], dtype=np.uint32)
    first = np.zeros(idx.shape[0], dtype=np.bool_)
    pos = l3 + 40
    _ipv6_chain(
        r,
        ok,
        pos=pos,
        end=end,
        declared_end=declared_end,
        next_header=next_header,
        status=status,
        frag_id=frag_id,
        first=first,
    )
    out.status[idx] = status
    out.ip_version[idx] = 6
    out.ip_proto[idx] = next_header
    out.src_hi[idx] = r.be64(base + 8)
    out.src_lo[idx] = r.be64(base + 16)
    out.dst_hi[idx] = r.be64(base + 24)
    out.dst_lo[idx] = r.be64(base + 32)
    out.frag_id[idx] = frag_id
    out.is_first_fragment[idx] = first
    st.l4[idx] = pos
    st.declared_end[idx] = declared_end


def _ipv6_chain(
    r: _FieldLoads,
    ok: Bool,
    *,
    pos: I64,
    end: I64,
    declared_end: I64,
    next_header: U8,
    status: U8,
    frag_id: U32,
    first: Bool,
) -> None:
    """Walk extension headers in place: afterwards ``pos``/``next_header`` name
    the upper layer. Only packets still inside a chain are touched per step."""
    active = np.flatnonzero(ok & _IS_EXT[next_header])
    for _ in range(MAX_IPV6_EXTENSION_HEADERS):
        if active.size == 0:
            return
        p, current = pos[active], next_header[active]
        is_frag = current == 44
        problem = _limit_status(p + np.where(is_frag, 8, 2), declared_end[active], end[active])
        bad = problem != _OK
        if bad.any():
            status[active[bad]] = problem[bad]
            keep = ~bad
            active, p, current, is_frag = active[keep], p[keep], current[keep], is_frag[keep]
        following = r.u8[p]
        ext_len = _i64(r.u8[p + 1])
        size = np.where(current == 51, (ext_len + 2) * 4, (ext_len + 1) * 8)
        stop = np.zeros(active.shape[0], dtype=np.bool_)
        if is_frag.any():
            size[is_frag] = 8
            lanes, fp = active[is_frag], p[is_frag]
            word = r.be16(fp + 2)
            offset = word >> 3
            frag_id[lanes] = r.be32(fp + 4)
            first[lanes] = (offset == 0) & ((word & 1) != 0)
            later = offset != 0
            status[lanes[later]] = _FRAGMENT
            stop[is_frag] = later
        next_header[active] = following
        pos[active] = p + size
        active = active[_IS_EXT[following] & ~stop]
    status[active] = _MALFORMED  # a longer chain than MAX_IPV6_EXTENSION_HEADERS


def _transport(r: _FieldLoads, st: _State) -> None:
    out = st.out
    idx = np.flatnonzero(out.status == _OK)
    proto = out.ip_proto[idx]
    transport = TRANSPORT_OF_PROTO[proto]
    carried = transport != NO_TRANSPORT
    out.status[idx[~carried]] = np.where(_IS_ICMP[proto[~carried]], _ICMP, _OTHER_IP)
    idx, proto = idx[carried], proto[carried]
    l4 = st.l4[idx]
    is_tcp = proto == 6
    problem = _limit_status(l4 + np.where(is_tcp, 14, 4), st.declared_end[idx], st.end[idx])
    bad = problem != _OK
    if bad.any():
        out.status[idx[bad]] = problem[bad]
        good = ~bad
        idx, l4, is_tcp = idx[good], l4[good], is_tcp[good]
    ports = r.be32(l4)
    out.src_port[idx] = ports >> 16
    out.dst_port[idx] = ports & 0xFFFF
    out.tcp_flags[idx[is_tcp]] = r.u8[l4[is_tcp] + 13]


def _clear_failed(out: DecodedBatch) -> None:
    """Zero the IP fields of packets whose status says they carry none."""
    failed = np.flatnonzero(out.status > _OTHER_IP)
    if failed.size == 0:
        return
    for column in (
        out.ip_version,
        out.ip_proto,
        out.src_hi,
        out.src_lo,
        out.dst_hi,
        out.dst_lo,
        out.frag_id,
        out.is_first_fragment,
        out.encap,
    ):
        column[failed] = 0


def _decode_level(r: _FieldLoads, start: I64, end: I64, wirelen: U32, *,
                  modes: npt.NDArray[Any], whole: Bool) -> _State:
    """One pass of the pipeline (link, IP, transport) over packets or tunnel payloads."""
    st = _new_state(start.shape[0], wirelen, end)
    _decode_links(r, st, modes, start)
    v4, v6 = _check_versions(r, st)
    if v4.size:
        _ipv4(r, st, v4)
    if v6.size:
        _ipv6(r, st, v6)
    _transport(r, st)
    # A header missing from a frame we hold whole (all wirelen bytes present)
    # was never on the wire: the packet itself is short ("Malformed Packet" in
    # tshark), not cut by the snapshot length.
    st.out.status[(st.out.status == _TRUNCATED) & whole] = _MALFORMED
    _clear_failed(st.out)
    return st


@dataclass(slots=True)
class _Entries:
    """Tunnels found in a level: rows, where each payload starts, how to read it."""

    rows: I64
    start: I64
    mode: I64
    kind: U8


_GENEVE_MODES = {_ETH_TEB: LinkType.ETHERNET, _ETH_IPV4: LinkType.IPV4,
                 _ETH_IPV6: LinkType.IPV6, _ETH_MPLS: _MODE_MPLS, _ETH_MPLS_MC: _MODE_MPLS}
_GRE_MODE = np.zeros(65536, dtype=np.int64)  # GRE/Geneve protocol type -> mode (0: none)
for _proto, _mode in _GENEVE_MODES.items():
    _GRE_MODE[_proto] = _mode
_GRE_MODE.flags.writeable = False


def _tunnel_entries(r: _FieldLoads, st: _State) -> _Entries:
    """The rows of ``st`` that are a tunnel we open, with their payloads.

    Every header length is checked against the end of the outer packet (its
    captured length and its IP header's declared length); a tunnel whose
    header does not fit, or that says something we do not read, stays shut.
    Fragmented tunnel packets stay shut too: only the whole datagram holds the
    inner packet.
    """
    out = st.out
    found: list[_Entries] = []
    udp = np.flatnonzero((out.ip_proto == 17) & (out.status == _OK))
    if udp.size:  # only whole datagrams on a tunnel port go on
        udp = udp[(_IS_TUNNEL_PORT[out.dst_port[udp]] | _IS_TUNNEL_PORT[out.src_port[udp]])
                  & ~out.is_first_fragment[udp]]
    if udp.size:
        limit = np.minimum(st.end[udp], st.declared_end[udp])
        found.extend(_udp_tunnels(r, udp, st.l4[udp] + 8, limit,
                                  sport=out.src_port[udp], dport=out.dst_port[udp]))
    other = np.flatnonzero(_IS_TUNNEL_PROTO[out.ip_proto] & (out.status == _OTHER_IP))
    other = other[~out.is_first_fragment[other]]
    proto = out.ip_proto[other]
    gre = other[proto == 47]
    if gre.size:
        found.append(_gre(r, gre, st.l4[gre], np.minimum(st.end[gre], st.declared_end[gre])))
    for number, mode, kind in ((4, LinkType.IPV4, Encapsulation.IPIP),
                               (41, LinkType.IPV6, Encapsulation.IP6IP)):
        rows = other[proto == number]
        if rows.size:
            found.append(_Entries(rows, st.l4[rows], np.full(rows.size, int(mode)),
                                  np.full(rows.size, kind, dtype=np.uint8)))
    if not found:
        empty = np.empty(0, dtype=np.int64)
        return _Entries(empty, empty, empty, np.empty(0, dtype=np.uint8))
    return _Entries(np.concatenate([e.rows for e in found]),
                    np.concatenate([e.start for e in found]),
                    np.concatenate([e.mode for e in found]),
                    np.concatenate([e.kind for e in found]))


def _udp_tunnels(r: _FieldLoads, rows: I64, pay: I64, limit: I64, *, sport: U16,
                 dport: U16) -> list[_Entries]:
    """VXLAN, Geneve and GTP-U by UDP port: the destination port first, then the source."""
    def on(port: int) -> Bool:
        hit: Bool = (dport == port) | ((sport == port) & ~_IS_TUNNEL_PORT[dport])
        return hit

    found: list[_Entries] = []
    fits = pay + 8 <= limit
    base = np.where(fits, pay, 0)

    sel = on(_VXLAN_PORT) & fits  # flags, reserved, VNI, reserved: then Ethernet
    found.append(_Entries(rows[sel], pay[sel] + 8, np.full(int(sel.sum()), int(LinkType.ETHERNET)),
                          np.full(int(sel.sum()), Encapsulation.VXLAN, dtype=np.uint8)))

    sel = on(_GENEVE_PORT) & fits  # version, option length (4-byte words), protocol type
    first = r.u8[base]
    size = 8 + _i64(first & 0x3F) * 4
    mode = _GRE_MODE[r.be16(base + 2)]
    sel &= ((first >> 6) == 0) & (pay + size <= limit) & (mode != 0)
    found.append(_Entries(rows[sel], (pay + size)[sel], mode[sel],
                          np.full(int(sel.sum()), Encapsulation.GENEVE, dtype=np.uint8)))

    sel = on(_GTPU_PORT) & fits & ((first >> 5) == 1) & ((first & 0x10) != 0)
    sel &= r.u8[base + 1] == 255  # G-PDU: a user packet follows
    lanes = np.flatnonzero(sel)
    p = pay[lanes] + 8
    lim = limit[lanes]
    optional = (first[lanes] & 0x07) != 0  # sequence, N-PDU, next extension: 4 more bytes
    good = ~optional | (p + 4 <= lim)
    p = np.where(optional, p + 4, p)
    following = np.where(good & ((first[lanes] & 0x04) != 0),
                         r.u8[np.where(good & optional, p - 1, 0)], 0)
    for _ in range(MAX_GTP_EXTENSION_HEADERS):
        going = good & (following != 0)
        if not going.any():
            break
        has = going & (p + 1 <= lim)
        size = _i64(r.u8[np.where(has, p, 0)]) * 4
        ok = has & (size > 0) & (p + size <= lim)
        good &= ~going | ok
        following = np.where(ok, r.u8[np.where(ok, p + size - 1, 0)], following)
        p = np.where(ok, p + size, p)
    good &= following == 0  # longer chains than MAX_GTP_EXTENSION_HEADERS stay shut
    lanes, p = lanes[good], p[good]
    found.append(_Entries(rows[lanes], p, np.full(lanes.size, int(LinkType.RAW)),
                          np.full(lanes.size, Encapsulation.GTPU, dtype=np.uint8)))
    return found


def _gre(r: _FieldLoads, rows: I64, p: I64, limit: I64) -> _Entries:
    """GRE version 0 (RFC 2784/2890) by protocol type; ERSPAN I/II (0x88BE) and III (0x22EB)."""
    fits = p + 4 <= limit
    base = np.where(fits, p, 0)
    bits = r.be16(base)
    proto = r.be16(base + 2)
    size = 4 + 4 * (_i64((bits >> 15) & 1) + _i64((bits >> 13) & 1) + _i64((bits >> 12) & 1))
    ok = fits & ((bits & 0x4007) == 0)  # no routing (deprecated), version 0
    mode = _GRE_MODE[proto].copy()
    kind = np.full(rows.size, Encapsulation.GRE, dtype=np.uint8)
    erspan2 = proto == _ETH_ERSPAN_2
    erspan3 = proto == _ETH_ERSPAN_3
    # ERSPAN type I has no sequence number and no header; type II has both.
    sequenced = (bits & 0x1000) != 0
    header = np.where(erspan2 & sequenced, 8, np.where(erspan3, 12, 0))
    at = p + size
    has = ok & (at + header <= limit)
    version = r.u8[np.where(has & (header > 0), at, 0)] >> 4
    ok &= ~(erspan2 & sequenced) | (has & (version == 1))
    ok &= ~erspan3 | (has & (version == 2))
    # type III: the O flag (last bit of the header) adds an 8-byte platform subheader
    o_flag = erspan3 & has & ((r.u8[np.where(erspan3 & has, at + 11, 0)] & 1) != 0)
    header = header + np.where(o_flag, 8, 0)
    erspan = erspan2 | erspan3
    mode[erspan] = int(LinkType.ETHERNET)
    kind[erspan] = Encapsulation.ERSPAN
    start = at + header
    ok &= (mode != 0) & (start <= limit)
    return _Entries(rows[ok], start[ok], mode[ok], kind[ok])


def _decapsulate(r: _FieldLoads, main: _State, whole: Bool) -> None:
    """Open tunnels level by level; each level touches only the packets inside one.

    A packet's row becomes its inner packet's when that carries IP and the
    encapsulations fit ``MAX_ENCAPSULATIONS``; the row it replaces is kept
    in ``main.out.tunnels`` (outermost first) so its flow is counted too.
    """
    out = main.out
    level = main
    lanes = np.arange(len(out), dtype=np.int64)  # packet of each row of ``level``
    layers: list[tuple[I64, DecodedBatch]] = []
    for _ in range(MAX_ENCAPSULATIONS):
        entries = _tunnel_entries(r, level)
        if entries.rows.size == 0:
            break
        rows = entries.rows
        inner_end = np.minimum(level.end[rows], level.declared_end[rows])
        packets = lanes[rows]
        inner = _decode_level(r, entries.start, inner_end, out.wirelen[packets],
                              modes=entries.mode, whole=whole[packets])
        depth = level.depth[rows].astype(np.int64)
        total = depth + 1 + inner.depth
        accept = np.flatnonzero((inner.out.status <= _OTHER_IP) & (total <= MAX_ENCAPSULATIONS))
        if accept.size == 0:
            break
        rows, packets, depth = rows[accept], packets[accept], depth[accept]
        inner = inner.take(accept)
        layers.append((packets, _take(out, packets)))
        shift = (depth * 4).astype(np.uint32)  # 32-bit: a shift by 16 stays defined
        stack = (out.encap[packets].astype(np.uint32)
                 | (entries.kind[accept].astype(np.uint32) << shift)
                 | (inner.out.encap.astype(np.uint32) << (shift + np.uint32(4)))
                 ).astype(np.uint16)
        for name in _ROW_FIELDS:
            if name != "wirelen":
                getattr(out, name)[packets] = getattr(inner.out, name)
        out.encap[packets] = stack
        inner.out.encap = stack
        inner.depth = (total[accept]).astype(np.uint8)
        level, lanes = inner, packets
    if layers:
        tunnels = np.zeros((len(out), len(layers)), dtype=TUNNEL_DTYPE)
        tunnels["status"] = TUNNEL_UNUSED
        for k, (packets, rows_k) in enumerate(layers):
            for name in _TUNNEL_FIELDS:
                tunnels[name][packets, k] = getattr(rows_k, name)
        out.tunnels = tunnels


#: ``decode_batch(decoder=...)``: ``"auto"`` is compiled when built, else numpy.
DECODERS = ENGINES
_said: set[str] = set()  # what PORTWATCH_VERBOSE=1 has said already


def _choose(decoder: str | None) -> bool:
    """Whether to decode with the compiled loop; says which once under PORTWATCH_VERBOSE=1.

    ``decoder=None`` reads ``PORTWATCH_DECODE`` (``numpy`` forces the
    reference decoder, for comparisons and benchmarks).
    """
    return use_compiled(decoder, variable="PORTWATCH_DECODE", noun="decoder",
                        stage="packet decoder", label="compiled (_decode)", built=COMPILED,
                        why_not=_WHY_NOT, said=_said)


def decode_batch(batch: PacketBatch, decoder: str | None = None) -> DecodedBatch:
    """Decode every packet of ``batch`` down to transport ports, all at once,
    through tunnels (see ``_decapsulate``).

    ``decoder`` is one of ``DECODERS``; ``None`` reads ``PORTWATCH_DECODE``.
    Both decoders give identical columns (``tests/decode/test_compiled_decode.py``).
    """
    if _choose(decoder):
        return _decode_compiled(batch)
    return _decode_numpy(batch)


def _spans(batch: PacketBatch) -> tuple[U8, I64, I64]:
    """The batch's buffer (padded when tiny) and each packet's clamped start and end."""
    data = np.ascontiguousarray(batch.data, dtype=np.uint8).reshape(-1)
    size = data.shape[0]
    start = np.minimum(batch.offsets.astype(np.int64, copy=False), size)
    np.maximum(start, 0, out=start)
    end = np.minimum(start + batch.caplens, size)
    if len(batch) and size < _PAD:
        data = np.concatenate([data, np.zeros(_PAD - size, dtype=np.uint8)])
    return data, start, end


#: Byte offset of each ``_decode.COLUMNS`` field in a ``TUNNEL_DTYPE`` record.
_LAYER_OFFSETS = np.array([TUNNEL_DTYPE.fields[name][1] for name in _decode.COLUMNS]
                          if COMPILED and TUNNEL_DTYPE.fields else [], dtype=np.int64)


def _empty_out(n: int, wirelen: U32) -> DecodedBatch:
    """Uninitialised columns for a decoder that writes every row."""
    def e(dtype: type[np.generic]) -> npt.NDArray[Any]:
        return np.empty(n, dtype=dtype)

    return DecodedBatch(
        status=e(np.uint8), ip_version=e(np.uint8), ip_proto=e(np.uint8),
        src_hi=e(np.uint64), src_lo=e(np.uint64), dst_hi=e(np.uint64), dst_lo=e(np.uint64),
        src_port=e(np.uint16), dst_port=e(np.uint16), tcp_flags=e(np.uint8),
        frag_id=e(np.uint32), is_first_fragment=e(np.bool_), wirelen=wirelen,
        encap=e(np.uint16))


def _decode_compiled(batch: PacketBatch) -> DecodedBatch:
    """``_decode_numpy``'s answer from one compiled loop over the packets."""
    n = len(batch)
    data, start, end = _spans(batch)
    if n == 0:
        return _new_state(n, batch.wirelens, end).out
    out = _empty_out(n, batch.wirelens)
    cap = MAX_ENCAPSULATIONS * n  # each packet has at most that many outer layers
    layers = np.empty(cap, dtype=TUNNEL_DTYPE)
    layer_packet = np.empty(cap, dtype=np.int64)
    layer_depth = np.empty(cap, dtype=np.uint8)
    m = _decode.decode(
        data, start, end, np.ascontiguousarray(batch.wirelens, dtype=np.uint32),
        np.ascontiguousarray(batch.linktypes, dtype=np.int64), TRANSPORT_OF_PROTO,
        out.status, out.ip_version, out.ip_proto, out.src_hi, out.src_lo, out.dst_hi,
        out.dst_lo, out.src_port, out.dst_port, out.tcp_flags, out.frag_id,
        out.is_first_fragment.view(np.uint8), out.encap, layers.view(np.uint8),
        _LAYER_OFFSETS, TUNNEL_DTYPE.itemsize, layer_packet, layer_depth)
    if m:
        depth = layer_depth[:m]
        tunnels = np.zeros((n, int(depth.max()) + 1), dtype=TUNNEL_DTYPE)
        tunnels["status"] = TUNNEL_UNUSED
        tunnels[layer_packet[:m], depth] = layers[:m]
        out.tunnels = tunnels
    return out


def _decode_numpy(batch: PacketBatch) -> DecodedBatch:
    """The vectorised numpy decoder: the fallback, and the reference."""
    n = len(batch)
    data = np.ascontiguousarray(batch.data, dtype=np.uint8).reshape(-1)
    size = data.shape[0]
    start = np.minimum(batch.offsets.astype(np.int64, copy=False), size)
    np.maximum(start, 0, out=start)
    end = np.minimum(start + batch.caplens, size)
    if n == 0:
        return _new_state(n, batch.wirelens, end).out
    if size < _PAD:
        data = np.concatenate([data, np.zeros(_PAD - size, dtype=np.uint8)])
    r = _FieldLoads(data)
    whole = (end - start) >= batch.wirelens
    st = _decode_level(r, start, end, batch.wirelens, modes=batch.linktypes, whole=whole)
    _decapsulate(r, st, whole)
    return st.out
