"""Behaviour of the vectorised batch decoder.

Packets are built in memory with scapy (or by hand with ``struct`` where scapy
has no layer); nothing is ever sent. A scalar, one-packet-at-a-time reference
decoder written straight from the rules in ``capture.decode``'s docstring is
the oracle for the property tests.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH, ESP
from scapy.layers.l2 import ARP, GRE, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether, Loopback
from scapy.layers.sctp import SCTP
from scapy.packet import Packet, Raw

from portwatch.capture.batch import SUPPORTED_LINKTYPES, LinkType, PacketBatch
from portwatch.decode.native import (
    MAX_IPV6_EXTENSION_HEADERS,
    MAX_VLAN_TAGS,
    NO_TRANSPORT,
    TRANSPORT_OF_PROTO,
    DecodedBatch,
    DecodeStatus,
    address_bytes,
    decode_batch,
)
from portwatch.ports import Transport

MACS: dict[str, Any] = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
S = DecodeStatus


class Row(NamedTuple):
    """One packet's decoded fields, as the reference decoder computes them."""

    status: int
    ip_version: int = 0
    ip_proto: int = 0
    src: int = 0
    dst: int = 0
    src_port: int = 0
    dst_port: int = 0
    tcp_flags: int = 0
    frag_id: int = 0
    is_first_fragment: bool = False


def rows(decoded: DecodedBatch) -> list[Row]:
    return [
        Row(
            int(decoded.status[i]),
            int(decoded.ip_version[i]),
            int(decoded.ip_proto[i]),
            (int(decoded.src_hi[i]) << 64) | int(decoded.src_lo[i]),
            (int(decoded.dst_hi[i]) << 64) | int(decoded.dst_lo[i]),
            int(decoded.src_port[i]),
            int(decoded.dst_port[i]),
            int(decoded.tcp_flags[i]),
            int(decoded.frag_id[i]),
            bool(decoded.is_first_fragment[i]),
        )
        for i in range(len(decoded))
    ]


def decode_one(packet: bytes | Packet, linktype: int = LinkType.ETHERNET) -> Row:
    return rows(decode_batch(PacketBatch.from_packets([bytes(packet)], linktype)))[0]


def mapped(v4: str) -> int:
    return 0xFFFF_0000_0000 | int(ipaddress.IPv4Address(v4))


def v6(text: str) -> int:
    return int(ipaddress.IPv6Address(text))


# --------------------------------------------------------------------------
# The scalar reference decoder: one packet at a time, plain Python.

_TPIDS = {0x8100, 0x88A8, 0x9100}
_EXT = {0, 43, 44, 60, 51, 135, 139, 140}
_TRANSPORTS = {6, 17, 132, 33}


class _Stop(Exception):
    def __init__(self, status: DecodeStatus) -> None:
        self.status = status


def reference(pkt: bytes, linktype: int, wirelen: int | None = None) -> Row:
    try:
        return _reference(pkt, linktype, len(pkt) if wirelen is None else wirelen)
    except _Stop as stop:
        return Row(int(stop.status))


