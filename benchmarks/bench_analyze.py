"""Offline analysis speed and memory, beside tshark, dpkt and scapy in the same run.

Generates a capture of N mixed packets (IPv4/IPv6, TCP/UDP, 514-byte Ethernet
frames, ~20,000 flows over a dozen services), then times, each in its own
process so that peak memory (ru_maxrss from wait4) is that tool's alone:

- ``portwatch analyze -f json`` (native engine, the whole CLI);
- ``tshark -q -z conv,tcp -z conv,udp``;
- ``tshark -T fields`` with addresses and ports;
- a dpkt loop counting (transport, port pairs);
- scapy's PcapReader over the first 50,000 packets (its rate is extrapolated).

    .venv/bin/python benchmarks/bench_analyze.py [--packets 1000000] [--keep FILE]

``--framing`` instead measures the capture framing alone, compiled (``_core``)
against numpy, on the same capture as classic pcap, as a pcapng copy, as a
gzip copy and (``--vary``) with frames of random length (where numpy's run
prediction cannot help), plus ``analyze -f json`` end to end with each::

    .venv/bin/python benchmarks/bench_analyze.py --framing [--vary] [--keep FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FRAME = 514
SERVICES = [(6, 443), (6, 80), (17, 53), (6, 22), (17, 8806), (6, 44515), (17, 123), (6, 8807)]


def _templates() -> list[tuple[bytes, int]]:
    """(frame, offset of the client port): forward and reverse frame of each service."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    out = []
    for proto, port in SERVICES:
        for v6 in (False, True):
            c, s = ("2001:db8::1", "2001:db8::2") if v6 else ("192.0.2.1", "198.51.100.2")
            l4_at = 14 + (40 if v6 else 20)
            for back in (False, True):
                src, dst = (s, c) if back else (c, s)
                net = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
                sport, dport = (port, 40000) if back else (40000, port)
                l4 = TCP(sport=sport, dport=dport, flags="A") if proto == 6 else \
                    UDP(sport=sport, dport=dport)
                raw = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / net / l4)
                out.append(((raw + b"\0" * FRAME)[:FRAME], l4_at + (2 if back else 0)))
    return out


def generate(path: Path, packets: int, flows: int = 20000, *, vary: bool = False) -> None:
    """The mixed capture; ``vary`` cuts every frame to a random length (60 to 514 bytes)."""
    rng = np.random.default_rng(42)
    templates = _templates()
    tmpl = np.frombuffer(b"".join(t[0] for t in templates), dtype=np.uint8).reshape(-1, FRAME)
    port_at = np.array([t[1] for t in templates])
    kinds = len(templates) // 2
    header = np.array([0xA1B2C3D4, 0x00040002, 0, 0, 65535, 1], dtype="<u4").view(np.uint8)
    with path.open("wb") as out:
        out.write(header[:24].tobytes())
        chunk = 100_000
        for start in range(0, packets, chunk):
            n = min(chunk, packets - start)
            flow = rng.integers(0, flows, n)
            which = (flow % kinds) * 2 + (rng.random(n) < 0.5)  # both directions of each flow
            rec = np.zeros((n, 16 + FRAME), dtype=np.uint8)
            hdr = rec[:, :16].view("<u4")
            idx = np.arange(start, start + n)
            hdr[:, 0] = 1_700_000_000 + idx // 100_000
            hdr[:, 1] = idx % 100_000 * 10
            hdr[:, 2] = FRAME
            hdr[:, 3] = FRAME
            rec[:, 16:] = tmpl[which]
            client = 32768 + flow // kinds
            rows, cols = np.arange(n), 16 + port_at[which]
            rec[rows, cols] = (client >> 8).astype(np.uint8)
            rec[rows, cols + 1] = (client & 0xFF).astype(np.uint8)
            if vary:
                cut = rng.integers(60, FRAME + 1, n).astype(np.uint32)
                hdr[:, 2] = cut
                out.write(rec[np.arange(16 + FRAME) < (16 + cut)[:, None]].tobytes())
            else:
                out.write(rec.tobytes())


def measure(argv: list[str], output: list[str] | None = None,
            env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process; its stdout into ``output``."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE if output is not None else
                            subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                            env=None if env is None else {**os.environ, **env})
    text = proc.stdout.read() if proc.stdout is not None else ""
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise RuntimeError(f"{argv[0]} failed with status {status}")
    if output is not None:
        output.append(text)
    return elapsed, usage.ru_maxrss / 1024


