"""The official IANA CSV parser, against the real export and against damaged copies."""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portwatch.errors import RegistryFormatError
from portwatch.ports import Transport
from portwatch.registry.formats.iana_csv import (
    HEADER,
    looks_like_iana_csv,
    parse_iana_csv,
    parse_port_text,
    split_bracketed,
)
from portwatch.registry.model import ParsedSource, RecordKind, SourceFormat

HEADER_LINE = ",".join(HEADER) + "\r\n"


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


@pytest.fixture(scope="module")
def official_text(official_csv: Path) -> str:
    return _read(official_csv)


@pytest.fixture(scope="module")
def parsed(official_csv: Path, official_text: str) -> ParsedSource:
    return parse_iana_csv(official_text, str(official_csv))


@pytest.fixture(scope="module")
def dict_rows(official_csv: Path) -> list[dict[str, str]]:
    with official_csv.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _row(*fields: str) -> str:
    """One CSV data row as IANA writes it: CRLF-terminated, quoted where needed."""
    out = io.StringIO()
    csv.writer(out).writerow(fields)
    return out.getvalue()


def _good(name: str, port: str, transport: str = "tcp", description: str = "Some service") -> str:
    return _row(name, port, transport, description, "", "", "", "", "", "", "", "")


# --- the real file ---------------------------------------------------------


def test_official_csv_parses_every_row_without_problems(parsed: ParsedSource) -> None:
    assert parsed.problems == []
    assert len(parsed.records) == 14_512


def test_official_csv_records_equal_an_independent_dictreader_row_by_row(
    parsed: ParsedSource, dict_rows: list[dict[str, str]]
) -> None:
    def expected(row: dict[str, str]) -> tuple[str, int | None, int | None, str, str]:
        port = row["Port Number"]
        low, _, high = port.partition("-")
        return (
            row["Service Name"],
            int(low) if low else None,
            int(high or low) if low else None,
            row["Transport Protocol"],
            row["Description"],
        )

    got = [
        (r.name, r.port_low, r.port_high, "" if r.transport is None else r.transport.label,
         r.description)
        for r in parsed.records
    ]
    assert got == [expected(row) for row in dict_rows]


def test_official_csv_other_fields_equal_the_dictreader_fields(
    parsed: ParsedSource, dict_rows: list[dict[str, str]]
) -> None:
    for record, row in zip(parsed.records, dict_rows, strict=True):
        assert record.registered == row["Registration Date"]
        assert record.modified == row["Modification Date"]
        assert record.service_code == row["Service Code"]
        assert record.unauthorized_use == row["Unauthorized Use Reported"]
        assert record.notes == row["Assignment Notes"]
        assert "".join(f"[{a}]" for a in record.assignees) == row["Assignee"]
        assert "".join(f"[{c}]" for c in record.contacts) == row["Contact"]
        assert "".join(f"[{x}]" for x in record.references) == row["Reference"]


def test_each_record_points_at_the_physical_line_where_its_row_starts(
    parsed: ParsedSource, official_text: str, dict_rows: list[dict[str, str]]
) -> None:
    lines = official_text.split("\n")
    for record, row in zip(parsed.records, dict_rows, strict=True):
        prefix = _row(row["Service Name"], row["Port Number"], row["Transport Protocol"])
        assert lines[record.provenance.line - 1].startswith(prefix.rstrip("\r\n") + ",")
    assert parsed.records[0].provenance.line == 2
    assert parsed.records[-1].provenance.line == 15_381  # the last physical line


def test_source_info_dates_the_csv_by_its_newest_date(
    parsed: ParsedSource, official_csv: Path
) -> None:
    info = parsed.info
    assert info.format is SourceFormat.IANA_CSV
    assert info.last_updated == date(2026, 4, 9)
    assert info.assigned_only is False
    assert info.sha256 == ""  # the loader hashes the bytes as read, once for every format
    assert {r.provenance.last_updated for r in parsed.records} == {date(2026, 4, 9)}
    assert {r.provenance.path for r in parsed.records} == {str(official_csv)}


