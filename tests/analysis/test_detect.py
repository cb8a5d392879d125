"""nDPI's detection beside the registry: the mapping table, the verdicts, every output."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from helpers.ndpi import HAVE_NDPI, needs_ndpi
from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.detect import (
    INSTALL_HINT,
    FirstPackets,
    FlowDetection,
    NdpiFlow,
    annotation_comments,
    judge,
    match,
)
from portwatch.analysis.ndpi_names import confirms, packaged_table, parse_table
from portwatch.analysis.render import OutputFormat, render
from portwatch.analysis.report import FlowReport
from portwatch.analysis.run import AnnotateRequest, DetectRequest, analyze_paths
from portwatch.analysis.verdict import Confidence, Detection, FlagReason, Verdict
from portwatch.capture.batch import PacketBatch
from portwatch.capture.files.reader import read_capture_path
from portwatch.cli import main
from portwatch.decode.native import DecodedBatch, decode_batch
from portwatch.ports import PortStatus, Transport
from portwatch.porttable.table import PortTable

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
DETECT = PCAPS / "detect.pcap"
TRUTH = json.loads((PCAPS / "truth.json").read_text())["detect.pcap"]["detection"]
TSHARK = shutil.which("tshark")



# -- the mapping table, both ways --------------------------------------------------------

def test_every_iana_name_in_the_mapping_is_a_service_or_alias_of_the_packaged_registry(
    packaged: PortTable,
) -> None:
    known = {n.lower() for n in packaged.names} | {
        a.lower() for e in packaged.entries for a in e.aliases}
    missing = sorted((ndpi, name) for ndpi, names in packaged_table().items() for name in names
                     if name.lower() not in known)
    assert missing == []


@needs_ndpi
def test_every_ndpi_name_in_the_mapping_is_a_protocol_of_the_bundled_ndpi() -> None:
    from portwatch.analysis.detect import ndpi_protocols

    protocols = set(ndpi_protocols())
    assert {"SSH", "TLS", "HTTP", "DNS"} <= protocols  # the list itself is real
    assert sorted(set(packaged_table()) - protocols) == []


@pytest.mark.parametrize(("line", "message"), [
    ("SSH ssh", "expected 'nDPI name<TAB>IANA names'"),
    ("SSH\t", "expected 'nDPI name<TAB>IANA names'"),
    ("\tssh", "expected 'nDPI name<TAB>IANA names'"),
])
def test_a_malformed_mapping_line_names_its_line_number(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=rf"ndpi_to_iana.tsv:2: {message}"):
        parse_table(["# comment", line])


def test_a_protocol_listed_twice_in_the_mapping_is_refused() -> None:
    with pytest.raises(ValueError, match=r":3: 'SSH' is listed twice"):
        parse_table(["SSH\tssh", "", "SSH\tsftp"])


@pytest.mark.parametrize(("detected", "service", "aliases", "expected"), [
    ("ssh", "ssh", (), True),
    ("tls.google", "https", (), True),  # each part of nDPI's master.app name counts
    ("TLS", "imaps", (), True),
    ("http", "hp-pdl-datastr", ("pdl-datastream",), False),  # node_exporter on 9100
    ("http", "", ("www",), True),  # an alias confirms
    ("dns", "domain", (), True),
    ("ssh", "https", (), False),
    ("anydesk", "https", (), False),  # not in the table: confirmed nowhere
    ("tls", "", (), False),  # nothing assigned
])
def test_confirms_compares_ndpi_names_with_the_service_and_its_aliases(
    detected: str, service: str, aliases: tuple[str, ...], expected: bool,
) -> None:
    assert confirms(detected, service, aliases) is expected


# -- judging ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("found", "service", "status", "expected"), [
    (FlowDetection("ssh", Confidence.PAYLOAD), "https", PortStatus.ASSIGNED, Detection.MISMATCH),
    (FlowDetection("tls", Confidence.PAYLOAD), "https", PortStatus.ASSIGNED,
     Detection.CONFIRMED),
    (FlowDetection("tls", Confidence.PAYLOAD), "", PortStatus.UNASSIGNED, Detection.MISMATCH),
    (FlowDetection("tls", Confidence.PAYLOAD), "", PortStatus.RESERVED, Detection.MISMATCH),
    # nothing to compare with: private use of a dynamic port, or a port the sources omit
    (FlowDetection("tls", Confidence.PAYLOAD), "", PortStatus.DYNAMIC, Detection.UNCONFIRMED),
    (FlowDetection("tls", Confidence.PAYLOAD), "", PortStatus.UNLISTED, Detection.UNCONFIRMED),
    # a guess from the port, or nothing at all, never contradicts the registry
    (FlowDetection("ssh", Confidence.PORT_GUESS), "https", PortStatus.ASSIGNED,
     Detection.UNCONFIRMED),
    (FlowDetection("", Confidence.NONE), "https", PortStatus.ASSIGNED, Detection.UNCONFIRMED),
])
def test_judge_confirms_flags_or_leaves_unconfirmed(
    found: FlowDetection, service: str, status: PortStatus, expected: Detection,
) -> None:
    assert judge(found, service, (), status) is expected


@pytest.mark.parametrize(("name", "guessed", "confidence", "expected"), [
    ("SSH", False, 6, FlowDetection("ssh", Confidence.PAYLOAD)),  # NDPI_CONFIDENCE_DPI
    ("TLS.Google", False, 6, FlowDetection("tls.google", Confidence.PAYLOAD)),
    # a partial or aggressive match is nDPI's hedge, not a reading: never a mismatch
    ("TLS.Google", False, 3, FlowDetection("tls.google", Confidence.PORT_GUESS)),  # PARTIAL
    ("SSH", False, 4, FlowDetection("ssh", Confidence.PORT_GUESS)),  # DPI_PARTIAL_CACHE
    ("SSH", False, 8, FlowDetection("ssh", Confidence.PORT_GUESS)),  # DPI_AGGRESSIVE
    ("TLS", True, 1, FlowDetection("tls", Confidence.PORT_GUESS)),  # MATCH_BY_PORT
    ("TLS", False, 5, FlowDetection("tls", Confidence.PORT_GUESS)),  # DPI_CACHE: not this flow
    ("Google", False, 7, FlowDetection("google", Confidence.PORT_GUESS)),  # MATCH_BY_IP
    ("Unknown", False, 0, FlowDetection("", Confidence.NONE)),
])
def test_only_ndpi_confidences_read_in_the_flow_s_payload_count_as_payload(
    name: str, guessed: bool, confidence: int, expected: FlowDetection,
) -> None:
    flow = NdpiFlow(int(Transport.TCP), (1, 1), (2, 2), 0, name, guessed, confidence)
    assert FlowDetection.of(flow) == expected


@needs_ndpi
def test_the_confidence_values_are_the_bundled_ndpi_s() -> None:
    """The numbers above are nDPI's ``ndpi_confidence_t``, as the bundled engine has them."""
    from _lib_engine import lib

    assert (lib.NDPI_CONFIDENCE_MATCH_BY_PORT, lib.NDPI_CONFIDENCE_DPI_PARTIAL,
            lib.NDPI_CONFIDENCE_DPI_PARTIAL_CACHE, lib.NDPI_CONFIDENCE_DPI_CACHE,
            lib.NDPI_CONFIDENCE_DPI, lib.NDPI_CONFIDENCE_MATCH_BY_IP,
            lib.NDPI_CONFIDENCE_DPI_AGGRESSIVE) == (1, 3, 4, 5, 6, 7, 8)