def _reference(pkt: bytes, linktype: int, wirelen: int) -> Row:
    n = len(pkt)

    def need(end: int, declared: float = float("inf")) -> None:
        if end > declared:
            raise _Stop(S.MALFORMED)
        if end > n:  # cut by the snapshot length, or never on the wire
            raise _Stop(S.TRUNCATED if wirelen > n else S.MALFORMED)

    def be16(at: int) -> int:
        return int(struct.unpack_from(">H", pkt, at)[0])

    def be32(at: int) -> int:
        return int(struct.unpack_from(">I", pkt, at)[0])

    version: int | None
    if linktype == 1:
        need(14)
        at, ethertype, tags = 12, be16(12), 0
        while ethertype in _TPIDS:
            if tags == 4:
                raise _Stop(S.MALFORMED)
            need(at + 6)
            ethertype, at, tags = be16(at + 4), at + 4, tags + 1
        l3, version = at + 2, {0x0800: 4, 0x86DD: 6}.get(ethertype)
    elif linktype in (113, 276):
        l3 = 16 if linktype == 113 else 20
        need(l3)
        version = {0x0800: 4, 0x86DD: 6}.get(be16(14 if linktype == 113 else 0))
    elif linktype in (0, 108):
        need(4)
        family = be32(0) if linktype == 108 else struct.unpack_from("<I", pkt, 0)[0]
        if family > 0xFFFF:
            family = be32(0)
        l3, version = 4, 4 if family == 2 else 6 if family in (24, 28, 30) else None
    elif linktype in (101, 12, 14, 228, 229):
        l3, version = 0, {228: 4, 229: 6}.get(linktype, -1)
    else:
        raise _Stop(S.UNSUPPORTED_LINK)
    if version is None:
        raise _Stop(S.NON_IP)
    need(l3 + 1)
    nibble = pkt[l3] >> 4
    if version == -1:
        version = nibble
    if nibble != version or version not in (4, 6):
        raise _Stop(S.MALFORMED)

    declared: float
    first = False
    if version == 4:
        need(l3 + 20)
        header_len, total = (pkt[l3] & 15) * 4, be16(l3 + 2)
        if header_len < 20 or (total and total < header_len):
            raise _Stop(S.MALFORMED)
        need(l3 + header_len)
        proto, word, frag_id = pkt[l3 + 9], be16(l3 + 6), be16(l3 + 4)
        src, dst = mapped_int(be32(l3 + 12)), mapped_int(be32(l3 + 16))
        declared = l3 + total if total else float("inf")
        l4, first = l3 + header_len, (word & 0x1FFF) == 0 and bool(word & 0x2000)
        if word & 0x1FFF:
            return Row(int(S.FRAGMENT), 4, proto, src, dst, frag_id=frag_id)
    else:
        need(l3 + 40)
        payload = be16(l3 + 4)
        declared = l3 + 40 + payload if payload else float("inf")
        proto, l4, frag_id = pkt[l3 + 6], l3 + 40, 0
        src = int.from_bytes(pkt[l3 + 8 : l3 + 24], "big")
        dst = int.from_bytes(pkt[l3 + 24 : l3 + 40], "big")
        for count in range(MAX_IPV6_EXTENSION_HEADERS + 1):
            if proto not in _EXT:
                break
            if count == MAX_IPV6_EXTENSION_HEADERS:
                raise _Stop(S.MALFORMED)
            need(l4 + (8 if proto == 44 else 2), declared)
            following, length = pkt[l4], pkt[l4 + 1]
            if proto == 44:
                word, frag_id = be16(l4 + 2), be32(l4 + 4)
                first = (word >> 3) == 0 and bool(word & 1)
                if word >> 3:
                    return Row(int(S.FRAGMENT), 6, following, src, dst, frag_id=frag_id)
                size = 8
            else:
                size = (length + 2) * 4 if proto == 51 else (length + 1) * 8
            proto, l4 = following, l4 + size

    ip = (version, proto, src, dst)
    if proto in (1, 58):
        return Row(int(S.ICMP), *ip, frag_id=frag_id, is_first_fragment=first)
    if proto not in _TRANSPORTS:
        return Row(int(S.OTHER_IP), *ip, frag_id=frag_id, is_first_fragment=first)
    need(l4 + (14 if proto == 6 else 4), declared)
    flags = pkt[l4 + 13] if proto == 6 else 0
    return Row(int(S.OK), *ip, be16(l4), be16(l4 + 2), flags, frag_id, first)


def mapped_int(v4: int) -> int:
    return 0xFFFF_0000_0000 | v4


# --------------------------------------------------------------------------
# Link layers


def test_ethernet_ipv4_tcp_yields_ports_flags_and_mapped_addresses() -> None:
    pkt = (
        Ether(**MACS)
        / IP(src="10.0.0.1", dst="10.0.0.2", id=4242)
        / TCP(sport=40000, dport=443, flags="SA")
    )
    assert decode_one(pkt) == Row(
        int(S.OK), 4, 6, mapped("10.0.0.1"), mapped("10.0.0.2"), 40000, 443, 0x12, 4242
    )


@pytest.mark.parametrize(
    "tags",
    [
        [Dot1Q(vlan=10)],
        [Dot1AD(vlan=10), Dot1Q(vlan=20)],
        [Dot1Q(vlan=1, type=0x9100), Dot1Q(vlan=2)],
        [Dot1AD(vlan=1), Dot1Q(vlan=2, type=0x88A8), Dot1AD(vlan=3), Dot1Q(vlan=4)],
    ],
    ids=["802.1Q", "QinQ-88a8", "9100", "four-deep"],
)
def test_stacked_vlan_tags_are_skipped(tags: list[Packet]) -> None:
    pkt: Packet = Ether(**MACS)
    for tag in tags:
        pkt = pkt / tag
    row = decode_one(pkt / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=5, dport=53))
    assert (row.status, row.src_port, row.dst_port) == (S.OK, 5, 53)
    assert row.src == mapped("192.0.2.1")


def test_more_vlan_tags_than_supported_is_malformed() -> None:
    pkt: Packet = Ether(**MACS)
    for vlan in range(MAX_VLAN_TAGS + 1):
        pkt = pkt / Dot1Q(vlan=vlan)
    assert decode_one(pkt / IP() / UDP()).status == S.MALFORMED


