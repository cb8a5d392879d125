"""Rotated archives on a Dask cluster: 2 workers against 1, and the cluster against ``--jobs``.

Builds an archive of ``--files`` rotated captures (copies of one generated
capture of ``--packets`` packets, 300 flows crossing every file, as in the
tests), then times ``analyze_paths`` over all of it, best of ``--runs``:

- one process (no pool, no cluster);
- ``--jobs 2`` (the process pool);
- ``--scheduler local:1`` / ``local:2``, each starting its own cluster
  (what a user pays end to end);
- the same work on an already running LocalCluster of 1 and of 2 worker
  processes (the scaling of the work itself, cluster start excluded).

Variants run interleaved, best of ``--runs`` rounds; every variant's merged
report is checked equal (flows, counts, decisions) to the one-process report.

``--series`` instead prints the worst-case number of series one daemon
exports (docs/operations.md): a flood with one flow on every port of every
transport, scraped, for the packaged registry snapshot and two flagged-port
caps.

    .venv/bin/python benchmarks/bench_distributed.py [--packets 200000] [--files 40] [--runs 3]
    .venv/bin/python benchmarks/bench_distributed.py --series
    .venv/bin/python benchmarks/bench_distributed.py --rusage   # one worker's CPU and faults
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

from helpers.rotated import traffic  # noqa: E402
from portwatch.analysis.distributed import (  # noqa: E402
    Scheduler,
    analyze_on_cluster,
    local_cluster,
)
from portwatch.analysis.merge import CapturePartial, merge_partials  # noqa: E402
from portwatch.analysis.report import Report  # noqa: E402
from portwatch.analysis.run import analyze_paths  # noqa: E402
from portwatch.porttable.cache import load_table  # noqa: E402
from portwatch.porttable.table import PortTable  # noqa: E402
from portwatch.registry.packaged import packaged_snapshot  # noqa: E402


def signature(report: Report) -> tuple[object, ...]:
    flows = sorted((f.transport, f.client, f.client_port, f.server, f.service_port, f.packets,
                    f.bytes, f.method, f.status) for f in report.flows)
    return report.packets, report.bytes, tuple(flows)


def on_cluster(names: list[str], table: PortTable, client: object) -> Report:
    outcomes = analyze_on_cluster(names, table, Scheduler(local_workers=0), client=client)
    return merge_partials([o for o in outcomes if isinstance(o, CapturePartial)]).report(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=200_000, help="packets per capture file")
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--series", action="store_true",
                    help="print one daemon's worst-case series count instead")
    ap.add_argument("--rusage", action="store_true",
                    help="CPU time and page faults of one worker with and without Dask's "
                    "MALLOC_TRIM_THRESHOLD_, against one process, on 8 files")
    ap.add_argument("--merge", action="store_true",
                    help="time the client's merge of 40 partials of 50,000 flows instead")
    args = ap.parse_args()
    if args.series:
        series()
        return
    if args.merge:
        merge_cost()
        return
    if args.rusage:
        rusage(args.packets)
        return
    from distributed import Client

    table = load_table([str(packaged_snapshot())], cache=None).table
    tmp = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    try:
        one = traffic(tmp / "one.pcap", args.packets)
        names = []
        for i in range(args.files):
            path = tmp / f"ring_{i:05d}.pcap"
            shutil.copyfile(one, path)
            names.append(str(path))
        size = sum(os.path.getsize(n) for n in names)
        total_packets = args.packets * args.files
        print(f"# {args.files} files x {args.packets:,} packets = {total_packets:,} packets, "
              f"{size / 1e6:,.0f} MB; {os.cpu_count()} CPUs; Python {platform.python_version()}")

        def result(**kw: object) -> Report:
            rep = analyze_paths(names, table, **kw).report  # type: ignore[arg-type]
            assert rep is not None
            return rep

        want = signature(result())

        def running(workers: int) -> Callable[[], Report]:
            """A variant timed on a cluster already started and warmed (start excluded).

            Only that cluster is alive while it runs: an idle cluster's worker and
            scheduler tick (heartbeats, memory monitor) and, on 2 cores, take CPU
            from the busy one's workers.
            """
            def run() -> Report:
                with local_cluster(workers) as cluster, Client(cluster) as client:
                    on_cluster(names[:2], table, client)  # warm: table shipped, imports
                    workers0, client0 = client.run(_cpu_s), _cpu_s()
                    start = time.perf_counter()
                    rep = on_cluster(names, table, client)
                    elapsed[0] = time.perf_counter() - start
                    workers1, client1 = client.run(_cpu_s), _cpu_s()
                cpu[workers].append((client1 - client0,
                                     sum(workers1[w] - workers0[w] for w in workers1)))
                return rep
            return run

        elapsed = [0.0]
        #: CPU seconds of the client's process (scheduler and Client) and of all workers
        cpu: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
        variants: list[tuple[str, Callable[[], Report]]] = [
            ("one process", result),
            ("--jobs 2", lambda: result(jobs=2)),
            ("--scheduler local:1", lambda: result(scheduler="local:1")),
            ("--scheduler local:2", lambda: result(scheduler="local:2")),
            ("running cluster, 1 worker(s)", running(1)),
            ("running cluster, 2 worker(s)", running(2)),
        ]
        # Interleaved (each round runs every variant once) so that the load other
        # users put on a shared machine drifts over all variants alike; best of rounds.
        times: dict[str, list[float]] = {label: [] for label, _ in variants}
        for _ in range(args.runs):
            for label, fn in variants:
                elapsed[0] = -1.0
                start = time.perf_counter()
                rep = fn()
                took = time.perf_counter() - start
                times[label].append(elapsed[0] if elapsed[0] >= 0 else took)
                assert signature(rep) == want, label
        rows = [(label, min(ts)) for label, ts in times.items()]
        print(f"# load average after the runs: {os.getloadavg()[0]:.2f}")
        print(f"{'variant':<34} {'seconds':>8} {'M packets/s':>12}")
        for label, t in rows:
            print(f"{label:<34} {t:8.2f} {total_packets / t / 1e6:12.2f}")
        by = dict(rows)
        print(f"speed-up, running cluster 2 vs 1 workers: "
              f"{by['running cluster, 1 worker(s)'] / by['running cluster, 2 worker(s)']:.2f}x")
        print(f"speed-up, --scheduler local:2 vs local:1: "
              f"{by['--scheduler local:1'] / by['--scheduler local:2']:.2f}x")
        for workers, runs in cpu.items():
            client_s = min(c for c, _ in runs)
            workers_s = min(w for _, w in runs)
            print(f"running cluster, {workers} worker(s): client process {client_s:.2f} CPU s, "
                  f"workers {workers_s:.2f} CPU s (least of the rounds)")
        print(f"cluster overhead, local:2 - --jobs 2: "
              f"{by['--scheduler local:2'] - by['--jobs 2']:+.2f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cpu_s() -> float:
    """User + system CPU seconds of the calling process (run on workers by ``Client.run``)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _usage() -> tuple[float, float, int]:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def rusage(packets: int, files: int = 8) -> None:
    """User/system seconds and minor faults of the same work in-process and in one worker."""
    from distributed import Client, LocalCluster

    table = load_table([str(packaged_snapshot())], cache=None).table
    tmp = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    try:
        one = traffic(tmp / "one.pcap", packets)
        names = []
        for i in range(files):
            shutil.copyfile(one, tmp / f"r{i}.pcap")
            names.append(str(tmp / f"r{i}.pcap"))
        analyze_paths(names[:1], table)
        before = _usage()
        analyze_paths(names, table)
        after = _usage()
        print(f"one process: user {after[0] - before[0]:.2f} s, system "
              f"{after[1] - before[1]:.2f} s, {after[2] - before[2]:,} minor faults")
        # local_cluster() first: Dask's nanny writes its environment into this
        # process's os.environ, where later workers would inherit it.
        for label, cluster in [
                ("worker, local_cluster()", lambda: local_cluster(1)),
                ("worker, Dask's environment", lambda: LocalCluster(
                    n_workers=1, threads_per_worker=1, host="127.0.0.1",
                    dashboard_address=":0"))]:
            with cluster() as c, Client(c) as client:
                on_cluster(names[:1], table, client)
                trim = next(iter(client.run(
                    lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values()))
                w0 = next(iter(client.run(_usage).values()))
                on_cluster(names, table, client)
                w1 = next(iter(client.run(_usage).values()))
                print(f"{label} (MALLOC_TRIM_THRESHOLD_={trim}): user {w1[0] - w0[0]:.2f} s, "
                      f"system {w1[1] - w0[1]:.2f} s, {w1[2] - w0[2]:,} minor faults")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def merge_cost(captures: int = 40, flows: int = 50_000) -> None:
    """The merge on the client: 40 rotated files each continuing 50,000 flows (2 M rows)."""
    import numpy as np

    from portwatch.analysis.analyzer import Analyzer
    from portwatch.analysis.merge import COLUMN_MERGE, partial_of

    table = load_table([str(packaged_snapshot())], cache=None).table
    template = partial_of(Analyzer(table))
    rng = np.random.default_rng(1)
    keys = np.zeros(flows, dtype=template.keys.dtype)
    keys["t"] = rng.integers(0, 2, flows)
    keys["ah"], keys["bh"] = 0, 0
    keys["al"] = 0xFFFF_0A00_0000 + rng.integers(0, 1 << 16, flows)
    keys["bl"] = 0xFFFF_C000_0200 + rng.integers(0, 256, flows)
    keys["ap"], keys["bp"] = rng.integers(1024, 65535, flows), rng.integers(1, 1024, flows)
    keys = np.unique(keys)
    n = keys.shape[0]
    parts = []
    for c in range(captures):
        cols = {name: np.ones(n, dtype=template.columns[name].dtype) for name in COLUMN_MERGE}
        cols["first_ns"] = np.full(n, c * 1_000_000_000, dtype=np.int64)
        cols["last_ns"] = cols["first_ns"] + 999
        cols["handshake_side"] = np.full(n, 1 if c == 0 else 0, dtype=np.uint8)
        parts.append(CapturePartial(f"ring_{c:05d}.pcap", keys.copy(), cols, n, n,
                                    template.decode_counts.copy()))
    start = time.perf_counter()
    merged = merge_partials(parts)
    t_merge = time.perf_counter() - start
    start = time.perf_counter()
    report = merged.report(table)
    t_report = time.perf_counter() - start
    print(f"merge of {captures} partials x {n:,} flows ({captures * n:,} rows): "
          f"{t_merge:.2f} s; deciding and wording {len(report.flows):,} flows: {t_report:.2f} s")


def series() -> None:
    from portwatch.analysis.flows import FlowLimits
    from test_fleet_rules import series_of_one_daemon

    table = load_table([str(packaged_snapshot())], cache=None).table
    for cap in (100, 1000):
        got = series_of_one_daemon(table, FlowLimits(max_flows=300_000, max_flagged_ports=cap))
        print(f"max_flagged_ports={cap}: total {sum(got.values()):,} series")
        for name, n in got.items():
            print(f"  {name:<48} {n:>7,}")


if __name__ == "__main__":
    main()