def test_a_partial_match_of_another_protocol_leaves_the_flow_unconfirmed() -> None:
    partial = NdpiFlow(int(Transport.TCP), (1, 50000), (2, 443), 0, "SSH", False, 3)
    assert judge(FlowDetection.of(partial), "https", (), PortStatus.ASSIGNED) \
        is Detection.UNCONFIRMED


@needs_ndpi
def test_ndpi_5_calls_a_bare_hello_sip_by_payload_so_the_mismatch_is_nDPI_s_verdict(
    table: PortTable,
) -> None:
    """nDPI's SIP dissector takes a 5-byte payload "hello" for a SIP keep-alive, with DPI
    confidence (not a port guess, not a partial match): ``eth-le-usec.pcap``'s tcp/80
    exchange is therefore a mismatch, nDPI's and not a confidence mix-up (docs/detect.md)."""
    from portwatch.analysis.detect import run_ndpi

    by_port = {f.b[1]: f for f in run_ndpi([str(PCAPS / "eth-le-usec.pcap")])}
    sip = by_port[80]
    assert (sip.name, sip.guessed, sip.confidence) == ("SIP", False, 6)  # NDPI_CONFIDENCE_DPI
    assert FlowDetection.of(sip) == FlowDetection("sip", Confidence.PAYLOAD)
    assert judge(FlowDetection.of(sip), "http", ("www", "www-http"), PortStatus.ASSIGNED) \
        is Detection.MISMATCH