# The native engine's steady state: read, decode, flows; no interpreter start-up,
# table loading or report rendering (those are in the end-to-end row).
IN_PROCESS = """
import sys, time
from portwatch.analysis.analyzer import Analyzer
from portwatch.porttable.cache import load_table
from portwatch._paths import cache_dir
from portwatch.capture.files.reader import read_capture_path
table = load_table([sys.argv[2]], cache=cache_dir()).table
start, cpu = time.perf_counter(), time.process_time()
analyzer = Analyzer(table, capture=sys.argv[1])
with read_capture_path(sys.argv[1]) as reader:
    for batch in reader:
        analyzer.feed(batch)
fed, fed_cpu = time.perf_counter(), time.process_time()
analyzer.report()
print(fed - start, time.perf_counter() - fed, fed_cpu - cpu)
"""

#: Forces every stage onto its numpy engine (the reference the compiled core is tested against).
NUMPY_ENGINES = {"PORTWATCH_FRAMING": "numpy", "PORTWATCH_DECODE": "numpy",
                 "PORTWATCH_FLOWS": "numpy"}


# Framing alone: ``walk`` calls the framer over the mapped file (record headers only, no
# batch is built); ``walk x2`` does it in two threads at once (the compiled walk releases
# the GIL); ``read`` iterates the reader (framing, the batch copy and its arrays).
FRAMING = """
import sys, time
from portwatch.capture.files._framing import Stop
from portwatch.capture.files.reader import read_capture_path
path, framing, what = sys.argv[1:4]
start, cpu = time.perf_counter(), time.process_time()
n = 0


def walk(reader):
    feed, framer, count = reader._feed, reader._framer, 0
    pos, stop = feed.pos, Stop.LIMIT
    while stop is Stop.LIMIT:
        framed = framer.frame(feed.buf, pos, feed.end, 65536, 64 << 20)
        count += len(framed.positions)
        pos, stop = framed.end, framed.stop
    return count


if what == "walk":
    with read_capture_path(path, framing=framing) as reader:
        n = walk(reader)
elif what == "walk x2":  # two threads, each walking its own reader of the file
    import threading
    readers = [read_capture_path(path, framing=framing) for _ in range(2)]
    counts = []
    threads = [threading.Thread(target=lambda r=r: counts.append(walk(r))) for r in readers]
    start, cpu = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n = sum(counts) // 2
else:
    with read_capture_path(path, framing=framing) as reader:
        for batch in reader:
            n += len(batch)
print(time.perf_counter() - start, time.process_time() - cpu, n)
"""


def to_pcapng(src: Path, dst: Path) -> None:
    """The same packets as one-interface pcapng (EPBs), written a batch at a time."""
    sys.path.insert(0, str(REPO / "src"))
    from portwatch.capture.files.reader import read_capture_path
    from portwatch.capture.files.writer import PcapngWriter

    with read_capture_path(str(src)) as reader, dst.open("wb") as out:
        writer = PcapngWriter(out)
        for batch in reader:
            writer.sync_interfaces(reader.interfaces)
            writer.write_batch(batch)


def to_gzip(src: Path, dst: Path) -> None:
    try:
        from isal import igzip as gz
    except ImportError:
        import gzip as gz  # type: ignore[no-redef]
    with src.open("rb") as raw, gz.open(dst, "wb", compresslevel=1) as out:
        shutil.copyfileobj(raw, out, 1 << 20)


