"""Peak memory of ``portwatch analyze`` on a scan capture (one new flow per packet).

Writes a classic pcap of N TCP SYNs (1,000,000 by default), each from a new
source address to a random port, at a fixed rate (100,000 per second by
default: all within the TCP idle timeout, so the flow limit, not the timeout,
retires them), with numpy in about a second. Then, for each source tree
given (``--src LABEL=PATH``, default this tree's ``src``), runs ``portwatch
analyze -f prom`` and ``-f jsonl`` (standard output to /dev/null) in a fresh
process and prints its peak RSS (``ru_maxrss``) and wall time.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_scan_memory.py \\
        --src before=/path/to/main/src --src after=src [--flows 3000000]

Every run uses the same packaged registry and a warmed cache directory of its
own, so the registry costs the same in each.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_CHILD = """
import resource, sys
from portwatch.cli import main
code = main(sys.argv[1:])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"PEAK {peak} {code}", file=sys.stderr)
"""

_SNAPLEN = 54  # Ethernet 14 + IPv4 20 + TCP 20


def _syn_template() -> np.ndarray:
    eth = bytes.fromhex("020000000002" "020000000001" "0800")
    ip = bytes.fromhex("4500002800000000" "40060000" "0a000001" "c6336401")  # -> 198.51.100.1
    tcp = bytes.fromhex("9c400050" "00000001" "00000000" "5002ffff" "00000000")  # SYN
    return np.frombuffer(eth + ip + tcp, dtype=np.uint8)


def write_scan(path: Path, flows: int, rate: int, seed: int = 1) -> int:
    """A pcap of ``flows`` SYNs, each a new flow; returns the file size."""
    rng = np.random.default_rng(seed)
    record = np.dtype([("sec", "<u4"), ("usec", "<u4"), ("caplen", "<u4"), ("wirelen", "<u4"),
                       ("data", "u1", _SNAPLEN)])
    with open(path, "wb") as out:
        out.write(np.array([0xA1B2C3D4], "<u4").tobytes()
                  + np.array([2, 4], "<u2").tobytes()
                  + np.array([0, 0, 65535, 1], "<u4").tobytes())
        chunk = 1 << 18
        for start in range(0, flows, chunk):
            n = min(chunk, flows - start)
            i = np.arange(start, start + n, dtype=np.int64)
            rec = np.zeros(n, dtype=record)
            usec = 1_700_000_000 * 1_000_000 + i * 1_000_000 // rate
            rec["sec"], rec["usec"] = usec // 1_000_000, usec % 1_000_000
            rec["caplen"] = rec["wirelen"] = _SNAPLEN
            rec["data"] = _syn_template()
            source = (10 << 24) + i  # 10.0.0.0 onwards: one new source per packet
            rec["data"][:, 26:30] = source.astype(">u4").view(np.uint8).reshape(-1, 4)
            port = rng.integers(1, 65536, n).astype(">u2")
            rec["data"][:, 36:38] = port.view(np.uint8).reshape(-1, 2)
            out.write(rec.tobytes())
    return path.stat().st_size


def measure(src: str, argv: list[str], cache: str) -> tuple[float, float, int]:
    """Peak RSS (MiB), wall seconds and exit code of ``portwatch`` from ``src``."""
    env = dict(os.environ, PYTHONPATH=src, PORTWATCH_CACHE_DIR=cache,
               PORTWATCH_REGISTRY_MAX_AGE_DAYS="0")
    env.pop("PORTWATCH_REGISTRY", None)
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _CHILD, *argv], env=env, check=False,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    peak_line = [line for line in run.stderr.splitlines() if line.startswith("PEAK ")]
    if not peak_line:
        raise SystemExit(f"{src}: {' '.join(argv)} failed:\n{run.stderr}")
    _, peak, code = peak_line[-1].split()
    return int(peak) / 1024, elapsed, int(code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=100_000, help="SYNs per second")
    parser.add_argument("--src", action="append", default=[], metavar="LABEL=PATH",
                        help="a source tree to measure (repeatable; default: this tree)")
    parser.add_argument("--formats", default="prom,jsonl")
    args = parser.parse_args()
    trees = [s.split("=", 1) for s in args.src] or [
        ["this", str(Path(__file__).resolve().parents[1] / "src")]]
    print(f"Machine: {platform.node()} {platform.machine()}, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scan.pcap"
        started = time.perf_counter()
        size = write_scan(path, args.flows, args.rate)
        print(f"scan capture: {args.flows:,} SYNs, {size / 1e6:.0f} MB, written in "
              f"{time.perf_counter() - started:.1f} s")
        for label, src in trees:
            cache = tempfile.mkdtemp(dir=tmp)
            measure(src, ["lookup", "80"], cache)  # warm the cache
            for fmt in args.formats.split(","):
                peak, elapsed, code = measure(
                    src, ["analyze", "--no-progress", "-f", fmt, str(path)], cache)
                print(f"{label:>8} -f {fmt:<5}: peak RSS {peak:,.0f} MiB, {elapsed:.1f} s, "
                      f"exit {code}")


if __name__ == "__main__":
    main()
