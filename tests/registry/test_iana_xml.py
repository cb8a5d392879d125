"""The official IANA XML parser, against the real registry and against damaged copies."""

from __future__ import annotations

import re
from collections import Counter
from datetime import date
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portwatch.errors import RegistryFormatError
from portwatch.ports import Transport
from portwatch.registry.formats.iana_csv import parse_iana_csv
from portwatch.registry.formats.iana_xml import looks_like_iana_xml, parse_iana_xml
from portwatch.registry.model import ParsedSource, Person, RecordKind, ServiceRecord, SourceFormat

NS = "http://www.iana.org/assignments"


@pytest.fixture(scope="module")
def xml_bytes(official_xml: Path) -> bytes:
    return official_xml.read_bytes()


@pytest.fixture(scope="module")
def parsed(official_xml: Path, xml_bytes: bytes) -> ParsedSource:
    return parse_iana_xml(xml_bytes, str(official_xml))


@pytest.fixture(scope="module")
def csv_parsed(official_csv: Path) -> ParsedSource:
    return parse_iana_csv(official_csv.read_bytes().decode("utf-8"), str(official_csv))


def _doc(records: str, *, updated: str = "<updated>2026-08-17</updated>",
         people: str = "", registry_id: str = "service-names-port-numbers",
         namespace: bool = True) -> bytes:
    """A small registry document laid out like IANA's, one element per line."""
    xmlns = f' xmlns="{NS}"' if namespace else ""
    return (
        "<?xml version='1.0' encoding='UTF-8'?>\n"
        f'<registry{xmlns} id="{registry_id}">\n'
        "  <title>Service Name and Transport Protocol Port Number Registry</title>\n"
        f"  {updated}\n"
        f"{records}"
        f"  <people>\n{people}  </people>\n"
        "</registry>\n"
    ).encode()


def _rec(name: str, number: str, protocol: str = "tcp", description: str = "A service",
         attrs: str = "") -> str:
    return (
        f"  <record{attrs}>\n"
        f"    <name>{name}</name>\n"
        f"    <protocol>{protocol}</protocol>\n"
        f"    <description>{description}</description>\n"
        f"    <number>{number}</number>\n"
        "  </record>\n"
    )


def _by_key(source: ParsedSource, key: tuple[str, str, str]) -> ServiceRecord:
    return next(r for r in source.records if r.key == key)


# --- the real file ---------------------------------------------------------


def test_official_xml_parses_every_record_and_person(parsed: ParsedSource) -> None:
    assert parsed.problems == []
    assert len(parsed.records) == 14_533
    assert len(parsed.people) == 5_615


def test_source_info_carries_the_registry_updated_date(
    parsed: ParsedSource, official_xml: Path
) -> None:
    assert parsed.info.format is SourceFormat.IANA_XML
    assert parsed.info.last_updated == date(2026, 8, 17)
    assert parsed.info.sha256 == ""  # the loader hashes the bytes as read, once for every format
    assert {r.provenance.last_updated for r in parsed.records} == {date(2026, 8, 17)}
    assert {r.provenance.path for r in parsed.records} == {str(official_xml)}


def test_each_record_points_at_the_line_of_its_record_tag(
    parsed: ParsedSource, xml_bytes: bytes
) -> None:
    lines = xml_bytes.decode("utf-8").split("\n")
    record_lines = [i + 1 for i, line in enumerate(lines) if "<record" in line]
    assert [r.provenance.line for r in parsed.records] == record_lines


def test_official_xml_counts_match_source_md(parsed: ParsedSource) -> None:
    records = parsed.records
    assert sum(r.port_low is None for r in records) == 1_070
    assert Counter(r.transport for r in records) == {
        Transport.TCP: 6_606,
        Transport.UDP: 6_356,
        None: 1_467,
        Transport.SCTP: 93,
        Transport.DCCP: 11,
    }
    assert sum(r.description == "Unassigned" for r in records) == 883
    assert sum(r.description == "Reserved" for r in records) == 808
    assert max(r.port_high for r in records if r.port_high is not None) == 49_151
    assert sum(bool(r.service_code) for r in records) == 4
    assert sum(bool(r.unauthorized_use) for r in records) == 112
    assert sum(bool(r.registered) for r in records) == 4_725
    assert sum(bool(r.modified) for r in records) == 602


