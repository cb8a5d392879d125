"""Threads the metrics endpoint holds with N idle TCP connections open, and a scrape meanwhile.

The same script measures any ``portwatch.daemon.web.WebServer``: point
PYTHONPATH at the tree to measure.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_web_idle.py          # this tree
    PYTHONPATH=/path/to/main/src .venv/bin/python benchmarks/bench_web_idle.py 60 300

Each idle client connects and sends nothing, as a port scanner or a stuck
proxy does; the clients run in a child process. Under the unit's TasksMax=64,
every thread counts against the same budget as the capture threads.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import threading
import time

from prometheus_client import CollectorRegistry, Counter

from portwatch.daemon.web import WebServer

_CLIENTS = """
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
held = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(n)]
print("ready", flush=True)
sys.stdin.read()
"""


def _scrape(port: int) -> tuple[str, float]:
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        reply = conn.getresponse()
        reply.read()
        outcome = str(reply.status)
    except OSError as exc:
        outcome = type(exc).__name__
    finally:
        conn.close()
    return outcome, (time.perf_counter() - start) * 1000


def measure(n: int) -> tuple[int, int, float, str, float]:
    registry = CollectorRegistry()
    Counter("bench", "a counter", registry=registry).inc()
    before = threading.active_count()
    server = WebServer("127.0.0.1:0", registry, lambda: (True, "ok"))
    server.start()
    idle_threads = threading.active_count() - before
    # The idle clients live in another process, as they would: in this one they
    # would compete with the server for the GIL and overflow its backlog.
    start = time.perf_counter()
    clients = subprocess.Popen([sys.executable, "-c", _CLIENTS, str(server.port), str(n)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert clients.stdout is not None
    assert clients.stdin is not None
    clients.stdout.readline()  # "ready": every connection is established
    connect_s = time.perf_counter() - start
    time.sleep(1.0)  # let the server accept them all
    held = threading.active_count() - before
    outcome, ms = _scrape(server.port)
    clients.stdin.close()
    clients.wait(30)
    time.sleep(0.5)
    server.stop()
    return idle_threads, held, connect_s, outcome, ms


def main(argv: list[str]) -> None:
    counts = [int(a) for a in argv] or [0, 60, 300, 1000]
    print(f"{'idle conns':>10} {'threads at rest':>15} {'threads held':>12} "
          f"{'connect all s':>13} {'scrape':>8} {'scrape ms':>9}", flush=True)
    for n in counts:
        rest, held, connect_s, outcome, ms = measure(n)
        print(f"{n:>10} {rest:>15} {held:>12} {connect_s:>13.2f} {outcome:>8} {ms:>9.1f}",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
