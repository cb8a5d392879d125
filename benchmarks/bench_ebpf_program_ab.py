"""Cost per packet of several builds of the eBPF program, on the very same packets.

Needs root, ``ip``, ``nsenter`` and ``trafgen``. Loads each object given
(``KernelCounter``, registry filled, ``[flows] max_flows`` from
``--max-flows``) and attaches them all to one end of a veth pair in the
namespace ``pwab``, so that every frame trafgen sends on the other end runs
through every build, under the same load. Per rate it prints each build's
``run_time_ns / run_cnt`` (``kernel.bpf_stats_enabled=1``) and what it
counted. Rounds alternate the attach order (the newest socket's filter runs
first), since the first program warms the packet's cache lines for the rest.

To see where the time goes, build copies of ``portwatch.bpf.c`` with an early
``if (skb->len < 100000) return 0;`` inserted at one point each (after the
parse, after the flow lookup, ...) with the Makefile's flags, and compare them
with the full program here:

    clang -target bpf -O2 -g -Wall -Werror -fno-asynchronous-unwind-tables -c cut.c -o cut.o
    sudo PYTHONPATH=src .venv/bin/python benchmarks/bench_ebpf_program_ab.py \\
        src/portwatch/daemon/bpf/portwatch.bpf.o cut.o --rates 50000,max --seconds 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_daemon_throughput import bpf_stats, write_trafgen

from helpers.netns import Netns
from portwatch.analysis.flows import FlowLimits
from portwatch.daemon import ebpf
from portwatch.porttable.cache import load_table

NS, TX, RX = "pwab", "pwab0", "pwab1"


def prog_stats(fd: int) -> tuple[int, int]:
    info = dict(line.split(":", 1) for line in
                Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines() if ":" in line)
    return int(info["run_time_ns"]), int(info["run_cnt"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("objects", nargs="+", type=Path)
    parser.add_argument("--rates", default="50000,max",
                        help="packets/s, comma-separated; 'max': trafgen on every CPU")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-flows", type=int, default=100000)
    shared = Path(os.environ.get("PORTWATCH_SHARED",
                                 Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--registry", default=str(
        shared / "registry/service-names-port-numbers.csv"))
    args = parser.parse_args()
    ns = Netns(NS, TX, RX).create()
    with bpf_stats(), tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        try:
            table = load_table([args.registry], cache=tmp / "cache").table
            cfg = tmp / "flows.cfg"
            write_trafgen(cfg)
            for rate in args.rates.split(","):
                for r in range(args.rounds):
                    order = args.objects if r % 2 == 0 else args.objects[::-1]
                    counters = []
                    try:
                        for obj in order:
                            kc = ebpf.KernelCounter(FlowLimits(max_flows=args.max_flows),
                                                    object_path=obj)
                            counters.append(kc)
                            kc.set_registry(table)
                            ns.call(lambda kc=kc: kc.attach([RX]))
                        before = [prog_stats(kc.program_fd) for kc in counters]
                        if rate == "max":
                            argv = ["timeout", "-s", "INT", str(args.seconds)]
                            pace: list[str] = []
                        else:
                            argv = []
                            pace = ["-b", f"{rate}pps", "-n", str(int(int(rate) * args.seconds))]
                        started = time.monotonic()
                        out = subprocess.run(  # timeout(1) exits 124 after its SIGINT
                            [*ns.prefix(), *argv, "trafgen", "-o", TX, "-i", str(cfg),
                             "--no-sock-mem", *pace], capture_output=True, text=True,
                            timeout=args.seconds + 60, check=False)
                        elapsed = time.monotonic() - started
                        text = out.stdout + out.stderr
                        if " packets outgoing" not in text:
                            raise SystemExit(f"trafgen: {text}")
                        sent = int(text.split(" packets outgoing")[0].split()[-1])
                        cells = []
                        for obj, kc, (t0, n0) in zip(order, counters, before, strict=True):
                            t1, n1 = prog_stats(kc.program_fd)
                            counted = kc.read().packets_total
                            cells.append(f"{obj.name} {(t1 - t0) / max(1, n1 - n0):.1f} ns "
                                         f"({counted} counted)")
                    finally:
                        for kc in counters:
                            kc.close()
                    print(f"rate {rate}: sent {sent} ({sent / elapsed:,.0f} pps), load "
                          f"{os.getloadavg()[0]:.1f}: " + "; ".join(cells), flush=True)
        finally:
            ns.delete()
    return 0


if __name__ == "__main__":
    sys.exit(main())