def test_official_csv_counts_match_source_md(
    parsed: ParsedSource, dict_rows: list[dict[str, str]]
) -> None:
    records = parsed.records
    name_only = [r for r in records if r.port_low is None]
    assert len(name_only) == 1_058
    assert all(r.name and r.kind is RecordKind.NAME_ONLY for r in name_only)
    assert records[-len(name_only):] == name_only  # they come last
    ranges = [r for r, row in zip(records, dict_rows, strict=True) if "-" in row["Port Number"]]
    assert len(ranges) == 763
    assert all(r.port_low is not None and r.port_high is not None for r in ranges)
    assert all(r.port_low <= r.port_high for r in ranges)  # type: ignore[operator]
    named = {(r.name, r.port_text) for r in ranges if r.name}
    assert ("x11", "6000-6063") in named
    assert ("flex-lm", "27000-27009") in named
    transports = Counter(r.transport for r in records)
    assert transports == {
        Transport.TCP: 6_593,
        Transport.UDP: 6_351,
        None: 1_464,
        Transport.SCTP: 93,
        Transport.DCCP: 11,
    }
    assert max(r.port_high for r in records if r.port_high is not None) == 49_151
    assert sum(r.description == "Unassigned" for r in records) == 880
    assert sum(r.description == "Reserved" for r in records) == 809
    assert sum(not r.name for r in records) == 1_722


def test_unnamed_rows_are_classified_by_their_description(parsed: ParsedSource) -> None:
    kinds = {(r.port_text, r.transport, r.description): r.kind for r in parsed.records
             if not r.name}
    assert kinds[("0", Transport.TCP, "Reserved")] is RecordKind.RESERVED
    assert kinds[("4", Transport.TCP, "Unassigned")] is RecordKind.UNASSIGNED
    de_registered = [r for r in parsed.records if not r.name and r.description == "De-registered"]
    assert len(de_registered) == 5
    assert all(r.kind is RecordKind.UNASSIGNED for r in de_registered)


def test_multi_line_fields_keep_their_newlines(parsed: ParsedSource) -> None:
    whoispp = next(r for r in parsed.records if r.key == ("whoispp", "63", "tcp"))
    assert whoispp.description == (
        'whois++\nIANA assigned this well-formed service name as a replacement for "whois++".'
    )
    pon = next(r for r in parsed.records if r.key == ("pon-ictp", "7202", "tcp"))
    assert pon.references[0] == "TR-352"
    assert "\n" in pon.references[1]
    with_lf = [r for r in parsed.records
               if "\n" in r.description or "\n" in r.notes or any("\n" in x for x in r.references)]
    assert len(with_lf) == 444
    assert not any("\r" in r.description or "\r" in r.notes for r in parsed.records)


def test_non_ascii_text_survives(parsed: ParsedSource) -> None:
    non_ascii_bytes = sum(
        sum(b >= 0x80 for b in text.encode("utf-8"))
        for r in parsed.records
        for text in (r.name, r.description, r.notes, r.unauthorized_use,
                     *r.assignees, *r.contacts, *r.references)
    )
    assert non_ascii_bytes == 72


def test_duplicate_rdp_name_only_rows_are_both_kept(parsed: ParsedSource) -> None:
    rdp = [r for r in parsed.records if r.key == ("rdp", "", "")]
    assert [r.description for r in rdp] == [
        "Reliable Data Protocol",
        "Windows Remote Desktop Protocol",
    ]
    assert rdp[0].provenance.line != rdp[1].provenance.line


