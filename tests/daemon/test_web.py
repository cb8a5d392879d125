"""The HTTP side: /metrics, /healthz, index, TLS, headers and basic auth (on loopback)."""

from __future__ import annotations

import base64
import gzip
import http.client
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from portwatch.daemon.web import WebLimits, WebServer, check_password
from portwatch.daemon.web_config import WebSettings
from portwatch.errors import ConfigError


def _get(url: str, *, auth: str | None = None, context: ssl.SSLContext | None = None
         ) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _basic(auth: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


@dataclass
class _Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def _request(conn: http.client.HTTPConnection, path: str, headers: dict[str, str] | None = None,
             method: str = "GET") -> _Reply:
    conn.request(method, path, headers=headers or {})
    r = conn.getresponse()
    return _Reply(r.status, r.headers, r.read())


@pytest.fixture
def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Counter("portwatch_test", "a test counter", registry=reg).inc(3)
    return reg


@pytest.fixture
def serve(registry: CollectorRegistry) -> Iterator[Callable[..., WebServer]]:
    """Start servers on 127.0.0.1:0; each is stopped at the end of the test."""
    started: list[WebServer] = []

    def start(settings: WebSettings | None = None, *, health: tuple[bool, str] = (True, "ok"),
              **kwargs: object) -> WebServer:
        server = WebServer("127.0.0.1:0", registry, lambda: health, settings, **kwargs)  # type: ignore[arg-type]
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _plain(server: WebServer) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)


def _once(server: WebServer, path: str, headers: dict[str, str] | None = None) -> _Reply:
    conn = _plain(server)
    try:
        return _request(conn, path, headers)
    finally:
        conn.close()


def test_metrics_index_and_healthz(serve: Callable[..., WebServer]) -> None:
    server = serve(health=(True, "capturing with dumpcap"))
    conn = _plain(server)
    metrics = _request(conn, "/metrics")
    assert metrics.status == 200
    assert metrics.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# TYPE portwatch_test_total counter\n" in metrics.body.decode()
    assert "portwatch_test_total 3.0\n" in metrics.body.decode()
    assert metrics.headers["Content-Encoding"] is None
    index = _request(conn, "/")
    assert index.headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'href="/metrics"' in index.body
    health = _request(conn, "/healthz")
    assert (health.status, health.body) == (200, b"capturing with dumpcap\n")
    assert _request(conn, "/nope").status == 404
    conn.close()


def test_healthz_is_503_with_the_reason_when_not_capturing(
        serve: Callable[..., WebServer]) -> None:
    server = serve(health=(False, "dumpcap: exit status 1; restarting in 2s"))
    code, body = _get(f"http://127.0.0.1:{server.port}/healthz")
    assert code == 503
    assert body == "dumpcap: exit status 1; restarting in 2s\n"


def test_server_header_names_no_python_or_version(serve: Callable[..., WebServer]) -> None:
    server = serve()
    conn = _plain(server)
    for path in ("/metrics", "/nope"):
        assert _request(conn, path).headers["Server"] == "portwatch"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(b"BREW / HTTP/1.1\r\n\r\n")  # an error page from http.server's send_error
        answer = raw.recv(4096)
    assert answer.startswith(b"HTTP/1.1 501 ")
    assert b"\r\nServer: portwatch\r\n" in answer
    assert b"Python" not in answer
    conn.close()


def test_metrics_are_gzipped_when_the_client_accepts_gzip(serve: Callable[..., WebServer]) -> None:
    conn = _plain(serve())
    reply = _request(conn, "/metrics", {"Accept-Encoding": "deflate, gzip;q=0.9"})
    assert reply.headers["Content-Encoding"] == "gzip"
    assert reply.headers["Vary"] == "Accept, Accept-Encoding"
    assert int(reply.headers["Content-Length"]) == len(reply.body)
    assert b"portwatch_test_total 3.0\n" in gzip.decompress(reply.body)
    conn.close()


