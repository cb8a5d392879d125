"""Write the sample captures in this folder, deterministically, plus truth.json.

Run from the repository root (no network is used; scapy only builds bytes)::

    unshare -n .venv/bin/python pcaps/generate.py

Packets are built with scapy; the file formats are written here with
``struct`` so that byte order, timestamp precision, sections, simple packet
blocks and unknown blocks are exactly as wanted and regeneration is
byte-identical (fixed timestamps, addresses, sequence numbers and gzip mtime).

``truth.json`` gives, per file, the packet count and the number of packets per
``transport/service-port`` as the analysis must find it: the server of a TCP
handshake; otherwise the port IANA assigns; otherwise the one outside the
dynamic range; otherwise the lower port (a flow between two dynamic ports is
generated with the lower port as the server). Non-first IP fragments count
with their datagram's flow. ``without_ports`` counts packets that belong to no
flow (ARP, ICMP).

Tunnels: a tunnelled packet counts in its inner flow (its ``tag``) and, for a
tunnel over UDP (VXLAN, Geneve, GTP-U), in the tunnel's own flow too
(``outer``), so a file's ``by_service`` counts such a packet twice.
``by_encapsulation`` counts packets by the encapsulations of their inner flow,
outermost first ("vxlan", "gre+mpls").
"""

from __future__ import annotations

import gzip
import json
import struct
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP, SCTPChunkInit, SCTPChunkInitAck
from scapy.packet import Packet, Raw

OUT = Path(__file__).resolve().parent
BASE_NS = 1_700_000_000_123_456_789  # 2023-11-14, with a sub-microsecond part
STEP_NS = 1_234_567

MAC_CLIENT = "02:00:00:00:00:01"
MAC_SERVER = "02:00:00:00:00:02"
V4_CLIENT, V4_SERVER = "192.0.2.10", "198.51.100.20"
V6_CLIENT, V6_SERVER = "2001:db8::10", "2001:db8:1::20"

LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP = 0, 1, 101, 108
LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2 = 113, 228, 229, 276
LINKTYPE_PPP, LINKTYPE_C_HDLC, LINKTYPE_PPI = 9, 104, 192


@dataclass(frozen=True)
class Pkt:
    """One packet: network-layer (or link-layer for ARP/VLAN) bytes and its truth tag."""

    layer: Packet
    tag: str | None  # "tcp/80" etc.; None when the packet shows no ports
    comment: str = ""
    outer: str | None = None  # the tunnel's own flow ("udp/4789"), counted too
    encap: str = ""  # encapsulations of the inner flow, outermost first


# -- traffic ------------------------------------------------------------------------


def tcp_handshake(
    cport: int, sport: int, data: bytes = b"hello", *, v6: bool = False, ip_opts: bool = False
) -> list[Pkt]:
    """SYN, SYN-ACK, ACK, a request and a reply: the client uses the ephemeral port."""
    if v6:
        c2s: Packet = IPv6(src=V6_CLIENT, dst=V6_SERVER)
        s2c: Packet = IPv6(src=V6_SERVER, dst=V6_CLIENT)
    else:
        opts = [IPOption_RR(routers=["192.0.2.1"])] if ip_opts else []
        c2s = IP(src=V4_CLIENT, dst=V4_SERVER, id=1, options=opts)
        s2c = IP(src=V4_SERVER, dst=V4_CLIENT, id=2)
    tag = f"tcp/{sport}"
    seq_c, seq_s = 1000, 5000
    return [
        Pkt(c2s / TCP(sport=cport, dport=sport, flags="S", seq=seq_c), tag),
        Pkt(s2c / TCP(sport=sport, dport=cport, flags="SA", seq=seq_s, ack=seq_c + 1), tag),
        Pkt(c2s / TCP(sport=cport, dport=sport, flags="A", seq=seq_c + 1, ack=seq_s + 1), tag),
        Pkt(
            c2s / TCP(sport=cport, dport=sport, flags="PA", seq=seq_c + 1, ack=seq_s + 1) / data,
            tag,
        ),
        Pkt(
            s2c
            / TCP(sport=sport, dport=cport, flags="PA", seq=seq_s + 1, ack=seq_c + 1 + len(data))
            / b"ok",
            tag,
        ),
    ]


def udp_exchange(cport: int, sport: int, data: bytes = b"ping", *, v6: bool = False) -> list[Pkt]:
    if v6:
        c2s: Packet = IPv6(src=V6_CLIENT, dst=V6_SERVER)
        s2c: Packet = IPv6(src=V6_SERVER, dst=V6_CLIENT)
    else:
        c2s, s2c = IP(src=V4_CLIENT, dst=V4_SERVER, id=3), IP(src=V4_SERVER, dst=V4_CLIENT, id=4)
    tag = f"udp/{sport}"
    return [
        Pkt(c2s / UDP(sport=cport, dport=sport) / data, tag),
        Pkt(s2c / UDP(sport=sport, dport=cport) / (data + b"-reply"), tag),
    ]


DNS_QUERY = bytes.fromhex("123401000001000000000000076578616d706c6503636f6d0000010001")


def dns_query(*, v6: bool = False) -> list[Pkt]:
    return udp_exchange(53001, 53, DNS_QUERY, v6=v6)


# -- payloads nDPI recognises (detect.pcap) --------------------------------------------

SSH_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"
HTTP_REQUEST = (b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/7.88.1\r\n"
                b"Accept: */*\r\n\r\n")
HTTP_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\nhello"
DNS_RESPONSE = bytes.fromhex(
    "123481800001000100000000076578616d706c6503636f6d0000010001"
    "c00c000100010000012c0004c0000201")


def _tls_extension(etype: int, body: bytes) -> bytes:
    return struct.pack("!HH", etype, len(body)) + body


