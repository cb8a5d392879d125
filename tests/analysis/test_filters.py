"""``--filter``: every expression is checked when parsed, then applied to a report."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portwatch.analysis.filters import FilterField, apply_filters, parse_filter, parse_filters
from portwatch.analysis.report import FlowReport, Report, ServiceCount
from portwatch.errors import UsageError
from portwatch.porttable.table import PortTable


def _flow(row: tuple[str, int, str, str, list[str], int]) -> FlowReport:
    transport, port, service, status, flags, packets = row
    return FlowReport(transport, "10.0.0.1", 40000, "10.0.0.2", port, service, status,
                      "handshake", list(flags), [], packets, packets * 100, packets, 0,
                      packets * 100, 0, "", "")


def _report() -> Report:
    rows = [("tcp", 80, "http", "assigned", [], 10), ("udp", 53, "domain", "assigned", [], 4),
            ("tcp", 44515, "", "unassigned", ["unassigned", "unauthorized-use"], 3),
            ("tcp", 8807, "", "reserved", ["reserved"], 2),
            ("udp", 60000, "", "dynamic", ["dynamic"], 1)]
    services = [ServiceCount(t, p, s, st_, n, n * 100, 1, list(f)) for t, p, s, st_, f, n in rows]
    flows = [_flow(row) for row in rows]
    return Report(["x.pcap"], 25, 2500, services, flows, {"non-ip": 5}, {}, [], False)


def _kept(table: PortTable, *exprs: str) -> list[tuple[str, int]]:
    report = apply_filters(_report(), parse_filters(exprs, table))
    services = [(s.transport, s.port) for s in report.services]
    assert services == [(f.transport, f.service_port) for f in report.flows]
    return services


@pytest.mark.parametrize(("exprs", "kept"), [
    (("status:unassigned",), [("tcp", 44515)]),
    (("STATUS:Reserved",), [("tcp", 8807)]),
    (("transport:udp",), [("udp", 53), ("udp", 60000)]),
    (("port:80",), [("tcp", 80)]),
    (("port:1-1024",), [("tcp", 80), ("udp", 53)]),
    (("flagged",), [("tcp", 44515), ("tcp", 8807), ("udp", 60000)]),
    (("flagged", "transport:tcp"), [("tcp", 44515), ("tcp", 8807)]),
    (("status=assigned", "transport:tcp"), [("tcp", 80)]),
])
def test_each_filter_keeps_what_it_names(table: PortTable, exprs: tuple[str, ...],
                                         kept: list[tuple[str, int]]) -> None:
    assert _kept(table, *exprs) == kept


@pytest.mark.parametrize("name", ["http", "HTTP", "Http", "www", "WWW-HTTP"])
def test_service_matches_any_case_and_by_alias(table: PortTable, name: str) -> None:
    assert _kept(table, f"service:{name}") == [("tcp", 80)]


def test_an_alias_stands_for_its_canonical_service(table: PortTable) -> None:
    parsed = parse_filter("service:www", table)
    assert parsed.field is FilterField.SERVICE
    assert parsed.values == frozenset({"http"})


def test_totals_count_only_what_the_filter_kept(table: PortTable) -> None:
    report = apply_filters(_report(), parse_filters(["flagged"], table))
    assert (report.packets, report.bytes) == (6, 600)
    assert report.as_dict()["flow_count"] == 3
    assert report.decode == {}  # packets without ports match no filter
    unfiltered = apply_filters(_report(), [])
    assert (unfiltered.packets, unfiltered.decode) == (25, {"non-ip": 5})


def test_top_limits_what_is_shown_not_the_totals(table: PortTable) -> None:
    report = apply_filters(_report(), parse_filters(["transport:tcp"], table), top=1)
    assert [s.port for s in report.services] == [80]
    assert [f.service_port for f in report.flows if f.flagged] == [44515]
    assert report.packets == 15


@pytest.mark.parametrize(("expr", "message"), [
    ("status:asigned", r"unknown status 'asigned'; expected one of unlisted, assigned, "
                       r"reserved, unassigned, dynamic; did you mean 'assigned'"),
    ("status:bogus", r"expected one of unlisted, assigned, reserved, unassigned, dynamic$"),
    ("transport:tpc", r"unknown transport 'tpc'; expected one of tcp, udp, sctp, dccp; "
                      r"did you mean 'tcp'\?"),
    ("port:70000", r"ports run from 0 to 65535 .*not '70000'"),
    ("port:-1", r"a port is a number 0-65535 or a range N-M, not '-1'"),
    ("port:http", r"not 'http' \(for a service name use service:http\)"),
    ("port:90-80", r"N <= M"),
    ("service:htpp", r"no service or alias 'htpp'.*did you mean .*'http'\?"),
    ("service:domian", r"did you mean 'domain', "),
    ("colour:red", r"unknown field 'colour'; expected status:S, service:NAME, port:N, "
                   r"transport:T or flagged"),
    ("statsu:assigned", r"unknown field 'statsu'.*did you mean 'status'\?"),
    ("flagged:yes", r"'flagged' takes no value"),
    ("status:", r"status needs a value, e\.g\. status:unassigned"),
    ("", r"unknown field ''"),
])
def test_bad_filter_is_a_usage_error_listing_valid_values(
    table: PortTable, expr: str, message: str,
) -> None:
    with pytest.raises(UsageError, match=message) as info:
        parse_filter(expr, table)
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)


@given(st.integers(0, 65535), st.integers(0, 65535))
def test_every_port_and_range_in_the_port_space_parses(low: int, high: int) -> None:
    low, high = min(low, high), max(low, high)
    parsed = parse_filter(f"port:{low}-{high}", _NO_TABLE)
    assert (parsed.low, parsed.high) == (low, high)
    assert parse_filter(f"port:{high}", _NO_TABLE).low == high


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=65536)))
def test_no_port_outside_the_port_space_parses(port: int) -> None:
    with pytest.raises(UsageError, match="port"):
        parse_filter(f"port:{port}", _NO_TABLE)


class _NoTable:
    """Port filters never look at the table: prove it by giving none."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"port filter looked at table.{name}")


_NO_TABLE: PortTable = _NoTable()  # type: ignore[assignment]
