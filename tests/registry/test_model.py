from __future__ import annotations

from datetime import date

import pytest

from portwatch.ports import Transport
from portwatch.registry.model import RecordKind, classify_description, parse_registry_date


def test_tcp_transport_is_truthy_so_blank_checks_do_not_mistake_it_for_none() -> None:
    assert bool(Transport.TCP)
    assert Transport.TCP == 0  # still indexes the table's first row


@pytest.mark.parametrize(
    ("name", "port_given", "description", "kind"),
    [
        ("http", True, "World Wide Web HTTP", RecordKind.ASSIGNED),
        ("brski-proxy", False, "The BRSKI Proxy", RecordKind.NAME_ONLY),
        ("", True, "Reserved", RecordKind.RESERVED),
        ("", True, "Reserved - IANA", RecordKind.RESERVED),
        ("", True, "Unassigned", RecordKind.UNASSIGNED),
        ("", True, "unassigned", RecordKind.UNASSIGNED),
        ("", True, "Unassigned [was netstat]", RecordKind.UNASSIGNED),
        ("", True, "De-registered", RecordKind.UNASSIGNED),
        ("", True, "Removed", RecordKind.UNASSIGNED),
        ("", True, "Decomissioned Port 04/14/00, ms", RecordKind.UNASSIGNED),
        ("", True, "any private mail system", RecordKind.ASSIGNED),
    ],
)
def test_kind_of_a_row_follows_iana_conventions(
    name: str, port_given: bool, description: str, kind: RecordKind
) -> None:
    assert classify_description(name, port_given, description) is kind


def test_registry_dates_may_be_month_or_day_precise() -> None:
    assert parse_registry_date("2007-06") == date(2007, 6, 1)
    assert parse_registry_date("2020-04-29") == date(2020, 4, 29)
    assert parse_registry_date("2020-13-01") is None
    assert parse_registry_date("yesterday") is None