def tls_client_hello(server_name: bytes) -> bytes:
    """A TLS 1.3 ClientHello record (RFC 8446 4.1.2) with SNI, fixed random and key share.

    Written with ``struct``: scapy's TLS layer needs ``cryptography`` to build
    a record, and a fixed byte layout keeps regeneration byte-identical.
    """
    name = b"\x00" + struct.pack("!H", len(server_name)) + server_name
    extensions = b"".join([
        _tls_extension(0, struct.pack("!H", len(name)) + name),  # server_name
        _tls_extension(10, struct.pack("!HHH", 4, 29, 23)),  # supported_groups
        _tls_extension(13, struct.pack("!HHH", 4, 0x0403, 0x0804)),  # signature_algorithms
        _tls_extension(43, b"\x04\x03\x04\x03\x03"),  # supported_versions: 1.3, 1.2
        _tls_extension(51, struct.pack("!HHH", 36, 29, 32) + b"\x33" * 32),  # key_share
    ])
    body = (b"\x03\x03" + b"\x11" * 32  # legacy_version, random
            + b"\x20" + b"\x44" * 32  # legacy_session_id
            + struct.pack("!HHHH", 6, 0x1301, 0x1302, 0xC02F)  # cipher_suites
            + b"\x01\x00"  # compression: null
            + struct.pack("!H", len(extensions)) + extensions)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def tcp_conversation(cport: int, sport: int, request: bytes | None,
                     reply: bytes | None) -> list[Pkt]:
    """A handshake, then (when given) one request and one reply with consistent sequence numbers."""
    c2s = IP(src=V4_CLIENT, dst=V4_SERVER, id=7)
    s2c = IP(src=V4_SERVER, dst=V4_CLIENT, id=8)
    tag = f"tcp/{sport}"
    seq_c, seq_s = 1001, 5001
    out = [
        Pkt(c2s / TCP(sport=cport, dport=sport, flags="S", seq=seq_c - 1), tag),
        Pkt(s2c / TCP(sport=sport, dport=cport, flags="SA", seq=seq_s - 1, ack=seq_c), tag),
        Pkt(c2s / TCP(sport=cport, dport=sport, flags="A", seq=seq_c, ack=seq_s), tag),
    ]
    if request is not None:
        out.append(Pkt(c2s / TCP(sport=cport, dport=sport, flags="PA", seq=seq_c, ack=seq_s)
                       / request, tag))
        seq_c += len(request)
    if reply is not None:
        out.append(Pkt(s2c / TCP(sport=sport, dport=cport, flags="PA", seq=seq_s, ack=seq_c)
                       / reply, tag))
    return out


#: detect.pcap's flows: client port -> (traffic, what nDPI must find, the verdict).
def detect_traffic() -> tuple[list[Pkt], dict[str, dict[str, str]]]:
    flows: list[tuple[int, list[Pkt], str, str, str]] = [
        # mismatches: the payload is another protocol than the port's assignment
        (50001, tcp_conversation(50001, 443, SSH_BANNER, SSH_BANNER), "ssh", "payload",
         "mismatch"),
        (50002, tcp_conversation(50002, 53, HTTP_REQUEST, HTTP_RESPONSE), "http", "payload",
         "mismatch"),
        (50003, tcp_conversation(50003, 8806, tls_client_hello(b"example.com"), None), "tls",
         "payload", "mismatch"),
        # confirmations: the payload is what IANA assigns
        (50004, [*udp_exchange(50004, 53, DNS_QUERY)[:1],
                 Pkt(IP(src=V4_SERVER, dst=V4_CLIENT, id=4) / UDP(sport=53, dport=50004)
                     / DNS_RESPONSE, "udp/53")], "dns", "payload", "confirmed"),
        (50005, tcp_conversation(50005, 443, tls_client_hello(b"example.org"), None), "tls",
         "payload", "confirmed"),
        (50006, tcp_conversation(50006, 22, SSH_BANNER, SSH_BANNER), "ssh", "payload",
         "confirmed"),
        (50007, tcp_conversation(50007, 80, HTTP_REQUEST, HTTP_RESPONSE), "http", "payload",
         "confirmed"),
        # no payload, or a payload nDPI does not know: never a mismatch
        (50008, tcp_conversation(50008, 443, None, None), "tls", "port-guess", "unconfirmed"),
        (50009, tcp_conversation(50009, 9100, b"\x8a\x01\x7f\x00\xff\xfe\x10\x20", b"\x00\x01"),
         "", "none", "unconfirmed"),
    ]
    packets = [p for _, pkts, *_ in flows for p in pkts]
    truth = {
        str(cport): {"service": pkts[0].tag or "", "detected": detected,
                     "confidence": confidence, "detection": verdict}
        for cport, pkts, detected, confidence, verdict in flows
    }
    return packets, truth


def sctp_init(sport: int) -> list[Pkt]:
    tag = f"sctp/{sport}"
    init = SCTPChunkInit(
        init_tag=0x11223344, a_rwnd=65535, n_out_streams=2, n_in_streams=2, init_tsn=1
    )
    ack = SCTPChunkInitAck(
        init_tag=0x55667788, a_rwnd=65535, n_out_streams=2, n_in_streams=2, init_tsn=1
    )
    return [
        Pkt(IP(src=V4_CLIENT, dst=V4_SERVER, id=5) / SCTP(sport=40000, dport=sport) / init, tag),
        Pkt(
            IP(src=V4_SERVER, dst=V4_CLIENT, id=6)
            / SCTP(sport=sport, dport=40000, tag=0x11223344)
            / ack,
            tag,
        ),
    ]


def dccp_request(sport: int) -> list[Pkt]:
    """A DCCP-Request (RFC 4340 5.1, X=1, 48-bit sequence) and a DCCP-Response."""

    def header(src: int, dst: int, ptype: int, extra: bytes) -> bytes:
        doff = (16 + len(extra)) // 4
        res_type_x = (ptype << 1) | 1
        return struct.pack("!HHBBHBB", src, dst, doff, 0, 0, res_type_x, 0) + (
            b"\x00\x00\x00\x00\x00\x01" + extra
        )

    service = struct.pack("!I", 1)
    tag = f"dccp/{sport}"
    request = header(41000, sport, 0, service)
    response = header(sport, 41000, 1, b"\x00\x00\x00\x00\x00\x01" + service)
    return [
        Pkt(IP(src=V4_CLIENT, dst=V4_SERVER, proto=33, id=7) / Raw(request), tag),
        Pkt(IP(src=V4_SERVER, dst=V4_CLIENT, proto=33, id=8) / Raw(response), tag),
    ]


