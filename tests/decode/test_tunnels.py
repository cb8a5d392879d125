"""Tunnels, label stacks, PPPoE and the link types real captures use.

Frames are built in memory with scapy (by hand with ``struct`` where scapy has
no layer: FabricPath, PPI); nothing is sent. The native decoder must name the
inner flow, record the encapsulations outermost first, keep the outer row so
the tunnel flow counts too, and never read past a packet however it is cut.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III, ERSPAN_PlatformSpecific
    from scapy.contrib.geneve import GENEVE, GeneveOptions
    from scapy.contrib.gtp import GTP_U_Header, GTPPDUSessionContainer
    from scapy.contrib.mpls import MPLS
    from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, Dot1Q, Ether
    from scapy.layers.ppp import PPP, PPPoE
    from scapy.layers.vxlan import VXLAN
    from scapy.packet import Packet, Raw

from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.flows import FlowTable
from portwatch.capture.batch import LinkType, PacketBatch
from portwatch.capture.files.reader import read_capture_path
from portwatch.decode.native import (
    MAX_ENCAPSULATIONS,
    MAX_MPLS_LABELS,
    TUNNEL_UNUSED,
    DecodedBatch,
    DecodeStatus,
    Encapsulation,
    decode_batch,
    encapsulation_label,
    encapsulation_labels,
)
from portwatch.porttable.table import PortTable

S = DecodeStatus
MACS: dict[str, Any] = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
INNER_MACS: dict[str, Any] = {"src": "02:00:00:00:01:01", "dst": "02:00:00:00:01:02"}


def inner_tcp() -> Packet:
    return IP(src="10.1.0.1", dst="10.1.0.2") / TCP(sport=40000, dport=443, flags="S")


def inner_udp6() -> Packet:
    return IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5353, dport=53)


def outer_ip() -> Packet:
    return Ether(**MACS) / IP(src="192.0.2.1", dst="192.0.2.2")


def decode(packets: list[Packet] | list[bytes], linktype: int = LinkType.ETHERNET,
           **kw: Any) -> DecodedBatch:
    raw = [p if isinstance(p, bytes) else bytes(p) for p in packets]
    return decode_batch(PacketBatch.from_packets(raw, linktype, **kw))


def one(packet: Packet | bytes,
        linktype: int = LinkType.ETHERNET) -> tuple[int, int, int, int, str]:
    """(status, ip_proto, src_port, dst_port, encapsulation) of the packet's row."""
    d = decode([packet], linktype)  # type: ignore[list-item]
    return (int(d.status[0]), int(d.ip_proto[0]), int(d.src_port[0]), int(d.dst_port[0]),
            encapsulation_label(int(d.encap[0])))


TUNNELS = {
    "vxlan": (outer_ip() / UDP(sport=49152, dport=4789) / VXLAN(vni=42)
              / Ether(**INNER_MACS) / inner_tcp(), "vxlan", (49152, 4789)),
    "vxlan-from-source-port": (outer_ip() / UDP(sport=4789, dport=4789) / VXLAN(vni=42)
                               / Ether(**INNER_MACS) / inner_tcp(), "vxlan", (4789, 4789)),
    "geneve-ethernet-with-options": (
        outer_ip() / UDP(sport=50000, dport=6081)
        / GENEVE(vni=7, proto=0x6558, options=[GeneveOptions(classid=0x0102, type=0x80,
                                                              data=b"\x00" * 8)])
        / Ether(**INNER_MACS) / inner_tcp(), "geneve", (50000, 6081)),
    "geneve-ipv4": (outer_ip() / UDP(sport=50000, dport=6081) / GENEVE(vni=7, proto=0x0800)
                    / inner_tcp(), "geneve", (50000, 6081)),
    "gtpu": (outer_ip() / UDP(sport=2152, dport=2152) / GTP_U_Header(teid=9) / inner_tcp(),
             "gtpu", (2152, 2152)),
    "gtpu-extension-header": (
        outer_ip() / UDP(sport=2152, dport=2152) / GTP_U_Header(teid=9, E=1, next_ex=0x85)
        / GTPPDUSessionContainer(QFI=9) / inner_tcp(), "gtpu", (2152, 2152)),
    "gre-ipv4": (outer_ip() / GRE() / inner_tcp(), "gre", None),
    "gre-key-sequence-checksum": (
        outer_ip() / GRE(chksum_present=1, key_present=1, seqnum_present=1, key=5,
                         sequence_number=77) / inner_tcp(), "gre", None),
    "gre-ethernet-bridging": (outer_ip() / GRE(proto=0x6558) / Ether(**INNER_MACS)
                              / inner_tcp(), "gre", None),
    "gre-mpls": (outer_ip() / GRE(proto=0x8847) / MPLS(label=16) / inner_tcp(), "gre+mpls", None),
    "erspan-type-ii": (outer_ip() / GRE(seqnum_present=1, sequence_number=1)
                       / ERSPAN_II(session_id=3) / Ether(**INNER_MACS) / inner_tcp(),
                       "erspan", None),
    "erspan-type-iii": (outer_ip() / GRE(proto=0x22EB) / ERSPAN_III(session_id=3)
                        / Ether(**INNER_MACS) / inner_tcp(), "erspan", None),
    "erspan-type-iii-platform": (outer_ip() / GRE(proto=0x22EB) / ERSPAN_III(session_id=3, o=1)
                                 / ERSPAN_PlatformSpecific(platf_id=3)
                                 / Ether(**INNER_MACS) / inner_tcp(), "erspan", None),
    "ip-in-ip": (outer_ip() / inner_tcp(), "ipip", None),
    "ipv6-in-ipv4": (outer_ip() / inner_udp6(), "ip6ip", None),
    "ipv6-in-ipv6": (Ether(**MACS) / IPv6(src="2001:db8:f::1", dst="2001:db8:f::2")
                     / inner_udp6(), "ip6ip", None),
    "ipv4-in-ipv6": (Ether(**MACS) / IPv6(src="2001:db8:f::1", dst="2001:db8:f::2")
                     / inner_tcp(), "ipip", None),
}


