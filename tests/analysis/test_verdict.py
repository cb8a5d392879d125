"""One verdict, one formatter: the same words in every output portwatch gives."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portwatch.analysis.render import OutputFormat, render
from portwatch.analysis.report import FlowReport, Report
from portwatch.analysis.verdict import (
    STATUS_REASONS,
    FlagReason,
    ServiceSideRule,
    Verdict,
    flag_labels,
    port_reasons,
    reasons,
    summary,
)
from portwatch.annotate import Annotator
from portwatch.cli import main
from portwatch.ports import PortFlag, PortStatus, Transport
from portwatch.porttable.table import PortTable

TSHARK = shutil.which("tshark")
MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
C, S = "192.0.2.10", "198.51.100.20"
REMARK = "Known UNAUTHORIZED USE: Ports 44515 & 44516"


# -- the vocabulary ------------------------------------------------------------------------

def test_flag_reason_bits_keep_the_values_stored_arrays_hold() -> None:
    assert {r.name: int(r) for r in FlagReason} == {
        "RESERVED": 1, "UNASSIGNED": 2, "UNLISTED": 4, "UNAUTHORIZED_USE": 8, "DYNAMIC": 16,
        "PROTOCOL_MISMATCH": 32}
    assert [r.label for r in FlagReason] == [
        "reserved", "unassigned", "unlisted", "unauthorized-use", "dynamic", "protocol-mismatch"]


def test_service_side_rules_keep_their_values_and_labels() -> None:
    assert [(int(r), r.label) for r in ServiceSideRule] == [
        (0, "handshake"), (1, "registry"), (2, "dynamic-range"), (3, "lower-port")]


def test_each_status_gives_its_own_reason_and_assigned_none() -> None:
    assert {s.label: int(STATUS_REASONS[s]) for s in PortStatus} == {
        "unlisted": 4, "assigned": 0, "reserved": 1, "unassigned": 2, "dynamic": 16}
    assert port_reasons(PortStatus.UNASSIGNED, PortFlag.UNAUTHORIZED_USE) == (
        FlagReason.UNASSIGNED | FlagReason.UNAUTHORIZED_USE)
    assert port_reasons(PortStatus.ASSIGNED, PortFlag.NONE) == 0


@given(st.integers(0, 31))
def test_flag_labels_name_exactly_the_bits_set_in_reason_order(bits: int) -> None:
    assert flag_labels(bits) == [r.label for r in FlagReason if bits & r.value]


# -- the words -----------------------------------------------------------------------------

@pytest.mark.parametrize(("bits", "kwargs", "expected"), [
    (FlagReason.RESERVED, {}, ["tcp/8807 is reserved in the IANA registry"]),
    (FlagReason.UNASSIGNED, {}, ["tcp/8807 is unassigned in the IANA registry"]),
    (FlagReason.UNLISTED, {}, ["tcp/8807 is not listed by the loaded registry sources"]),
    (FlagReason.UNLISTED, {"assigned_only": True},
     ["tcp/8807 is not listed by the loaded registry sources (they list assigned ports only)"]),
    (FlagReason.UNASSIGNED | FlagReason.UNAUTHORIZED_USE, {"remark": REMARK},
     ["tcp/8807 is unassigned in the IANA registry",
      f"unauthorized use reported on tcp/8807: {REMARK}"]),
    (FlagReason.DYNAMIC, {"client_port": 60000},
     ["both ports of the flow are in the dynamic range 49152-65535 (tcp/8807)"]),
    (FlagReason.DYNAMIC, {"client_port": 80}, ["tcp/8807 is in the dynamic range 49152-65535"]),
    (FlagReason.DYNAMIC, {}, ["tcp/8807 is in the dynamic range 49152-65535"]),
    (0, {"remark": REMARK}, []),
], ids=["reserved", "unassigned", "unlisted", "unlisted-assigned-only", "unauthorized-use",
        "both-dynamic", "dynamic-service-only", "dynamic-port-alone", "none"])
def test_reasons_are_the_reports_sentences(bits: int, kwargs: dict[str, object],
                                           expected: list[str]) -> None:
    """The report's JSON ``reasons`` as they were before the formatter was shared."""
    assert reasons("tcp", 8807, bits, **kwargs) == expected  # type: ignore[arg-type]


def test_summary_is_the_port_alone_or_flag_with_every_reason() -> None:
    assert summary("tcp", 80, "http", "assigned", []) == "tcp/80 http (assigned)"
    assert summary("udp", 8806, "", "unassigned", ["a", "b"]) == (
        "FLAG udp/8806 (unassigned): a; b")


def test_a_port_on_its_own_is_worded_without_a_client() -> None:
    info_like = Verdict(Transport.UDP, 50000, "", PortStatus.DYNAMIC, FlagReason.DYNAMIC)
    assert info_like.reasons() == ["udp/50000 is in the dynamic range 49152-65535"]
    assert info_like.summary() == (
        "FLAG udp/50000 (dynamic): udp/50000 is in the dynamic range 49152-65535")


# -- the same words everywhere ---------------------------------------------------------------

