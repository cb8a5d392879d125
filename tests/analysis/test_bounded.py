"""A bounded flow table: flows retire, the per-service totals stay exact, records stream."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.filters import parse_filters
from portwatch.analysis.flows import FlowLimits
from portwatch.analysis.report import FlowReport, Report
from portwatch.capture.batch import PacketBatch
from portwatch.capture.files.reader import read_capture_path
from portwatch.cli import main
from portwatch.cli.analyze import _shown
from portwatch.errors import CaptureTruncatedError
from portwatch.porttable.table import PortTable

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
C, S = "192.0.2.10", "198.51.100.20"
SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND


def _template(layer: object) -> np.ndarray:
    return np.frombuffer(bytes(Ether(**MAC) / layer), dtype=np.uint8)  # type: ignore[operator]


_SYN = _template(IP(src=C, dst=S) / TCP(sport=1, dport=1, flags="S"))
_SYNACK = _template(IP(src=S, dst=C) / TCP(sport=1, dport=1, flags="SA"))
_UDP = _template(IP(src=C, dst=S) / UDP(sport=1, dport=1) / Raw(b"x" * 20))
_PORTS = 34  # sport at 34, dport at 36 (Ethernet 14 + IPv4 20)


def _packets(template: np.ndarray, sports: Iterable[int], dports: Iterable[int]) -> list[bytes]:
    """Copies of ``template`` with these ports (IP checksum untouched: ports are not in it)."""
    sp = np.fromiter(sports, dtype=np.uint16)
    dp = np.fromiter(dports, dtype=np.uint16)
    rows = np.tile(template, (sp.size, 1))
    rows[:, _PORTS : _PORTS + 2] = sp.astype(">u2").view(np.uint8).reshape(-1, 2)
    rows[:, _PORTS + 2 : _PORTS + 4] = dp.astype(">u2").view(np.uint8).reshape(-1, 2)
    return [r.tobytes() for r in rows]


def _batches(packets: list[bytes], start_ns: int, step_ns: int,
             size: int = 512) -> list[PacketBatch]:
    return [PacketBatch.from_packets(packets[i : i + size], 1,
                                     timestamps_ns=[start_ns + (i + j) * step_ns
                                                    for j in range(len(packets[i : i + size]))])
            for i in range(0, len(packets), size)]


def _services(report: Report) -> dict[tuple[str, int], tuple[int, int, int]]:
    return {(s.transport, s.port): (s.packets, s.bytes, s.flows) for s in report.services}


def _feed(analyzer: Analyzer, batches: Iterable[PacketBatch]) -> Analyzer:
    for batch in batches:
        analyzer.feed(batch)
    return analyzer


def _two_phase_capture() -> list[PacketBatch]:
    """900 handshakes and 300 UDP flows; 1,000 s later, 900 other handshakes.

    The first phase's flows are idle past every timeout when the second begins.
    """
    ports = [80, 443, 22, 8807, 44515, 9100, 3868]
    first_sports = list(range(40000, 40900))
    first_dports = [ports[i % len(ports)] for i in range(900)]
    phase1 = (_packets(_SYN, first_sports, first_dports)
              + _packets(_SYNACK, first_dports, first_sports)
              + _packets(_UDP, range(50000, 50300), [53, 8806, 123] * 100))
    phase2 = (_packets(_SYN, range(41000, 41900), first_dports)
              + _packets(_SYNACK, first_dports, range(41000, 41900)))
    return (_batches(phase1, T0, 1000)
            + _batches(phase2, T0 + 1000 * SECOND, 1000))


def test_flows_idle_in_the_middle_keep_the_same_service_totals_as_without_retirement(
    table: PortTable,
) -> None:
    bounded = _feed(Analyzer(table, limits=FlowLimits(max_flows=1500)), _two_phase_capture())
    unbounded = _feed(Analyzer(table), _two_phase_capture())
    assert bounded.retired.flows >= 1200  # the first phase retired: it was idle
    assert bounded.retired.early == 0  # by its timeouts, not by the limit
    got, want = bounded.report(), unbounded.report()
    assert _services(got) == _services(want)
    assert got.flow_count == want.flow_count == 2100
    assert (got.packets, got.bytes) == (want.packets, want.bytes)
    # the same flagged flows in full, retired ones first
    assert sorted(json.dumps(f.as_dict()) for f in got.flagged) == \
        sorted(json.dumps(f.as_dict()) for f in want.flagged)
    assert got.warnings == []


def test_a_scan_keeps_the_live_rows_bounded_and_counts_every_flow(table: PortTable) -> None:
    limits = FlowLimits(max_flows=5000)
    analyzer = Analyzer(table, limits=limits, max_flagged=100)
    sports = np.arange(60000) % 20000 + 30000
    dports = np.arange(60000) // 20000 * 20000 + np.arange(60000) % 20000 + 1
    packets = _packets(_SYN, sports.tolist(), dports.tolist())
    most_live = 0
    for batch in _batches(packets, T0, 10_000, size=4096):  # 100k SYN/s: nothing goes idle
        analyzer.feed(batch)
        most_live = max(most_live, len(analyzer.flows))
    assert most_live <= limits.max_flows
    assert analyzer.flows.capacity <= 2 * (limits.max_flows + 4096)
    report = analyzer.report()
    assert report.flow_count == 60000
    assert sum(s.flows for s in report.services) == 60000
    assert sum(s.packets for s in report.services) == report.packets == 60000
    assert analyzer.retired.early == 60000 - len(analyzer.flows)
    flagged_total = sum(s.flows for s in report.services if s.flags)
    assert flagged_total > 100
    assert len(report.flows) == len(report.flagged) == 100
    assert any("finished before their idle timeout" in w for w in report.warnings)
    assert any(w.startswith(f"{flagged_total} flagged flows: the report lists the first 100")
               for w in report.warnings)
    assert report.as_dict()["flow_count"] == 60000
    counts = report.flagged_flow_counts()
    assert sum(counts[(s.transport, s.port, s.status, s.flags[0])]
               for s in report.services if s.flags) == flagged_total


def test_flagged_flow_counts_agree_bounded_or_not(table: PortTable) -> None:
    bounded = _feed(Analyzer(table, limits=FlowLimits(max_flows=1500), max_flagged=10),
                    _two_phase_capture()).report()
    whole = _feed(Analyzer(table), _two_phase_capture()).report()
    assert len(bounded.flagged) == 10
    assert bounded.flagged_flow_counts() == whole.flagged_flow_counts()
    assert sum(whole.flagged_flow_counts().values()) > 10


def test_records_stream_every_flow_once_with_exact_counters(table: PortTable) -> None:
    got: list[FlowReport] = []
    analyzer = Analyzer(table, limits=FlowLimits(max_flows=1500), records=got.extend)
    _feed(analyzer, _two_phase_capture())
    analyzer.finish()
    assert len(analyzer.flows) == 0
    assert len(got) == 2100
    assert sum(f.packets for f in got) == analyzer.packets
    assert len({(f.client_port, f.service_port, f.transport) for f in got}) == 2100
    whole = _feed(Analyzer(table), _two_phase_capture()).report()
    assert sorted(json.dumps(f.as_dict()) for f in got) == \
        sorted(json.dumps(f.as_dict()) for f in whole.flows)
    report = analyzer.report()
    assert report.flow_count == 2100
    assert report.warnings == []


def test_a_syn_ack_after_retirement_starts_a_new_flow_and_cannot_change_the_old_one(
    table: PortTable,
) -> None:
    analyzer = Analyzer(table, limits=FlowLimits(max_flows=1))
    mid_stream = _template(IP(src=C, dst=S) / TCP(sport=44515, dport=50000, flags="A"))
    other = _template(IP(src=C, dst=S) / TCP(sport=40001, dport=443, flags="S"))
    synack = _template(IP(src=S, dst=C) / TCP(sport=50000, dport=44515, flags="SA"))
    for i, pkt in enumerate((mid_stream, other, synack)):
        analyzer.feed(PacketBatch.from_packets([pkt.tobytes()], 1,
                                               timestamps_ns=[T0 + i * 400 * SECOND]))
    report = analyzer.report()
    assert report.flow_count == 3
    first = report.flagged[0]
    # decided when it retired (the side outside the dynamic range), not by the later SYN-ACK
    assert (first.method, first.service_port) == ("dynamic-range", 44515)
    late = {(s.transport, s.port): s.flows for s in report.services}
    assert late[("tcp", 50000)] == 1  # the SYN-ACK's own flow: its sender serves 50000


def test_fragments_are_not_attributed_to_a_row_reused_after_retirement(
    table: PortTable,
) -> None:
    analyzer = Analyzer(table, limits=FlowLimits(max_flows=1))
    frags = fragment(IP(src=C, dst=S, id=7) / UDP(sport=50001, dport=8806) / Raw(b"y" * 600),
                     fragsize=256)
    first, *rest = (bytes(Ether(**MAC) / f) for f in frags)  # type: ignore[operator]
    other = _template(IP(src=C, dst=S) / TCP(sport=40001, dport=443, flags="S")).tobytes()
    reuser = _template(IP(src=C, dst=S) / TCP(sport=40002, dport=80, flags="S")).tobytes()
    analyzer.feed(PacketBatch.from_packets([first], 1, timestamps_ns=[T0]))
    analyzer.feed(PacketBatch.from_packets([other], 1, timestamps_ns=[T0 + 100 * SECOND]))
    # the fragment's flow retired (idle); this flow takes its row
    analyzer.feed(PacketBatch.from_packets([reuser], 1, timestamps_ns=[T0 + 100 * SECOND + 1]))
    assert analyzer.flows.alive[0]  # reused (and ``other``, seen least recently, retired)
    analyzer.feed(PacketBatch.from_packets(rest, 1,
                                           timestamps_ns=[T0 + 101 * SECOND] * len(rest)))
    report = analyzer.report()
    services = _services(report)
    assert services[("udp", 8806)][0] == 1  # only the first fragment: its flow retired
    assert services[("tcp", 443)][0] == services[("tcp", 80)][0] == 1  # no fragment
    assert report.decode.get("fragment") == len(rest)


@pytest.mark.parametrize("name", sorted(p.name for p in PCAPS.glob("*.pcap*")))
def test_sample_captures_fit_and_are_reported_as_without_bounds(
    table: PortTable, name: str,
) -> None:
    def analysed(limits: FlowLimits | None) -> Report:
        analyzer = Analyzer(table, capture=name, limits=limits)
        reader = read_capture_path(str(PCAPS / name))
        try:
            for batch in reader:
                analyzer.feed(batch)
        except CaptureTruncatedError:  # truncated.pcap: what came before counts
            pass
        finally:
            reader.close()
        return analyzer.report()

    got = analysed(FlowLimits(max_flows=100))
    assert got.as_dict(include_flows=True) == analysed(None).as_dict(include_flows=True)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_cli_streamed_records_obey_filter_top_and_output_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, official_csv: Path, warm_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PORTWATCH_REGISTRY", str(official_csv))
    monkeypatch.setenv("PORTWATCH_CACHE_DIR", str(warm_cache))
    sample = str(PCAPS / "sample.pcapng")
    code, text = _cli(capsys, "analyze", "-f", "json", sample)
    doc = json.loads(text)
    code, jsonl = _cli(capsys, "analyze", "-f", "jsonl", "--top", "1", sample)
    rows = [json.loads(line) for line in jsonl.splitlines()]
    assert len([r for r in rows if r["flags"]]) == 1
    assert len(rows) == doc["flow_count"] - len(doc["flagged"]) + 1
    out = tmp_path / "flows.csv"
    code, _ = _cli(capsys, "analyze", "-f", "csv", "-o", str(out), "--filter",
                   "transport:udp", sample)
    lines = out.read_text().splitlines()
    assert code == 0
    assert lines[0].startswith("transport,client,")
    assert len(lines) - 1 == sum(s["flows"] for s in doc["services"] if s["transport"] == "udp")
    code, _ = _cli(capsys, "analyze", "-f", "csv", "-o", str(out), "--filter",
                   "port:1-2", sample)
    assert out.read_text().count("\n") == 1  # the header of no flow


def test_a_filtered_bounded_report_counts_the_flows_of_the_services_it_keeps(
    table: PortTable,
) -> None:
    report = _feed(Analyzer(table, limits=FlowLimits(max_flows=1500), max_flagged=10),
                   _two_phase_capture()).report()
    whole = _feed(Analyzer(table), _two_phase_capture()).report()
    for exprs in ([], ["transport:udp"], ["flagged"], ["port:1-1000"]):
        filters = parse_filters(exprs, table)
        want = _shown(whole, filters, None)
        got = _shown(report, filters, 2)
        assert got.as_dict()["flow_count"] == len(want.flows), exprs
