"""The scapy and pyshark engines give the native engine's report on every sample."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from portwatch.analysis.analyzer import Analyzer
from portwatch.capture.files.reader import read_capture_path
from portwatch.decode import ENGINES, decoder_for
from portwatch.decode.native import DecodedBatch, DecodeStatus
from portwatch.decode.rows import rows_to_batch, timestamp_ns
from portwatch.errors import CaptureFormatError, CaptureTruncatedError, UsageError
from portwatch.porttable.table import PortTable

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
SAMPLES = sorted(str(p.relative_to(PCAPS)) for p in [*PCAPS.glob("*.pcap*"),
                                                     *PCAPS.glob("tunnels/*.pcap*")])

Batches = Iterator[tuple[DecodedBatch, npt.NDArray[np.int64]]]


def _native(table: PortTable, path: Path) -> tuple[Analyzer, type[Exception] | None]:
    analyzer = Analyzer(table)
    try:
        with read_capture_path(str(path)) as reader:
            for batch in reader:
                analyzer.feed(batch)
    except CaptureTruncatedError as exc:
        return analyzer, type(exc)
    return analyzer, None


def _dissected(table: PortTable, batches: Callable[[], Batches]) -> tuple[
        Analyzer, type[Exception] | None]:
    analyzer = Analyzer(table)
    try:
        for decoded, stamps in batches():
            analyzer.feed_decoded(decoded, stamps)
    except CaptureTruncatedError as exc:
        return analyzer, type(exc)
    return analyzer, None


def _summary(analyzer: Analyzer) -> dict[str, Any]:
    report = analyzer.report()
    return {
        "packets": report.packets,
        "bytes": report.bytes,
        "decode": report.decode,
        "services": [(s.transport, s.port, s.service, s.status, s.packets, s.bytes, s.flows)
                     for s in report.services],
        "flows": sorted((f.transport, f.client, f.client_port, f.server, f.service_port,
                         f.method, tuple(f.flags), f.packets, f.bytes, f.encapsulation)
                        for f in report.flows),
    }


def _need(engine_name: str) -> None:
    if not SAMPLES:
        pytest.skip("no sample captures in pcaps/")
    if engine_name == "pyshark" and shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    pytest.importorskip(engine_name)


@pytest.mark.parametrize("name", SAMPLES)
def test_scapy_engine_reports_what_the_native_engine_reports(
        table: PortTable, name: str) -> None:
    _need("scapy")
    native, native_error = _native(table, PCAPS / name)
    scapy, scapy_error = _dissected(table, lambda: decoder_for("scapy")(str(PCAPS / name), 5))
    assert _summary(scapy) == _summary(native)
    assert scapy_error == native_error


@pytest.mark.parametrize("name", SAMPLES)
def test_pyshark_engine_reports_what_the_native_engine_reports(
        table: PortTable, name: str) -> None:
    _need("pyshark")
    native, native_error = _native(table, PCAPS / name)
    tshark, tshark_error = _dissected(table, lambda: decoder_for("pyshark")(str(PCAPS / name), 5))
    assert _summary(tshark) == _summary(native)
    assert tshark_error == native_error


@pytest.mark.parametrize("engine_name", ["scapy", "pyshark"])
def test_engines_give_the_native_decode_fields_packet_by_packet(engine_name: str) -> None:
    _need(engine_name)
    path = str(PCAPS / "sample.pcapng")
    with read_capture_path(path) as reader:
        batches = list(reader)
    from portwatch.decode.native import decode_batch

    native = [decode_batch(b) for b in batches]
    theirs = [d for d, _ in decoder_for(engine_name)(path, 4096)]
    for field in ("status", "ip_version", "ip_proto", "src_hi", "src_lo", "dst_hi", "dst_lo",
                  "src_port", "dst_port", "tcp_flags", "frag_id", "is_first_fragment",
                  "wirelen"):
        ours = np.concatenate([getattr(d, field) for d in native])
        got = np.concatenate([getattr(d, field) for d in theirs])
        assert got.tolist() == ours.tolist(), field
    stamps = np.concatenate([b.timestamps_ns for b in batches])
    got_stamps = np.concatenate([t for _, t in decoder_for(engine_name)(path, 7)])
    assert got_stamps.tolist() == stamps.tolist()


@pytest.mark.parametrize("engine_name", ["scapy", "pyshark"])
def test_engines_yield_batches_no_larger_than_asked(engine_name: str) -> None:
    _need(engine_name)
    sizes = [len(d) for d, _ in decoder_for(engine_name)(str(PCAPS / "sample.pcapng"), 10)]
    assert max(sizes) == 10
    assert sum(sizes) == 68


@pytest.mark.parametrize("engine_name", ["scapy", "pyshark"])
def test_engines_reject_a_file_that_is_no_capture_naming_it(
        engine_name: str, tmp_path: Path) -> None:
    _need(engine_name)
    bogus = tmp_path / "notes.pcap"
    bogus.write_bytes(b"these are notes, not packets\n" * 4)
    with pytest.raises(CaptureFormatError, match=r"notes\.pcap"):
        list(decoder_for(engine_name)(str(bogus), 4096))


@pytest.mark.parametrize("engine_name", ["scapy", "pyshark"])
def test_engines_yield_the_good_packets_of_a_cut_capture_then_raise(engine_name: str) -> None:
    _need(engine_name)
    got: list[int] = []
    batches = decoder_for(engine_name)(str(PCAPS / "truncated.pcap"), 4)
    with pytest.raises(CaptureTruncatedError, match=r"truncated\.pcap"):
        got.extend(s for decoded, _ in batches for s in decoded.status.tolist())
    assert len(got) == 6


def test_unknown_engine_is_a_usage_error_listing_the_choices() -> None:
    assert ENGINES == ("native", "scapy", "pyshark")
    with pytest.raises(UsageError, match="scapy, pyshark"):
        decoder_for("dpkt")


@pytest.mark.parametrize(("text", "ns"), [
    ("1700000000.123456789", 1_700_000_000_123_456_789),
    ("1700000000.123456", 1_700_000_000_123_456_000),
    ("0.000000000", 0),
    ("12", 12_000_000_000),
])
def test_epoch_text_becomes_exact_nanoseconds(text: str, ns: int) -> None:
    assert timestamp_ns(text) == ns


def test_rows_without_ip_keep_only_their_wire_length() -> None:
    from portwatch.decode.rows import Row

    batch = rows_to_batch([Row(DecodeStatus.TRUNCATED, 60, ip_version=4, src=7, src_port=9)])
    assert batch.wirelen.tolist() == [60]
    assert batch.ip_version.tolist() == [0]
    assert batch.src_lo.tolist() == [0]
    assert batch.src_port.tolist() == [0]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
@pytest.mark.parametrize(("capture", "damaged"), [("sample.pcapng", False),
                                                  ("truncated.pcap", True)])
def test_a_lost_tshark_exit_status_is_checked_with_tshark_itself(
    monkeypatch: pytest.MonkeyPatch, capture: str, damaged: bool
) -> None:
    """pyshark's child watcher can report 255 for a tshark that exited 0 (seen under load)."""
    from portwatch.decode import pyshark as pyshark_decoder

    crash = pyshark_decoder._crash_type()
    lost = crash("TShark (pid 1) seems to have crashed (retcode: 255).\nLast error line: \n")
    real_close = pyshark_decoder._close

    def close_losing_the_status(cap: Any, kind: type[Exception]) -> Exception | None:
        return real_close(cap, kind) or lost

    monkeypatch.setattr(pyshark_decoder, "_close", close_losing_the_status)
    batches = pyshark_decoder.iter_decoded(str(PCAPS / capture))
    if damaged:
        with pytest.raises(CaptureTruncatedError, match="tshark stopped after"):
            list(batches)
    else:
        assert sum(len(b) for b, _ in batches) > 0