@pytest.mark.parametrize("name", TUNNELS)
def test_the_inner_flow_is_the_row_and_the_outer_layer_is_kept(name: str) -> None:
    packet, label, outer_ports = TUNNELS[name]
    d = decode([packet])
    expected = ((5353, 53, "2001:db8::1") if name.startswith("ipv6-in")
                else (40000, 443, "10.1.0.1"))
    assert int(d.status[0]) == S.OK
    assert (int(d.src_port[0]), int(d.dst_port[0]), str(d.src_ip(0))) == expected
    assert encapsulation_label(int(d.encap[0])) == label
    packets, layers = d.tunnel_rows()
    assert packets.tolist() == [0]
    assert int(layers["ip_version"][0]) == (6 if name.endswith("in-ipv6") else 4)
    if outer_ports is None:  # a tunnel over IP: its outer row carries no ports
        assert int(layers["status"][0]) == S.OTHER_IP
    else:
        assert int(layers["status"][0]) == S.OK
        assert (int(layers["src_port"][0]), int(layers["dst_port"][0])) == outer_ports
        assert int(layers["ip_proto"][0]) == 17


def test_nested_tunnels_are_recorded_outermost_first() -> None:
    packet = (outer_ip() / UDP(sport=50000, dport=4789) / VXLAN(vni=1) / Ether(**INNER_MACS)
              / MPLS(label=20, s=0) / MPLS(label=21) / IP(src="10.2.0.1", dst="10.2.0.2")
              / GRE() / inner_tcp())
    d = decode([packet])
    assert encapsulation_label(int(d.encap[0])) == "vxlan+mpls+gre"
    assert (int(d.src_port[0]), int(d.dst_port[0])) == (40000, 443)
    packets, layers = d.tunnel_rows()
    assert packets.tolist() == [0, 0]
    assert int(layers["dst_port"][0]) == 4789  # outermost first
    assert encapsulation_label(int(layers["encap"][1])) == "vxlan+mpls"
    assert int(layers["ip_proto"][1]) == 47


def test_nesting_stops_at_the_maximum_depth() -> None:
    packet: Packet = inner_tcp()
    for k in range(MAX_ENCAPSULATIONS + 1):
        packet = IP(src=f"10.9.{k}.1", dst=f"10.9.{k}.2") / packet
    d = decode([Ether(**MACS) / packet])
    assert encapsulation_label(int(d.encap[0])) == "+".join(["ipip"] * MAX_ENCAPSULATIONS)
    assert (int(d.status[0]), int(d.ip_proto[0])) == (S.OTHER_IP, 4)  # the fifth stays shut
    assert d.tunnels.shape == (1, MAX_ENCAPSULATIONS)