@pytest.mark.parametrize(
    ("header", "linktype"),
    [
        (CookedLinux(proto=0x0800), LinkType.LINUX_SLL),
        (CookedLinuxV2(proto=0x0800), LinkType.LINUX_SLL2),
        (Loopback(type=2), LinkType.NULL),
        (Raw(struct.pack(">I", 2)), LinkType.NULL),
        (Raw(struct.pack(">I", 2)), LinkType.LOOP),
        (Raw(b""), LinkType.RAW),
        (Raw(b""), LinkType.RAW_DLT12),
        (Raw(b""), LinkType.RAW_DLT14),
        (Raw(b""), LinkType.IPV4),
    ],
    ids=["sll", "sll2", "null-le", "null-be", "loop", "raw", "dlt12", "dlt14", "ipv4"],
)
def test_every_link_type_reaches_ipv4_ports(header: Packet, linktype: LinkType) -> None:
    pkt = header / IP(src="10.9.8.7", dst="10.1.2.3") / TCP(sport=2000, dport=22)
    row = decode_one(pkt, linktype)
    assert (row.status, row.ip_version, row.src, row.src_port, row.dst_port) == (
        S.OK,
        4,
        mapped("10.9.8.7"),
        2000,
        22,
    )


@pytest.mark.parametrize(
    ("header", "linktype"),
    [
        (Ether(**MACS), LinkType.ETHERNET),
        (CookedLinux(proto=0x86DD), LinkType.LINUX_SLL),
        (CookedLinuxV2(proto=0x86DD), LinkType.LINUX_SLL2),
        (Raw(struct.pack("<I", 24)), LinkType.NULL),
        (Raw(struct.pack("<I", 28)), LinkType.NULL),
        (Raw(struct.pack(">I", 30)), LinkType.NULL),
        (Raw(struct.pack(">I", 24)), LinkType.LOOP),
        (Raw(b""), LinkType.RAW),
        (Raw(b""), LinkType.IPV6),
    ],
    ids=["ether", "sll", "sll2", "null-24", "null-28", "null-30-be", "loop", "raw", "ipv6"],
)
def test_every_link_type_reaches_ipv6_ports(header: Packet, linktype: LinkType) -> None:
    pkt = header / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=546, dport=547)
    row = decode_one(pkt, linktype)
    assert (row.status, row.ip_version, row.src, row.dst, row.src_port, row.dst_port) == (
        S.OK,
        6,
        v6("2001:db8::1"),
        v6("2001:db8::2"),
        546,
        547,
    )


@pytest.mark.parametrize(
    ("packet", "linktype"),
    [
        (Ether(**MACS) / ARP(), LinkType.ETHERNET),
        (Ether(**MACS, type=0x88CC) / Raw(b"\x00" * 40), LinkType.ETHERNET),
        (Ether(**MACS, type=60) / Raw(b"\xaa\xaa\x03" + b"\x00" * 40), LinkType.ETHERNET),
        (CookedLinux(proto=0x0806) / ARP(), LinkType.LINUX_SLL),
        (Raw(struct.pack("<I", 7)) / IP() / UDP(), LinkType.NULL),
    ],
    ids=["arp", "lldp", "802.3-llc", "sll-arp", "null-unknown-family"],
)
def test_non_ip_frames_are_non_ip(packet: Packet, linktype: LinkType) -> None:
    assert decode_one(packet, linktype) == Row(int(S.NON_IP))


@pytest.mark.parametrize("linktype", [127, 147, 65535])
def test_unknown_link_types_are_unsupported(linktype: int) -> None:
    assert linktype not in SUPPORTED_LINKTYPES
    pkt = IP() / UDP()
    assert decode_one(pkt, linktype) == Row(int(S.UNSUPPORTED_LINK))


def test_mixed_link_types_in_one_batch_decode_independently() -> None:
    ip = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2)
    packets = [
        (Ether(**MACS) / ip, LinkType.ETHERNET),
        (CookedLinux(proto=0x0800) / ip, LinkType.LINUX_SLL),
        (ip, LinkType.RAW),
        (Loopback(type=2) / ip, LinkType.NULL),
        (Ether(**MACS) / ARP(), LinkType.ETHERNET),
        (ip, 9999),
        (Raw(struct.pack(">I", 24)) / IPv6() / TCP(sport=3, dport=4), LinkType.LOOP),
    ]
    batch = PacketBatch.from_packets([bytes(p) for p, _ in packets], [lt for _, lt in packets])
    got = rows(decode_batch(batch))
    assert [r.status for r in got] == [
        S.OK,
        S.OK,
        S.OK,
        S.OK,
        S.NON_IP,
        S.UNSUPPORTED_LINK,
        S.OK,
    ]
    assert [(r.src_port, r.dst_port) for r in got] == [(1, 2)] * 4 + [(0, 0)] * 2 + [(3, 4)]


