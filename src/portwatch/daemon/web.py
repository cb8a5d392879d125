"""The exporter's HTTP side: ``/metrics``, ``/healthz`` and a small index page.

TLS and basic auth follow the exporter-toolkit web configuration
(``config.WebSettings``). Passwords are checked against bcrypt hashes with the
``bcrypt`` package (imported only when users are configured); a password that
matched once is remembered by its SHA-256, so each scrape does not pay the
bcrypt cost again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from portwatch.daemon.config import parse_listen_address
from portwatch.daemon.web_config import WebSettings
from portwatch.errors import ConfigError

__all__ = ["Health", "WebServer", "check_password"]

#: ``health()`` answers (capturing?, one-line reason).
Health = Callable[[], tuple[bool, str]]

_INDEX = b"""<!doctype html>
<html><head><title>portwatch</title></head>
<body><h1>portwatch</h1>
<p>IANA service registry flow monitor.</p>
<ul><li><a href="/metrics">metrics</a></li><li><a href="/healthz">health</a></li></ul>
</body></html>
"""


def check_password(password: bytes, hashed: str) -> bool:
    try:
        import bcrypt
    except ImportError:  # pragma: no cover - load_web_settings users need it
        return False
    try:
        return bool(bcrypt.checkpw(password, hashed.encode()))
    except ValueError:
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: CollectorRegistry
    health: Health
    users: dict[str, str]
    good: set[tuple[str, bytes]]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that speaks plain HTTP to TLS, or hangs up, is not worth a traceback."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, ssl.SSLError | ConnectionError | TimeoutError):
            super().handle_error(request, client_address)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes are not events worth a log line

    def _send(self, code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
              ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self) -> bool:
        users = self.server.users
        if not users:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = users.get(user)
        if hashed is None:
            return False
        digest = hashlib.sha256(password.encode()).digest()
        if any(u == user and hmac.compare_digest(d, digest) for u, d in self.server.good):
            return True
        if check_password(password.encode(), hashed):
            self.server.good.add((user, digest))
            return True
        return False

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self._authorized():
            self._send(401, b"Unauthorized\n", "text/plain; charset=utf-8",
                       {"WWW-Authenticate": 'Basic realm="portwatch"'})
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, encoder(self.server.registry), ctype)
        elif path == "/healthz":
            ok, reason = self.server.health()
            self._send(200 if ok else 503, f"{reason}\n".encode(), "text/plain; charset=utf-8")
        elif path == "/":
            self._send(200, _INDEX, "text/html; charset=utf-8")
        else:
            self._send(404, b"Not Found\n", "text/plain; charset=utf-8")


class WebServer:
    """Serves in a background thread until ``stop()``."""

    def __init__(self, listen: str, registry: CollectorRegistry, health: Health,
                 settings: WebSettings | None = None) -> None:
        host, port = parse_listen_address(listen)
        family = socket.AF_INET6 if ":" in host or host == "" else socket.AF_INET
        server_cls = type("_Server", (_Server,), {"address_family": family})
        try:
            server = server_cls((host or "::", port), _Handler, bind_and_activate=True)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {listen}: {exc.strerror}") from None
        server.registry = registry
        server.health = health
        settings = settings or WebSettings()
        server.users = dict(settings.basic_auth_users)
        server.good = set()
        if server.users:
            try:
                import bcrypt  # noqa: F401 - checked here so a missing module fails at start
            except ImportError:
                server.server_close()
                raise ConfigError("basic_auth_users needs the 'bcrypt' package "
                                  "(pip install 'portwatch[web]')") from None
        if settings.tls:
            server.socket = _tls_context(settings).wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False)
        self._server = server
        self.settings = settings
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        daemon=True, name="web")

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def update_settings(self, settings: WebSettings) -> None:
        """Keep ``settings`` as the current web settings (SIGHUP)."""
        self.settings = settings

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)


def _tls_context(settings: WebSettings) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(settings.cert_file, settings.key_file)
        if settings.client_ca_file:
            ctx.load_verify_locations(settings.client_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate/key: {exc}") from None
    if settings.client_auth_type == "RequireAndVerifyClientCert":
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif settings.client_auth_type == "VerifyClientCertIfGiven":
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx
