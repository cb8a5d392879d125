"""``portwatch daemon``: capture, count, serve metrics; reload on SIGHUP, stop on SIGTERM.

Threads: the main thread handles signals and housekeeping (flow expiry, drop
counters, systemd watchdog); one capture thread runs the packet source and
feeds the metrics core; the web server answers scrapes from a snapshot.

A source whose run ends or fails is restarted with exponential back-off
(0.5 s doubling to 30 s, reset after a run of a minute) and each restart is
counted in ``portwatch_backend_restarts_total{backend}``; capture never stops
silently. A finite source (replay) is not restarted: the daemon keeps
serving what it counted, and a SIGHUP plays the files again.

Everything that touches the outside (the source factory, the registry
loader, clocks, the environment, the log stream) is passed in.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from prometheus_client import CollectorRegistry

from portwatch.capture.live.source import PacketSource
from portwatch.daemon.collector import register_collectors
from portwatch.daemon.config import Backend, DaemonConfig
from portwatch.daemon.counters import RegistryFacts, TrafficCounters
from portwatch.daemon.web import WebServer
from portwatch.daemon.web_config import WebSettings, load_web_settings
from portwatch.errors import BackendError, ConfigError, PortwatchError
from portwatch.porttable.cache import load_table
from portwatch.porttable.table import PortTable

__all__ = ["Daemon", "DaemonDeps", "Notifier", "make_source"]

#: SIGTERM must end the process within 5 s; these budgets add up to less.
STOP_CAPTURE_S = 3.0
HOUSEKEEPING_S = 1.0
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_RUN_S = 60.0


class Notifier:
    """sd_notify(3) over ``NOTIFY_SOCKET`` (AF_UNIX datagram); silent when unset."""

    def __init__(self, env: Mapping[str, str]) -> None:
        path = env.get("NOTIFY_SOCKET", "")
        self._address = ("\0" + path[1:]) if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        owned = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and owned else 0.0

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *lines: str) -> None:
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall("\n".join(lines).encode())
        except OSError:
            pass  # systemd gone or socket absent: nothing to tell


class Wakeup:
    """A self-pipe the main loop sleeps on.

    Signal handlers run in the main thread between bytecodes, possibly while
    that thread holds a ``threading.Event``'s internal lock; calling
    ``Event.set()`` from a handler can then deadlock. Writing a byte to a
    non-blocking pipe cannot, so handlers only set plain flags and poke this.
    """

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._closed = False

    def poke(self) -> None:
        if self._closed:
            return  # the descriptor number may already belong to another file
        # A full pipe already holds a pending wake-up: nothing is lost.
        with contextlib.suppress(OSError):
            os.write(self._write_fd, b"\0")

    def wait(self, timeout: float) -> None:
        """Sleep until poked or ``timeout`` s pass; consume pending pokes."""
        try:
            ready, _, _ = select.select([self._read_fd], [], [], timeout)
            if ready:
                os.read(self._read_fd, 4096)
        except (BlockingIOError, InterruptedError):
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


TableLoader = Callable[[DaemonConfig], tuple[PortTable, RegistryFacts]]
SourceFactory = Callable[[DaemonConfig], PacketSource]
ConfigLoader = Callable[[], DaemonConfig]


@dataclass(slots=True)
class DaemonDeps:
    """The daemon's edges, injectable for tests."""

    load_config: ConfigLoader
    load_table: TableLoader
    make_source: SourceFactory
    env: Mapping[str, str]
    log: TextIO = sys.stderr
    monotonic: Callable[[], float] = time.monotonic
    wall_ns: Callable[[], int] = time.time_ns


def default_table_loader(cache: Path | None) -> TableLoader:
    def load(config: DaemonConfig) -> tuple[PortTable, RegistryFacts]:
        if not config.registry_sources:
            raise ConfigError("no registry sources: set [registry] sources or --registry")
        loaded = load_table(list(config.registry_sources), cache=cache)
        return loaded.table, RegistryFacts.of(loaded.table, loaded.full_registry())
    return load


def make_source(config: DaemonConfig) -> PacketSource:
    """The configured backend; each is imported only when chosen."""
    cap = config.capture
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


