"""Report rendering: the terminal table fits its width; ``prom`` is exposition prometheus parses."""

from __future__ import annotations

import io
import json
import re
import unicodedata
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from portwatch import __version__
from portwatch._terminal import should_color, terminal_width
from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.render import OutputFormat, _dumps, render
from portwatch.analysis.report import Report, ServiceCount
from portwatch.capture.files.reader import read_capture_path
from portwatch.porttable.cache import load_table

SAMPLE = Path(__file__).resolve().parents[2] / "pcaps" / "sample.pcapng"
SGR = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def report(official_csv: Path) -> Report:
    if not SAMPLE.exists():
        pytest.skip("pcaps/sample.pcapng is missing: run `make pcaps`")
    table = load_table([str(official_csv)], cache=None).table
    analyzer = Analyzer(table, capture=str(SAMPLE))
    with read_capture_path(str(SAMPLE)) as reader:
        for batch in reader:
            analyzer.feed(batch)
    return analyzer.report()


def width_of(line: str) -> int:
    total = 0
    for ch in SGR.sub("", line):
        if unicodedata.category(ch) in ("Mn", "Me"):
            continue
        total += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return total


def section(text: str, title_prefix: str) -> list[str]:
    """The lines of the table that follows the line starting with ``title_prefix``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title_prefix)) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
    return lines[start:end]


# -- table ------------------------------------------------------------------------------------

@pytest.mark.parametrize("width", [40, 80, 120, 200])
def test_every_table_line_fits_the_terminal_width(report: Report, width: int) -> None:
    for color in (False, True):
        text = render(report, OutputFormat.TABLE, width=width, color=color)
        too_long = [line for line in text.splitlines() if width_of(line) > width]
        assert too_long == []


def test_priority_columns_survive_at_80_columns(report: Report) -> None:
    text = render(report, OutputFormat.TABLE, width=80)
    services = section(text, str(SAMPLE))
    assert services[0].split()[:4] == ["port", "service", "status", "packets"]
    assert len(services) == 1 + len(report.services)
    flagged = section(text, "Flagged flows")
    assert flagged[0].split() == ["flow", "port", "status", "why"]
    assert [line.split()[3:5] for line in flagged[1:]] == [
        [f"{f.transport}/{f.service_port}", f.status] for f in report.flagged]
    assert "192.0.2.10:49205 -> 198.51.100.20" in text  # an IPv4 flow is never cut


def test_without_a_width_nothing_is_shortened_or_dropped(report: Report) -> None:
    text = render(report, OutputFormat.TABLE)
    assert "\u2026" not in text
    assert "\x1b" not in text
    assert section(text, "Flagged flows")[0].split() == \
        ["flow", "port", "status", "method", "packets", "why"]
    for flow in report.flagged:
        assert "; ".join(flow.reasons) in text
    assert "Known UNAUTHORIZED USE: Ports 44515 & 44516" in text
    assert "Packets without ports: fragment-attributed 3, icmp 2, non-ip 2" in text
    assert text.rstrip().splitlines()[-1].startswith("Registry: ")


def test_the_flags_column_adds_only_what_the_status_does_not_say(report: Report) -> None:
    rows = {line.split()[0]: line for line in section(render(report, OutputFormat.TABLE),
                                                       str(SAMPLE))[1:]}
    assert rows["tcp/44515"].endswith("unassigned        5    284      1  unauthorized-use")
    assert rows["tcp/8807"].endswith("reserved          5    284      1")


def test_statuses_are_coloured_only_with_color(report: Report) -> None:
    plain = render(report, OutputFormat.TABLE, width=120)
    coloured = render(report, OutputFormat.TABLE, width=120, color=True)
    assert "\x1b" not in plain
    assert "\x1b[31mreserved\x1b[0m" in coloured
    assert "\x1b[31munassigned\x1b[0m" in coloured
    assert "\x1b[32massigned\x1b[0m" in coloured
    assert "\x1b[34mdynamic\x1b[0m" in coloured
    assert SGR.sub("", coloured) == plain


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_color_disables_colour_on_a_terminal(report: Report) -> None:
    stream, env = FakeTTY(), {"NO_COLOR": "1", "COLUMNS": "80"}
    text = render(report, OutputFormat.TABLE, width=terminal_width(stream, env),
                  color=should_color(stream, env))
    assert "\x1b" not in text
    assert max(width_of(line) for line in text.splitlines()) <= 80


def test_control_characters_from_names_and_services_are_escaped(report: Report) -> None:
    evil = replace(report, captures=["cap\x1b]0;owned\x07.pcap"], services=[
        ServiceCount("tcp", 4444, "svc\x1b[2J\u202e", "assigned", 1, 60, 1, []),
        *report.services,
    ])
    for width in (None, 80):
        text = render(evil, OutputFormat.TABLE, width=width, color=True)
        assert "\x1b" not in SGR.sub("", text)
        assert "\u202e" not in text
        assert "cap\\x1b]0;owned\\x07.pcap" in text
        assert "svc\\x1b[2J\\u202e" in text


@pytest.mark.parametrize("fmt", [OutputFormat.JSON, OutputFormat.JSONL, OutputFormat.CSV,
                                 OutputFormat.PROM])
def test_machine_formats_ignore_width_and_colour(report: Report, fmt: OutputFormat) -> None:
    assert render(report, fmt, width=40, color=True) == render(report, fmt)


# -- prom -------------------------------------------------------------------------------------

def _families(text: str) -> dict[str, list[Sample]]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_prom_values_equal_the_report(report: Report) -> None:
    text = render(report, OutputFormat.PROM)
    got = _families(text)
    for metric, attr in (("portwatch_capture_packets", "packets"),
                         ("portwatch_capture_bytes", "bytes"),
                         ("portwatch_capture_flows", "flows")):
        assert {tuple(sorted(s.labels.items())): s.value for s in got[metric]} == {
            tuple(sorted({"transport": s.transport, "port": str(s.port), "service": s.service,
                          "status": s.status}.items())): getattr(s, attr)
            for s in report.services}
    flagged: dict[tuple[str, str, str, str], int] = {}
    for f in report.flagged:
        for reason in f.flags:
            key = (f.transport, str(f.service_port), f.status, reason)
            flagged[key] = flagged.get(key, 0) + 1
    assert {(s.labels["transport"], s.labels["port"], s.labels["status"], s.labels["reason"]):
            s.value for s in got["portwatch_capture_flagged_flows"]} == flagged
    assert {s.labels["reason"]: s.value for s in got["portwatch_capture_undecoded_packets"]} \
        == report.decode
    assert [s.value for s in got["portwatch_capture_analysed_packets"]] == [report.packets]
    assert [s.value for s in got["portwatch_capture_analysed_bytes"]] == [report.bytes]
    assert [s.labels for s in got["portwatch_build_info"]] == [{"version": __version__}]


def test_prom_families_are_gauges_named_by_prometheus_conventions(report: Report) -> None:
    text = render(report, OutputFormat.PROM)
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE))
    assert set(types.values()) == {"gauge"}
    assert [name for name in types if name.endswith(("_total", "_count", "_sum"))] == []
    assert "portwatch_capture_packets_total_count" not in text
    for name in types:
        assert re.fullmatch(r"portwatch_[a-z_]+", name)


def test_prom_label_values_and_help_survive_escaping(report: Report) -> None:
    odd = 'name "quoted"\\back\nslash'
    text = render(replace(report, services=[
        ServiceCount("udp", 9, odd, "assigned", 3, 180, 1, [])]), OutputFormat.PROM)
    (sample,) = _families(text)["portwatch_capture_packets"]
    assert sample.labels["service"] == odd
    assert sample.value == 3
    assert all(line.startswith(("#", "portwatch_")) for line in text.splitlines())


def test_an_empty_report_is_still_valid_exposition() -> None:
    empty = Report([], 0, 0, [], [], {}, {})
    got = _families(render(empty, OutputFormat.PROM))
    assert got["portwatch_capture_packets"] == []
    assert [s.value for s in got["portwatch_capture_analysed_packets"]] == [0]
    assert render(empty, OutputFormat.TABLE).splitlines()[:2] == [
        "capture: 0 packets, 0B, 0 flows",
        "port  service  status  packets  bytes  flows  flags"]


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(_JSON_VALUES)
def test_the_reused_encoder_writes_what_json_dumps_writes(value: object) -> None:
    assert _dumps(value) == json.dumps(value)