def test_bracketed_people_and_references_become_tuples(parsed: ParsedSource) -> None:
    tcpmux = parsed.records[2]
    assert tcpmux.key == ("tcpmux", "1", "tcp")
    assert tcpmux.assignees == ("Mark_Lottor",)
    assert tcpmux.contacts == ("Mark_Lottor",)
    exp1 = next(r for r in parsed.records if r.key == ("exp1", "1021", "tcp"))
    assert exp1.references == ("1", "RFC4727", "RFC6335")
    itu = [r for r in parsed.records if "ITU-T X.510 / ISO/IEC 9584-11" in r.references]
    assert len(itu) == 1
    dccp_discard = next(r for r in parsed.records if r.key == ("discard", "9", "dccp"))
    assert dccp_discard.service_code == "1145656131"


def test_official_csv_is_recognised_by_its_head(official_text: str) -> None:
    assert looks_like_iana_csv(official_text[:4096])


def test_history_csv_parses_cleanly(history_csv: Path) -> None:
    parsed = parse_iana_csv(_read(history_csv), str(history_csv))
    assert parsed.problems == []
    assert len(parsed.records) > 13_000
    assert parsed.info.last_updated is not None
    assert parsed.info.last_updated < date(2026, 4, 9)


def test_truncated_official_csv_names_the_line_where_the_cut_row_started(
    official_text: str,
) -> None:
    cut = official_text.index("whois++\nIANA assigned") + 12  # inside the quoted description
    with pytest.raises(RegistryFormatError, match="truncated") as err:
        parse_iana_csv(official_text[:cut], "cut.csv")
    assert err.value.line == 134
    assert err.value.path == "cut.csv"
    assert str(err.value).startswith("cut.csv:134: ")


def test_a_quote_that_never_closes_is_refused_as_an_overlong_field_with_the_row_line() -> None:
    runaway = 'x,1,tcp,"opened but never closed\n' + _good("echo", "7") * 6_000
    with pytest.raises(RegistryFormatError, match=r"longer than the 131,072-character limit"
                       r".*closing '\"' missing") as err:
        parse_iana_csv(HEADER_LINE + _good("a", "1") + runaway, "runaway.csv")
    assert err.value.line == 3


# --- synthetic input -------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        HEADER_LINE + _good("echo", "7"),
        "\ufeff" + HEADER_LINE + _good("echo", "7"),
        ",".join(HEADER) + "\necho,7,tcp,Echo,,,,,,,,\n",
        ",".join(HEADER),
        ",".join(f'"{h}"' for h in HEADER) + "\r\n",
    ],
    ids=["crlf", "bom", "lf", "header-only", "quoted"],
)
def test_official_header_is_recognised(head: str) -> None:
    assert looks_like_iana_csv(head)


@pytest.mark.parametrize(
    "head",
    [
        "",
        "Service Name,Port Number,Transport Protocol\r\n",
        ",".join(HEADER[:-1]) + "\r\n",
        ",".join((*HEADER, "Extra")) + "\r\n",
        "# services(5)\necho 7/tcp\n",
        "| Service Name | Port Number |\n",
        '"unterminated,' + HEADER_LINE,
    ],
    ids=["empty", "three-columns", "eleven", "thirteen", "services", "markdown", "quote"],
)
def test_other_content_is_not_taken_for_the_official_csv(head: str) -> None:
    assert not looks_like_iana_csv(head)


def test_bom_and_lf_only_line_endings_parse_the_same() -> None:
    body = _good("echo", "7") + _row("x", "8", "udp", "two\nlines", "", "", "", "", "", "", "", "")
    crlf = parse_iana_csv(HEADER_LINE + body, "a.csv")
    lf = parse_iana_csv(("\ufeff" + HEADER_LINE + body).replace("\r\n", "\n"), "b.csv")
    assert [(r.key, r.description, r.provenance.line) for r in crlf.records] == [
        (("echo", "7", "tcp"), "Some service", 2),
        (("x", "8", "udp"), "two\nlines", 3),
    ]
    assert [(r.key, r.description, r.provenance.line) for r in lf.records] == [
        (r.key, r.description, r.provenance.line) for r in crlf.records
    ]