def test_the_mismatch_sentence_says_both_sides(table: PortTable) -> None:
    verdict = Verdict(Transport.TCP, 443, "https", PortStatus.ASSIGNED,
                      FlagReason.PROTOCOL_MISMATCH, detected="ssh", client_port=50001)
    assert verdict.labels() == ["protocol-mismatch"]
    assert verdict.reasons() == ["tcp/443 https (assigned) carries ssh"]
    unassigned = Verdict(Transport.TCP, 8806, "", PortStatus.UNASSIGNED,
                         FlagReason.UNASSIGNED | FlagReason.PROTOCOL_MISMATCH, detected="tls")
    assert unassigned.reasons() == ["tcp/8806 is unassigned in the IANA registry",
                                    "tcp/8806 (unassigned) carries tls"]


# -- the first packets of each flow ------------------------------------------------------

def _read(path: str) -> list[tuple[int, bytes]]:
    """(timestamp, bytes) of every packet of a capture, the reader closed."""
    reader = read_capture_path(path)
    try:
        return [(int(b.timestamps_ns[i]), b.packet(i)) for b in reader for i in range(len(b))]
    finally:
        reader.close()


def _decoded(batch: PacketBatch) -> DecodedBatch:
    return decode_batch(batch)


def _tcp(sport: int, i: int, payload: bytes = b"") -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src="192.0.2.1", dst="198.51.100.2")
                 / TCP(sport=sport, dport=443, flags="PA", seq=i) / payload)


def test_first_packets_keeps_the_first_n_of_every_flow_across_batches(
    tmp_path: Path, table: PortTable,
) -> None:
    """Two flows interleaved over three batches; a third packet of either is never kept."""
    analyzer = Analyzer(table)
    keeper = FirstPackets(str(tmp_path), limit=3)
    sent: list[tuple[int, bytes]] = []
    stamp = 1_700_000_000_000_000_001
    for batch_no in range(3):
        packets = [_tcp(40000 + (i % 2), batch_no * 10 + i, b"x" * (i + 1)) for i in range(4)]
        stamps = [stamp + batch_no * 1000 + i for i in range(4)]
        batch = PacketBatch.from_packets(packets, 1, timestamps_ns=stamps)
        decoded, flows = analyzer.feed(batch)
        keeper.add(batch, decoded, flows, analyzer.flows)
        sent += list(zip(stamps, packets, strict=True))
    (path,) = keeper.close()
    got = _read(path)
    # batch 0: both flows get 2 packets; batch 1: one more each; batch 2: none
    assert got == [*sent[:4], sent[4], sent[5]]
    assert keeper.packets == 6


