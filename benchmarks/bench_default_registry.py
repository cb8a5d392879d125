"""Start-up with the default registry (the packaged snapshot): cold compile, warm cache.

Cold: an empty cache directory, so the snapshot is inflated, parsed, merged
and compiled. Warm: the compiled table is loaded from the cache. Both are
timed in-process (``load_table``) and as a whole ``portwatch lookup 80/tcp``
process; ``python -c pass`` is the peer that shows what any Python start costs.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_default_registry.py
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from portwatch.porttable.cache import load_table
from portwatch.registry.packaged import packaged_snapshot

RUNS = 7


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def _process(args: list[str], env: dict[str, str]) -> float:
    return _timed(lambda: subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL))


def main() -> None:
    snapshot = str(packaged_snapshot())
    cold, warm, cold_proc, warm_proc, bare = [], [], [], [], []
    exe = str(Path(sys.executable).with_name("portwatch"))
    for _ in range(RUNS):
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "cache"
            cold.append(_timed(lambda: load_table([snapshot], cache=cache)))  # noqa: B023
            warm.append(_timed(lambda: load_table([snapshot], cache=cache)))  # noqa: B023
            env = {**os.environ, "PORTWATCH_CACHE_DIR": str(Path(tmp) / "proc-cache"),
                   "PORTWATCH_DATA_DIR": str(Path(tmp) / "data")}
            env.pop("PORTWATCH_REGISTRY", None)
            cold_proc.append(_process([exe, "lookup", "80/tcp"], env))
            warm_proc.append(_process([exe, "lookup", "80/tcp"], env))
            bare.append(_process([sys.executable, "-c", "pass"], env))
    ms = lambda xs: f"{statistics.median(xs) * 1000:.1f} ms"  # noqa: E731
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(f"snapshot: {Path(snapshot).stat().st_size:,} bytes (xz), median of {RUNS}\n")
    print("| what | cold (empty cache) | warm (cached) |")
    print("|---|---|---|")
    print(f"| `load_table` of the packaged snapshot, in-process | {ms(cold)} | {ms(warm)} |")
    print(f"| `portwatch lookup 80/tcp`, whole process | {ms(cold_proc)} | {ms(warm_proc)} |")
    print(f"| peer: `python -c pass` | {ms(bare)} | |")


if __name__ == "__main__":
    main()