class Daemon:
    def __init__(
        self, deps: DaemonDeps, collector_registry: CollectorRegistry | None = None
    ) -> None:
        self.deps = deps
        self.collector_registry = (
            collector_registry if collector_registry is not None else CollectorRegistry())
        self.notifier = Notifier(deps.env)
        self._stop = threading.Event()
        # Set by signal handlers: plain flags, read by the main loop (see Wakeup).
        self._stop_requested = False
        self._reload_requested = False
        self._wakeup = Wakeup()
        self._restart_capture = threading.Event()
        self._finished = threading.Event()  # a finite source ran to its end
        self._state_lock = threading.Lock()
        self._source: PacketSource | None = None
        self._capturing = False
        self._health_reason = "capture not started"
        self._capture_thread: threading.Thread | None = None
        self._web: WebServer | None = None
        self._drops_seen: dict[str, int] = {}
        self.config = deps.load_config()
        table, facts = deps.load_table(self.config)
        self.counters = TrafficCounters(table, self.config.flows, facts)

    # -- logging ----------------------------------------------------------------
    def log(self, message: str) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        print(f"{stamp} portwatch: {message}", file=self.deps.log, flush=True)

    # -- health -----------------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        with self._state_lock:
            return self._capturing, self._health_reason

    def _set_health(self, capturing: bool, reason: str) -> None:
        with self._state_lock:
            self._capturing, self._health_reason = capturing, reason

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        register_collectors(self.collector_registry, self.counters.snapshot)
        settings = _web_settings(self.config)
        self._web = WebServer(self.config.listen_address, self.collector_registry, self.health,
                              settings)
        self._web.start()
        self.log(f"listening on {self.config.listen_address} "
                 f"({'https' if settings and settings.tls else 'http'}) port {self._web.port}")
        self._capture_thread = threading.Thread(target=self._capture_loop, name="capture",
                                                daemon=True)
        self._capture_thread.start()
        self.notifier.send("READY=1", f"STATUS=capturing with {self.config.capture.backend.value}",
                           f"MAINPID={os.getpid()}")

    @property
    def port(self) -> int:
        return self._web.port if self._web is not None else 0

    def request_stop(self) -> None:
        """Ask ``run`` to return; safe from a signal handler or any thread."""
        self._stop_requested = True
        self._wakeup.poke()

    def request_reload(self) -> None:
        """Ask ``run`` to reload the configuration; safe from a signal handler."""
        self._reload_requested = True
        self._wakeup.poke()

    def _tick_s(self) -> float:
        """How long the main loop may sleep: housekeeping, or the watchdog if sooner."""
        watchdog = self.notifier.watchdog_s
        return min(HOUSEKEEPING_S, watchdog) if watchdog else HOUSEKEEPING_S

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def run(self) -> int:
        """Serve until asked to stop; return the exit status."""
        self.start()
        last_watchdog = 0.0
        while not self._stop_requested:
            self._wakeup.wait(self._tick_s())
            if self._stop_requested:
                break
            if self._reload_requested:
                self._reload_requested = False
                self._do_reload()
            self._housekeeping()
            now = self.deps.monotonic()
            if self.notifier.watchdog_s and now - last_watchdog >= self.notifier.watchdog_s:
                self.notifier.send("WATCHDOG=1")
                last_watchdog = now
        return self.shutdown()

    def shutdown(self) -> int:
        self.notifier.send("STOPPING=1")
        self.log("stopping")
        self._stop.set()
        self._close_source()
        if self._capture_thread is not None:
            self._capture_thread.join(STOP_CAPTURE_S)
        self._poll_drops()
        if self._web is not None:
            self._web.stop()
        self._wakeup.close()
        snap = self.counters.snapshot()
        packets = sum(v[0] for v in snap.traffic.values())
        self.log(f"stopped: {sum(snap.received.values())} packets received, "
                 f"{sum(snap.dropped.values())} dropped, {packets} in flows, "
                 f"{snap.active_flows} flows active")
        return 0

    def _do_reload(self) -> None:
        self.notifier.send("RELOADING=1")
        try:
            config = self.deps.load_config()
            table, facts = self.deps.load_table(config)
        except PortwatchError as exc:
            self.log(f"reload failed, keeping the running configuration: {exc}")
            self.notifier.send("READY=1")
            return
        if config.listen_address != self.config.listen_address:
            self.log("web listen address changes take effect on restart only")
        old_capture = self.config.capture
        self.config = config
        self.counters.reload(table, config.flows, facts)
        self.log(f"reloaded: registry {', '.join(p for p, _, _ in facts.sources)}, "
                 f"{sum(facts.records.values())} records")
        if config.capture != old_capture or self._finished.is_set():
            self.log("restarting the capture (settings changed, or the replay had finished)")
            self._restart_capture.set()
            self._close_source()
        self.notifier.send("READY=1")

    def _housekeeping(self) -> None:
        if self.config.capture.backend is Backend.REPLAY:
            now = self.counters.latest_ns  # replayed time, not the wall clock
        else:
            now = self.deps.wall_ns()
        if now:
            self.counters.expire(now)
        self._poll_drops()

    def _poll_drops(self) -> None:
        with self._state_lock:
            source = self._source
        if source is None:
            return
        current = source.dropped()
        with self._state_lock:
            delta = {k: v - self._drops_seen.get(k, 0) for k, v in current.items()}
            self._drops_seen = current
        self.counters.add_dropped(delta)

    def _close_source(self) -> None:
        with self._state_lock:
            source = self._source
        if source is not None:
            source.close()

    # -- capture ------------------------------------------------------------------
    def _capture_loop(self) -> None:
        backoff = BACKOFF_MIN_S
        first = True
        while not self._stop.is_set():
            config = self.config
            error: str | None
            try:
                source = self.deps.make_source(config)
            except PortwatchError as exc:
                source = None
                error = str(exc)
            if source is not None:
                self.counters.declare(source.backend, config.capture.interfaces
                                  if config.capture.backend is not Backend.REPLAY else ())
                if not first:
                    self.counters.count_restart(source.backend)
                first = False
                started = self.deps.monotonic()
                error = self._run_source(source)
                if self._stop.is_set():
                    return
                if error is None and source.finite:
                    self._set_health(False, f"{source.backend}: input finished; serving counts")
                    self.log(f"{source.backend} finished; still serving metrics")
                    self._finished.set()
                    self._wait_for_restart_request()
                    self._finished.clear()
                    first = True
                    continue
                if self._restart_capture.is_set():
                    self._restart_capture.clear()
                    first = True
                    continue
                if self.deps.monotonic() - started > STABLE_RUN_S:
                    backoff = BACKOFF_MIN_S
            else:
                self.counters.count_restart(config.capture.backend.value)
            reason = error or "capture ended"
            self._set_health(False, f"{config.capture.backend.value}: {reason}; "
                                    f"restarting in {backoff:g}s")
            self.log(f"capture backend {config.capture.backend.value} stopped: {reason}; "
                     f"restarting in {backoff:g}s")
            if self._stop.wait(backoff):
                return
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    def _wait_for_restart_request(self) -> None:
        while not self._stop.is_set() and not self._restart_capture.is_set():
            self._stop.wait(HOUSEKEEPING_S)
        self._restart_capture.clear()

    def _run_source(self, source: PacketSource) -> str | None:
        """Feed every batch of one run; the error that ended it, or ``None``."""
        with self._state_lock:
            self._source = source
            self._drops_seen = {}
        self._set_health(True, f"capturing with {source.backend}")
        self.log(f"capture started: {source.backend} "
                 f"{' '.join(self.config.capture.interfaces) if not source.finite else ''}")
        try:
            for batch in source.batches():
                self.counters.feed(batch, source.interface_names())
                if self._stop.is_set():
                    break
            return None
        except BackendError as exc:
            return exc.message
        except Exception as exc:  # a bug must not end capture silently: log and restart
            return f"unexpected {type(exc).__name__}: {exc}"
        finally:
            self._poll_drops()
            with self._state_lock:
                self._source = None
            if self._stop.is_set():
                source.close()


def _web_settings(config: DaemonConfig) -> WebSettings | None:
    return load_web_settings(config.web_config_file) if config.web_config_file else None
