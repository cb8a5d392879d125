"""Highest packet rate each daemon backend sustains with no loss, and what it costs.

Needs root, ``ip``, ``nsenter``, a generator (``trafgen`` from netsniff-ng,
else ``tcpreplay``; ``--generator`` chooses) and (for that backend)
``dumpcap``. Creates the namespace ``pwbench`` holding both ends of a veth
pair (nothing crosses into the host's namespaces; IPv6 off so the kernel sends
nothing itself), builds 4096 64-byte UDP frames, one per flow (explicit MAC
addresses), and for each rate sends them round robin on one end while
``portwatch daemon``, started inside the namespace with ``nsenter``, captures
on the other:

* trafgen: a config of the same frames (one ``{ ... }`` per frame), sent
  with ``-b RATEpps -n RATE*S`` on one CPU; ``max`` is no rate on every CPU
  (``-P``, ``--trafgen-cpus``) for S seconds (``timeout -s INT``), the most
  the generator reaches;
* tcpreplay (fallback): a pcap of the same frames, ``--pps RATE --duration
  S``; ``max`` is ``--topspeed``.

A rate passes when the daemon received every frame the generator sent and
reports no drops. Each row also has the frames the receiving veth end
delivered to its packet taps and the kernel's drops on the pair (its
``rx_dropped`` + ``tx_dropped``): a frame the kernel dropped before the taps
is lost to every backend alike.

Per rate it also records the daemon's own CPU (utime + stime of its process
over the replay, as % of one core) and, for the ebpf backend, the program's
cost per packet from ``kernel.bpf_stats_enabled=1``: ``run_time_ns /
run_cnt`` read from the daemon's BPF program descriptor
(``/proc/PID/fdinfo``). ``--flood N`` then sends N packets of N distinct
flows through the ebpf backend with ``[flows] max_flows = 100000`` and
checks that the kernel's flow map stays at its size with evictions counted.

    sudo PYTHONPATH=src .venv/bin/python benchmarks/bench_daemon_throughput.py \
        --backend ebpf --backend dumpcap --backend scapy \
        --rates 100000,200000,300000,500000,max --duration 10 --flood 1000000

The flood always uses tcpreplay (a trafgen config of a million literal frames
would be hundreds of MB).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.daemon_proc import DaemonProcess, value
from helpers.netns import Netns

NS, TX, RX = "pwbench", "pwb0", "pwb1"
SRC_MAC, DST_MAC = b"\x02\x00\x00\x00\x02\x02", b"\x02\x00\x00\x00\x02\x01"
_TICK = os.sysconf("SC_CLK_TCK")


def frames(flows: int = 4096) -> npt.NDArray[np.uint8]:
    """``(flows, 64)``: Ethernet/IPv4/UDP frames, one per flow (source address and port
    vary), to 53/udp. Built with numpy: a million take a moment, not a minute."""
    frame = np.frombuffer(
        DST_MAC + SRC_MAC + b"\x08\x00"
        + bytes.fromhex("4500001e00000000401100000a6302020a630201")  # IPv4, 30 bytes
        + bytes.fromhex("c350003500080000") + bytes(22), dtype=np.uint8)
    out = np.tile(frame, (flows, 1))
    i = np.arange(flows, dtype=np.uint32)
    out[:, 28:30] = (i // 15000).astype(">u2").view(np.uint8).reshape(flows, 2)  # 10.99.x.y
    out[:, 34:36] = (50000 + i % 15000).astype(">u2").view(np.uint8).reshape(flows, 2)
    return out


def write_pcap(path: Path, flows: int = 4096) -> None:
    """The frames of ``frames(flows)`` as a pcap, for tcpreplay."""
    data = frames(flows)
    rec = np.zeros((flows, 16 + data.shape[1]), dtype=np.uint8)
    i = np.arange(flows, dtype=np.uint32)
    header = np.zeros((flows, 4), dtype="<u4")
    header[:, 1] = i % 1_000_000
    header[:, 2] = header[:, 3] = data.shape[1]
    rec[:, :16] = header.view(np.uint8).reshape(flows, 16)
    rec[:, 16:] = data
    head = np.array([0xA1B2C3D4, 0x00040002, 0, 0, 65535, 1], dtype="<u4").tobytes()
    path.write_bytes(head + rec.tobytes())


def write_trafgen(path: Path, flows: int = 4096) -> None:
    """The same frames as a trafgen config: one ``{ 0x.., ... }`` packet per line."""
    text = np.char.mod("0x%02x", frames(flows))
    path.write_text("".join("{ " + ", ".join(row) + " }\n" for row in text.tolist()))


@dataclass(slots=True)
class Generator:
    """Sends the frames on ``TX`` inside the namespace at a rate (or ``max``) for S seconds."""

    name: str  # "trafgen" or "tcpreplay"
    source: Path  # its config or pcap
    cpus: int = 0  # trafgen -P at max; 0: every CPU

    def argv(self, rate: str, duration: int) -> list[str]:
        if self.name == "tcpreplay":
            pace = ["--topspeed"] if rate == "max" else ["--pps", rate]
            return ["tcpreplay", "-i", TX, "-K", *pace, "--loop", "0",
                    "--duration", str(duration), str(self.source)]
        base = ["trafgen", "-o", TX, "-i", str(self.source), "--no-sock-mem"]
        if rate == "max":  # every CPU, unpaced, stopped (and its count printed) by SIGINT
            cpus = ["-P", str(self.cpus)] if self.cpus else []
            return ["timeout", "-s", "INT", str(duration), *base, *cpus]
        return [*base, "-b", f"{rate}pps", "-n", str(int(rate) * duration)]

    def sent(self, output: str) -> int:
        if self.name == "tcpreplay":
            return sent_by(output)
        m = re.search(r"(\d+) packets outgoing", output)
        return int(m[1]) if m else 0


def link_stats(ns: Netns) -> dict[str, int]:
    """``delivered``: frames the receiving end handed its taps; ``dropped``: the pair's drops."""
    out = json.loads(ns.run(["ip", "-s", "-j", "link", "show"]).stdout)
    by_name = {link["ifname"]: link["stats64"] for link in out}
    rx, tx = by_name[RX], by_name[TX]
    return {"delivered": rx["rx"]["packets"],
            "dropped": rx["rx"]["dropped"] + tx["tx"]["dropped"]}


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


