"""Registry benchmarks: parse+compile, cached load, scalar and vectorised lookups.

Peers in the same run: ``socket.getservbyport`` (libc reading /etc/services)
and a plain ``dict`` keyed by (transport, port). Prints a Markdown table.

    .venv/bin/python benchmarks/bench_registry.py [--registry CSV]
"""

from __future__ import annotations

import argparse
import platform
import socket
import statistics
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np

from portwatch.ports import Transport
from portwatch.porttable.cache import load_table
from portwatch.porttable.compile import compile_table
from portwatch.registry.loader import read_source
from portwatch.registry.merge import merge_sources

DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared/registry/service-names-port-numbers.csv"


def best(fn: object, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def per_call_ns(stmt: str, env: dict[str, object], number: int) -> float:
    return min(timeit.repeat(stmt, globals=env, number=number, repeat=5)) / number * 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--registry", default=str(DEFAULT_CSV))
    args = ap.parse_args()
    path = args.registry

    parse_s = best(lambda: read_source(path), 3)
    source = read_source(path)
    compile_s = best(lambda: compile_table(merge_sources([source])), 3)
    with tempfile.TemporaryDirectory() as cache:
        load_table([path], cache=Path(cache))  # fill the cache
        cached_s = statistics.median(
            [_timed(lambda: load_table([path], cache=Path(cache))) for _ in range(9)])
    table = compile_table(merge_sources([source]))

    rng = np.random.default_rng(1)
    ports = rng.integers(0, 65536, 1_000_000).astype(np.uint16)
    transports = rng.integers(0, 2, 1_000_000).astype(np.uint8)
    table.lookup_many(transports, ports)
    vec_s = best(lambda: table.lookup_many(transports, ports), 7)
    as_dict = {(t, p): table.service_of(t, p) for t in (Transport.TCP, Transport.UDP)
               for p in range(65536)}
    dict_vec_s = best(lambda: [as_dict[(t, p)] for t, p in zip(transports[:100_000].tolist(),
                                                               ports[:100_000].tolist(),
                                                               strict=True)], 3) * 10
    env: dict[str, object] = {"table": table, "T": Transport.TCP, "d": as_dict,
                              "socket": socket}
    scalar_status = per_call_ns("table.status_of(T, 443)", env, 200_000)
    scalar_service = per_call_ns("table.service_of(T, 443)", env, 200_000)
    scalar_full = per_call_ns("table.lookup(T, 443)", env, 100_000)
    # Many ports: the first pass builds each answer, later passes find it cached.
    fresh = compile_table(merge_sources([source]))
    pairs = list(zip([Transport(int(t)) for t in transports[:20_000]],
                     ports[:20_000].tolist(), strict=True))
    distinct = list(dict.fromkeys(pairs))
    fresh.lookup(Transport.TCP, 0)  # one-time set-up (row lists) is not per lookup
    cold_ns = _timed(lambda: [fresh.lookup(t, p) for t, p in distinct]) / len(distinct) * 1e9
    warm_ns = min(_timed(lambda: [fresh.lookup(t, p) for t, p in pairs])
                  for _ in range(5)) / len(pairs) * 1e9
    dict_many_ns = min(_timed(lambda: [as_dict[(t, p)] for t, p in pairs])
                       for _ in range(5)) / len(pairs) * 1e9
    dict_ns = per_call_ns("d[(T, 443)]", env, 200_000)
    try:
        getserv_ns = per_call_ns("socket.getservbyport(443, 'tcp')", env, 20_000)
    except OSError:
        getserv_ns = float("nan")

    print(f"Machine: {platform.node()} {platform.machine()}, {platform.python_implementation()} "
          f"{platform.python_version()}, numpy {np.__version__}")
    print(f"Registry: {path} ({len(source.records)} records)\n")
    print("| measurement | portwatch | peer | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| parse official CSV | {parse_s * 1e3:.0f} ms | | |")
    print(f"| compile table (4 x 65,536 slots) | {compile_s * 1e3:.0f} ms | | |")
    print(f"| load cached table (median of 9, incl. hashing the source) | "
          f"{cached_s * 1e3:.1f} ms | | |")
    print(f"| scalar `status_of` | {scalar_status:.0f} ns | dict {dict_ns:.0f} ns | "
          f"{scalar_status / dict_ns:.1f}x dict |")
    print(f"| scalar `service_of` | {scalar_service:.0f} ns | getservbyport {getserv_ns:.0f} ns"
          f" | {getserv_ns / scalar_service:.0f}x faster |")
    print(f"| scalar `lookup` (full PortInfo), one port again and again | {scalar_full:.0f} ns"
          f" | dict {dict_ns:.0f} ns | {scalar_full / dict_ns:.1f}x dict |")
    print(f"| scalar `lookup`, 20,000 random (transport, port), first time each | "
          f"{cold_ns:.0f} ns | | |")
    print(f"| scalar `lookup`, the same 20,000 again | {warm_ns:.0f} ns | "
          f"dict {dict_many_ns:.0f} ns | {warm_ns / dict_many_ns:.1f}x dict |")
    print(f"| vectorised `lookup_many`, 1M ports | {1e6 / vec_s / 1e6:.0f} M ports/s | "
          f"dict in a loop {1e6 / dict_vec_s / 1e6:.1f} M/s | "
          f"{dict_vec_s / vec_s:.0f}x |")


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