@pytest.mark.parametrize(
    "packet",
    [
        outer_ip() / UDP(sport=50000, dport=4789) / VXLAN() / Ether(**INNER_MACS) / ARP(),
        outer_ip() / UDP(sport=50000, dport=4789) / Raw(b"\x08\x00\x00"),
        outer_ip() / UDP(sport=50000, dport=6081) / GENEVE(proto=0x1234) / Raw(b"x" * 20),
        outer_ip() / UDP(sport=50000, dport=2152) / GTP_U_Header(gtp_type=1) / Raw(b"x" * 20),
    ],
    ids=["arp-in-vxlan", "short-vxlan", "unknown-geneve-protocol", "gtp-echo"],
)
def test_a_tunnel_without_ip_inside_stays_its_outer_flow(packet: Packet) -> None:
    d = decode([packet])
    assert int(d.status[0]) == S.OK
    assert int(d.ip_proto[0]) == 17
    assert int(d.encap[0]) == 0
    assert d.tunnels.shape[1] == 0


def test_gre_we_do_not_read_stays_other_ip() -> None:
    for gre in (GRE(version=1, proto=0x880B), GRE(routing_present=1), GRE(proto=0x88B5)):
        assert one(outer_ip() / gre / Raw(b"x" * 40))[:2] == (S.OTHER_IP, 47)


def test_fragmented_tunnel_packets_stay_shut() -> None:
    packet = Ether(**MACS) / IP(src="192.0.2.1", dst="192.0.2.2", flags="MF") / inner_tcp()
    assert one(packet)[:2] == (S.OTHER_IP, 4)


def test_a_tunnel_cut_inside_its_inner_header_stays_its_outer_flow() -> None:
    packet = bytes(TUNNELS["vxlan"][0])
    cut = len(packet) - 30  # inside the inner IP header
    d = decode([packet[:cut]], wirelens=[len(packet)])
    assert (int(d.status[0]), int(d.dst_port[0]), int(d.encap[0])) == (S.OK, 4789, 0)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(TUNNELS)), data=st.data())
def test_every_cut_of_a_tunnel_packet_is_its_outer_or_its_whole_inner_row(
        name: str, data: st.DataObject) -> None:
    whole = bytes(TUNNELS[name][0])
    cut = data.draw(st.integers(0, len(whole)))
    d = decode([whole[:cut]], wirelens=[len(whole)])
    label = encapsulation_label(int(d.encap[0]))
    assert label in ("", TUNNELS[name][1])
    if label:
        assert int(d.dst_port[0]) in (443, 53)


@settings(max_examples=150, deadline=None)
@given(tail=st.binary(max_size=80), kind=st.sampled_from(["vxlan", "geneve", "gtpu", "gre",
                                                            "erspan", "mpls", "pppoe"]))
def test_random_bytes_inside_a_tunnel_never_escape_the_packet(tail: bytes, kind: str) -> None:
    """Whatever the inner bytes say, decoding reads only inside the packet (the
    batch ends with it, so a read past it would raise IndexError)."""
    payload = Raw(tail)
    frames: dict[str, Packet] = {  # IP and UDP lengths cover the random tail
        "vxlan": outer_ip() / UDP(sport=1, dport=4789) / payload,
        "geneve": outer_ip() / UDP(sport=1, dport=6081) / payload,
        "gtpu": outer_ip() / UDP(sport=1, dport=2152) / payload,
        "gre": outer_ip() / GRE(proto=0x0800) / payload,
        "erspan": outer_ip() / GRE(proto=0x88BE, seqnum_present=1) / payload,
        "mpls": Ether(**MACS, type=0x8847) / payload,
        "pppoe": Ether(**MACS, type=0x8864) / payload,
    }
    whole = bytes(frames[kind])
    d = decode([whole])
    assert len(d) == 1
    assert int(d.status[0]) in set(DecodeStatus)


def test_mpls_label_stack_to_ipv6() -> None:
    packet = Ether(**MACS) / MPLS(label=1, s=0) / MPLS(label=2, s=0) / MPLS(label=3) / inner_udp6()
    assert one(packet) == (S.OK, 17, 5353, 53, "mpls")


def test_mpls_deeper_than_the_limit_is_malformed() -> None:
    packet: Packet = Ether(**MACS)
    for k in range(MAX_MPLS_LABELS):
        packet = packet / MPLS(label=k, s=0)
    packet = packet / MPLS(label=99) / inner_tcp()
    assert one(packet)[0] == S.MALFORMED


