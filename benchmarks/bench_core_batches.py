"""The daemon's counting core against batch size, on small packets over many flows.

A live capture hands the core whatever one pipe read holds (about 700
64-byte packets from dumpcap), so the per-batch cost matters. This feeds
``TrafficCounters`` the throughput benchmark's traffic (64-byte UDP frames over
4,096 flows, 409,600 packets) in batches of several sizes, in-process.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_core_batches.py
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_daemon_throughput import write_pcap

from portwatch._paths import cache_dir
from portwatch.analysis.flows import FlowLimits
from portwatch.capture.files.reader import open_capture
from portwatch.daemon.counters import RegistryFacts, TrafficCounters
from portwatch.porttable.cache import load_table

DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared/registry/service-names-port-numbers.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default=str(DEFAULT_CSV))
    parser.add_argument("--copies", type=int, default=100, help="repeats of the 4,096 flows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pcap = Path(tmp) / "flows.pcap"
        write_pcap(pcap)
        one = pcap.read_bytes()
    data = one[:24] + one[24:] * args.copies
    loaded = load_table([args.registry], cache=cache_dir())
    print(f"Machine: {platform.node()} {platform.machine()}, Python {platform.python_version()}")
    print(f"{4096 * args.copies:,} packets of 64 bytes over 4,096 UDP flows\n")
    print("| batch size | packets/s | per batch |")
    print("|---:|---:|---:|")
    for size in (512, 700, 2048, 8192, 65536):
        core = TrafficCounters(loaded.table, FlowLimits(), RegistryFacts.of(loaded.table, None))
        batches = list(open_capture(data, "flows.pcap", batch_size=size))
        started = time.perf_counter()
        for batch in batches:
            core.feed(batch, ["pwb0"])
        elapsed = time.perf_counter() - started
        count = sum(len(b) for b in batches)
        print(f"| {size:,} | {count / elapsed:,.0f} | {elapsed / len(batches) * 1e3:.2f} ms |")


if __name__ == "__main__":
    main()
