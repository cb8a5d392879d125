"""Registries and caches built to hurt: each is refused in one line, never a traceback.

Every defect of the adversarial review is rebuilt here in new variations:
deep XML, entity tricks, huge and one-line inputs, overlong quoted fields,
UTF-16/32 text, non-ASCII digits, files that must never be quoted back, and
tampered cache files.
"""

from __future__ import annotations

import csv
import io
import lzma
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from portwatch.cli import main
from portwatch.errors import RegistryError, RegistryFormatError
from portwatch.ports import Transport
from portwatch.porttable.cache import load_table
from portwatch.registry.formats.iana_csv import HEADER
from portwatch.registry.formats.iana_xml import MAX_DEPTH
from portwatch.registry.loader import MAX_LINE_BYTES, MAX_LINES, parse_source, read_source
from portwatch.registry.model import parse_registry_date

CSV_HEADER = ",".join(HEADER) + "\r\n"
XML_HEAD = (
    "<?xml version='1.0' encoding='UTF-8'?>\n"
    '<registry xmlns="http://www.iana.org/assignments" id="service-names-port-numbers">\n'
    "  <updated>2026-08-17</updated>\n"
)
XML_TAIL = "</registry>\n"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTWATCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PORTWATCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PORTWATCH_REGISTRY", raising=False)


def _csv_row(*fields: str) -> str:
    out = io.StringIO()
    csv.writer(out).writerow([*fields, *[""] * (len(HEADER) - len(fields))])
    return out.getvalue()


def _xml_record(name: str, number: str, protocol: str = "tcp", inner: str = "") -> str:
    return (f"  <record>\n    <name>{name}</name>\n    <protocol>{protocol}</protocol>\n"
            f"    <description>A service{inner}</description>\n"
            f"    <number>{number}</number>\n  </record>\n")


def _refused(data: bytes, path: str = "hostile") -> RegistryError:
    with pytest.raises(RegistryError) as err:
        parse_source(data, path)
    assert err.value.path == path
    assert "\n" not in str(err.value)
    return err.value


def _cli_fails_in_one_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


# --- XML nested thousands deep -------------------------------------------------


def _nested(depth: int, where: str) -> bytes:
    deep = "<b>" * depth + "x" + "</b>" * depth
    if where == "record":
        body = _xml_record("echo", "7", inner=deep)
    elif where == "root":
        body = deep + "\n"
    elif where == "person":
        body = f"  <people>\n  <person id='p'><name>{deep}</name></person>\n  </people>\n"
    else:  # an xref inside a note, the way real mixed content nests
        body = _xml_record("echo", "7") .replace(
            "</record>", f"<note><xref type='text'>{deep}</xref></note></record>")
    return (XML_HEAD + body + XML_TAIL).encode()


@pytest.mark.parametrize("where", ["record", "root", "person", "xref"])
@pytest.mark.parametrize("depth", [MAX_DEPTH, 3_000, 50_000])
def test_xml_nested_too_deep_is_refused_with_its_line(where: str, depth: int) -> None:
    err = _refused(_nested(depth, where), "deep.xml")
    assert isinstance(err, RegistryFormatError)
    assert f"nested deeper than {MAX_DEPTH} levels" in err.message
    assert err.line is not None
    assert err.line >= 4


def test_xml_nested_within_the_limit_still_parses() -> None:
    parsed = parse_source(_nested(MAX_DEPTH - 6, "record"), "ok.xml")
    (record,) = parsed.records
    assert (record.name, record.port_low) == ("echo", 7)
    assert record.description == "A servicex"


def test_deep_xml_inside_xz_is_refused_too() -> None:
    err = _refused(lzma.compress(_nested(3_000, "record")), "deep.xml.xz")
    assert "nested deeper" in err.message


@pytest.mark.parametrize("command", [["lookup", "80/tcp"], ["registry", "import"],
                                     ["registry", "diff"]])
def test_cli_refuses_a_deep_registry_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    deep = tmp_path / "deep.xml"
    deep.write_bytes(_nested(3_000, "record"))  # about 35 KB, as in the review
    if command[0] == "lookup":
        args = ["--registry", str(deep), *command]
    elif command[1] == "import":
        args = [*command, str(deep)]
    else:
        good = tmp_path / "good.xml"
        good.write_bytes((XML_HEAD + _xml_record("echo", "7") + XML_TAIL).encode())
        args = [*command, str(good), str(deep)]
    err = _cli_fails_in_one_line(args, capsys)
    assert f"{deep}:7: elements nested deeper than" in err  # the line of the too-deep tag


# --- entities: no expansion, no fetching -------------------------------------------


