"""Captures analysed on a Dask cluster: each worker reads its captures and returns partial state.

Imported only when a run asks for a scheduler (``--scheduler``, or ``--jobs N``
when dask is installed): ``dask.distributed`` is an optional extra
(``pip install portwatch[dask]``).

- ``--scheduler tcp://HOST:8786`` connects to a running scheduler; the workers
  must see the captures under the names given (a shared file system) or read
  them by URL (``s3://``, ``gs://`` need ``s3fs``/``gcsfs`` on the workers).
- ``--scheduler local:N`` starts N single-threaded worker processes on
  127.0.0.1 for the run (the scheduler's HTTP server on a free port) and
  stops them after.

One task per capture. A task returns the capture's ``CapturePartial`` (about
100 bytes per flow, no port table), or the ``CaptureError`` that made it
unreadable, as a value: a bad capture is a result, not a task failure, so
Dask never retries it. A worker that dies has its tasks rescheduled by Dask on
the others (up to ``distributed.scheduler.allowed-failures`` times, 3 by
default). The port table is scattered once to every worker; workers only
count, and the client decides every flow once, after the merge
(``portwatch.analysis.merge``).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from portwatch.analysis.merge import CapturePartial, partial_of
from portwatch.errors import CaptureError, UsageError
from portwatch.porttable.table import PortTable

__all__ = [
    "ClusterProgress",
    "Scheduler",
    "analyze_on_cluster",
    "dask_available",
    "local_cluster",
    "parse_scheduler",
]

_LOCAL = re.compile(r"local:(\d+)")
_REMOTE = re.compile(r"(tcp|tls|inproc|ws|wss)://\S+")


@dataclass(frozen=True, slots=True)
class Scheduler:
    """Where tasks run: a scheduler ``address``, or ``local`` worker processes."""

    address: str | None = None
    local_workers: int = 0

    def __str__(self) -> str:
        return self.address or f"local:{self.local_workers}"


def parse_scheduler(spec: str) -> Scheduler:
    """``tcp://HOST:PORT`` (or tls://, ws://) or ``local:N``; anything else is a usage error."""
    if m := _LOCAL.fullmatch(spec):
        n = int(m.group(1))
        if n < 1:
            raise UsageError(f"--scheduler local:N takes a positive number, not {n}")
        return Scheduler(local_workers=n)
    if _REMOTE.fullmatch(spec):
        return Scheduler(address=spec)
    raise UsageError(f"--scheduler takes tcp://HOST:PORT or local:N, not {spec!r}")


def dask_available() -> bool:
    """Whether ``dask.distributed`` can be imported (the ``dask`` extra)."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(slots=True)
class ClusterProgress:
    """What a run reports after each capture: done/total, bytes read, packets per second."""

    captures_done: int
    captures_total: int
    bytes: int
    packets: int
    elapsed_s: float
    capture: str

    @property
    def packets_per_s(self) -> float:
        return self.packets / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self) -> str:
        return (f"{self.captures_done}/{self.captures_total} captures, "
                f"{self.bytes / 1e6:,.1f} MB, {self.packets:,} packets, "
                f"{self.packets_per_s:,.0f} packets/s")


# -- on the workers -------------------------------------------------------------

_TABLES: dict[str, PortTable] = {}


def _table(key: str, data: bytes) -> PortTable:
    """The run's table, rebuilt once per worker process (0.1 s) and kept."""
    table = _TABLES.get(key)
    if table is None:
        _TABLES.clear()
        table = _TABLES[key] = PortTable.from_bytes(data)
    return table


def _analyze_task(name: str, engine: str, table_key: str,
                  table_bytes: bytes) -> CapturePartial | CaptureError:
    """One capture on a worker: its partial state, or why it could not be read."""
    from portwatch.analysis.run import analyze_capture

    try:
        return partial_of(analyze_capture(_table(table_key, table_bytes), name, engine))
    except CaptureError as exc:
        return exc


# -- on the client --------------------------------------------------------------


@contextlib.contextmanager
def _client(scheduler: Scheduler) -> Iterator[Any]:
    from distributed import Client

    if scheduler.address is not None:
        try:
            client = Client(scheduler.address, timeout="10s")
        except OSError as exc:
            raise UsageError(f"cannot reach the Dask scheduler {scheduler.address}: {exc}") \
                from exc
        with client:
            yield client
        return
    with local_cluster(scheduler.local_workers) as cluster, Client(cluster) as client:
        yield client


@contextlib.contextmanager
def local_cluster(workers: int) -> Iterator[Any]:
    """A ``LocalCluster`` of single-threaded worker processes on 127.0.0.1, for one run.

    The scheduler's HTTP server takes a free port; workers start without
    Dask's ``MALLOC_TRIM_THRESHOLD_`` (``_numpy_friendly_environ``).
    """
    import dask
    from distributed import LocalCluster

    with dask.config.set({_PRE_SPAWN: _numpy_friendly_environ()}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                         host="127.0.0.1", dashboard_address=":0") as cluster:
        yield cluster


_PRE_SPAWN = "distributed.nanny.pre-spawn-environ"


def _numpy_friendly_environ() -> dict[str, Any]:
    """Dask's worker environment without ``MALLOC_TRIM_THRESHOLD_``.

    Setting that variable turns off glibc's adaptive mmap threshold, so every
    batch-sized numpy array is mmap'd and unmapped again: on 1.6 M packets a
    worker took 380,000 page faults and 0.5 s of system time against 25,000
    and 0.05 s without it (same user time as one process). The thread limits
    (``OMP_NUM_THREADS=1``...) are kept. Dask's nanny also copies its
    environment into this process's ``os.environ``, which workers inherit:
    after a default ``LocalCluster`` in the same process the variable is back.
    """
    import dask

    environ = dict(dask.config.get(_PRE_SPAWN, default={}) or {})
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return environ


def analyze_on_cluster(
    names: Sequence[str],
    table: PortTable,
    scheduler: Scheduler,
    *,
    engine: str = "native",
    sizes: Sequence[int] | None = None,
    progress: Callable[[ClusterProgress], None] | None = None,
    on_result: Callable[[int, CapturePartial | CaptureError], None] | None = None,
    client: Any = None,
) -> list[CapturePartial | CaptureError]:
    """Every capture's partial state (or error), in the order of ``names``.

    ``sizes`` (bytes per capture, when known) feeds the progress report;
    ``on_result(i, outcome)`` sees each capture as it completes (``--resume``
    saves it there). ``client`` reuses a connected ``distributed.Client``.
    """
    from distributed import as_completed

    outcomes: list[CapturePartial | CaptureError | None] = [None] * len(names)
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(_client(scheduler))
        data = table.to_bytes()
        key = hashlib.sha256(data).hexdigest()
        shipped = client.scatter(data, broadcast=True, hash=False)
        futures = {client.submit(_analyze_task, name, engine, key, shipped, pure=False): i
                   for i, name in enumerate(names)}
        started = time.monotonic()
        nbytes = packets = 0
        for done, future in enumerate(as_completed(futures), 1):
            i = futures.pop(future)
            outcome: CapturePartial | CaptureError = future.result()
            outcomes[i] = outcome
            if isinstance(outcome, CapturePartial):
                packets += outcome.packets
            if sizes is not None:
                nbytes += sizes[i]
            if on_result is not None:
                on_result(i, outcome)
            if progress is not None:
                progress(ClusterProgress(done, len(names), nbytes, packets,
                                         time.monotonic() - started, names[i]))
            future.release()
    return [o for o in outcomes if o is not None]
