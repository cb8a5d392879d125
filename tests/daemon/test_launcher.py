"""The capture launcher: what it agrees to start, and a round trip with a stand-in dumpcap.

No root needed: the stand-in is a script, and privileges are not dropped here
(``tests/daemon/test_daemon_process.py`` has the root test that reads the capability sets).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portwatch.capture.live.dumpcap import dumpcap_argv, parse_drop_lines
from portwatch.daemon.launcher import CaptureLauncher, validate_dumpcap_argv
from portwatch.daemon.privileges import CAPTURE_CAPABILITIES, read_capabilities
from portwatch.errors import BackendError

names = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                max_size=15).filter(lambda n: not n.startswith("-"))


@given(st.lists(names, min_size=1, max_size=4), st.text(max_size=40).filter(
    lambda f: "\0" not in f), st.integers(64, 262_144), st.none() | st.integers(1, 4096))
def test_every_argv_dumpcap_argv_builds_is_accepted_with_the_fixed_program(
        interfaces: list[str], bpf: str, snaplen: int, buffer_mib: int | None) -> None:
    argv = dumpcap_argv(["dumpcap"], interfaces, bpf, snaplen, buffer_mib)
    assert validate_dumpcap_argv(argv, "/usr/bin/dumpcap") == ["/usr/bin/dumpcap", *argv[1:]]


@pytest.mark.parametrize(
    "argv",
    [
        ["/bin/sh", "-i", "lo", "-s", "128", "-n", "-w", "-"],
        ["dumpcap", "-i", "lo", "-s", "128", "-n", "-w", "/etc/shadow"],
        ["dumpcap", "-i", "lo", "-s", "128", "-n", "-w", "-", "-b", "files:2"],
        ["dumpcap", "-i", "-w/tmp/x", "-s", "128", "-n", "-w", "-"],
        ["dumpcap", "-i", "lo", "-B", "32", "-i", "eth0", "-s", "128", "-n", "-w", "-"],
        ["dumpcap", "-i", "lo", "-B", "0", "-s", "128", "-n", "-w", "-"],
        ["dumpcap", "-i", "lo", "-s", "1", "-n", "-w", "-"],
        ["dumpcap", "-i", "lo", "-n", "-w", "-"],
        ["dumpcap", "-s", "128", "-n", "-w", "-"],
        ["dumpcap", "-i", "lo", "-f", "", "-s", "128", "-n", "-w", "-"],
        ["dumpcap", "-i", "lo", "-s", "128", "-n", "-w"],
        [],
    ],
)
def test_any_other_argv_is_refused(argv: list[str]) -> None:
    with pytest.raises(ValueError, match=r"."):
        validate_dumpcap_argv(argv, "/usr/bin/dumpcap")


STAND_IN = """\
import signal, sys, time
sys.stdout.buffer.write(b"pcapng bytes " + " ".join(sys.argv[1:]).encode())
sys.stdout.flush()
def bye(*_):
    sys.stderr.write("Packets received/dropped on interface 'lo': 7/3 (70.0%)\\n")
    sys.stderr.flush()
    sys.exit(3)
signal.signal(signal.SIGTERM, bye)
while True:
    time.sleep(0.05)
"""


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[CaptureLauncher]:
    script = tmp_path / "dumpcap"
    script.write_text(f"#!{sys.executable}\n{STAND_IN}")
    script.chmod(0o755)
    launched = CaptureLauncher.start(str(script))
    yield launched
    launched.close()


def test_the_launcher_starts_dumpcap_and_hands_over_its_pipes(
        launcher: CaptureLauncher) -> None:
    proc = launcher.popen(dumpcap_argv(["dumpcap"], ["lo"], "udp", 128, 32))
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert proc.stdout.read(13) == b"pcapng bytes "
    assert proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(0.05)
    proc.terminate()
    assert proc.wait(10) == 3
    assert proc.stdout.read() == b"-i lo -B 32 -f udp -s 128 -n -w -"
    lines = proc.stderr.read().decode().splitlines()
    assert parse_drop_lines(lines, ["lo"]) == {"lo": 3}
    proc.stdout.close()
    proc.stderr.close()


def test_the_launcher_refuses_a_foreign_argv_and_keeps_serving(
        launcher: CaptureLauncher) -> None:
    with pytest.raises(BackendError, match=r"launcher refused: ValueError: the program must"):
        launcher.popen(["/bin/sh", "-c", "id"])
    proc = launcher.popen(dumpcap_argv(["dumpcap"], ["lo"], "", 128))
    with pytest.raises(BackendError, match=r"launcher refused: ValueError: signal SIGHUP"):
        launcher.request({"op": "signal", "id": 1, "signal": int(signal.SIGHUP)})
    with pytest.raises(BackendError, match=r"launcher refused: KeyError: 99"):
        launcher.request({"op": "poll", "id": 99})
    assert proc.poll() is None  # still running: neither request reached it
    proc.kill()
    assert proc.wait(10) == -signal.SIGKILL
    for stream in (proc.stdout, proc.stderr):
        assert stream is not None
        stream.close()


def test_closing_the_launcher_stops_its_children_and_ends_it(tmp_path: Path) -> None:
    script = tmp_path / "dumpcap"
    script.write_text(f"#!{sys.executable}\n{STAND_IN}")
    script.chmod(0o755)
    launched = CaptureLauncher.start(str(script))
    proc = launched.popen(dumpcap_argv(["dumpcap"], ["lo"], "", 128))
    launched.close()  # waits for the launcher, which waits for its child
    assert not Path(f"/proc/{launched.pid}").exists()
    assert not Path(f"/proc/{proc.pid}").exists()
    for stream in (proc.stdout, proc.stderr):
        assert stream is not None
        stream.close()
    with pytest.raises(BackendError, match="launcher is gone"):
        launched.popen(dumpcap_argv(["dumpcap"], ["lo"], "", 128))


def test_capability_sets_are_read_from_proc_status(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t0000000000003000\n"
                      "CapEff:\t0000000000003000\nCapBnd:\t000001ffffffffff\n"
                      "CapAmb:\t0000000000003000\n")
    caps = read_capabilities(status)
    assert caps.permitted == caps.ambient == CAPTURE_CAPABILITIES
    assert not caps.none_held


def test_the_launcher_refuses_a_packet_socket_buffer_beyond_4_gib(
        launcher: CaptureLauncher) -> None:
    with pytest.raises(BackendError, match=r"buffer_bytes 4294967297: expected 0-4294967296"):
        launcher.packet_socket((4096 << 20) + 1)


@pytest.mark.root
def test_the_launcher_opens_packet_sockets_that_receive_nothing_until_bound(
        launcher: CaptureLauncher) -> None:
    if not read_capabilities().effective & CAPTURE_CAPABILITIES:
        pytest.skip("opening an AF_PACKET socket needs CAP_NET_RAW")
    with launcher.packet_socket(1 << 20) as packet:
        assert packet.family == socket.AF_PACKET
        assert packet.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 << 20
        assert packet.getsockname()[1] == 0  # protocol 0: no packet is queued yet
