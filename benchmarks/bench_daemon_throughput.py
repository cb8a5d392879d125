"""Highest packet rate each daemon backend sustains with no loss.

Needs root, ``ip``, ``tcpreplay`` and (for that backend) ``dumpcap``. Creates
the namespace ``pwbench`` joined to the root namespace by a veth pair
(10.99.2.1 / 10.99.2.2), writes a pcap of 64-byte UDP packets over 4096 flows
(explicit MAC addresses), and for each rate replays it with
``tcpreplay --pps RATE --duration S`` from inside the namespace onto the veth
while ``portwatch daemon`` captures on the root end. A rate passes when the
daemon received every packet tcpreplay sent and reports no drops; the
highest passing rate is printed per backend.

    sudo PYTHONPATH=src .venv/bin/python benchmarks/bench_daemon_throughput.py \
        --backend dumpcap --rates 100000,200000,300000,500000 --duration 30
"""

from __future__ import annotations

import argparse
import platform
import re
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from integration.daemon_proc import DaemonProcess, value

NS, HOST_IF, NS_IF = "pwbench", "pwb0", "pwb1"
SRC_MAC, DST_MAC = b"\x02\x00\x00\x00\x02\x02", b"\x02\x00\x00\x00\x02\x01"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=60)


def setup() -> None:
    teardown()
    sh("ip", "netns", "add", NS)
    sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
    sh("ip", "link", "set", NS_IF, "netns", NS)
    sh("ip", "addr", "add", "10.99.2.1/24", "dev", HOST_IF)
    sh("ip", "link", "set", HOST_IF, "up")
    sh("ip", "netns", "exec", NS, "ip", "link", "set", NS_IF, "up")


def teardown() -> None:
    subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)


def write_pcap(path: Path, flows: int = 4096) -> None:
    """64-byte Ethernet/IPv4/UDP frames, one per flow (client ports vary, to 53/udp)."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i in range(flows):
        udp = struct.pack("!HHHH", 50000 + i % 15000, 53, 8 + 22, 0) + bytes(22)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0,
                         bytes([10, 99, 2, 2]), bytes([10, 99, 2, 1 + 0 * i]))
        frame = DST_MAC + SRC_MAC + b"\x08\x00" + ip + udp
        out.append(struct.pack("<IIII", 0, i, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def sent_by(output: str) -> int:
    m = re.search(r"Actual: (\d+) packets", output)
    return int(m[1]) if m else 0


def run_backend(backend: str, rates: list[int], *, duration: int, pcap: Path, registry: str,
                tmp: Path, buffer_mib: int) -> list[tuple[int, int, int, int, float]]:
    """One daemon per rate, stopped afterwards so that dumpcap's final drop count is in."""
    results = []
    cfg = tmp / "pw.toml"
    cfg.write_text(f'[registry]\nsources = ["{registry}"]\n[capture]\ninterfaces = ["{HOST_IF}"]\n'
                   f'snaplen = 128\nbuffer_mib = {buffer_mib}\n'
                   '[web]\nlisten_address = "127.0.0.1:0"\n'
                   "[flows]\nmax_flows = 100000\n")
    for rate in rates:
        with DaemonProcess(["daemon", "--config.file", str(cfg), "--backend", backend],
                           env={"PORTWATCH_CACHE_DIR": str(tmp / "cache")}) as d:
            d.wait_for_log("capture started", 30)
            time.sleep(2)
            before = d.samples()
            rx0 = value(before, "portwatch_capture_packets_received_total", interface=HOST_IF)
            started = time.monotonic()
            rep = subprocess.run(["ip", "netns", "exec", NS, "tcpreplay", "-i", NS_IF,
                                  "--pps", str(rate), "--loop", "0", "--duration", str(duration),
                                  str(pcap)], capture_output=True, text=True,
                                 timeout=duration + 60, check=False)
            elapsed = time.monotonic() - started
            sent = sent_by(rep.stdout)
            after = d.wait_until(lambda s, sent=sent, rx0=rx0: value(
                s, "portwatch_capture_packets_received_total", interface=HOST_IF) - rx0 >= sent,
                10)
            rx = int(value(after, "portwatch_capture_packets_received_total",
                           interface=HOST_IF) - rx0)
            live_dropped = int(value(after, "portwatch_capture_packets_dropped_total"))
            d.stop(timeout=10)
            m = re.search(r"stopped: \d+ packets received, (\d+) dropped", "\n".join(d.lines))
            final_dropped = int(m[1]) if m else live_dropped
        dropped = max(live_dropped, final_dropped)
        results.append((rate, sent, rx, dropped, sent / elapsed if elapsed else 0.0))
        print(f"{backend}: target {rate} pps: sent {sent} ({sent / duration:.0f} pps), "
              f"received {rx}, dropped {dropped} (live metric {live_dropped}, "
              f"at stop {final_dropped})", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", choices=["dumpcap", "scapy", "pyshark"])
    parser.add_argument("--rates", default="50000,100000,200000,300000,500000")
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--buffer-mib", type=int, default=32)
    parser.add_argument("--registry", default=str(
        Path(__file__).resolve().parents[2] / "shared/registry/service-names-port-numbers.csv"))
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    print(f"machine: {platform.node()} {platform.machine()} {platform.platform()}, "
          f"python {platform.python_version()}")
    setup()
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            pcap = Path(tmpdir) / "flows.pcap"
            write_pcap(pcap)
            for backend in args.backend or ["dumpcap", "scapy"]:
                results = run_backend(backend, rates, duration=args.duration, pcap=pcap,
                                      registry=args.registry, tmp=Path(tmpdir),
                                      buffer_mib=args.buffer_mib)
                clean = [sent / args.duration for _, sent, rx, dropped, _ in results
                         if sent and rx >= sent and dropped == 0]
                best = f"{max(clean):.0f} pps" if clean else "none of the rates tried"
                print(f"{backend}: highest loss-free rate {best} over {args.duration} s")
    finally:
        teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
