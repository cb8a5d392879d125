"""Captures on a Dask cluster (2 worker processes on 127.0.0.1): the uncut report, even when a
worker dies."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.rotated import assert_same_report, rotate, traffic
from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.distributed import (
    ClusterProgress,
    Scheduler,
    analyze_on_cluster,
    local_cluster,
    parse_scheduler,
)
from portwatch.analysis.merge import CapturePartial, merge_partials
from portwatch.analysis.report import Report
from portwatch.analysis.run import analyze_paths
from portwatch.capture.files.reader import read_capture_path
from portwatch.errors import CaptureError, UsageError
from portwatch.porttable.table import PortTable

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")
Client = Any
LOCAL2 = Scheduler(local_workers=2)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """5,000 packets, and the same packets in 40 files (``editcap -c 125``)."""
    base = tmp_path_factory.mktemp("archive")
    uncut = traffic(base / "uncut.pcap", 5000)
    return uncut, rotate(uncut, base / "rotated", 125)


@pytest.fixture(scope="module")
def uncut_report(table: PortTable, archive: tuple[Path, list[Path]]) -> Report:
    analyzer = Analyzer(table, capture="uncut")
    with read_capture_path(str(archive[0])) as reader:
        for batch in reader:
            analyzer.feed(batch)
    return analyzer.report()


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """Two single-threaded worker processes on loopback, shared by this module's tests."""
    with local_cluster(2) as cluster, distributed.Client(cluster) as c:
        yield c


def test_two_workers_over_forty_rotated_files_give_the_uncut_report(
        table: PortTable, archive: tuple[Path, list[Path]], uncut_report: Report,
        client: Client) -> None:
    parts = [str(p) for p in archive[1]]
    assert len(parts) == 40
    seen: list[ClusterProgress] = []
    outcomes = analyze_on_cluster(parts, table, LOCAL2, client=client, progress=seen.append,
                                  sizes=[os.path.getsize(p) for p in parts])
    assert all(isinstance(o, CapturePartial) for o in outcomes)
    assert [o.capture for o in outcomes if isinstance(o, CapturePartial)] == parts
    merged = merge_partials([o for o in outcomes if isinstance(o, CapturePartial)])
    assert_same_report(merged.report(table), uncut_report)
    workers = set(client.run(os.getpid).values())
    assert len(workers) == 2
    assert [p.captures_done for p in seen] == list(range(1, 41))
    assert seen[-1].bytes == sum(os.path.getsize(p) for p in parts)
    assert seen[-1].packets == 5000
    assert "40/40 captures" in seen[-1].line()


def test_a_worker_killed_mid_run_has_its_captures_retried_and_the_report_is_the_same(
        table: PortTable, archive: tuple[Path, list[Path]], uncut_report: Report,
        client: Client) -> None:
    parts = [str(p) for p in archive[1]]
    pids = client.run(os.getpid)
    victim = next(iter(pids.values()))
    killed: list[int] = []

    def kill_once(progress: ClusterProgress) -> None:
        if not killed:
            os.kill(victim, signal.SIGKILL)
            killed.append(progress.captures_done)

    outcomes = analyze_on_cluster(parts, table, LOCAL2, client=client, progress=kill_once)
    assert killed == [1]
    assert len(outcomes) == 40
    partials = [o for o in outcomes if isinstance(o, CapturePartial)]
    assert_same_report(merge_partials(partials).report(table), uncut_report)
    client.wait_for_workers(2, timeout=60)  # the nanny restarts it for the next test


def test_a_failing_capture_is_reported_by_name_and_the_rest_merge(
        table: PortTable, archive: tuple[Path, list[Path]], client: Client,
        tmp_path: Path) -> None:
    bad = tmp_path / "cut.pcap"
    bad.write_bytes(b"\xd4\xc3\xb2\xa1")
    parts = [str(p) for p in archive[1]]
    outcomes = analyze_on_cluster([parts[0], str(bad), *parts[1:]], table, LOCAL2,
                                  client=client)
    [failure] = [o for o in outcomes if isinstance(o, CaptureError)]
    assert failure.path == str(bad)
    assert "cut short" in str(failure)
    assert sum(isinstance(o, CapturePartial) for o in outcomes) == 40


def test_local_scheduler_runs_a_whole_analysis_with_its_own_cluster(
        table: PortTable, archive: tuple[Path, list[Path]], uncut_report: Report,
        tmp_path: Path) -> None:
    bad = tmp_path / "empty.pcap"
    bad.write_bytes(b"")
    names = [*(str(p) for p in archive[1][:20]), str(bad), *(str(p) for p in archive[1][20:])]
    result = analyze_paths(names, table, scheduler="local:2")
    assert [f.path for f in result.failures] == [str(bad)]
    assert result.report is not None
    assert result.partial
    assert_same_report(result.report, uncut_report)


@pytest.mark.parametrize(("spec", "expected"), [
    ("local:3", Scheduler(local_workers=3)),
    ("tcp://10.0.0.5:8786", Scheduler(address="tcp://10.0.0.5:8786")),
    ("tls://sched.example:8786", Scheduler(address="tls://sched.example:8786")),
])
def test_scheduler_specs_parse(spec: str, expected: Scheduler) -> None:
    assert parse_scheduler(spec) == expected


@pytest.mark.parametrize("spec", ["local:0", "local:", "10.0.0.5:8786", "http://x:8786", ""])
def test_bad_scheduler_specs_are_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError, match="--scheduler"):
        parse_scheduler(spec)


def test_standard_input_cannot_go_to_a_cluster(table: PortTable) -> None:
    with pytest.raises(UsageError, match="standard input"):
        analyze_paths(["-"], table, scheduler="local:1")


def test_cli_scheduler_local_gives_the_jsonl_of_one_process_and_shows_progress(
        archive: tuple[Path, list[Path]], official_csv: Path, warm_cache: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from portwatch.cli import main

    monkeypatch.setenv("PORTWATCH_REGISTRY", str(official_csv))
    monkeypatch.setenv("PORTWATCH_CACHE_DIR", str(warm_cache))
    pattern = str(archive[1][0].parent / "part_*.pcap")
    assert main(["analyze", "-f", "jsonl", pattern]) == 0
    alone = capsys.readouterr()
    assert main(["analyze", "-f", "jsonl", "--scheduler", "local:2", pattern]) == 0
    clustered = capsys.readouterr()
    assert sorted(clustered.out.splitlines()) == sorted(alone.out.splitlines())
    assert "portwatch: 40/40 captures" in clustered.err
    assert "packets/s" in clustered.err


def test_jobs_and_scheduler_together_are_a_usage_error(table: PortTable) -> None:
    with pytest.raises(UsageError, match="exclude each other"):
        analyze_paths(["a.pcap", "b.pcap"], table, jobs=2, scheduler="local:2")


def test_local_workers_run_without_dask_malloc_trim_setting(client: Client) -> None:
    """Dask's MALLOC_TRIM_THRESHOLD_ makes numpy batches page-fault (see the docstring)."""
    environ = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                                  os.environ.get("OMP_NUM_THREADS")))
    assert set(environ.values()) == {(None, "1")}
