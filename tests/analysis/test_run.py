"""``analyze_paths``: worker processes, typed failures, spooling and its clean-up."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from portwatch.analysis.run import AnnotateRequest, analyze_paths, check_capture_magic
from portwatch.capture.files.reader import read_capture_path
from portwatch.errors import CaptureFormatError, OutputError, UsageError
from portwatch.porttable.table import PortTable

REPO = Path(__file__).resolve().parents[2]
PCAPS = REPO / "pcaps"
SAMPLE = PCAPS / "sample.pcapng"
TRUTH = json.loads((PCAPS / "truth.json").read_text()) if (PCAPS / "truth.json").exists() else {}


@pytest.fixture(autouse=True)
def _need_pcaps() -> None:
    if not SAMPLE.exists():
        pytest.skip("pcaps/sample.pcapng is missing: run `make pcaps`")


@pytest.fixture
def spool_dir(tmp_path: Path) -> Iterator[Path]:
    """Where spools go; every test ends with it empty."""
    path = tmp_path / "spool"
    path.mkdir()
    yield path
    assert list(path.iterdir()) == []


def _packets(path: Path) -> int:
    with read_capture_path(str(path)) as reader:
        return sum(len(batch) for batch in reader)


def _fifo_fed(tmp_path: Path, data: bytes) -> str:
    """A FIFO a thread writes ``data`` into once a reader opens it."""
    fifo = tmp_path / "capture.fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as out:
            out.write(data)

    threading.Thread(target=feed, daemon=True).start()
    return str(fifo)


def test_parallel_run_merges_to_the_same_report_as_one_process(table: PortTable) -> None:
    names = [str(PCAPS / n) for n in ("eth-le-usec.pcap", "linktype-sll-113.pcap",
                                      "ip-corners.pcap")]
    serial = analyze_paths(names, table)
    parallel = analyze_paths(names, table, jobs=2)
    assert serial.report is not None
    assert parallel.report is not None
    assert parallel.report.as_dict(include_flows=True) == serial.report.as_dict(
        include_flows=True)
    assert parallel.failures == []


def test_worker_failure_is_a_typed_error_with_its_file_and_offset(
    table: PortTable, tmp_path: Path,
) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"not a capture at all" * 10)
    result = analyze_paths([str(SAMPLE), str(junk)], table, jobs=2)
    (failure,) = result.failures
    assert isinstance(failure, CaptureFormatError)
    assert (failure.path, failure.offset) == (str(junk), 0)
    assert result.report is not None
    assert result.report.packets == TRUTH["sample.pcapng"]["packets"]
    assert result.report.partial
    assert f"skipped: {junk}: byte 0: not a capture" in result.report.warnings[0]


def test_damage_found_in_a_worker_keeps_its_byte_offset(table: PortTable) -> None:
    truth = TRUTH["truncated.pcap"]
    result = analyze_paths([str(PCAPS / "truncated.pcap"), str(SAMPLE)], table, jobs=2)
    assert result.report is not None
    assert result.report.partial
    assert any(f"truncated.pcap: byte {truth['truncated_at']}:" in w
               for w in result.report.warnings)


def test_capture_errors_cross_processes_with_path_and_offset() -> None:
    err = CaptureFormatError("bad record", path="/x/y.pcap", offset=4096)
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), back.path, back.offset, str(back)) == (
        CaptureFormatError, "/x/y.pcap", 4096, "/x/y.pcap: byte 4096: bad record")


def test_no_readable_capture_gives_no_report_and_every_failure(
    table: PortTable, tmp_path: Path,
) -> None:
    (tmp_path / "a.pcap").write_bytes(b"")
    (tmp_path / "b.pcap").write_bytes(b"junk" * 4)
    names = [str(tmp_path / "a.pcap"), str(tmp_path / "b.pcap")]
    result = analyze_paths(names, table)
    assert result.report is None
    assert result.partial
    assert [f.path for f in result.failures] == names
    assert "the input is empty" in str(result.failures[0])


def test_fifo_is_spooled_so_the_annotate_pass_can_read_it_again(
    table: PortTable, tmp_path: Path, spool_dir: Path,
) -> None:
    fifo = _fifo_fed(tmp_path, SAMPLE.read_bytes())
    out = tmp_path / "annotated.pcapng"
    result = analyze_paths([fifo], table, annotate=AnnotateRequest(str(out)),
                           spool_dir=str(spool_dir))
    assert result.report is not None
    assert result.report.packets == 68
    assert result.report.captures == [fifo]
    assert {f.capture for f in result.report.flows} == {fifo}
    assert _packets(out) == 68


def test_standard_input_is_spooled_for_annotate_and_named_dash(
    table: PortTable, tmp_path: Path, spool_dir: Path,
) -> None:
    out = tmp_path / "annotated.pcapng"
    result = analyze_paths(["-"], table, annotate=AnnotateRequest(str(out), only_flagged=True),
                           spool_dir=str(spool_dir), stdin=io.BytesIO(SAMPLE.read_bytes()))
    assert result.report is not None
    assert result.report.captures == ["-"]
    assert _packets(out) == 68


def test_standard_input_among_files_goes_to_a_worker_through_the_spool(
    table: PortTable, spool_dir: Path,
) -> None:
    result = analyze_paths([str(PCAPS / "eth-le-usec.pcap"), "-"], table, jobs=2,
                           spool_dir=str(spool_dir), stdin=io.BytesIO(SAMPLE.read_bytes()))
    assert result.report is not None
    assert result.report.captures == [str(PCAPS / "eth-le-usec.pcap"), "-"]
    assert result.report.packets == TRUTH["eth-le-usec.pcap"]["packets"] + 68


class _Yes:
    """``yes`` as a stream: endless ``y\\n``, counting what was asked of it."""

    def __init__(self) -> None:
        self.given = 0

    def read(self, n: int = -1) -> bytes:
        n = 1 << 20 if n < 0 else n
        self.given += n
        return (b"y\n" * (n // 2 + 1))[:n]

    read1 = read


@pytest.mark.parametrize("annotate", [True, False], ids=["spooled", "streamed"])
def test_endless_non_capture_input_fails_on_its_first_bytes(
    table: PortTable, tmp_path: Path, spool_dir: Path, annotate: bool,
) -> None:
    yes = _Yes()
    request = AnnotateRequest(str(tmp_path / "out.pcapng")) if annotate else None
    result = analyze_paths(["-"], table, annotate=request, spool_dir=str(spool_dir),
                           stdin=yes)  # type: ignore[arg-type]
    assert result.report is None
    (failure,) = result.failures
    assert isinstance(failure, CaptureFormatError)
    assert str(failure) == "-: byte 0: not a capture: first bytes '790a790a' are not pcap, " \
        "pcapng or gzip (nor zstd or lz4)"
    assert yes.given <= 2 << 20  # one read ahead at most, never the stream
    assert not (tmp_path / "out.pcapng").exists()


@pytest.mark.parametrize(("head", "ok"), [
    (b"\xd4\xc3\xb2\xa1", True), (b"\xa1\xb2\xc3\xd4", True), (b"\x4d\x3c\xb2\xa1", True),
    (b"\x0a\x0d\x0d\x0a", True), (b"\x1f\x8b\x08\x00", True), (b"y\ny\n", False),
    (b"", False), (b"\xd4\xc3", False),
])
def test_capture_magic_is_pcap_pcapng_or_gzip(head: bytes, ok: bool) -> None:
    if ok:
        check_capture_magic(head, "x")
    else:
        with pytest.raises(CaptureFormatError, match="not a capture"):
            check_capture_magic(head, "x")


def test_annotating_onto_a_directory_fails_before_reading(
    table: PortTable, tmp_path: Path,
) -> None:
    with pytest.raises(OutputError, match="is a directory"):
        analyze_paths([str(SAMPLE)], table, annotate=AnnotateRequest(str(tmp_path)))


def test_annotating_over_the_input_is_refused(table: PortTable, tmp_path: Path) -> None:
    copy = tmp_path / "c.pcapng"
    copy.write_bytes(SAMPLE.read_bytes())
    os.link(copy, tmp_path / "same-inode.pcapng")
    with pytest.raises(OutputError, match="refusing to overwrite the input capture"):
        analyze_paths([str(copy)], table,
                      annotate=AnnotateRequest(str(tmp_path / "same-inode.pcapng")))
    assert copy.read_bytes() == SAMPLE.read_bytes()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"jobs": 0}, "--jobs takes a positive number"),
    ({"engine": "wireshark"}, "unknown engine 'wireshark'"),
    ({"annotate": AnnotateRequest("x"), "engine": "scapy"}, "native engine only"),
])
def test_bad_run_options_are_usage_errors(table: PortTable, kwargs: dict[str, object],
                                          message: str) -> None:
    with pytest.raises(UsageError, match=message):
        analyze_paths([str(SAMPLE)], table, **kwargs)  # type: ignore[arg-type]


_CHILD = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
signal.signal(signal.SIGHUP, signal.SIG_DFL)
from portwatch.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def child_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("child-cache")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130),
                                           (signal.SIGHUP, 129)],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_signal_during_a_spool_leaves_no_temporary_file(
    tmp_path: Path, official_csv: Path, child_cache: Path, sig: signal.Signals, code: int,
) -> None:
    fifo = tmp_path / "live.fifo"
    os.mkfifo(fifo)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "annotated.pcapng"
    env = {**os.environ, "TMPDIR": str(tmp), "PORTWATCH_REGISTRY": str(official_csv),
           "PORTWATCH_CACHE_DIR": str(child_cache), "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, "analyze", "-f", "json", "--annotate", str(out),
         str(fifo)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    writer = os.open(fifo, os.O_RDWR)  # stays open: the capture never ends
    try:
        os.write(writer, SAMPLE.read_bytes())
        give_up = time.monotonic() + 120  # a hang guard, not a speed claim
        while not list(tmp.glob("portwatch-spool-*/0.cap")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < give_up, "the spool never started"
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        os.close(writer)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert b"Traceback" not in err
    assert list(tmp.iterdir()) == []
    assert not out.exists()
