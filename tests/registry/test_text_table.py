"""The text/Markdown renderings of the registry page: every quirk the seeds show."""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portwatch.errors import RegistryFormatError
from portwatch.ports import Transport
from portwatch.registry.formats.contacts import repair_contact_uri
from portwatch.registry.formats.iana_csv import split_bracketed
from portwatch.registry.formats.text_table import looks_like_text_table, parse_text_table
from portwatch.registry.model import ParsedSource, RecordKind, ServiceRecord

HEADER = (
    "Service Name | Port Number | Transport Protocol | Description | Assignee | Contact | "
    "Registration Date | Modification Date | Reference | Service Code | "
    "Unauthorized Use Reported | Assignment Notes |"
)
SEPARATOR = "---|" * 12
PAGE_HEAD = """Service Name and Transport Protocol Port Number Registry
- Last Updated
- 2025-10-22
- Expert(s)
-
TCP/UDP: Joe Touch
- Reference
- [RFC6335]
- Available Formats
-
CSV
"""


def page(*rows: str, outer: bool = False, people: str = "") -> str:
    """A page in the seeds' shape around the given service rows."""
    header, sep = HEADER, SEPARATOR
    if outer:
        header, sep = "| " + header, "|" + sep
    body = "\n".join([header, sep, *rows])
    return PAGE_HEAD + body + ("\nContact Information\n" + people if people else "")


def parse(text: str) -> ParsedSource:
    return parse_text_table(text, "page.txt")


def only(source: ParsedSource) -> ServiceRecord:
    assert source.problems == []
    assert len(source.records) == 1
    return source.records[0]


def ws(text: str) -> str:
    return " ".join(text.split())


# --- quirk 1: outer pipes or none ---------------------------------------------


def test_rows_with_and_without_outer_pipes_parse_alike() -> None:
    bare = parse(
        page(
            "bpmd | 3593 | tcp | BP Model Debugger | [Keith_Fligg] | [Keith_Fligg] |"
            " 2002-09 | |||||"
        )
    )
    outer = parse(
        page(
            "| bpmd | 3593 | tcp | BP Model Debugger | [Keith_Fligg] | [Keith_Fligg] |"
            " 2002-09 | |||||",
            outer=True,
        )
    )
    a, b = only(bare), only(outer)
    assert (a.name, a.port_low, a.transport, a.registered) == (
        "bpmd",
        3593,
        Transport.TCP,
        "2002-09",
    )
    assert (a.name, a.description, a.assignees, a.contacts, a.registered) == (
        b.name,
        b.description,
        b.assignees,
        b.contacts,
        b.registered,
    )


# --- quirk 2: collapsed empty cells, aligned by content ---------------------------


def test_collapsed_empty_cells_put_a_lone_rfc_in_the_reference_column() -> None:
    rec = only(
        parse(
            page(
                "| epp | 700 | tcp | Extensible Provisioning Protocol | [RFC5734] | |||||||",
                outer=True,
            )
        )
    )
    assert rec.references == ("RFC5734",)
    assert rec.assignees == ()
    assert rec.contacts == ()


def test_collapsed_empty_cells_keep_ids_dates_and_spaced_reference_apart() -> None:
    rec = only(
        parse(
            page(
                "x510 | 9877 | tcp | The X.510 wrapper protocol | [ITU_TSB_ITU-T_Study_Group_17] |"
                " [Erik_Andersen] | 2019-09-30 | [ITU-T X.510 / ISO/IEC 9584-11] | ||||"
            )
        )
    )
    assert rec.assignees == ("ITU_TSB_ITU-T_Study_Group_17",)
    assert rec.contacts == ("Erik_Andersen",)
    assert (rec.registered, rec.modified) == ("2019-09-30", "")
    assert rec.references == ("ITU-T X.510 / ISO/IEC 9584-11",)


def test_collapsed_empty_cells_with_two_dates_fill_registration_and_modification() -> None:
    rec = only(
        parse(
            page(
                "| pmcd | 44321 | tcp | PCP server (pmcd) | [Performance_Co-Pilot_PCP_Project] |"
                " [Ken_McDonell] | 2010-12-20 | 2025-09-29 | ||||",
                outer=True,
            )
        )
    )
    assert (rec.registered, rec.modified) == ("2010-12-20", "2025-09-29")


def test_collapsed_empty_cells_send_trailing_prose_to_assignment_notes() -> None:
    rec = only(
        parse(
            page(
                "kca-service | 9878 | udp | The KX509 Protocol | [IESG] | [IETF_Chair] |"
                " 2012-07-12 | [RFC6717] |"
                ' Historically, this service has been referred to as "kca_service". | |||'
            )
        )
    )
    assert rec.references == ("RFC6717",)
    assert rec.notes.startswith("Historically")
    assert rec.unauthorized_use == ""