def framing_main(args: argparse.Namespace, cap: Path, workdir: Path) -> None:
    python = sys.executable
    copies = [("pcap", cap)]
    ng = workdir / "mixed.pcapng"
    if not ng.exists():
        to_pcapng(cap, ng)
    copies.append(("pcapng", ng))
    gzc = workdir / "mixed.pcap.gz"
    if not gzc.exists():
        to_gzip(cap, gzc)
    copies.append(("pcap.gz", gzc))
    print(f"Machine: {platform.node()} {platform.machine()} {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}")
    print(f"Capture: {args.packets} packets, "
          f"{'random-length' if args.vary else f'{FRAME}-byte'} frames; "
          f"median of {args.repeat}; CPU is user+sys (for walk/read: in the child, after "
          "start-up; for analyze: the whole process)\n")
    print("| input | what | framing | seconds | CPU s | packets/s (CPU) | peak RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, path in copies:
        for what in ("walk", "walk x2", "read"):
            if what.startswith("walk") and label.endswith(".gz"):
                continue
            for framing in ("compiled", "numpy"):
                out: list[str] = []
                rss = max(measure([python, "-c", FRAMING, str(path), framing, what], out)[1]
                          for _ in range(args.repeat))
                timed = [[float(x) for x in line.split()] for line in out]
                assert all(int(t[2]) == args.packets for t in timed), timed
                wall = statistics.median(t[0] for t in timed)
                cpu = statistics.median(t[1] for t in timed)
                print(f"| {label} ({path.stat().st_size / 1e6:.0f} MB) | {what} | {framing} | "
                      f"{wall:.3f} | {cpu:.3f} | {args.packets / cpu:,.0f} | {rss:.0f} MiB |")
    portwatch = [python, "-m", "portwatch", "--registry", args.registry]
    subprocess.run([*portwatch, "lookup", "80"], check=True, stdout=subprocess.DEVNULL)
    for label, path in copies:
        for framing in ("compiled", "numpy"):
            os.environ["PORTWATCH_FRAMING"] = framing
            runs = [measure_cpu([*portwatch, "analyze", "-f", "json", "--no-progress",
                                 str(path)]) for _ in range(args.repeat)]
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            print(f"| {label} | analyze -f json | {framing} | {wall:.3f} | {cpu:.3f} | "
                  f"{args.packets / cpu:,.0f} | {max(r[2] for r in runs):.0f} MiB |")
    os.environ.pop("PORTWATCH_FRAMING", None)


def measure_cpu(argv: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user+sys) and peak RSS (MiB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise RuntimeError(f"{argv[:4]} failed with status {status}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


DPKT_LOOP = """
import sys, collections, dpkt
counts = collections.Counter()
with open(sys.argv[1], 'rb') as f:
    for ts, buf in dpkt.pcap.Reader(f):
        eth = dpkt.ethernet.Ethernet(buf)
        ip = eth.data
        l4 = getattr(ip, 'data', None)
        if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)):
            counts[(ip.p, min(l4.sport, l4.dport))] += 1
print(len(counts))
"""

SCAPY_LOOP = """
import sys, collections, itertools
from scapy.utils import PcapReader
from scapy.layers.inet import TCP, UDP
counts = collections.Counter()
for pkt in itertools.islice(PcapReader(sys.argv[1]), int(sys.argv[2])):
    l4 = pkt.getlayer(TCP) or pkt.getlayer(UDP)
    if l4 is not None:
        counts[min(l4.sport, l4.dport)] += 1
print(len(counts))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--scapy-packets", type=int, default=50_000)
    ap.add_argument("--keep", help="keep the generated capture at this path")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each portwatch row")
    ap.add_argument("--registry", default=str(REPO.parent / "shared/registry/"
                                              "service-names-port-numbers.csv"))
    ap.add_argument("--framing", action="store_true",
                    help="measure the framing alone, compiled against numpy")
    ap.add_argument("--vary", action="store_true", help="frames of random length")
    ap.add_argument("--ndpireader", default=shutil.which("ndpiReader"),
                    help="nDPI's reader, for its row (skipped when absent)")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="portwatch-bench-"))
    cap = Path(args.keep) if args.keep else workdir / "mixed.pcap"
    if not cap.exists():
        generate(cap, args.packets, vary=args.vary)
    if args.framing:
        os.environ["PORTWATCH_CACHE_DIR"] = str(workdir / "cache")
        framing_main(args, cap, cap.parent if args.keep else workdir)
        if not args.keep:
            shutil.rmtree(workdir)
        return
    n = args.packets
    python = sys.executable
    portwatch = [python, "-m", "portwatch", "--registry", args.registry]
    env_cache = workdir / "cache"
    os.environ["PORTWATCH_CACHE_DIR"] = str(env_cache)
    subprocess.run([*portwatch, "lookup", "80"], check=True, stdout=subprocess.DEVNULL)

    rows: list[tuple[str, int, float, float]] = []
    # portwatch is quick enough to run several times: the median is quoted.
    runs = [measure([*portwatch, "analyze", "-f", "json", "--no-progress", str(cap)])
            for _ in range(args.repeat)]
    t, mem = statistics.median(r[0] for r in runs), max(r[1] for r in runs)
    rows.append((f"portwatch analyze -f json (native, end to end; median of {args.repeat})",
                 n, t, mem))
    runs = [measure([*portwatch, "analyze", "-f", "json", "--no-progress", str(cap)],
                    env=NUMPY_ENGINES) for _ in range(args.repeat)]
    rows.append((f"portwatch analyze -f json, numpy engines (PORTWATCH_FRAMING/DECODE/FLOWS="
                 f"numpy; median of {args.repeat})", n, statistics.median(r[0] for r in runs),
                 max(r[1] for r in runs)))
    for label, engines in (("compiled core", None), ("numpy engines", NUMPY_ENGINES)):
        out: list[str] = []
        for _ in range(args.repeat):
            _, mem = measure([python, "-c", IN_PROCESS, str(cap), args.registry], out,
                             env=engines)
        timings = [tuple(float(x) for x in line.split()) for line in out]
        feed_s = statistics.median(t[0] for t in timings)
        report_s = statistics.median(t[1] for t in timings)
        feed_cpu = statistics.median(t[2] for t in timings)
        rows.append((f"portwatch in-process, {label}: read+decode+flows (CPU {feed_cpu:.3f} s "
                     f"= {n / feed_cpu:,.0f} packets per CPU second; report "
                     f"{report_s * 1000:.0f} ms more; median of {args.repeat})",
                     n, feed_s, mem))
    for suffix, convert in ((".pcapng", to_pcapng), (".pcap.gz", to_gzip)):
        copy = workdir / f"mixed{suffix}"
        convert(cap, copy)
        runs = [measure([*portwatch, "analyze", "-f", "json", "--no-progress", str(copy)])
                for _ in range(args.repeat)]
        mb = copy.stat().st_size / 1e6
        rows.append((f"portwatch analyze -f json, {suffix[1:]} copy ({mb:.0f} MB; median of "
                     f"{args.repeat})", n, statistics.median(r[0] for r in runs),
                     max(r[1] for r in runs)))
        copy.unlink()
    # Two captures: one process after the other, against --jobs 2 (a process each).
    second = workdir / "mixed-2.pcap"
    shutil.copyfile(cap, second)
    for jobs in ("1", "2"):
        runs = [measure([*portwatch, "analyze", "-f", "json", "--no-progress", "--jobs", jobs,
                         str(cap), str(second)]) for _ in range(args.repeat)]
        rows.append((f"portwatch analyze -f json --jobs {jobs}, two captures (median of "
                     f"{args.repeat})", 2 * n, statistics.median(r[0] for r in runs),
                     max(r[1] for r in runs)))
    second.unlink()
    if args.ndpireader:
        # an ndpiReader unpacked from its .deb (apt-get download; dpkg -x) finds its library
        libs = Path(args.ndpireader).resolve().parent.parent / "lib/x86_64-linux-gnu"
        t, mem = measure([args.ndpireader, "-i", str(cap), "-q"],
                         env={"LD_LIBRARY_PATH": str(libs)} if libs.is_dir() else None)
        rows.append(("ndpiReader -i FILE -q (nDPI: flows and DPI)", n, t, mem))
    annotated = workdir / "annotated.pcapng"
    t, mem = measure([*portwatch, "analyze", "-f", "json", "--no-progress",
                      "--annotate", str(annotated), str(cap)])
    rows.append(("portwatch analyze --annotate (two passes, writes a commented pcapng)",
                 n, t, mem))
    annotated.unlink(missing_ok=True)
    tshark = shutil.which("tshark")
    if tshark:
        t, mem = measure([tshark, "-n", "-q", "-r", str(cap), "-z", "conv,tcp", "-z",
                          "conv,udp"])
        rows.append(("tshark -z conv,tcp -z conv,udp", n, t, mem))
        t, mem = measure([tshark, "-n", "-r", str(cap), "-T", "fields", "-e", "ip.src",
                          "-e", "ipv6.src", "-e", "tcp.srcport", "-e", "udp.srcport",
                          "-e", "tcp.dstport", "-e", "udp.dstport"])
        rows.append(("tshark -T fields", n, t, mem))
    t, mem = measure([python, "-c", DPKT_LOOP, str(cap)])
    rows.append(("dpkt loop", n, t, mem))
    k = min(args.scapy_packets, n)
    t, mem = measure([python, "-c", SCAPY_LOOP, str(cap), str(k)])
    rows.append((f"scapy PcapReader (first {k})", k, t, mem))

    size = cap.stat().st_size
    print(f"Machine: {platform.node()} {platform.machine()} {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    print(f"Capture: {n} packets, {size / 1e6:.0f} MB, IPv4/IPv6 TCP/UDP, {FRAME}-byte frames\n")
    base = rows[0][1] / rows[0][2]
    print("| tool | packets | seconds | packets/s | peak RSS | portwatch is |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, count, secs, rss in rows:
        rate = count / secs
        ratio = "" if name.startswith("portwatch") else f"{base / rate:.0f}x faster"
        print(f"| {name} | {count} | {secs:.2f} | {rate:,.0f} | {rss:.0f} MiB | {ratio} |")
    if not args.keep:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
