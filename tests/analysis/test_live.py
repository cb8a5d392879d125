"""The live summary: rates over a sliding window on the caller's clock, flagged ports."""

from __future__ import annotations

import struct

import pytest

from portwatch.analysis.flows import FlowLimits
from portwatch.analysis.live import LiveSummary
from portwatch.capture.batch import PacketBatch
from portwatch.ports import PortStatus, Transport
from portwatch.porttable.table import PortTable
from portwatch.testing import EPOCH_NS, FakeClock

MAC = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"


def _ipv4(proto: int, payload: bytes, src: int = 1) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                      bytes([10, 0, 0, src]), bytes([10, 0, 0, 200]))
    return MAC + b"\x08\x00" + hdr + payload


def udp(sport: int, dport: int, body: bytes = b"x", src: int = 1) -> bytes:
    return _ipv4(17, struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body, src)


def tcp_syn(sport: int, dport: int) -> bytes:
    return _ipv4(6, struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x02, 1024, 0, 0))


def arp() -> bytes:
    return MAC + b"\x08\x06" + bytes(28)


def batch(packets: list[bytes], t_ns: int = EPOCH_NS) -> PacketBatch:
    return PacketBatch.from_packets(packets, 1,
                                    timestamps_ns=[t_ns + i for i in range(len(packets))])


def test_rates_are_packets_and_bytes_per_second_over_the_window(table: PortTable) -> None:
    clock = FakeClock()
    live = LiveSummary(table, window_s=10.0, start=clock.monotonic())
    dns = udp(50000, 53)
    for _ in range(10):
        live.feed(batch([dns] * 5), clock.monotonic())
        clock.advance(1.0)
    snap = live.snapshot(clock.monotonic())
    (row,) = snap.services
    assert (row.transport, row.port, row.service, row.status) == (
        Transport.UDP, 53, "domain", PortStatus.ASSIGNED)
    assert row.packets_per_s == pytest.approx(5.0)
    assert row.bytes_per_s == pytest.approx(5.0 * len(dns))
    assert (row.packets, row.flows, row.flagged) == (50, 1, False)
    assert snap.packets_per_s == pytest.approx(5.0)


def test_rates_fall_to_zero_once_traffic_stops_but_totals_stay(table: PortTable) -> None:
    clock = FakeClock()
    live = LiveSummary(table, window_s=5.0)
    live.feed(batch([udp(50000, 53)] * 20), clock.monotonic())
    clock.advance(6.0)
    snap = live.snapshot(clock.monotonic())
    assert snap.services[0].packets_per_s == 0.0
    assert snap.services[0].packets == 20
    assert snap.packets == 20


def test_at_the_start_rates_are_over_the_time_elapsed_not_the_whole_window(
    table: PortTable,
) -> None:
    clock = FakeClock()
    live = LiveSummary(table, window_s=10.0)
    live.feed(batch([udp(50000, 53)] * 4), 0.0)
    clock.advance(2.0)
    snap = live.snapshot(clock.monotonic())
    assert snap.window_s == 2.0
    assert snap.services[0].packets_per_s == pytest.approx(2.0)


def test_services_are_ordered_busiest_first(table: PortTable) -> None:
    live = LiveSummary(table)
    live.feed(batch([udp(50000, 53)] * 2 + [tcp_syn(50001, 443)] * 7), 0.0)
    snap = live.snapshot(1.0)
    assert [r.label for r in snap.services] == ["tcp/443", "udp/53"]


def test_flagged_ports_carry_why_and_when_last_seen(table: PortTable) -> None:
    live = LiveSummary(table)
    live.feed(batch([udp(50000, 8806)]), 0.0)
    live.feed(batch([udp(50000, 53)]), 3.0)
    snap = live.snapshot(4.0)
    (flag,) = snap.flagged
    assert (flag.label, flag.status) == ("udp/8806", PortStatus.UNASSIGNED)
    assert "unassigned" in flag.why
    assert flag.last_seen_s == pytest.approx(4.0)
    assert [r.flagged for r in snap.services if r.label == "udp/8806"] == [True]


def test_packets_without_ports_count_in_totals_and_by_reason(table: PortTable) -> None:
    live = LiveSummary(table)
    live.feed(batch([arp(), arp(), udp(50000, 53)]), 0.0)
    snap = live.snapshot(1.0)
    assert snap.packets == 3
    assert snap.portless == {"non-ip": 2}
    assert [r.packets for r in snap.services] == [1]


def test_flows_are_bounded_like_the_daemons(table: PortTable) -> None:
    live = LiveSummary(table, limits=FlowLimits(max_flows=10))
    live.feed(batch([udp(50000 + i, 53, src=1 + i % 200) for i in range(100)]), 0.0)
    snap = live.snapshot(1.0)
    assert snap.services[0].packets == 100
    assert snap.services[0].flows <= 10


def test_window_must_be_positive(table: PortTable) -> None:
    with pytest.raises(ValueError, match="positive"):
        LiveSummary(table, window_s=0)