def test_collapsed_empty_cells_send_unauthorized_use_text_to_its_column() -> None:
    rec = only(
        parse(
            page(
                "| 44446-44543 | Unassigned | Known UNAUTHORIZED USE: Ports 44515 & 44516 |"
                " |||||||||",
                outer=True,
            )
        )
    )
    assert rec.unauthorized_use == "Known UNAUTHORIZED USE: Ports 44515 & 44516"
    assert rec.notes == ""
    assert rec.kind is RecordKind.UNASSIGNED


def test_collapsed_empty_cells_after_an_unassigned_port_keep_its_note() -> None:
    rec = only(
        parse(
            page(
                '| 44323 | udp | Unassigned | "pcp" assignment withdrawn,'
                " moved to port 5351 per RFC6887 | ||||||||",
                outer=True,
            )
        )
    )
    assert (rec.name, rec.port_low, rec.transport) == ("", 44323, Transport.UDP)
    assert rec.description == "Unassigned"
    assert rec.notes == '"pcp" assignment withdrawn, moved to port 5351 per RFC6887'


# --- quirk 3: rows broken over lines ------------------------------------------------


def test_record_broken_over_two_lines_is_joined_into_one() -> None:
    source = parse(
        page(
            "erunbook-server | 9617 | tcp | eRunbook Server IANA assigned this name. |",
            "[Gerhard_Wagner] | [Gerhard_Wagner] | 2009-03-10 | |||||",
            "9617 | udp | Reserved | |||||||||",
        )
    )
    assert source.problems == []
    first, second = source.records
    assert ws(first.description) == "eRunbook Server IANA assigned this name."
    assert first.assignees == first.contacts == ("Gerhard_Wagner",)
    assert first.registered == "2009-03-10"
    assert first.provenance.line < second.provenance.line
    assert second.kind is RecordKind.RESERVED


def test_short_last_row_does_not_swallow_the_contact_information_heading() -> None:
    source = parse(
        page(
            "cba8 | 9593 | udp | LANDesk Management Agent (cba8) | [Trevor_Perkes] |"
            " [Trevor_Perkes] | 2010-02-01 |",
            people="ID | Name | Contact URI | Last Updated |\n---|---|---|---|\n"
            "[Trevor_Perkes] | Trevor Perkes | mailto:trevor.perkes&landesk.com | 2010-02-01 |",
        )
    )
    rec = only(source)
    assert rec.description == "LANDesk Management Agent (cba8)"
    assert rec.registered == "2010-02-01"
    assert "Trevor_Perkes" in source.people


def test_short_row_followed_by_a_new_row_is_not_joined_to_it() -> None:
    source = parse(
        page(
            "| pkixrep | Public Key Infrastructure Repository Locator Service | [RFC4386] |",
            "| netconfsoapbeep | NETCONF for SOAP over BEEP | [RFC4743][RFC9900] |",
            outer=True,
        )
    )
    assert source.problems == []
    assert [r.name for r in source.records] == ["pkixrep", "netconfsoapbeep"]


# --- quirk 4: shapes of rows ----------------------------------------------------


def test_port_range_without_name_or_transport_is_unassigned_on_both_transports() -> None:
    rec = only(parse(page("8794-8799 | Unassigned | ||||||||||")))
    assert (rec.port_low, rec.port_high, rec.transport) == (8794, 8799, None)
    assert rec.kind is RecordKind.UNASSIGNED
    assert rec.transports == (Transport.TCP, Transport.UDP)


def test_row_without_service_name_is_a_reserved_port() -> None:
    rec = only(parse(page("8807 | tcp | Reserved | |||||||||")))
    assert (rec.name, rec.port_low, rec.transport, rec.kind) == (
        "",
        8807,
        Transport.TCP,
        RecordKind.RESERVED,
    )


def test_row_without_port_is_a_name_only_dns_sd_registration() -> None:
    rec = only(
        parse(
            page(
                "| brski-proxy | tcp | The BRSKI Proxy | [IESG] | [IETF_Chair] | 2020-04-29 |"
                " [RFC8995] | Defined TXT keys: None | ||||",
                outer=True,
            )
        )
    )
    assert (rec.name, rec.port_low, rec.transport) == ("brski-proxy", None, Transport.TCP)
    assert rec.kind is RecordKind.NAME_ONLY
    assert rec.notes == "Defined TXT keys: None"
    assert rec.references == ("RFC8995",)


