"""The analysis engine: service-port rules, flags, fragments, and the sample truth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.report import FlowReport
from portwatch.capture.batch import PacketBatch
from portwatch.capture.files.reader import read_capture_path
from portwatch.errors import CaptureTruncatedError
from portwatch.porttable.table import PortTable

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
C, S = "192.0.2.10", "198.51.100.20"


def _flows(table: PortTable, *packets: bytes) -> list[FlowReport]:
    analyzer = Analyzer(table)
    analyzer.feed(PacketBatch.from_packets(list(packets), 1,
                                     timestamps_ns=[i * 1000 for i in range(len(packets))]))
    return analyzer.report().flows


def _eth(layer: object) -> bytes:
    return bytes(Ether(**MAC) / layer)  # type: ignore[operator]


def test_handshake_makes_the_syn_receiver_the_service_even_on_an_unassigned_port(
    table: PortTable,
) -> None:
    (flow,) = _flows(
        table,
        _eth(IP(src=C, dst=S) / TCP(sport=80, dport=44515, flags="S")),
        _eth(IP(src=S, dst=C) / TCP(sport=44515, dport=80, flags="SA")),
    )
    assert (flow.service_port, flow.method, flow.status) == (44515, "handshake", "unassigned")
    assert flow.client_port == 80
    assert flow.flags == ["unassigned", "unauthorized-use"]
    assert any("Known UNAUTHORIZED USE" in r for r in flow.reasons)


def test_syn_ack_alone_identifies_the_server(table: PortTable) -> None:
    (flow,) = _flows(table, _eth(IP(src=S, dst=C) / TCP(sport=8807, dport=50123, flags="SA")))
    assert (flow.service_port, flow.method) == (8807, "handshake")
    assert flow.flags == ["reserved"]


def test_mid_stream_flow_uses_the_registry_side(table: PortTable) -> None:
    (flow,) = _flows(table, _eth(IP(src=S, dst=C) / TCP(sport=443, dport=8794, flags="A")))
    assert (flow.service_port, flow.service, flow.method) == (443, "https", "registry")
    assert flow.flags == []


def test_without_an_assigned_side_the_port_outside_the_dynamic_range_wins(
    table: PortTable,
) -> None:
    (flow,) = _flows(table, _eth(IP(src=C, dst=S) / UDP(sport=55555, dport=8806)))
    assert (flow.service_port, flow.method, flow.status) == (8806, "dynamic-range", "unassigned")


def test_two_dynamic_ports_fall_back_to_the_lower_and_are_flagged_dynamic(
    table: PortTable,
) -> None:
    (flow,) = _flows(table, _eth(IP(src=C, dst=S) / UDP(sport=61000, dport=50000)))
    assert (flow.service_port, flow.method, flow.status) == (50000, "lower-port", "dynamic")
    assert flow.flags == ["dynamic"]


def test_both_directions_meet_in_one_flow_with_per_direction_counts(
    table: PortTable,
) -> None:
    (flow,) = _flows(
        table,
        _eth(IP(src=C, dst=S) / UDP(sport=50001, dport=53) / Raw(b"q" * 10)),
        _eth(IP(src=S, dst=C) / UDP(sport=53, dport=50001) / Raw(b"r" * 30)),
        _eth(IP(src=C, dst=S) / UDP(sport=50001, dport=53) / Raw(b"q" * 10)),
    )
    assert (flow.packets, flow.packets_to_service, flow.packets_from_service) == (3, 2, 1)
    assert flow.bytes_from_service > flow.bytes_to_service / 2
    assert (flow.client, flow.server) == (C, S)


def test_flows_stay_apart_even_when_every_flow_key_hashes_alike(
    table: PortTable, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import numpy as np

    from portwatch.analysis import flows

    monkeypatch.setattr(flows, "_mix", np.zeros_like)  # every key collides
    got = _flows(
        table,
        _eth(IP(src=C, dst=S) / UDP(sport=50001, dport=53)),
        _eth(IP(src=C, dst=S) / UDP(sport=50002, dport=53)),
        _eth(IP(src=S, dst=C) / UDP(sport=53, dport=50001)),
        _eth(IP(src=C, dst=S) / TCP(sport=50001, dport=53, flags="A")),
    )
    assert sorted((f.transport, f.client_port, f.packets) for f in got) == [
        ("tcp", 50001, 1), ("udp", 50001, 2), ("udp", 50002, 1)]


def test_later_fragments_count_with_their_datagram_and_orphans_as_portless(
    table: PortTable,
) -> None:
    datagram = IP(src=C, dst=S, id=777) / UDP(sport=50002, dport=53) / Raw(b"x" * 64)
    frags = [_eth(f) for f in fragment(datagram, fragsize=24)]
    orphan = _eth(IP(src=C, dst=S, id=999, frag=3, proto=17) / Raw(b"y" * 8))
    analyzer = Analyzer(table)
    analyzer.feed(PacketBatch.from_packets([*frags, orphan], 1))
    report = analyzer.report()
    (flow,) = report.flows
    assert flow.packets == len(frags)
    assert report.decode == {"fragment": 1, "fragment-attributed": len(frags) - 1}
    assert report.packets == len(frags) + 1


def test_non_ip_and_icmp_are_counted_by_reason_never_dropped(table: PortTable) -> None:
    from scapy.layers.inet import ICMP
    from scapy.layers.l2 import ARP

    analyzer = Analyzer(table)
    tcp = _eth(IP(src=C, dst=S) / TCP(sport=1, dport=2))
    packets = [
        bytes(Ether(**MAC) / ARP()),
        _eth(IP(src=C, dst=S) / ICMP()),
        _eth(IP(src=C, dst=S, proto=47) / Raw(b"gre")),
        tcp[:30],  # cut by a 30-byte snapshot length: the wire had all of it
        tcp[:30],  # a 30-byte frame on the wire whose IP header claims more
    ]
    wirelens = [len(p) for p in packets]
    wirelens[3] = len(tcp)
    analyzer.feed(PacketBatch.from_packets(packets, 1, wirelens=wirelens))
    report = analyzer.report()
    assert report.decode == {"non-ip": 1, "icmp": 1, "other-ip": 1, "truncated": 1,
                             "malformed": 1}
    assert report.packets == 5
    assert report.flows == []


def _analyse(table: PortTable, path: Path) -> Analyzer:
    analyzer = Analyzer(table, capture=path.name)
    with read_capture_path(str(path)) as reader:
        try:
            for batch in reader:
                analyzer.feed(batch)
        except CaptureTruncatedError as exc:
            analyzer.note_damage(str(exc))
    return analyzer


def _truth() -> dict[str, dict[str, object]]:
    path = PCAPS / "truth.json"
    if not path.exists():
        pytest.skip("pcaps/truth.json is missing: run `make pcaps`")
    truth: dict[str, dict[str, object]] = json.loads(path.read_text())
    return truth


@pytest.mark.parametrize("name", sorted(json.loads((PCAPS / "truth.json").read_text()))
                         if (PCAPS / "truth.json").exists() else [])
def test_sample_capture_counts_per_service_port_equal_the_truth(
    table: PortTable, name: str
) -> None:
    truth = _truth()[name]
    report = _analyse(table, PCAPS / name).report()
    assert report.packets == truth["packets"]
    got = {f"{s.transport}/{s.port}": s.packets for s in report.services}
    assert got == truth["by_service"]
    in_no_flow = sum(n for reason, n in report.decode.items() if reason != "fragment-attributed")
    assert in_no_flow == truth["without_ports"]


def test_truncated_sample_keeps_what_came_before_the_damage(table: PortTable) -> None:
    truth = _truth()["truncated.pcap"]
    analyzer = _analyse(table, PCAPS / "truncated.pcap")
    assert analyzer.partial
    assert analyzer.packets == truth["packets"]
    assert f"byte {truth['truncated_at']}" in analyzer.warnings[0]