def test_first_packets_hands_ndpi_no_bare_ack_but_the_first_packet_of_each_flow(
    tmp_path: Path, table: PortTable,
) -> None:
    """SYN, SYN-ACK and data are kept; bare ACKs and empty datagrams are not, unless first."""
    def tcp(sport: int, dport: int, flags: str, payload: bytes = b"") -> bytes:
        return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                     / IP(src="192.0.2.1", dst="198.51.100.2")
                     / TCP(sport=sport, dport=dport, flags=flags) / payload)

    def udp(payload: bytes) -> bytes:
        return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                     / IP(src="192.0.2.1", dst="198.51.100.2")
                     / UDP(sport=5353, dport=53) / payload)

    packets = [
        tcp(40000, 443, "S"), tcp(443, 40000, "SA"), tcp(40000, 443, "A"),
        tcp(40000, 443, "PA", b"hello"), tcp(443, 40000, "A"), tcp(40000, 443, "FA"),
        tcp(40001, 80, "A"), tcp(40001, 80, "A"),  # mid-stream bare ACKs: the first only
        udp(b""), udp(b"q"), udp(b""),
    ]
    analyzer = Analyzer(table)
    keeper = FirstPackets(str(tmp_path), limit=20)
    batch = PacketBatch.from_packets(packets, 1, timestamps_ns=list(range(len(packets))))
    decoded, flows = analyzer.feed(batch)
    keeper.add(batch, decoded, flows, analyzer.flows)
    (path,) = keeper.close()
    assert [ts for ts, _ in _read(path)] == [0, 1, 3, 5, 6, 8, 9]


def test_first_packets_skips_packets_of_no_flow_and_writes_one_file_per_link_type(
    tmp_path: Path, table: PortTable,
) -> None:
    analyzer = Analyzer(table)
    keeper = FirstPackets(str(tmp_path), limit=5)
    raw_ip = bytes(IP(src="192.0.2.1", dst="198.51.100.2") / UDP(sport=5353, dport=53) / b"q")
    arp = bytes.fromhex("ffffffffffff020000000001080600010800060400010200000000"
                        "01c000020100000000000000c0000202")
    batch = PacketBatch.from_packets([_tcp(40000, 1), raw_ip, arp], [1, 101, 1])
    decoded, flows = analyzer.feed(batch)
    keeper.add(batch, decoded, flows, analyzer.flows)
    paths = sorted(keeper.close())
    assert [Path(p).name for p in paths] == ["first-packets-1.pcap", "first-packets-101.pcap"]
    assert [len(_read(p)) for p in paths] == [1, 1]


def test_first_packets_refuses_a_count_ndpi_cannot_take(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="1-255 packets"):
        FirstPackets(str(tmp_path), limit=256)


def test_match_joins_by_five_tuple_in_either_direction(table: PortTable) -> None:
    analyzer = Analyzer(table)
    batch = PacketBatch.from_packets([_tcp(40000, 1), _tcp(40001, 1)], 1,
                                     timestamps_ns=[5_000_000, 6_000_000])
    analyzer.feed(batch)
    rows = np.flatnonzero(analyzer.flows.alive[: analyzer.flows.size])
    client = (0xFFFF << 32 | 0xC0000201, 40001)
    server = (0xFFFF << 32 | 0xC6336402, 443)
    ndpi = [NdpiFlow(int(Transport.TCP), server, client, 6_000_000, "SSH", False, 6),
            NdpiFlow(int(Transport.UDP), client, server, 6_000_000, "DNS", False, 6)]
    found = match(ndpi, analyzer.flows, rows)
    assert found == {int(rows[1]): FlowDetection("ssh", Confidence.PAYLOAD)}


# -- end to end on pcaps/detect.pcap ------------------------------------------------------

