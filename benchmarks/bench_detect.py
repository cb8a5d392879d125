"""The cost of ``analyze --detect``, beside plain ``analyze``, ndpiReader and nfstream.

On the 1M-packet mixed capture of ``bench_analyze.py`` (same generator, same
seed: 20,000 flows, headers only, so nDPI has nothing to read) and on the same
capture with every packet carrying 460 bytes of payload nDPI does not know
(its worst case: it reads the first 20 packets of every flow and gives up),
each tool in its own process, wall seconds and peak RSS (``wait4``):

- ``portwatch analyze -f json`` (no detection);
- ``portwatch analyze --detect -f json`` (nDPI on the first 20 packets of each flow);
- ``ndpiReader -i FILE -q`` (nDPI's own reader; ``--ndpireader PATH``, else from $PATH;
  Debian's ``libndpi-bin``);
- nfstream over the whole file (``n_dissections=20``, one meter), what
  ``--detect`` would cost without keeping the first packets aside.

Then the verdicts on ``pcaps/detect.pcap``: portwatch's ``detected`` per flow
beside ndpiReader's ``proto`` for the same 5-tuple.

    .venv/bin/python benchmarks/bench_detect.py [--packets 1000000] [--keep FILE] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_analyze  # the same capture generator and timer
from bench_analyze import generate

REPO = Path(__file__).resolve().parent.parent
DETECT_SAMPLE = REPO / "pcaps" / "detect.pcap"

NFSTREAM_WHOLE = """
import sys
from nfstream import NFStreamer
n = 0
for flow in NFStreamer(source=sys.argv[1], decode_tunnels=False, n_dissections=20,
                       statistical_analysis=False, n_meters=1):
    n += 1
print(n)
"""

_NDPI_FLOW = re.compile(r"^\s+\d+\s+(TCP|UDP) (\S+):(\d+) <-> (\S+):(\d+) "
                        r"\[proto: [\d.]+/([^\]]+)\].*?\[Confidence: ([^\]]+)\]")


def _payload_templates() -> list[tuple[bytes, int]]:
    """``bench_analyze``'s frames with the padding inside the IP datagram: a payload."""
    out = []
    for frame, port_at in _HEADER_TEMPLATES():
        v6 = frame[12:14] == b"\x86\xdd"
        l4_at = 14 + (40 if v6 else 20)
        tcp = frame[23] == 6 if not v6 else frame[20] == 6
        header = 20 if tcp else 8
        body = bytearray(frame)
        ip_len = len(frame) - 14
        if v6:
            body[18:20] = (ip_len - 40).to_bytes(2, "big")
        else:
            body[16:18] = ip_len.to_bytes(2, "big")
            body[24:26] = b"\0\0"
            checksum = sum(int.from_bytes(body[14 + i:16 + i], "big") for i in range(0, 20, 2))
            checksum = (checksum & 0xFFFF) + (checksum >> 16)
            body[24:26] = (~checksum & 0xFFFF).to_bytes(2, "big")
        if not tcp:
            body[l4_at + 4:l4_at + 6] = (len(frame) - l4_at).to_bytes(2, "big")
        body[l4_at + header:] = b"\xa5" * (len(frame) - l4_at - header)
        out.append((bytes(body), port_at))
    return out


_HEADER_TEMPLATES = bench_analyze._templates


def generate_with_payload(path: Path, packets: int) -> None:
    bench_analyze._templates = _payload_templates
    try:
        generate(path, packets)
    finally:
        bench_analyze._templates = _HEADER_TEMPLATES


def _median(argv: list[str], runs: int, env: dict[str, str]) -> tuple[float, float, float]:
    results = [measure_env(argv, env) for _ in range(runs)]
    return (statistics.median(r[0] for r in results), statistics.median(r[1] for r in results),
            max(r[2] for r in results))


