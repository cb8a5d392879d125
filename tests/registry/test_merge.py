"""Several sources together: precedence by date, provenance, format detection."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portwatch.ports import PortStatus, Transport
from portwatch.porttable.compile import compile_table
from portwatch.registry.loader import detect_format, load_registry
from portwatch.registry.merge import merge_sources
from portwatch.registry.model import (
    ParsedSource,
    Provenance,
    RecordKind,
    ServiceRecord,
    SourceFormat,
    SourceInfo,
)

HEADER = (
    "| Service Name | Port Number | Transport Protocol | Description | Assignee | Contact | "
    "Registration Date | Modification Date | Reference | Service Code | "
    "Unauthorized Use Reported | Assignment Notes |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def _page(tmp_path: Path, name: str, updated: str, rows: str) -> Path:
    path = tmp_path / name
    path.write_text(f"Service Name and Transport Protocol Port Number Registry\n"
                    f"- Last Updated\n- {updated}\n{HEADER}{rows}")
    return path


def test_all_seeds_load_merged_with_no_unparsed_row(seed_files: list[Path]) -> None:
    registry = load_registry(seed_files, strict=True)
    assert registry.problems == []
    assert len(registry.sources) == len(seed_files) == 5
    table = compile_table(registry)
    assert table.lookup(Transport.TCP, 9100).service == "pdl-datastream"
    assert table.lookup(Transport.UDP, 44323).status is PortStatus.UNASSIGNED
    assert table.lookup(Transport.TCP, 8807).status is PortStatus.RESERVED


def test_seeds_merged_with_the_official_csv_still_parse_cleanly(
    seed_files: list[Path], official_csv: Path
) -> None:
    registry = load_registry([official_csv, *seed_files], strict=True)
    table = compile_table(registry)
    info = table.lookup(Transport.TCP, 44321)  # pmcd, in a seed dated 2026-05-11
    assert info.service == "pmcd"
    assert info.source.endswith(".txt")  # the seed is newer than the CSV (2026-04-09)
    older = table.lookup(Transport.TCP, 593)  # http-rpc-epmap: seed 000 is 2025-10-22
    assert older.source == str(official_csv)


@pytest.mark.parametrize(("updated", "winner"), [("2030-01-01", "newsvc"), ("2001-01-01", "")])
def test_newer_last_updated_wins_where_two_sources_disagree(
    tmp_path: Path, official_csv: Path, updated: str, winner: str
) -> None:
    page = _page(tmp_path, "page.md", updated,
                 "| newsvc | 8794 | tcp | A new service | [X] | [X] | 2029-12-01 |||||\n")
    for order in ([official_csv, page], [page, official_csv]):
        table = compile_table(load_registry(order))
        assert table.lookup(Transport.TCP, 8794).service == winner
    assert compile_table(load_registry([page])).lookup(Transport.TCP, 8794).service == "newsvc"


def test_specific_entry_inside_a_range_of_the_same_source_wins(tmp_path: Path) -> None:
    page = _page(tmp_path, "page.md", "2026-01-01",
                 "| 7748-7776 | Unassigned | ||||||||||\n"
                 "| inetfs | 7775 | tcp | InetFS | [Y] | [Y] | 2006-01 |||||\n")
    table = compile_table(load_registry([page]))
    assert table.lookup(Transport.TCP, 7775).service == "inetfs"
    assert table.lookup(Transport.UDP, 7775).status is PortStatus.UNASSIGNED
    assert table.lookup(Transport.TCP, 7776).status is PortStatus.UNASSIGNED


def test_every_record_keeps_its_provenance(tmp_path: Path) -> None:
    page = _page(tmp_path, "page.md", "2026-01-01",
                 "| a | 1000 | tcp | A | ||||||||\n| b | 1001 | udp | B | ||||||||\n")
    registry = load_registry([page])
    b = registry.records[1]
    assert (b.provenance.path, b.provenance.line) == (str(page), 7)
    assert b.provenance.last_updated is not None
    assert b.provenance.last_updated.isoformat() == "2026-01-01"


@pytest.mark.parametrize(
    ("name", "content", "fmt"),
    [
        ("ports.xml", "Service Name,Port Number,Transport Protocol,Description,Assignee,"
         "Contact,Registration Date,Modification Date,Reference,Service Code,"
         "Unauthorized Use Reported,Assignment Notes\r\nhttp,80,tcp,WWW,,,,,,,,\r\n",
         SourceFormat.IANA_CSV),
        ("registry.csv", "http 80/tcp www # World Wide Web\n", SourceFormat.SERVICES),
        ("services", HEADER + "| http | 80 | tcp | WWW | ||||||||\n", SourceFormat.TEXT_TABLE),
    ],
)
def test_format_comes_from_content_never_from_the_file_name(
    name: str, content: str, fmt: SourceFormat
) -> None:
    assert detect_format(content.encode(), name) is fmt


# --- the array form of the slot views is the dict form, order included ---------

_KINDS = st.sampled_from([RecordKind.ASSIGNED, RecordKind.RESERVED, RecordKind.UNASSIGNED,
                          RecordKind.NAME_ONLY])


@st.composite
def _source(draw: st.DrawFn, index: int) -> ParsedSource:
    """A small source whose ranges overlap each other, single ports and other sources."""
    records = []
    for line in range(draw(st.integers(0, 10))):
        low = draw(st.integers(0, 60))
        high = low + draw(st.sampled_from([0, 0, 1, 3, 20]))
        kind = draw(_KINDS)
        ports = (None, None) if kind is RecordKind.NAME_ONLY else (low, high)
        records.append(ServiceRecord(
            f"s{draw(st.integers(0, 4))}", *ports, draw(st.sampled_from([None, *Transport])),
            "d", kind, Provenance(f"src{index}", line + 1, None)))
    updated = draw(st.sampled_from([None, date(2020, 1, 1), date(2024, 1, 1)]))
    return ParsedSource(SourceInfo(f"src{index}", SourceFormat.IANA_CSV, updated), records)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_slot_view_arrays_equal_slot_views_in_value_and_order(data: st.DataObject) -> None:
    sources = [data.draw(_source(i)) for i in range(data.draw(st.integers(1, 3)))]
    registry = merge_sources(sources)
    expected = registry.slot_views()
    arrays = registry.slot_view_arrays()
    assert arrays.order.tolist() == [int(t) * 65536 + p for t, p in expected]
    assert [arrays.views[arrays.view_id[k]] for k in arrays.order.tolist()] == list(
        expected.values())
    assert int((arrays.view_id >= 0).sum()) == len(expected)


def test_slot_view_arrays_equal_slot_views_for_the_official_files(
    official_xml: Path, official_csv: Path, history_csv: Path
) -> None:
    registry = load_registry([history_csv, official_csv, official_xml])
    expected = registry.slot_views()
    arrays = registry.slot_view_arrays()
    assert arrays.order.tolist() == [int(t) * 65536 + p for t, p in expected]
    assert [arrays.views[v] for v in arrays.view_id[arrays.order].tolist()] == list(
        expected.values())
