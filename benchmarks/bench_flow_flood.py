"""Memory of the daemon's core under a flood of new flows (a port or address scan).

Feeds ``TrafficCounters`` 1,000,000 UDP packets, each from a new random source
address (so each is a new flow), in batches of 50,000, with ``max_flows =
100000``, and prints active flows, the flow table's capacity in rows, peak RSS
(``ru_maxrss``, which includes the loaded registry table and numpy) and the
rate. Nothing is sent anywhere.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_flow_flood.py [--registry CSV]
"""

from __future__ import annotations

import argparse
import platform
import resource
import struct
import time
from pathlib import Path

import numpy as np

from portwatch._paths import cache_dir
from portwatch.analysis.flows import FlowLimits
from portwatch.capture.batch import PacketBatch
from portwatch.daemon.counters import RegistryFacts, TrafficCounters
from portwatch.porttable.cache import load_table

DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared/registry/service-names-port-numbers.csv"
PER_BATCH = 50_000


def template() -> bytes:
    """Ethernet/IPv4/UDP to 53/udp; the source address (bytes 26-29) is replaced per packet."""
    udp = struct.pack("!HHHH", 40000, 53, 8 + 4, 0) + b"scan"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     bytes([10, 0, 0, 2]), bytes([10, 1, 0, 1]))
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip + udp


def flood_batch(rng: np.random.Generator, frame: bytes, k: int) -> PacketBatch:
    n = len(frame)
    data = np.tile(np.frombuffer(frame, dtype=np.uint8), PER_BATCH).reshape(PER_BATCH, n)
    sources = rng.integers(0, 2**32, PER_BATCH, dtype=np.uint64).astype(">u4")
    data[:, 26:30] = sources.view(np.uint8).reshape(-1, 4)
    return PacketBatch(
        data=data.reshape(-1), offsets=np.arange(PER_BATCH, dtype=np.int64) * n,
        caplens=np.full(PER_BATCH, n, np.uint32), wirelens=np.full(PER_BATCH, n, np.uint32),
        timestamps_ns=np.full(PER_BATCH, k, np.int64), linktypes=np.full(PER_BATCH, 1, np.uint16),
        interfaces=np.zeros(PER_BATCH, np.uint32), file_offsets=np.zeros(PER_BATCH, np.int64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default=str(DEFAULT_CSV))
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--max-flows", type=int, default=100_000)
    args = parser.parse_args()
    loaded = load_table([args.registry], cache=cache_dir())
    core = TrafficCounters(loaded.table, FlowLimits(max_flows=args.max_flows),
                       RegistryFacts.of(loaded.table, None))
    rng = np.random.default_rng(1)
    frame = template()
    print(f"Machine: {platform.node()} {platform.machine()}, Python {platform.python_version()}")
    print(f"{args.packets:,} packets, each a new UDP flow, batches of {PER_BATCH:,}, "
          f"max_flows = {args.max_flows:,}\n")
    print("| new flows fed | active | table capacity (rows) | max RSS |")
    print("|---:|---:|---:|---:|")
    fed, busy = 0, 0.0
    report_at = {100_000, 250_000, 500_000, 1_000_000, args.packets}
    for k in range(args.packets // PER_BATCH):
        batch = flood_batch(rng, frame, k)
        started = time.perf_counter()
        core.feed(batch)
        busy += time.perf_counter() - started
        fed += PER_BATCH
        if fed in report_at:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"| {fed:,} | {core.snapshot().active_flows:,} | "
                  f"{core.analyzer.flows.capacity:,} | {rss:.0f} MiB |")
    print(f"\nfeed rate: {fed / busy:,.0f} new-flow packets/s")


if __name__ == "__main__":
    main()