def _packets() -> list[bytes]:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether

    def eth() -> Ether:
        return Ether(**MACS)

    pkts = [
        eth() / IP(src=C, dst=S) / TCP(sport=33000, dport=8807, flags="S"),  # reserved
        eth() / IP(src=S, dst=C) / TCP(sport=8807, dport=33000, flags="SA"),
        eth() / IP(src=C, dst=S) / UDP(sport=51000, dport=44515),  # unassigned, unauthorized
        eth() / IP(src=C, dst=S) / UDP(sport=60000, dport=50000),  # both dynamic
        eth() / IP(src=S, dst=C) / TCP(sport=60001, dport=80, flags="SA"),  # dynamic service
        eth() / IP(src=C, dst=S) / TCP(sport=40000, dport=443, flags="S"),  # not flagged
    ]
    return [bytes(p) for p in pkts]


#: (transport, service port, client port, status, service, bits, remark) of each flow above.
FLOWS = [
    ("tcp", 8807, 33000, "reserved", "", FlagReason.RESERVED, ""),
    ("udp", 44515, 51000, "unassigned", "", FlagReason.UNASSIGNED | FlagReason.UNAUTHORIZED_USE,
     REMARK),
    ("udp", 50000, 60000, "dynamic", "", FlagReason.DYNAMIC, ""),
    ("tcp", 60001, 80, "dynamic", "", FlagReason.DYNAMIC, ""),
    ("tcp", 443, 40000, "assigned", "https", 0, ""),
]


def _words(flow: tuple[str, int, int, str, str, int, str]) -> tuple[list[str], str]:
    transport, port, client, status, service, bits, remark = flow
    why = reasons(transport, port, bits, remark=remark, client_port=client)
    return why, summary(transport, port, service, status, why)


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("scapy")
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    path = tmp_path_factory.mktemp("verdict") / "flows.pcap"
    wrpcap(str(path), [Ether(p) for p in _packets()])
    return path


def _analyze(official_csv: Path, capture: Path, capsys: pytest.CaptureFixture[str],
             *extra: str) -> str:
    assert main(["--registry", str(official_csv), "--no-cache", "analyze", *extra,
                 str(capture)]) == 0
    return capsys.readouterr().out


def test_json_report_gives_the_formatters_reasons(
    official_csv: Path, capture: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(_analyze(official_csv, capture, capsys, "-f", "json"))
    got = {(f["transport"], f["service_port"]): f["reasons"] for f in doc["flagged"]}
    assert got == {(f[0], f[1]): _words(f)[0] for f in FLOWS if f[5]}


def test_table_report_gives_the_formatters_reasons(
    official_csv: Path, capture: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(_analyze(official_csv, capture, capsys, "-f", "json"))
    assert len(doc["flagged"]) == 4
    for flagged in doc["flagged"]:  # one flow a table, at full width: one line a row
        text = render(Report([], 0, 0, [], [FlowReport(**flagged)], {}, {}), OutputFormat.TABLE)
        why, _ = _words(next(f for f in FLOWS if f[1] == flagged["service_port"]))
        (row,) = [line for line in text.splitlines() if f"/{flagged['service_port']} " in line
                  and flagged["client"] in line]
        assert row.rstrip().endswith("; ".join(why))


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_annotated_copy_comments_are_the_formatters_summaries(
    official_csv: Path, capture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert TSHARK is not None
    out = tmp_path / "annotated.pcapng"
    _analyze(official_csv, capture, capsys, "-f", "json", "--annotate", str(out))
    env = {**os.environ, "HOME": str(tmp_path)}
    run = subprocess.run([TSHARK, "-n", "-r", str(out), "-T", "fields", "-e", "frame.comment"],
                         capture_output=True, text=True, env=env, check=True)
    comments = set(run.stdout.splitlines())
    rules = {8807: "handshake", 44515: "dynamic-range", 50000: "lower-port",
             60001: "handshake", 443: "handshake"}
    assert comments == {f"portwatch: {_words(f)[1]} [{rules[f[1]]}]" for f in FLOWS}


def test_per_packet_api_gives_the_formatters_words(table: PortTable) -> None:
    from scapy.layers.l2 import Ether

    annotate = Annotator(table)
    answers = [annotate(Ether(p)) for p in _packets()]
    by_port = {a.service_port: a for a in answers}
    for flow in FLOWS:
        why, line = _words(flow)
        answer = by_port[flow[1]]
        assert (answer.reasons, answer.summary) == (tuple(why), line)
        assert str(answer) == f"portwatch: {line}"


def test_lookup_gives_the_formatters_words_for_a_port_on_its_own(
    official_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--registry", str(official_csv), "--no-cache", "lookup", "--json",
                 "44515/udp", "50000/udp", "80/tcp"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    unauthorized = reasons("udp", 44515, FlagReason.UNASSIGNED | FlagReason.UNAUTHORIZED_USE,
                           remark=REMARK)
    dynamic = reasons("udp", 50000, FlagReason.DYNAMIC)
    assert [a["reasons"] for a in answers] == [unauthorized, dynamic, []]
    assert [a["summary"] for a in answers] == [
        summary("udp", 44515, "", "unassigned", unauthorized),
        summary("udp", 50000, "", "dynamic", dynamic),
        "tcp/80 http (assigned)"]
    assert main(["--registry", str(official_csv), "--no-cache", "lookup", "44515/udp"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[-1] == summary("udp", 44515, "", "unassigned", unauthorized)