@pytest.fixture(scope="module")
def detected(packaged: PortTable) -> list[FlowReport]:
    if not HAVE_NDPI:
        pytest.skip("nfstream (nDPI) is not installed: pip install 'portwatch[detect]'")
    result = analyze_paths([str(DETECT)], packaged, detect=DetectRequest())
    assert result.report is not None
    return result.report.flows


@needs_ndpi
def test_every_flow_of_the_sample_gets_the_verdict_of_the_truth(
    detected: list[FlowReport],
) -> None:
    got = {str(f.client_port): {"service": f"{f.transport}/{f.service_port}",
                                "detected": f.detected, "confidence": f.confidence,
                                "detection": f.detection} for f in detected}
    assert got == TRUTH


@needs_ndpi
def test_mismatches_are_flagged_with_both_names_and_only_they(
    detected: list[FlowReport],
) -> None:
    mismatched = {f.client_port: f for f in detected if "protocol-mismatch" in f.flags}
    assert sorted(mismatched) == [50001, 50002, 50003]
    assert "tcp/443 https (assigned) carries ssh" in mismatched[50001].reasons
    assert "tcp/53 domain (assigned) carries http" in mismatched[50002].reasons
    assert mismatched[50003].flags == ["unassigned", "protocol-mismatch"]
    assert mismatched[50003].reasons[-1] == "tcp/8806 (unassigned) carries tls"


@needs_ndpi
def test_a_flow_without_payload_is_unconfirmed_never_a_mismatch(
    detected: list[FlowReport],
) -> None:
    handshake_only = next(f for f in detected if f.client_port == 50008)
    assert (handshake_only.detection, handshake_only.confidence) == ("unconfirmed",
                                                                    "port-guess")
    assert handshake_only.flags == []


@needs_ndpi
def test_detection_reads_standard_input_without_spooling_it(
    packaged: PortTable, tmp_path: Path,
) -> None:
    result = analyze_paths(["-"], packaged, detect=DetectRequest(directory=str(tmp_path)),
                           stdin=io.BytesIO(DETECT.read_bytes()))
    assert result.report is not None
    assert sum(f.detection == "mismatch" for f in result.report.flows) == 3
    assert list(tmp_path.iterdir()) == []  # the first packets' directory is gone


@needs_ndpi
def test_detection_agrees_with_the_jobs_path(packaged: PortTable) -> None:
    result = analyze_paths([str(DETECT), str(DETECT)], packaged, jobs=2,
                           detect=DetectRequest())
    assert result.report is not None
    assert sum(f.detection == "mismatch" for f in result.report.flows) == 6


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
@pytest.mark.parametrize("client_port", sorted(p for p, want in TRUTH.items()
                                                if want["confidence"] == "payload"))
