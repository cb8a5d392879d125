"""The daemon as a process: reload, stop, notify, restarts, bad flags."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.daemon_proc import REPO, DaemonProcess, value

SAMPLE = REPO / "pcaps" / "sample.pcapng"


def _config(path: Path, sources: list[Path], replay: Path | None = None) -> Path:
    text = "[registry]\nsources = [" + ", ".join(f'"{s}"' for s in sources) + "]\n"
    text += '[web]\nlisten_address = "127.0.0.1:0"\n'
    text += '[capture]\nbackend = "replay"\ninterfaces = ["lo"]\n'
    path.write_text(text)
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"PORTWATCH_CACHE_DIR": str(tmp_path / "cache")}


def test_sigterm_stops_within_five_seconds_with_status_zero(
        tmp_path: Path, official_csv: Path, env: dict[str, str]) -> None:
    cfg = _config(tmp_path / "pw.toml", [official_csv])
    with DaemonProcess(["daemon", "--config.file", str(cfg), "--replay", str(SAMPLE),
                        "--replay-speed", "0"], env=env) as d:
        d.wait_for_log("finished", 20)
        started = time.monotonic()
        assert d.stop(timeout=5) == 0
        assert time.monotonic() - started < 5
        assert any("stopped:" in line for line in d.lines)


def test_sighup_with_a_new_registry_renames_services_and_keeps_counters(
        tmp_path: Path, official_csv: Path, env: dict[str, str]) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify.sock"))
        notify.settimeout(10)
        _reload_and_stop(tmp_path, official_csv, env, notify)


def _reload_and_stop(tmp_path: Path, official_csv: Path, env: dict[str, str],
                     notify: socket.socket) -> None:
    env = {**env, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    services = tmp_path / "services"
    services.write_text("renamed-http 80/tcp\nrenamed-https 443/tcp\n")
    cfg = _config(tmp_path / "pw.toml", [official_csv])
    with DaemonProcess(["daemon", "--config.file", str(cfg), "--replay", str(SAMPLE),
                        "--replay-speed", "0"], env=env) as d:
        messages = []
        while "READY=1" not in messages:
            messages += notify.recv(4096).decode().split("\n")
        d.wait_for_log("finished", 20)
        before = d.samples()
        http = value(before, "portwatch_packets_total", service="http")
        total = value(before, "portwatch_packets_total")
        assert http > 0
        # New registry; SIGHUP also plays the finished replay again.
        _config(cfg, [services])
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for_log("reloaded", 20)
        after = d.wait_until(lambda s: value(s, "portwatch_packets_total") >= 2 * total, 20)
        assert value(after, "portwatch_packets_total", service="http") == http  # not reset
        assert value(after, "portwatch_packets_total", service="renamed-http") == http
        assert value(after, "portwatch_packets_total") == 2 * total
        while "STOPPING=1" not in messages:
            if d.proc.poll() is None and "RELOADING=1" in messages:
                d.proc.terminate()
            messages += notify.recv(4096).decode().split("\n")
        assert "RELOADING=1" in messages
        assert "WATCHDOG=1" in messages
        assert d.stop() == 0


def test_a_storm_of_signals_never_wedges_the_main_loop(
        tmp_path: Path, official_csv: Path, env: dict[str, str]) -> None:
    """Handlers must not take locks the interrupted main thread may hold."""
    cfg = _config(tmp_path / "pw.toml", [official_csv])
    with DaemonProcess(["daemon", "--config.file", str(cfg), "--replay", str(SAMPLE),
                        "--replay-speed", "0"], env=env) as d:
        d.wait_for_log("finished", 20)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            d.proc.send_signal(signal.SIGHUP)
            time.sleep(0.001)
        d.wait_for_log("reloaded", 20)
        assert d.stop(timeout=5) == 0
        assert any("stopped:" in line for line in d.lines)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--web.listen-address", "nope"], "expected HOST:PORT"),
        (["--backend", "replay"], "needs --replay FILE"),
        (["--config.file", "/nonexistent/pw.toml"], "cannot read the configuration"),
        (["--config.file", "INF_CONFIG"], "pw.toml: [flows] active_timeout_seconds = inf: "
                                          "expected seconds more than 0 and at most 604800"),
        (["--backend", "replay", "--replay", "x.pcap", "--replay-speed", "inf"],
         "--replay-speed inf: expected a finite number"),
        (["--backend", "replay", "--replay", "x.pcap", "--replay-speed", "nan"],
         "--replay-speed nan: expected a finite number"),
    ],
)
def test_bad_flags_and_config_exit_2_with_one_line(
        args: list[str], message: str, official_csv: Path, env: dict[str, str],
        tmp_path: Path) -> None:
    inf_config = tmp_path / "pw.toml"
    inf_config.write_text("[flows]\nactive_timeout_seconds = inf\n")
    args = [str(inf_config) if a == "INF_CONFIG" else a for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "portwatch", "--registry", str(official_csv), "daemon", *args],
        env={**os.environ, **env, "PYTHONPATH": str(REPO / "src")},
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _bind_dynamic(sock: socket.socket) -> None:
    for port in range(50515, 50615):
        try:
            sock.bind(("127.0.0.1", port))
            return
        except OSError:
            continue
    pytest.skip("no free port in 50515-50614 to send from")


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass  # it exited while we looked
    return out


def _dumpcaps(pid: int) -> list[int]:
    """dumpcap processes below ``pid`` (children of its capture launcher)."""
    found, todo = [], _children(pid)
    while todo:
        child = todo.pop()
        todo += _children(child)
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0].endswith(b"dumpcap"):
                found.append(child)
        except OSError:
            continue
    return found


def _capabilities(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v, 16) for k, _, v in (line.partition(":\t") for line in lines)
            if k.startswith("Cap")}


@pytest.mark.root
def test_a_killed_dumpcap_is_restarted_and_counted(
        tmp_path: Path, official_csv: Path, env: dict[str, str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("capturing on lo needs root")
    if shutil.which("dumpcap") is None:
        pytest.skip("dumpcap is not installed")
    cfg = _config(tmp_path / "pw.toml", [official_csv])
    with DaemonProcess(["daemon", "--config.file", str(cfg), "--backend", "dumpcap",
                        "-i", "lo", "--bpf-filter", "udp port 44515"], env=env) as d:
        d.wait_for_log("capture started", 20)
        deadline = time.monotonic() + 10
        while not _dumpcaps(d.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        first = _dumpcaps(d.proc.pid)
        assert len(first) == 1
        assert d.get("/healthz")[0] == 200
        os.kill(first[0], signal.SIGKILL)
        after = d.wait_until(
            lambda s: value(s, "portwatch_backend_restarts_total", backend="dumpcap") >= 1, 20)
        assert value(after, "portwatch_backend_restarts_total", backend="dumpcap") == 1
        assert any("dumpcap stopped" in line or "exit status" in line for line in d.lines)
        deadline = time.monotonic() + 10
        while d.get("/healthz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert d.get("/healthz")[0] == 200
        # the new child captures: send a few datagrams on loopback, from a port
        # in the dynamic range so that 44515 is the service side whatever the
        # kernel would have picked (both unassigned: the lower port would win)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            _bind_dynamic(s)
            for _ in range(20):
                s.sendto(b"x", ("127.0.0.1", 44515))
                time.sleep(0.05)
        got = d.wait_until(lambda s: value(s, "portwatch_flagged_packets_total",
                                           port="44515", reason="unassigned") > 0, 15)
        assert value(got, "portwatch_flagged_packets_total", port="44515") > 0
        assert d.stop() == 0


@pytest.mark.root
@pytest.mark.parametrize("backend", ["dumpcap", "scapy"])
def test_the_daemon_holds_no_capability_while_it_captures(
        backend: str, tmp_path: Path, official_csv: Path, env: dict[str, str]) -> None:
    """Only the capture launcher (a child that parses nothing) keeps CAP_NET_RAW."""
    if os.geteuid() != 0:
        pytest.skip("capturing on lo needs root")
    if backend == "dumpcap" and shutil.which("dumpcap") is None:
        pytest.skip("dumpcap is not installed")
    if backend == "scapy":
        pytest.importorskip("scapy")
    cfg = _config(tmp_path / "pw.toml", [official_csv])
    with DaemonProcess(["daemon", "--config.file", str(cfg), "--backend", backend,
                        "-i", "lo", "--bpf-filter", "udp port 44515"], env=env) as d:
        d.wait_for_log("capture started", 20)
        d.wait_for_log("capture privileges are held only by the capture launcher", 5)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            _bind_dynamic(s)
            got = d.samples()
            deadline = time.monotonic() + 15
            while value(got, "portwatch_flagged_packets_total", port="44515",
                        reason="unassigned") < 5 and time.monotonic() < deadline:
                s.sendto(b"x", ("127.0.0.1", 44515))
                time.sleep(0.05)
                got = d.samples()
        assert value(got, "portwatch_flagged_packets_total", port="44515",
                     reason="unassigned") >= 5
        caps = _capabilities(d.proc.pid)
        assert (caps["CapEff"], caps["CapPrm"], caps["CapAmb"], caps["CapInh"]) == (0, 0, 0, 0)
        assert "NoNewPrivs:\t1" in Path(f"/proc/{d.proc.pid}/status").read_text()
        launcher = _children(d.proc.pid)
        assert len(launcher) == 1
        assert _capabilities(launcher[0])["CapEff"] & (1 << 13)  # CAP_NET_RAW stays there
        assert len(_dumpcaps(d.proc.pid)) == (backend == "dumpcap")
        assert d.stop() == 0
    assert not _processes_with(b"udp port 44515")


@pytest.mark.root
def test_the_pyshark_backend_counts_live_traffic_and_stops_promptly(
        tmp_path: Path, official_csv: Path, env: dict[str, str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("capturing on lo needs root")
    if shutil.which("tshark") is None or shutil.which("dumpcap") is None:
        pytest.skip("tshark is not installed")
    pytest.importorskip("pyshark")
    cfg = _config(tmp_path / "pw.toml", [official_csv])
    with DaemonProcess(["daemon", "--config.file", str(cfg), "--backend", "pyshark",
                        "-i", "lo", "--bpf-filter", "udp port 44515"], env=env) as d:
        d.wait_for_log("capture started", 20)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            _bind_dynamic(s)
            got = d.samples()
            deadline = time.monotonic() + 30  # tshark takes a moment to start capturing
            while value(got, "portwatch_flagged_packets_total", port="44515") < 5 \
                    and time.monotonic() < deadline:
                s.sendto(b"x", ("127.0.0.1", 44515))
                time.sleep(0.1)
                got = d.samples()
        assert value(got, "portwatch_flagged_packets_total", port="44515",
                     reason="unauthorized-use") >= 5
        assert value(got, "portwatch_capture_packets_received_total", interface="lo") >= 5
        started = time.monotonic()
        assert d.stop(timeout=5) == 0
        assert time.monotonic() - started < 5
    assert not _processes_with(b"udp port 44515")  # no orphaned tshark or dumpcap


def _processes_with(needle: bytes) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if needle in cmdline.read_bytes():
                found.append(cmdline.parent.name)
        except OSError:
            continue  # it exited while we looked
    return found