@pytest.mark.parametrize(
    ("doctype", "use"),
    [
        ("<!ENTITY a 'ha'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;'>"
         "<!ENTITY c '&b;&b;&b;&b;&b;&b;&b;&b;'>", "&c;"),
        ("<!ENTITY secret SYSTEM 'file://{secret}'>", "&secret;"),
        ("<!ENTITY % remote SYSTEM 'file://{secret}'> %remote;", ""),
        ("<!ENTITY logo SYSTEM 'file://{secret}' NDATA gif>", ""),
        ("<!ENTITY name 'a plain internal entity'>", "&name;"),
    ],
    ids=["billion-laughs", "xxe-file", "parameter-entity", "unparsed-entity", "internal"],
)
def test_entity_declarations_are_refused_and_nothing_is_read(
    tmp_path: Path, doctype: str, use: str
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    doc = (
        "<?xml version='1.0'?>\n"
        f"<!DOCTYPE registry [{doctype.format(secret=secret)}]>\n"
        "<registry id='service-names-port-numbers'>\n"
        f"<record><name>x{use}</name><number>7</number></record>\n</registry>\n"
    )
    err = _refused(doc.encode(), "ent.xml")
    assert "not allowed in a registry" in err.message
    assert "TOP-SECRET" not in str(err)


def test_external_dtd_is_never_fetched(tmp_path: Path) -> None:
    marker = tmp_path / "dtd-was-read"
    doc = (
        "<?xml version='1.0'?>\n"
        f"<!DOCTYPE registry SYSTEM 'file://{marker}'>\n"
        "<registry id='service-names-port-numbers'>\n"
        "<record><name>echo</name><number>7</number></record>\n</registry>\n"
    ).encode()
    parsed = parse_source(doc, "dtd.xml")
    assert [(r.name, r.port_low) for r in parsed.records] == [("echo", 7)]
    assert not marker.exists()


def test_a_record_with_millions_of_children_is_refused_without_holding_them() -> None:
    body = "  <record><name>x</name>" + "<a/>" * 200_000 + "</record>\n"
    tracemalloc.start()
    try:
        err = _refused((XML_HEAD + body + XML_TAIL).encode(), "wide.xml")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "more than 100,000 elements" in err.message
    assert peak < 64 * 1024 * 1024


@pytest.mark.parametrize("encoding", ["TTF-8", "shift_jis", "utf-7", "UTF-32", "rot13", "hex"])
def test_an_xml_declaring_an_unreadable_encoding_is_refused_without_quoting_it(
    encoding: str,
) -> None:
    """Found by the fuzz harness: expat asked Python's codecs and a LookupError escaped."""
    doc = (f"<?xml version='1.0' encoding='{encoding}'?>\n"
           "<registry id='service-names-port-numbers'><record><name>echo</name>"
           "<number>7</number></record></registry>\n").encode()
    err = _refused(doc, "enc.xml")
    assert err.line == 1
    assert "names an encoding that cannot be read" in err.message
    assert encoding not in err.message


def test_an_xml_declaring_a_single_byte_encoding_is_read_in_it() -> None:
    doc = ("<?xml version='1.0' encoding='cp1252'?>\n"
           "<registry id='service-names-port-numbers'><record><name>caf\u00e9</name>"
           "<number>7</number></record></registry>\n").encode("cp1252")
    assert [r.name for r in parse_source(doc, "cp.xml").records] == ["caf\u00e9"]


# --- huge inputs: refused early, in bounded memory ----------------------------------


def _peak_while_refused(data: bytes, path: str) -> tuple[RegistryError, int]:
    tracemalloc.start()
    try:
        err = _refused(data, path)
        return err, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "head",
    [CSV_HEADER.encode(), b"", b"echo 7/tcp\n" * 50,
     b"| Service Name | Port Number |\n|---|---|\n"],
    ids=["csv", "bare", "services", "text-table"],
)
def test_a_60_mb_line_is_refused_early_in_bounded_memory(head: bytes) -> None:
    data = head + b"a," * 30_000_000
    err, peak = _peak_while_refused(data, "long.txt")
    assert isinstance(err, RegistryFormatError)
    if head:
        assert f"line longer than {MAX_LINE_BYTES:,} bytes" in err.message
        assert err.line == head.count(b"\n") + 1
    assert peak < 4 * 1024 * 1024  # the 60 MB input is never decoded, split or copied


def test_a_line_just_over_the_bound_is_refused_and_one_at_it_is_not() -> None:
    row = _csv_row("echo", "7", "tcp").encode()
    at = CSV_HEADER.encode() + row + b"# " + b"x" * (MAX_LINE_BYTES - 2) + b"\n"
    parsed = parse_source(at, "at.csv")
    assert [r.name for r in parsed.records] == ["echo"]
    err = _refused(at.replace(b"# x", b"# xx", 1), "over.csv")
    assert err.line == 3