def icmp_echo() -> list[Pkt]:
    return [
        Pkt(IP(src=V4_CLIENT, dst=V4_SERVER, id=9) / ICMP(type=8, id=7, seq=1) / b"abc", None),
        Pkt(IP(src=V4_SERVER, dst=V4_CLIENT, id=10) / ICMP(type=0, id=7, seq=1) / b"abc", None),
    ]


def ipv4_fragments() -> list[Pkt]:
    """A UDP datagram to port 53 in three fragments: only the first shows the ports."""
    payload = bytes(UDP(sport=53002, dport=53) / DNS_QUERY)
    # UDP checksum over the whole datagram is computed by bytes(); split after that.
    parts = [payload[0:16], payload[16:32], payload[32:]]
    out: list[Pkt] = []
    for i, part in enumerate(parts):
        more = i < len(parts) - 1
        ip = IP(
            src=V4_CLIENT, dst=V4_SERVER, id=0x4242, proto=17, frag=i * 2, flags=1 if more else 0
        )
        # later fragments carry no ports but belong to the datagram's flow
        out.append(Pkt(ip / Raw(part), "udp/53"))
    return out


def ipv6_extensions() -> list[Pkt]:
    """IPv6 with hop-by-hop, routing, destination options, and a fragmented datagram."""
    chain = (
        IPv6(src=V6_CLIENT, dst=V6_SERVER)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting(addresses=["2001:db8:2::1"], segleft=0)
        / IPv6ExtHdrDestOpt()
        / TCP(sport=51000, dport=80, flags="S", seq=1)
    )
    udp = bytes(UDP(sport=51001, dport=53) / DNS_QUERY)
    first = (
        IPv6(src=V6_CLIENT, dst=V6_SERVER)
        / IPv6ExtHdrFragment(nh=17, offset=0, m=1, id=0xABCD)
        / Raw(udp[:16])
    )
    second = (
        IPv6(src=V6_CLIENT, dst=V6_SERVER)
        / IPv6ExtHdrFragment(nh=17, offset=2, m=0, id=0xABCD)
        / Raw(udp[16:])
    )
    return [Pkt(chain, "tcp/80"), Pkt(first, "udp/53"), Pkt(second, "udp/53")]


def arp() -> list[Pkt]:
    req = Ether(src=MAC_CLIENT, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=MAC_CLIENT, psrc=V4_CLIENT, hwdst="00:00:00:00:00:00", pdst=V4_SERVER
    )
    rep = Ether(src=MAC_SERVER, dst=MAC_CLIENT) / ARP(
        op=2, hwsrc=MAC_SERVER, psrc=V4_SERVER, hwdst=MAC_CLIENT, pdst=V4_CLIENT
    )
    return [Pkt(req, None), Pkt(rep, None)]


def vlan_tagged() -> list[Pkt]:
    """802.1Q-tagged and 802.1ad+802.1Q (QinQ) frames, already with their Ethernet header."""
    out = []
    for p in tcp_handshake(52000, 443)[:2]:
        out.append(Pkt(Ether(src=MAC_CLIENT, dst=MAC_SERVER) / Dot1Q(vlan=10) / p.layer, p.tag))
    for p in udp_exchange(52001, 8806):
        frame = Ether(src=MAC_CLIENT, dst=MAC_SERVER) / Dot1AD(vlan=100) / Dot1Q(vlan=20) / p.layer
        out.append(Pkt(frame, p.tag))
    return out


# -- link layers ----------------------------------------------------------------------


def is_link(layer: Packet) -> bool:
    return isinstance(layer, Ether)


def frame(linktype: int, layer: Packet) -> bytes:
    """Wrap a network-layer packet in the link layer of ``linktype``."""
    raw = bytes(layer)
    if is_link(layer):
        if linktype != LINKTYPE_ETHERNET:
            raise ValueError("link-layer packet on a non-Ethernet interface")
        return raw
    v6 = raw[0] >> 4 == 6
    ethertype = 0x86DD if v6 else 0x0800
    if linktype == LINKTYPE_ETHERNET:
        src, dst = (MAC_CLIENT, MAC_SERVER)
        return bytes(Ether(src=src, dst=dst, type=ethertype)) + raw
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return raw
    if linktype == LINKTYPE_LINUX_SLL:
        addr = bytes.fromhex(MAC_CLIENT.replace(":", "")) + b"\0\0"
        return struct.pack("!HHH8sH", 4, 1, 6, addr, ethertype) + raw
    if linktype == LINKTYPE_LINUX_SLL2:
        addr = bytes.fromhex(MAC_CLIENT.replace(":", "")) + b"\0\0"
        return struct.pack("!HHIHBB8s", ethertype, 0, 2, 1, 4, 6, addr) + raw
    if linktype == LINKTYPE_NULL:  # address family in the writer's (little-endian) order
        return struct.pack("<I", 30 if v6 else 2) + raw
    if linktype == LINKTYPE_LOOP:  # OpenBSD: address family in network order
        return struct.pack("!I", 24 if v6 else 2) + raw
    raise ValueError(f"no framing for link type {linktype}")


# -- file formats -------------------------------------------------------------------


def timestamps(n: int, start: int = 0) -> list[int]:
    return [BASE_NS + (start + i) * STEP_NS for i in range(n)]


def write_pcap(
    packets: list[tuple[int, bytes]], linktype: int, *, order: str = "<", nano: bool = False
) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)]
    for ts, data in packets:
        sec, frac = divmod(ts, 1_000_000_000)
        frac = frac if nano else frac // 1000
        out.append(struct.pack(order + "IIII", sec, frac, len(data), len(data)) + data)
    return b"".join(out)


