"""Flow records in Parquet: the same flows as ``-f jsonl``, read back by pyarrow and DuckDB."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from helpers.rotated import rotate, traffic
from portwatch.analysis.parquet import MANIFEST, flow_schema, write_parquet
from portwatch.analysis.report import FlowReport
from portwatch.analysis.run import analyze_paths
from portwatch.cli import main
from portwatch.errors import OutputError
from portwatch.porttable.table import PortTable

pa = pytest.importorskip("pyarrow", reason="the parquet extra is not installed")
ds = pytest.importorskip("pyarrow.dataset")


@pytest.fixture(autouse=True)
def _registry(official_csv: Path, warm_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTWATCH_REGISTRY", str(official_csv))
    monkeypatch.setenv("PORTWATCH_CACHE_DIR", str(warm_cache))


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """3,000 packets over 3 s crossing midnight UTC, cut into 10 rotated files."""
    base = tmp_path_factory.mktemp("archive")
    uncut = traffic(base / "uncut.pcap", 3000, start_s=1_760_054_400 - 1)
    return rotate(uncut, base / "rotated", 300)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def jsonl_flows(capsys: pytest.CaptureFixture[str], names: list[str]) -> list[dict[str, Any]]:
    code, out, _ = run(capsys, "analyze", "-f", "jsonl", *names)
    assert code == 0
    return [json.loads(line) for line in out.splitlines()]


def canonical(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(({k: v for k, v in r.items() if k != "date"} for r in rows),
                  key=lambda r: (r["first_seen"], r["transport"], r["client"], r["client_port"],
                                 r["server"], r["service_port"]))


def test_parquet_directory_read_by_pyarrow_and_duckdb_gives_the_jsonl_flows(
        capsys: pytest.CaptureFixture[str], parts: list[Path], tmp_path: Path) -> None:
    names = [str(p) for p in parts]
    out = tmp_path / "flows"
    code, stdout, _ = run(capsys, "analyze", "-f", "parquet", "--output", str(out), *names)
    assert (code, stdout) == (0, "")
    expected = canonical(jsonl_flows(capsys, names))
    assert len(expected) == 300
    table = ds.dataset(str(out), format="parquet", partitioning="hive").to_table()
    assert canonical(table.to_pylist()) == expected
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    rel = con.execute(f"SELECT * FROM read_parquet('{out}/*/*.parquet', hive_partitioning = true)")
    columns = [d[0] for d in rel.description]
    rows = [dict(zip(columns, row, strict=True)) for row in rel.fetchall()]
    assert canonical(rows) == expected
    days = con.execute(f"SELECT DISTINCT CAST(date AS VARCHAR) FROM read_parquet("
                       f"'{out}/*/*.parquet', hive_partitioning = true) ORDER BY 1").fetchall()
    assert [d[0] for d in days] == ["2025-10-09", "2025-10-10"]


def test_one_file_per_capture_and_day_and_a_merged_flow_is_written_once(
        table: PortTable, parts: list[Path], tmp_path: Path) -> None:
    result = analyze_paths([str(p) for p in parts], table)
    assert result.report is not None
    out = tmp_path / "out"
    files = write_parquet(result.report, str(out))
    assert all(f.startswith("date=") and f.endswith(".parquet") for f in files)
    assert len({f.split("/", 1)[1] for f in files}) <= len(parts)
    manifest = json.loads((out / MANIFEST).read_text())
    assert sorted(manifest["captures"]) == sorted(str(p) for p in parts)
    assert sum(c["flows"] for c in manifest["captures"].values()) == 300
    back = ds.dataset(str(out), format="parquet", partitioning="hive").to_table()
    keys = {(r["transport"], r["client"], r["client_port"], r["server"], r["service_port"])
            for r in back.to_pylist()}
    assert len(back) == len(keys) == 300
    assert sorted(files) == sorted(f for c in manifest["captures"].values() for f in c["files"])
    later = [c for n, c in manifest["captures"].items() if n != str(parts[0])]
    assert any(not c["files"] for c in later)  # files that only continue flows hold none


def test_schema_follows_the_flow_record_fields_whatever_they_are() -> None:
    schema = flow_schema()
    assert [name for name, _, _ in schema] == [f.name for f in dataclasses.fields(FlowReport)]
    types = {name: t for name, t, _ in schema}
    assert (types["packets"], types["client"], types["flags"]) == ("int64", "string",
                                                                   "list<string>")


def test_a_new_flow_record_field_reaches_the_files(
        table: PortTable, parts: list[Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    result = analyze_paths([str(parts[0])], table)
    assert result.report is not None
    original = dataclasses.fields

    def with_extra(cls: Any) -> tuple[Any, ...]:
        fields = original(cls)
        if cls is FlowReport:
            extra = dataclasses.field()
            extra.name, extra.type = "a_future_field", "str | None"
            return (*fields, extra)
        return fields

    monkeypatch.setattr(dataclasses, "fields", with_extra)
    monkeypatch.setattr(FlowReport, "a_future_field", None, raising=False)
    write_parquet(result.report, str(tmp_path / "out"))
    back = ds.dataset(str(tmp_path / "out"), format="parquet", partitioning="hive").to_table()
    assert back.schema.field("a_future_field").type == pa.string()
    assert back.column("a_future_field").null_count == len(result.report.flows)


def test_files_of_an_earlier_run_not_written_again_are_removed(
        table: PortTable, parts: list[Path], tmp_path: Path) -> None:
    first = analyze_paths([str(p) for p in parts[5:]], table).report
    assert first is not None
    out = tmp_path / "out"
    old = set(write_parquet(first, str(out)))
    whole = analyze_paths([str(p) for p in parts], table).report
    assert whole is not None
    new = set(write_parquet(whole, str(out)))
    on_disk = {str(p.relative_to(out)) for p in out.glob("*/*.parquet")}
    assert on_disk == new
    assert old - new


def test_resume_skips_captures_already_read_and_writes_the_same_flows(
        capsys: pytest.CaptureFixture[str], parts: list[Path], tmp_path: Path) -> None:
    names = [str(p) for p in parts]
    fresh, resumed = tmp_path / "fresh", tmp_path / "resumed"
    assert run(capsys, "analyze", "-f", "parquet", "-o", str(fresh), *names)[0] == 0
    assert run(capsys, "analyze", "--resume", str(resumed), *names[:4])[0] == 0
    states = sorted((resumed / "_state").iterdir())
    assert len(states) == 4
    stamps = [s.stat().st_mtime_ns for s in states]
    assert run(capsys, "analyze", "--resume", str(resumed), *names)[0] == 0
    assert [s.stat().st_mtime_ns for s in states] == stamps  # not read, not saved again
    assert len(list((resumed / "_state").iterdir())) == 10

    def rows(d: Path) -> list[dict[str, Any]]:
        return canonical(ds.dataset(str(d), format="parquet", partitioning="hive")
                         .to_table().to_pylist())

    assert rows(resumed) == rows(fresh)


def test_a_failing_capture_is_named_exit_1_and_the_rest_are_written(
        capsys: pytest.CaptureFixture[str], parts: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all")
    out = tmp_path / "flows"
    code, _, err = run(capsys, "analyze", "-f", "parquet", "-o", str(out), str(bad),
                       *(str(p) for p in parts))
    assert code == 1
    assert f"skipped: {bad}: byte 0: not a capture" in err
    assert len(ds.dataset(str(out), format="parquet", partitioning="hive").to_table()) == 300
    assert json.loads((out / MANIFEST).read_text())["partial"] is True


@pytest.mark.parametrize(("argv", "message"), [
    (["-f", "parquet"], "give it with --output DIR"),
    (["--resume", "x", "-f", "json"], "takes no other --format"),
    (["--resume", "x", "-o", "y"], "takes no other --format or --output"),
])
def test_parquet_option_mistakes_are_usage_errors(
        capsys: pytest.CaptureFixture[str], parts: list[Path], argv: list[str],
        message: str) -> None:
    code, _, err = run(capsys, "analyze", *argv, str(parts[0]))
    assert code == 2
    assert message in err


def test_parquet_onto_a_file_is_refused(table: PortTable, parts: list[Path],
                                        tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    report = analyze_paths([str(parts[0])], table).report
    assert report is not None
    with pytest.raises(OutputError, match="not a directory"):
        write_parquet(report, str(target))
    assert os.path.isfile(target)
