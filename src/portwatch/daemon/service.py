"""``portwatch daemon``: capture, count, serve metrics; reload on SIGHUP, stop on SIGTERM.

``Daemon`` is the lifecycle: start, reload, stop and the signal self-pipe.
It composes a ``CaptureSupervisor`` (the capture thread: one source after
another, restarts with back-off; see ``daemon.supervisor``), the
``TrafficCounters`` the sources feed, the ``WebServer`` that answers scrapes
from a snapshot, and a ``SystemdNotifier``. The main thread handles signals
and housekeeping (flow expiry, drop counters, the systemd watchdog).

A reload builds the new configuration, port table and web settings first
and applies them only if all three could be built: whatever goes wrong while
reloading (a bad file, a hostile registry, an exhausted allocator) keeps the
running state and is logged on one line.

Everything that touches the outside (the source factory, the registry
loader, clocks, the environment, the log stream) is passed in ``DaemonDeps``.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from prometheus_client import CollectorRegistry

from portwatch.capture.live.source import PacketSource
from portwatch.daemon.collector import register_collectors
from portwatch.daemon.config import Backend, DaemonConfig
from portwatch.daemon.counters import RegistryFacts, TrafficCounters
from portwatch.daemon.notify import SystemdNotifier
from portwatch.daemon.privileges import Isolation, keep_privileges
from portwatch.daemon.supervisor import (
    Backoff,
    CaptureSupervisor,
    OutcomeKind,
    RunOutcome,
    SourceFactory,
    make_source,
)
from portwatch.daemon.web import WebServer
from portwatch.daemon.web_config import WebSettings, load_web_settings
from portwatch.errors import ConfigError, PortwatchError
from portwatch.porttable.cache import load_table
from portwatch.porttable.table import PortTable

__all__ = ["Daemon", "DaemonDeps", "default_table_loader", "make_source"]

#: SIGTERM must end the process within 5 s; these budgets add up to less.
STOP_CAPTURE_S = 3.0
HOUSEKEEPING_S = 1.0


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
ConfigLoader = Callable[[], DaemonConfig]


@dataclass(slots=True)
class DaemonDeps:
    """The daemon's edges, injectable for tests.

    ``config_file`` only names the configuration in log lines. ``sleep``
    replaces the capture supervisor's interruptible back-off wait (a fake
    clock's ``sleep`` in tests); ``None`` keeps the real one. ``isolate_capture``
    runs once, after the configuration is read and before the registry is:
    the command line passes ``privileges.separate_capture_privileges``.
    """

    load_config: ConfigLoader
    load_table: TableLoader
    make_source: SourceFactory
    env: Mapping[str, str]
    log: TextIO = sys.stderr
    monotonic: Callable[[], float] = time.monotonic
    wall_ns: Callable[[], int] = time.time_ns
    sleep: Callable[[float], None] | None = None
    config_file: str = ""
    backoff: Backoff = field(default_factory=Backoff)
    isolate_capture: Isolation = keep_privileges


def default_table_loader(cache: Path | None) -> TableLoader:
    def load(config: DaemonConfig) -> tuple[PortTable, RegistryFacts]:
        if not config.registry_sources:
            raise ConfigError("no registry sources: set [registry] sources or --registry")
        loaded = load_table(list(config.registry_sources), cache=cache)
        return loaded.table, RegistryFacts.of(loaded.table, loaded.full_registry())
    return load


class Daemon:
    """The daemon's lifecycle: ``start``, ``reload``, ``shutdown``; ``run`` for a process."""

    def __init__(
        self, deps: DaemonDeps, collector_registry: CollectorRegistry | None = None
    ) -> None:
        self.deps = deps
        self.collector_registry = (
            collector_registry if collector_registry is not None else CollectorRegistry())
        self.notifier = SystemdNotifier(deps.env)
        # Set by signal handlers: plain flags, read by the main loop (see Wakeup).
        self._stop_requested = False
        self._reload_requested = False
        self._wakeup = Wakeup()
        self._health_lock = threading.Lock()
        self._capturing = False
        self._health_reason = "capture not started"
        self._capture_thread: threading.Thread | None = None
        self._web: WebServer | None = None
        self.config = deps.load_config()
        # Before the registry, the web settings or any packet is parsed.
        make_source, self._privileges = deps.isolate_capture(self.config, deps.make_source)
        self.web_settings = _web_settings(self.config)
        table, facts = deps.load_table(self.config)
        self.counters = TrafficCounters(table, self.config.flows, facts)
        if self.config.detect_enabled:
            self.counters.enable_detection()
        self.supervisor = CaptureSupervisor(
            make_source, lambda: self.config, self.counters, backoff=deps.backoff,
            clock=deps.monotonic, sleep=deps.sleep, on_start=self._capture_started,
            on_outcome=self._capture_ended)

    # -- logging and health -------------------------------------------------------
    def log(self, message: str) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        print(f"{stamp} portwatch: {message}", file=self.deps.log, flush=True)

    def health(self) -> tuple[bool, str]:
        """/healthz: capturing or not, and why; the eBPF backend says where it is attached."""
        with self._health_lock:
            capturing, reason = self._capturing, self._health_reason
        source = self.supervisor.current_source()
        attached = getattr(source, "attached", None)
        if capturing and callable(attached):
            names = list(attached())
            reason = f"{reason}: program attached on {', '.join(names) or 'no interface'}"
            capturing = set(names) == set(self.config.capture.interfaces)
        return capturing, reason

    def _set_health(self, capturing: bool, reason: str) -> None:
        with self._health_lock:
            self._capturing, self._health_reason = capturing, reason
        self.notifier.status(reason)  # `systemctl status` shows what /healthz says

    def _capture_started(self, source: PacketSource, config: DaemonConfig) -> None:
        self._set_health(True, f"capturing with {source.backend}")
        where = "" if source.finite else " ".join(config.capture.interfaces)
        self.log(f"capture started: {source.backend} {where}".rstrip())

    def _capture_ended(self, outcome: RunOutcome) -> None:
        if outcome.kind is OutcomeKind.FINISHED:
            self._set_health(False, f"{outcome.backend}: input finished; serving counts")
            self.log(f"{outcome.backend} finished; still serving metrics")
        elif outcome.kind is OutcomeKind.FAILED:
            self._set_health(False, f"{outcome.backend}: {outcome.message}; "
                                    f"restarting in {outcome.delay_s:g}s")
            self.log(f"capture backend {outcome.backend} stopped: {outcome.message}; "
                     f"restarting in {outcome.delay_s:g}s")
        else:
            self._set_health(False, f"{outcome.backend}: stopped")

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        """Serve /metrics, start the capture thread, tell systemd we are ready."""
        register_collectors(self.collector_registry, self.counters.snapshot)
        self._web = WebServer(self.config.listen_address, self.collector_registry, self.health,
                              self.web_settings, log=self.log)
        self._web.start()
        tls = self.web_settings is not None and self.web_settings.tls
        self.log(f"listening on {self.config.listen_address} "
                 f"({'https' if tls else 'http'}) port {self._web.port}")
        if self._privileges:
            self.log(self._privileges)
        self._capture_thread = threading.Thread(target=self.supervisor.run, name="capture",
                                                daemon=True)
        self._capture_thread.start()
        self.notifier.ready(f"capturing with {self.config.capture.backend.value}")

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

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def _tick_s(self) -> float:
        """How long the main loop may sleep: housekeeping, or the watchdog if sooner."""
        watchdog = self.notifier.watchdog_s
        return min(HOUSEKEEPING_S, watchdog) if watchdog else HOUSEKEEPING_S

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
                self.reload()
            self.housekeeping()
            now = self.deps.monotonic()
            if self.notifier.watchdog_s and now - last_watchdog >= self.notifier.watchdog_s:
                self.notifier.watchdog()
                last_watchdog = now
        return self.shutdown()

    def shutdown(self) -> int:
        """Stop capture and the web server within the stop budget; log a summary."""
        self.notifier.stopping()
        self.log("stopping")
        self.supervisor.stop()
        if self._capture_thread is not None:
            # A source made just as stop() ran may have missed the close: ask again.
            self._capture_thread.join(STOP_CAPTURE_S / 3)
            if self._capture_thread.is_alive():
                self.supervisor.stop()
                self._capture_thread.join(STOP_CAPTURE_S * 2 / 3)
        self.supervisor.poll_drops()
        self.counters.stop_detection()  # nDPI finishes what it was given; counted in the summary
        if self._web is not None:
            self._web.stop()
        self._wakeup.close()
        snap = self.counters.snapshot()
        packets = sum(v[0] for v in snap.traffic.values())
        self.log(f"stopped: {sum(snap.received.values())} packets received, "
                 f"{sum(snap.dropped.values())} dropped, {packets} in flows, "
                 f"{snap.active_flows} flows active")
        return 0

    def reload(self) -> bool:
        """Re-read configuration, registry and web settings; keep everything if any fails.

        Returns whether the new state was applied. Any exception counts as a
        failure (a registry nested deep enough for RecursionError, a
        MemoryError, an unreadable file): the daemon must outlive a bad reload.
        """
        self.notifier.reloading()
        reading = self.deps.config_file or "the configuration"
        try:
            config = self.deps.load_config()
            reading = ", ".join(config.registry_sources) or "the registry"
            table, facts = self.deps.load_table(config)
            reading = config.web_config_file
            settings = _web_settings(config)
        except Exception as exc:  # whatever it is, the running state stays
            self.log(f"reload failed, keeping the running configuration: "
                     f"{_error_line(exc, reading)}")
            self.notifier.ready(self.health()[1])
            return False
        self._apply(config, table, facts, settings)
        self.notifier.ready(self.health()[1])
        return True

    def _apply(self, config: DaemonConfig, table: PortTable, facts: RegistryFacts,
               settings: WebSettings | None) -> None:
        if config.listen_address != self.config.listen_address:
            self.log("web listen address changes take effect on restart only")
        old_capture, old_settings = self.config.capture, self.web_settings
        was_detecting = self.config.detect_enabled
        self.config, self.web_settings = config, settings
        self.counters.reload(table, config.flows, facts)
        if config.detect_enabled != was_detecting:
            if config.detect_enabled:
                self.counters.enable_detection()
            else:
                self.counters.stop_detection()
            self.log(f"protocol detection {'on' if config.detect_enabled else 'off'}")
        self.log(f"reloaded: registry {', '.join(p for p, _, _ in facts.sources)}, "
                 f"{sum(facts.records.values())} records")
        if settings != old_settings:
            new = settings or WebSettings()
            if self._web is not None:
                self._web.update_settings(new)
            self.log(f"web settings reloaded from {config.web_config_file or '(none)'}: "
                     f"{describe_web_change(old_settings or WebSettings(), new)}")
        if config.capture != old_capture or self.supervisor.finished:
            self.log("restarting the capture (settings changed, or the replay had finished)")
            self.supervisor.request_restart()

    def housekeeping(self) -> None:
        """Expire idle flows and collect the source's drop counters."""
        if self.config.capture.backend is Backend.REPLAY:
            now = self.counters.latest_ns  # replayed time, not the wall clock
        else:
            now = self.deps.wall_ns()
        if now:
            self.counters.expire(now)
        self.supervisor.poll_drops()