def test_tshark_dissects_each_payload_as_the_protocol_detected(client_port: str) -> None:
    """Told to decode the service port as the detected protocol, tshark finds it there."""
    want = TRUTH[client_port]
    transport, port = want["service"].split("/")
    proto = {"ssh": "ssh", "http": "http", "tls": "tls", "dns": "dns"}[want["detected"]]
    out = subprocess.run(
        [TSHARK, "-n", "-r", str(DETECT), "-d", f"{transport}.port=={port},{proto}",
         "-Y", f"{transport}.port == {client_port} && {proto}",
         "-T", "fields", "-e", "frame.protocols"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.strip(), f"tshark found no {proto} in the flow from port {client_port}"


# -- outputs --------------------------------------------------------------------------------

@needs_ndpi
def test_the_table_shows_the_detected_column_and_the_detection_section(
    packaged: PortTable,
) -> None:
    report = analyze_paths([str(DETECT)], packaged, detect=DetectRequest()).report
    assert report is not None
    text = render(report, OutputFormat.TABLE)
    assert "detected" in text.split("Flagged flows")[1].splitlines()[1]
    assert "Protocol detection (nDPI): 3 mismatched flows" in text
    plain = analyze_paths([str(DETECT)], packaged).report
    assert plain is not None
    assert "detected" not in render(plain, OutputFormat.TABLE)


@needs_ndpi
def test_csv_json_and_jsonl_carry_the_detection_fields_only_when_detection_ran(
    packaged: PortTable,
) -> None:
    report = analyze_paths([str(DETECT)], packaged, detect=DetectRequest()).report
    plain = analyze_paths([str(DETECT)], packaged).report
    assert report is not None
    assert plain is not None
    rows = list(csv.DictReader(io.StringIO(render(report, OutputFormat.CSV))))
    assert {r["detection"] for r in rows} == {"mismatch", "confirmed", "unconfirmed"}
    assert "detection" not in render(plain, OutputFormat.CSV).splitlines()[0]
    flagged = json.loads(render(report, OutputFormat.JSON))["flagged"]
    assert {f["detected"] for f in flagged} == {"ssh", "http", "tls"}
    lines = [json.loads(x) for x in render(report, OutputFormat.JSONL).splitlines()]
    assert all({"detected", "confidence", "detection"} <= set(x) for x in lines)
    assert all("detection" not in json.loads(x)
               for x in render(plain, OutputFormat.JSONL).splitlines())


# -- the command line -----------------------------------------------------------------------

def test_detect_without_ndpi_exits_2_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    official_csv: Path, warm_cache: Path,
) -> None:
    monkeypatch.setenv("PORTWATCH_REGISTRY", str(official_csv))
    monkeypatch.setenv("PORTWATCH_CACHE_DIR", str(warm_cache))
    monkeypatch.setitem(sys.modules, "nfstream", None)  # import nfstream raises ImportError
    monkeypatch.setitem(sys.modules, "_lib_engine", None)  # and its engine
    assert main(["analyze", "--detect", "-f", "json", str(DETECT)]) == 2
    err = capsys.readouterr().err
    assert INSTALL_HINT in err
    assert len(err.strip().splitlines()) == 1


def test_detect_with_another_engine_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    official_csv: Path, warm_cache: Path,
) -> None:
    monkeypatch.setenv("PORTWATCH_REGISTRY", str(official_csv))
    monkeypatch.setenv("PORTWATCH_CACHE_DIR", str(warm_cache))
    assert main(["analyze", "--detect", "--engine", "scapy", str(DETECT)]) == 2
    assert "--detect works with the native engine only" in capsys.readouterr().err


@needs_ndpi
def test_analyze_detect_on_the_command_line_flags_the_mismatches(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    official_csv: Path, warm_cache: Path,
) -> None:
    monkeypatch.setenv("PORTWATCH_REGISTRY", str(official_csv))
    monkeypatch.setenv("PORTWATCH_CACHE_DIR", str(warm_cache))
    assert main(["analyze", "--detect", "-f", "jsonl", str(DETECT)]) == 0
    flows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert sorted((f["service_port"], f["detected"]) for f in flows
                  if f["detection"] == "mismatch") == [(53, "http"), (443, "ssh"), (8806, "tls")]


def test_first_packets_starts_again_for_a_row_the_flow_table_reused(
    tmp_path: Path, table: PortTable,
) -> None:
    """An evicted flow's row taken by a new flow: the new flow's first packets are kept."""
    analyzer = Analyzer(table)
    keeper = FirstPackets(str(tmp_path), limit=2)
    old = PacketBatch.from_packets([_tcp(40000, i, b"x") for i in range(3)], 1,
                                   timestamps_ns=[1, 2, 3])
    _, flows = analyzer.feed(old)
    keeper.add(old, _decoded(old), flows, analyzer.flows)
    analyzer.flows.evict(np.unique(flows))
    new = PacketBatch.from_packets([_tcp(40001, i, b"y") for i in range(3)], 1,
                                   timestamps_ns=[10, 11, 12])
    _, flows_new = analyzer.feed(new)
    assert set(flows_new.tolist()) == set(flows.tolist())  # the same row, reused
    keeper.add(new, _decoded(new), flows_new, analyzer.flows)
    (path,) = keeper.close()
    assert [ts for ts, _ in _read(path)] == [1, 2, 10, 11]


