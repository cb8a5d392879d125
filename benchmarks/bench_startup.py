"""Start-up of ``portwatch analyze --format json pcaps/sample.pcapng`` (68 packets), whole process.

Runs the command from each given source tree, interleaved with ``python -c
"import numpy"``, the same with the collector held off and frozen as
``portwatch.cli`` does it (the floor no change to portwatch's own modules can
go below: numpy's import and its objects' teardown) and ``python -c pass``, so
every series sees the same machine load. Wall time comes from
``perf_counter`` around the child, CPU time (user + system) from ``wait4``:
millisecond resolution, where ``/usr/bin/time`` rounds to 10 ms. The figures
in docs/benchmarks.md come from::

    git archive <before> src | tar -x -C /tmp/before   # the tree to compare with
    .venv/bin/python -m compileall -q src /tmp/before/src
    .venv/bin/python benchmarks/bench_startup.py --runs 21 /tmp/before/src src

Byte-code must be compiled (an installed package is): with
``PYTHONDONTWRITEBYTECODE`` set and no ``__pycache__``, every run also
compiles portwatch's sources, about 80 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["-m", "portwatch", "analyze", "--format", "json", "pcaps/sample.pcapng"]


def _run(args: list[str], pythonpath: str | None) -> tuple[float, float]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise SystemExit(f"{args} failed with status {status}")
    return wall * 1e3, (usage.ru_utime + usage.ru_stime) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", metavar="SRC", help="source trees (PYTHONPATH)")
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    cases: dict[str, tuple[list[str], str | None]] = {
        **{tree: (COMMAND, str(Path(tree).resolve())) for tree in args.trees},
        "python -c 'import numpy'": (["-c", "import numpy"], None),
        "the same, collector off, then frozen": (
            ["-c", "import gc; gc.disable(); import numpy; gc.enable(); gc.freeze()"], None),
        "python -c pass": (["-c", "pass"], None),
    }
    results: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in cases}
    for _ in range(args.runs):
        for name, (argv, path) in cases.items():
            wall, cpu = _run(argv, path)
            results[name][0].append(wall)
            results[name][1].append(cpu)
    print(f"load average {os.getloadavg()[0]:.2f}; {args.runs} interleaved runs of each; ms")
    print("| | wall, median | wall, min | CPU, median | CPU, min |")
    print("| --- | --- | --- | --- | --- |")
    for name, (wall, cpu) in results.items():
        print(f"| {name} | {statistics.median(wall):.0f} | {min(wall):.0f} | "
              f"{statistics.median(cpu):.0f} | {min(cpu):.0f} |")


if __name__ == "__main__":
    main()
