"""The exporter's HTTP side: ``/metrics``, ``/healthz`` and a small index page.

The endpoint is bounded by construction, because it runs under ``TasksMax``
next to a capture that must not be starved (docs/daemon.md, "Web endpoint
defences"):

- One reactor thread accepts every connection, runs its TLS handshake without
  blocking, and holds it until it has sent a whole request head; idle, slow or
  half-open clients cost a file descriptor, never a thread, and are closed
  when their deadline passes. When ``max_connections`` are open, the
  longest-waiting one is closed to admit the new one.
- A fixed pool of workers answers complete requests, fed through a bounded
  queue; a full queue answers 503 at once.
- bcrypt runs at most ``bcrypt_concurrency`` at a time; an unknown user is
  checked against a decoy hash of the same cost, and a password that matched
  is remembered briefly by a keyed hash so each scrape does not pay bcrypt.

TLS and basic auth follow the exporter-toolkit web configuration
(``web_config.WebSettings``); ``WebServer.update_settings`` swaps them for the
next connection or request.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import gzip
import hashlib
import hmac
import io
import os
import queue
import re
import resource
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from portwatch.daemon.config import parse_listen_address
from portwatch.daemon.web_config import (
    WebSettings,
    bcrypt_cost,
    check_settings,
    san_allowed,
    tls_context,
)
from portwatch.errors import ConfigError

__all__ = ["Health", "PasswordCheck", "WebLimits", "WebServer", "check_password"]

#: ``health()`` answers (capturing?, one-line reason).
Health = Callable[[], tuple[bool, str]]
#: ``check(password, bcrypt_hash) -> matches``; a seam so tests can count bcrypt runs.
PasswordCheck = Callable[[bytes, str], bool]

_INDEX = b"""<!doctype html>
<html><head><title>portwatch</title></head>
<body><h1>portwatch</h1>
<p>IANA service registry flow monitor.</p>
<ul><li><a href="/metrics">metrics</a></li><li><a href="/healthz">health</a></li></ul>
</body></html>
"""
_TEXT = "text/plain; charset=utf-8"
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nServer: portwatch\r\nRetry-After: 1\r\n"
         b"Content-Length: 0\r\nConnection: close\r\n\r\n")
_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nServer: portwatch\r\n"
              b"Content-Length: 0\r\nConnection: close\r\n\r\n")


def check_password(password: bytes, hashed: str) -> bool:
    """bcrypt's verdict; a hash or password bcrypt refuses is a mismatch."""
    try:
        import bcrypt
    except ImportError:  # pragma: no cover - load_web_settings users need it
        return False
    try:
        return bool(bcrypt.checkpw(password, hashed.encode()))
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class WebLimits:
    """How much the endpoint may hold; the defaults suit a 2-core host and TasksMax=64."""

    workers: int = 8
    #: Complete requests (or TLS handshakes) waiting for a worker; beyond it: 503.
    queue: int = 32
    #: Open connections; the longest-waiting idle one is closed to admit a new one.
    max_connections: int = 512
    #: A connection must send a whole request head within this after it opens
    #: (or its TLS handshake ends) or after its previous response; else it is closed.
    idle_timeout_s: float = 10.0
    #: A TLS client must finish its handshake within this after it connects.
    handshake_timeout_s: float = 5.0
    #: Bound on writing one response to a slow reader.
    write_timeout_s: float = 10.0
    backlog: int = 1024
    max_head_bytes: int = 16384
    bcrypt_concurrency: int = 2
    #: Requests that may wait for a bcrypt slot; beyond it: 503 at once.
    bcrypt_waiters: int = 4
    auth_cache_ttl_s: float = 300.0
    auth_cache_size: int = 64


# -- basic auth -----------------------------------------------------------------------


class _AuthCache:
    """Verified (user, password, hash) triples by HMAC under a per-process key, briefly."""

    def __init__(self, ttl_s: float, size: int, clock: Callable[[], float]) -> None:
        self._key = os.urandom(32)
        self._ttl, self._size, self._clock = ttl_s, size, clock
        self._until: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def key(self, user: str, password: bytes, hashed: str) -> bytes:
        material = b"\0".join((user.encode(), password, hashed.encode()))
        return hmac.new(self._key, material, hashlib.sha256).digest()

    def hit(self, key: bytes) -> bool:
        with self._lock:
            until = self._until.get(key)
            if until is None:
                return False
            if until > self._clock():
                return True
            del self._until[key]
            return False

    def add(self, key: bytes) -> None:
        with self._lock:
            self._until.pop(key, None)
            while len(self._until) >= self._size:
                del self._until[next(iter(self._until))]
            self._until[key] = self._clock() + self._ttl


