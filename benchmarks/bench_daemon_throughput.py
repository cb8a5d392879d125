"""Highest packet rate each daemon backend sustains with no loss, and what it costs.

Needs root, ``ip``, ``nsenter``, ``tcpreplay`` and (for that backend)
``dumpcap``. Creates the namespace ``pwbench`` holding both ends of a veth
pair (nothing crosses into the host's namespaces; IPv6 off so the kernel sends
nothing itself), writes a pcap of 64-byte UDP frames over 4096 flows
(explicit MAC addresses), and for each rate replays it with
``tcpreplay --pps RATE --duration S`` (``max``: ``--topspeed``, the most the
generator reaches) on one end while ``portwatch daemon``, started inside the
namespace with ``nsenter``, captures on the other. A rate passes when the
daemon received every packet tcpreplay sent and reports no drops.

Per rate it also records the daemon's own CPU (utime + stime of its process
over the replay, as % of one core) and, for the ebpf backend, the program's
cost per packet from ``kernel.bpf_stats_enabled=1``: ``run_time_ns /
run_cnt`` read from the daemon's BPF program descriptor
(``/proc/PID/fdinfo``). ``--flood N`` then sends N packets of N distinct
flows through the ebpf backend with ``[flows] max_flows = 100000`` and
checks that the kernel's flow map stays at its size with evictions counted.

    sudo PYTHONPATH=src .venv/bin/python benchmarks/bench_daemon_throughput.py \
        --backend ebpf --backend dumpcap --backend scapy \
        --rates 100000,200000,300000,max --duration 20 --flood 1000000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.daemon_proc import DaemonProcess, value
from helpers.netns import Netns

NS, TX, RX = "pwbench", "pwb0", "pwb1"
SRC_MAC, DST_MAC = b"\x02\x00\x00\x00\x02\x02", b"\x02\x00\x00\x00\x02\x01"
_TICK = os.sysconf("SC_CLK_TCK")


def write_pcap(path: Path, flows: int = 4096) -> None:
    """64-byte Ethernet/IPv4/UDP frames, one per flow (source address and port vary), to 53/udp.

    Built with numpy: a million records take a moment, not a minute.
    """
    frame = np.frombuffer(
        DST_MAC + SRC_MAC + b"\x08\x00"
        + bytes.fromhex("4500001e00000000401100000a6302020a630201")  # IPv4, 30 bytes
        + bytes.fromhex("c350003500080000") + bytes(22), dtype=np.uint8)
    rec = np.zeros((flows, 16 + frame.size), dtype=np.uint8)
    i = np.arange(flows, dtype=np.uint32)
    header = np.zeros((flows, 4), dtype="<u4")
    header[:, 1] = i % 1_000_000
    header[:, 2] = header[:, 3] = frame.size
    rec[:, :16] = header.view(np.uint8).reshape(flows, 16)
    rec[:, 16:] = frame
    src_host = (i // 15000).astype(">u2").view(np.uint8).reshape(flows, 2)
    rec[:, 16 + 28:16 + 30] = src_host  # source address 10.99.x.y varies with the flow
    rec[:, 16 + 34:16 + 36] = (50000 + i % 15000).astype(">u2").view(np.uint8).reshape(flows, 2)
    head = np.array([0xA1B2C3D4, 0x00040002, 0, 0, 65535, 1], dtype="<u4").tobytes()
    path.write_bytes(head + rec.tobytes())


def sent_by(output: str) -> int:
    m = re.search(r"Actual: (\d+) packets", output)
    return int(m[1]) if m else 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def bpf_prog_stats(pid: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over the BPF programs the process holds."""
    time_ns = count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) != "anon_inode:bpf-prog":
                continue
            info = dict(line.split(":", 1) for line in
                        Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text().splitlines()
                        if ":" in line)
            time_ns += int(info.get("run_time_ns", "0"))
            count += int(info.get("run_cnt", "0"))
    return time_ns, count


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    path = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = path.read_text().strip()
    path.write_text("1")
    try:
        yield
    finally:
        path.write_text(old)


def _config(tmp: Path, registry: str, buffer_mib: int, max_flows: int = 100000) -> Path:
    cfg = tmp / "pw.toml"
    cfg.write_text(f'[registry]\nsources = ["{registry}"]\n[capture]\ninterfaces = ["{RX}"]\n'
                   f'snaplen = 128\nbuffer_mib = {buffer_mib}\n'
                   '[web]\nlisten_address = "127.0.0.1:0"\n'
                   f"[flows]\nmax_flows = {max_flows}\n")
    return cfg


