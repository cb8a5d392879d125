"""Flow records: start time, duration, Zeek-style conn_state, Community ID, order, formats."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP

from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.community_id import community_id
from portwatch.analysis.conn_state import ConnState
from portwatch.analysis.render import OutputFormat, render
from portwatch.analysis.report import DETECTION_FIELDS, FlowReport, Report, merge_reports
from portwatch.capture.batch import PacketBatch
from portwatch.capture.files.reader import read_capture_path
from portwatch.porttable.table import PortTable

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
SAMPLE = PCAPS / "sample.pcapng"
MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
C, S = "192.0.2.10", "198.51.100.20"

#: The fields every flow record had before these were added, in their order.
LEGACY_FIELDS = ["transport", "client", "client_port", "server", "service_port", "service",
                 "status", "method", "flags", "reasons", "packets", "bytes",
                 "packets_to_service", "packets_from_service", "bytes_to_service",
                 "bytes_from_service", "first_seen", "last_seen", "capture"]
NEW_FIELDS = ["start_time", "duration", "conn_state", "community_id", "encapsulation"]


def tcp(flags: str, *, to_server: bool = True) -> bytes:
    ip = IP(src=C, dst=S) if to_server else IP(src=S, dst=C)
    sport, dport = (40001, 80) if to_server else (80, 40001)
    return bytes(Ether(**MAC) / ip / TCP(sport=sport, dport=dport, flags=flags))


def analyse(table: PortTable, packets: list[bytes], *, one_batch: bool = True,
            start_ns: int = 1_700_000_000_000_000_000, step_ns: int = 1_000_000) -> Report:
    analyzer = Analyzer(table, capture="t")
    stamps = [start_ns + i * step_ns for i in range(len(packets))]
    if one_batch:
        analyzer.feed(PacketBatch.from_packets(packets, 1, timestamps_ns=stamps))
    else:
        for pkt, ts in zip(packets, stamps, strict=True):
            analyzer.feed(PacketBatch.from_packets([pkt], 1, timestamps_ns=[ts]))
    return analyzer.report()


def state_of(table: PortTable, packets: list[bytes], *, one_batch: bool = True) -> str:
    (flow,) = analyse(table, packets, one_batch=one_batch).flows
    return flow.conn_state


# Each history as Zeek would log it for the same packets (o: originator, r: responder).
_TCP_HISTORIES = [
    ("S0", [("S", True)]),
    ("S0", [("S", True), ("S", True)]),  # retransmitted SYN, no answer
    ("S1", [("S", True), ("SA", False), ("A", True), ("PA", True), ("A", False)]),
    ("SF", [("S", True), ("SA", False), ("A", True), ("FA", True), ("FA", False), ("A", True)]),
    ("REJ", [("S", True), ("RA", False)]),
    ("S2", [("S", True), ("SA", False), ("A", True), ("FA", True)]),
    ("S3", [("S", True), ("SA", False), ("A", True), ("FA", False)]),
    ("RSTO", [("S", True), ("SA", False), ("A", True), ("R", True)]),
    ("RSTR", [("S", True), ("SA", False), ("A", True), ("R", False)]),
    ("RSTOS0", [("S", True), ("R", True)]),
    ("RSTRH", [("SA", False), ("R", False)]),
    ("SH", [("S", True), ("F", True)]),
    ("SHR", [("SA", False), ("FA", False)]),
    ("OTH", [("A", True), ("A", False)]),  # midstream
    ("OTH", [("S", True), ("SA", False)]),  # handshake not completed, nothing else
    ("SF", [("FA", True), ("FA", False)]),  # midstream, both closed
]


@pytest.mark.parametrize(("want", "history"), _TCP_HISTORIES,
                         ids=[f"{w}-{'.'.join(f + ('o' if o else 'r') for f, o in h)}"
                              for w, h in _TCP_HISTORIES])
@pytest.mark.parametrize("one_batch", [True, False], ids=["one-batch", "batch-per-packet"])
def test_tcp_conn_state_follows_zeek(table: PortTable, want: str, history: list[tuple[str, bool]],
                                     one_batch: bool) -> None:
    packets = [tcp(flags, to_server=orig) for flags, orig in history]
    assert state_of(table, packets, one_batch=one_batch) == want


# Flags a client or a server may send (a SYN without ACK only from the client, a SYN-ACK
# only from the server, so the handshake names one server whatever the order).
_CLIENT_FLAGS = ["S", "A", "PA", "FA", "R", "RA", "F"]
_SERVER_FLAGS = ["SA", "A", "PA", "FA", "R", "RA", "F"]
_packet = st.one_of(st.tuples(st.sampled_from(_CLIENT_FLAGS), st.just(True)),
                    st.tuples(st.sampled_from(_SERVER_FLAGS), st.just(False)))


@settings(max_examples=60, deadline=None)
@given(st.lists(_packet, min_size=1, max_size=12), st.data())
def test_conn_state_does_not_depend_on_how_packets_are_batched(
        table: PortTable, history: list[tuple[str, bool]], data: st.DataObject) -> None:
    packets = [tcp(flags, to_server=orig) for flags, orig in history]
    stamps = [1_000 * (i + 1) for i in range(len(packets))]
    whole = Analyzer(table)
    whole.feed(PacketBatch.from_packets(packets, 1, timestamps_ns=stamps))
    cuts = sorted(data.draw(st.sets(st.integers(1, len(packets) - 1), max_size=4))
                  if len(packets) > 1 else set())
    bounds = list(zip([0, *cuts], [*cuts, len(packets)], strict=True))
    order = data.draw(st.permutations(bounds))  # batches may arrive out of time order
    split = Analyzer(table)
    for lo, hi in order:
        split.feed(PacketBatch.from_packets(packets[lo:hi], 1, timestamps_ns=stamps[lo:hi]))
    (want,), (got,) = whole.report().flows, split.report().flows
    assert (got.conn_state, got.start_time, got.duration) == \
        (want.conn_state, want.start_time, want.duration)
    for column in ("tcp_flags_ab", "tcp_flags_ba", "first_flags", "first_from_a"):
        assert getattr(split.flows, column)[0] == getattr(whole.flows, column)[0], column


def test_a_reused_row_starts_with_no_flags(table: PortTable) -> None:
    analyzer = Analyzer(table)
    analyzer.feed(PacketBatch.from_packets([tcp("S"), tcp("RA", to_server=False)], 1,
                                           timestamps_ns=[1, 2]))
    ft = analyzer.flows
    ft.evict(np.flatnonzero(ft.alive[: ft.size]).astype(np.int64))
    other = bytes(Ether(**MAC) / IP(src=C, dst=S) / TCP(sport=40002, dport=80, flags="A"))
    analyzer.feed(PacketBatch.from_packets([other], 1, timestamps_ns=[3]))
    (flow,) = analyzer.report().flows
    assert flow.client_port == 40002
    assert flow.conn_state == "OTH"  # not REJ: the evicted flow's flags are gone
    assert (int(ft.tcp_flags_ab[0]) | int(ft.tcp_flags_ba[0])) == 0x10


def test_the_first_packet_is_the_earliest_even_when_it_arrives_in_a_later_batch(
        table: PortTable) -> None:
    analyzer = Analyzer(table)
    base = 1_700_000_000_000_000_000
    analyzer.feed(PacketBatch.from_packets([tcp("R")], 1, timestamps_ns=[base + 2000]))
    analyzer.feed(PacketBatch.from_packets([tcp("S")], 1, timestamps_ns=[base + 1000]))
    (flow,) = analyzer.report().flows
    assert flow.conn_state == "RSTOS0"  # SYN first, then RST, by time, not arrival
    assert flow.start_time == pytest.approx((base + 1000) / 1e9)


def test_a_reset_that_came_first_is_not_rstos0(table: PortTable) -> None:
    assert state_of(table, [tcp("R"), tcp("S")]) == "OTH"


@pytest.mark.parametrize(("want", "directions"), [
    ("SF", [True, False]), ("S0", [True, True]), ("SHR", [False]),
])
def test_udp_conn_state_follows_zeek(table: PortTable, want: str, directions: list[bool]) -> None:
    packets = [bytes(Ether(**MAC) / (IP(src=C, dst=S) / UDP(sport=50001, dport=53) if to_server
                                     else IP(src=S, dst=C) / UDP(sport=53, dport=50001)))
               for to_server in directions]
    assert state_of(table, packets) == want


def test_sctp_flows_are_oth(table: PortTable) -> None:
    pkt = bytes(Ether(**MAC) / IP(src=C, dst=S) / SCTP(sport=40000, dport=2905))
    assert state_of(table, [pkt]) == "OTH"


def test_every_state_a_record_can_carry_is_a_zeek_conn_state() -> None:
    zeek = {"S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH",
            "SHR", "OTH"}
    assert {s.name for s in ConnState} == zeek


# -- time, duration, Community ID -----------------------------------------------------------

def test_start_time_and_duration_are_seconds_of_the_first_and_last_packet(
        table: PortTable) -> None:
    (flow,) = analyse(table, [tcp("S"), tcp("SA", to_server=False), tcp("A")],
                      start_ns=1_700_000_000_250_000_000, step_ns=125_000_000).flows
    assert flow.start_time == 1_700_000_000.25
    assert flow.duration == 0.25
    assert flow.first_seen == "2023-11-14T22:13:20.250000+00:00"
    assert flow.last_seen == "2023-11-14T22:13:20.500000+00:00"


def test_a_single_packet_flow_lasts_zero_seconds(table: PortTable) -> None:
    (flow,) = analyse(table, [tcp("S")]).flows
    assert flow.duration == 0.0


def test_records_carry_the_community_id_of_their_5_tuple(table: PortTable) -> None:
    v6 = bytes(Ether(**MAC) / IPv6(src="2001:db8::10", dst="2001:db8:1::20")
               / UDP(sport=51001, dport=53))
    flows = analyse(table, [tcp("S"), tcp("SA", to_server=False), v6]).flows
    got = {(f.transport, f.service_port): f.community_id for f in flows}
    assert got == {
        ("tcp", 80): community_id(6, C, S, 40001, 80),
        ("udp", 53): community_id(17, "2001:db8:1::20", "2001:db8::10", 53, 51001),
    }


# -- order ----------------------------------------------------------------------------------

def test_records_are_sorted_by_start_time_then_by_5_tuple(table: PortTable) -> None:
    def udp(src: str, sport: int, dport: int) -> bytes:
        return bytes(Ether(**MAC) / IP(src=src, dst=S) / UDP(sport=sport, dport=dport))

    # Fed in an order that is neither: three flows start together (5 ns), one earlier (1 ns).
    packets = [udp("192.0.2.30", 50001, 53), udp("192.0.2.9", 50002, 53),
               udp("192.0.2.200", 50003, 53), udp("192.0.2.100", 50004, 123)]
    stamps = [5, 5, 1, 5]
    analyzer = Analyzer(table)
    analyzer.feed(PacketBatch.from_packets(packets, 1, timestamps_ns=stamps))
    flows = analyzer.report().flows
    assert [(f.client, f.client_port) for f in flows] == [
        ("192.0.2.200", 50003), ("192.0.2.9", 50002), ("192.0.2.30", 50001),
        ("192.0.2.100", 50004)]


def test_merged_reports_are_sorted_by_start_time(table: PortTable) -> None:
    late = analyse(table, [tcp("S")], start_ns=2_000_000_000)
    early = analyse(table, [bytes(Ether(**MAC) / IP(src=C, dst=S) / UDP(sport=5, dport=53))],
                    start_ns=1_000_000_000)
    merged = merge_reports([late, early])
    assert [f.start_time for f in merged.flows] == [1.0, 2.0]


# -- the sample capture in every format -------------------------------------------------------

@pytest.fixture(scope="module")
def sample(table: PortTable) -> Report:
    if not SAMPLE.exists():
        pytest.skip("pcaps/sample.pcapng is missing: run `make pcaps`")
    analyzer = Analyzer(table, capture=str(SAMPLE))
    with read_capture_path(str(SAMPLE)) as reader:
        for batch in reader:
            analyzer.feed(batch)
    return analyzer.report()


def test_sample_records_are_in_start_order(sample: Report) -> None:
    starts = [f.start_time for f in sample.flows]
    assert starts == sorted(starts)
    assert len(sample.flows) == 20


def test_json_keeps_every_existing_key_and_only_adds_the_new_fields(sample: Report) -> None:
    doc = json.loads(render(sample, OutputFormat.JSON))
    assert list(doc) == ["captures", "packets", "bytes", "flow_count", "services", "flagged",
                         "decode", "registry", "warnings", "partial"]
    assert doc["flagged"]
    for record in doc["flagged"]:
        assert list(record) == LEGACY_FIELDS + NEW_FIELDS
    # nDPI's fields come last and only when --detect ran (analysis/detect.py)
    assert list(FlowReport.__slots__) == LEGACY_FIELDS + NEW_FIELDS + list(DETECTION_FIELDS)
    full = sample.as_dict(include_flows=True)
    assert [list(f) for f in full["flows"]] == [LEGACY_FIELDS + NEW_FIELDS] * 20


def test_jsonl_and_csv_carry_the_same_records(sample: Report) -> None:
    lines = [json.loads(line) for line in render(sample, OutputFormat.JSONL).splitlines()]
    rows = list(csv.DictReader(io.StringIO(render(sample, OutputFormat.CSV))))
    assert len(lines) == len(rows) == 20
    for record, row in zip(lines, rows, strict=True):
        assert list(row) == LEGACY_FIELDS + NEW_FIELDS
        assert float(row["start_time"]) == record["start_time"]
        assert float(row["duration"]) == record["duration"]
        assert row["conn_state"] == record["conn_state"]
        assert row["community_id"] == record["community_id"]
        assert isinstance(record["duration"], float)
        assert record["community_id"].startswith("1:")


def test_sample_conn_states(sample: Report) -> None:
    states = {(f.transport, f.client_port, f.service_port): f.conn_state for f in sample.flows}
    assert states[("tcp", 49200, 80)] == "S1"  # SYN, SYN-ACK, ACK, data: never closed
    assert states[("udp", 53001, 53)] == "SF"  # query and answer
    assert states[("udp", 53002, 53)] == "S0"  # the fragmented query, no answer
    assert states[("sctp", 40000, 2905)] == "OTH"
    assert states[("dccp", 41000, 5004)] == "OTH"


def test_sample_community_ids_equal_tshark(sample: Report) -> None:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed")
    out = subprocess.run(
        [tshark, "--enable-protocol", "communityid", "-n", "-r", str(SAMPLE), "-T", "fields",
         "-e", "communityid", "-Y", "(tcp || udp || sctp || dccp) && !(ip.flags.mf == 1)"],
        capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    # tshark hashes IPv4 fragments before the last without ports (they are left out here)
    # and gives a non-first IPv6 fragment no ID (the empty lines)
    assert {f.community_id for f in sample.flows} == set(out.stdout.split())