def ng_block(btype: int, body: bytes, order: str = "<") -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = len(body) + 12
    return struct.pack(order + "II", btype, length) + body + struct.pack(order + "I", length)


def ng_option(code: int, value: bytes, order: str = "<") -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def ng_shb(order: str = "<", comment: str = "") -> bytes:
    opts = ng_option(1, comment.encode(), order) + b"\0" * 4 if comment else b""
    body = struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1) + opts
    return ng_block(0x0A0D0D0A, body, order)


def ng_idb(linktype: int, name: str, order: str = "<", tsresol: int = 6) -> bytes:
    opts = ng_option(2, name.encode(), order)
    if tsresol != 6:
        opts += ng_option(9, bytes([tsresol]), order)
    body = struct.pack(order + "HHI", linktype, 0, 262144) + opts + b"\0" * 4
    return ng_block(1, body, order)


def ng_epb(
    iface: int, ts_ns: int, data: bytes, comment: str = "", *, order: str = "<", tsresol: int = 6
) -> bytes:
    if tsresol & 0x80:
        ticks = ts_ns * (1 << (tsresol & 0x7F)) // 1_000_000_000
    else:
        ticks = ts_ns // 10 ** (9 - tsresol)
    head = struct.pack(
        order + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data)
    )
    body = head + data + b"\0" * (-len(data) % 4)
    if comment:
        body += ng_option(1, comment.encode(), order) + b"\0" * 4
    return ng_block(6, body, order)


def ng_spb(data: bytes, order: str = "<") -> bytes:
    return ng_block(3, struct.pack(order + "I", len(data)) + data, order)


def ng_nrb(order: str = "<") -> bytes:
    """Name Resolution Block: one IPv4 record, then end of records."""
    record = socket_v4(V4_SERVER) + b"server.example\0"
    body = struct.pack(order + "HH", 1, len(record)) + record + b"\0" * (-len(record) % 4)
    return ng_block(4, body + b"\0" * 4, order)


def socket_v4(addr: str) -> bytes:
    return bytes(int(x) for x in addr.split("."))


def ng_isb(iface: int, order: str = "<") -> bytes:
    """Interface Statistics Block with no options."""
    return ng_block(5, struct.pack(order + "III", iface, 0, 0), order)


def ng_custom() -> bytes:
    """A Custom Block (0x00000BAD) with a private enterprise number and some data."""
    return ng_block(0x00000BAD, struct.pack("<I", 99999) + b"portwatch test data")


def ng_dsb() -> bytes:
    """A Decryption Secrets Block (TLS key log) of two lines."""
    secret = b"CLIENT_RANDOM 00 00\n"
    return ng_block(0x0000000A, struct.pack("<II", 0x544C534B, len(secret)) + secret)


# -- tunnels and other link types ----------------------------------------------------
# Outer (underlay) endpoints of tunnels, and the MACs of frames inside them.
T4_A, T4_B = "203.0.113.1", "203.0.113.2"
T6_A, T6_B = "2001:db8:ffff::1", "2001:db8:ffff::2"
MAC_INNER_A, MAC_INNER_B = "02:00:00:00:01:01", "02:00:00:00:01:02"


def underlay(*, v6: bool = False) -> Packet:
    eth = Ether(src=MAC_CLIENT, dst=MAC_SERVER)
    return eth / (IPv6(src=T6_A, dst=T6_B) if v6 else IP(src=T4_A, dst=T4_B, id=7))


def inner_ether(layer: Packet) -> Packet:
    return Ether(src=MAC_INNER_A, dst=MAC_INNER_B) / layer


def wrapped(inner: list[Pkt], wrap: object, encap: str, outer: str | None = None) -> list[Pkt]:
    """Each inner packet inside ``wrap(inner layer)``; a tag-less inner packet
    (ARP) stays the tunnel's own flow, uncounted as an encapsulation."""
    out = []
    for p in inner:
        layer = wrap(p.layer)  # type: ignore[operator]
        if p.tag is None:
            out.append(Pkt(layer, outer, p.comment))
        else:
            out.append(Pkt(layer, p.tag, p.comment, outer=outer, encap=encap))
    return out


def vxlan_traffic() -> list[Pkt]:
    from scapy.layers.vxlan import VXLAN

    def wrap(layer: Packet) -> Packet:
        return underlay() / UDP(sport=49320, dport=4789) / VXLAN(vni=4242) / inner_ether(layer)

    inner = [*tcp_handshake(49321, 80), *dns_query()]
    arp_inside = Pkt(ARP(op=1, hwsrc=MAC_INNER_A, psrc="10.0.0.1", pdst="10.0.0.2"), None)
    return [*wrapped(inner, wrap, "vxlan", "udp/4789"),
            *wrapped([arp_inside], wrap, "", "udp/4789")]


def geneve_traffic() -> list[Pkt]:
    from scapy.contrib.geneve import GENEVE, GeneveOptions

    option = GeneveOptions(classid=0x0104, type=0x01, data=b"\x00\x00\x00\x2a")

    def ethernet(layer: Packet) -> Packet:
        return (underlay() / UDP(sport=49330, dport=6081)
                / GENEVE(vni=77, proto=0x6558, options=[option]) / inner_ether(layer))

    def ip(layer: Packet) -> Packet:
        return underlay() / UDP(sport=49331, dport=6081) / GENEVE(vni=78, proto=0x0800) / layer

    return [*wrapped(tcp_handshake(49332, 443), ethernet, "geneve", "udp/6081"),
            *wrapped(dns_query(), ip, "geneve", "udp/6081")]