def test_crlf_inside_a_field_becomes_lf() -> None:
    text = HEADER_LINE + _row("x", "8", "udp", "one\r\ntwo", "", "", "", "", "", "", "", "n\r\nb")
    (record,) = parse_iana_csv(text, "a.csv").records
    assert record.description == "one\ntwo"
    assert record.notes == "n\nb"


@pytest.mark.parametrize(
    ("bad_row", "quoted"),
    [
        (_good("x", "abc"), "'abc'"),
        (_good("x", "70000"), "'70000'"),
        (_good("x", "5-3"), "'5-3'"),
        (_good("x", "1-65536"), "'1-65536'"),
        (_good("x", "-5"), "'-5'"),
        (_good("x", "80", transport="tcpx"), "'tcpx'"),
        (_row("x", "80", "tcp", "too few fields"), "'x,80,tcp,too few fields'"),
        (_good("x", "80")[:-2] + ",extra\r\n", "extra"),
        ('x,80,tcp,"Desc"trailing,,,,,,,,\r\n', "expected after"),
    ],
    ids=["letters", "too-big", "backwards", "range-too-big", "negative", "transport",
         "few-fields", "many-fields", "stray-quote"],
)
def test_a_broken_row_is_a_problem_with_its_line_and_the_rest_still_loads(
    bad_row: str, quoted: str
) -> None:
    text = HEADER_LINE + _good("echo", "7") + _good("multi", "9", description="a\nb") + bad_row
    text += _good("discard", "9", transport="udp")
    parsed = parse_iana_csv(text, "reg.csv")
    assert [r.name for r in parsed.records] == ["echo", "multi", "discard"]
    assert [r.provenance.line for r in parsed.records] == [2, 3, 6]
    (problem,) = parsed.problems
    assert (problem.path, problem.line) == ("reg.csv", 5)
    assert quoted in problem.message
    assert str(problem).startswith("reg.csv:5: ")


@pytest.mark.parametrize(
    ("text", "line", "match"),
    [
        ("", None, "empty file"),
        ("\r\n \r\n", None, "empty file"),
        (HEADER_LINE + "abc\x00def\r\n", 2, "binary"),
        ("\udcff\udcfePK\x03\x04", 1, "binary"),
        ("PK\x03\x04 not a csv at all\r\n", 1, "expected 'Service Name,Port Number"),
        ("Service Name,Port Number\r\necho,7\r\n", 1, "found a row of 2 fields$"),
        (HEADER_LINE + 'x,1,tcp,"cut off here', 2, "truncated"),
        (HEADER_LINE + _good("a", "1") + 'x,1,tcp,"line one\nline two\n', 3, "truncated"),
    ],
    ids=["empty", "blank", "nul", "undecodable", "garbage", "short-header", "cut",
         "cut-multiline"],
)
def test_unusable_input_raises_a_format_error_saying_where(
    text: str, line: int | None, match: str
) -> None:
    with pytest.raises(RegistryFormatError, match=match) as err:
        parse_iana_csv(text, "bad.csv")
    assert err.value.path == "bad.csv"
    assert err.value.line == line