def test_people_keep_name_org_and_a_repaired_email(parsed: ParsedSource) -> None:
    assert parsed.people["_3GPP"] == Person(
        id="_3GPP", name="", organization="3GPP", uri="mailto:dongwook.kim@etsi.org",
        updated="2026-01-23",
    )
    chair = parsed.people["IETF_Chair"]
    assert (chair.name, chair.organization, chair.email) == ("IETF Chair", "IETF", "chair@ietf.org")
    assert parsed.people["Mark_Lottor"].email == "MKL@nisc.sri.com"
    mailto = [p.uri for p in parsed.people.values() if p.uri.startswith("mailto:")]
    assert len(mailto) > 5_000
    # IANA writes every @ as &; only two legacy UUCP-style addresses had an @ already
    assert [u for u in mailto if "&" in u] == [
        "mailto:mouthers@slugg&nwnexus.wa.com",
        "mailto:globes@matt&oliveb.atc.olivetti.com",
    ]
    assert parsed.people["Insider_Software"].uri == "http://www.insidersoftware.com"


def test_inline_xref_in_a_description_is_rendered_like_the_csv_export(
    parsed: ParsedSource, csv_parsed: ParsedSource
) -> None:
    key = ("brski-reg-cmp", "", "tcp")
    xml_desc = _by_key(parsed, key).description
    assert xml_desc == (
        "Bootstrapping Remote Secure Key Infrastructure registrar with CMP capabilities"
        " according to the Lightweight CMP Profile (LCMPP) [RFC9483]"
    )
    assert xml_desc == " ".join(_by_key(csv_parsed, key).description.split())


def test_whitespace_in_text_collapses_to_single_spaces(parsed: ParsedSource) -> None:
    pon = _by_key(parsed, ("pon-ictp", "7202", "tcp"))
    assert pon.description == (
        "Inter-Channel Termination Protocol (ICTP) for multi-wavelength PON"
        " (Passive Optical Network) systems"
    )
    assert not any(
        re.search(r"\s\s|\n|^\s|\s$", text)
        for r in parsed.records
        for text in (r.description, r.notes, r.unauthorized_use)
        if text
    )


def test_record_level_xrefs_become_contacts_and_references(parsed: ParsedSource) -> None:
    tcpmux = _by_key(parsed, ("tcpmux", "1", "tcp"))
    assert (tcpmux.assignees, tcpmux.contacts) == (("Mark_Lottor",), ("Mark_Lottor",))
    exp1 = _by_key(parsed, ("exp1", "1021", "tcp"))
    assert (exp1.assignees, exp1.contacts) == (("IESG",), ("IETF_Chair",))
    assert exp1.references == ("1", "RFC4727", "RFC6335")
    smtp = _by_key(parsed, ("smtp", "25", "tcp"))
    assert smtp.references == ("RFC-ietf-emailcore-rfc5321bis-43",)
    pon = _by_key(parsed, ("pon-ictp", "7202", "tcp"))
    assert pon.references[0] == "TR-352"
    assert pon.references[1].startswith("Inter-Channel-Termination protocol (ICTP) is a peer")
    nbd = _by_key(parsed, ("nbd", "10809", "tcp"))
    assert nbd.references == ("https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md",)
    push = _by_key(parsed, ("dns-push-tls", "", "tcp"))
    assert push.references == ("RFC8765, Section 6.1",)  # the xref's own text, as in the CSV
    vos = _by_key(parsed, ("vos", "", ""))
    assert vos.contacts == ("Reed_Hedges", "Peter_Amstutz")


def test_notes_render_inline_xrefs_and_paragraphs(parsed: ParsedSource) -> None:
    compress = _by_key(parsed, ("", "2", "tcp"))
    assert compress.notes == "De-assigned on 2025-02-13, previously compressnet by [Bernie_Volz]"
    assert compress.kind is RecordKind.RESERVED
    recipe = _by_key(parsed, ("recipe-sharing", "", "tcp"))
    assert recipe.notes == (
        "Defined TXT keys: [http://www.recipemanager.org/rsp/rsp10draft.html#dnssd]"
    )
    paragraphs = [r for r in parsed.records if r.notes.startswith("Defined TXT keys: td:")]
    assert paragraphs
    assert all("Directory. type:" in r.notes for r in paragraphs)


