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
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from portwatch.capture.batch import LinkType, PacketBatch
from portwatch.ports import LabelledEnum, Transport

__all__ = [
    "MAX_IPV6_EXTENSION_HEADERS",
    "MAX_VLAN_TAGS",
    "NO_TRANSPORT",
    "TRANSPORT_OF_PROTO",
    "DecodeStatus",
    "DecodedBatch",
    "address_bytes",
    "decode_batch",
]

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

MAX_VLAN_TAGS = 4
MAX_IPV6_EXTENSION_HEADERS = 8


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

    def __len__(self) -> int:
        return int(self.status.shape[0])

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
    """Link-layer result for a group: where IP starts and which version."""

    l3: I64
    version: U8
    status: U8


def _ethertype_link(r: _FieldLoads, start: I64, end: I64, proto_at: int, header: int) -> _Link:
    """Cooked captures: a fixed header with an ethertype-valued protocol field."""
    ok = start + header <= end
    proto = r.be16(np.where(ok, start, 0) + proto_at)
    return _by_ethertype(start + header, proto, ok)


def _by_ethertype(l3: I64, ethertype: U16, ok: Bool) -> _Link:
    version = np.zeros(l3.shape[0], dtype=np.uint8)
    version[ethertype == 0x0800] = 4
    version[ethertype == 0x86DD] = 6
    version[~ok] = 0
    status = np.where(ok, np.where(version == 0, _NON_IP, _OK), _TRUNCATED).astype(np.uint8)
    return _Link(l3, version, status)


def _ethernet(r: _FieldLoads, start: I64, end: I64) -> _Link:
    ok = start + 14 <= end
    ethertype = r.be16(np.where(ok, start, 0) + 12)
    l3 = start + 14
    for _ in range(MAX_VLAN_TAGS):
        tagged = np.flatnonzero(ok & _IS_TPID[ethertype])
        if tagged.size == 0:
            break
        cut = l3[tagged] + 4 > end[tagged]
        ok[tagged[cut]] = False
        tagged = tagged[~cut]
        ethertype[tagged] = r.be16(l3[tagged] + 2)
        l3[tagged] += 4
    link = _by_ethertype(l3, ethertype, ok)
    link.status[ok & _IS_TPID[ethertype]] = _MALFORMED  # deeper than MAX_VLAN_TAGS
    return link


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
    )
    return _State(out, z(np.int64), z(np.uint8), z(np.int64), z(np.int64), end)


def _decode_links(r: _FieldLoads, st: _State, linktypes: npt.NDArray[Any], start: I64) -> None:
    first = int(linktypes[0])
    if bool((linktypes == first).all()):
        groups: list[tuple[int, I64 | None]] = [(first, None)]
    else:
        present = np.flatnonzero(np.bincount(linktypes, minlength=1))
        groups = [(int(t), np.flatnonzero(linktypes == t)) for t in present]
    for linktype, idx in groups:
        if idx is None:
            link = _link(r, linktype, start, st.end)
            st.l3, st.version, st.out.status = link.l3, link.version, link.status
        else:
            link = _link(r, linktype, start[idx], st.end[idx])
            st.l3[idx], st.version[idx], st.out.status[idx] = link.l3, link.version, link.status


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
    for field in (
        out.ip_version,
        out.ip_proto,
        out.src_hi,
        out.src_lo,
        out.dst_hi,
        out.dst_lo,
        out.frag_id,
        out.is_first_fragment,
    ):
        field[failed] = 0


def decode_batch(batch: PacketBatch) -> DecodedBatch:
    """Decode every packet of ``batch`` down to transport ports, all at once."""
    n = len(batch)
    data = np.ascontiguousarray(batch.data, dtype=np.uint8).reshape(-1)
    size = data.shape[0]
    start = np.minimum(batch.offsets.astype(np.int64, copy=False), size)
    np.maximum(start, 0, out=start)
    end = np.minimum(start + batch.caplens, size)
    st = _new_state(n, batch.wirelens, end)
    if n == 0:
        return st.out
    if size < _PAD:
        data = np.concatenate([data, np.zeros(_PAD - size, dtype=np.uint8)])
    r = _FieldLoads(data)
    _decode_links(r, st, batch.linktypes, start)
    v4, v6 = _check_versions(r, st)
    if v4.size:
        _ipv4(r, st, v4)
    if v6.size:
        _ipv6(r, st, v6)
    _transport(r, st)
    # A header missing from a frame we hold whole (all wirelen bytes present)
    # was never on the wire: the packet itself is short ("Malformed Packet" in
    # tshark), not cut by the snapshot length.
    whole = (end - start) >= batch.wirelens
    st.out.status[(st.out.status == _TRUNCATED) & whole] = _MALFORMED
    _clear_failed(st.out)
    return st.out