def test_row_without_port_or_transport_keeps_all_its_references() -> None:
    rec = only(
        parse(
            page(
                "| netconfsoapbeep | NETCONF for SOAP over BEEP | [RFC4743][RFC9900] | |||||||||",
                outer=True,
            )
        )
    )
    assert (rec.port_low, rec.transport, rec.kind) == (None, None, RecordKind.NAME_ONLY)
    assert rec.description == "NETCONF for SOAP over BEEP"
    assert rec.references == ("RFC4743", "RFC9900")


def test_historic_alias_is_kept_as_its_own_record_with_its_note() -> None:
    source = parse(
        page(
            "erunbook-server | 9617 | tcp | eRunbook Server | [Gerhard_Wagner] | [Gerhard_Wagner] |"
            " 2009-03-10 | |||||",
            "erunbook_server | 9617 | tcp | eRunbook Server | [Gerhard_Wagner] | [Gerhard_Wagner] |"
            ' 2009-03-10 | This entry is an alias to "erunbook-server". | ||||',
        )
    )
    assert [r.name for r in source.records] == ["erunbook-server", "erunbook_server"]
    assert source.records[1].notes == 'This entry is an alias to "erunbook-server".'


def test_description_that_repeats_the_service_name_stays_a_description() -> None:
    rec = only(parse(page("mainsoft-lm | 1593 | tcp | mainsoft-lm | [A_G] | [A_G] | ||||||")))
    assert (rec.name, rec.description) == ("mainsoft-lm", "mainsoft-lm")


# --- quirk 5: the page header ------------------------------------------------------


def test_last_updated_from_page_header_reaches_source_and_every_record() -> None:
    source = parse(page("8794-8799 | Unassigned | ||||||||||", "8807 | tcp | Reserved | |||||||||"))
    assert source.info.last_updated == date(2025, 10, 22)
    assert {r.provenance.last_updated for r in source.records} == {date(2025, 10, 22)}
    assert source.problems == []  # Expert(s), Reference, Available Formats: ignored
    assert all(r.provenance.path == "page.txt" for r in source.records)


def test_page_without_last_updated_has_no_date_and_no_complaint() -> None:
    source = parse_text_table(f"{HEADER}\n{SEPARATOR}\n8807 | tcp | Reserved |", "p.md")
    assert source.info.last_updated is None
    assert source.problems == []


def test_last_updated_that_is_not_a_date_is_a_problem() -> None:
    text = page("8807 | tcp | Reserved |").replace("- 2025-10-22", "- yesterday")
    source = parse(text)
    assert source.info.last_updated is None
    assert [p.line for p in source.problems] == [3]


# --- quirk 6: the contact table ----------------------------------------------------


def test_contact_table_without_organization_column_repairs_entity_damaged_uri() -> None:
    source = parse(
        page(
            "http-rpc-epmap | 593 | tcp | HTTP RPC Ep Map | [Edward_Reus] | [Edward_Reus] | ||||||",
            people="ID | Name | Contact URI | Last Updated |\n---|---|---|---|\n"
            "[Anand_Gangadharan] | Anand Gangadharan | mailto:anand&goa.mainsoft.com | |\n"
            "[Edward_Reus] | Edward Reus | mailto:edwardr\u00b5soft.com | |",
        )
    )
    assert source.problems == []
    edward = source.people["Edward_Reus"]
    assert (edward.name, edward.email) == ("Edward Reus", "edwardr@microsoft.com")
    assert source.people["Anand_Gangadharan"].uri == "mailto:anand@goa.mainsoft.com"


def test_contact_table_with_organization_column_assigns_shifted_cells_by_content() -> None:
    people = (
        "| ID | Name | Organization | Contact URI | Last Updated |\n|---|---|---|---|---|\n"
        "| [Chair_for_Process_Control_Engineering] | The Chair for Process Control Engineering"
        " | mailto:ks&plt.rwth-aachen.de | 2012-08-07 | |\n"
        "| [Tido_de_Vries] | Tido de Vries | eQ-3 Entwicklung GmbH |"
        " mailto:tido.devries&entwicklung.eq-3.de | 2018-02-28 |\n"
        "| [Jim_Cleppe] | Jim Cleppe | mailto:clep13&hotmail.com | ||"
    )
    source = parse(
        page(
            "| els | 1315 | tcp | E.L.S. | [Jim_Cleppe] | [Jim_Cleppe] | ||||||",
            outer=True,
            people=people,
        )
    )
    assert source.problems == []
    chair = source.people["Chair_for_Process_Control_Engineering"]
    assert (chair.name, chair.organization) == ("", "The Chair for Process Control Engineering")
    assert (chair.email, chair.updated) == ("ks@plt.rwth-aachen.de", "2012-08-07")
    tido = source.people["Tido_de_Vries"]
    assert (tido.name, tido.organization, tido.updated) == (
        "Tido de Vries",
        "eQ-3 Entwicklung GmbH",
        "2018-02-28",
    )
    assert tido.email == "tido.devries@entwicklung.eq-3.de"
    jim = source.people["Jim_Cleppe"]
    assert (jim.name, jim.organization, jim.email, jim.updated) == (
        "Jim Cleppe",
        "",
        "clep13@hotmail.com",
        "",
    )