def test_mpls_pseudowire_is_not_ip() -> None:
    packet = Ether(**MACS) / MPLS(label=1) / Raw(b"\x00\x00\x00\x00" + bytes(Ether(**MACS)))
    assert one(packet)[0] == S.NON_IP


def test_pppoe_session_ipv4_and_ipv6_and_control() -> None:
    v4 = Ether(**MACS) / PPPoE(sessionid=7) / PPP(proto=0x0021) / inner_tcp()
    v6 = Ether(**MACS) / PPPoE(sessionid=7) / PPP(proto=0x0057) / inner_udp6()
    lcp = Ether(**MACS) / PPPoE(sessionid=7) / PPP(proto=0xC021) / Raw(b"\x01\x01\x00\x04")
    assert one(v4) == (S.OK, 6, 40000, 443, "pppoe")
    assert one(v6) == (S.OK, 17, 5353, 53, "pppoe")
    assert one(lcp)[0] == S.NON_IP


def test_vlan_tagged_vxlan_inner_frame() -> None:
    packet = (outer_ip() / UDP(sport=1, dport=4789) / VXLAN() / Ether(**INNER_MACS)
              / Dot1Q(vlan=10) / inner_tcp())
    assert one(packet) == (S.OK, 6, 40000, 443, "vxlan")


def fabricpath(inner: Packet) -> bytes:
    return (bytes.fromhex("020000000a01" "020000000a02") + struct.pack(">HH", 0x8903, 0x0140)
            + bytes(inner))


def test_fabricpath_frames_are_read_through() -> None:
    assert one(fabricpath(Ether(**INNER_MACS) / inner_tcp())) == (S.OK, 6, 40000, 443, "")
    tagged = fabricpath(Ether(**INNER_MACS) / Dot1Q(vlan=5) / inner_tcp())
    assert one(tagged)[:4] == (S.OK, 6, 40000, 443)
    assert one(fabricpath(Ether(**INNER_MACS) / inner_tcp())[:20])[0] == S.MALFORMED


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (b"\xff\x03\x00\x21" + bytes(inner_tcp()), (S.OK, 6, 40000, 443, "")),
        (b"\x00\x21" + bytes(inner_tcp()), (S.OK, 6, 40000, 443, "")),
        (b"\x21" + bytes(inner_tcp()), (S.OK, 6, 40000, 443, "")),  # protocol compressed
        (b"\xff\x03\x00\x57" + bytes(inner_udp6()), (S.OK, 17, 5353, 53, "")),
        (b"\xff\x03\x02\x81" + bytes(MPLS(label=5) / inner_tcp()), (S.OK, 6, 40000, 443, "mpls")),
        (b"\xff\x03\xc0\x21\x01\x01\x00\x04", (S.NON_IP, 0, 0, 0, "")),
        (b"\xff", (S.MALFORMED, 0, 0, 0, "")),
    ],
    ids=["hdlc-framed", "unframed", "compressed", "ipv6", "mpls", "lcp", "short"],
)
def test_ppp_link_type(frame: bytes, expected: tuple[int, int, int, int, str]) -> None:
    assert one(frame, LinkType.PPP) == expected


def test_cisco_hdlc_link_type() -> None:
    assert one(b"\x0f\x00\x08\x00" + bytes(inner_tcp()), LinkType.C_HDLC)[:4] == (S.OK, 6, 40000,
                                                                                  443)
    assert one(b"\x8f\x00\x86\xdd" + bytes(inner_udp6()), LinkType.C_HDLC)[:4] == (S.OK, 17,
                                                                                  5353, 53)
    assert one(b"\x0f\x00\x80\x35" + b"\0" * 20, LinkType.C_HDLC)[0] == S.NON_IP  # SLARP
    assert one(b"\x0f\x00\x08", LinkType.C_HDLC)[0] == S.MALFORMED


def ppi(dlt: int, frame: bytes, *, version: int = 0, extra: bytes = b"") -> bytes:
    return struct.pack("<BBHI", version, 0, 8 + len(extra), dlt) + extra + frame


