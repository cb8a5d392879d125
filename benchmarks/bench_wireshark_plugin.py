"""Size of the generated Wireshark plugin and what it adds to tshark's start-up.

Generates ``portwatch.lua`` from the full official registry (XML + CSV),
writes a tiny capture (one TCP handshake, built with scapy, never sent), and
times ``tshark -X lua_script:portwatch.lua -r tiny.pcap`` against plain
``tshark -r tiny.pcap``: several runs each, interleaved, median reported.
Personal Wireshark plugins are kept out by pointing HOME at a scratch folder.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_wireshark_plugin.py \\
        [--registry FILE ...] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from portwatch.export.wireshark import PLUGIN_FILENAME, encode_numbers, plugin_bytes, plugin_data
from portwatch.porttable.cache import load_table

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "registry"
DEFAULT_REGISTRY = [SHARED / "service-names-port-numbers.xml",
                    SHARED / "service-names-port-numbers.csv"]


def _tiny_pcap(path: Path) -> None:
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    packets = [
        bytes(eth / IP(src="192.0.2.1", dst="192.0.2.2") / TCP(sport=40000, dport=80, flags="S")),
        bytes(eth / IP(src="192.0.2.2", dst="192.0.2.1") / TCP(sport=80, dport=40000,
                                                                flags="SA")),
        bytes(eth / IP(src="192.0.2.1", dst="192.0.2.2") / TCP(sport=40000, dport=80, flags="A")),
    ]
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, pkt in enumerate(packets):
        out.append(struct.pack("<IIII", 1_700_000_000 + i, 0, len(pkt), len(pkt)) + pkt)
    path.write_bytes(b"".join(out))


def _run(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.decode(errors='replace')}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--registry", action="append", type=Path, metavar="FILE")
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    tshark = shutil.which("tshark")
    if tshark is None:
        print("tshark is not installed", file=sys.stderr)
        return 2
    registry = args.registry or DEFAULT_REGISTRY
    table = load_table([str(p) for p in registry], cache=None).table
    start = time.perf_counter()
    data = plugin_bytes(table)
    generate = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        plugin, capture = work / PLUGIN_FILENAME, work / "tiny.pcap"
        plugin.write_bytes(data)
        _tiny_pcap(capture)
        env = {**os.environ, "HOME": str(work), "XDG_CONFIG_HOME": str(work / ".config")}
        plain = [tshark, "-n", "-r", str(capture)]
        with_plugin = [tshark, "-n", "-X", f"lua_script:{plugin}", "-r", str(capture)]
        _run(plain, env)  # warm the page cache
        _run(with_plugin, env)
        plain_times, plugin_times = [], []
        for _ in range(args.runs):
            plain_times.append(_run(plain, env))
            plugin_times.append(_run(with_plugin, env))
    base, loaded = statistics.median(plain_times), statistics.median(plugin_times)
    last = table.last_updated
    print(f"Registry: {', '.join(p.name for p in registry)} "
          f"(last updated {last.isoformat() if last else 'unknown'}); "
          f"median of {args.runs} runs each\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| plugin size | {len(data):,} bytes ({len(data) / 1024:.0f} KiB) |")
    print(f"| generation (`plugin_bytes`) | {generate * 1000:.0f} ms |")
    print(f"| `tshark -r tiny.pcap` | {base * 1000:.0f} ms |")
    print(f"| `tshark -X lua_script:portwatch.lua -r tiny.pcap` | {loaded * 1000:.0f} ms |")
    print(f"| added by the plugin | {(loaded - base) * 1000:.0f} ms |")
    # What the size is made of (text blocks as UTF-8, numbers as encoded).
    pieces = plugin_data(table)
    text = sum(len(t.encode()) + 1 for t in [*pieces.names, *pieces.descriptions])
    runs = sum(len(r) for r in pieces.runs.values())
    numbers = len(encode_numbers(v for a in pieces.answers for v in a)) + sum(
        len(encode_numbers(v for run in r for v in run)) for r in pieces.runs.values())
    print(f"| of which names and descriptions | {text:,} bytes |")
    print(f"| of which answers and runs ({len(pieces.answers):,} answers, {runs:,} runs) | "
          f"{numbers:,} bytes |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