def gre_traffic() -> list[Pkt]:
    from scapy.layers.l2 import GRE

    def keyed(layer: Packet) -> Packet:
        return underlay() / GRE(key_present=1, key=1001, seqnum_present=1) / layer

    def bridged(layer: Packet) -> Packet:
        return underlay() / GRE(proto=0x6558) / inner_ether(layer)

    def over_v6(layer: Packet) -> Packet:
        return underlay(v6=True) / GRE(proto=0x86DD) / layer

    return [*wrapped(tcp_handshake(49340, 22), keyed, "gre"),
            *wrapped(udp_exchange(49341, 8806), bridged, "gre"),
            *wrapped(dns_query(v6=True), over_v6, "gre")]


def erspan_traffic() -> list[Pkt]:
    from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III, ERSPAN_PlatformSpecific
    from scapy.layers.l2 import GRE

    def type_i(layer: Packet) -> Packet:
        return underlay() / GRE(proto=0x88BE) / bytes(inner_ether(layer))

    def type_ii(layer: Packet) -> Packet:
        return (underlay() / GRE(proto=0x88BE, seqnum_present=1, sequence_number=5)
                / ERSPAN_II(session_id=10) / inner_ether(layer))

    def type_iii(layer: Packet) -> Packet:
        return (underlay() / GRE(proto=0x22EB, seqnum_present=1, sequence_number=6)
                / ERSPAN_III(session_id=11, o=1) / ERSPAN_PlatformSpecific(platf_id=3)
                / inner_ether(layer))

    return [*wrapped(udp_exchange(49350, 53, DNS_QUERY), type_i, "erspan"),
            *wrapped(tcp_handshake(49351, 443), type_ii, "erspan"),
            *wrapped(udp_exchange(49352, 8806), type_iii, "erspan")]


def ipip_traffic() -> list[Pkt]:
    def over_v4(layer: Packet) -> Packet:
        return underlay() / layer

    def over_v6(layer: Packet) -> Packet:
        return underlay(v6=True) / layer

    return [*wrapped(tcp_handshake(49360, 80), over_v4, "ipip"),
            *wrapped(dns_query(v6=True), over_v4, "ip6ip"),
            *wrapped(udp_exchange(49361, 8806), over_v6, "ipip"),
            *wrapped(tcp_handshake(49362, 443, v6=True), over_v6, "ip6ip")]


def gtpu_traffic() -> list[Pkt]:
    from scapy.contrib.gtp import GTP_U_Header, GTPPDUSessionContainer

    def plain(layer: Packet) -> Packet:
        return underlay() / UDP(sport=2152, dport=2152) / GTP_U_Header(teid=0x1001) / layer

    def extended(layer: Packet) -> Packet:
        return (underlay() / UDP(sport=2152, dport=2152)
                / GTP_U_Header(teid=0x1002, E=1, next_ex=0x85)
                / GTPPDUSessionContainer(type=1, QFI=9) / layer)

    echo = Pkt(underlay() / UDP(sport=2152, dport=2152) / GTP_U_Header(gtp_type=1, S=1, seq=1),
               "udp/2152")
    return [*wrapped(tcp_handshake(49370, 80), plain, "gtpu", "udp/2152"),
            *wrapped(dns_query(v6=True), extended, "gtpu", "udp/2152"),
            echo]


def mpls_traffic() -> list[Pkt]:
    from scapy.contrib.mpls import MPLS
    from scapy.layers.vxlan import VXLAN

    def one_label(layer: Packet) -> Packet:
        return Ether(src=MAC_CLIENT, dst=MAC_SERVER) / MPLS(label=16, ttl=64) / layer

    def three_labels(layer: Packet) -> Packet:
        return (Ether(src=MAC_CLIENT, dst=MAC_SERVER) / MPLS(label=100, s=0, ttl=64)
                / MPLS(label=200, s=0, ttl=64) / MPLS(label=300, ttl=64) / layer)

    def in_vxlan(layer: Packet) -> Packet:
        return (underlay() / UDP(sport=49380, dport=4789) / VXLAN(vni=9)
                / Ether(src=MAC_INNER_A, dst=MAC_INNER_B, type=0x8847)
                / MPLS(label=17, ttl=64) / layer)

    return [*wrapped(tcp_handshake(49381, 443), one_label, "mpls"),
            *wrapped(dns_query(v6=True), three_labels, "mpls"),
            *wrapped(udp_exchange(49382, 8806), in_vxlan, "vxlan+mpls", "udp/4789")]


def pppoe_traffic() -> list[Pkt]:
    from scapy.layers.ppp import PPP, PPPoE

    def session(proto: int) -> object:
        def wrap(layer: Packet) -> Packet:
            return (Ether(src=MAC_CLIENT, dst=MAC_SERVER) / PPPoE(sessionid=0x11)
                    / PPP(proto=proto) / layer)
        return wrap

    lcp = Pkt(Ether(src=MAC_CLIENT, dst=MAC_SERVER) / PPPoE(sessionid=0x11) / PPP(proto=0xC021)
              / Raw(bytes.fromhex("0901000800000000")), None)  # LCP echo request
    return [*wrapped(tcp_handshake(49390, 80), session(0x0021), "pppoe"),
            *wrapped(dns_query(v6=True), session(0x0057), "pppoe"),
            lcp]


def nested_traffic() -> list[Pkt]:
    """VXLAN inside GRE, and GRE inside IP-in-IP inside VXLAN."""
    from scapy.layers.l2 import GRE
    from scapy.layers.vxlan import VXLAN

    def vxlan_in_gre(layer: Packet) -> Packet:
        return (underlay() / GRE() / IP(src="198.18.0.1", dst="198.18.0.2", id=8)
                / UDP(sport=49400, dport=4789) / VXLAN(vni=1) / inner_ether(layer))

    def deep(layer: Packet) -> Packet:
        return (underlay() / UDP(sport=49401, dport=4789) / VXLAN(vni=2)
                / inner_ether(IP(src="198.18.1.1", dst="198.18.1.2", id=9)
                              / IP(src="198.18.2.1", dst="198.18.2.2", id=10) / GRE() / layer))

    return [*wrapped(tcp_handshake(49402, 80), vxlan_in_gre, "gre+vxlan", "udp/4789"),
            *wrapped(udp_exchange(49403, 8806), deep, "vxlan+ipip+gre", "udp/4789")]


