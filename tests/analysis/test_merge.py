"""Merging partial states: rotated files give the report of the uncut capture, flow by flow."""

from __future__ import annotations

import itertools
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.rotated import (
    PCAP_HEADER,
    assert_same_report,
    by_flow,
    flow_key,
    records_of,
    rotate,
    traffic,
)
from portwatch.analysis import run as run_module
from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.merge import CapturePartial, load_state, merge_partials, partial_of
from portwatch.analysis.report import merge_reports
from portwatch.analysis.run import analyze_paths, expand_inputs
from portwatch.capture.files.reader import open_capture, read_capture_path
from portwatch.ports import Transport
from portwatch.porttable.table import PortTable


def analyze(table: PortTable, path: Path) -> Analyzer:
    analyzer = Analyzer(table, capture=path.name)
    with read_capture_path(str(path)) as reader:
        for batch in reader:
            analyzer.feed(batch)
    return analyzer


def analyze_bytes(table: PortTable, data: bytes, name: str) -> Analyzer:
    analyzer = Analyzer(table, capture=name)
    for batch in open_capture(data, name, batch_size=64):
        analyzer.feed(batch)
    return analyzer


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """5,000 packets, and the same packets in 10 files of 500 (``editcap -c 500``)."""
    base = tmp_path_factory.mktemp("archive")
    uncut = traffic(base / "uncut.pcap", 5000)
    return uncut, rotate(uncut, base / "rotated", 500)


def test_rotated_files_merge_to_the_uncut_capture_flow_by_flow(
        table: PortTable, archive: tuple[Path, list[Path]]) -> None:
    uncut, parts = archive
    assert len(parts) == 10
    whole = analyze(table, uncut).report()
    merged = merge_partials([partial_of(analyze(table, p)) for p in parts]).report(table)
    assert len(merged.flows) == len(whole.flows) == 300
    assert_same_report(merged, whole)
    assert merged.captures == [p.name for p in parts]


def test_merging_finished_reports_instead_gets_flows_and_decisions_wrong(
        table: PortTable, archive: tuple[Path, list[Path]]) -> None:
    """The fixture exercises the problem: per-file reports split flows and lose handshakes."""
    uncut, parts = archive
    whole = analyze(table, uncut).report()
    naive = merge_reports([analyze(table, p).report() for p in parts])
    assert len(naive.flows) > 2 * len(whole.flows)
    assert {f.method for f in naive.flows} - {f.method for f in whole.flows}


def test_merge_order_is_time_order_whatever_order_the_partials_come_in(
        table: PortTable, archive: tuple[Path, list[Path]]) -> None:
    uncut, parts = archive
    partials = [partial_of(analyze(table, p)) for p in parts]
    shuffled = [partials[i] for i in (7, 2, 9, 0, 5, 1, 8, 3, 6, 4)]
    assert_same_report(merge_partials(shuffled).report(table), analyze(table, uncut).report())


def test_each_merged_flow_names_the_capture_it_started_in(
        table: PortTable, archive: tuple[Path, list[Path]]) -> None:
    _, parts = archive
    reports = [analyze(table, p).report() for p in parts]
    started_in: dict[tuple[Any, ...], str] = {}
    for part, rep in zip(parts, reports, strict=True):
        for key in by_flow(rep):
            started_in.setdefault(key, part.name)
    merged = merge_partials([partial_of(analyze(table, p)) for p in parts]).report(table)
    assert {flow_key(f.as_dict()): f.capture for f in merged.flows} == started_in
    assert merged.flows == sorted(merged.flows, key=lambda f: f.first_seen)


def test_a_handshake_in_the_first_file_decides_the_flow_in_the_next(table: PortTable) -> None:
    """SYN to port 50000 from port 80 in file 1; only data in file 2: 50000 is the service."""
    from helpers.rotated import packet

    def record(sec: int, frame: bytes) -> bytes:
        return struct.pack("<IIII", sec, 0, len(frame), len(frame)) + frame

    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    first = PCAP_HEADER + record(100, packet(a, b, 6, (80, 50000), flags=0x02))
    second = PCAP_HEADER + record(101, packet(b, a, 6, (50000, 80), flags=0x18, payload=b"hi"))
    alone = analyze_bytes(table, second, "2.pcap").report()
    assert (alone.flows[0].service_port, alone.flows[0].method) == (80, "registry")
    merged = merge_partials([partial_of(analyze_bytes(table, first, "1.pcap")),
                             partial_of(analyze_bytes(table, second, "2.pcap"))]).report(table)
    [flow] = merged.flows
    assert (flow.service_port, flow.method, flow.packets) == (50000, "handshake", 2)
    assert (flow.packets_to_service, flow.packets_from_service) == (1, 1)
    assert flow.capture == "1.pcap"


def test_a_five_tuple_idle_longer_than_its_timeout_is_a_new_flow_when_asked(
        table: PortTable) -> None:
    from helpers.rotated import packet

    def capture(sec: int) -> bytes:
        frame = packet(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 17, (5353, 53),
                       flags=0, payload=b"q")
        return PCAP_HEADER + struct.pack("<IIII", sec, 0, len(frame), len(frame)) + frame

    parts = [partial_of(analyze_bytes(table, capture(s), f"{s}.pcap")) for s in (100, 130, 400)]
    assert len(merge_partials(parts).report(table).flows) == 1
    idle = {Transport.TCP: 300.0, Transport.UDP: 60.0, Transport.SCTP: 300.0,
            Transport.DCCP: 120.0}
    split = merge_partials(parts, idle_s=idle).report(table)
    assert [f.packets for f in split.flows] == [2, 1]
    assert [f.capture for f in split.flows] == ["100.pcap", "400.pcap"]