def run_backend(ns: Netns, backend: str, rates: list[str], *, duration: int, gen: Generator,
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
            link0 = link_stats(ns)
            cpu0, (bpf_ns0, bpf_n0) = cpu_seconds(d.proc.pid), bpf_prog_stats(d.proc.pid)
            started = time.monotonic()
            rep = subprocess.run([*ns.prefix(), *gen.argv(rate, duration)],
                                 capture_output=True, text=True, timeout=duration + 120,
                                 check=False)
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(d.proc.pid) - cpu0
            bpf_ns, bpf_n = bpf_prog_stats(d.proc.pid)
            link1 = link_stats(ns)
            sent = gen.sent(rep.stdout + rep.stderr)
            if not sent:
                raise SystemExit(f"{gen.name} sent nothing: {rep.stdout}{rep.stderr}")
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
        delivered = link1["delivered"] - link0["delivered"]
        link_dropped = link1["dropped"] - link0["dropped"]
        # tcpreplay --duration stops at S; trafgen -n runs until its count is out
        seconds = elapsed if gen.name == "trafgen" else float(duration)
        row = {"sent": sent, "rx": rx, "dropped": dropped, "pps": sent / seconds,
               "cpu_pct": 100 * cpu / elapsed, "bpf_ns": per_packet,
               "delivered": delivered, "link_dropped": link_dropped}
        results.append(row)
        print(f"{backend}: target {rate}: {gen.name} sent {sent} in {seconds:.1f} s "
              f"({sent / seconds:,.0f} pps), veth delivered {delivered}, kernel dropped "
              f"{link_dropped}; daemon received {rx}, dropped {dropped} (live {live_dropped}, "
              f"at stop {final_dropped}), daemon CPU {row['cpu_pct']:.1f} % of a core, load "
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
    parser.add_argument("--rates", default="100000,200000,300000,500000,max",
                        help="packets/s, comma-separated; 'max' is the generator's most")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--generator", choices=["trafgen", "tcpreplay"],
                        default="trafgen" if shutil.which("trafgen") else "tcpreplay")
    parser.add_argument("--trafgen-cpus", type=int, default=0,
                        help="trafgen -P at max (0: every CPU)")
    parser.add_argument("--buffer-mib", type=int, default=32)
    parser.add_argument("--max-flows", type=int, default=100000,
                        help="[flows] max_flows: the size of the kernel's flow map")
    parser.add_argument("--flood", type=int, default=0, help="new flows for the LRU check")
    shared = Path(os.environ.get("PORTWATCH_SHARED",
                                 Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--registry", default=str(
        shared / "registry/service-names-port-numbers.csv"))
    args = parser.parse_args()
    rates = args.rates.split(",")
    print(f"machine: {platform.node()} {platform.machine()} {platform.platform()}, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}, generator "
          f"{args.generator}, load {os.getloadavg()[0]:.1f}")
    ns = Netns(NS, TX, RX).create()
    with bpf_stats(), tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        try:
            source = tmp / ("flows.cfg" if args.generator == "trafgen" else "flows.pcap")
            (write_trafgen if args.generator == "trafgen" else write_pcap)(source)
            gen = Generator(args.generator, source, args.trafgen_cpus)
            cfg = _config(tmp, args.registry, args.buffer_mib, args.max_flows)
            for backend in args.backend or ["ebpf", "dumpcap", "scapy"]:
                results = run_backend(ns, backend, rates, duration=args.duration, gen=gen,
                                      cfg=cfg, tmp=tmp)
                clean = [r["pps"] for r in results
                         if r["sent"] and r["rx"] >= r["sent"] and r["dropped"] == 0]
                best = f"{max(clean):,.0f} pps" if clean else "none of the rates tried"
                print(f"{backend}: highest loss-free rate {best} over {args.duration} s")
            if args.flood and not shutil.which("tcpreplay"):
                print("flood: skipped, it needs tcpreplay")
            elif args.flood:
                flood(ns, args.flood, registry=args.registry, tmp=tmp)
        finally:
            ns.delete()
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