# -- the annotated copy ------------------------------------------------------------------

@needs_ndpi
@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_the_annotated_copy_carries_the_detection_in_every_packet_comment(
    packaged: PortTable, tmp_path: Path,
) -> None:
    out = tmp_path / "annotated.pcapng"
    analyze_paths([str(DETECT)], packaged, detect=DetectRequest(),
                  annotate=AnnotateRequest(str(out), only_flagged=True))
    comments = subprocess.run(
        [TSHARK, "-n", "-r", str(out), "-T", "fields", "-e", "tcp.srcport", "-e",
         "frame.comment"], capture_output=True, text=True, check=True, timeout=60).stdout
    by_port = dict(line.split("\t", 1) for line in comments.splitlines() if "\t" in line)
    assert by_port["50001"] == ("portwatch: FLAG tcp/443 https (assigned): tcp/443 https "
                                "(assigned) carries ssh [handshake] [nDPI: ssh, mismatch]")
    # only flagged flows are commented: the confirmed SSH on 22 is not
    assert by_port.get("50006", "") == ""


def test_annotation_comments_word_the_verdict_with_the_detection(table: PortTable) -> None:
    analyzer = Analyzer(table)
    batch = PacketBatch.from_packets([_tcp(40000, 1, b"SSH-2.0-x\r\n")], 1)
    analyzer.feed(batch)
    rows = np.flatnonzero(analyzer.flows.alive[: analyzer.flows.size])
    row = int(rows[0])
    got = annotation_comments(analyzer, {row: FlowDetection("ssh", Confidence.PAYLOAD)}, rows)
    assert got[row] == ("portwatch: FLAG tcp/443 https (assigned): tcp/443 https (assigned) "
                        "carries ssh [lower-port] [nDPI: ssh, mismatch]", True)
    guessed = annotation_comments(analyzer, {row: FlowDetection("tls", Confidence.PORT_GUESS)},
                                  rows)
    assert guessed[row] == ("portwatch: tcp/443 https (assigned) [lower-port] "
                            "[nDPI: tls (port-guess), unconfirmed]", False)


@needs_ndpi
def test_live_detection_reports_a_flow_once_ndpi_is_done_before_the_stream_ends(
    tmp_path: Path, packaged: PortTable,
) -> None:
    """The daemon's mode: flows come back while the FIFO is still open."""
    import time

    from portwatch.analysis.detect import LiveDetection

    reported: list[NdpiFlow] = []
    # detect.pcap's flows follow each other ~6 ms apart: 3 ms of silence ends one
    live = LiveDetection(str(tmp_path), on_flow=reported.append, idle_ms=3)
    analyzer = Analyzer(packaged)
    reader = read_capture_path(str(DETECT))
    try:
        for batch in reader:
            decoded, flows = analyzer.feed(batch)
            live.add(batch, decoded, flows, analyzer.flows)
    finally:
        reader.close()
    deadline = time.monotonic() + 20
    while len(reported) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    early = {f.name for f in reported}
    assert {"SSH", "HTTP", "TLS"} <= early  # reported before finish(), the FIFO still open
    assert live.finish() == []
    assert len(reported) == 9  # the last flow at the end
    assert live.errors == []