def fabricpath_traffic() -> list[Pkt]:
    """Cisco FabricPath: outer switch MACs, ethertype 0x8903, FTag/TTL, then the
    classical Ethernet frame (scapy has no layer: the header is built here)."""
    header = (bytes.fromhex("020000000a01" "020000000a02")
              + struct.pack("!HH", 0x8903, (1 << 6) | 32))

    def wrap(layer: Packet) -> Packet:
        return Ether(header + bytes(Ether(src=MAC_CLIENT, dst=MAC_SERVER) / layer))

    def tagged(layer: Packet) -> Packet:
        return Ether(header + bytes(Ether(src=MAC_CLIENT, dst=MAC_SERVER) / Dot1Q(vlan=30)
                                    / layer))

    return [*wrapped(tcp_handshake(49410, 443), wrap, ""),
            *wrapped(dns_query(), tagged, "")]


def ppp_frame(layer: Packet, *, framed: bool = True, compressed: bool = False) -> bytes:
    """LINKTYPE_PPP: HDLC-like address/control (or not), then the protocol (one
    byte when compressed)."""
    raw = bytes(layer)
    proto = 0x0057 if raw[0] >> 4 == 6 else 0x0021
    head = b"\xff\x03" if framed else b""
    return head + (bytes([proto]) if compressed else struct.pack("!H", proto)) + raw


def chdlc_frame(layer: Packet) -> bytes:
    raw = bytes(layer)
    return struct.pack("!BBH", 0x0F, 0x00, 0x86DD if raw[0] >> 4 == 6 else 0x0800) + raw


def ppi_frame(layer: Packet | bytes, dlt: int = LINKTYPE_ETHERNET) -> bytes:
    """PPI header (version 0, one 802.11-common 20-byte field left zero) naming
    ``dlt``, then the frame (a network-layer packet goes into Ethernet)."""
    field = struct.pack("<HH", 2, 20) + bytes(20)
    if isinstance(layer, bytes):
        frame_ = layer
    else:
        frame_ = bytes(Ether(src=MAC_CLIENT, dst=MAC_SERVER) / layer)
    return struct.pack("<BBHI", 0, 0, 8 + len(field), dlt) + field + frame_


LINKTYPE_IEEE802_11 = 105
MAC_AP = "02:00:00:00:00:aa"


def dot11_data(layer: Packet, *, qos: bool = True, four_addresses: bool = False) -> bytes:
    """An 802.11 data frame (to the AP; QoS data, or a 4-address WDS frame)
    carrying ``layer`` in LLC/SNAP."""
    from scapy.layers.dot11 import Dot11, Dot11QoS
    from scapy.layers.l2 import LLC, SNAP

    head = Dot11(type=2, subtype=8 if qos else 0, FCfield=3 if four_addresses else 1,
                 addr1=MAC_AP, addr2=MAC_CLIENT, addr3=MAC_SERVER,
                 addr4=MAC_CLIENT if four_addresses else None)
    body = LLC(dsap=0xAA, ssap=0xAA, ctrl=3) / SNAP(OUI=0, code=0x86DD
                                                   if bytes(layer)[0] >> 4 == 6 else 0x0800)
    return bytes((head / Dot11QoS() if qos else head) / body / layer)


def dot11_others() -> list[bytes]:
    """A beacon and a protected (CCMP) data frame: no IP to read."""
    from scapy.layers.dot11 import Dot11, Dot11Beacon, Dot11Elt

    beacon = (Dot11(type=0, subtype=8, addr1="ff:ff:ff:ff:ff:ff", addr2=MAC_AP, addr3=MAC_AP)
              / Dot11Beacon() / Dot11Elt(ID=0, info=b"portwatch"))
    protected = Dot11(type=2, subtype=8, FCfield=0x41, addr1=MAC_AP, addr2=MAC_CLIENT,
                      addr3=MAC_SERVER)
    return [bytes(beacon), bytes(protected) + b"\x00\x00" + bytes(8) + bytes(40)]


# -- truth ----------------------------------------------------------------------------


def truth_of(packets: list[Pkt]) -> dict[str, object]:
    tags = Counter(p.tag for p in packets if p.tag)
    tags.update(p.outer for p in packets if p.outer)
    truth: dict[str, object] = {
        "packets": len(packets),
        "by_service": dict(sorted(tags.items())),
        "without_ports": sum(1 for p in packets if p.tag is None and p.outer is None),
    }
    encaps = Counter(p.encap for p in packets if p.encap)
    if encaps:
        truth["by_encapsulation"] = dict(sorted(encaps.items()))
    return truth


# -- the files ----------------------------------------------------------------------


