"""What two processes get on this machine: the ceiling any 2-worker speed-up meets.

Runs, each in its own process (no Dask, no pool, no merge):

- ``analyze``: read + decode + flows over a capture ``--passes`` times in-process
  (``read_capture_path`` and ``Analyzer.feed``, as a worker does), once alone on
  each of two copies one after the other, then both at once;
- ``cpu``: a pure-Python loop, the same way, as the control (no memory traffic).

and prints the speed-up of "both at once" over "one after the other" for each,
plus the user and system CPU seconds of one ``analyze`` process (``os.times``).
Reading captures is memory-bound: when the two processes share memory
bandwidth, their speed-up stays below the control's.

    .venv/bin/python benchmarks/bench_parallel_ceiling.py CAPTURE [--passes 5] [--rounds 2]

CAPTURE: e.g. the 1M-packet capture of ``bench_analyze.py --keep FILE``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

ANALYZE = """
import os, sys
from portwatch.analysis.analyzer import Analyzer
from portwatch.capture.files.reader import read_capture_path
from portwatch.porttable.cache import load_table
from portwatch.registry.packaged import packaged_snapshot
table = load_table([str(packaged_snapshot())], cache=None).table
start = os.times()
for _ in range(int(sys.argv[2])):
    analyzer = Analyzer(table, capture=sys.argv[1])
    with read_capture_path(sys.argv[1]) as reader:
        for batch in reader:
            analyzer.feed(batch)
end = os.times()
print(end.user - start.user, end.system - start.system)
"""

CPU = """
import sys
total = 0
for i in range(int(sys.argv[2]) * 6_000_000):
    total += i
print(0, 0)
"""


def _start(code: str, arg: str, passes: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-c", code, arg, str(passes)], env=env,
                            stdout=subprocess.PIPE, text=True)


def _serial_and_parallel(code: str, args: tuple[str, str], passes: int) -> tuple[float, float]:
    start = time.perf_counter()
    for arg in args:
        _start(code, arg, passes).communicate()
    serial = time.perf_counter() - start
    start = time.perf_counter()
    procs = [_start(code, arg, passes) for arg in args]
    for proc in procs:
        proc.communicate()
    return serial, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("capture")
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="portwatch-ceiling-"))
    try:
        second = work / "copy.pcap"
        shutil.copyfile(args.capture, second)
        pair = (args.capture, str(second))
        out = _start(ANALYZE, args.capture, 1).communicate()[0].split()
        print(f"# {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; "
              f"one analyze pass: user {float(out[0]):.2f} s, system {float(out[1]):.2f} s")
        print("| what | one after the other, s | both at once, s | speed-up |")
        print("| --- | ---: | ---: | ---: |")
        for _ in range(args.rounds):
            for name, code in (("analyze (two captures)", ANALYZE), ("pure-CPU loop", CPU)):
                serial, parallel = _serial_and_parallel(code, pair, args.passes)
                print(f"| {name} | {serial:.2f} | {parallel:.2f} | {serial / parallel:.2f}x |")
        print(f"# load average after: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