def run_backend(ns: Netns, backend: str, rates: list[str], *, duration: int, pcap: Path,
                cfg: Path, tmp: Path) -> list[dict[str, float]]:
    """One daemon per rate, stopped afterwards so that dumpcap's final drop count is in."""
    results = []
    for rate in rates:
        with DaemonProcess(["daemon", "--config.file", str(cfg), "--backend", backend],
                           env={"PORTWATCH_CACHE_DIR": str(tmp / "cache")},
                           prefix=ns.prefix()) as d:
            d.wait_for_log("capture started", 30)
            time.sleep(2)
            before = ns.call(d.samples)
            rx0 = value(before, "portwatch_capture_packets_received_total", interface=RX)
            pace = ["--topspeed"] if rate == "max" else ["--pps", rate]
            cpu0, (bpf_ns0, bpf_n0) = cpu_seconds(d.proc.pid), bpf_prog_stats(d.proc.pid)
            started = time.monotonic()
            rep = subprocess.run([*ns.prefix(), "tcpreplay", "-i", TX, "-K", *pace,
                                  "--loop", "0", "--duration", str(duration), str(pcap)],
                                 capture_output=True, text=True, timeout=duration + 120,
                                 check=False)
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(d.proc.pid) - cpu0
            bpf_ns, bpf_n = bpf_prog_stats(d.proc.pid)
            sent = sent_by(rep.stdout)
            after = ns.call(lambda d=d, sent=sent, rx0=rx0: d.wait_until(
                lambda s: value(s, "portwatch_capture_packets_received_total",
                                interface=RX) - rx0 >= sent, 10))
            rx = int(value(after, "portwatch_capture_packets_received_total",
                           interface=RX) - rx0)
            live_dropped = int(value(after, "portwatch_capture_packets_dropped_total"))
            d.stop(timeout=10)
            m = re.search(r"stopped: \d+ packets received, (\d+) dropped", "\n".join(d.lines))
            final_dropped = int(m[1]) if m else live_dropped
        dropped = max(live_dropped, final_dropped)
        per_packet = (bpf_ns - bpf_ns0) / (bpf_n - bpf_n0) if bpf_n > bpf_n0 else float("nan")
        row = {"sent": sent, "rx": rx, "dropped": dropped, "pps": sent / duration,
               "cpu_pct": 100 * cpu / elapsed, "bpf_ns": per_packet}
        results.append(row)
        print(f"{backend}: target {rate}: sent {sent} ({sent / duration:,.0f} pps), "
              f"received {rx}, dropped {dropped} (live {live_dropped}, at stop "
              f"{final_dropped}), daemon CPU {row['cpu_pct']:.1f} % of a core, load "
              f"{os.getloadavg()[0]:.1f}"
              + (f", program {per_packet:.0f} ns/packet" if backend == "ebpf" else ""),
              flush=True)
    return results


def flood(ns: Netns, n: int, *, registry: str, tmp: Path) -> None:
    """n new flows through the ebpf backend with max_flows 100000."""
    pcap = tmp / "flood.pcap"
    write_pcap(pcap, n)
    cfg = _config(tmp, registry, 32, max_flows=100000)
    with DaemonProcess(["daemon", "--config.file", str(cfg), "--backend", "ebpf"],
                       env={"PORTWATCH_CACHE_DIR": str(tmp / "cache")},
                       prefix=ns.prefix()) as d:
        d.wait_for_log("capture started", 30)
        rep = ns.run(["tcpreplay", "-i", TX, "-K", "--pps", "200000", str(pcap)], timeout=600)
        sent = sent_by(rep.stdout)
        time.sleep(2.5)
        s = ns.call(d.samples)
        flows = value(s, "portwatch_flows_total")
        active = value(s, "portwatch_active_flows")
        evicted = value(s, "portwatch_flow_evictions_total")
        packets = value(s, "portwatch_packets_total")
        d.stop(timeout=10)
    print(f"flood: sent {sent} packets of {n} new flows; counted {packets:.0f} packets, "
          f"{flows:.0f} flows; flow map holds {active:.0f} (max_flows 100000), "
          f"evictions {evicted:.0f} (= flows - held: {flows - active:.0f})", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append",
                        choices=["ebpf", "dumpcap", "scapy", "pyshark"])
    parser.add_argument("--rates", default="50000,100000,200000,300000,max",
                        help="packets/s, comma-separated; 'max' is tcpreplay --topspeed")
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--buffer-mib", type=int, default=32)
    parser.add_argument("--flood", type=int, default=0, help="new flows for the LRU check")
    shared = Path(os.environ.get("PORTWATCH_SHARED",
                                 Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--registry", default=str(
        shared / "registry/service-names-port-numbers.csv"))
    args = parser.parse_args()
    rates = args.rates.split(",")
    print(f"machine: {platform.node()} {platform.machine()} {platform.platform()}, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}")
    ns = Netns(NS, TX, RX).create()
    with bpf_stats(), tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        try:
            pcap = tmp / "flows.pcap"
            write_pcap(pcap)
            cfg = _config(tmp, args.registry, args.buffer_mib)
            for backend in args.backend or ["ebpf", "dumpcap", "scapy"]:
                results = run_backend(ns, backend, rates, duration=args.duration, pcap=pcap,
                                      cfg=cfg, tmp=tmp)
                clean = [r["pps"] for r in results
                         if r["sent"] and r["rx"] >= r["sent"] and r["dropped"] == 0]
                best = f"{max(clean):,.0f} pps" if clean else "none of the rates tried"
                print(f"{backend}: highest loss-free rate {best} over {args.duration} s")
            if args.flood:
                flood(ns, args.flood, registry=args.registry, tmp=tmp)
        finally:
            ns.delete()
    return 0


if __name__ == "__main__":
    sys.exit(main())
