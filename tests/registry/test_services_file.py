"""services(5) files: /etc/services and Wireshark's IANA-derived services."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portwatch.ports import Transport
from portwatch.registry.formats.services_file import (
    looks_like_services,
    parse_services,
    parse_services_line,
)
from portwatch.registry.model import RecordKind, SourceFormat

WIRESHARK = Path("/usr/share/wireshark/services")
ETC = Path("/etc/services")

SAMPLE = """\
# Network services, Internet style
#
tcpmux\t\t1/tcp\t\t\t\t# TCP port service multiplexer

discard\t\t9/tcp\t\tsink null
discard\t\t9/udp\t\tsink null
ssh\t\t22/tcp/udp/sctp\t# The Secure Shell (SSH) Protocol
"""


def test_source_is_services_format_and_assigned_only() -> None:
    source = parse_services(SAMPLE, "services")
    assert source.info.format is SourceFormat.SERVICES
    assert source.info.assigned_only is True
    assert source.info.path == "services"
    assert source.problems == []


def test_comment_after_entry_becomes_the_description() -> None:
    source = parse_services(SAMPLE, "services")
    tcpmux = source.records[0]
    assert (tcpmux.name, tcpmux.port_low, tcpmux.transport) == ("tcpmux", 1, Transport.TCP)
    assert tcpmux.description == "TCP port service multiplexer"
    assert tcpmux.kind is RecordKind.ASSIGNED
    assert tcpmux.provenance.line == 3


def test_merged_protocols_give_one_record_per_transport() -> None:
    source = parse_services(SAMPLE, "services")
    ssh = [r for r in source.records if r.name == "ssh"]
    assert [r.transport for r in ssh] == [Transport.TCP, Transport.UDP, Transport.SCTP]
    assert {r.description for r in ssh} == {"The Secure Shell (SSH) Protocol"}


def test_aliases_follow_their_primary_as_records_noted_as_aliases() -> None:
    source = parse_services(SAMPLE, "services")
    on_9_tcp = [r for r in source.records if r.port_low == 9 and r.transport is Transport.TCP]
    assert [r.name for r in on_9_tcp] == ["discard", "sink", "null"]
    assert [r.notes for r in on_9_tcp] == ["", "alias of discard", "alias of discard"]


def test_blank_and_comment_lines_are_skipped() -> None:
    source = parse_services("\n   \n# only a comment\n\t# indented comment\n", "s")
    assert source.records == []
    assert source.problems == []


def test_port_range_is_kept_as_a_range() -> None:
    (tcp,) = parse_services("x11\t6000-6063/tcp\t# X Window System\n", "s").records
    assert (tcp.port_low, tcp.port_high, tcp.is_range) == (6000, 6063, True)


def test_same_name_port_and_transport_twice_gives_one_record() -> None:
    source = parse_services("echo 7/tcp\necho 7/tcp/udp\n", "s")
    assert [(r.name, r.transport) for r in source.records] == [
        ("echo", Transport.TCP),
        ("echo", Transport.UDP),
    ]


def test_appletalk_ddp_entries_are_skipped_without_complaint() -> None:
    source = parse_services("rtmp\t\t1/ddp\t\t\t# Routing Table Maintenance Protocol\n", "s")
    assert source.records == []
    assert source.problems == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ftp 70000/tcp", "expected a port"),
        ("ftp 21/tcpx", "unknown protocol 'tcpx'"),
        ("ftp 21", "no '/'"),
        ("ftp", "found only 'ftp'"),
        ("ftp 21-20/tcp", "expected a port"),
        ("ftp x/tcp", "expected a port"),
    ],
)
def test_bad_line_is_a_problem_and_the_rest_still_loads(line: str, message: str) -> None:
    source = parse_services(f"ssh 22/tcp\n{line}\ntelnet 23/tcp\n", "bad-services")
    assert [r.name for r in source.records] == ["ssh", "telnet"]
    (problem,) = source.problems
    assert (problem.path, problem.line) == ("bad-services", 2)
    assert message in problem.message


def test_last_updated_comes_from_a_dated_header_comment() -> None:
    text = "# services\n# Last updated: 2024-06-11\n\nssh 22/tcp\n"
    source = parse_services(text, "s")
    assert source.info.last_updated == date(2024, 6, 11)
    assert source.records[0].provenance.last_updated == date(2024, 6, 11)


def test_without_a_dated_header_last_updated_is_none() -> None:
    text = "# services\nssh 22/tcp\n# updated 2024-06-11\n"
    assert parse_services(text, "s").info.last_updated is None
    assert parse_services(SAMPLE, "s").info.last_updated is None


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (SAMPLE, True),
        ("tcpmux\t\t1/tcp/udp\t# TCP Port Service Multiplexer\n", True),
        ("x11 6000-6063/tcp\n", True),
        ("# just comments\n", False),
        ("Service Name,Port Number,Transport Protocol\nftp,21,tcp\n", False),
        ("Service Name | Port Number | Transport Protocol |\n---|---|---|\n", False),
        ("hello world\nthis is prose\n", False),
    ],
)
def test_looks_like_services_recognises_services_files_only(head: str, expected: bool) -> None:
    assert looks_like_services(head) is expected


@pytest.mark.skipif(not WIRESHARK.exists(), reason="Wireshark's services file is not installed")
def test_wireshark_services_loads_with_zero_problems() -> None:
    text = WIRESHARK.read_text(encoding="utf-8")
    assert looks_like_services(text[:65536])
    source = parse_services(text, str(WIRESHARK))
    assert source.problems == []
    assert len(source.records) > 5000
    discard = {r.transport for r in source.records if r.name == "discard" and r.port_low == 9}
    assert discard == set(Transport)
    assert all(r.kind is RecordKind.ASSIGNED for r in source.records)


@pytest.mark.skipif(not ETC.exists(), reason="/etc/services is absent")
def test_system_services_loads_with_zero_problems() -> None:
    source = parse_services(ETC.read_text(encoding="utf-8", errors="replace"), str(ETC))
    assert source.problems == []


# --- property: generated lines round-trip ----------------------------------------------

_names = st.from_regex(r"[a-z][a-z0-9_.+-]{0,14}", fullmatch=True)


@given(
    name=_names,
    low=st.integers(0, 65535),
    span=st.integers(0, 3),
    transports=st.lists(st.sampled_from(list(Transport)), min_size=1, max_size=4, unique=True),
    aliases=st.lists(_names, max_size=3, unique=True),
    comment=st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=30),
    sep=st.sampled_from([" ", "\t", "\t\t", "  "]),
)
def test_generated_services_lines_round_trip(
    *,
    name: str,
    low: int,
    span: int,
    transports: list[Transport],
    aliases: list[str],
    comment: str,
    sep: str,
) -> None:
    high = min(low + span, 65535)
    aliases = [a for a in aliases if a != name]
    port = str(low) if high == low else f"{low}-{high}"
    protos = "/".join(t.label for t in transports)
    line = sep.join([name, f"{port}/{protos}", *aliases])
    if comment:
        line += f"{sep}# {comment}"
    entry = parse_services_line(line)
    assert entry is not None
    assert (entry.name, entry.port_low, entry.port_high) == (name, low, high)
    assert list(entry.transports) == transports
    assert list(entry.aliases) == aliases
    assert entry.comment == comment.strip()
    records = parse_services(line + "\n", "gen").records
    assert len(records) == len(transports) * (1 + len(aliases))
    assert [(r.name, r.transport) for r in records] == [
        (n, t) for n in [name, *aliases] for t in transports
    ]