def test_empty_batch_gives_empty_arrays() -> None:
    decoded = decode_batch(PacketBatch.from_packets([], LinkType.ETHERNET))
    assert len(decoded) == 0
    assert decoded.status.dtype == np.uint8
    assert decoded.src_port.shape == (0,)


def test_packets_are_found_by_offset_in_a_shared_buffer() -> None:
    """Readers may hand over batches whose packets sit anywhere in ``data``."""
    a = bytes(Ether(**MACS) / IP() / UDP(sport=11, dport=12))
    b = bytes(Ether(**MACS) / IP() / TCP(sport=13, dport=14))
    data = np.frombuffer(b"\xee" * 7 + b + b"\xee" * 3 + a, dtype=np.uint8)
    batch = PacketBatch(
        data=data,
        offsets=np.array([7 + len(b) + 3, 7], dtype=np.int64),
        caplens=np.array([len(a), len(b)], dtype=np.uint32),
        wirelens=np.array([len(a), len(b)], dtype=np.uint32),
        timestamps_ns=np.zeros(2, dtype=np.int64),
        linktypes=np.ones(2, dtype=np.uint16),
        interfaces=np.zeros(2, dtype=np.uint32),
        file_offsets=np.zeros(2, dtype=np.int64),
    )
    decoded = decode_batch(batch)
    assert decoded.src_port.tolist() == [11, 13]
    assert decoded.wirelen.tolist() == [len(a), len(b)]


# --------------------------------------------------------------------------
# IPv4


def test_ipv4_options_move_the_transport_header() -> None:
    pkt = Ether(**MACS) / IP(options=b"\x01" * 12) / TCP(sport=7, dport=8, flags="F")
    row = decode_one(pkt)
    assert (row.status, row.src_port, row.dst_port, row.tcp_flags) == (S.OK, 7, 8, 0x01)


def test_ipv4_fragments_carry_ports_only_in_the_first() -> None:
    datagram = (
        IP(src="10.0.0.5", dst="10.0.0.6", id=999) / UDP(sport=5000, dport=6000) / (b"x" * 3000)
    )
    # scapy's fragment() has no annotations
    frags: list[Packet] = fragment(datagram, fragsize=1000)  # type: ignore[no-untyped-call]
    got = rows(decode_batch(PacketBatch.from_packets([bytes(f) for f in frags], LinkType.RAW)))
    assert len(got) > 2
    first, *later = got
    assert (first.status, first.is_first_fragment, first.src_port, first.dst_port) == (
        S.OK,
        True,
        5000,
        6000,
    )
    for row in later:
        assert row == Row(
            int(S.FRAGMENT), 4, 17, mapped("10.0.0.5"), mapped("10.0.0.6"), 0, 0, 0, 999
        )


def test_unfragmented_ipv4_is_not_a_first_fragment() -> None:
    row = decode_one(Ether(**MACS) / IP(flags="DF") / UDP())
    assert (row.status, row.is_first_fragment) == (S.OK, False)


@pytest.mark.parametrize(
    "packet",
    [
        Ether(**MACS) / IP(ihl=4) / TCP(),
        Ether(**MACS) / IP(len=16) / Raw(b"\x00" * 40),
        Ether(**MACS, type=0x0800) / IPv6() / UDP(),
        Ether(**MACS, type=0x86DD) / IP() / UDP(),
    ],
    ids=["ihl-4", "total-len-below-header", "ethertype-v4-version-6", "ethertype-v6-version-4"],
)
def test_inconsistent_ip_headers_are_malformed(packet: Packet) -> None:
    assert decode_one(packet) == Row(int(S.MALFORMED))


def test_raw_link_with_unknown_ip_version_is_malformed() -> None:
    assert decode_one(b"\x55" + b"\x00" * 40, LinkType.RAW) == Row(int(S.MALFORMED))


def test_ports_beyond_the_declared_ip_length_are_malformed_not_read_from_padding() -> None:
    pkt = Ether(**MACS) / IP(len=20, proto=6) / TCP(sport=1, dport=2)
    assert decode_one(pkt) == Row(int(S.MALFORMED))


def test_link_layer_padding_after_a_short_datagram_is_ignored() -> None:
    pkt = Ether(**MACS) / IP() / UDP(sport=9, dport=10) / Raw(b"\xff" * 18)
    assert decode_one(bytes(pkt)).dst_port == 10


