"""Fuzzing the registry loader: whatever the bytes, only a ``RegistryError`` escapes.

Inputs are random bytes and mutations (flips, splices, truncations, hostile
tokens) of small valid samples of each form the loader reads, plain,
compressed and in UTF-16, all built here. A source that does parse must
also compile: the table is what every later stage trusts. Sizes and example
counts are bounded so the whole file runs in a few seconds; memory is
measured on a sample of inputs.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import os
import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portwatch.errors import RegistryError
from portwatch.porttable.compile import compile_table
from portwatch.registry.formats.iana_csv import HEADER
from portwatch.registry.loader import parse_source
from portwatch.registry.merge import merge_sources
from portwatch.registry.model import ParsedSource


def _csv_sample() -> bytes:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(HEADER)
    w.writerow(["echo", "7", "tcp", "Echo", "[IESG]", "[IETF_Chair]", "", "2017-05-18",
                "[RFC862]", "", "", ""])
    w.writerow(["", "8", "", "Unassigned", "", "", "", "", "", "", "", ""])
    w.writerow(["x11", "6000-6063", "tcp", "X Window\nSystem", "[Bob]", "[Bob]", "2001-02",
                "", "[RFC1013][RFC9900]", "", "Known unauthorized use on port 6001", "note"])
    w.writerow(["", "1023", "udp", "Reserved", "", "", "", "", "", "", "", ""])
    w.writerow(["bonjour", "", "", "DNS-SD name", "", "", "", "", "", "", "", ""])
    return out.getvalue().encode()


def _xml_sample() -> bytes:
    return b"""<?xml version='1.0' encoding='UTF-8'?>
<registry xmlns="http://www.iana.org/assignments" id="service-names-port-numbers">
  <title>Service Name and Transport Protocol Port Number Registry</title>
  <updated>2026-08-17</updated>
  <record date="2017-05-18">
    <name>echo</name>
    <protocol>tcp</protocol>
    <description>Echo <xref type="rfc" data="rfc862"/></description>
    <number>7</number>
    <xref type="person" data="Jon_Postel"/>
  </record>
  <record>
    <protocol>udp</protocol>
    <description>Unassigned</description>
    <number>8-9</number>
    <note><paragraph>Was <xref type="text">old</xref></paragraph></note>
  </record>
  <record>
    <name>x11</name><protocol>tcp</protocol><number>6000-6063</number>
    <unauthorized>port 6001</unauthorized>
  </record>
  <people>
    <person id="Jon_Postel"><name>Jon Postel</name><uri>mailto:postel&amp;isi.edu</uri></person>
  </people>
