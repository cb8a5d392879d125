"""The daemon's metrics core: counting rules, label caps, bounded flows, exposition."""

from __future__ import annotations

import resource
import struct
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from portwatch.capture.batch import PacketBatch
from portwatch.daemon.collector import register_collectors
from portwatch.daemon.counters import OTHER_PORT, FlowLimits, RegistryFacts, TrafficCounters
from portwatch.ports import Transport
from portwatch.porttable.cache import load_table

ETH = 1
MAC = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"


def ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    total = 20 + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, proto, 0,
                      bytes(int(x) for x in src.split(".")), bytes(int(x) for x in dst.split(".")))
    return MAC + b"\x08\x00" + hdr + payload


def udp(src: str, sport: int, dst: str, dport: int, body: bytes = b"x") -> bytes:
    return ipv4(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body)


def tcp(src: str, sport: int, dst: str, dport: int, flags: int = 0x18) -> bytes:
    return ipv4(src, dst, 6, struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags,
                                         1024, 0, 0))


def batch(packets: list[bytes], t0_ns: int = 1_700_000_000 * 10**9) -> PacketBatch:
    return PacketBatch.from_packets(packets, ETH,
                              timestamps_ns=[t0_ns + i for i in range(len(packets))])


@pytest.fixture(scope="module")
def loaded(official_csv: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_table([str(official_csv)], cache=tmp_path_factory.mktemp("cache"))


def core_for(loaded, **limits: int) -> TrafficCounters:  # type: ignore[no-untyped-def]
    facts = RegistryFacts.of(loaded.table, loaded.full_registry())
    return TrafficCounters(loaded.table, FlowLimits(**limits), facts)  # type: ignore[arg-type]


def test_packets_bytes_and_flows_are_counted_by_service(loaded) -> None:  # type: ignore[no-untyped-def]
    core = core_for(loaded)
    pkts = [tcp("10.0.0.2", 50000, "10.0.0.1", 80, 0x02),
            tcp("10.0.0.1", 80, "10.0.0.2", 50000, 0x12),
            tcp("10.0.0.2", 50000, "10.0.0.1", 80), udp("10.0.0.2", 50001, "10.0.0.1", 53)]
    core.feed(batch(pkts))
    snap = core.snapshot()
    assert snap.traffic[("tcp", "http", "assigned")][0] == 3
    assert snap.traffic[("tcp", "http", "assigned")][2] == 1
    assert snap.traffic[("udp", "domain", "assigned")] == (1, len(pkts[3]), 1)
    assert snap.received == {"0": 4}
    core.feed(batch([tcp("10.0.0.2", 50000, "10.0.0.1", 80)]))
    again = core.snapshot().traffic[("tcp", "http", "assigned")]
    assert again[0] == 4
    assert again[2] == 1


def test_flagged_port_label_is_the_service_port_never_the_client_port(loaded) -> None:  # type: ignore[no-untyped-def]
    core = core_for(loaded)
    core.feed(batch([tcp("10.0.0.2", 51234, "10.0.0.1", 8807, 0x02),
                     udp("10.0.0.2", 52345, "10.0.0.1", 44515)]))
    keys = set(core.snapshot().flagged)
    assert ("tcp", "8807", "reserved", "reserved") in keys
    assert ("udp", "44515", "unassigned", "unassigned") in keys
    assert ("udp", "44515", "unassigned", "unauthorized-use") in keys
    assert not any(k[1] in {"51234", "52345"} for k in keys)


def test_five_thousand_unassigned_ports_fold_into_other_beyond_the_cap(loaded) -> None:  # type: ignore[no-untyped-def]
    table = loaded.table
    tcp_status = table.status[Transport.TCP]
    unassigned = [p for p in range(1024, 49152) if tcp_status[p] == 3][:5000]
    assert len(unassigned) == 5000
    core = core_for(loaded, max_flagged_ports=25)
    pkts = [tcp("10.0.0.2", 60000, "10.0.0.1", p, 0x02) for p in unassigned]
    for i in range(0, len(pkts), 1000):
        core.feed(batch(pkts[i : i + 1000]))
    snap = core.snapshot()
    ports = {k[1] for k in snap.flagged}
    assert len(ports) == 26
    assert OTHER_PORT in ports
    assert sum(v[0] for k, v in snap.flagged.items() if k[3] == "unassigned") == 5000
    registry = CollectorRegistry()
    register_collectors(registry, core.snapshot, process=False)
    text = generate_latest(registry).decode()
    exposed = {s.labels["port"] for fam in text_string_to_metric_families(text)
               if fam.name == "portwatch_flagged_packets" for s in fam.samples}
    assert len(exposed) <= 26


def test_flow_table_stays_at_the_limit_and_counts_evictions(loaded) -> None:  # type: ignore[no-untyped-def]
    core = core_for(loaded, max_flows=1000)
    for i in range(10):
        core.feed(batch([udp("10.0.0.2", 1024 + j, "10.1.0.1", 53) for j in
                         range(i * 1000, i * 1000 + 1000)]))
    snap = core.snapshot()
    assert snap.active_flows == 1000
    assert snap.evictions == 9000
    assert snap.traffic[("udp", "domain", "assigned")][2] == 10000


def test_a_flood_of_a_million_new_flows_keeps_memory_flat(loaded) -> None:  # type: ignore[no-untyped-def]
    core = core_for(loaded, max_flows=20_000)
    per_batch = 50_000
    rng = np.random.default_rng(1)
    template = np.frombuffer(udp("10.0.0.2", 1, "10.1.0.1", 9), dtype=np.uint8)
    n = len(template)

    def flood(k: int) -> PacketBatch:
        data = np.tile(template, per_batch).reshape(per_batch, n)
        src = rng.integers(0, 2**32, per_batch, dtype=np.uint64).astype(">u4")
        data[:, 26:30] = src.view(np.uint8).reshape(-1, 4)
        return PacketBatch(
            data=data.reshape(-1), offsets=np.arange(per_batch, dtype=np.int64) * n,
            caplens=np.full(per_batch, n, np.uint32), wirelens=np.full(per_batch, n, np.uint32),
            timestamps_ns=np.full(per_batch, k, np.int64),
            linktypes=np.full(per_batch, ETH, np.uint16),
            interfaces=np.zeros(per_batch, np.uint32), file_offsets=np.zeros(per_batch, np.int64))

    capacities, rss = [], []
    for k in range(20):  # 1,000,000 packets, each a new flow
        core.feed(flood(k))
        capacities.append(core.analyzer.flows.capacity)
        rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    snap = core.snapshot()
    assert snap.active_flows == 20_000
    assert snap.evictions >= 1_000_000 - 20_000 - 50  # random sources may repeat
    assert capacities[-1] == capacities[4]  # the table stopped growing early
    assert rss[-1] - rss[4] < 64 * 1024  # KiB: no growth beyond allocator noise


def _families(core: TrafficCounters) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    registry = CollectorRegistry()
    register_collectors(registry, core.snapshot, process=False)
    text = generate_latest(registry).decode()
    return {fam.name: {tuple(sorted(s.labels.items())): s.value for s in fam.samples
                       if not s.name.endswith("_created")}
            for fam in text_string_to_metric_families(text)}


def test_packets_without_ports_are_portless_not_decode_errors(loaded) -> None:  # type: ignore[no-untyped-def]
    core = core_for(loaded)
    icmp = ipv4("10.0.0.2", "10.0.0.1", 1, b"\x08\x00\x00\x00\x00\x01\x00\x01")
    arp = MAC + b"\x08\x06" + bytes(28)
    gre = ipv4("10.0.0.2", "10.0.0.1", 47, bytes(8))
    # a later fragment (offset 8 x 8 bytes) whose first fragment was never seen
    orphan = bytearray(udp("10.0.0.2", 5000, "10.0.0.1", 53))
    orphan[20:22] = struct.pack("!H", 8)
    cut = tcp("10.0.0.2", 50000, "10.0.0.1", 80)[:40]  # the snapshot length cut the TCP header
    pkts = [icmp, icmp, arp, gre, bytes(orphan), cut]
    core.feed(PacketBatch.from_packets(pkts, ETH, timestamps_ns=list(range(len(pkts))),
                                       wirelens=[len(p) for p in pkts[:-1]] + [54]))
    snap = core.snapshot()
    assert snap.portless == {"icmp": 2, "non-ip": 1, "fragment": 1, "other-ip": 1}
    assert snap.decode_errors == {"truncated": 1, "unsupported-link": 0, "malformed": 0}
    fams = _families(core)
    assert fams["portwatch_portless_packets"] == {
        (("reason", "fragment"),): 1.0, (("reason", "icmp"),): 2.0,
        (("reason", "non-ip"),): 1.0, (("reason", "other-ip"),): 1.0}
    assert fams["portwatch_decode_errors"] == {
        (("reason", "malformed"),): 0.0, (("reason", "truncated"),): 1.0,
        (("reason", "unsupported-link"),): 0.0}


def test_registry_records_are_exposed_by_kind_and_transport(loaded) -> None:  # type: ignore[no-untyped-def]
    core = core_for(loaded)
    facts = core.registry_facts
    records = _families(core)["portwatch_registry_records"]
    transports = {dict(k)["transport"] for k in records}
    assert {"tcp", "udp", "sctp", "dccp"} <= transports
    for kind, total in facts.records.items():
        assert sum(v for k, v in records.items() if dict(k)["kind"] == kind) == total
    assert records[(("kind", "assigned"), ("transport", "tcp"))] > 5000
    assert records[(("kind", "assigned"), ("transport", "dccp"))] > 0


def test_registry_facts_without_transports_fall_back_to_an_empty_transport(loaded) -> None:  # type: ignore[no-untyped-def]
    core = core_for(loaded)
    core.registry_facts = RegistryFacts({"assigned": 3}, None, ())
    assert _families(core)["portwatch_registry_records"] == {
        (("kind", "assigned"), ("transport", "")): 3.0}


def test_a_tunnelled_packet_counts_in_its_inner_and_its_outer_flow(official_csv: Path) -> None:
    """As `analyze` counts it: the VXLAN packet adds to udp/4789 and to the inner flow."""
    from portwatch.capture.files.reader import read_capture_path

    capture = Path(__file__).resolve().parents[2] / "pcaps" / "tunnels" / "tunnel-vxlan.pcap"
    if not capture.exists():
        pytest.skip("pcaps/tunnels/tunnel-vxlan.pcap is missing: run `make pcaps`")
    table = load_table([str(official_csv)], cache=None).table
    counters = TrafficCounters(table, FlowLimits(), RegistryFacts.of(table, None))
    with read_capture_path(str(capture)) as reader:
        for batch in reader:
            counters.feed(batch)
    traffic = counters.snapshot().traffic
    outer = sum(v[0] for (t, svc, _), v in traffic.items() if t == "udp" and svc == "vxlan")
    total = sum(v[0] for v in traffic.values())
    assert outer > 0
    assert total > outer  # the inner flows are counted as well