def test_zero_total_length_from_segmentation_offload_still_decodes() -> None:
    raw = bytearray(bytes(Ether(**MACS) / IP() / TCP(sport=80, dport=50000)))
    raw[16:18] = b"\x00\x00"
    row = decode_one(bytes(raw))
    assert (row.status, row.src_port, row.dst_port) == (S.OK, 80, 50000)


# --------------------------------------------------------------------------
# IPv6 extension headers


def test_ipv6_extension_chain_is_walked_to_the_upper_layer() -> None:
    pkt = (
        Ether(**MACS)
        / IPv6(src="2001:db8::a", dst="2001:db8::b")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting()
        / IPv6ExtHdrDestOpt(options=[])
        / AH(nh=6, payloadlen=4, icv=b"\x00" * 12)
        / TCP(sport=1111, dport=2222, flags="R")
    )
    row = decode_one(pkt)
    assert (row.status, row.ip_proto, row.src_port, row.dst_port, row.tcp_flags) == (
        S.OK,
        6,
        1111,
        2222,
        0x04,
    )


def test_ipv6_fragments_carry_ports_only_in_the_first() -> None:
    base = IPv6(src="2001:db8::1", dst="2001:db8::2")
    first = base / IPv6ExtHdrFragment(offset=0, m=1, id=0xDEADBEEF) / UDP(sport=7, dport=9)
    later = base / IPv6ExtHdrFragment(offset=100, m=0, id=0xDEADBEEF, nh=17) / Raw(b"x" * 64)
    got = rows(decode_batch(PacketBatch.from_packets([bytes(first), bytes(later)], LinkType.RAW)))
    assert got[0] == Row(
        int(S.OK), 6, 17, v6("2001:db8::1"), v6("2001:db8::2"), 7, 9, 0, 0xDEADBEEF, True
    )
    assert got[1] == Row(
        int(S.FRAGMENT), 6, 17, v6("2001:db8::1"), v6("2001:db8::2"), frag_id=0xDEADBEEF
    )


def test_ipv6_atomic_fragment_is_not_a_first_fragment() -> None:
    pkt = IPv6() / IPv6ExtHdrFragment(offset=0, m=0, id=5) / TCP(sport=1, dport=2)
    row = decode_one(pkt, LinkType.IPV6)
    assert (row.status, row.frag_id, row.is_first_fragment, row.dst_port) == (S.OK, 5, False, 2)


def test_ipv6_extension_chain_longer_than_supported_is_malformed() -> None:
    pkt: Packet = IPv6()
    for _ in range(MAX_IPV6_EXTENSION_HEADERS + 1):
        pkt = pkt / IPv6ExtHdrDestOpt(options=[])
    assert decode_one(pkt / UDP(), LinkType.RAW) == Row(int(S.MALFORMED))


@pytest.mark.parametrize(
    ("upper", "status", "proto"),
    [
        (ESP(spi=1, seq=1), S.OTHER_IP, 50),
        (IPv6ExtHdrDestOpt(nh=59, options=[]), S.OTHER_IP, 59),
        (ICMPv6EchoRequest(), S.ICMP, 58),
        (SCTP(sport=36412, dport=36412), S.OK, 132),
    ],
    ids=["esp", "no-next-header", "icmpv6", "sctp"],
)
def test_ipv6_upper_layers(upper: Packet, status: DecodeStatus, proto: int) -> None:
    row = decode_one(Ether(**MACS) / IPv6() / upper)
    assert (row.status, row.ip_proto) == (status, proto)


# --------------------------------------------------------------------------
# Transports


def test_sctp_ports_are_read() -> None:
    row = decode_one(Ether(**MACS) / IP() / SCTP(sport=2905, dport=2944))
    assert (row.status, row.ip_proto, row.src_port, row.dst_port) == (S.OK, 132, 2905, 2944)


def test_dccp_ports_are_read() -> None:
    dccp = struct.pack(">HHBBH", 5004, 5005, 4, 0, 0) + b"\x00" * 8
    row = decode_one(Ether(**MACS) / IP(proto=33) / Raw(dccp))
    assert (row.status, row.ip_proto, row.src_port, row.dst_port) == (S.OK, 33, 5004, 5005)


@pytest.mark.parametrize(
    ("upper", "status", "proto"),
    [
        (ICMP(type=8), S.ICMP, 1),
        (GRE(proto=0x88B5) / Raw(b"local experimental payload"), S.OTHER_IP, 47),
        (ESP(spi=7), S.OTHER_IP, 50),
    ],
    ids=["icmp", "gre", "esp"],
)
def test_non_port_protocols_keep_ip_fields_but_no_ports(
    upper: Packet, status: DecodeStatus, proto: int
) -> None:
    row = decode_one(Ether(**MACS) / IP(src="10.0.0.1", dst="10.0.0.2") / upper)
    assert row == Row(int(status), 4, proto, mapped("10.0.0.1"), mapped("10.0.0.2"), frag_id=1)