# Keys SOURCE.md lists as changed between the CSV (2026-04-09) and the XML (2026-08-17).
_SPLIT_OR_REASSIGNED = {("", "4461-4483", ""), ("", "6603-6618", ""), ("", "7123", "udp"),
                        ("", "30833-30998", "")}
_CHANGED_NAMES = {"epp", "snif", "snif-cln", "snif-fifo", "snif-srv", "pkix-cmc",
                  "netconf-tls", "udpstp"}


def test_csv_records_reappear_in_the_xml_in_the_same_order(
    parsed: ParsedSource, csv_parsed: ParsedSource
) -> None:
    csv_keys = [r.key for r in csv_parsed.records]
    xml_keys = [r.key for r in parsed.records]
    missing = set(csv_keys) - set(xml_keys)
    assert missing == _SPLIT_OR_REASSIGNED
    common = set(csv_keys) & set(xml_keys)
    assert [k for k in xml_keys if k in common] == [k for k in csv_keys if k in common]
    # every XML record beyond the CSV's 14,512 - 4 surviving rows is new since 2026-04-09
    assert sum(k not in common for k in xml_keys) == 14_533 - (14_512 - len(missing))


def test_unchanged_records_agree_with_the_csv_on_people_dates_and_references(
    parsed: ParsedSource, csv_parsed: ParsedSource
) -> None:
    def facts(r: ServiceRecord) -> tuple[object, ...]:
        refs = tuple(" ".join(x.split()) for x in r.references)
        return (r.assignees, r.contacts, refs, r.registered, r.modified)

    xml_facts: dict[tuple[str, str, str], set[tuple[object, ...]]] = {}
    for x in parsed.records:
        xml_facts.setdefault(x.key, set()).add(facts(x))
    differing = {
        c.name for c in csv_parsed.records
        if c.key in xml_facts and facts(c) not in xml_facts[c.key]
    }
    assert "epp" in differing
    assert {n for n in differing if not n.startswith("boe-")} <= _CHANGED_NAMES


def test_official_xml_is_recognised_by_its_head(xml_bytes: bytes) -> None:
    assert looks_like_iana_xml(xml_bytes[:4096])


