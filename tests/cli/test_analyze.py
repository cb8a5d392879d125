"""``portwatch analyze`` as a user runs it: formats, exit codes, annotated copies."""

from __future__ import annotations

import csv
import io
import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from portwatch.cli import main

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
SAMPLE = PCAPS / "sample.pcapng"
TSHARK = shutil.which("tshark")


@pytest.fixture(autouse=True)
def _registry(official_csv: Path, warm_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTWATCH_REGISTRY", str(official_csv))
    monkeypatch.setenv("PORTWATCH_CACHE_DIR", str(warm_cache))
    if not SAMPLE.exists():
        pytest.skip("pcaps/sample.pcapng is missing: run `make pcaps`")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_report_has_services_flagged_flows_and_decode_counts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = _run(capsys, "analyze", "--format", "json", str(SAMPLE))
    assert (code, err) == (0, "")
    doc = json.loads(out)
    truth = json.loads((PCAPS / "truth.json").read_text())["sample.pcapng"]
    assert doc["packets"] == truth["packets"]
    assert {f"{s['transport']}/{s['port']}": s["packets"] for s in doc["services"]} == \
        truth["by_service"]
    assert set(doc["services"][0]) >= {"transport", "port", "service", "status", "packets",
                                       "bytes", "flows"}
    flagged = {(f["transport"], f["service_port"]) for f in doc["flagged"]}
    assert {("tcp", 44515), ("tcp", 8807), ("udp", 8806)} <= flagged
    assert ("tcp", 80) not in flagged
    assert doc["decode"]["icmp"] == 2
    assert doc["decode"]["non-ip"] == 2


def test_jsonl_gives_one_object_per_flow(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "analyze", "-f", "jsonl", str(SAMPLE))
    flows = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert len(flows) == len({(f["client"], f["client_port"], f["server"], f["service_port"],
                               f["transport"]) for f in flows})
    assert {f["method"] for f in flows} >= {"handshake", "registry"}


def test_csv_has_a_header_and_a_row_per_flow(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _run(capsys, "analyze", "-f", "csv", str(SAMPLE))
    rows = list(csv.DictReader(io.StringIO(out)))
    _, jsonl, _ = _run(capsys, "analyze", "-f", "jsonl", str(SAMPLE))
    assert len(rows) == len(jsonl.splitlines())
    assert {"service_port", "status", "flags", "reasons"} <= set(rows[0])


def test_prom_output_parses_as_prometheus_text_exposition(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = _run(capsys, "analyze", "-f", "prom", str(SAMPLE))
    families = {f.name: f for f in text_string_to_metric_families(out)}
    packets = families["portwatch_capture_packets"]
    by_port = {(s.labels["transport"], s.labels["port"]): s.value for s in packets.samples}
    assert by_port[("tcp", "80")] == 11
    assert any(s.labels["reason"] == "unauthorized-use"
               for s in families["portwatch_capture_flagged_flows"].samples)
    assert [s.value for s in families["portwatch_capture_analysed_packets"].samples] == [68]
    assert not [name for name, f in families.items()
                if f.type == "gauge" and name.endswith("_total")]


def test_table_output_names_services_and_flagged_flows(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _run(capsys, "analyze", "-f", "table", str(SAMPLE))
    assert "https" in out
    assert "Flagged flows" in out
    assert "tcp/44515" in out
    # standard output is not a terminal here: full text, no colour, nothing cut
    assert "Known UNAUTHORIZED USE: Ports 44515 & 44516" in out
    assert "\x1b" not in out
    assert "\u2026" not in out


def test_filter_and_top_narrow_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _run(capsys, "analyze", "-f", "json", "--filter", "status:unassigned",
                     str(SAMPLE))
    doc = json.loads(out)
    assert doc["services"]
    assert {s["status"] for s in doc["services"]} == {"unassigned"}
    _, out, _ = _run(capsys, "analyze", "-f", "json", "--top", "2", str(SAMPLE))
    assert len(json.loads(out)["services"]) == 2
    code, _, err = _run(capsys, "analyze", "--filter", "colour:red", str(SAMPLE))
    assert code == 2
    assert err.count("\n") == 1


def test_standard_input_is_read_with_dash(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(SAMPLE.read_bytes())))
    code, out, _ = _run(capsys, "analyze", "-f", "json", "-")
    assert code == 0
    assert json.loads(out)["packets"] == 68


def test_jobs_merge_the_same_counts_as_one_process(capsys: pytest.CaptureFixture[str]) -> None:
    captures = [str(PCAPS / n) for n in ("eth-le-usec.pcap", "linktype-sll-113.pcap",
                                         "ip-corners.pcap")]
    _, serial, _ = _run(capsys, "analyze", "-f", "json", *captures)
    _, parallel, _ = _run(capsys, "analyze", "-f", "json", "--jobs", "2", *captures)
    assert json.loads(serial)["services"] == json.loads(parallel)["services"]
    assert json.loads(parallel)["packets"] == sum(
        json.loads((PCAPS / "truth.json").read_text())[Path(c).name]["packets"] for c in captures)


def test_truncated_capture_reports_what_came_before_and_exits_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    truth = json.loads((PCAPS / "truth.json").read_text())["truncated.pcap"]
    code, out, err = _run(capsys, "analyze", "-f", "json", str(PCAPS / "truncated.pcap"))
    assert code == 1
    assert json.loads(out)["packets"] == truth["packets"]
    assert err.count("\n") == 1
    assert f"truncated.pcap: byte {truth['truncated_at']}" in err


def _damaged(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_record_claiming_four_gigabytes_is_damage_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray((PCAPS / "eth-le-usec.pcap").read_bytes())
    first_len = struct.unpack_from("<I", data, 24 + 8)[0]
    second = 24 + 16 + first_len
    struct.pack_into("<II", data, second + 8, 0xFFFF_FFF0, 0xFFFF_FFF0)
    code, out, err = _run(capsys, "analyze", "-f", "json",
                          _damaged(tmp_path, "huge.pcap", bytes(data)))
    assert code == 1
    assert json.loads(out)["packets"] == 1
    assert f"byte {second}" in err


def test_pcapng_block_with_a_wrong_length_keeps_earlier_packets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray(SAMPLE.read_bytes())
    pos = 0
    epbs = []
    while pos + 8 <= len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        if btype == 6:
            epbs.append(pos)
        pos += blen
    struct.pack_into("<I", data, epbs[5] + 4, 13)  # not a multiple of 4
    code, out, err = _run(capsys, "analyze", "-f", "json",
                          _damaged(tmp_path, "bad-block.pcapng", bytes(data)))
    assert code == 1
    assert json.loads(out)["packets"] == 5
    assert f"byte {epbs[5]}" in err


@pytest.mark.parametrize("content", [b"", b"random bytes, not a capture" * 20,
                                     bytes(range(256)) * 4], ids=["empty", "text", "binary"])
def test_unreadable_capture_is_a_one_line_error_with_exit_two(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    path = _damaged(tmp_path, "junk.pcap", content)
    code, out, err = _run(capsys, "analyze", path)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert path in err


def test_missing_capture_file_is_a_one_line_error(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    code, _, err = _run(capsys, "analyze", str(tmp_path / "absent.pcap"))
    assert code == 2
    assert "absent.pcap" in err
    assert err.count("\n") == 1


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 6623), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, 6624))
def test_mutated_captures_never_crash_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(SAMPLE.read_bytes())
    for pos, value in flips:
        data[pos % len(data)] = value
    path = _damaged(tmp_path, "mutant.pcapng", bytes(data[: max(cut, 1)]))
    code, out, err = _run(capsys, "analyze", "-f", "json", path)
    assert code in (0, 1, 2)
    if code == 2:
        assert out == ""
    else:
        assert json.loads(out)["packets"] >= 0
    assert "Traceback" not in err
    assert err.count("\n") <= 1


def _tshark(*args: str) -> list[list[str]]:
    assert TSHARK is not None
    out = subprocess.run([TSHARK, *args], capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_annotated_copy_carries_a_comment_tshark_shows_on_every_packet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_path = tmp_path / "annotated.pcapng"
    code, _, _ = _run(capsys, "analyze", "-f", "json", "--annotate", str(out_path), str(SAMPLE))
    assert code == 0
    rows = _tshark("-r", str(out_path), "-o", "ip.defragment:FALSE", "-o",
                   "ipv6.defragment:FALSE", "-T", "fields", "-e", "frame.comment",
                   "-e", "tcp.port", "-e", "udp.port", "-e", "sctp.port", "-e", "dccp.port")
    assert len(rows) == 68
    for comment, *ports in rows:
        portwatch = [c for c in comment.split(",") if c.startswith("portwatch:")]
        assert len(portwatch) == 1
        text = portwatch[0]
        seen = {p for field in ports for p in field.split(",") if p}
        if seen:  # tshark saw ports: our service port is one of them
            port = text.split("/")[1].split()[0]
            assert port in seen, (text, seen)


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_annotate_only_flagged_comments_just_the_flagged_packets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_path = tmp_path / "flagged.pcapng"
    _run(capsys, "analyze", "--annotate", str(out_path), "--annotate-only-flagged",
         "-f", "json", str(SAMPLE))
    rows = _tshark("-r", str(out_path), "-Y", 'frame.comment contains "portwatch"',
                   "-T", "fields", "-e", "frame.comment")
    comments = [r[0] for r in rows]
    assert comments
    assert all("portwatch: FLAG" in c for c in comments)
    assert any("tcp/44515" in c and "unauthorized" in c for c in comments)


def test_annotate_never_leaves_a_half_written_file(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out_path = tmp_path / "out.pcapng"
    out_path.write_bytes(b"precious")
    code, _, _ = _run(capsys, "analyze", "--annotate", str(out_path),
                      _damaged(tmp_path, "junk.pcap", b"junk" * 10))
    assert code == 2
    assert out_path.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_json_document_is_the_same_data_with_one_list_item_per_line() -> None:
    from portwatch.analysis.render import json_document

    doc = {"packets": 3, "services": [{"port": 80, "service": "http"}, {"port": 53}],
           "flagged": [], "decode": {"icmp": 1}}
    text = json_document(doc)
    assert json.loads(text) == doc
    assert '    {"port": 80, "service": "http"},\n' in text
    assert text.count("\n") == 9


# -- spooling, filters and outputs (portwatch.analysis.run / filters) -----------

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def child_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("child-cache")


def _child_env(official_csv: Path, cache: Path, tmp: Path) -> dict[str, str]:
    import os

    return {**os.environ, "TMPDIR": str(tmp), "PORTWATCH_REGISTRY": str(official_csv),
            "PORTWATCH_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO / "src")}


def test_fifo_with_annotate_gives_the_report_and_the_annotated_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    import os
    import threading

    fifo = tmp_path / "capture.fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as out:
            out.write(SAMPLE.read_bytes())

    threading.Thread(target=feed, daemon=True).start()
    out_path = tmp_path / "annotated.pcapng"
    code, out, err = _run(capsys, "analyze", "-f", "json", "--annotate", str(out_path),
                          "--spool-dir", str(tmp_path), str(fifo))
    assert (code, err) == (0, "")
    assert json.loads(out)["packets"] == 68
    assert json.loads(out)["captures"] == [str(fifo)]
    from portwatch.capture.files.reader import read_capture_path

    with read_capture_path(str(out_path)) as reader:
        assert sum(len(b) for b in reader) == 68
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated.pcapng", "cache",
                                                          "capture.fifo"]


@pytest.mark.skipif(shutil.which("yes") is None, reason="no yes(1)")
@pytest.mark.parametrize("extra", [[], ["--annotate", "out.pcapng"]],
                         ids=["streamed", "spooled"])
def test_yes_piped_into_analyze_fails_at_once_with_one_line(
    tmp_path: Path, official_csv: Path, child_cache: Path, extra: list[str],
) -> None:
    import sys

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    assert yes.stdout is not None
    try:
        done = subprocess.run(
            [sys.executable, "-m", "portwatch", "analyze", *extra, "-"], stdin=yes.stdout,
            capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False,
            env=_child_env(official_csv, child_cache, tmp))
    finally:
        yes.stdout.close()
        yes.kill()
        yes.wait()
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == "portwatch: error: -: byte 0: not a capture: first bytes " \
        "'790a790a' are not pcap, pcapng or gzip (nor zstd or lz4)\n"
    assert list(tmp.iterdir()) == []
    assert not (tmp_path / "out.pcapng").exists()


@pytest.mark.parametrize(("expr", "listed"), [
    ("status:asigned", "expected one of unlisted, assigned, reserved, unassigned, dynamic"),
    ("transport:icmp", "expected one of tcp, udp, sctp, dccp"),
    ("port:65536", "ports run from 0 to 65535"),
    ("port:https", "a port is a number 0-65535"),
    ("colour:red", "expected status:S, service:NAME, port:N, transport:T or flagged"),
    ("service:no-such-thing-xyz", "no service or alias 'no-such-thing-xyz'"),
])
def test_each_bad_filter_exits_two_listing_the_valid_values(
    capsys: pytest.CaptureFixture[str], expr: str, listed: str,
) -> None:
    code, out, err = _run(capsys, "analyze", "--filter", expr, str(SAMPLE))
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert listed in err


@pytest.mark.parametrize("name", ["HTTP", "www"])
def test_service_filter_matches_any_case_and_aliases(
    capsys: pytest.CaptureFixture[str], name: str,
) -> None:
    code, out, _ = _run(capsys, "analyze", "-f", "json", "--filter", f"service:{name}",
                        str(SAMPLE))
    doc = json.loads(out)
    assert code == 0
    assert [(s["transport"], s["port"], s["service"]) for s in doc["services"]] == [
        ("tcp", 80, "http")]
    assert doc["packets"] == doc["services"][0]["packets"] == 11  # only what was kept
    assert doc["flow_count"] >= 1
    assert doc["decode"] == {}


def test_report_over_one_of_its_inputs_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    import os

    capture = tmp_path / "c.pcapng"
    capture.write_bytes(SAMPLE.read_bytes())
    os.link(capture, tmp_path / "link.json")
    for target in (capture, tmp_path / "link.json"):
        code, out, err = _run(capsys, "analyze", "-o", str(target), str(capture))
        assert (code, out) == (2, "")
        assert err.count("\n") == 1
        assert f"refusing to overwrite the input capture '{capture}'" in err
    assert capture.read_bytes() == SAMPLE.read_bytes()


@pytest.mark.parametrize("flag", ["-o", "--annotate"])
def test_output_onto_a_directory_is_one_line_and_exit_two(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str,
) -> None:
    code, out, err = _run(capsys, "analyze", flag, str(tmp_path), str(SAMPLE))
    assert (code, out) == (2, "")
    assert err == f"portwatch: error: {tmp_path}: is a directory; expected a file name\n"


def test_report_onto_a_full_disk_is_one_line_and_leaves_no_temp_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno
    import os

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("portwatch._atomic.os.fsync", full)
    target = tmp_path / "report.json"
    code, out, err = _run(capsys, "analyze", "-o", str(target), str(SAMPLE))
    assert (code, out) == (2, "")
    assert err == f"portwatch: error: {target}: cannot write: No space left on device\n"
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_report_on_a_full_standard_output_is_one_line(
    tmp_path: Path, official_csv: Path, child_cache: Path,
) -> None:
    import sys

    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "portwatch", "analyze", "-f", "json", str(SAMPLE)],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=300, check=False,
            env=_child_env(official_csv, child_cache, tmp_path))
    assert done.returncode == 2
    assert done.stderr == "portwatch: error: standard output: cannot write the report: " \
        "No space left on device\n"


def test_errors_from_workers_keep_their_file_and_offset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"junk" * 64)
    code, out, err = _run(capsys, "analyze", "-f", "json", "--jobs", "2", str(SAMPLE),
                          str(junk))
    assert code == 1
    assert json.loads(out)["packets"] == 68
    assert err == f"portwatch: warning: skipped: {junk}: byte 0: not a capture: first bytes " \
        "'6a756e6b' are not pcap, pcapng or gzip (nor zstd or lz4)\n"
    code, out, err = _run(capsys, "analyze", "--jobs", "2", str(junk), str(junk))
    assert (code, out) == (2, "")
    assert err.splitlines()[-1].startswith(f"portwatch: error: {junk}: byte 0: not a capture")


def test_annotated_copy_reports_records_it_had_to_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record past what readers accept is cut in the copy, and the run says so."""
    big = b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + b"\x08\x00" + \
        bytes(300_000)
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 400_000, 1)
    record = struct.pack("<IIII", 1, 0, len(big), len(big)) + big
    capture = tmp_path / "big.pcap"
    capture.write_bytes(header + record)
    out = tmp_path / "copy.pcapng"
    code, _, err = _run(capsys, "analyze", "-f", "json", "--annotate", str(out), str(capture))
    assert code == 0
    assert out.exists()
    assert f"{out}: " in err
    assert "262,144 bytes is cut" in err