def test_transport_of_proto_matches_the_registry_transports() -> None:
    assert TRANSPORT_OF_PROTO.shape == (256,)
    for transport in Transport:
        assert TRANSPORT_OF_PROTO[transport.ip_protocol] == transport.value
    others = np.setdiff1d(np.arange(256), [t.ip_protocol for t in Transport])
    assert (TRANSPORT_OF_PROTO[others] == NO_TRANSPORT).all()


def test_status_labels_are_stable() -> None:
    assert [s.label for s in DecodeStatus] == [
        "ok",
        "icmp",
        "fragment",
        "other-ip",
        "non-ip",
        "truncated",
        "unsupported-link",
        "malformed",
    ]
    assert [s.carries_ip for s in DecodeStatus] == [True] * 4 + [False] * 4


def test_addresses_render_as_ip_objects_and_bytes() -> None:
    pkts = [
        Ether(**MACS) / IP(src="198.51.100.1", dst="203.0.113.9") / UDP(),
        Ether(**MACS) / IPv6(src="fe80::1", dst="ff02::fb") / UDP(),
        Ether(**MACS) / ARP(),
    ]
    decoded = decode_batch(PacketBatch.from_packets([bytes(p) for p in pkts], 1))
    assert decoded.src_ip(0) == ipaddress.IPv4Address("198.51.100.1")
    assert decoded.dst_ip(1) == ipaddress.IPv6Address("ff02::fb")
    assert decoded.src_ip(2) is None
    as_bytes = address_bytes(decoded.dst_hi, decoded.dst_lo)
    assert as_bytes[0].tobytes() == ipaddress.IPv6Address("::ffff:203.0.113.9").packed
    assert as_bytes[1].tobytes() == ipaddress.IPv6Address("ff02::fb").packed


# --------------------------------------------------------------------------
# Truncation: a packet cut at every byte


def _cuts(packet: bytes, linktype: int, *, whole: bool = False) -> list[Row]:
    """Every prefix of ``packet``: cut by a snapshot length (the wire had more),
    or, with ``whole``, frames that were that short on the wire."""
    cuts = [packet[:k] for k in range(len(packet) + 1)]
    wirelens = [len(c) if whole else len(packet) + 64 for c in cuts]
    return rows(decode_batch(PacketBatch.from_packets(cuts, linktype, wirelens=wirelens)))


def test_cutting_a_vlan_ipv4_tcp_packet_anywhere_before_the_flags_truncates_it() -> None:
    """Cut before TCP byte 14 (ports and flags): TRUNCATED with no fields; after: OK."""
    pkt = bytes(
        Ether(**MACS) / Dot1Q(vlan=3) / IP(options=b"\x01" * 4) / TCP(sport=1, dport=2) / b"data"
    )
    flags_end = 14 + 4 + 24 + 14
    got = _cuts(pkt, LinkType.ETHERNET)
    assert all(row == Row(int(S.TRUNCATED)) for row in got[:flags_end])
    assert all((row.status, row.src_port, row.dst_port) == (S.OK, 1, 2) for row in got[flags_end:])


def test_a_frame_that_was_that_short_on_the_wire_is_malformed_not_truncated() -> None:
    """As tshark: missing bytes the capture did not cut were never sent."""
    pkt = bytes(Ether(**MACS) / IP() / TCP(sport=1, dport=2) / b"data")
    flags_end = 14 + 20 + 14
    got = _cuts(pkt, LinkType.ETHERNET, whole=True)
    assert all(row == Row(int(S.MALFORMED)) for row in got[:flags_end])
    assert all((row.status, row.src_port) == (S.OK, 1) for row in got[flags_end:])


def test_cutting_an_ipv6_extension_chain_anywhere_before_the_ports_truncates_it() -> None:
    pkt = bytes(
        IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(m=1) / UDP(sport=3, dport=4) / b"abc"
    )
    ports_end = 40 + 8 + 8 + 4
    got = _cuts(pkt, LinkType.RAW)
    assert all(row == Row(int(S.TRUNCATED)) for row in got[:ports_end])
    assert all((row.status, row.dst_port) == (S.OK, 4) for row in got[ports_end:])