def test_partials_pickle_small_and_hold_no_port_table(
        table: PortTable, archive: tuple[Path, list[Path]]) -> None:
    partial = partial_of(analyze(table, archive[1][0]))
    data = pickle.dumps(partial)
    assert len(data) < 200 * partial.flows + 4096
    back: CapturePartial = pickle.loads(data)
    assert back.flows == partial.flows
    assert np.array_equal(back.keys, partial.keys)


def test_a_flow_table_column_without_a_merge_rule_is_refused(
        table: PortTable, archive: tuple[Path, list[Path]]) -> None:
    analyzer = analyze(table, archive[1][0])
    analyzer.flows.conn_state = np.zeros(analyzer.flows.capacity, dtype=np.uint8)  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match=r"conn_state.*COLUMN_MERGE"):
        partial_of(analyzer)


def test_merging_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one capture"):
        merge_partials([])


@pytest.fixture(scope="module")
def small_capture(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = traffic(tmp_path_factory.mktemp("small") / "small.pcap", 400, flows=40, seed=3)
    return path.read_bytes()


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_any_cut_of_a_capture_merges_back_to_it(table: PortTable, small_capture: bytes,
                                                cuts: list[int]) -> None:
    records = records_of(small_capture)
    bounds = [0, *sorted(set(cuts)), len(records)]
    pieces = [PCAP_HEADER + b"".join(records[lo:hi])
              for lo, hi in itertools.pairwise(bounds) if hi > lo]
    partials = [partial_of(analyze_bytes(table, data, f"{i}.pcap"))
                for i, data in enumerate(pieces)]
    whole = analyze_bytes(table, small_capture, "whole.pcap").report()
    assert_same_report(merge_partials(partials).report(table), whole)


# -- through analyze_paths: one process, the process pool, resume, failures -----------


@pytest.mark.parametrize("jobs", [1, 2])
def test_analyze_paths_over_rotated_files_gives_the_uncut_report(
        table: PortTable, archive: tuple[Path, list[Path]], jobs: int) -> None:
    uncut, parts = archive
    result = analyze_paths([str(p) for p in parts], table, jobs=jobs)
    assert result.report is not None
    assert not result.failures
    assert_same_report(result.report, analyze(table, uncut).report())


def test_globs_and_file_urls_name_the_same_captures(
        table: PortTable, archive: tuple[Path, list[Path]]) -> None:
    uncut, parts = archive
    directory = parts[0].parent
    assert expand_inputs([str(directory / "part_*.pcap")]) == [str(p) for p in parts]
    urls = expand_inputs([f"file://{directory}/part_*.pcap"])
    assert urls == [f"file://{p}" for p in parts]
    result = analyze_paths(urls, table)
    assert result.report is not None
    assert_same_report(result.report, analyze(table, uncut).report())
    assert result.report.captures == urls


def test_a_failing_capture_is_named_and_the_rest_still_merge(
        table: PortTable, archive: tuple[Path, list[Path]], tmp_path: Path) -> None:
    _, parts = archive
    bad = tmp_path / "not-a-capture.pcap"
    bad.write_bytes(b"hello, world")
    names = [str(parts[0]), str(bad), *(str(p) for p in parts[1:])]
    result = analyze_paths(names, table, jobs=2)
    assert [f.path for f in result.failures] == [str(bad)]
    assert result.report is not None
    assert result.partial
    assert any(str(bad) in w and "not a capture" in w for w in result.report.warnings)
    whole = analyze_paths([str(p) for p in parts], table).report
    assert whole is not None
    assert by_flow(result.report) == by_flow(whole)


def test_resume_reads_only_the_captures_whose_state_is_missing_or_stale(
        table: PortTable, archive: tuple[Path, list[Path]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    uncut, parts = archive
    copies = []
    for p in parts:
        copies.append(tmp_path / p.name)
        copies[-1].write_bytes(p.read_bytes())
    names = [str(p) for p in copies]
    state = str(tmp_path / "out")
    analyze_paths(names[:6], table, resume_dir=state)  # an earlier run, cut short
    copies[2].write_bytes(parts[2].read_bytes())  # rewritten: new mtime, read again
    os.utime(copies[2], ns=(1, 1))
    read: list[str] = []
    real = run_module._analyze_one

    def counting(*args: Any, **kwargs: Any) -> Analyzer:
        read.append(args[1].name)
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "_analyze_one", counting)
    result = analyze_paths(names, table, resume_dir=state)
    assert read == [names[2], *names[6:]]
    assert result.report is not None
    assert_same_report(result.report, analyze(table, uncut).report())
    assert load_state(state, names[0], "wrong fingerprint") is None


def test_fsspec_urls_are_streamed_and_a_missing_backend_is_a_named_failure(
        table: PortTable, archive: tuple[Path, list[Path]]) -> None:
    fsspec = pytest.importorskip("fsspec")
    uncut, parts = archive
    memory = fsspec.filesystem("memory")
    for p in parts:
        memory.pipe(f"/rotated/{p.name}", p.read_bytes())
    try:
        urls = expand_inputs(["memory://rotated/part_*.pcap"])
        assert urls == [f"memory:///rotated/{p.name}" for p in parts]
        result = analyze_paths([*urls, "nosuchfs://bucket/ring.pcap"], table)
    finally:
        memory.rm("/rotated", recursive=True)
    assert result.report is not None
    assert_same_report(result.report, analyze(table, uncut).report())
    [failure] = result.failures
    assert failure.path == "nosuchfs://bucket/ring.pcap"
    assert "cannot read" in str(failure)