def test_xz_that_inflates_to_one_long_line_is_refused_within_its_inflated_size() -> None:
    inflated = len(CSV_HEADER) + 40_000_000
    data = lzma.compress(CSV_HEADER.encode() + b"b" * 40_000_000)
    err, peak = _peak_while_refused(data, "long.csv.xz")
    assert "line longer than" in err.message
    assert err.line == 2
    # lzma's output buffer grows by doubling: about 2.4 times what it inflates to,
    # and inflating stops at 64 MiB. Nothing after inflating adds to that.
    assert peak < 3 * inflated


def test_more_lines_than_the_bound_are_refused() -> None:
    err = _refused(CSV_HEADER.encode() + b"\n" * MAX_LINES, "many.csv")
    assert f"more than {MAX_LINES:,} lines" in err.message


def test_dev_zero_is_refused_by_size() -> None:
    with pytest.raises(RegistryFormatError, match="larger than 64 MiB") as err:
        read_source("/dev/zero")
    assert err.value.path == "/dev/zero"


def test_a_registry_of_nothing_but_bad_rows_is_given_up_on() -> None:
    data = CSV_HEADER.encode() + b"x,notaport,tcp\r\n" * 20_000
    err = _refused(data, "bad.csv")
    assert "gave up after 10,000 rows" in err.message
    assert err.line == 10_002


# --- a quoted field longer than the csv limit --------------------------------------


@pytest.mark.parametrize("lines", [1_400, 20_000])
def test_an_overlong_quoted_description_is_named_as_such(lines: int) -> None:
    description = "\n".join(["a long description line of about a hundred characters " * 2]
                            * lines)
    data = CSV_HEADER + _csv_row("a", "1") + _csv_row("big", "2", "tcp", description)
    err = _refused(data.encode(), "big.csv")
    assert err.line == 3
    assert "longer than the 131,072-character limit" in err.message
    assert "never closes" not in err.message


def test_a_long_quoted_description_under_the_limit_loads_whole() -> None:
    description = "\n".join(["x" * 99] * 1_200)  # 119,999 characters over 1,200 lines
    data = CSV_HEADER + _csv_row("big", "2", "tcp", description) + _csv_row("b", "3")
    parsed = parse_source(data.encode(), "ok.csv")
    assert [r.name for r in parsed.records] == ["big", "b"]
    assert parsed.records[0].description == description
    assert parsed.records[1].provenance.line == 1_202


# --- UTF-16 and UTF-32 with a byte-order mark --------------------------------------


def _xml_doc(declared: str) -> str:
    return (f"<?xml version='1.0' encoding='{declared}'?>\n"
            + XML_HEAD.split("\n", 1)[1] + _xml_record("écho", "7") + XML_TAIL)


@pytest.mark.parametrize(
    ("codec", "declared"),
    [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"), ("utf-16-be", "UTF-16"),
     ("utf-32", "UTF-32"), ("utf-32-be", "UTF-32")],
)
def test_xml_in_utf16_or_utf32_with_a_bom_parses(codec: str, declared: str) -> None:
    data = _xml_doc(declared).encode(codec)
    if not codec.endswith(("le", "be")):
        assert data[:2] in (b"\xff\xfe", b"\xfe\xff")
    else:
        data = ("\ufeff" + _xml_doc(declared)).encode(codec)
    parsed = parse_source(data, "wide.xml")
    assert [(r.name, r.port_low, r.provenance.line) for r in parsed.records] == [("écho", 7, 4)]


@pytest.mark.parametrize("codec", ["utf-16", "utf-32"])
def test_csv_and_services_in_utf16_or_utf32_parse(codec: str) -> None:
    csv_text = CSV_HEADER + _csv_row("écho", "7", "tcp")
    services = "# services\necho 7/tcp\ndiscard 9/udp sink null\n"
    assert [r.name for r in parse_source(csv_text.encode(codec), "w.csv").records] == ["écho"]
    names = [r.name for r in parse_source(services.encode(codec), "services").records]
    assert names == ["echo", "discard", "sink", "null"]


def test_utf16_xml_inside_gzip_parses() -> None:
    import gzip

    parsed = parse_source(gzip.compress(_xml_doc("UTF-16").encode("utf-16")), "w.xml.gz")
    assert [r.name for r in parsed.records] == ["écho"]


@pytest.mark.parametrize(
    "data",
    [b"\xff\xfe<\x00r\x00\x00\xd8x\x00",  # a lone surrogate
     b"\xff\xfe<\x00r\x00e",  # an odd byte at the end
     b"\xff\xfe\x00\x00\x00\x00\x11\x00"],  # UTF-32 above U+10FFFF
    ids=["lone-surrogate", "odd-length", "beyond-unicode"],
)
def test_broken_utf16_or_utf32_is_refused_with_a_line(data: bytes) -> None:
    err = _refused(data, "broken")
    assert "despite its byte-order mark" in err.message
    assert err.line == 1