def test_ppi_link_type_reads_the_frame_it_wraps() -> None:
    frame = bytes(Ether(**MACS) / inner_tcp())
    assert one(ppi(1, frame), LinkType.PPI)[:4] == (S.OK, 6, 40000, 443)
    field = struct.pack("<HH", 2, 4) + b"\0\0\0\0"  # one 4-byte PPI field
    assert one(ppi(1, frame, extra=field), LinkType.PPI)[:4] == (S.OK, 6, 40000, 443)
    assert one(ppi(127, b"\x08\x00" + b"\0" * 30), LinkType.PPI)[0] == S.UNSUPPORTED_LINK
    assert one(ppi(1, frame, version=1), LinkType.PPI)[0] == S.MALFORMED
    assert one(ppi(192, ppi(1, frame)), LinkType.PPI)[0] == S.UNSUPPORTED_LINK  # no nesting
    header_only = struct.pack("<BBHI", 0, 0, 200, 1) + frame
    assert one(header_only, LinkType.PPI)[0] == S.MALFORMED  # its length past the packet


def dot11(layer: Packet, *, subtype: int = 8, flags: int = 1, order: bool = False) -> bytes:
    """An 802.11 data frame by hand: frame control, duration, three (or four)
    addresses, sequence control, QoS (and HT) control, LLC/SNAP."""
    fc = bytes([(subtype << 4) | (2 << 2), flags | (0x80 if order else 0)])
    head = fc + b"\0\0" + bytes(18) + b"\0\0"
    if flags & 3 == 3:
        head += bytes(6)
    if subtype & 8:
        head += b"\0\0" + (bytes(4) if order else b"")
    ethertype = 0x86DD if bytes(layer)[0] >> 4 == 6 else 0x0800
    return head + b"\xaa\xaa\x03\x00\x00\x00" + struct.pack(">H", ethertype) + bytes(layer)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (dot11(inner_tcp()), (S.OK, 6, 40000, 443, "")),
        (dot11(inner_tcp(), subtype=0), (S.OK, 6, 40000, 443, "")),
        (dot11(inner_udp6(), flags=3), (S.OK, 17, 5353, 53, "")),
        (dot11(inner_tcp(), order=True), (S.OK, 6, 40000, 443, "")),
        (dot11(inner_tcp(), flags=0x41), (S.NON_IP, 0, 0, 0, "")),  # protected
        (dot11(inner_tcp(), subtype=12)[:26], (S.NON_IP, 0, 0, 0, "")),  # QoS null
        (b"\xd4\x00\x00\x00" + bytes(6), (S.NON_IP, 0, 0, 0, "")),  # ACK
        (b"\x80\x00" + bytes(22) + bytes(12), (S.NON_IP, 0, 0, 0, "")),  # beacon
        (dot11(inner_tcp())[:30], (S.MALFORMED, 0, 0, 0, "")),  # SNAP cut
    ],
    ids=["qos-data", "data", "four-addresses", "ht-control", "protected", "qos-null", "ack",
         "beacon", "short"],
)
def test_ieee802_11_link_type(frame: bytes, expected: tuple[int, int, int, int, str]) -> None:
    assert one(frame, LinkType.IEEE802_11) == expected
    assert one(ppi(LinkType.IEEE802_11, frame), LinkType.PPI) == expected


@settings(max_examples=200, deadline=None)
@given(frame=st.binary(max_size=96),
       linktype=st.sampled_from([LinkType.PPP, LinkType.C_HDLC, LinkType.PPI,
                                 LinkType.IEEE802_11, LinkType.ETHERNET]))
def test_random_frames_on_the_new_link_types_stay_inside_the_packet(
        frame: bytes, linktype: int) -> None:
    d = decode([frame], linktype)
    assert int(d.status[0]) in set(DecodeStatus)
    assert len(d) == 1


def test_mixed_batch_keeps_plain_packets_as_they_were() -> None:
    plain = Ether(**MACS) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=53)
    icmp = Ether(**MACS) / IP() / ICMP()
    packets = [plain, TUNNELS["vxlan"][0], icmp, TUNNELS["gre-ipv4"][0], plain]
    d = decode(packets)  # type: ignore[arg-type]
    assert encapsulation_labels(d.encap) == ["", "vxlan", "", "gre", ""]
    assert d.status.tolist() == [S.OK, S.OK, S.ICMP, S.OK, S.OK]
    assert d.tunnels.shape == (5, 1)
    assert (d.tunnels["status"][[0, 2, 4], 0] == TUNNEL_UNUSED).all()
    assert d.wirelen.tolist() == [len(bytes(p)) for p in packets]