def mixed_traffic() -> list[Pkt]:
    """The Ethernet part of the main sample."""
    return [
        *arp(),
        *tcp_handshake(49200, 80, b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"),
        *tcp_handshake(49201, 443, b"\x16\x03\x01\x00\x05hello"),
        *tcp_handshake(49202, 22, b"SSH-2.0-OpenSSH_9.6\r\n", ip_opts=True),
        *tcp_handshake(49203, 9100, b"%!PS-Adobe-3.0\n"),
        *tcp_handshake(49204, 443, b"\x16\x03\x01\x00\x05hello", v6=True),
        *tcp_handshake(49205, 44515, b"unauthorized"),
        *tcp_handshake(49206, 8807, b"reserved tcp"),
        *udp_exchange(49207, 8806, b"unassigned udp"),
        *udp_exchange(49208, 3868, b"reserved udp"),
        *udp_exchange(60000, 50000, b"dynamic to dynamic"),
        *dns_query(),
        *sctp_init(2905),
        *sctp_init(3868),
        *dccp_request(5004),
        *icmp_echo(),
        *ipv4_fragments(),
        *ipv6_extensions(),
        *vlan_tagged(),
    ]


def build_files() -> tuple[dict[str, bytes], dict[str, dict[str, object]]]:
    files: dict[str, bytes] = {}
    truth: dict[str, dict[str, object]] = {}

    # Main sample: two interfaces (Ethernet, raw IPv4), comments, skipped blocks.
    eth = mixed_traffic()
    raw4 = tcp_handshake(49300, 80, b"GET /tun HTTP/1.1\r\n\r\n")
    raw4[0] = Pkt(raw4[0].layer, raw4[0].tag, "SYN seen on the tunnel")
    eth[2] = Pkt(eth[2].layer, eth[2].tag, "first HTTP packet")
    blocks = [
        ng_shb(comment="portwatch sample capture"),
        ng_idb(LINKTYPE_ETHERNET, "eth0"),
        ng_idb(LINKTYPE_IPV4, "tun0", tsresol=9),
        ng_nrb(),
    ]
    ts = timestamps(len(eth) + len(raw4))
    # Interleave: the tunnel handshake sits in the middle of the Ethernet traffic.
    order = [(0, p) for p in eth[:20]] + [(1, p) for p in raw4] + [(0, p) for p in eth[20:]]
    for t, (iface, p) in zip(ts, order, strict=True):
        tsresol = 9 if iface == 1 else 6
        linktype = LINKTYPE_IPV4 if iface == 1 else LINKTYPE_ETHERNET
        blocks.append(ng_epb(iface, t, frame(linktype, p.layer), p.comment, tsresol=tsresol))
    blocks += [ng_isb(0), ng_isb(1)]
    files["sample.pcapng"] = b"".join(blocks)
    truth["sample.pcapng"] = truth_of([p for _, p in order])

    # Classic pcap in both byte orders and both precisions: the same packets.
    small = [*tcp_handshake(49400, 80), *dns_query(), *arp()]
    eth_frames = [frame(LINKTYPE_ETHERNET, p.layer) for p in small]
    recs = list(zip(timestamps(len(small)), eth_frames, strict=True))
    for name, order_, nano in [
        ("eth-le-usec.pcap", "<", False),
        ("eth-be-usec.pcap", ">", False),
        ("eth-le-nsec.pcap", "<", True),
        ("eth-be-nsec.pcap", ">", True),
    ]:
        files[name] = write_pcap(recs, LINKTYPE_ETHERNET, order=order_, nano=nano)
        truth[name] = truth_of(small)

    # One file per link type.
    per_link = {
        "linktype-raw-101.pcap": (
            LINKTYPE_RAW,
            [*dns_query(), *tcp_handshake(49500, 443, v6=True)],
        ),
        "linktype-ipv4-228.pcap": (LINKTYPE_IPV4, [*tcp_handshake(49501, 22), *icmp_echo()]),
        "linktype-ipv6-229.pcap": (
            LINKTYPE_IPV6,
            [*dns_query(v6=True), *ipv6_extensions()],
        ),
        "linktype-sll-113.pcap": (
            LINKTYPE_LINUX_SLL,
            [*tcp_handshake(49503, 9100), *udp_exchange(49504, 8806)],
        ),
        "linktype-sll2-276.pcap": (
            LINKTYPE_LINUX_SLL2,
            [*tcp_handshake(49505, 44515), *sctp_init(2905)],
        ),
        "linktype-null-0.pcap": (
            LINKTYPE_NULL,
            [*udp_exchange(49506, 8807), *tcp_handshake(49507, 443, v6=True)],
        ),
        "linktype-loop-108.pcap": (
            LINKTYPE_LOOP,
            [*dccp_request(5004), *udp_exchange(61000, 50001, v6=True)],
        ),
    }
    for name, (linktype, pkts) in per_link.items():
        data = [frame(linktype, p.layer) for p in pkts]
        files[name] = write_pcap(list(zip(timestamps(len(pkts)), data, strict=True)), linktype)
        truth[name] = truth_of(pkts)

    # Protocol corner cases on Ethernet.
    corners = [
        *vlan_tagged(),
        *ipv4_fragments(),
        *ipv6_extensions(),
        *tcp_handshake(49600, 22, ip_opts=True),
    ]
    files["ip-corners.pcap"] = write_pcap(
        list(
            zip(
                timestamps(len(corners)),
                [frame(LINKTYPE_ETHERNET, p.layer) for p in corners],
                strict=True,
            )
        ),
        LINKTYPE_ETHERNET,
    )
    truth["ip-corners.pcap"] = truth_of(corners)

    # Two sections, little- then big-endian, each with its own interfaces.
    sec1 = tcp_handshake(49700, 80)
    sec2a, sec2b = dns_query(), tcp_handshake(49702, 443)
    ts = timestamps(len(sec1) + len(sec2a) + len(sec2b))
    blocks = [ng_shb("<"), ng_idb(LINKTYPE_ETHERNET, "eth0", "<")]
    blocks += [
        ng_epb(0, t, frame(LINKTYPE_ETHERNET, p.layer)) for t, p in zip(ts, sec1, strict=False)
    ]
    blocks += [
        ng_shb(">"),
        ng_idb(LINKTYPE_RAW, "raw0", ">", tsresol=9),
        ng_idb(LINKTYPE_LINUX_SLL, "any", ">"),
    ]
    rest = ts[len(sec1) :]
    blocks += [
        ng_epb(0, t, frame(LINKTYPE_RAW, p.layer), order=">", tsresol=9)
        for t, p in zip(rest, sec2a, strict=False)
    ]
    blocks += [
        ng_epb(1, t, frame(LINKTYPE_LINUX_SLL, p.layer), order=">")
        for t, p in zip(rest[len(sec2a) :], sec2b, strict=True)
    ]
    files["multi-section.pcapng"] = b"".join(blocks)
    truth["multi-section.pcapng"] = truth_of([*sec1, *sec2a, *sec2b])

    # Simple packet blocks among unknown blocks (NRB, ISB, custom, decryption secrets),
    # and a power-of-two timestamp resolution on a second interface.
    spb = udp_exchange(49800, 8806)
    epb = tcp_handshake(49801, 9100)[:2]
    blocks = [
        ng_shb(),
        ng_idb(LINKTYPE_ETHERNET, "eth0"),
        ng_nrb(),
        ng_custom(),
        *[ng_spb(frame(LINKTYPE_ETHERNET, p.layer)) for p in spb],
        ng_dsb(),
        ng_idb(LINKTYPE_ETHERNET, "eth1", tsresol=0x80 | 20),
        *[
            ng_epb(1, t, frame(LINKTYPE_ETHERNET, p.layer), tsresol=0x80 | 20)
            for t, p in zip(timestamps(len(epb)), epb, strict=True)
        ],
        ng_isb(0),
    ]
    files["simple-and-unknown-blocks.pcapng"] = b"".join(blocks)
    truth["simple-and-unknown-blocks.pcapng"] = truth_of([*spb, *epb])

    # Payloads nDPI recognises, on their assigned ports and on others (--detect).
    detect, detections = detect_traffic()
    files["detect.pcap"] = write_pcap(
        list(zip(timestamps(len(detect)), [frame(LINKTYPE_ETHERNET, p.layer) for p in detect],
                 strict=True)), LINKTYPE_ETHERNET, nano=True)
    truth["detect.pcap"] = {**truth_of(detect), "detection": detections}

    # gzip-compressed classic pcap (fixed mtime so the bytes never change).
    files["eth-le-usec.pcap.gz"] = gzip.compress(files["eth-le-usec.pcap"], 9, mtime=0)
    truth["eth-le-usec.pcap.gz"] = truth["eth-le-usec.pcap"]

    # Cut in the middle of the 7th record: 6 whole packets, then damage.
    whole = files["eth-le-usec.pcap"]
    offset = 24
    for _ in range(6):
        (incl,) = struct.unpack_from("<I", whole, offset + 8)
        offset += 16 + incl
    files["truncated.pcap"] = whole[: offset + 16 + 10]
    truth["truncated.pcap"] = {
        **truth_of(small[:6]),
        "truncated_at": offset,
    }

    # Tunnels, label stacks, PPPoE and FabricPath on Ethernet, in tunnels/: the
    # Wireshark plugin's tests read the top folder, and the plugin does not
    # follow tunnels (yet).
    for name, pkts in {
        "tunnels/tunnel-vxlan.pcap": vxlan_traffic(),
        "tunnels/tunnel-geneve.pcap": geneve_traffic(),
        "tunnels/tunnel-gre.pcap": gre_traffic(),
        "tunnels/tunnel-erspan.pcap": erspan_traffic(),
        "tunnels/tunnel-ipip.pcap": ipip_traffic(),
        "tunnels/tunnel-gtpu.pcap": gtpu_traffic(),
        "tunnels/tunnel-mpls.pcap": mpls_traffic(),
        "tunnels/tunnel-pppoe.pcap": pppoe_traffic(),
        "tunnels/tunnel-nested.pcap": nested_traffic(),
        "tunnels/fabricpath.pcap": fabricpath_traffic(),
    }.items():
        data = [bytes(p.layer) for p in pkts]
        files[name] = write_pcap(list(zip(timestamps(len(pkts)), data, strict=True)),
                                 LINKTYPE_ETHERNET)
        truth[name] = truth_of(pkts)

    # The link types of WAN and wireless captures.
    ppp = [*tcp_handshake(49420, 80), *dns_query(v6=True)]
    ppp_data = [ppp_frame(p.layer, framed=i % 2 == 0, compressed=i == 3)
                for i, p in enumerate(ppp)]
    lcp = b"\xff\x03\xc0\x21" + bytes.fromhex("0901000800000000")
    files["tunnels/linktype-ppp-9.pcap"] = write_pcap(
        list(zip(timestamps(len(ppp) + 1), [*ppp_data, lcp], strict=True)), LINKTYPE_PPP)
    truth["tunnels/linktype-ppp-9.pcap"] = truth_of([*ppp, Pkt(Raw(lcp), None)])

    chdlc = [*tcp_handshake(49421, 22), *dns_query(v6=True)]
    slarp = struct.pack("!BBH", 0x8F, 0x00, 0x8035) + bytes(18)
    files["tunnels/linktype-chdlc-104.pcap"] = write_pcap(
        list(zip(timestamps(len(chdlc) + 1), [*map(chdlc_frame, (p.layer for p in chdlc)),
                                              slarp], strict=True)), LINKTYPE_C_HDLC)
    truth["tunnels/linktype-chdlc-104.pcap"] = truth_of([*chdlc, Pkt(Raw(slarp), None)])

    ppi = [*tcp_handshake(49422, 443), *udp_exchange(49423, 8806)]
    wifi = [*tcp_handshake(49424, 80), *dns_query(v6=True)]
    wifi_frames = [ppi_frame(dot11_data(p.layer, qos=i != 1, four_addresses=i == 2),
                             LINKTYPE_IEEE802_11) for i, p in enumerate(wifi)]
    others = [ppi_frame(f, LINKTYPE_IEEE802_11) for f in dot11_others()]
    ppi_data = [*(ppi_frame(p.layer) for p in ppi), *wifi_frames, *others]
    files["tunnels/linktype-ppi-192.pcap"] = write_pcap(
        list(zip(timestamps(len(ppi_data)), ppi_data, strict=True)), LINKTYPE_PPI)
    truth["tunnels/linktype-ppi-192.pcap"] = truth_of(
        [*ppi, *wifi, *(Pkt(Raw(f), None) for f in others)])
    return files, truth


def main() -> int:
    files, truth = build_files()
    for name, data in files.items():
        (OUT / name).parent.mkdir(exist_ok=True)
        (OUT / name).write_bytes(data)
    (OUT / "truth.json").write_text(json.dumps(truth, indent=2, sort_keys=True) + "\n")
    total = sum(len(d) for d in files.values())
    print(f"wrote {len(files)} captures ({total} bytes) and truth.json to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