# --- ports in digits other than ASCII ----------------------------------------------

_FOREIGN_80 = ["\u0668\u0660", "\uff18\uff10", "\u096e\u0966", "8\u0660", "\u00b2"]


@pytest.mark.parametrize("digits", _FOREIGN_80, ids=["arabic", "fullwidth", "devanagari",
                                                     "mixed", "superscript"])
def test_non_ascii_port_digits_are_refused_in_every_format(digits: str) -> None:
    good = [("echo", "7"), ("discard", "9"), ("daytime", "13"), ("ftp", "21"), ("ssh", "22")]
    sources: dict[str, str] = {
        "csv": CSV_HEADER + "".join(_csv_row(n, p, "tcp") for n, p in good)
        + _csv_row("web", digits, "tcp") + _csv_row("webr", f"{digits}-90", "tcp"),
        "xml": XML_HEAD + "".join(_xml_record(n, p) for n, p in good)
        + _xml_record("web", digits) + _xml_record("webr", f"81-{digits}") + XML_TAIL,
        "services": "".join(f"{n} {p}/tcp\n" for n, p in good * 4)
        + f"web {digits}/tcp\nwebr {digits}-90/udp\n",
        "text": "| Service Name | Port Number | Transport Protocol | Description |\n"
        "|---|---|---|---|\n" + "".join(f"| {n} | {p} | tcp | A |\n" for n, p in good)
        + f"| web | {digits} | tcp | Web |\n",
    }
    for fmt, text in sources.items():
        parsed = parse_source(text.encode(), f"reg.{fmt}")
        ports = {r.name: r.port_low for r in parsed.records}
        assert ports.get("web") is None, (fmt, ports)
        assert ports.get("webr") is None, (fmt, ports)
        assert ports["ssh"] == 22, fmt
        assert not any(r.port_low == 80 or r.port_high == 80 for r in parsed.records), fmt
        if fmt != "text":  # the text table may read the cell as prose: no port either way
            assert {p.line for p in parsed.problems}, fmt


@pytest.mark.parametrize(
    "text", ["\u0662\u0660\u0662\u0664-\u0660\u0666", "\uff12\uff10\uff12\uff14-\uff10\uff16"]
)
def test_registry_dates_in_non_ascii_digits_are_not_dates(text: str) -> None:
    assert parse_registry_date(text) is None


# --- files that are not registries are never quoted --------------------------------


@pytest.mark.parametrize(
    ("content", "secret"),
    [
        (b"root:$6$Xy7aQ$hashedpasswordvalue:19000:0:99999:7:::\n"
         b"daemon:*:19000:0:99999:7:::\n", "hashedpasswordvalue"),
        (b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAAKEYMATERIAL\n",
         "KEYMATERIAL"),
        (b"machine example.org login me password hunter2secret\n", "hunter2secret"),
        (b"Service Name,Port Number,password=hunter2secret\r\necho,7\r\n", "hunter2secret"),
        (b"<?xml version='1.0'?>\n<credentials token='hunter2secret'/>\n", "hunter2secret"),
    ],
    ids=["shadow", "private-key", "netrc", "csv-lookalike", "xml"],
)
def test_an_unrecognised_file_is_never_quoted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, secret: str
) -> None:
    err = _refused(content, "secret-file")
    assert secret not in str(err)
    assert "expected" in err.message
    path = tmp_path / "secret-file"
    path.write_bytes(content)
    out = _cli_fails_in_one_line(["--registry", str(path), "lookup", "80/tcp"], capsys)
    assert secret not in out
    assert str(path) in out


# --- a tampered cache: recompiled, never a traceback --------------------------------


def test_lookup_recompiles_over_a_tampered_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "services"
    src.write_text("http 80/tcp www\n")
    args = ["--registry", str(src), "lookup", "80/tcp"]
    assert main(args) == 0
    (cached,) = (tmp_path / "cache").rglob("table-*.npz")
    with np.load(cached) as npz:
        members = {k: npz[k] for k in npz.files}
    members["service_id"] = members["service_id"][:, :10]
    buf = io.BytesIO()
    np.savez(buf, **members)  # type: ignore[arg-type]
    cached.write_bytes(buf.getvalue())
    capsys.readouterr()
    assert main(args) == 0
    assert "http" in capsys.readouterr().out
    assert load_table([str(src)], cache=cached.parent).from_cache
    assert load_table([str(src)], cache=cached.parent).table.lookup(Transport.TCP, 80).service \
        == "http"