@needs_ndpi
def test_sigterm_during_detection_removes_the_private_fifo_directory(tmp_path: Path) -> None:
    """A run stalled on its input is stopped: exit 143, nothing left in $TMPDIR."""
    import os
    import signal
    import time

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    fifo = tmp_path / "in.pcap"
    os.mkfifo(fifo)
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "portwatch", "analyze", "--detect", "-f", "json", str(fifo)],
        env={**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(repo / "src")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(fifo, "wb") as writer:
        writer.write(DETECT.read_bytes())  # every packet, then silence: the run waits
        writer.flush()
        deadline = time.monotonic() + 30
        while not any(tmp.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(tmp.iterdir())  # detection's private directory exists meanwhile
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(tmp.iterdir()) == []


# -- stopping early: nDPI decided or gave up ---------------------------------------------

def _udp_flow(sport: int, count: int, payload: bytes, start: int) -> list[tuple[int, bytes]]:
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                  / IP(src="192.0.2.1", dst="198.51.100.2")
                  / UDP(sport=sport, dport=9999) / payload)
    return [(start + i * 1000, frame) for i in range(count)]


@needs_ndpi
def test_the_meter_finishes_a_flow_once_ndpi_gives_up_and_ignores_its_later_packets(
    tmp_path: Path, table: PortTable, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unknown bytes: nDPI excludes every dissector within a few packets and gives up; the
    flow is finished there, and the meter hands nDPI none of its 20 packets after that."""
    from portwatch.analysis import detect

    packets = _udp_flow(40000, 20, b"\xa5" * 200, 1_700_000_000_000_000_000)
    keeper = FirstPackets(str(tmp_path), limit=20)
    analyzer = Analyzer(table)
    batch = PacketBatch.from_packets([p for _, p in packets], 1,
                                     timestamps_ns=[t for t, _ in packets])
    decoded, flows = analyzer.feed(batch)
    keeper.add(batch, decoded, flows, analyzer.flows)
    (path,) = keeper.close()
    from portwatch.analysis import _ndpi_meter

    ffi, lib = detect._engine()
    updates = 0

    class Counting:
        """nfstream's engine, counting the packets handed to nDPI after a flow's first."""

        def __getattr__(self, name: str) -> object:
            return getattr(lib, name)

        def meter_update_flow(self, *args: object) -> object:
            nonlocal updates
            updates += 1
            return lib.meter_update_flow(*args)

    monkeypatch.setattr(_ndpi_meter, "engine", lambda: (ffi, Counting()))
    (flow,) = detect._meter_in_process(path, 20)
    assert FlowDetection.of(flow).confidence is not Confidence.PAYLOAD
    assert 0 < updates < 19


@needs_ndpi
def test_live_detection_stops_copying_a_flow_ndpi_is_done_with(
    tmp_path: Path, packaged: PortTable,
) -> None:
    """A DNS query is named at its first packet: once nDPI says so, the flow's later
    packets (within its first 20) are not copied any more; another flow's still are."""
    import time

    from portwatch.analysis.detect import LiveDetection

    dns = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                / IP(src="192.0.2.1", dst="198.51.100.2") / UDP(sport=40001, dport=53)
                / bytes.fromhex("123401000001000000000000076578616d706c6503636f6d0000010001"))
    live = LiveDetection(str(tmp_path), limit=20)
    analyzer = Analyzer(packaged)
    stamp = 1_700_000_000_000_000_000

    def feed(frames: list[bytes]) -> None:
        nonlocal stamp
        batch = PacketBatch.from_packets(frames, 1, timestamps_ns=[
            stamp + i * 1000 for i in range(len(frames))])
        stamp += len(frames) * 1000
        decoded, flows = analyzer.feed(batch)
        live.add(batch, decoded, flows, analyzer.flows)

    deadline = time.monotonic() + 20
    sent = 0
    while live.closed == 0 and sent < 15 and time.monotonic() < deadline:
        feed([dns])  # one packet at a time, until nDPI's answer closes the flow
        sent += 1
        time.sleep(0.05)
    feed([dns])
    assert live.closed == 1
    written = live.packets
    assert written <= sent + 1
    feed([dns] * 3 + [p for _, p in _udp_flow(40002, 5, b"\xa5" * 64, 0)])
    assert live.packets == written + 5  # the other flow's packets only
    assert "DNS" in {f.name for f in live.finish()}
    assert live.errors == []