@pytest.mark.parametrize("linktype", sorted(SUPPORTED_LINKTYPES))
def test_cutting_the_link_header_truncates(linktype: int) -> None:
    header = {
        0: b"\x02\x00\x00\x00",
        108: b"\x00\x00\x00\x02",
        1: bytes(Ether(**MACS, type=0x0800)),
    }.get(linktype, b"")
    if linktype == LinkType.LINUX_SLL:
        header = bytes(CookedLinux(proto=0x0800))
    elif linktype == LinkType.LINUX_SLL2:
        header = bytes(CookedLinuxV2(proto=0x0800))
    elif linktype == LinkType.IPV6:
        header = b""
    got = _cuts(header, linktype)
    assert {row.status for row in got} == {S.TRUNCATED}


# --------------------------------------------------------------------------
# Properties


_LINKTYPES = [0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 147]


def usually(draw: st.DrawFn, good: int, bad: st.SearchStrategy[int]) -> int:
    """The well-formed value nine times in ten, so that deep paths get reached."""
    return draw(bad) if draw(st.integers(0, 9)) == 0 else good


@st.composite
def link_headers(draw: st.DrawFn, linktype: int, version: int) -> bytes:
    ethertype = usually(
        draw, 0x0800 if version == 4 else 0x86DD, st.sampled_from([0x0806, 60]) | st.integers()
    )
    ethertype &= 0xFFFF
    if linktype == 1:
        tags = draw(st.lists(st.sampled_from(sorted(_TPIDS)), max_size=MAX_VLAN_TAGS + 1))
        out = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01"
        for tpid in tags:
            out += struct.pack(">H", tpid) + draw(st.binary(min_size=2, max_size=2))
        return out + struct.pack(">H", ethertype)
    if linktype == 113:
        return draw(st.binary(min_size=14, max_size=14)) + struct.pack(">H", ethertype)
    if linktype == 276:
        return struct.pack(">H", ethertype) + draw(st.binary(min_size=18, max_size=18))
    if linktype in (0, 108):
        good = 2 if version == 4 else draw(st.sampled_from([24, 28, 30]))
        family = usually(draw, good, st.integers(0, 0xFFFF))
        order = draw(st.sampled_from(["<", ">"])) if linktype == 0 else ">"
        return struct.pack(order + "I", family)
    return b""


@st.composite
def transports(draw: st.DrawFn) -> tuple[int, bytes]:
    proto = draw(st.sampled_from([6, 6, 17, 17, 132, 33, 1, 58, 47, 50, 59]) | st.integers(0, 255))
    return proto, draw(st.binary(min_size=usually(draw, 20, st.integers(0, 20)), max_size=30))


@st.composite
def ipv4_packets(draw: st.DrawFn) -> bytes:
    proto, upper = draw(transports())
    options = draw(st.sampled_from([b"", b"", b"\x01" * 4, b"\x01" * 40]) | st.binary(max_size=8))
    options += b"\x00" * (-len(options) % 4)
    ihl = usually(draw, 5 + len(options) // 4, st.integers(0, 15))
    total = usually(draw, 20 + len(options) + len(upper), st.sampled_from([0, 20, 24]))
    total = usually(draw, total, st.integers(0, 0xFFFF))
    frag = draw(st.sampled_from([0, 0, 0x4000, 0x2000, 0x0005, 0x2005]) | st.integers(0, 0xFFFF))
    ident = draw(st.integers(0, 0xFFFF))
    header = struct.pack(">BBHHHBBH", 0x40 | ihl, 0, total, ident, frag, 64, proto, 0)
    return header + draw(st.binary(min_size=8, max_size=8)) + options + upper


@st.composite
def ipv6_packets(draw: st.DrawFn) -> bytes:
    proto, upper = draw(transports())
    most = usually(draw, 3, st.just(MAX_IPV6_EXTENSION_HEADERS + 1))
    chain = draw(st.lists(st.sampled_from(sorted(_EXT)), max_size=most))
    body = b""
    for i, ext in reversed(list(enumerate(chain))):
        following = proto if i == len(chain) - 1 else chain[i + 1]
        if ext == 44:
            word = draw(st.sampled_from([0, 1, 1, 8, 9]) | st.integers(0, 0xFFFF))
            ident = draw(st.integers(0, 2**32 - 1))
            body = struct.pack(">BBHI", following, 0, word, ident) + body
        else:
            length = usually(draw, draw(st.integers(0, 2)), st.integers(0, 255))
            size = (length + 2) * 4 if ext == 51 else (length + 1) * 8
            body = bytes([following, length]) + b"\x00" * min(size - 2, 64) + body
    first = chain[0] if chain else proto
    payload = body + upper
    plen = usually(draw, len(payload), st.sampled_from([0, 8]) | st.integers(0, 0xFFFF))
    addrs = draw(st.binary(min_size=32, max_size=32))
    return struct.pack(">IHBB", 0x6000_0000, plen, first, 64) + addrs + payload


@st.composite
def packets(draw: st.DrawFn) -> tuple[bytes, int]:
    linktype = draw(st.sampled_from(_LINKTYPES))
    version = {228: 4, 229: 6}.get(linktype) or draw(st.sampled_from([4, 6]))
    version = usually(draw, version, st.sampled_from([4, 6]))
    network = draw(ipv4_packets() if version == 4 else ipv6_packets())
    pkt = draw(link_headers(linktype, version)) + network
    if draw(st.integers(0, 3)) == 0:
        pkt = pkt[: draw(st.integers(0, len(pkt)))]
    if pkt and draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(pkt) - 1))
        pkt = pkt[:at] + bytes([draw(st.integers(0, 255))]) + pkt[at + 1 :]
    if draw(st.integers(0, 19)) == 0:
        pkt = draw(st.binary(max_size=80))
    return pkt, linktype


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(packets(), st.sampled_from([0, 0, 1, 60])), max_size=40))
def test_vectorised_decoder_agrees_with_scalar_reference(
    batch: Sequence[tuple[tuple[bytes, int], int]],
) -> None:
    """``snapped`` bytes more were on the wire than captured (0: the frame is whole)."""
    packets_ = [p for (p, _), _ in batch]
    wirelens = [len(p) + snapped for (p, _), snapped in batch]
    decoded = decode_batch(PacketBatch.from_packets(packets_, [lt for (_, lt), _ in batch],
                                              wirelens=wirelens))
    assert rows(decoded) == [reference(p, lt, len(p) + snapped) for (p, lt), snapped in batch]