class _Gate:
    """At most ``slots`` holders and ``waiters`` waiting; ``enter`` refuses the rest at once."""

    def __init__(self, slots: int, waiters: int) -> None:
        self._sem = threading.BoundedSemaphore(slots)
        self._limit = slots + waiters
        self._pending = 0
        self._lock = threading.Lock()

    def enter(self) -> bool:
        with self._lock:
            if self._pending >= self._limit:
                return False
            self._pending += 1
        self._sem.acquire()
        return True

    def leave(self) -> None:
        self._sem.release()
        with self._lock:
            self._pending -= 1


@dataclass(frozen=True, slots=True, eq=False)
class _Policy:
    """What one settings file decides, swapped as one reference by ``update_settings``."""

    settings: WebSettings
    tls: ssl.SSLContext | None
    users: Mapping[str, str]
    decoy: str
    headers: tuple[tuple[str, str], ...]
    cache: _AuthCache


def _policy(settings: WebSettings, limits: WebLimits, clock: Callable[[], float]) -> _Policy:
    check_settings(settings)
    tls = tls_context(settings) if settings.tls else None
    decoy = ""
    if settings.basic_auth_users:
        try:
            import bcrypt
        except ImportError:
            raise ConfigError("basic_auth_users needs the 'bcrypt' package "
                              "(pip install 'portwatch[web]')") from None
        cost = max(bcrypt_cost(h) for h in settings.basic_auth_users.values())
        decoy = bcrypt.hashpw(os.urandom(18), bcrypt.gensalt(rounds=cost)).decode()
    headers = tuple((k, v) for k, v in settings.headers.items() if v)
    return _Policy(settings, tls, dict(settings.basic_auth_users), decoy, headers,
                   _AuthCache(limits.auth_cache_ttl_s, limits.auth_cache_size, clock))


# -- connections ----------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Conn:
    sock: socket.socket
    peer: str
    policy: _Policy
    handshaken: bool
    buf: bytearray = field(default_factory=bytearray)
    deadline: float = 0.0
    eof: bool = False
    closed: bool = False