def test_truncated_official_xml_is_refused_with_a_line(xml_bytes: bytes) -> None:
    cut = xml_bytes[: len(xml_bytes) // 2]
    with pytest.raises(RegistryFormatError, match="malformed XML") as err:
        parse_iana_xml(cut, "cut.xml")
    assert err.value.line == cut.count(b"\n") + 1
    assert err.value.path == "cut.xml"


# --- synthetic input -------------------------------------------------------


def test_records_and_people_of_a_small_document() -> None:
    data = _doc(
        _rec("echo", "7", attrs=' date="2001-02" updated="2019-12-16"')
        + _rec("x11", "6000-6063", protocol="udp")
        + "  <record>\n    <description>Unassigned</description>\n"
        "    <number>4</number>\n  </record>\n",
        people='    <person id="Jon_Postel">\n      <name>Jon Postel</name>\n'
        "      <uri>mailto:postel&amp;isi.edu</uri>\n    </person>\n",
    )
    parsed = parse_iana_xml(data, "small.xml")
    assert parsed.problems == []
    echo, x11, unassigned = parsed.records
    assert (echo.key, echo.registered, echo.modified, echo.provenance.line) == (
        ("echo", "7", "tcp"), "2001-02", "2019-12-16", 5,
    )
    assert (x11.port_low, x11.port_high, x11.transport, x11.provenance.line) == (
        6000, 6063, Transport.UDP, 11,
    )
    assert (unassigned.transport, unassigned.kind) == (None, RecordKind.UNASSIGNED)
    assert parsed.people == {
        "Jon_Postel": Person("Jon_Postel", "Jon Postel", "", "mailto:postel@isi.edu", "")
    }


def test_document_without_namespace_parses_too() -> None:
    parsed = parse_iana_xml(_doc(_rec("echo", "7"), namespace=False), "plain.xml")
    assert [r.key for r in parsed.records] == [("echo", "7", "tcp")]


def test_without_an_updated_element_the_newest_record_date_dates_the_source() -> None:
    data = _doc(
        _rec("a", "1", attrs=' date="2001-02"') + _rec("b", "2", attrs=' updated="2020-04-29"'),
        updated="",
    )
    parsed = parse_iana_xml(data, "undated.xml")
    assert parsed.info.last_updated == date(2020, 4, 29)
    assert {r.provenance.last_updated for r in parsed.records} == {date(2020, 4, 29)}


@pytest.mark.parametrize(
    ("bad", "quoted"),
    [
        (_rec("x", "abc"), "'abc'"),
        (_rec("x", "70000"), "'70000'"),
        (_rec("x", "5-3"), "'5-3'"),
        (_rec("x", "80", protocol="tcpx"), "'tcpx'"),
    ],
    ids=["letters", "too-big", "backwards", "transport"],
)
def test_a_broken_record_is_a_problem_with_its_line_and_the_rest_still_loads(
    bad: str, quoted: str
) -> None:
    data = _doc(_rec("echo", "7") + bad + _rec("discard", "9"))
    parsed = parse_iana_xml(data, "reg.xml")
    assert [(r.name, r.provenance.line) for r in parsed.records] == [("echo", 5), ("discard", 17)]
    (problem,) = parsed.problems
    assert (problem.path, problem.line) == ("reg.xml", 11)
    assert quoted in problem.message


@pytest.mark.parametrize(
    ("data", "line", "match"),
    [
        (b"", None, "empty file"),
        (b"  \n\n", None, "empty file"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 3, "binary"),
        (b"<registry id='service-names-port-numbers'>\n<record>\xff\xfe</record>", 2,
         "malformed XML"),
        (_doc(_rec("echo", "7")).replace(b"</record>", b"</recrod>", 1), 10, "mismatched tag"),
        (_doc(_rec("a &nbsp; b", "7")), 6, "undefined entity"),
        (_doc(_rec("echo", "7"), registry_id="protocol-numbers"), 2, "not the service-names"),
        (b"<!DOCTYPE html>\n<html><body>hi</body></html>\n", 2, "found <html>"),
        (b"just some text\n", 1, "malformed XML"),
    ],
    ids=["empty", "blank", "binary", "undecodable", "mismatched", "entity", "other-registry",
         "html", "text"],
)
def test_unusable_input_raises_a_format_error_with_a_line(
    data: bytes, line: int | None, match: str
) -> None:
    with pytest.raises(RegistryFormatError, match=match) as err:
        parse_iana_xml(data, "bad.xml")
    assert err.value.path == "bad.xml"
    assert err.value.line == line


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (_doc(_rec("echo", "7"))[:200], True),
        (b"\xef\xbb\xbf" + _doc(""), True),
        (_doc("", namespace=False), True),
        (_doc("", registry_id="protocol-numbers"), False),
        (b"Service Name,Port Number,Transport Protocol\r\n", False),
        (b"<html><body>service-names-port-numbers</body></html>", False),
        (b"", False),
    ],
    ids=["official", "bom", "no-namespace", "other-registry", "csv", "html", "empty"],
)
def test_sniffing_recognises_only_the_service_names_registry(head: bytes, expected: bool) -> None:
    assert looks_like_iana_xml(head) is expected


# --- property --------------------------------------------------------------

_text = st.text(
    alphabet=st.characters(
        exclude_categories=("Cs", "Cc"), exclude_characters="\ufffe\uffff"
    ) | st.sampled_from(["&", "<", ">", '"', "\n", "\t", " ", "é"]),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_text, _text), min_size=1, max_size=6))
def test_escaped_text_reads_back_with_whitespace_collapsed(pairs: list[tuple[str, str]]) -> None:
    records = "".join(
        "  <record>\n"
        f"    <name>svc{i}</name>\n    <number>{i}</number>\n"
        f"    <description>{escape(desc)}</description>\n"
        f"    <note>{escape(note)}</note>\n"
        "  </record>\n"
        for i, (desc, note) in enumerate(pairs)
    )
    parsed = parse_iana_xml(_doc(records), "prop.xml")
    assert [(r.description, r.notes) for r in parsed.records] == [
        (" ".join(desc.split()), " ".join(note.split())) for desc, note in pairs
    ]
