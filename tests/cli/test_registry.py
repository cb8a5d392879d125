"""The registry commands as a user runs them: output, exit codes, files left behind."""

from __future__ import annotations

import http.server
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from portwatch.cli import main
from portwatch.ports import Transport


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, warm_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    monkeypatch.setenv("PORTWATCH_DATA_DIR", str(data))
    monkeypatch.setenv("PORTWATCH_CACHE_DIR", str(warm_cache))
    monkeypatch.delenv("PORTWATCH_REGISTRY", raising=False)
    return data


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _tree(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_lookup_json_gives_canonical_name_aliases_and_resolved_people(
    official_xml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--registry", str(official_xml), "lookup", "--json", "80/tcp"]) == 0
    (answer,) = _json_lines(capsys.readouterr().out)
    assert answer["query"] == "80/tcp"
    assert answer["port"] == 80
    assert answer["transport"] == "tcp"
    assert answer["status"] == "assigned"
    assert answer["service"] == "http"
    assert answer["aliases"] == ["www", "www-http"]
    records = answer["records"]
    assert isinstance(records, list)
    assert len(records) == 3
    people = [p for r in records for p in r["assignees"] + r["contacts"]]
    assert any("@" in p["email"] for p in people)
    assert all("&" not in p["email"] for p in people)
    assert records[0]["provenance"]["path"] == str(official_xml)
    assert records[0]["provenance"]["last_updated"] == "2026-08-17"


def test_lookup_of_a_bare_port_answers_for_every_transport(
    official_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["lookup", "--json", "9100", "--registry", str(official_csv)]) == 0
    answers = _json_lines(capsys.readouterr().out)
    assert [a["transport"] for a in answers] == ["tcp", "udp", "sctp", "dccp"]
    assert [a["status"] for a in answers][:2] == ["assigned", "assigned"]
    # IANA lists hp-pdl-datastr first on 9100/tcp: it is canonical, the rest aliases
    assert answers[0]["service"] == "hp-pdl-datastr"
    assert answers[0]["aliases"] == ["pdl-datastream"]


def test_lookup_by_service_name_lists_all_its_ports(
    official_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--registry", str(official_csv), "lookup", "--json", "ssh"]) == 0
    answers = _json_lines(capsys.readouterr().out)
    assert {(a["port"], a["transport"], a["status"]) for a in answers} == {
        (22, "tcp", "assigned"), (22, "udp", "assigned"), (22, "sctp", "assigned"),
        (None, "tcp", "name-only"),  # the DNS-SD registration of the name, with no port
    }


def test_lookup_reads_queries_from_standard_input(
    official_csv: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("53/udp\n\n44515/tcp\n"))
    assert main(["--registry", str(official_csv), "lookup", "--json", "-"]) == 0
    answers = _json_lines(capsys.readouterr().out)
    assert [(a["service"], a["status"]) for a in answers] == [("domain", "assigned"),
                                                             ("", "unassigned")]
    assert answers[1]["flags"] == ["unauthorized-use"]


def test_lookup_table_output_is_readable_text(
    official_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--registry", str(official_csv), "lookup", "443/tcp"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["QUERY", "PORT", "TRANSPORT", "STATUS", "SERVICE"]
    assert out[1].split()[:5] == ["443/tcp", "443", "tcp", "assigned", "https"]


def test_unknown_service_name_is_reported_and_exit_status_is_one(
    official_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--registry", str(official_csv), "lookup", "no-such-service-xyz"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no-such-service-xyz" in err


def test_wrong_flag_is_a_one_line_error_with_exit_status_two(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["lookup", "--no-such-flag", "80"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--no-such-flag" in err


def test_registry_from_environment_variable_is_used(
    official_csv: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTWATCH_REGISTRY", str(official_csv))
    assert main(["registry", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["origin"] == "explicit"
    assert [s["path"] for s in info["sources"]] == [str(official_csv)]
    assert info["last_updated"] == "2026-04-09"


def test_registry_info_counts_kinds_and_coverage(
    official_csv: Path, official_xml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--registry", str(official_csv), "--registry", str(official_xml),
                 "registry", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [s["records"] for s in info["sources"]] == [14512, 14533]
    assert info["last_updated"] == "2026-08-17"
    assert info["assigned_only"] is False
    tcp = info["coverage"]["tcp"]
    # IANA lists nearly every port 0-49151 on tcp; the rest (e.g. 1008, udp only) unlisted
    assert 49000 < tcp["listed"] < 49152
    assert tcp["listed"] + tcp["unlisted"] == 49152
    assert tcp["dynamic"] == 16384


def test_packaged_snapshot_is_the_default_and_reports_true_statuses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["registry", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["origin"] == "packaged"
    assert info["snapshot"] == "packaged:service-names-port-numbers.xml.xz"
    assert info["last_updated"] == "2026-08-17"
    assert info["assigned_only"] is False
    assert main(["lookup", "--json", "0/tcp", "4/tcp", "8807/tcp", "80/tcp"]) == 0
    answers = _json_lines(capsys.readouterr().out)
    assert [a["status"] for a in answers] == ["reserved", "unassigned", "reserved", "assigned"]
    assert answers[3]["service"] == "http"
    assert answers[3]["aliases"] == ["www", "www-http"]
    assert all(a["registry"] == {"snapshot": "packaged:service-names-port-numbers.xml.xz",
                                 "last_updated": "2026-08-17"} for a in answers)


def test_registry_info_text_names_the_packaged_snapshot_and_its_date(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["registry", "info"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(
        "Registry answering: packaged:service-names-port-numbers.xml.xz, last updated 2026-08-17")
    assert "packaged with portwatch" in out


def test_services_file_named_with_registry_reports_unlisted_not_unassigned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    services = tmp_path / "services"
    services.write_text("ssh\t\t22/tcp\nhttp\t\t80/tcp\t\twww\n")
    assert main(["--registry", str(services), "lookup", "--json", "8794/tcp", "80/tcp"]) == 0
    unlisted, http = _json_lines(capsys.readouterr().out)
    assert unlisted["status"] == "unlisted"
    assert http["status"] == "assigned"
    assert main(["--registry", str(services), "registry", "info"]) == 0
    assert "unlisted" in capsys.readouterr().out


def test_compressed_registry_sources_are_read_by_content(
    official_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import bz2
    import gzip

    for name, pack in (("reg.gz", gzip.compress), ("reg.bz2", bz2.compress)):
        path = tmp_path / name
        path.write_bytes(pack(official_csv.read_bytes()))
        assert main(["--registry", str(path), "lookup", "--json", "4/tcp"]) == 0
        (answer,) = _json_lines(capsys.readouterr().out)
        assert answer["status"] == "unassigned"


def test_truncated_compressed_registry_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import lzma

    path = tmp_path / "cut.xz"
    path.write_bytes(lzma.compress(b"x" * 100_000)[:60])
    assert main(["--registry", str(path), "lookup", "80/tcp"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{path}" in err
    assert "truncated" in err


def test_old_registry_warns_once_on_stderr_past_the_configured_age(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["--registry-max-age", "30", "lookup", "80/tcp", "22/tcp"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "older than 30" in err
    assert "portwatch registry update" in err
    monkeypatch.setenv("PORTWATCH_REGISTRY_MAX_AGE_DAYS", "0")
    assert main(["lookup", "80/tcp"]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("PORTWATCH_REGISTRY_MAX_AGE_DAYS", "100000")
    assert main(["lookup", "80/tcp"]) == 0
    assert capsys.readouterr().err == ""


def test_bad_registry_max_age_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["lookup", "80/tcp", "--registry-max-age", "-3"]) == 2
    assert "0 or more days" in capsys.readouterr().err
    monkeypatch.setenv("PORTWATCH_REGISTRY_MAX_AGE_DAYS", "soon")
    assert main(["lookup", "80/tcp"]) == 2
    assert "PORTWATCH_REGISTRY_MAX_AGE_DAYS" in capsys.readouterr().err


def test_unwritable_cache_directory_still_answers_without_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("PORTWATCH_CACHE_DIR", str(blocker / "cache"))
    assert main(["lookup", "--json", "4/tcp"]) == 0
    captured = capsys.readouterr()
    assert _json_lines(captured.out)[0]["status"] == "unassigned"
    assert captured.err == ""


def test_import_stores_sources_that_later_runs_use(
    official_csv: Path, isolated_dirs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["registry", "import", str(official_csv)]) == 0
    assert "14512 records" in capsys.readouterr().out
    manifest = json.loads((isolated_dirs / "registry" / "manifest.json").read_text())
    assert len(manifest["sources"]) == 1
    assert main(["registry", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["origin"] == "data-dir"
    assert info["sources"][0]["records"] == 14512


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"just some words\nnothing like a registry\n", "not an IANA port registry"),
        (b"\x00\x01\x02binary\xff\xfe" * 50, "binary content"),
        (b"", "empty file"),
    ],
    ids=["garbage", "binary", "empty"],
)
def test_import_of_unusable_file_fails_and_leaves_the_data_directory_untouched(
    tmp_path: Path, official_csv: Path, isolated_dirs: Path, capsys: pytest.CaptureFixture[str],
    *, content: bytes, message: str,
) -> None:
    assert main(["registry", "import", str(official_csv)]) == 0
    before = _tree(isolated_dirs)
    bad = tmp_path / "bad-file"
    bad.write_bytes(content)
    capsys.readouterr()
    assert main(["registry", "import", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert str(bad) in err
    assert message in err
    assert _tree(isolated_dirs) == before


def test_truncated_csv_is_an_error_naming_file_and_line(
    tmp_path: Path, official_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = official_csv.read_bytes()
    cut = data.index(b'"The protocol name ""pdl-datastream""') + 30  # inside the quotes
    bad = tmp_path / "truncated.csv"
    bad.write_bytes(data[:cut])
    assert main(["--registry", str(bad), "lookup", "80/tcp"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    line = data[:cut].count(b"\n") + 1
    assert f"{bad}:" in err
    assert err.split(f"{bad}:")[1].split(":")[0].isdigit()
    assert int(err.split(f"{bad}:")[1].split(":")[0]) <= line


def test_broken_csv_row_is_skipped_with_a_warning_or_refused_under_strict(
    tmp_path: Path, official_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = official_csv.read_bytes().split(b"\r\n")
    lines[2] = b"echo,notaport,tcp,Echo,,,,,,,,"
    bad = tmp_path / "broken.csv"
    bad.write_bytes(b"\r\n".join(lines))
    assert main(["--registry", str(bad), "--no-cache", "lookup", "--json", "80/tcp"]) == 0
    captured = capsys.readouterr()
    assert f"{bad}:3:" in captured.err
    assert "notaport" in captured.err
    assert _json_lines(captured.out)[0]["service"] == "http"
    assert main(["--registry", str(bad), "--strict", "lookup", "80/tcp"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{bad}:3:" in err


def test_unreadable_registry_file_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.csv"
    assert main(["--registry", str(missing), "lookup", "80"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert str(missing) in err


def test_diff_between_2024_and_2026_lists_added_withdrawn_and_changed(
    history_csv: Path, official_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["registry", "diff", "--json", str(history_csv), str(official_csv)]) == 0
    captured = capsys.readouterr()
    changes = _json_lines(captured.out)
    kinds = {c["change"] for c in changes}
    assert {"added", "withdrawn", "changed"} <= kinds
    added = [c for c in changes if c["change"] == "added" and c["kind"] == "assigned"]
    assert added
    assert "added" in captured.err


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        body = self.routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    routes: dict[str, bytes] = {}
    handler = type("H", (_Handler,), {"routes": routes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", routes
    server.shutdown()
    server.server_close()


def test_update_downloads_validates_and_swaps_in_the_official_registry(
    http_server: tuple[str, dict[str, bytes]], official_xml: Path, official_csv: Path,
    isolated_dirs: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    base, routes = http_server
    routes["/ports.csv"] = official_csv.read_bytes()
    routes["/ports.xml"] = official_xml.read_bytes()
    # the CSV export (2026-04-09) is older than the packaged XML: only with --force
    assert main(["registry", "update", "--force", "--url", f"{base}/ports.csv"]) == 0
    assert main(["registry", "update", "--url", f"{base}/ports.xml"]) == 0
    assert "14533 records" in capsys.readouterr().out
    assert main(["registry", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [s["records"] for s in info["sources"]] == [14533]  # the XML replaced the CSV
    assert info["last_updated"] == "2026-08-17"


def test_update_to_a_newer_registry_takes_over_from_the_packaged_snapshot(
    http_server: tuple[str, dict[str, bytes]], official_xml: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    newer = official_xml.read_bytes().replace(
        b"<updated>2026-08-17</updated>", b"<updated>2026-11-30</updated>", 1
    ).replace(
        b"<record>\n    <protocol>tcp</protocol>\n    <description>Unassigned</description>\n"
        b"    <number>4</number>\n  </record>",
        b'<record date="2026-11-30">\n    <name>fresh-svc</name>\n    <protocol>tcp</protocol>\n'
        b"    <description>A service assigned after the snapshot</description>\n"
        b"    <number>4</number>\n  </record>", 1)
    assert b"fresh-svc" in newer
    base, routes = http_server
    routes["/newer.xml"] = newer
    assert main(["lookup", "--json", "4/tcp"]) == 0
    assert _json_lines(capsys.readouterr().out)[0]["status"] == "unassigned"
    assert main(["registry", "update", "--url", f"{base}/newer.xml"]) == 0
    assert "last updated 2026-11-30" in capsys.readouterr().out
    assert main(["registry", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["origin"] == "data-dir"
    assert info["last_updated"] == "2026-11-30"
    assert main(["lookup", "--json", "4/tcp"]) == 0
    (answer,) = _json_lines(capsys.readouterr().out)
    assert (answer["status"], answer["service"]) == ("assigned", "fresh-svc")
    assert answer["registry"]["last_updated"] == "2026-11-30"


def test_update_refuses_a_much_smaller_registry_and_keeps_the_current_one(
    http_server: tuple[str, dict[str, bytes]], official_csv: Path, isolated_dirs: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base, routes = http_server
    data = official_csv.read_bytes()
    routes["/full.csv"] = data
    routes["/small.csv"] = b"\r\n".join(data.split(b"\r\n")[:2000]) + b"\r\n"
    assert main(["registry", "update", "--force", "--url", f"{base}/full.csv"]) == 0
    before = _tree(isolated_dirs)
    capsys.readouterr()
    assert main(["registry", "update", "--force", "--url", f"{base}/small.csv"]) == 2
    err = capsys.readouterr().err
    assert "refusing" in err
    assert err.count("\n") == 1
    assert main(["registry", "update", "--url", f"{base}/missing.xml"]) == 2
    assert "404" in capsys.readouterr().err
    assert _tree(isolated_dirs) == before


def test_registry_statistics_are_computed_by_the_library_and_printed_as_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from portwatch.porttable.cache import load_table
    from portwatch.registry.model import RecordKind
    from portwatch.registry.stats import registry_stats

    services = tmp_path / "services"
    services.write_text("ssh\t\t22/tcp\nssh\t\t22/udp\nhttp\t\t80/tcp\t\twww\n")
    loaded = load_table([str(services)], cache=None)
    stats = registry_stats(loaded.full_registry(), loaded.table)
    assert stats.records_by_kind[RecordKind.ASSIGNED] == 4  # the alias www is a record too
    assert stats.records_by_kind_and_transport == {("assigned", "tcp"): 3,
                                                   ("assigned", "udp"): 1}
    assert stats.coverage[Transport.TCP]["listed"] == 2
    assert stats.coverage[Transport.TCP]["assigned"] == 2
    assert stats.coverage[Transport.TCP]["unlisted"] == 49152 - 2
    assert [(s.records, s.problems, s.assigned_only) for s in stats.sources] == [(4, 0, True)]
    assert main(["--registry", str(services), "registry", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {k: info[k] for k in stats.as_dict()} == json.loads(json.dumps(stats.as_dict()))


# 80 in Arabic-Indic and in fullwidth digits
@pytest.mark.parametrize("query", ["\u0668\u0660/tcp", "\uff18\uff10", "\u0668\u0660"])
def test_lookup_takes_only_ascii_digits_for_a_port(
    query: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["lookup", query]) == 1  # read as a service name, which does not exist
    assert "no service named" in capsys.readouterr().err
