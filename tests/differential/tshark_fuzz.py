"""Differential run: the native decoder against tshark on random frames.

Not part of the test suite (each seed runs tshark six times). It writes a
pcap of about 330 random frames per link type: Ethernet (with and without
VLAN tags), Linux SLL and SLL2, raw IP, BSD and OpenBSD loopback; IPv4 with
options and fragments, IPv6 with extension-header chains; TCP, UDP, SCTP,
DCCP, ICMP, GRE; 5 % of frames cut short. Then it compares, packet by packet,
the native decoder's status, protocol and ports with what the pyshark engine
(tshark's dissection) gives, and prints the packets that differ.

    .venv/bin/python tests/differential/tshark_fuzz.py [SEED] [--keep DIR]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "pcaps"))

import generate as g  # noqa: E402 - the sample generator's framing helpers
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR, fragment  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether  # noqa: E402
from scapy.layers.sctp import SCTP  # noqa: E402
from scapy.packet import Packet, Raw  # noqa: E402

from portwatch.capture.files.reader import open_capture  # noqa: E402
from portwatch.decode import decoder_for  # noqa: E402
from portwatch.decode.native import decode_batch  # noqa: E402

FIELDS = ("status", "ip_proto", "src_port", "dst_port")
LINKTYPES = (g.LINKTYPE_ETHERNET, g.LINKTYPE_LINUX_SLL, g.LINKTYPE_LINUX_SLL2, g.LINKTYPE_RAW,
             g.LINKTYPE_NULL, g.LINKTYPE_LOOP)


def transport(rng: random.Random) -> tuple[Packet, int]:
    kind = rng.choice(["tcp", "udp", "sctp", "icmp", "gre", "dccp"])
    sport, dport = rng.randrange(65536), rng.randrange(65536)
    payload = Raw(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))))
    if kind == "tcp":
        flags = rng.choice(["S", "SA", "A", "PA", "F", "R"])
        return TCP(sport=sport, dport=dport, flags=flags) / payload, 6
    if kind == "udp":
        return UDP(sport=sport, dport=dport) / payload, 17
    if kind == "sctp":
        return SCTP(sport=sport, dport=dport) / payload, 132
    if kind == "dccp":
        return Raw(sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + bytes(12)), 33
    if kind == "gre":
        return Raw(bytes(8)), 47
    return ICMP(), 1


def network(rng: random.Random) -> list[Packet]:
    upper, proto = transport(rng)
    if rng.random() < 0.5:
        options = [IPOption_NOP()] * rng.randrange(0, 3)
        if rng.random() < 0.3:
            options.append(IPOption_RR(routers=["192.0.2.1"]))
        ip = IP(src=f"192.0.2.{rng.randrange(1, 250)}", dst=f"198.51.100.{rng.randrange(1, 250)}",
                proto=proto, options=options) / upper
        if rng.random() < 0.1:
            return list(fragment(ip / Raw(bytes(64)), fragsize=24))
        return [ip]
    ip6: Packet = IPv6(src=f"2001:db8::{rng.randrange(1, 999):x}",
                       dst=f"2001:db8:1::{rng.randrange(1, 999):x}")
    if proto in (33, 47):
        return [IPv6(src=ip6.src, dst=ip6.dst, nh=proto) / upper]
    for _ in range(rng.randrange(0, 3)):
        ip6 = ip6 / rng.choice([IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(),
                                IPv6ExtHdrRouting(addresses=[])])
    return [ip6 / (ICMPv6EchoRequest() if proto == 1 else upper)]


def frames(rng: random.Random, linktype: int, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        for packet in network(rng):
            frame = g.frame(linktype, packet)
            if linktype == g.LINKTYPE_ETHERNET and rng.random() < 0.3:
                link: Packet = Ether(src=g.MAC_CLIENT, dst=g.MAC_SERVER)
                for tag in rng.choice([[Dot1Q(vlan=5)], [Dot1AD(vlan=5), Dot1Q(vlan=6)]]):
                    link = link / tag
                frame = bytes(link / packet)
            if rng.random() < 0.05:
                frame = frame[: rng.randrange(len(frame) // 2, len(frame))]
            out.append(frame)
    return out


def columns(batches: Any) -> dict[str, np.ndarray[Any, Any]]:
    held = list(batches)
    return {k: np.concatenate([getattr(b, k) for b in held]) for k in FIELDS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seed", nargs="?", type=int, default=1)
    parser.add_argument("--keep", help="write the pcaps into this folder")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    folder = Path(args.keep or tempfile.mkdtemp(prefix="portwatch-diff-"))
    folder.mkdir(parents=True, exist_ok=True)
    total = differ = 0
    for linktype in LINKTYPES:
        sample = frames(rng, linktype, 300)
        path = folder / f"linktype-{linktype}.pcap"
        path.write_bytes(g.write_pcap(
            [(g.BASE_NS + i * 1000, f) for i, f in enumerate(sample)], linktype))
        native = columns(decode_batch(b) for b in open_capture(path.read_bytes(), str(path)))
        tshark = columns(d for d, _ in decoder_for("pyshark")(str(path), 100_000))
        bad = [i for i in range(len(sample)) if any(native[k][i] != tshark[k][i] for k in FIELDS)]
        print(f"link type {linktype}: {len(sample)} frames, {len(bad)} differ")
        for i in bad:
            print(f"  frame {i + 1}: native", {k: int(native[k][i]) for k in FIELDS},
                  "tshark", {k: int(tshark[k][i]) for k in FIELDS})
        total += len(sample)
        differ += len(bad)
    print(f"{differ} of {total} frames differ (pcaps in {folder})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
