"""Report and rendering time of one capture, apart from reading it.

Reads CAPTURE once into an ``Analyzer``, then times ``build_report`` and each
output format (median of ``--repeat`` runs, in-process, warm). The figures in
docs/benchmarks.md ("Start-up ...") come from::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_report.py /tmp/bench/mixed.pcap
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from portwatch import Analyzer, open_table, read_capture
from portwatch.analysis.render import OutputFormat, render
from portwatch.analysis.report import build_report


def _median_ms(fn: Callable[[], object], repeat: int) -> str:
    """Wall and CPU medians: on a shared machine the CPU time is the steadier one."""
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return f"{statistics.median(wall) * 1e3:.0f} ms wall, {statistics.median(cpu) * 1e3:.0f} ms CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("capture")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    analyzer = Analyzer(open_table(), capture=args.capture)
    with read_capture(args.capture) as reader:
        for batch in reader:
            analyzer.feed(batch)
    report = build_report(analyzer)
    print(f"{args.capture}: {analyzer.packets} packets, {len(report.flows)} flows, "
          f"{len(report.flagged)} flagged")
    print(f"build_report: {_median_ms(lambda: build_report(analyzer), args.repeat)}")
    for fmt in OutputFormat:
        took = _median_ms(lambda fmt=fmt: render(report, fmt), args.repeat)  # type: ignore[misc]
        print(f"render {fmt.value}: {took}")


if __name__ == "__main__":
    main()