def test_openmetrics_is_negotiated_by_accept(serve: Callable[..., WebServer]) -> None:
    conn = _plain(serve())
    reply = _request(conn, "/metrics",
                     {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert reply.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert reply.body.endswith(b"# EOF\n")
    conn.close()


def test_head_sends_the_length_without_a_body(serve: Callable[..., WebServer]) -> None:
    conn = _plain(serve())
    reply = _request(conn, "/", method="HEAD")
    assert reply.status == 200
    assert int(reply.headers["Content-Length"]) > 0
    assert reply.body == b""
    conn.close()


def test_configured_headers_are_on_every_response(serve: Callable[..., WebServer]) -> None:
    settings = WebSettings(headers={"X-Frame-Options": "deny",
                                    "Content-Security-Policy": "default-src 'none'"})
    conn = _plain(serve(settings))
    for path in ("/", "/metrics", "/nope"):
        reply = _request(conn, path)
        assert reply.headers["X-Frame-Options"] == "deny"
        assert reply.headers["Content-Security-Policy"] == "default-src 'none'"
    conn.close()


def test_a_header_outside_the_toolkit_list_is_refused_in_code_too(
        serve: Callable[..., WebServer]) -> None:
    with pytest.raises(ConfigError, match="'Connection' can not be configured"):
        serve(WebSettings(headers={"Connection": "keep-alive"}))


# -- basic auth ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hashes() -> dict[str, str]:
    bcrypt = pytest.importorskip("bcrypt")
    return {user: bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()
            for user, pw in (("prometheus", "s3cret"), ("grafana", "other"))}


class _CountingCheck:
    """The bcrypt seam: records which hash each check ran against."""

    def __init__(self) -> None:
        self.hashes: list[str] = []

    def __call__(self, password: bytes, hashed: str) -> bool:
        self.hashes.append(hashed)
        return check_password(password, hashed)


def test_unknown_user_and_wrong_password_both_run_bcrypt(
        serve: Callable[..., WebServer], hashes: dict[str, str]) -> None:
    check = _CountingCheck()
    server = serve(WebSettings(basic_auth_users=hashes), check=check)
    conn = _plain(server)
    assert _request(conn, "/metrics", _basic("prometheus:wrong")).status == 401
    assert check.hashes == [hashes["prometheus"]]
    assert _request(conn, "/metrics", _basic("nobody:s3cret")).status == 401
    assert len(check.hashes) == 2
    decoy = check.hashes[1]
    assert decoy not in hashes.values()
    assert decoy.startswith("$2b$04$")  # the same cost as the real users' hashes
    conn.close()


def test_a_good_password_pays_bcrypt_once_then_is_remembered(
        serve: Callable[..., WebServer], hashes: dict[str, str]) -> None:
    check = _CountingCheck()
    conn = _plain(serve(WebSettings(basic_auth_users=hashes), check=check))
    assert _request(conn, "/metrics", _basic("prometheus:s3cret")).status == 200
    assert _request(conn, "/metrics", _basic("prometheus:s3cret")).status == 200
    assert _request(conn, "/healthz", _basic("prometheus:s3cret")).status == 200
    assert check.hashes == [hashes["prometheus"]]
    assert _request(conn, "/metrics", _basic("prometheus:s3cret!")).status == 401
    assert len(check.hashes) == 2  # a different password is checked afresh
    conn.close()


def test_missing_or_malformed_credentials_are_401_with_a_challenge(
        serve: Callable[..., WebServer], hashes: dict[str, str]) -> None:
    conn = _plain(serve(WebSettings(basic_auth_users=hashes)))
    for headers in ({}, {"Authorization": "Bearer x"}, {"Authorization": "Basic !!!"},
                    {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}):
        reply = _request(conn, "/", headers)
        assert reply.status == 401
        assert reply.headers["WWW-Authenticate"].startswith('Basic realm="portwatch"')
    conn.close()


def test_update_settings_revokes_a_user_for_the_next_request(
        serve: Callable[..., WebServer], hashes: dict[str, str]) -> None:
    server = serve(WebSettings(basic_auth_users=hashes))
    conn = _plain(server)  # one keep-alive connection across the swap
    assert _request(conn, "/metrics", _basic("prometheus:s3cret")).status == 200
    server.update_settings(WebSettings(basic_auth_users={"grafana": hashes["grafana"]}))
    assert _request(conn, "/metrics", _basic("prometheus:s3cret")).status == 401
    assert _request(conn, "/metrics", _basic("grafana:other")).status == 200
    conn.close()


def test_update_settings_that_fail_keep_the_running_settings(
        serve: Callable[..., WebServer], hashes: dict[str, str]) -> None:
    server = serve(WebSettings(basic_auth_users=hashes))
    with pytest.raises(ConfigError, match="cannot load cert_file"):
        server.update_settings(WebSettings(cert_file="/nonexistent.crt",
                                           key_file="/nonexistent.key"))
    conn = _plain(server)
    assert _request(conn, "/metrics", _basic("grafana:other")).status == 200
    conn.close()


def test_password_checks_beyond_the_gate_get_503_at_once(
        serve: Callable[..., WebServer], hashes: dict[str, str]) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_check(password: bytes, hashed: str) -> bool:
        entered.set()
        release.wait(10)
        return check_password(password, hashed)

    limits = WebLimits(bcrypt_concurrency=1, bcrypt_waiters=0)
    server = serve(WebSettings(basic_auth_users=hashes), limits=limits, check=slow_check)
    first: list[int] = []
    blocked = threading.Thread(
        target=lambda: first.append(_once(server, "/", _basic("x:y")).status))
    blocked.start()
    try:
        assert entered.wait(5)
        reply = _once(server, "/", _basic("prometheus:s3cret"))
        assert reply.status == 503
        assert reply.headers["Retry-After"] == "1"
    finally:
        release.set()
        blocked.join(10)
    assert first == [401]


# -- TLS -------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=cwd)


@dataclass(frozen=True)
class _Pki:
    server_cert: Path
    server_key: Path
    ca: Path
    client_cert: Path  # signed by ca, SAN DNS:scraper.example
    client_key: Path
    stranger_cert: Path  # signed by ca, SAN DNS:stranger.example
    stranger_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> _Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
             "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", "server.key", "-out", "server.crt", cwd=d)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-days", "1", "-subj", "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    for name, san in (("client", "DNS:scraper.example"), ("stranger", "DNS:stranger.example")):
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext",
                 "-out", f"{name}.crt", cwd=d)
    return _Pki(d / "server.crt", d / "server.key", d / "ca.crt", d / "client.crt",
                d / "client.key", d / "stranger.crt", d / "stranger.key")