def test_encapsulation_labels() -> None:
    code = int(Encapsulation.VXLAN) | int(Encapsulation.MPLS) << 4
    assert encapsulation_label(code) == "vxlan+mpls"
    assert encapsulation_label(0) == ""
    assert encapsulation_labels(np.asarray([0, code, code], dtype=np.uint16)) == [
        "", "vxlan+mpls", "vxlan+mpls"]


def test_decoded_batch_built_without_tunnel_columns_has_none() -> None:
    d = decode([TUNNELS["vxlan"][0]])
    plain = DecodedBatch(**{name: getattr(d, name) for name in (
        "status", "ip_version", "ip_proto", "src_hi", "src_lo", "dst_hi", "dst_lo", "src_port",
        "dst_port", "tcp_flags", "frag_id", "is_first_fragment", "wirelen")})
    assert plain.encap.tolist() == [0]
    assert plain.tunnels.shape == (1, 0)
    with pytest.raises(ValueError, match="encap has 2 rows"):
        DecodedBatch(**{**{f: getattr(d, f) for f in ("status", "ip_version", "ip_proto",
                                                        "src_hi", "src_lo", "dst_hi", "dst_lo",
                                                        "src_port", "dst_port", "tcp_flags",
                                                        "frag_id", "is_first_fragment",
                                                        "wirelen")},
                        "encap": np.zeros(2, dtype=np.uint16)})


# -- flows and the report ---------------------------------------------------------
def test_a_tunnelled_packet_counts_in_its_inner_and_its_tunnel_flow(table: PortTable) -> None:
    packet = TUNNELS["vxlan"][0]
    size = len(bytes(packet))
    analyzer = Analyzer(table)
    analyzer.feed(PacketBatch.from_packets([bytes(packet)] * 3, LinkType.ETHERNET))
    assert (analyzer.packets, analyzer.bytes) == (3, 3 * size)  # capture totals: once
    report = analyzer.report()
    by_port = {(f.transport, f.service_port): f for f in report.flows}
    assert set(by_port) == {("tcp", 443), ("udp", 4789)}
    assert by_port[("tcp", 443)].encapsulation == "vxlan"
    assert by_port[("udp", 4789)].encapsulation == ""
    for flow in by_port.values():
        assert (flow.packets, flow.bytes) == (3, 3 * size)
    services = {(s.transport, s.port): s.packets for s in report.services}
    assert services == {("tcp", 443): 3, ("udp", 4789): 3}
    assert list(by_port[("tcp", 443)].as_dict())[-1] == "encapsulation"


def test_flow_returned_per_packet_is_the_inner_flow() -> None:
    flows = FlowTable()
    d = decode([TUNNELS["gtpu"][0], TUNNELS["gtpu"][0]])
    per_packet = flows.update(d, np.asarray([1, 2], dtype=np.int64))
    assert len(flows) == 2
    fid = int(per_packet[0])
    assert per_packet.tolist() == [fid, fid]
    assert int(flows.port_a[fid]) in (40000, 443)
    assert encapsulation_label(int(flows.encap[fid])) == "gtpu"
    packets, outer = flows.last_tunnel_flows
    assert packets.tolist() == [0, 1]
    assert outer[0] == outer[1] != fid
    assert int(flows.port_a[outer[0]]) == int(flows.port_b[outer[0]]) == 2152
    flows.evict(np.asarray([fid], dtype=np.int64))
    assert int(flows.encap[fid]) == 0


# -- the scapy engine agrees --------------------------------------------------------
def _scapy_decoded(frames: list[bytes], linktype: int) -> DecodedBatch:
    from portwatch.decode import scapy as engine
    from portwatch.decode.rows import rows_to_batch

    s = engine._scapy()
    cls = engine._layer_class(s, linktype)
    return rows_to_batch([engine.dissect(cls(f), len(f)) for f in frames])


def _columns(d: DecodedBatch) -> dict[str, list[Any]]:
    out = {name: getattr(d, name).tolist() for name in (
        "status", "ip_version", "ip_proto", "src_hi", "src_lo", "dst_hi", "dst_lo", "src_port",
        "dst_port", "tcp_flags", "frag_id", "is_first_fragment", "wirelen", "encap")}
    out["tunnels"] = d.tunnels.tolist()
    return out


