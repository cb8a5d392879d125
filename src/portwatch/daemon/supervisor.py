"""Capture supervision: run one packet source after another, with back-off.

``CaptureSupervisor.run`` (the daemon's capture thread) makes a source from
the current configuration, feeds each of its batches to the counters, and
ends each run with a ``RunOutcome``:

* ``FINISHED``: a finite source (replay) reached its end. The supervisor
  idles until ``request_restart()`` (a reload) or ``stop()``.
* ``FAILED``: the source could not be made, raised, or ended although it is
  not finite. The next source is started after a ``Backoff`` delay and that
  start is counted in ``portwatch_backend_restarts_total{backend}``.
* ``STOPPED``: ``stop()`` or ``request_restart()`` ended the run. A restart
  asked for this way starts at once and is not counted.

Clock and sleep are injected, so back-off is tested with a fake clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol, runtime_checkable

from portwatch.capture.batch import PacketBatch
from portwatch.capture.live.source import PacketSource
from portwatch.daemon.config import Backend, DaemonConfig
from portwatch.daemon.ebpf import KernelCounts
from portwatch.errors import BackendError, PortwatchError
from portwatch.porttable.table import PortTable

__all__ = [
    "Backoff",
    "CaptureSink",
    "CaptureSupervisor",
    "OutcomeKind",
    "RunOutcome",
    "SourceFactory",
    "make_source",
]

SourceFactory = Callable[[DaemonConfig], PacketSource]


@runtime_checkable
class KernelCountingSource(Protocol):
    """A source that counts in the kernel and reports increments, not packets (ebpf)."""

    def connect(self, sink: Callable[[KernelCounts], None],
                table_of: Callable[[], PortTable]) -> None: ...


@runtime_checkable
class KernelCountSink(Protocol):
    """A sink that takes kernel counts (``TrafficCounters``)."""

    @property
    def table(self) -> PortTable: ...

    def add_kernel_counts(self, counts: KernelCounts) -> None: ...


def make_source(config: DaemonConfig) -> PacketSource:
    """The configured backend; each is imported only when chosen.

    ``auto``: the eBPF backend when its program loads here and no capture filter
    is set (the kernel counts every frame), else dumpcap.
    """
    cap = config.capture
    if cap.backend is Backend.EBPF and cap.bpf_filter:
        raise BackendError("the ebpf backend counts every frame: [capture] bpf_filter "
                           f"{cap.bpf_filter!r} cannot be applied (remove it, or use dumpcap)")
    if cap.backend is Backend.EBPF or (cap.backend is Backend.AUTO and not cap.bpf_filter):
        from portwatch.daemon.ebpf import EbpfSource
        try:
            ebpf_source: PacketSource = EbpfSource(cap.interfaces, config.flows)
            return ebpf_source
        except BackendError:
            if cap.backend is Backend.EBPF:
                raise
    if cap.backend is Backend.AUTO:
        return make_source(replace(config, capture=replace(cap, backend=Backend.DUMPCAP)))
    if cap.backend is Backend.DUMPCAP:
        from portwatch.capture.live.dumpcap import DumpcapSource
        return DumpcapSource(cap.interfaces, cap.bpf_filter, cap.snaplen,
                             buffer_mib=cap.buffer_mib)
    if cap.backend is Backend.SCAPY:
        from portwatch.capture.live.scapy import ScapySource
        return ScapySource(cap.interfaces, cap.bpf_filter, cap.snaplen,
                           buffer_mib=cap.buffer_mib)
    if cap.backend is Backend.PYSHARK:
        from portwatch.capture.live.pyshark import PysharkSource
        pyshark_source: PacketSource = PysharkSource(cap.interfaces, cap.bpf_filter, cap.snaplen)
        return pyshark_source
    from portwatch.capture.live.replay import ReplaySource
    return ReplaySource(cap.replay_files, cap.replay_speed)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Restart delays: ``initial_s`` doubling up to ``maximum_s``.

    A run that lasted ``healthy_s`` or more was healthy: the delay after it
    starts again from ``initial_s``. ``delay_s`` is the delay the next failure
    waits, unless the run before it was healthy.
    """

    initial_s: float = 0.5
    maximum_s: float = 30.0
    healthy_s: float = 60.0
    factor: float = 2.0
    delay_s: float = 0.5

    def after_failure(self, ran_s: float) -> tuple[float, Backoff]:
        """The delay to wait after a run of ``ran_s`` seconds failed, and the next state."""
        delay = self.initial_s if ran_s >= self.healthy_s else self.delay_s
        return delay, replace(self, delay_s=min(self.maximum_s, delay * self.factor))


class OutcomeKind(Enum):
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How one run ended; ``delay_s`` is the wait before the next start (failures only)."""

    kind: OutcomeKind
    backend: str
    message: str = ""
    ran_s: float = 0.0
    delay_s: float = 0.0


class CaptureSink(Protocol):
    """Where a run's packets and capture health go (``TrafficCounters``)."""

    def feed(self, batch: PacketBatch, interface_names: Sequence[str] = ()) -> None: ...

    def add_dropped(self, drops: Mapping[str, int]) -> None: ...

    def count_restart(self, backend: str) -> None: ...

    def declare(self, backend: str, interfaces: Iterable[str]) -> None: ...


def _ignore_start(source: PacketSource, config: DaemonConfig) -> None:
    pass


def _ignore_outcome(outcome: RunOutcome) -> None:
    pass


