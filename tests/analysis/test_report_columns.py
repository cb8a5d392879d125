"""The column-wise report equals the per-flow one, field by field and byte by byte.

Every capture under ``pcaps/`` (recursively) is analysed once; its report is
built by ``build_report`` and by the per-flow reference kept in
``tests/helpers/report_reference.py`` (the code before the fast path), and
every output format must come out identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.report_reference import csv_text, json_text, jsonl_text, reference_report
from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.render import OutputFormat, render
from portwatch.analysis.report import FlowReport, Report
from portwatch.capture.files.reader import read_capture_path
from portwatch.errors import CaptureError
from portwatch.porttable.cache import load_table
from portwatch.porttable.table import PortTable

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
CAPTURES = sorted(p for p in PCAPS.rglob("*") if p.suffix in (".pcap", ".pcapng", ".gz"))
#: A services(5) file: "assigned only" sentences, unlisted ports, a port range.
SERVICES = "http 80/tcp www\ndomain 53/udp\nssh 22/tcp\nmyapp 6000-6003/tcp\n"


@pytest.fixture(scope="module")
def services_table(tmp_path_factory: pytest.TempPathFactory) -> PortTable:
    path = tmp_path_factory.mktemp("services") / "services"
    path.write_text(SERVICES)
    return load_table([str(path)], cache=None).table


def _analysed(table: PortTable, capture: Path) -> Analyzer:
    analyzer = Analyzer(table, capture=str(capture))
    try:
        with read_capture_path(str(capture)) as reader:
            for batch in reader:
                analyzer.feed(batch)
    except CaptureError as exc:  # a damaged sample: the report of what was read
        analyzer.note_damage(str(exc))
    return analyzer


def test_the_samples_are_there() -> None:
    assert len(CAPTURES) >= 20
    assert any(p.parent.name == "tunnels" for p in CAPTURES)


@pytest.mark.parametrize("registry", ["official", "services"])
@pytest.mark.parametrize("capture", CAPTURES, ids=[str(p.relative_to(PCAPS)) for p in CAPTURES])
def test_every_format_of_every_sample_is_what_the_per_flow_report_gave(
    capture: Path, registry: str, table: PortTable, services_table: PortTable
) -> None:
    analyzer = _analysed(table if registry == "official" else services_table, capture)
    fast, slow = analyzer.report(), reference_report(analyzer)
    assert fast.flows == slow.flows
    assert fast.services == slow.services
    assert render(fast, OutputFormat.JSON) == json_text(slow)
    assert render(fast, OutputFormat.JSONL) == jsonl_text(slow)
    assert render(fast, OutputFormat.CSV) == csv_text(slow)
    for fmt in (OutputFormat.TABLE, OutputFormat.PROM):
        assert render(fast, fmt, width=100) == render(slow, fmt, width=100)


def test_the_samples_cover_every_kind_of_verdict(table: PortTable) -> None:
    """The comparison above means something: the samples flag flows every way."""
    flows = [f for p in CAPTURES for f in _analysed(table, p).report().flows]
    labels = {label for f in flows for label in f.flags}
    assert {"reserved", "unassigned", "unauthorized-use", "dynamic"} <= labels
    assert any(r.startswith("both ports of the flow are in the dynamic range")
               for f in flows for r in f.reasons)
    assert {f.transport for f in flows} >= {"tcp", "udp"}
    assert any(":" in f.client for f in flows)  # IPv6 addresses are formatted too


def test_each_flow_gets_lists_of_its_own(table: PortTable) -> None:
    """``--detect`` appends to a flow's flags and reasons: no list is shared."""
    report: Report = _analysed(table, PCAPS / "sample.pcapng").report()
    flagged: list[FlowReport] = report.flagged
    assert len({tuple(f.flags) for f in flagged}) < len(flagged)  # equal words exist
    lists = [id(x) for f in report.flows for x in (f.flags, f.reasons)]
    assert len(set(lists)) == len(lists)


def test_no_flows_give_the_same_empty_outputs(table: PortTable) -> None:
    analyzer = Analyzer(table, capture="empty.pcap")
    fast, slow = analyzer.report(), reference_report(analyzer)
    assert fast.flows == slow.flows == []
    assert render(fast, OutputFormat.CSV) == csv_text(slow)
    assert render(fast, OutputFormat.JSON) == json_text(slow)
    assert render(fast, OutputFormat.JSONL) == jsonl_text(slow) == ""