def test_last_updated_is_the_newest_registration_or_modification_date() -> None:
    text = HEADER_LINE
    text += _row("a", "1", "tcp", "A", "", "", "2001-02", "2019-12", "", "", "", "")
    text += _row("b", "2", "tcp", "B", "", "", "2020-04-29", "", "", "", "", "")
    text += _row("c", "3", "tcp", "C", "", "", "", "", "", "", "", "")
    parsed = parse_iana_csv(text, "a.csv")
    assert parsed.info.last_updated == date(2020, 4, 29)
    assert parsed.records[0].registered == "2001-02"
    assert parsed.records[0].modified == "2019-12"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", (None, None)),
        ("0", (0, 0)),
        ("80", (80, 80)),
        ("6000-6063", (6000, 6063)),
        ("65535", (65535, 65535)),
        ("4748-4748", (4748, 4748)),
    ],
)
def test_port_text_parses_single_ports_and_ranges(
    text: str, expected: tuple[int | None, int | None]
) -> None:
    assert parse_port_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("[Mark_Lottor]", ("Mark_Lottor",)),
        ("[RFC4743][RFC9900]", ("RFC4743", "RFC9900")),
        ("[ITU-T X.510 / ISO/IEC 9584-11]", ("ITU-T X.510 / ISO/IEC 9584-11",)),
        ("[a [nested] note][B]", ("a [nested] note", "B")),
        ("loose text [B]", ("loose text", "B")),
    ],
)
def test_bracketed_lists_split_into_their_items(text: str, expected: tuple[str, ...]) -> None:
    assert split_bracketed(text) == expected


# --- property --------------------------------------------------------------

_free_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\x00")
    | st.sampled_from(['"', ",", "\n", "é", "√", "ñ", " "]),
    max_size=40,
)
_ident = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Cc", "Z"), exclude_characters="[]"),
    min_size=1,
    max_size=12,
)
_date = st.one_of(
    st.just(""),
    st.dates(min_value=date(1980, 1, 1)).map(lambda d: d.isoformat()),
    st.dates(min_value=date(1980, 1, 1)).map(lambda d: d.isoformat()[:7]),
)


@st.composite
def _ports(draw: st.DrawFn) -> tuple[int | None, int | None]:
    if draw(st.booleans()):
        return None, None
    low = draw(st.integers(0, 65535))
    return low, draw(st.integers(low, 65535))


_record_fields = st.tuples(
    _free_text,  # name
    _ports(),
    st.sampled_from([None, *Transport]),
    _free_text,  # description
    st.lists(_ident, max_size=3),  # assignees
    st.lists(_ident, max_size=3),  # contacts
    _date,
    _date,
    st.lists(_ident, max_size=3),  # references
    _free_text,  # service code
    _free_text,  # unauthorized use
    _free_text,  # notes
)


def _port_field(low: int | None, high: int | None) -> str:
    if low is None:
        return ""
    return str(low) if low == high else f"{low}-{high}"


@settings(max_examples=60, deadline=None)
@given(st.lists(_record_fields, max_size=8))
def test_rows_written_by_csv_writer_parse_back_to_the_same_fields(
    rows: list[tuple],  # type: ignore[type-arg]
) -> None:
    out = io.StringIO()
    writer = csv.writer(out)  # CRLF record ends, quoting as needed
    writer.writerow(HEADER)
    for (name, (low, high), transport, desc, assignees, contacts, reg, mod, refs,
         sc, unauth, notes) in rows:
        writer.writerow([
            name, _port_field(low, high), "" if transport is None else transport.label, desc,
            "".join(f"[{a}]" for a in assignees), "".join(f"[{c}]" for c in contacts),
            reg, mod, "".join(f"[{r}]" for r in refs), sc, unauth, notes,
        ])
    parsed = parse_iana_csv(out.getvalue(), "prop.csv")
    assert parsed.problems == []
    got = [
        (r.name, (r.port_low, r.port_high), r.transport, r.description, list(r.assignees),
         list(r.contacts), r.registered, r.modified, list(r.references), r.service_code,
         r.unauthorized_use, r.notes)
        for r in parsed.records
    ]
    expected = [
        (name, ports, transport, desc, assignees, contacts, reg, mod, refs, sc, unauth, notes)
        for (name, ports, transport, desc, assignees, contacts, reg, mod, refs, sc, unauth,
             notes) in rows
    ]
    assert got == expected
    line = 2
    for record, row in zip(parsed.records, rows, strict=True):
        assert record.provenance.line == line
        line += 1 + sum(f.count("\n") for f in (row[0], row[3], row[9], row[10], row[11]))