</registry>
"""


def _text_table_sample() -> bytes:
    return (
        b"Service Name and Transport Protocol Port Number Registry\n"
        b"- Last Updated\n- 2025-10-22\n\n"
        b"| Service Name | Port Number | Transport Protocol | Description | Assignee | Contact |"
        b" Registration Date | Modification Date | Reference | Service Code |"
        b" Unauthorized Use Reported | Assignment Notes |\n"
        b"|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        b"| echo | 7 | tcp | Echo | [IESG] | [IETF_Chair] | | 2017-05-18 | [RFC862] | | | |\n"
        b"| 8794-8799 | Unassigned | ||||||||||\n"
        b"| x11 | 6000-6063 | tcp | X Window System | [Bob] | [Bob] | 2001-02 | | | | port |\n"
        b"Contact Information\n"
        b"| ID | Name | Organization | Contact URI | Last Updated |\n"
        b"|---|---|---|---|---|\n"
        b"| [Bob] | Bob Smith | Example Inc | mailto:bob&example.org | 2001-02 |\n"
    )


def _services_sample() -> bytes:
    return (
        b"# Network services, Internet style\n# Updated: 2024-06-11\n"
        b"echo\t\t7/tcp\n"
        b"discard\t\t9/tcp/udp/sctp/dccp\tsink null\t# Discard\n"
        b"x11\t\t6000-6063/tcp\t\t# X Window System\n"
        b"rtmp\t\t1/ddp\n"
    )


_PLAIN = [_csv_sample(), _xml_sample(), _text_table_sample(), _services_sample()]
SAMPLES: list[bytes] = [
    *_PLAIN,
    lzma.compress(_PLAIN[1]),
    gzip.compress(_PLAIN[0], mtime=0),
    bz2.compress(_PLAIN[3]),
    _PLAIN[1].decode().replace("UTF-8", "UTF-16").encode("utf-16"),
    _PLAIN[0].decode().encode("utf-32"),
    b"\xef\xbb\xbf" + _PLAIN[2],
]

#: Tokens that steer parsers into their corners: quotes, markup, entities,
#: BOMs, NUL, lone CR, pipes, ranges, non-ASCII digits, compression magic.
TOKENS = [
    b'"', b'""', b"\r", b"\n", b"\r\n", b"\x00", b",", b"|", b"\\|", b"-", b"/", b"#",
    b"<", b">", b"</record>", b"<record>", b"<a>" * 40, b"&", b"&amp;", b"&#0;", b"&#x10FFFF;",
    b"<!DOCTYPE r [<!ENTITY a 'b'>]>", b"]]>", b"<![CDATA[", b"\xef\xbb\xbf", b"\xff\xfe",
    b"\xfe\xff", b"\xff\xfe\x00\x00", "\u0668\u0660".encode(), "\uff18".encode(), b"\xc3",
    b"\xed\xa0\x80", b"65536", b"99999999999999999999", b"0-65535", b"7-6", b"\xfd7zXZ\x00",
    b"\x1f\x8b", b"BZh91AY&SY", b"---|---|", b"Service Name", b"Port Number", b"Last Updated",
    b"[", b"]", b"[[a]]", b"mailto:", b"\t", "\x0b\x0c\x1c\u2028".encode(),
]


@st.composite
def mutated(draw: st.DrawFn, samples: list[bytes] = SAMPLES, most: int = 6) -> bytes:
    """A sample with up to ``most`` mutations applied, each at a drawn position."""
    data = bytearray(draw(st.sampled_from(samples)))
    for _ in range(draw(st.integers(1, most))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "insert", "token", "delete", "dup", "cut", "splice"]))
        if op == "flip" and data:
            i = min(at, len(data) - 1)
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "token":
            data[at:at] = draw(st.sampled_from(TOKENS)) * draw(st.integers(1, 3))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "dup":
            chunk = data[at : at + draw(st.integers(1, 200))]
            data[at:at] = chunk * draw(st.integers(1, 4))
        elif op == "cut":
            del data[at:]
        elif op == "splice":
            other = draw(st.sampled_from(SAMPLES))
            data[at:] = other[draw(st.integers(0, len(other))) :]
    return bytes(data[: 64 * 1024])


ANY_INPUT = st.one_of(st.binary(max_size=2048), mutated())
#: A few seconds by default; ``PORTWATCH_FUZZ_EXAMPLES=20000`` for a long hunt.
EXAMPLES = int(os.environ.get("PORTWATCH_FUZZ_EXAMPLES", "400"))
_SLOW = [HealthCheck.too_slow]


def _parse_or_refuse(data: bytes) -> ParsedSource | None:
    """The property: a parsed source, or a ``RegistryError``; anything else fails the test."""
    try:
        parsed = parse_source(data, "fuzz.reg")
    except RegistryError as exc:
        refused: RegistryError = exc
    else:
        _check_parsed(parsed)
        return parsed
    assert refused.path == "fuzz.reg"
    assert str(refused).startswith("fuzz.reg")
    return None


def _check_parsed(parsed: ParsedSource) -> None:
    for r in parsed.records:
        assert (r.port_low is None) == (r.port_high is None)
        if r.port_low is not None and r.port_high is not None:
            assert 0 <= r.port_low <= r.port_high <= 65535
    for p in parsed.problems:
        assert p.path == "fuzz.reg"
        assert p.line >= 1


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=_SLOW)
@given(ANY_INPUT)
def test_only_registry_errors_escape_the_loader(data: bytes) -> None:
    _parse_or_refuse(data)


@settings(max_examples=max(60, EXAMPLES // 8), deadline=None, suppress_health_check=_SLOW)
@given(mutated(_PLAIN, most=1))  # mostly still registries, so most of them do compile
def test_whatever_parses_also_compiles(data: bytes) -> None:
    parsed = _parse_or_refuse(data)
    if parsed is None:
        return
    table = compile_table(merge_sources([parsed]))
    for rec in parsed.records[:20]:
        if rec.port_low is not None:
            for t in rec.transports:
                assert table.lookup(t, rec.port_low).status.value != 0  # listed by someone


@settings(max_examples=max(40, EXAMPLES // 10), deadline=None, suppress_health_check=_SLOW)
@given(mutated())
def test_memory_stays_bounded_for_small_hostile_inputs(data: bytes) -> None:
    tracemalloc.start()
    try:
        _parse_or_refuse(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024  # inputs are at most 64 KiB


def test_every_sample_parses_unmutated() -> None:
    """The mutations start from real registries, not from inputs already refused."""
    for sample in SAMPLES:
        parsed = _parse_or_refuse(sample)
        assert parsed is not None
        assert parsed.records
