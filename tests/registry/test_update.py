"""``DataStore.update_from`` / ``registry update``: a download is all or nothing.

A local HTTP server (127.0.0.1, in a thread) misbehaves on purpose: it cuts a
body short of its Content-Length, ends a chunked body early, trickles bytes,
or serves a registry older than the packaged one. Every refusal must leave
the data directory byte-identical.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path
from typing import ClassVar

import pytest

from portwatch.cli import main
from portwatch.errors import RegistryError, RegistryFormatError
from portwatch.registry.store import MAX_DOWNLOAD_BYTES, DataStore

NEWER = b"<updated>2026-11-30</updated>"
PACKAGED_DATE = b"<updated>2026-08-17</updated>"


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    monkeypatch.setenv("PORTWATCH_DATA_DIR", str(data))
    monkeypatch.setenv("PORTWATCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PORTWATCH_REGISTRY", raising=False)
    return data


def _tree(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file()}


@pytest.fixture(scope="module")
def newer_xml(official_xml: Path) -> bytes:
    """The packaged XML, dated after the snapshot."""
    data = official_xml.read_bytes()
    assert PACKAGED_DATE in data
    return data.replace(PACKAGED_DATE, NEWER, 1)


class _Misbehaving(http.server.BaseHTTPRequestHandler):
    """``/ok``, ``/cut`` (60% of the announced length), ``/chunked-cut``, ``/trickle``."""

    body: ClassVar[bytes] = b""
    stop: ClassVar[threading.Event] = threading.Event()
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.close_connection = True
        body = self.body
        route = self.path.split("?")[0]
        if route == "/chunked-cut":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            part = body[: len(body) * 6 // 10]
            for i in range(0, len(part), 65536):
                chunk = part[i : i + 65536]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            return  # no terminating 0-chunk: the connection just closes
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if route == "/ok":
            self.wfile.write(body)
        elif route == "/cut":
            self.wfile.write(body[: len(body) * 6 // 10])
        elif route == "/trickle":
            for i in range(0, len(body), 64):
                if self.stop.is_set():
                    return
                try:
                    self.wfile.write(body[i : i + 64])
                    self.wfile.flush()
                except OSError:
                    return  # the client gave up, as it should
                time.sleep(0.02)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[bytes], str]]:
    """``serve(body)`` -> base URL of a server answering every route with ``body``."""
    servers: list[http.server.ThreadingHTTPServer] = []
    stop = threading.Event()

    def start(body: bytes) -> str:
        handler = type("H", (_Misbehaving,), {"body": body, "stop": stop})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    stop.set()
    for server in servers:
        server.shutdown()
        server.server_close()


def test_newer_registry_downloads_and_becomes_the_official_source(
    serve: Callable[[bytes], str], newer_xml: bytes, isolated_dirs: Path,
) -> None:
    base = serve(newer_xml)
    parsed = DataStore(isolated_dirs).update_from(f"{base}/ok", timeout=30)
    assert str(parsed.info.last_updated) == "2026-11-30"
    stored = [p.read_bytes() for p in (isolated_dirs / "registry").glob("*.xml")]
    assert stored == [newer_xml]


def test_body_cut_at_sixty_percent_of_its_content_length_is_refused(
    serve: Callable[[bytes], str], newer_xml: bytes, isolated_dirs: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = serve(newer_xml)
    assert main(["registry", "update", "--url", f"{base}/ok"]) == 0
    before = _tree(isolated_dirs)
    capsys.readouterr()
    assert main(["registry", "update", "--url", f"{base}/cut"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"cut short: {len(newer_xml) * 6 // 10} of the {len(newer_xml)} bytes" in err
    assert _tree(isolated_dirs) == before


def test_chunked_body_that_ends_without_its_last_chunk_is_refused(
    serve: Callable[[bytes], str], newer_xml: bytes, isolated_dirs: Path,
) -> None:
    base = serve(newer_xml)
    with pytest.raises(RegistryError, match="cut short"):
        DataStore(isolated_dirs).update_from(f"{base}/chunked-cut", timeout=30)
    assert _tree(isolated_dirs) == {}


def test_trickling_server_is_stopped_by_the_overall_deadline(
    serve: Callable[[bytes], str], newer_xml: bytes, isolated_dirs: Path,
) -> None:
    # 64 bytes every 20 ms: each socket read succeeds, the whole would take 20 minutes
    base = serve(newer_xml)
    with pytest.raises(RegistryError, match=r"download took longer than 1 s"):
        DataStore(isolated_dirs).update_from(f"{base}/trickle", timeout=1.0)
    assert _tree(isolated_dirs) == {}


class _FakeResponse:
    """Endless 1 KiB reads, each one advancing a fake clock by a second."""

    def __init__(self, clock: list[float], length: int | None) -> None:
        self.headers = Message()
        if length is not None:
            self.headers["Content-Length"] = str(length)
        self._clock = clock
        self.reads = 0

    def read1(self, n: int) -> bytes:
        self._clock[0] += 1.0
        self.reads += 1
        return b"x" * min(n, 1024)

    def read(self, n: int = -1) -> bytes:
        return self.read1(n)

    def close(self) -> None:
        pass


def test_deadline_counts_every_read_not_each_one_alone(isolated_dirs: Path) -> None:
    now = [0.0]
    response = _FakeResponse(now, None)
    with pytest.raises(RegistryError, match="longer than 5 s"):
        DataStore(isolated_dirs).update_from(
            "http://example.invalid/r.xml", timeout=5.0,
            opener=lambda url, timeout: response, clock=lambda: now[0])
    assert response.reads == 5


def test_announced_size_over_the_limit_is_refused_before_reading(isolated_dirs: Path) -> None:
    now = [0.0]
    response = _FakeResponse(now, MAX_DOWNLOAD_BYTES + 1)
    with pytest.raises(RegistryError, match="more than 64 MiB"):
        DataStore(isolated_dirs).update_from(
            "http://example.invalid/r.xml", timeout=5.0, opener=lambda url, timeout: response)
    assert response.reads == 0


def test_body_over_the_limit_without_a_length_is_refused(isolated_dirs: Path) -> None:
    now = [0.0]
    response = _FakeResponse(now, None)
    with pytest.raises(RegistryError, match="larger than 10000 bytes"):
        DataStore(isolated_dirs).update_from(
            "http://example.invalid/r.xml", timeout=1e9, max_bytes=10_000,
            opener=lambda url, timeout: response, clock=lambda: now[0])
    assert response.reads == 10  # 10 KiB read, then refused: never the whole stream


def test_registry_older_than_the_packaged_snapshot_needs_force(
    serve: Callable[[bytes], str], official_csv: Path, isolated_dirs: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = serve(official_csv.read_bytes())  # IANA's CSV of 2026-04-09
    assert main(["registry", "update", "--url", f"{base}/ok"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "last updated 2026-04-09: the packaged snapshot is newer (2026-08-17)" in err
    assert "--force" in err
    assert _tree(isolated_dirs) == {}
    assert main(["registry", "update", "--force", "--url", f"{base}/ok"]) == 0
    assert "14512 records" in capsys.readouterr().out


def test_registry_older_than_the_current_download_needs_force(
    newer_xml: bytes, official_xml: Path, isolated_dirs: Path, tmp_path: Path,
) -> None:
    store = DataStore(isolated_dirs)
    store.replace_official(newer_xml, "newer.xml")
    before = _tree(isolated_dirs)
    with pytest.raises(RegistryError, match="the current registry is newer"):
        store.replace_official(official_xml.read_bytes(), "packaged-date.xml")
    assert _tree(isolated_dirs) == before
    store.replace_official(official_xml.read_bytes(), "packaged-date.xml", force=True)
    assert _tree(isolated_dirs) != before


def test_registry_with_many_unreadable_rows_is_refused(
    official_csv: Path, isolated_dirs: Path,
) -> None:
    lines = official_csv.read_bytes().split(b"\r\n")
    for i in range(2, 14):
        lines[i] = b"echo,notaport,tcp,Echo,,,,,,,,"
    with pytest.raises(RegistryFormatError, match=r"12 unreadable rows \(at most 10"):
        DataStore(isolated_dirs).replace_official(b"\r\n".join(lines), "broken.csv", force=True)
    assert _tree(isolated_dirs) == {}


def test_services_file_is_not_the_official_registry(isolated_dirs: Path) -> None:
    with pytest.raises(RegistryFormatError, match="expected the official IANA CSV or XML"):
        DataStore(isolated_dirs).replace_official(b"ssh\t22/tcp\nhttp\t80/tcp\n", "services")


def test_file_url_needs_no_network(newer_xml: bytes, isolated_dirs: Path,
                                   tmp_path: Path) -> None:
    copy = tmp_path / "copy.xml"
    copy.write_bytes(newer_xml)
    parsed = DataStore(isolated_dirs).update_from(copy.as_uri(), timeout=30)
    assert len(parsed.records) == 14533


def test_unsupported_url_scheme_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], isolated_dirs: Path,
) -> None:
    assert main(["registry", "update", "--url", "ftp://example.org/r.xml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "expected http(s) or file" in err
    assert _tree(isolated_dirs) == {}


def test_update_help_documents_url_timeout_and_force(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["registry", "update", "--help"])
    out = capsys.readouterr().out
    assert "file: URL" in out
    assert "--force" in out
    assert "whole download" in out