class _Handler(BaseHTTPRequestHandler):
    """One request, parsed from a complete head in memory; the response is buffered."""

    protocol_version = "HTTP/1.1"
    server_version = "portwatch"

    def __init__(self, head: bytes, conn: _Conn, web: WebServer, policy: _Policy) -> None:
        # BaseRequestHandler.__init__ would read the socket itself; the reactor already has.
        self.rfile = io.BytesIO(head)
        self.out = io.BytesIO()
        self.wfile = self.out
        self.client_address = (conn.peer, 0)
        self.close_connection = True
        self._web = web
        self._policy = policy

    def version_string(self) -> str:
        return "portwatch"  # no Python or library version for a scanner to match

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes and client mistakes are not events worth a log line

    def end_headers(self) -> None:
        for name, value in self._policy.headers:
            self.send_header(name, value)
        if self._has_body():
            self.send_header("Connection", "close")  # its body would be read as a request
        super().end_headers()

    def _has_body(self) -> bool:
        headers = getattr(self, "headers", None)
        if headers is None:
            return False
        return headers.get("Content-Length", "0").strip() != "0" or (
            "Transfer-Encoding" in headers)

    def _send(self, code: int, body: bytes, ctype: str,
              extra: Mapping[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        verdict = self._web._authorize(self._policy, self.headers.get("Authorization", ""))
        if verdict == 401:
            self._send(401, b"Unauthorized\n", _TEXT,
                       {"WWW-Authenticate": 'Basic realm="portwatch", charset="UTF-8"'})
            return
        if verdict == 503:
            self._send(503, b"Too many password checks at once; retry\n", _TEXT,
                       {"Retry-After": "1"})
            return
        path, _, query = self.path.partition("?")
        if path == "/metrics":
            self._metrics(query)
        elif path == "/healthz":
            ok, reason = self._web._health()
            self._send(200 if ok else 503, f"{reason}\n".encode(), _TEXT)
        elif path == "/":
            self._send(200, _INDEX, "text/html; charset=utf-8")
        else:
            self._send(404, b"Not Found\n", _TEXT)

    def _metrics(self, query: str) -> None:
        encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
        registry: Any = self._web._registry
        names = parse_qs(query).get("name[]")
        if names:
            registry = registry.restricted_registry(names)
        body = encoder(registry)
        extra = {"Vary": "Accept, Accept-Encoding"}
        if gzip_accepted(self.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body, compresslevel=6)
            extra["Content-Encoding"] = "gzip"
        self._send(200, body, ctype, extra)


class WebServer:
    """Serves in background threads (one reactor, ``limits.workers`` workers) until ``stop()``."""

    def __init__(self, listen: str, registry: CollectorRegistry, health: Health,
                 settings: WebSettings | None = None, *, limits: WebLimits | None = None,
                 log: Callable[[str], None] | None = None,
                 check: PasswordCheck = check_password,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits or WebLimits()
        self._registry = registry
        self._health = health
        self._log = log or (lambda _line: None)
        self._check = check
        self._clock = clock
        self._policy = _policy(settings or WebSettings(), self._limits, clock)
        self._max_conns = _fd_budget(self._limits.max_connections)
        self._listener = _listen(listen, self._limits.backlog)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._waiting: dict[_Conn, None] = {}  # registered connections, oldest deadline first
        self._returned: queue.SimpleQueue[_Conn] = queue.SimpleQueue()
        self._jobs: queue.Queue[tuple[_Conn, bytes] | None] = queue.Queue(
            self._limits.queue)
        self._gate = _Gate(self._limits.bcrypt_concurrency, self._limits.bcrypt_waiters)
        self._open = 0
        self._open_lock = threading.Lock()
        self._stopping = False
        self._reactor_gone = False
        self._paused_until = 0.0
        self._next_expiry = 0.0
        self._threads = [threading.Thread(target=self._reactor, name="web", daemon=True)]
        self._threads += [threading.Thread(target=self._worker, name=f"web-{i}", daemon=True)
                          for i in range(self._limits.workers)]

    @property
    def settings(self) -> WebSettings:
        """The settings new requests are served with."""
        return self._policy.settings

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Close the listener and every connection; workers finish the request in hand."""
        self._stopping = True
        if not self._threads[0].is_alive():
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()
            return
        self._wake()
        for thread in self._threads:
            thread.join(timeout=2)

    def update_settings(self, settings: WebSettings) -> None:
        """Swap TLS, users and headers for new connections and the next request.

        Everything is built before the swap, so a ``ConfigError`` leaves the
        running settings in place. Remembered passwords are forgotten.
        """
        self._policy = _policy(settings, self._limits, self._clock)

    # -- basic auth (called by handlers on worker threads) -------------------------------

    def _authorize(self, policy: _Policy, header: str) -> int:
        """200, 401, or 503 when too many password checks are already queued."""
        if not policy.users:
            return 200
        scheme, _, encoded = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return 401
        try:
            raw = base64.b64decode(encoded.strip(), validate=True)
            user_bytes, colon, password = raw.partition(b":")
            user = user_bytes.decode()
        except (binascii.Error, UnicodeDecodeError):
            return 401
        if not colon:
            return 401
        hashed = policy.users.get(user)
        key = policy.cache.key(user, password, hashed or "")
        if hashed is not None and policy.cache.hit(key):
            return 200
        if not self._gate.enter():
            return 503
        try:
            # An unknown user pays the same bcrypt as a known one: timing tells nothing.
            good = self._check(password, hashed if hashed is not None else policy.decoy)
        finally:
            self._gate.leave()
        if hashed is None or not good:
            return 401
        policy.cache.add(key)
        return 200

    # -- reactor: accept, wait for whole request heads, time out -------------------------

    def _reactor(self) -> None:
        self._listener.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._wake_r)
        try:
            while not self._stopping:
                self._tick()
        except Exception as exc:  # a bug here would silently end /metrics: say so once
            self._log(f"web: reactor stopped: {type(exc).__name__}: {exc}")
        finally:
            self._shutdown()

    def _tick(self) -> None:
        now = self._clock()
        if self._paused_until and now >= self._paused_until:
            self._paused_until = 0.0
            self._sel.register(self._listener, selectors.EVENT_READ, None)
        timeout = min(1.0, max(0.0, self._next_expiry - now))
        for key, _ in self._sel.select(timeout):
            if key.data is None:
                self._accept()
            elif key.data is self._wake_r:
                self._drain_wake()
            elif isinstance(key.data, _Conn) and not key.data.closed:
                self._readable(key.data)
        now = self._clock()
        if now >= self._next_expiry:
            self._expire(now)

    def _expire(self, now: float) -> None:
        """Close whoever is past its deadline: idle, too slow, or stuck in a TLS handshake."""
        self._next_expiry = now + 1.0
        for conn in list(self._waiting):
            if conn.deadline <= now:
                self._close(conn)
            else:
                self._next_expiry = min(self._next_expiry, conn.deadline)

    def _accept(self) -> None:
        for _ in range(64):  # a bounded burst, so deadlines still run under a flood
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                out_of_fds = exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS,
                                           errno.ENOMEM)
                if out_of_fds and not self._evict_oldest():
                    self._pause_accept()
                continue
            sock.setblocking(False)
            if self._open >= self._max_conns and not self._evict_oldest():
                _reject(sock, _BUSY)
                continue
            policy = self._policy
            peer = str(addr[0])
            conn_sock: socket.socket = sock
            if policy.tls is not None:
                try:
                    conn_sock = policy.tls.wrap_socket(sock, server_side=True,
                                                       do_handshake_on_connect=False)
                except (OSError, ValueError):
                    sock.close()
                    continue
            with self._open_lock:
                self._open += 1
            conn = _Conn(conn_sock, peer, policy, handshaken=policy.tls is None)
            self._wait(conn, self._limits.idle_timeout_s if conn.handshaken
                       else self._limits.handshake_timeout_s)

    def _pause_accept(self) -> None:
        """Out of descriptors and nothing to evict: stop polling the listener for a moment."""
        if not self._paused_until:
            self._sel.unregister(self._listener)
            self._paused_until = self._clock() + 0.1

    def _evict_oldest(self) -> bool:
        if not self._waiting:
            return False
        self._close(next(iter(self._waiting)))
        return True

    def _wait(self, conn: _Conn, timeout_s: float) -> None:
        """Watch ``conn`` for input until ``timeout_s`` from now (the oldest waiter first)."""
        conn.deadline = self._clock() + timeout_s
        self._next_expiry = min(self._next_expiry, conn.deadline)
        if conn in self._waiting:
            del self._waiting[conn]
        else:
            self._sel.register(conn.sock, selectors.EVENT_READ, conn)
        self._waiting[conn] = None

    def _unwait(self, conn: _Conn) -> None:
        if conn in self._waiting:
            del self._waiting[conn]
            self._sel.unregister(conn.sock)

    def _readable(self, conn: _Conn) -> None:
        if not conn.handshaken and not self._shake(conn):
            return
        limit = self._limits.max_head_bytes
        while len(conn.buf) <= limit:
            try:
                data = conn.sock.recv(8192)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                    ssl.SSLWantWriteError):
                break
            except OSError:
                self._close(conn)
                return
            if not data:
                conn.eof = True
                break
            conn.buf += data
        head = _take_head(conn.buf)
        if head is not None:
            self._unwait(conn)
            self._dispatch(conn, head)
        elif conn.eof:
            self._close(conn)
        elif len(conn.buf) > limit:
            self._unwait(conn)
            _reject(conn.sock, _TOO_LARGE)
            self._close(conn)

    def _shake(self, conn: _Conn) -> bool:
        """One non-blocking step of the TLS handshake; True once it is done and allowed.

        The handshake runs here rather than in a worker so that a client that
        stops half-way holds a descriptor until its deadline, never a thread.
        """
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._sel.modify(sock, selectors.EVENT_READ, conn)
            return False
        except ssl.SSLWantWriteError:
            self._sel.modify(sock, selectors.EVENT_WRITE, conn)
            return False
        except (OSError, ValueError):
            self._close(conn)  # not TLS, a bad certificate, or gone: not worth a log line
            return False
        if not san_allowed(sock.getpeercert(), conn.policy.settings.client_allowed_sans):
            self._close(conn)
            return False
        conn.handshaken = True
        self._sel.modify(sock, selectors.EVENT_READ, conn)
        self._wait(conn, self._limits.idle_timeout_s)
        return True

    def _dispatch(self, conn: _Conn, head: bytes) -> None:
        try:
            self._jobs.put_nowait((conn, head))
        except queue.Full:
            _reject(conn.sock, _BUSY)
            self._close(conn)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # a wake-up is already pending, or we stopped
            self._wake_w.send(b"\0")

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while True:
            try:
                conn = self._returned.get_nowait()
            except queue.Empty:
                return
            if conn.closed:
                continue
            head = _take_head(conn.buf)
            if head is not None:  # a pipelined request was already read
                self._dispatch(conn, head)
                continue
            self._wait(conn, self._limits.idle_timeout_s)
            self._readable(conn)  # TLS may hold decrypted bytes the selector cannot see

    def _shutdown(self) -> None:
        with self._open_lock:
            self._reactor_gone = True
        for conn in list(self._waiting):
            self._close(conn)
        while not self._returned.empty():
            self._close(self._returned.get_nowait())
        self._sel.close()
        self._listener.close()
        for _ in range(self._limits.workers):
            self._jobs.put(None)
        self._wake_r.close()
        self._wake_w.close()

    # -- workers --------------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            conn, head = job
            try:
                self._serve(conn, head)
            except (OSError, ValueError):
                self._close(conn)  # the client went away or broke TLS: not an event
            except Exception as exc:  # a bug: one line, never a traceback
                self._log(f"web: {type(exc).__name__} serving {conn.peer}: {exc}")
                self._close(conn)

    def _serve(self, conn: _Conn, head: bytes) -> None:
        handler = _Handler(head, conn, self, self._policy)
        handler.handle_one_request()
        conn.sock.settimeout(self._limits.write_timeout_s)
        conn.sock.sendall(handler.out.getvalue())
        if handler.close_connection or conn.eof or self._stopping:
            self._close(conn)
        else:
            self._hand_back(conn)

    def _hand_back(self, conn: _Conn) -> None:
        """Keep-alive: the reactor waits for the next request (or closes, once stopped)."""
        conn.sock.setblocking(False)
        with self._open_lock:
            if not self._reactor_gone:
                self._returned.put(conn)
                self._wake()
                return
        self._close(conn)

    def _close(self, conn: _Conn) -> None:
        """Close once, from any thread; the reactor's bookkeeping only from the reactor."""
        with self._open_lock:
            if conn.closed:
                return
            conn.closed = True
            self._open -= 1
        if threading.current_thread() is self._threads[0]:
            self._unwait(conn)
        with contextlib.suppress(OSError):
            conn.sock.close()


def _take_head(buf: bytearray) -> bytes | None:
    """Remove and return the first whole request head in ``buf``, if there is one."""
    start = 0
    while buf.startswith(b"\r\n", start) or buf.startswith(b"\n", start):
        start += 2 if buf.startswith(b"\r\n", start) else 1  # RFC 9112 2.2: ignore these
    match = _HEAD_END.search(buf, start)
    if match is None:
        if start:
            del buf[:start]
        return None
    head = bytes(buf[start:match.end()])
    del buf[:match.end()]
    return head


def _reject(sock: socket.socket, answer: bytes) -> None:
    """Say no without waiting: one non-blocking send, then close."""
    with contextlib.suppress(OSError):
        if answer and not isinstance(sock, ssl.SSLSocket):
            sock.send(answer)
    with contextlib.suppress(OSError):
        sock.close()


def _listen(listen: str, backlog: int) -> socket.socket:
    host, port = parse_listen_address(listen)
    family = socket.AF_INET6 if ":" in host or host == "" else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host or "::", port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    return sock


def _fd_budget(wanted: int) -> int:
    """Connections we may hold: at most half the soft descriptor limit, capture needs the rest."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft // 2))
