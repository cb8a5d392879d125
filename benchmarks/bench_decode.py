"""Throughput of ``decode_batch`` on a mixed, in-memory packet population.

Builds 1,000,000 packets (about 500 bytes on average) from a few hundred
scapy-made templates: Ethernet with and without VLAN tags, IPv4 with and
without options, IPv6 with extension-header chains, TCP/UDP/SCTP/ICMP, GRE,
ARP, and first and later fragments. Nothing is sent anywhere.

Both decoders run on the same batches: the numpy reference and, when it is
built, the compiled loop (``decode._decode``); the ratio is compiled over
numpy. Their answers are checked equal before anything is timed.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_decode.py [--packets N]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, GRE, Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP
from scapy.packet import Packet, Raw

from portwatch.capture.batch import PacketBatch
from portwatch.decode.native import COMPILED, decode_batch

MACS: dict[str, Any] = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
BATCH = 65_536


def _templates(rng: np.random.Generator) -> list[bytes]:
    """Several hundred distinct packets; payload sizes centre on ~500 bytes."""
    out: list[bytes] = []
    for i in range(400):
        sport, dport = (int(x) for x in rng.integers(1, 65536, 2))
        payload = Raw(bytes(int(rng.integers(0, 900))))
        eth: Packet = Ether(**MACS)
        if i % 5 == 0:
            eth = eth / Dot1Q(vlan=i % 4000)
        if i % 17 == 0:
            eth = Ether(**MACS) / Dot1AD(vlan=10) / Dot1Q(vlan=20)
        kind = i % 10
        v4 = IP(src=f"10.0.{i % 256}.1", dst="192.0.2.7", id=i)
        v6 = IPv6(src=f"2001:db8::{i:x}", dst="2001:db8:ffff::1")
        layers: Packet
        if kind in (0, 1, 2):
            layers = v4 / TCP(sport=sport, dport=dport, flags="PA") / payload
        elif kind == 3:
            layers = v4 / UDP(sport=sport, dport=dport) / payload
        elif kind == 4:
            layers = v6 / TCP(sport=sport, dport=dport) / payload
        elif kind == 5:
            layers = (
                v6 / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / UDP(sport=sport, dport=dport)
            ) / payload
        elif kind == 6:
            opts = IP(src="10.1.1.1", dst="10.2.2.2", options=b"\x01" * 8)
            layers = opts / SCTP(sport=sport, dport=dport) / payload
        elif kind == 7:
            layers = IP(dst="10.0.0.9", flags="MF", frag=i % 100 + 1, proto=17) / payload
        elif kind == 8:
            layers = (
                v6 / IPv6ExtHdrRouting() / IPv6ExtHdrFragment(offset=0, m=1, id=i) / UDP()
            ) / payload
        else:
            choices = (
                v4 / ICMP(),
                v6 / ICMPv6EchoRequest(),
                v4 / GRE() / IP() / UDP(),
            )
            layers = choices[i % 3] / payload
        out.append(bytes(eth / layers))
    out.append(bytes(Ether(**MACS) / ARP()))
    return out


def build(count: int, seed: int = 1) -> PacketBatch:
    rng = np.random.default_rng(seed)
    templates = _templates(rng)
    picks = rng.integers(0, len(templates), count)
    return PacketBatch.from_packets([templates[i] for i in picks], 1)


def _best(batch: PacketBatch, decoder: str, size: int, repeat: int) -> tuple[float, float]:
    """Best wall and best CPU time of ``repeat`` passes over ``batch``, ``size`` packets a batch.

    CPU time is this process's: on a shared machine it moves less than wall time.
    """
    wall = cpu = float("inf")
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        for lo in range(0, len(batch), size):
            decode_batch(batch.slice(lo, lo + size), decoder)
        wall = min(wall, time.perf_counter() - t)
        cpu = min(cpu, time.process_time() - c)
    return wall, cpu


def _same(batch: PacketBatch) -> None:
    """The decoders agree on the population (the tests prove it in general)."""
    ours, ref = decode_batch(batch, "compiled"), decode_batch(batch, "numpy")
    for name in ("status", "ip_proto", "src_lo", "dst_lo", "src_port", "dst_port", "encap"):
        if not np.array_equal(getattr(ours, name), getattr(ref, name)):
            raise SystemExit(f"the decoders disagree on {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    t0 = time.perf_counter()
    batch = build(args.packets)
    mean = batch.caplens.mean()
    print(f"built {len(batch):,} packets, mean {mean:.0f} bytes, {time.perf_counter() - t0:.1f}s")
    decoders = ("numpy", "compiled") if COMPILED else ("numpy",)
    if not COMPILED:
        print("the compiled decoder is not built: numpy only")
    else:
        _same(batch)

    for label, size in ((f"{BATCH:,}-packet batches", BATCH),
                        (f"one {len(batch):,}-packet batch", len(batch))):
        times = {d: _best(batch, d, size, args.repeat) for d in decoders}
        for k, clock in enumerate(("wall", "CPU")):
            rates = {d: len(batch) / t[k] for d, t in times.items()}
            line = ", ".join(f"{d} {r:,.0f} packets/s" for d, r in rates.items())
            if COMPILED:
                line += f", compiled/numpy {rates['compiled'] / rates['numpy']:.1f}x"
            print(f"{label}, {clock}: {line}")
    counts = np.bincount(decode_batch(batch).status, minlength=8)
    print("statuses:", {i: int(c) for i, c in enumerate(counts) if c})


if __name__ == "__main__":
    main()
