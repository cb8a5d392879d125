"""SystemdNotifier: the datagrams systemd reads, on a socket of our own."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from portwatch.daemon.notify import SystemdNotifier


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"portwatch-test-{os.getpid()}-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        yield "@" + name, sock


def test_state_changes_reach_an_abstract_notify_socket(
        abstract_socket: tuple[str, socket.socket]) -> None:
    address, sock = abstract_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": address})
    notifier.ready("capturing with dumpcap")
    assert sock.recv(4096).decode().split("\n") == [
        "READY=1", "STATUS=capturing with dumpcap", f"MAINPID={os.getpid()}"]
    notifier.reloading()
    notifier.status("dumpcap: stopped\nREADY=1")  # a newline must not smuggle in a key
    notifier.watchdog()
    notifier.stopping()
    assert [sock.recv(4096).decode() for _ in range(4)] == [
        "RELOADING=1", "STATUS=dumpcap: stopped READY=1", "WATCHDOG=1", "STOPPING=1"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "60000000"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, 0.0),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, 0.0),
        ({"WATCHDOG_USEC": "soon"}, 0.0),
        ({}, 0.0),
    ],
)
def test_the_watchdog_interval_is_half_of_watchdog_usec_when_meant_for_us(
        env: dict[str, str], expected: float) -> None:
    assert SystemdNotifier(env).watchdog_s == expected


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": "/nonexistent/notify.sock"}])
def test_no_systemd_or_a_vanished_socket_never_raises(env: dict[str, str]) -> None:
    notifier = SystemdNotifier(env)
    notifier.ready("x")  # systemd gone must not take the daemon with it
    notifier.stopping()
