"""Hostile clients against the metrics endpoint: idle floods, slow heads, half-open TLS.

Every test runs a real server on 127.0.0.1, uses bounded loops and timeouts,
and stops its server. Threads are counted in-process with
``threading.active_count()``: the server's threads live in this process.
"""

from __future__ import annotations

import contextlib
import http.client
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from portwatch.daemon.web import WebLimits, WebServer
from portwatch.daemon.web_config import WebSettings


@pytest.fixture
def serve() -> Iterator[Callable[..., WebServer]]:
    started: list[WebServer] = []

    def start(settings: WebSettings | None = None, **kwargs: object) -> WebServer:
        registry = CollectorRegistry()
        Counter("portwatch_test", "a test counter", registry=registry).inc(3)
        server = WebServer("127.0.0.1:0", registry, lambda: (True, "ok"), settings,
                           **kwargs)  # type: ignore[arg-type]
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Client sockets a test opens; all closed at the end, whatever happened."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def _connect(port: int, opened: list[socket.socket]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    opened.append(sock)
    return sock


def _scrape(port: int, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        conn.request("GET", "/metrics")
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def _closed_by_peer(sock: socket.socket, within_s: float) -> bool:
    """True when the server closes ``sock`` (EOF or reset) within ``within_s``."""
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_300_idle_connections_hold_no_threads_and_a_scrape_still_succeeds(
        serve: Callable[..., WebServer], sockets: list[socket.socket]) -> None:
    before = threading.active_count()
    limits = WebLimits()
    server = serve(limits=limits)
    for _ in range(300):
        _connect(server.port, sockets)
    time.sleep(0.2)  # let the reactor accept them all (it holds them, it spawns nothing)
    assert threading.active_count() <= before + 1 + limits.workers
    assert _scrape(server.port)[0] == 200
    assert threading.active_count() <= before + 1 + limits.workers
    # and they are still open: none was dropped to make room for the scrape
    sockets[0].settimeout(0.05)
    with pytest.raises(TimeoutError):
        sockets[0].recv(1)


def test_an_idle_connection_is_closed_after_the_idle_timeout(
        serve: Callable[..., WebServer], sockets: list[socket.socket]) -> None:
    server = serve(limits=WebLimits(idle_timeout_s=0.3))
    idle = _connect(server.port, sockets)
    assert _closed_by_peer(idle, within_s=5)


def test_a_keep_alive_connection_is_closed_when_idle_after_a_response(
        serve: Callable[..., WebServer], sockets: list[socket.socket]) -> None:
    server = serve(limits=WebLimits(idle_timeout_s=0.3))
    sock = _connect(server.port, sockets)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"\r\n\r\nok\n")
    assert _closed_by_peer(sock, within_s=5)


def test_a_head_trickled_byte_by_byte_is_cut_off_at_the_deadline(
        serve: Callable[..., WebServer], sockets: list[socket.socket]) -> None:
    server = serve(limits=WebLimits(idle_timeout_s=0.5))
    sock = _connect(server.port, sockets)
    sock.sendall(b"GET /metrics HTTP/1.1\r\n")
    cut = False
    for _ in range(60):  # at most 6 s of trickling; the deadline is 0.5 s
        try:
            sock.sendall(b"X")
        except (BrokenPipeError, ConnectionResetError):
            cut = True
            break
        if _closed_by_peer(sock, within_s=0.1):
            cut = True
            break
    assert cut


def test_a_head_larger_than_the_limit_is_refused_with_431(
        serve: Callable[..., WebServer], sockets: list[socket.socket]) -> None:
    server = serve(limits=WebLimits(max_head_bytes=1024))
    sock = _connect(server.port, sockets)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 4096 + b"\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 431 ")


def test_when_full_the_longest_waiting_connection_makes_room(
        serve: Callable[..., WebServer], sockets: list[socket.socket]) -> None:
    server = serve(limits=WebLimits(max_connections=20))
    first = _connect(server.port, sockets)
    time.sleep(0.05)
    for _ in range(19):
        _connect(server.port, sockets)
    time.sleep(0.1)
    assert _scrape(server.port)[0] == 200  # the 21st connection is admitted ...
    assert _closed_by_peer(first, within_s=5)  # ... by closing the oldest idle one


def test_pipelined_requests_are_answered_in_order(
        serve: Callable[..., WebServer], sockets: list[socket.socket]) -> None:
    server = serve()
    sock = _connect(server.port, sockets)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n"
                 b"Connection: close\r\n\r\n")
    data = b""
    for _ in range(50):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data.index(b"HTTP/1.1 200 ") < data.index(b"HTTP/1.1 404 ")


def test_garbage_and_hang_ups_print_no_traceback(
        serve: Callable[..., WebServer], sockets: list[socket.socket],
        capfd: pytest.CaptureFixture[str]) -> None:
    lines: list[str] = []
    server = serve(log=lines.append)
    for payload in (b"\x16\x03\x01\x00\xff garbage\r\n\r\n", b"\x00" * 64 + b"\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
                    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"):
        sock = _connect(server.port, sockets)
        with contextlib.suppress(OSError):
            sock.sendall(payload)
            sock.recv(4096)
    hang_up = _connect(server.port, sockets)
    hang_up.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
    hang_up.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    hang_up.close()  # a reset while the answer is being written
    assert _scrape(server.port)[0] == 200
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert lines == []


# -- TLS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", "tls.key",
                    "-out", "tls.crt"], check=True, capture_output=True, timeout=60, cwd=d)
    return d / "tls.crt", d / "tls.key"


@pytest.mark.parametrize("opening", [b"", b"\x16\x03\x01\x02\x00\x01"],
                         ids=["sends-nothing", "stops-inside-client-hello"])
def test_half_open_tls_clients_do_not_block_a_scrape(
        serve: Callable[..., WebServer], sockets: list[socket.socket],
        tls_files: tuple[Path, Path], opening: bytes) -> None:
    cert, key = tls_files
    limits = WebLimits(handshake_timeout_s=30)
    server = serve(WebSettings(cert_file=str(cert), key_file=str(key)), limits=limits)
    for _ in range(3 * limits.workers):  # more than there are workers
        sock = _connect(server.port, sockets)
        if opening:
            sock.sendall(opening)
    time.sleep(0.2)
    status, body = _scrape(server.port, ssl.create_default_context(cafile=str(cert)))
    assert status == 200
    assert b"portwatch_test_total 3.0\n" in body


def test_a_stalled_tls_handshake_is_closed_at_its_deadline(
        serve: Callable[..., WebServer], sockets: list[socket.socket],
        tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server = serve(WebSettings(cert_file=str(cert), key_file=str(key)),
                   limits=WebLimits(handshake_timeout_s=0.3, idle_timeout_s=30))
    sock = _connect(server.port, sockets)
    sock.sendall(b"\x16\x03\x01\x02\x00\x01")
    assert _closed_by_peer(sock, within_s=5)


def test_plain_http_to_the_tls_port_is_dropped_quietly(
        serve: Callable[..., WebServer], sockets: list[socket.socket],
        tls_files: tuple[Path, Path], capfd: pytest.CaptureFixture[str]) -> None:
    cert, key = tls_files
    lines: list[str] = []
    server = serve(WebSettings(cert_file=str(cert), key_file=str(key)), log=lines.append)
    sock = _connect(server.port, sockets)
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _closed_by_peer(sock, within_s=5)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert lines == []