def _client(pki: _Pki, *, max_version: ssl.TLSVersion | None = None, ciphers: str = "",
            cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.server_cert))
    if max_version is not None:
        ctx.maximum_version = max_version
    if ciphers:
        ctx.set_ciphers(ciphers)
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def _https(server: WebServer, ctx: ssl.SSLContext, path: str = "/metrics",
           headers: dict[str, str] | None = None) -> _Reply:
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=5, context=ctx)
    try:
        return _request(conn, path, headers)
    finally:
        conn.close()


def _tls(pki: _Pki, **kwargs: object) -> WebSettings:
    return WebSettings(cert_file=str(pki.server_cert), key_file=str(pki.server_key),
                       **kwargs)  # type: ignore[arg-type]


def test_tls_and_basic_auth_protect_every_path(
        serve: Callable[..., WebServer], pki: _Pki, hashes: dict[str, str]) -> None:
    server = serve(_tls(pki, basic_auth_users=hashes))
    ctx = _client(pki)
    for path in ("/metrics", "/healthz", "/"):
        assert _https(server, ctx, path).status == 401
    assert _https(server, ctx, headers=_basic("prometheus:wrong")).status == 401
    reply = _https(server, ctx, headers=_basic("prometheus:s3cret"))
    assert reply.status == 200
    assert b"portwatch_test_total 3.0\n" in reply.body
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        _get(f"http://127.0.0.1:{server.port}/metrics")  # plain HTTP is refused


@pytest.mark.parametrize(("client_cipher", "accepted"), [
    ("ECDHE-RSA-AES256-GCM-SHA384", True),
    ("ECDHE-RSA-AES128-GCM-SHA256", False),
])
def test_cipher_suites_from_the_file_are_enforced_for_tls12(
        serve: Callable[..., WebServer], pki: _Pki, client_cipher: str, accepted: bool) -> None:
    server = serve(_tls(pki, cipher_suites=("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",)))
    ctx = _client(pki, max_version=ssl.TLSVersion.TLSv1_2, ciphers=client_cipher)
    if accepted:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.cipher()[0] == client_cipher
    else:
        with pytest.raises(ssl.SSLError, match=r"HANDSHAKE_FAILURE|handshake failure"):
            _https(server, ctx)


def test_the_same_client_cipher_is_accepted_without_a_restriction(
        serve: Callable[..., WebServer], pki: _Pki) -> None:
    server = serve(_tls(pki))
    ctx = _client(pki, max_version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-RSA-AES128-GCM-SHA256")
    assert _https(server, ctx).status == 200


def test_min_version_tls13_refuses_a_tls12_only_client(
        serve: Callable[..., WebServer], pki: _Pki) -> None:
    server = serve(_tls(pki, min_version="TLS13"))
    with pytest.raises(ssl.SSLError, match=r"(?i)protocol version|alert"):
        _https(server, _client(pki, max_version=ssl.TLSVersion.TLSv1_2))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
            _client(pki).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() == "TLSv1.3"


def test_max_version_tls12_is_what_a_modern_client_gets(
        serve: Callable[..., WebServer], pki: _Pki) -> None:
    server = serve(_tls(pki, max_version="TLS12"))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
            _client(pki).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() == "TLSv1.2"


def _mtls(pki: _Pki, **kwargs: object) -> WebSettings:
    return _tls(pki, client_ca_file=str(pki.ca), client_auth_type="RequireAndVerifyClientCert",
                **kwargs)


def test_client_certificates_are_required_and_verified(
        serve: Callable[..., WebServer], pki: _Pki) -> None:
    server = serve(_mtls(pki))
    good = _client(pki, cert=(pki.client_cert, pki.client_key))
    assert _https(server, good).status == 200
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _https(server, _client(pki))  # no certificate at all
    with pytest.raises((ssl.SSLError, ConnectionError)):  # self-signed by a stranger
        _https(server, _client(pki, cert=(pki.server_cert, pki.server_key)))


def test_client_allowed_sans_admits_only_a_listed_san(
        serve: Callable[..., WebServer], pki: _Pki) -> None:
    server = serve(_mtls(pki, client_allowed_sans=("scraper.example",)))
    assert _https(server, _client(pki, cert=(pki.client_cert, pki.client_key))).status == 200
    stranger = _client(pki, cert=(pki.stranger_cert, pki.stranger_key))
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        _https(server, stranger)  # verified by the CA, but its SAN is not listed


def test_update_settings_swaps_tls_for_new_connections(
        serve: Callable[..., WebServer], pki: _Pki) -> None:
    server = serve()
    assert _once(server, "/").status == 200
    server.update_settings(_tls(pki))
    assert _https(server, _client(pki)).status == 200
