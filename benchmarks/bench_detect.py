"""The cost of ``analyze --detect``, beside plain ``analyze``, ndpiReader and nfstream.

On the 1M-packet mixed capture of ``bench_analyze.py`` (same generator, same
seed), each tool in its own process, wall seconds and peak RSS (``wait4``):

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_analyze import generate, measure  # the same capture and timer

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


def _median(argv: list[str], runs: int, env: dict[str, str]) -> tuple[float, float]:
    times, peaks = [], []
    for _ in range(runs):
        seconds, peak = measure_env(argv, env)
        times.append(seconds)
        peaks.append(peak)
    return statistics.median(times), max(peaks)


def measure_env(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    old = dict(os.environ)
    os.environ.update(env)
    try:
        return measure(argv)
    finally:
        os.environ.clear()
        os.environ.update(old)


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, help="reuse (or write) the generated capture here")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ndpireader", default=shutil.which("ndpiReader"))
    args = ap.parse_args()
    env = {"PYTHONPATH": str(REPO / "src")}
    work = Path(tempfile.mkdtemp(prefix="bench-detect-"))
    capture = args.keep or work / "mixed.pcap"
    if not capture.exists():
        generate(capture, args.packets)
    n = args.packets
    rows: list[tuple[str, float, float]] = []
    py = sys.executable
    rows.append(("portwatch analyze -f json", *_median(
        [py, "-m", "portwatch", "analyze", "-f", "json", str(capture)], args.runs, env)))
    rows.append(("portwatch analyze --detect -f json", *_median(
        [py, "-m", "portwatch", "analyze", "--detect", "-f", "json", str(capture)],
        args.runs, env)))
    if args.ndpireader:
        rows.append(("ndpiReader -i FILE -q", *_median(
            [args.ndpireader, "-i", str(capture), "-q"], args.runs, env)))
    else:
        print("ndpiReader not found (--ndpireader PATH): its row is skipped", file=sys.stderr)
    rows.append(("nfstream over the whole file (n_dissections=20, 1 meter; 1 run)",
                 *measure_env([py, "-c", NFSTREAM_WHOLE, str(capture)], env)))
    print(f"{n:,} packets, {capture.stat().st_size / 1e6:.0f} MB; median of {args.runs} "
          f"runs unless said\n")
    print("| tool | seconds | packets/s | peak RSS |\n| --- | --- | --- | --- |")
    for name, seconds, peak in rows:
        print(f"| {name} | {seconds:.2f} | {n / seconds:,.0f} | {peak:.0f} MiB |")
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
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
