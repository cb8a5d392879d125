"""The HTTP side: /metrics, /healthz, index, TLS and basic auth (on loopback)."""

from __future__ import annotations

import base64
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from portwatch.daemon.web import WebServer
from portwatch.daemon.web_config import WebSettings


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


@pytest.fixture
def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Counter("portwatch_test", "a test counter", registry=reg).inc(3)
    return reg


def _serve(registry: CollectorRegistry, health: tuple[bool, str],
           settings: WebSettings | None = None) -> WebServer:
    server = WebServer("127.0.0.1:0", registry, lambda: health, settings)
    server.start()
    return server


def test_metrics_index_and_healthz(registry: CollectorRegistry) -> None:
    server = _serve(registry, (True, "capturing with dumpcap"))
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert _get(base + "/metrics") == (200, _get(base + "/metrics")[1])
        assert "portwatch_test_total 3.0" in _get(base + "/metrics")[1]
        assert 'href="/metrics"' in _get(base + "/")[1]
        assert _get(base + "/healthz") == (200, "capturing with dumpcap\n")
        assert _get(base + "/nope")[0] == 404
    finally:
        server.stop()


def test_healthz_is_503_with_the_reason_when_not_capturing(registry: CollectorRegistry) -> None:
    server = _serve(registry, (False, "dumpcap: exit status 1; restarting in 2s"))
    try:
        code, body = _get(f"http://127.0.0.1:{server.port}/healthz")
        assert code == 503
        assert body == "dumpcap: exit status 1; restarting in 2s\n"
    finally:
        server.stop()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_tls_and_basic_auth_protect_every_path(
        registry: CollectorRegistry, tls_files: tuple[Path, Path]) -> None:
    bcrypt = pytest.importorskip("bcrypt")
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    cert, key = tls_files
    settings = WebSettings(cert_file=str(cert), key_file=str(key),
                           basic_auth_users={"prometheus": hashed})
    server = _serve(registry, (True, "ok"), settings)
    context = ssl.create_default_context(cafile=str(cert))
    try:
        url = f"https://127.0.0.1:{server.port}/metrics"
        assert _get(url, context=context)[0] == 401
        assert _get(url, auth="prometheus:wrong", context=context)[0] == 401
        assert _get(url, auth="nobody:s3cret", context=context)[0] == 401
        code, body = _get(url, auth="prometheus:s3cret", context=context)
        assert code == 200
        assert "portwatch_test_total" in body
        assert _get(url, auth="prometheus:s3cret", context=context)[0] == 200  # cached
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            _get(f"http://127.0.0.1:{server.port}/metrics")  # plain HTTP is refused
    finally:
        server.stop()