@st.composite
def scapy_packets(draw: st.DrawFn) -> tuple[Packet, int, int, int]:
    sport, dport = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
    transport = draw(st.sampled_from([TCP, UDP, SCTP]))
    pkt: Packet = Ether(**MACS)
    for vlan in draw(st.lists(st.integers(0, 4095), max_size=MAX_VLAN_TAGS)):
        pkt = pkt / Dot1Q(vlan=vlan)
    if draw(st.booleans()):
        ip: Packet = IP(src=draw(st.ip_addresses(v=4)).compressed, dst="192.0.2.1")
    else:
        ip = IPv6(src=draw(st.ip_addresses(v=6)).compressed, dst="2001:db8::1")
        for ext in draw(
            st.lists(st.sampled_from([IPv6ExtHdrHopByHop, IPv6ExtHdrDestOpt]), max_size=3)
        ):
            ip = ip / ext()
    return pkt / ip / transport(sport=sport, dport=dport), transport.__name__ == "TCP", sport, dport


@settings(max_examples=60, deadline=None)
@given(scapy_packets())
def test_decoder_agrees_with_scapy_dissection(case: tuple[Packet, int, int, int]) -> None:
    pkt, _, _, _ = case
    dissected = Ether(bytes(pkt))
    row = decode_one(pkt)
    layer = dissected.getlayer(TCP) or dissected.getlayer(UDP) or dissected.getlayer(SCTP)
    network = dissected.getlayer(IP) or dissected.getlayer(IPv6)
    assert layer is not None
    assert network is not None
    assert (row.status, row.src_port, row.dst_port) == (S.OK, layer.sport, layer.dport)
    expected_src = ipaddress.ip_address(network.src)
    assert row.src == (
        mapped(str(expected_src)) if expected_src.version == 4 else int(expected_src)
    )
    if isinstance(layer, TCP):
        assert row.tcp_flags == int(layer.flags)


def test_a_caplen_running_past_the_buffer_reads_as_truncated() -> None:
    """A damaged batch must not make the decoder index outside ``data``."""
    pkt = bytes(Ether(**MACS) / IP() / TCP())
    batch = PacketBatch.from_packets([pkt, pkt, pkt], LinkType.ETHERNET)
    batch.caplens[1:] = 10_000
    batch.offsets[1] = 3 * len(pkt) - 10  # ten bytes left: less than an Ethernet header
    batch.offsets[2] = 3 * len(pkt) + 50  # starts beyond the buffer
    decoded = decode_batch(batch)
    assert decoded.status.tolist() == [S.OK, S.TRUNCATED, S.TRUNCATED]


def test_batch_from_packets_keeps_wire_lengths_and_per_packet_link_types() -> None:
    batch = PacketBatch.from_packets(
        [b"\x45" + b"\x00" * 19, b"abc"], [LinkType.RAW, 147], wirelens=[1500, 3]
    )
    assert batch.wirelens.tolist() == [1500, 3]
    assert batch.linktypes.tolist() == [101, 147]
    assert batch.packet(1) == b"abc"
    assert decode_batch(batch).wirelen.tolist() == [1500, 3]