CROSS_CHECKED: dict[str, tuple[list[bytes], int]] = {
    "tunnels": ([bytes(p) for p, _, _ in TUNNELS.values()], LinkType.ETHERNET),
    "shims-and-refusals": ([bytes(p) for p in (
        Ether(**MACS) / MPLS(label=1, s=0) / MPLS(label=3) / inner_udp6(),
        Ether(**MACS) / MPLS(label=1) / Raw(b"\x00\x00\x00\x00" + bytes(Ether(**MACS))),
        Ether(**MACS) / PPPoE(sessionid=7) / PPP(proto=0x0021) / inner_tcp(),
        Ether(**MACS) / PPPoE(sessionid=7) / PPP(proto=0xC021) / Raw(b"\x01\x01\x00\x04"),
        outer_ip() / UDP(sport=50000, dport=4789) / VXLAN() / Ether(**INNER_MACS) / ARP(),
        outer_ip() / UDP(sport=50000, dport=2152) / GTP_U_Header(gtp_type=1) / Raw(b"x" * 20),
        outer_ip() / GRE(proto=0x88B5) / Raw(b"x" * 40),
        outer_ip() / UDP(sport=1, dport=4789) / VXLAN() / Ether(**INNER_MACS) / Dot1Q(vlan=10)
        / inner_tcp(),
        outer_ip() / UDP(sport=50000, dport=4789) / VXLAN(vni=1) / Ether(**INNER_MACS)
        / MPLS(label=20, s=0) / MPLS(label=21) / IP(src="10.2.0.1", dst="10.2.0.2") / GRE()
        / inner_tcp(),
    )] + [fabricpath(Ether(**INNER_MACS) / inner_tcp())], LinkType.ETHERNET),
    "ppp": ([b"\xff\x03\x00\x21" + bytes(inner_tcp()), b"\x00\x57" + bytes(inner_udp6()),
             b"\xff\x03\x02\x81" + bytes(MPLS(label=5) / inner_tcp()),
             b"\xff\x03\xc0\x21\x01\x01\x00\x04"], LinkType.PPP),
    "cisco-hdlc": ([b"\x0f\x00\x08\x00" + bytes(inner_tcp()),
                    b"\x8f\x00\x86\xdd" + bytes(inner_udp6())], LinkType.C_HDLC),
    "ppi": ([ppi(1, bytes(Ether(**MACS) / inner_tcp())), ppi(105, dot11(inner_tcp()))],
            LinkType.PPI),
    "ieee802-11": ([dot11(inner_tcp()), dot11(inner_tcp(), subtype=0),
                    dot11(inner_udp6(), flags=3), dot11(inner_tcp(), order=True),
                    dot11(inner_tcp(), flags=0x41)], LinkType.IEEE802_11),
}


@pytest.mark.parametrize("name", CROSS_CHECKED)
def test_the_scapy_engine_decodes_tunnels_and_links_as_the_native_one(name: str) -> None:
    frames, linktype = CROSS_CHECKED[name]
    assert _columns(_scapy_decoded(frames, linktype)) == _columns(decode(frames, linktype))


def test_nested_ipip_depth_limit_agrees_in_the_scapy_engine() -> None:
    packet: Packet = inner_tcp()
    for k in range(MAX_ENCAPSULATIONS + 1):
        packet = IP(src=f"10.9.{k}.1", dst=f"10.9.{k}.2") / packet
    frames = [bytes(Ether(**MACS) / packet)]
    assert _columns(_scapy_decoded(frames, LinkType.ETHERNET)) == _columns(decode(frames))


# -- the sample captures: truth and tshark ------------------------------------------
PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
TRUTH: dict[str, dict[str, Any]] = (json.loads((PCAPS / "truth.json").read_text())
                                    if (PCAPS / "truth.json").is_file() else {})
TUNNEL_SAMPLES = sorted(name for name in TRUTH if name.startswith("tunnels/"))
_TRANSPORT_NAMES = {6: "tcp", 17: "udp"}


def _native_sample(path: Path) -> list[DecodedBatch]:
    with read_capture_path(str(path)) as reader:
        return [decode_batch(batch) for batch in reader]


def test_every_tunnel_and_link_type_has_a_sample() -> None:
    names = set(TUNNEL_SAMPLES)
    for kind in ("vxlan", "geneve", "gre", "erspan", "ipip", "gtpu", "mpls", "pppoe", "nested"):
        assert f"tunnels/tunnel-{kind}.pcap" in names
    assert {"tunnels/fabricpath.pcap", "tunnels/linktype-ppp-9.pcap",
            "tunnels/linktype-chdlc-104.pcap", "tunnels/linktype-ppi-192.pcap"} <= names
    on_disk = {f"tunnels/{p.name}" for p in (PCAPS / "tunnels").glob("*.pcap*")}
    assert on_disk == names