# --- quirk 7: problems and format errors ---------------------------------------------


def test_row_that_fits_no_column_is_a_problem_and_the_rest_still_loads() -> None:
    source = parse(
        page(
            "8807 | tcp | Reserved | |||||||||",
            "[Somebody] | 2020-01-01 | 2020-02-02 | 2020-03-03 |",
            "hes-clip | 8807 | udp | HES-CLIP | [Tim] | [Ludo] | 2018-09-07 | |||||",
        )
    )
    assert [r.port_low for r in source.records] == [8807, 8807]
    assert len(source.problems) == 1
    problem = source.problems[0]
    assert problem.path == "page.txt"
    assert source.records[0].provenance.line < problem.line < source.records[1].provenance.line


def test_table_with_unknown_header_is_reported_not_guessed() -> None:
    text = page("8807 | tcp | Reserved |") + "\n\nFoo | Bar |\n---|---|\nx | y |"
    source = parse(text)
    assert len(source.records) == 1
    assert len(source.problems) == 1
    assert "unknown table header" in source.problems[0].message


@pytest.mark.parametrize(
    "text",
    [
        "hello world\n",
        "a | b |\n---|---|\n1 | 2 |\n",
        "Service Name,Port Number,Transport Protocol,Description\nftp,21,tcp,FTP\n",
    ],
)
def test_text_that_is_not_a_registry_table_raises_format_error(text: str) -> None:
    with pytest.raises(RegistryFormatError, match="no registry table") as info:
        parse_text_table(text, "x.txt")
    assert info.value.path == "x.txt"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (PAGE_HEAD, True),
        (f"{HEADER}\n{SEPARATOR}\n", True),
        ("Service Name,Port Number,Transport Protocol,Description\n", False),
        ("tcpmux\t\t1/tcp/udp\t# TCP Port Service Multiplexer\n", False),
        ('<?xml version="1.0"?>\n<registry>\n', False),
    ],
)
def test_looks_like_text_table_recognises_renderings_only(head: str, expected: bool) -> None:
    assert looks_like_text_table(head) is expected


# --- the real seeds, against the official CSV and XML ---------------------------------


def test_every_seed_loads_with_zero_problems(seed_files: list[Path]) -> None:
    people = 0
    for seed in seed_files:
        text = seed.read_text(encoding="utf-8")
        assert looks_like_text_table(text[:65536])
        source = parse_text_table(text, str(seed))
        assert source.problems == [], seed.name
        assert source.records, seed.name
        assert source.info.last_updated is not None
        people += len(source.people)
    assert people > 0


def test_seed_rows_equal_the_official_csv_rows(seed_files: list[Path], official_csv: Path) -> None:
    with official_csv.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:]
    by_key = {(r[0], r[1], r[2]): r for r in rows}
    compared = 0
    for seed in seed_files:
        for rec in parse_text_table(seed.read_text(encoding="utf-8"), seed.name).records:
            row = by_key.get(rec.key)
            if row is None:
                continue
            compared += 1
            got = (
                ws(rec.description),
                rec.assignees,
                rec.contacts,
                rec.registered,
                rec.modified,
                rec.references,
                rec.service_code,
                ws(rec.unauthorized_use),
                ws(rec.notes),
            )
            want = (
                ws(row[3]),
                split_bracketed(row[4]),
                split_bracketed(row[5]),
                row[6],
                row[7],
                split_bracketed(row[8]),
                row[9],
                ws(row[10]),
                ws(row[11]),
            )
            assert got == want, (seed.name, rec.provenance.line)
    assert compared >= 100


def test_seed_people_equal_the_official_xml_people(
    seed_files: list[Path], official_xml: Path
) -> None:
    ns = "{http://www.iana.org/assignments}"
    official = {
        p.get("id"): {c.tag.removeprefix(ns): (c.text or "").strip() for c in p}
        for p in ET.parse(official_xml).getroot().iter(f"{ns}person")
    }
    compared = 0
    for seed in seed_files:
        for person in parse_text_table(seed.read_text(encoding="utf-8"), seed.name).people.values():
            want = official.get(person.id)
            if want is None:
                continue
            compared += 1
            assert person.uri == repair_contact_uri(want.get("uri", "")), person.id
            assert person.organization in ("", want.get("org", "")), person.id
            assert person.name in ("", want.get("name", ""), want.get("org", "")), person.id
            assert person.name or person.organization, person.id
            assert person.updated == want.get("updated", ""), person.id
    assert compared >= 15