def measure_env(argv: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system, all threads and the child's own children,
    such as ``--detect``'s nDPI meter) and peak RSS (MiB) of a child.

    CPU time is the fair figure on a shared machine: wall time there depends on
    what the other tenants do, and a threaded program gains from a free core.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **env})
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise RuntimeError(f"{argv[0]} failed with status {status}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def ndpireader_flows(reader: str, capture: Path) -> dict[tuple[str, int], tuple[str, str]]:
    """(transport, either port) -> (protocol, confidence) as ndpiReader prints them."""
    out = subprocess.run([reader, "-i", str(capture), "-v", "2"], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    flows = {}
    for line in out.splitlines():
        m = _NDPI_FLOW.match(line)
        if m:
            transport, _, port_a, _, port_b, proto, confidence = m.groups()
            for port in (int(port_a), int(port_b)):
                flows[(transport.lower(), port)] = (proto.lower(), confidence)
    return flows


def portwatch_flows(env: dict[str, str]) -> dict[tuple[str, int], tuple[str, str, str]]:
    out = subprocess.run([sys.executable, "-m", "portwatch", "analyze", "--detect", "-f",
                          "jsonl", str(DETECT_SAMPLE)], capture_output=True, text=True,
                         check=True, env={**os.environ, **env}, timeout=120).stdout
    return {(f["transport"], f["client_port"]): (f["detected"], f["confidence"],
                                                 f["detection"])
            for f in map(json.loads, out.splitlines())}


def _rows(capture: Path, runs: int, reader: str | None,
          env: dict[str, str]) -> list[tuple[str, float, float, float]]:
    py = sys.executable
    rows = [("portwatch analyze -f json", *_median(
        [py, "-m", "portwatch", "analyze", "-f", "json", str(capture)], runs, env))]
    rows.append(("portwatch analyze --detect -f json", *_median(
        [py, "-m", "portwatch", "analyze", "--detect", "-f", "json", str(capture)], runs, env)))
    if reader:
        rows.append(("ndpiReader -i FILE -q", *_median([reader, "-i", str(capture), "-q"],
                                                      runs, env)))
    rows.append(("nfstream NFStreamer over the whole file (n_dissections=20, 1 meter; 1 run)",
                 *measure_env([py, "-c", NFSTREAM_WHOLE, str(capture)], env)))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, help="reuse (or write) the generated captures in DIR")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ndpireader", default=shutil.which("ndpiReader"))
    args = ap.parse_args()
    env = {"PYTHONPATH": str(REPO / "src")}
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-detect-"))
    work.mkdir(parents=True, exist_ok=True)
    captures = [("headers only", work / f"mixed-{args.packets}.pcap", generate),
                ("every packet with a payload", work / f"payload-{args.packets}.pcap",
                 generate_with_payload)]
    if not args.ndpireader:
        print("ndpiReader not found (--ndpireader PATH): its rows are skipped", file=sys.stderr)
    n = args.packets
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs")
    for title, capture, make in captures:
        if not capture.exists():
            make(capture, n)
        print(f"\n{title}: {n:,} packets, {capture.stat().st_size / 1e6:.0f} MB; "
              f"median of {args.runs} runs unless said\n")
        print("| tool | wall s | CPU s | packets/s (wall) | peak RSS |\n"
              "| --- | --- | --- | --- | --- |")
        for name, seconds, cpu, peak in _rows(capture, args.runs, args.ndpireader, env):
            print(f"| {name} | {seconds:.2f} | {cpu:.2f} | {n / seconds:,.0f} | {peak:.0f} MiB |",
                  flush=True)
    if args.ndpireader:
        theirs = ndpireader_flows(args.ndpireader, DETECT_SAMPLE)
        ours = portwatch_flows(env)
        print("\n| flow | portwatch detected (confidence): verdict | ndpiReader | agree |")
        print("| --- | --- | --- | --- |")
        for key in sorted(ours):
            detected, confidence, verdict = ours[key]
            proto, conf = theirs.get(key, ("-", "-"))
            same = (detected or "unknown") == proto
            print(f"| {key[0]} client {key[1]} | {detected or '-'} ({confidence}): {verdict} "
                  f"| {proto} ({conf}) | {'yes' if same else 'NO'} |")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