@pytest.mark.parametrize("name", TUNNEL_SAMPLES)
def test_sample_counts_per_service_equal_the_truth(name: str, table: PortTable) -> None:
    truth = TRUTH[name]
    analyzer = Analyzer(table)
    encaps: dict[str, int] = {}
    with read_capture_path(str(PCAPS / name)) as reader:
        for batch in reader:
            decoded, _ = analyzer.feed(batch)
            for label in encapsulation_labels(decoded.encap):
                if label:
                    encaps[label] = encaps.get(label, 0) + 1
    report = analyzer.report()
    assert report.packets == truth["packets"]
    assert {f"{s.transport}/{s.port}": s.packets for s in report.services} == truth["by_service"]
    assert encaps == truth.get("by_encapsulation", {})


def _tshark_transports(path: Path) -> list[list[tuple[str, int, int]]]:
    """Per frame, every TCP/UDP header tshark dissected, outermost first."""
    fields = ["frame.protocols", "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport"]
    args = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=a",
            "-E", "aggregator=,", "-E", "separator=/t"]
    for f in fields:
        args += ["-e", f]
    done = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120)
    frames = []
    for line in done.stdout.splitlines():
        protocols, *ports = line.split("\t")
        values = [[int(v) for v in p.split(",") if v] for p in ports]
        seen = {"tcp": 0, "udp": 0}
        layers = []
        for proto in protocols.split(":"):
            if proto in seen:
                k = seen[proto]
                src, dst = (values[0], values[1]) if proto == "tcp" else (values[2], values[3])
                layers.append((proto, src[k], dst[k]))
                seen[proto] += 1
        frames.append(layers)
    return frames


def _native_transports(decoded: list[DecodedBatch]) -> list[list[tuple[str, int, int]]]:
    frames = []
    for d in decoded:
        for i in range(len(d)):
            layers = []
            for k in range(d.tunnels.shape[1]):
                layer = d.tunnels[i, k]
                if layer["status"] == S.OK and int(layer["ip_proto"]) in _TRANSPORT_NAMES:
                    layers.append((_TRANSPORT_NAMES[int(layer["ip_proto"])],
                                   int(layer["src_port"]), int(layer["dst_port"])))
            if d.status[i] == S.OK and int(d.ip_proto[i]) in _TRANSPORT_NAMES:
                layers.append((_TRANSPORT_NAMES[int(d.ip_proto[i])], int(d.src_port[i]),
                               int(d.dst_port[i])))
            frames.append(layers)
    return frames


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
@pytest.mark.parametrize("name", TUNNEL_SAMPLES)
def test_sample_transport_headers_per_frame_equal_tsharks(name: str) -> None:
    path = PCAPS / name
    native = _native_transports(_native_sample(path))
    assert native == _tshark_transports(path)
    assert len(native) == TRUTH[name]["packets"]


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(TUNNELS)), data=st.data())
def test_the_scapy_engine_agrees_on_every_cut_of_a_tunnel_packet(
        name: str, data: st.DataObject) -> None:
    """Cut by the snapshot length anywhere: both engines keep the same rows,
    encapsulations and outer layers. Not compared: cuts inside a TCP or UDP
    header after its ports, which the native decoder reads (it needs 14 and 4
    bytes) and scapy does not dissect, with or without tunnels."""
    whole = bytes(TUNNELS[name][0])
    size = data.draw(st.integers(14, len(whole)))
    for layer in Ether(whole).iterpayloads():
        if isinstance(layer, TCP | UDP):
            at = len(whole) - len(bytes(layer))
            reads = 14 if isinstance(layer, TCP) else 4
            assume(not at + reads <= size < at + len(layer.__class__()))
    cut = whole[:size]
    native = decode([cut], wirelens=[len(whole)])
    from portwatch.decode import scapy as engine
    from portwatch.decode.rows import rows_to_batch

    s = engine._scapy()
    scapy = rows_to_batch([engine.dissect(s.Ether(cut), len(whole))])
    for column in ("encap", "src_port", "dst_port", "ip_proto", "src_lo", "dst_lo"):
        assert getattr(scapy, column).tolist() == getattr(native, column).tolist(), column
    assert scapy.tunnels.tolist() == native.tunnels.tolist()
