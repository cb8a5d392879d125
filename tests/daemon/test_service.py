"""The Daemon's lifecycle in-process: restarts, finite sources, reload, stop.

Sources are ``portwatch.testing.FakeSource``s and back-off sleeps go to a
fake clock, so these run in milliseconds and without root.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from daemon.conftest import Harness, held, udp_batch, write_config
from portwatch.daemon.config import DaemonConfig
from portwatch.daemon.counters import RegistryFacts
from portwatch.daemon.service import Daemon, default_table_loader
from portwatch.errors import RegistryFormatError
from portwatch.ports import Transport
from portwatch.porttable.table import PortTable
from portwatch.testing import FakeSource

BCRYPT = "$2y$10$" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0"


def fed(daemon: Daemon) -> int:
    return sum(daemon.counters.snapshot().received.values())


def reload_failures(h: Harness) -> list[str]:
    return [line for line in h.lines() if "reload failed" in line]


def test_a_failing_source_is_restarted_with_back_off_and_reported(harness: Harness) -> None:
    def stop_after_three(_: float) -> None:
        if len(harness.clock.sleeps) == 3 and harness.daemon is not None:
            harness.daemon.supervisor.stop()
    harness.clock.on_sleep = stop_after_three
    daemon = harness.start(lambda c: FakeSource([udp_batch(53, 2)], fail_with="link down"),
                           sleep=harness.clock.sleep)
    assert daemon._capture_thread is not None
    daemon._capture_thread.join(10)
    assert harness.clock.sleeps == [0.5, 1, 2]
    assert daemon.counters.snapshot().restarts == {"fake": 2}
    assert fed(daemon) == 6
    stopped = [line for line in harness.lines() if "stopped: link down" in line]
    assert [line.rsplit(" ", 1)[1] for line in stopped] == ["0.5s", "1s", "2s"]
    assert daemon.health() == (False, "fake: link down; restarting in 2s")


def test_a_finite_source_finishes_and_a_reload_plays_it_again_uncounted(
        harness: Harness) -> None:
    finished = threading.Event()
    daemon = harness.start(lambda c: FakeSource([udp_batch(53, 4)], finite=True,
                                                backend="replay"))
    original = daemon._capture_ended
    daemon.supervisor._on_outcome = lambda o: (original(o), finished.set())  # type: ignore[func-returns-value]
    while not daemon.supervisor.finished:
        finished.wait(0.01)
    assert daemon.health() == (False, "replay: input finished; serving counts")
    finished.clear()
    assert daemon.reload()
    assert finished.wait(10)
    while not daemon.supervisor.finished:
        finished.wait(0.01)
    assert fed(daemon) == 8
    assert len(harness.sources) == 2
    assert daemon.counters.snapshot().restarts == {"replay": 0}
    assert harness.clock.sleeps == []


def test_reload_keeps_counters_and_names_new_packets_by_the_new_registry(
        harness: Harness) -> None:
    daemon = harness.start(held(udp_batch(53, 3)))
    assert daemon.counters.table.service_of(Transport.UDP, 53) == "domain"
    while fed(daemon) < 3:
        threading.Event().wait(0.01)
    before = daemon.counters.snapshot()
    harness.registry.write_text("renamed-dns 53/udp\n")
    assert daemon.reload()
    after = daemon.counters.snapshot()
    assert after.traffic == before.traffic
    assert after.received == before.received
    assert daemon.counters.table.service_of(Transport.UDP, 53) == "renamed-dns"
    assert len(harness.sources) == 1  # capture settings unchanged: no restart
    assert any("reloaded: registry" in line for line in harness.lines())


def test_reload_with_changed_capture_settings_restarts_the_capture_uncounted(
        harness: Harness) -> None:
    daemon = harness.start(held(udp_batch(53, 1)))
    while fed(daemon) < 1:
        threading.Event().wait(0.01)
    write_config(harness.config, harness.registry, extra='bpf_filter = "udp"\n')
    assert daemon.reload()
    while len(harness.sources) < 2 or fed(daemon) < 2:
        threading.Event().wait(0.01)
    assert daemon.config.capture.bpf_filter == "udp"
    assert daemon.counters.snapshot().restarts == {"fake": 0}


@pytest.mark.parametrize(
    ("config_text", "message"),
    [
        ("[capture\n", "not valid TOML"),
        ("[flows]\nactive_timeout_seconds = inf\n", "active_timeout_seconds"),
        ("[capture]\nbackend = 'pcap'\n", "expected one of dumpcap"),
    ],
)
def test_a_bad_config_on_reload_keeps_the_running_state_and_logs_one_line(
        harness: Harness, config_text: str, message: str) -> None:
    daemon = harness.start(held(udp_batch(53, 2)))
    config, table = daemon.config, daemon.counters.table
    harness.config.write_text(config_text)
    assert not daemon.reload()
    failures = reload_failures(harness)
    assert len(failures) == 1
    assert f"{harness.config}: " in failures[0]
    assert message in failures[0]
    assert daemon.config is config
    assert daemon.counters.table is table


def test_a_bad_registry_on_reload_keeps_the_running_table_and_logs_one_line(
        harness: Harness) -> None:
    daemon = harness.start(held(udp_batch(53, 2)))
    table = daemon.counters.table
    harness.registry.write_bytes(b"\x00\x01 not a registry in any form \xff" * 10)
    assert not daemon.reload()
    failures = reload_failures(harness)
    assert len(failures) == 1
    assert str(harness.registry) in failures[0]
    assert daemon.counters.table is table
    assert daemon.counters.table.service_of(Transport.UDP, 53) == "domain"


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (RecursionError("maximum recursion depth exceeded"),
         "RecursionError: maximum recursion depth exceeded"),
        (MemoryError(), "MemoryError"),
        (OSError(5, "Input/output error"), "OSError: [Errno 5] Input/output error"),
        (ValueError("bad\nvalue"), "ValueError: bad value"),
        (RegistryFormatError("not a registry"), "not a registry"),
    ],
)
def test_any_exception_while_reloading_keeps_the_daemon_and_names_the_file(
        harness: Harness, error: BaseException, shown: str) -> None:
    loader = default_table_loader(None)
    calls = []

    def load_table(config: DaemonConfig) -> tuple[PortTable, RegistryFacts]:
        calls.append(config)
        if len(calls) > 1:
            raise error
        return loader(config)

    daemon = harness.start(held(udp_batch(53, 1)), load_table=load_table)
    config = daemon.config
    assert not daemon.reload()
    failures = reload_failures(harness)
    assert len(failures) == 1
    assert failures[0].endswith(f"{harness.registry}: {shown}")
    assert daemon.config is config
    assert daemon.health()[1].startswith("capturing") or daemon.health()[1] == \
        "capture not started"


def test_sighup_runs_a_reload_in_the_main_loop_and_sigterm_stops_it(
        harness: Harness) -> None:
    daemon = harness.start(held(udp_batch(53, 1)))
    daemon.shutdown()  # this test drives run() itself
    harness.daemon = daemon = Daemon(harness.deps())
    previous = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    daemon.install_signal_handlers()
    status: list[int] = []
    runner = threading.Thread(target=lambda: status.append(daemon.run()))
    try:
        runner.start()
        while not daemon.port or fed(daemon) < 1:
            runner.join(0.01)
        harness.config.write_text("[capture\n")
        os.kill(os.getpid(), signal.SIGHUP)
        while not reload_failures(harness):
            runner.join(0.01)
        assert runner.is_alive()
        os.kill(os.getpid(), signal.SIGTERM)
        runner.join(10)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    harness.stopped = True
    assert status == [0]
    assert len(reload_failures(harness)) == 1
    assert any(line.endswith("packets received, 0 dropped, 1 in flows, 1 flows active")
               for line in harness.lines())


def test_shutdown_ends_a_held_capture_and_the_web_server(harness: Harness) -> None:
    source = FakeSource([udp_batch(53, 1)], hold=True)
    daemon = harness.start(lambda c: source)
    assert source.holding.wait(10)
    assert harness.stop() == 0
    assert daemon._capture_thread is not None
    assert not daemon._capture_thread.is_alive()
    assert not source.holding.is_set()
    assert harness.lines()[-1].endswith("1 packets received, 0 dropped, 1 in flows, "
                                        "1 flows active")


def test_web_settings_are_reloaded_and_the_change_is_logged(harness: Harness) -> None:
    web = harness.tmp / "web.yml"
    web.write_text(f"basic_auth_users:\n  alice: {BCRYPT}\n")
    write_config(harness.config, harness.registry, web=web)
    pytest.importorskip("bcrypt")
    daemon = harness.start(held())
    assert daemon._web is not None
    web.write_text(f"basic_auth_users:\n  bob: {BCRYPT}\n  carol: {BCRYPT}\n")
    assert daemon.reload()
    assert dict(daemon._web.settings.basic_auth_users) == {"bob": BCRYPT, "carol": BCRYPT}
    assert any(line.endswith(f"web settings reloaded from {web}: users added: bob, carol; "
                             "users removed: alice") for line in harness.lines())


def test_a_bad_web_config_on_reload_keeps_the_old_settings(harness: Harness) -> None:
    web = harness.tmp / "web.yml"
    web.write_text(f"basic_auth_users:\n  alice: {BCRYPT}\n")
    write_config(harness.config, harness.registry, web=web)
    pytest.importorskip("bcrypt")
    daemon = harness.start(held())
    assert daemon._web is not None
    settings = daemon._web.settings
    web.write_text("basic_auth_users:\n  alice: plaintext\n")
    assert not daemon.reload()
    failures = reload_failures(harness)
    assert len(failures) == 1
    assert f"{web}:2: basic_auth_users.alice: expected a bcrypt hash" in failures[0]
    assert daemon._web.settings is settings
    assert daemon.web_settings is settings



def test_protocol_detection_follows_the_config_across_reloads(harness: Harness) -> None:
    pytest.importorskip("nfstream", reason="nfstream (nDPI) is not installed")
    plain = harness.config.read_text().replace(
        'backend = "scapy"', 'backend = "dumpcap"\nsnaplen = 1024')
    harness.config.write_text(plain + "[detect]\nenabled = true\n")
    daemon = harness.start(held(udp_batch(53, 3)))
    assert daemon.counters.detector is not None
    harness.config.write_text(plain)
    assert daemon.reload()
    assert daemon.counters.detector is None
    assert any("protocol detection off" in line for line in harness.lines())
