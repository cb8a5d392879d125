"""Cold compile of the packaged snapshot, step by step, in CPU time.

What a first run pays before it answers: inflate and parse the XML, merge,
compile. CPU time (``time.process_time``), best of RUNS, so that other load
on a shared machine disturbs it less than wall-clock time would.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_registry_cold_steps.py
"""

from __future__ import annotations

import os
import platform
import time

from portwatch.porttable.compile import compile_table
from portwatch.registry.loader import decompress_source, parse_source, read_bytes
from portwatch.registry.merge import merge_sources
from portwatch.registry.packaged import packaged_snapshot

RUNS = 7


def main() -> None:
    path = str(packaged_snapshot())
    best: dict[str, float] = {}
    for _ in range(RUNS):
        data = read_bytes(path)
        t0 = time.process_time()
        decompress_source(data, path)
        t1 = time.process_time()
        source = parse_source(data, path)
        t2 = time.process_time()
        compile_table(merge_sources([source]))
        t3 = time.process_time()
        for step, seconds in (("inflate only", t1 - t0), ("inflate + parse", t2 - t1),
                              ("merge + compile", t3 - t2), ("total", t3 - t1)):
            best[step] = min(best.get(step, seconds), seconds)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; CPU time, best of {RUNS}\n")
    print("| step | CPU time |")
    print("|---|---|")
    for step, seconds in best.items():
        print(f"| {step} | {seconds * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