# --- property: rendered rows parse back -------------------------------------------------

_words = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ", min_size=2, max_size=8)
_prose = st.lists(_words, min_size=2, max_size=5).map(" ".join)
_ids = st.lists(_words.map(lambda w: f"{w}_{w}"), min_size=1, max_size=2).map(tuple)
_dates = st.dates(date(1990, 1, 1), date(2030, 12, 31)).map(date.isoformat)


@st.composite
def _records(draw: st.DrawFn) -> dict[str, object]:
    port = draw(st.none() | st.integers(0, 49151))
    name = draw(_words.map(str.lower)) if port is None else draw(st.just("") | _words)
    assignees = draw(st.just(()) | _ids)
    registered = draw(st.just("") | _dates)
    return {
        "name": name,
        "port": port,
        "transport": draw(st.none() | st.sampled_from(list(Transport))),
        "description": draw(_prose),
        "assignees": assignees,
        "contacts": draw(_ids) if assignees else (),
        "registered": registered,
        "modified": draw(_dates) if registered and draw(st.booleans()) else "",
        "references": draw(
            st.just(())
            | st.lists(st.integers(1, 9999).map(lambda n: f"RFC{n}"), min_size=1, max_size=2).map(
                tuple
            )
        ),
        "unauthorized": draw(st.just("") | _prose.map(lambda t: f"Known Unauthorized Use {t}")),
        "notes": draw(st.just("") | _prose),
    }


def _render(rec: dict[str, object], outer: bool) -> str:
    """Render as the seeds do: empty cells dropped, the row padded with pipes at the end."""
    port = "" if rec["port"] is None else str(rec["port"])
    transport = rec["transport"]
    cells = [
        str(rec["name"]),
        port,
        "" if not isinstance(transport, Transport) else transport.label,
        str(rec["description"]),
        "".join(f"[{i}]" for i in rec["assignees"]),  # type: ignore[attr-defined]
        "".join(f"[{i}]" for i in rec["contacts"]),  # type: ignore[attr-defined]
        str(rec["registered"]),
        str(rec["modified"]),
        "".join(f"[{i}]" for i in rec["references"]),  # type: ignore[attr-defined]
        "",
        str(rec["unauthorized"]),
        str(rec["notes"]),
    ]
    kept = [c for c in cells if c]
    row = " | ".join(kept) + " | " + "|" * (12 - len(kept))
    return "| " + row if outer else row


@given(_records(), st.booleans())
def test_rendered_rows_with_collapsed_cells_parse_back_to_their_fields(
    rec: dict[str, object], outer: bool
) -> None:
    if not rec["name"] and rec["port"] is None:
        rec["port"] = 1
    got = only(parse(page(_render(rec, outer), outer=outer)))
    transport = rec["transport"]
    assert got.name == rec["name"]
    assert got.port_low == rec["port"]
    assert got.transport == (transport if isinstance(transport, Transport) else None)
    assert got.description == rec["description"]
    assert (got.assignees, got.contacts) == (rec["assignees"], rec["contacts"])
    assert (got.registered, got.modified) == (rec["registered"], rec["modified"])
    assert got.references == rec["references"]
    assert (got.unauthorized_use, got.notes) == (rec["unauthorized"], rec["notes"])


def test_escaped_pipe_inside_a_cell_is_content_not_a_boundary() -> None:
    rec = only(
        parse(
            page(
                r"| iax | 4569 | udp | Inter-Asterisk eXchange | [Mark_Spencer] | [Mark_Spencer] |"
                r" 2005-09 | [RFC5456] | auth plaintext \| md5 \| rsakeys | |||",
                outer=True,
            )
        )
    )
    assert rec.references == ("RFC5456",)
    assert rec.notes == "auth plaintext | md5 | rsakeys"


def test_table_without_trailing_pipes_never_joins_short_rows() -> None:
    header = HEADER.removesuffix(" |")
    text = "\n".join(
        [header, SEPARATOR.removesuffix("|"), "8807 | tcp | Reserved", "9007 | tcp | Reserved"]
    )
    source = parse_text_table(text, "p.md")
    assert source.problems == []
    assert [r.port_low for r in source.records] == [8807, 9007]