class CaptureSupervisor:
    """Runs sources one after another in the calling thread until ``stop()``."""

    def __init__(
        self,
        make_source: SourceFactory,
        config: Callable[[], DaemonConfig],
        sink: CaptureSink,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        on_start: Callable[[PacketSource, DaemonConfig], None] = _ignore_start,
        on_outcome: Callable[[RunOutcome], None] = _ignore_outcome,
    ) -> None:
        self._make_source = make_source
        self._config = config
        self._sink = sink
        self.backoff = backoff or Backoff()
        self._clock = clock
        self._sleep = sleep or self._interruptible_sleep
        self._on_start = on_start
        self._on_outcome = on_outcome
        self._stop = threading.Event()
        self._restart = threading.Event()
        self._wake = threading.Event()  # set by stop() and request_restart()
        self._lock = threading.Lock()
        self._source: PacketSource | None = None
        self._drops_seen: dict[str, int] = {}
        self._finished = False

    # -- control, from any thread ---------------------------------------------------
    def stop(self) -> None:
        """End the current run and the loop; ``run`` returns soon after."""
        self._stop.set()
        self._wake.set()
        self._close_current()

    def request_restart(self) -> None:
        """End the current run (or the idle wait after a finished one); start afresh."""
        self._restart.set()
        self._wake.set()
        self._close_current()

    @property
    def finished(self) -> bool:
        """A finite source has run to its end and nothing was started since."""
        with self._lock:
            return self._finished

    def current_source(self) -> PacketSource | None:
        """The source running now (health asks the eBPF one where it is attached)."""
        with self._lock:
            return self._source

    def poll_drops(self) -> None:
        """Add the running source's new drops to the sink."""
        with self._lock:
            source = self._source
        if source is not None:
            self._add_drops(source)

    # -- the loop -----------------------------------------------------------------
    def run(self) -> None:
        """Supervise until ``stop()``: restart failures with back-off, idle after an end."""
        count_next = False
        while not self._stop.is_set():
            outcome = self.run_once(count_restart=count_next)
            if outcome.kind is OutcomeKind.FAILED:
                delay, self.backoff = self.backoff.after_failure(outcome.ran_s)
                outcome = replace(outcome, delay_s=delay)
            self._on_outcome(outcome)
            count_next = outcome.kind is OutcomeKind.FAILED
            if outcome.kind is OutcomeKind.FAILED:
                self._sleep(outcome.delay_s)
            elif outcome.kind is OutcomeKind.FINISHED:
                self._idle_until_restart()

    def run_once(self, *, count_restart: bool = False) -> RunOutcome:
        """Make one source from the current configuration and feed it to its end."""
        self._restart.clear()
        config = self._config()
        backend = config.capture.backend.value
        started = self._clock()
        try:
            source = self._make_source(config)
        except PortwatchError as exc:
            if count_restart:
                self._sink.count_restart(backend)
            return RunOutcome(OutcomeKind.FAILED, backend, str(exc))
        self._sink.declare(source.backend, () if source.finite else config.capture.interfaces)
        if count_restart:
            self._sink.count_restart(source.backend)
        with self._lock:
            self._source, self._drops_seen, self._finished = source, {}, False
        error = self._feed(source, config)
        ran_s = self._clock() - started
        if self._stop.is_set() or self._restart.is_set():
            return RunOutcome(OutcomeKind.STOPPED, source.backend, ran_s=ran_s)
        if error is None and source.finite:
            with self._lock:
                self._finished = True
            return RunOutcome(OutcomeKind.FINISHED, source.backend, "input finished", ran_s)
        return RunOutcome(OutcomeKind.FAILED, source.backend, error or "capture ended", ran_s)

    def _feed(self, source: PacketSource, config: DaemonConfig) -> str | None:
        """Every batch of one run to the sink; the error that ended it, or ``None``."""
        if self._stop.is_set() or self._restart.is_set():
            with self._lock:
                self._source = None
            return None  # asked to end before the run began: do not begin it
        self._on_start(source, config)
        if isinstance(source, KernelCountingSource) and isinstance(self._sink, KernelCountSink):
            # A source that counts in the kernel (ebpf) reports to the counters
            # directly, and reads the table they hold now (refreshed on SIGHUP).
            sink = self._sink
            source.connect(sink.add_kernel_counts, lambda: sink.table)
        batches = source.batches()
        try:
            for batch in batches:
                self._sink.feed(batch, source.interface_names())
                if self._stop.is_set() or self._restart.is_set():
                    break
            return None
        except BackendError as exc:
            return exc.message
        except Exception as exc:  # a bug must not end capture silently: report and restart
            return f"unexpected {type(exc).__name__}: {exc}"
        finally:
            if isinstance(batches, Generator):
                batches.close()  # a backend's clean-up runs now, not at garbage collection
            self._add_drops(source)
            with self._lock:
                self._source = None

    # -- helpers ------------------------------------------------------------------
    def _add_drops(self, source: PacketSource) -> None:
        current = source.dropped()
        with self._lock:
            delta = {k: v - self._drops_seen.get(k, 0) for k, v in current.items()}
            self._drops_seen = current
        self._sink.add_dropped(delta)

    def _close_current(self) -> None:
        with self._lock:
            source = self._source
        if source is not None:
            source.close()

    def _interruptible_sleep(self, seconds: float) -> None:
        self._wake.clear()
        if not (self._stop.is_set() or self._restart.is_set()):
            self._wake.wait(seconds)

    def _idle_until_restart(self) -> None:
        while True:
            self._wake.clear()
            if self._stop.is_set() or self._restart.is_set():
                return
            self._wake.wait()