def _web_settings(config: DaemonConfig) -> WebSettings | None:
    return load_web_settings(config.web_config_file) if config.web_config_file else None


def describe_web_change(old: WebSettings, new: WebSettings) -> str:
    """What changed, for the log: users added, removed or re-hashed; TLS on, off or new."""
    parts = []
    added = sorted(set(new.basic_auth_users) - set(old.basic_auth_users))
    removed = sorted(set(old.basic_auth_users) - set(new.basic_auth_users))
    changed = sorted(u for u in set(old.basic_auth_users) & set(new.basic_auth_users)
                     if old.basic_auth_users[u] != new.basic_auth_users[u])
    for what, users in (("added", added), ("removed", removed), ("new password", changed)):
        if users:
            parts.append(f"users {what}: {', '.join(users)}")
    if old.tls != new.tls:
        parts.append(f"TLS {'on' if new.tls else 'off'}")
    elif new.tls and (old.cert_file, old.key_file, old.client_ca_file, old.client_auth_type) \
            != (new.cert_file, new.key_file, new.client_ca_file, new.client_auth_type):
        parts.append("TLS files or client authentication changed")
    return "; ".join(parts) or "no effective change"


def _error_line(exc: BaseException, reading: str) -> str:
    """One line naming the file: ``str(exc)`` if it names one, else ``reading: Type: text``."""
    if isinstance(exc, PortwatchError):
        text = str(exc) if exc.path else f"{reading}: {exc}"
    else:
        detail = str(exc)
        text = f"{reading}: {type(exc).__name__}{': ' + detail if detail else ''}"
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."
