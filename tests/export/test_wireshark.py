"""The generated Wireshark plugin, run in the real tshark, agrees with the flow engine.

Expected values never come from the plugin's own code: they are computed by
``portwatch.analysis.flows.FlowTable`` over the same packets, decoded by
``portwatch.decode.native``, with the same ``PortTable``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from portwatch import __version__
from portwatch.analysis.flows import FlowTable
from portwatch.analysis.verdict import Verdict, flag_labels
from portwatch.capture.batch import PacketBatch
from portwatch.capture.files.reader import open_capture
from portwatch.cli import main
from portwatch.decode.native import DecodedBatch, decode_batch
from portwatch.errors import CaptureTruncatedError
from portwatch.export.wireshark import (
    PLUGIN_FILENAME,
    encode_numbers,
    plugin_bytes,
    plugin_data,
    render_plugin,
)
from portwatch.ports import PortFlag, PortStatus, Transport
from portwatch.porttable.cache import load_table
from portwatch.porttable.table import PortTable

REPO = Path(__file__).resolve().parents[2]
TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
# tshark says this on stderr whenever it runs as root; it is not the plugin's.
_ROOT_NOTICE = re.compile(r'^Running as user "root" and group "root"\. This could be dangerous\.$')
FIELDS = ("frame.number", "portwatch.service_port", "portwatch.status", "portwatch.service",
          "portwatch.flag", "portwatch.description", "portwatch.reason", "portwatch.summary")
#: Joins a field's occurrences in tshark's output (the reason sentences hold commas).
AGGREGATOR = "|"
#: Port, status, service, flags, description, reasons, summary (flags and reasons joined).
Row = tuple[str, str, str, str, str, str, str]
NO_ROW: Row = ("", "", "", "", "", "", "")


def _shown(description: str) -> str:
    """The plugin keeps descriptions on one line: control characters become spaces."""
    return re.sub(r"[\x00-\x1f\x7f]", " ", description)


# -- helpers -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def csv_table(official_csv: Path) -> PortTable:
    return load_table([str(official_csv)], cache=None).table


@pytest.fixture(scope="module")
def plugin(csv_table: PortTable, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path: Path = tmp_path_factory.mktemp("plugin") / PLUGIN_FILENAME
    path.write_bytes(plugin_bytes(csv_table))
    return path


def _tshark(plugin: Path, capture: Path, *args: str, two_pass: bool = False,
            check_stderr: bool = True) -> list[list[str]]:
    """Run tshark with only our plugin (HOME isolated from personal plugins)."""
    assert TSHARK is not None
    home = capture.parent / "home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    cmd = [TSHARK, "-n", "-X", f"lua_script:{plugin}", "-r", str(capture),
           "-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE"]
    if two_pass:  # without -R, tshark's first pass never reaches post-dissectors
        cmd += ["-2", "-R", "frame"]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, check=False)
    stderr = [line for line in proc.stderr.splitlines() if not _ROOT_NOTICE.match(line)]
    if check_stderr:
        assert stderr == [], "\n".join(stderr)
        assert proc.returncode == 0
    else:
        assert not any("lua" in line.lower() for line in stderr), "\n".join(stderr)
    return [line.split("\t") for line in proc.stdout.splitlines()]


def _fields(plugin: Path, capture: Path, **kw: bool) -> dict[int, Row]:
    """Per packet (numbered as portwatch's reader numbers them), the plugin's fields.

    tshark also shows pcapng Custom Blocks as frames; they have no
    encapsulation and are no packets.
    """
    args = ["-T", "fields", "-E", "occurrence=a", "-E", f"aggregator={AGGREGATOR}",
            "-e", "frame.encap_type"]
    for f in FIELDS[1:]:
        args += ["-e", f]
    rows = [r for r in _tshark(plugin, capture, *args, **kw) if r[0]]
    return {n: (r[1], r[2], r[3], r[4], r[5], r[6], r[7]) for n, r in enumerate(rows, start=1)}


def _frames(plugin: Path, capture: Path, display_filter: str) -> set[int]:
    rows = _tshark(plugin, capture, "-Y", display_filter, "-T", "fields", "-e", "frame.number")
    return {int(r[0]) for r in rows}


def _one_packet(d: DecodedBatch, i: int) -> DecodedBatch:
    return DecodedBatch(**{f.name: getattr(d, f.name)[i : i + 1]
                           for f in dataclasses.fields(d)})


def _expected(table: PortTable, batches: Sequence[PacketBatch], *,
              whole_capture: bool) -> dict[int, Row]:
    """Per frame, the flow engine's answer for the packet's flow.

    ``whole_capture``: decided once over every packet (what a second pass
    sees); otherwise after each packet, from the packets up to it (one pass).
    """
    flows = FlowTable()
    per_packet: list[int] = []
    decided: list[Row | None] = []

    def row(fid: int) -> Row:
        dec = flows.decide(table)
        port = int(dec.service_port[fid])
        t = Transport(int(flows.transport[fid]))
        verdict = dec.verdict(fid, table)
        return (str(port), PortStatus(int(dec.status[fid])).label,
                table.names[int(dec.service_id[fid])],
                AGGREGATOR.join(flag_labels(int(dec.flags[fid]))),
                _shown(table.lookup(t, port).description), AGGREGATOR.join(verdict.reasons()),
                verdict.summary())

    for batch in batches:
        decoded = decode_batch(batch)
        for i in range(len(decoded)):
            fid = int(flows.update(_one_packet(decoded, i), batch.timestamps_ns[i : i + 1])[0])
            per_packet.append(fid)
            decided.append(row(fid) if fid >= 0 and not whole_capture else None)
    out: dict[int, Row] = {}
    for n, fid in enumerate(per_packet, start=1):
        if fid < 0:
            out[n] = NO_ROW
        else:
            answer = row(fid) if whole_capture else decided[n - 1]
            assert answer is not None
            out[n] = answer
    return out


def _write_pcap(path: Path, packets: Sequence[bytes]) -> None:
    """Classic little-endian microsecond pcap, Ethernet, one packet a second."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, pkt in enumerate(packets):
        out.append(struct.pack("<IIII", 1_700_000_000 + i, 0, len(pkt), len(pkt)) + pkt)
    path.write_bytes(b"".join(out))


# -- the synthetic capture --------------------------------------------------------------------

def _dccp_request(sport: int, dport: int) -> bytes:
    """DCCP-Request (RFC 4340 5.1): scapy has no DCCP layer, so build the header."""
    header = sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    header += bytes([5, 0]) + b"\x00\x00"  # data offset 5 words, CCVal/CsCov, checksum
    header += bytes([(0 << 1) | 1, 0]) + (1).to_bytes(6, "big")  # type 0, X=1, seq
    header += b"\x00\x00\x00\x00"  # service code
    return header


def _synthetic_packets() -> list[bytes]:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.layers.sctp import SCTP, SCTPChunkInit
    from scapy.packet import Raw

    c, s = "192.0.2.10", "198.51.100.20"
    c6, s6 = "2001:db8::10", "2001:db8::20"

    def eth() -> Ether:
        return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")

    pkts = [
        # TCP handshake to 80, then data both ways
        eth() / IP(src=c, dst=s) / TCP(sport=40123, dport=80, flags="S", seq=1),
        eth() / IP(src=s, dst=c) / TCP(sport=80, dport=40123, flags="SA", seq=9, ack=2),
        eth() / IP(src=c, dst=s) / TCP(sport=40123, dport=80, flags="A", seq=2, ack=10),
        eth() / IP(src=c, dst=s) / TCP(sport=40123, dport=80, flags="PA", seq=2, ack=10)
        / Raw(b"GET / HTTP/1.0\r\n\r\n"),
        # mid-stream TCP between 44515 (unassigned, unauthorized use) and 51000 (dynamic)
        eth() / IP(src=c, dst=s) / TCP(sport=51000, dport=44515, flags="PA") / Raw(b"x"),
        eth() / IP(src=s, dst=c) / TCP(sport=44515, dport=51000, flags="A"),
        # DNS over UDP
        eth() / IP(src=c, dst=s) / UDP(sport=53000, dport=53) / Raw(b"\x00" * 12),
        eth() / IP(src=s, dst=c) / UDP(sport=53, dport=53000) / Raw(b"\x00" * 12),
        # UDP to an unassigned port
        eth() / IP(src=c, dst=s) / UDP(sport=50123, dport=8806) / Raw(b"u"),
        # reserved 8807/tcp; the client port 33000 is assigned, the handshake decides
        eth() / IP(src=c, dst=s) / TCP(sport=33000, dport=8807, flags="S"),
        eth() / IP(src=s, dst=c) / TCP(sport=8807, dport=33000, flags="SA"),
        # SCTP INIT to 2905 (m3ua)
        eth() / IP(src=c, dst=s) / SCTP(sport=40001, dport=2905) / SCTPChunkInit(),
        # DCCP Request to 5004
        eth() / IP(src=c, dst=s, proto=33) / Raw(_dccp_request(40002, 5004)),
        # between two dynamic ports
        eth() / IP(src=c, dst=s) / UDP(sport=60000, dport=50000) / Raw(b"d"),
        eth() / IP(src=s, dst=c) / UDP(sport=50000, dport=60000) / Raw(b"d"),
        # both ports assigned (ntp and domain): the lower port
        eth() / IP(src=c, dst=s) / UDP(sport=123, dport=53) / Raw(b"\x00" * 12),
        # capture started after the SYN: the SYN-ACK's source is the server
        eth() / IP(src=s, dst=c) / TCP(sport=9100, dport=40200, flags="SA"),
        eth() / IP(src=c, dst=s) / TCP(sport=40200, dport=9100, flags="A"),
        # a SYN-ACK from dynamic 60001 to 80: the handshake makes the dynamic port the service
        eth() / IP(src=s, dst=c) / TCP(sport=60001, dport=80, flags="SA"),
        # IPv6 handshake to 443
        eth() / IPv6(src=c6, dst=s6) / TCP(sport=40300, dport=443, flags="S"),
        eth() / IPv6(src=s6, dst=c6) / TCP(sport=443, dport=40300, flags="SA"),
        # an ICMP error quoting a TCP header is not a TCP packet
        eth() / IP(src=s, dst=c) / ICMP(type=3, code=3)
        / IP(src=c, dst=s) / TCP(sport=40400, dport=8806, flags="S"),
    ]
    return [bytes(p) for p in pkts]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PacketBatch]:
    pytest.importorskip("scapy")
    packets = _synthetic_packets()
    path = tmp_path_factory.mktemp("capture") / "synthetic.pcap"
    _write_pcap(path, packets)
    return path, PacketBatch.from_packets(packets, 1)


# -- agreement in tshark ----------------------------------------------------------------------

@needs_tshark
def test_plugin_agrees_with_flow_engine_packet_for_packet(
    plugin: Path, synthetic: tuple[Path, PacketBatch], csv_table: PortTable
) -> None:
    capture, batch = synthetic
    got = _fields(plugin, capture)
    assert got == _expected(csv_table, [batch], whole_capture=False)


@needs_tshark
def test_plugin_second_pass_agrees_with_whole_capture_decision(
    plugin: Path, synthetic: tuple[Path, PacketBatch], csv_table: PortTable
) -> None:
    capture, batch = synthetic
    got = _fields(plugin, capture, two_pass=True)
    assert got == _expected(csv_table, [batch], whole_capture=True)


@needs_tshark
def test_synthetic_capture_covers_every_transport_and_method(
    plugin: Path, synthetic: tuple[Path, PacketBatch]
) -> None:
    capture, _ = synthetic
    rows = _tshark(plugin, capture, "-T", "fields", "-e", "portwatch.transport",
                   "-e", "portwatch.method", "-e", "portwatch.status")
    assert {r[0] for r in rows if r[0]} == {"tcp", "udp", "sctp", "dccp"}
    assert {r[1] for r in rows if r[1]} == {"handshake", "registry", "dynamic-range",
                                            "lower-port"}
    assert {r[2] for r in rows if r[2]} == {"assigned", "reserved", "unassigned", "dynamic"}


@needs_tshark
def test_flag_filter_selects_exactly_the_flagged_packets(
    plugin: Path, synthetic: tuple[Path, PacketBatch], csv_table: PortTable
) -> None:
    capture, batch = synthetic
    expected = _expected(csv_table, [batch], whole_capture=False)
    flagged = {n for n, row in expected.items() if row[3]}
    assert flagged  # the capture has flagged packets to find
    assert _frames(plugin, capture, "portwatch.flag") == flagged
    assert _frames(plugin, capture, 'portwatch.status == "unassigned"') == {
        n for n, row in expected.items() if row[1] == "unassigned"}
    assert _frames(plugin, capture, 'portwatch.flag == "unauthorized-use"') == {
        n for n, row in expected.items() if "unauthorized-use" in row[3].split(AGGREGATOR)}


@needs_tshark
def test_expert_info_warns_on_flagged_ports_and_notes_dynamic_ones(
    plugin: Path, synthetic: tuple[Path, PacketBatch], csv_table: PortTable
) -> None:
    capture, batch = synthetic
    expected = _expected(csv_table, [batch], whole_capture=False)
    dynamic = {n for n, row in expected.items() if row[3] == "dynamic"}
    warned = {n for n, row in expected.items() if row[3] and row[3] != "dynamic"}
    assert dynamic
    assert warned
    assert _frames(plugin, capture, "portwatch.flagged") == warned
    assert _frames(plugin, capture, "portwatch.dynamic") == dynamic
    assert _frames(plugin, capture, "portwatch.flagged && _ws.expert.severity == 0x00600000"
                   ) == warned  # PI_WARN
    assert _frames(plugin, capture, "portwatch.dynamic && _ws.expert.severity == 0x00400000"
                   ) == dynamic  # PI_NOTE


@needs_tshark
def test_plugin_states_registry_date_and_version(
    plugin: Path, synthetic: tuple[Path, PacketBatch], csv_table: PortTable
) -> None:
    capture, _ = synthetic
    rows = _tshark(plugin, capture, "-T", "fields", "-e", "portwatch.registry_date",
                   "-e", "portwatch.version", "-Y", "portwatch")
    assert csv_table.last_updated is not None
    assert {tuple(r) for r in rows} == {(csv_table.last_updated.isoformat(), __version__)}


def _boundary_ports(table: PortTable, transport: Transport, rng: np.random.Generator
                    ) -> list[int]:
    """Both ends of every status change below 10000, plus random ports anywhere."""
    status = table.status[transport]
    change = np.flatnonzero(status[1:] != status[:-1])
    ends = {0, 65535, 49151, 49152} | set((change[change < 10000]).tolist())
    ends |= {p + 1 for p in ends if p < 65535}
    ends |= set(rng.integers(0, 65536, 300).tolist())
    return sorted(ends)


@needs_tshark
def test_plugin_lookups_match_the_table_at_run_boundaries(
    plugin: Path, csv_table: PortTable, tmp_path: Path
) -> None:
    """Same source and destination port: every method names that port."""
    pytest.importorskip("scapy")
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.sctp import SCTP
    from scapy.packet import Raw

    rng = np.random.default_rng(5)
    packets: list[bytes] = []
    wanted: list[tuple[Transport, int]] = []
    for transport in Transport:
        for port in _boundary_ports(csv_table, transport, rng):
            ip = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(
                src="192.0.2.1", dst="192.0.2.2")
            if transport is Transport.TCP:
                pkt = ip / TCP(sport=port, dport=port, flags="A")
            elif transport is Transport.UDP:
                pkt = ip / UDP(sport=port, dport=port)
            elif transport is Transport.SCTP:
                pkt = ip / SCTP(sport=port, dport=port)
            else:
                ip[IP].proto = 33
                pkt = ip / Raw(_dccp_request(port, port))
            packets.append(bytes(pkt))
            wanted.append((transport, port))
    capture = tmp_path / "boundaries.pcap"
    _write_pcap(capture, packets)
    got = _fields(plugin, capture)
    for n, (transport, port) in enumerate(wanted, start=1):
        info = csv_table.lookup(transport, port)
        flags = []
        if info.status.flagged or info.status is PortStatus.DYNAMIC:
            flags.append(info.status.label)
        if info.flags & PortFlag.UNAUTHORIZED_USE:
            flags.append("unauthorized-use")
        # every port is the service and the client port of its packet
        verdict = dataclasses.replace(Verdict.of_port(info, assigned_only=csv_table.assigned_only),
                                      client_port=port)
        want = (str(port), info.status.label, info.service, AGGREGATOR.join(flags),
                _shown(info.description), AGGREGATOR.join(verdict.reasons()), verdict.summary())
        assert got[n] == want, (transport.label, port)


def _capture_batches(path: Path) -> Iterator[PacketBatch]:
    with open_capture(path.read_bytes(), str(path)) as reader:
        try:
            yield from reader
        except CaptureTruncatedError:
            return


def _sample_captures() -> list[Path]:
    folder = REPO / "pcaps"
    found = sorted(p for p in folder.glob("*") if p.suffix in {".pcap", ".pcapng", ".gz"})
    return found


@needs_tshark
@pytest.mark.parametrize("two_pass", [False, True], ids=["one-pass", "two-pass"])
def test_plugin_agrees_with_flow_engine_on_sample_captures(
    plugin: Path, csv_table: PortTable, tmp_path: Path, two_pass: bool
) -> None:
    # detect.pcap carries payloads Wireshark recognises on foreign ports, which the
    # plugin flags (protocol-mismatch) and the engine without --detect cannot:
    # test_plugin_judges_wireshark_s_own_dissection_against_the_registry below.
    captures = [c for c in _sample_captures() if c.name != "detect.pcap"]
    if not captures:
        pytest.skip("pcaps/ holds no sample captures yet")
    for source in captures:
        capture = tmp_path / source.name
        shutil.copyfile(source, capture)
        batches = list(_capture_batches(capture))
        expected = _expected(csv_table, batches, whole_capture=two_pass)
        got = _fields(plugin, capture, two_pass=two_pass,
                      check_stderr=source.name != "truncated.pcap")
        assert got == expected, source.name


@needs_tshark
@pytest.mark.parametrize(("decode_as", "expected"), [
    # Wireshark dissects by port, with heuristics: TLS on unassigned 8806 is found by
    # them; SSH on 443 is "data" to it (nothing judged) until told to decode it
    ((), {"50001": ("", "unconfirmed"), "50003": ("tls", "mismatch"),
          "50004": ("dns", "confirmed"), "50005": ("tls", "confirmed"),
          "50006": ("ssh", "confirmed"), "50007": ("http", "confirmed"),
          "50008": ("", "unconfirmed"), "50009": ("", "unconfirmed")}),
    (("-d", "tcp.port==443,ssh"), {"50001": ("ssh", "mismatch")}),
])
def test_plugin_judges_wireshark_s_own_dissection_against_the_registry(
    plugin: Path, tmp_path: Path, decode_as: tuple[str, ...],
    expected: dict[str, tuple[str, str]],
) -> None:
    source = REPO / "pcaps" / "detect.pcap"
    if not source.exists():
        pytest.skip("pcaps/detect.pcap is missing: run `make pcaps`")
    capture = tmp_path / source.name
    shutil.copyfile(source, capture)
    rows = _tshark(plugin, capture, *decode_as, "-Y", "tcp.len > 0 || udp || tcp.flags.syn == 1",
                   "-T", "fields", "-e", "tcp.srcport", "-e", "udp.srcport",
                   "-e", "portwatch.detected", "-e", "portwatch.detection",
                   "-e", "portwatch.reason")
    got: dict[str, tuple[str, str]] = {}
    reasons: dict[str, str] = {}
    for tcp_port, udp_port, detected, detection, reason in rows:
        client = tcp_port or udp_port
        if client in expected and (client not in got or detection != "unconfirmed"):
            got[client] = (detected, detection)
            reasons[client] = reason
    assert got == expected
    if "50003" in expected:
        assert reasons["50003"].endswith("tcp/8806 (unassigned) carries tls")
    if decode_as:
        assert reasons["50001"] == "tcp/443 https (assigned) carries ssh"


# -- the generator and the CLI ----------------------------------------------------------------

def _decode_numbers(text: str) -> list[int]:
    """The documented number format, read independently of the encoder."""
    terminal = "0123456789ABCDEFGHIJKLMNOPQRSTUV"
    more = "WXYZabcdefghijklmnopqrstuvwxyz+/"
    out, acc = [], 0
    for ch in text:
        if ch in more:
            acc = acc * 32 + more.index(ch)
        else:
            out.append(acc * 32 + terminal.index(ch))
            acc = 0
    return out


def test_numbers_round_trip_through_the_documented_format() -> None:
    values = [0, 1, 31, 32, 1023, 1024, 65535, 65536, 2**40 + 7]
    assert _decode_numbers(encode_numbers(values)) == values


def test_encoding_refuses_negative_numbers() -> None:
    with pytest.raises(ValueError, match="negative"):
        encode_numbers([-1])


def test_runs_rebuild_every_slot_of_the_table(csv_table: PortTable) -> None:
    data = plugin_data(csv_table)
    for transport in Transport:
        runs = data.runs[transport]
        assert sum(length for length, _ in runs) == 65536
        answers = np.repeat([a for _, a in runs], [length for length, _ in runs])
        code = np.array([data.answers[a][0] for a in answers])
        assert np.array_equal(code // 2, csv_table.status[transport])
        unauthorized = (csv_table.flags[transport] & PortFlag.UNAUTHORIZED_USE) != 0
        assert np.array_equal(code % 2 == 1, unauthorized)
        names = [data.names[data.answers[a][1]] for a in answers[::97]]
        assert names == [csv_table.names[i] for i in csv_table.service_id[transport][::97]]


def test_port_data_takes_under_half_a_byte_per_slot(csv_table: PortTable) -> None:
    """What keeps the plugin small: 4 x 65,536 slots as runs of interned answers."""
    data = plugin_data(csv_table)
    runs = sum(len(encode_numbers(v for run in data.runs[t] for v in run)) for t in Transport)
    answers = len(encode_numbers(v for a in data.answers for v in a))
    assert runs + answers < 4 * 65536 // 2


def test_header_names_registry_date_sources_and_version(csv_table: PortTable) -> None:
    text = render_plugin(csv_table, version="9.8.7")
    assert csv_table.last_updated is not None
    head = text[: text.index("local ")]
    assert f"Registry last updated: {csv_table.last_updated.isoformat()}" in head
    assert "service-names-port-numbers.csv (iana-csv" in head
    assert "Generated by portwatch 9.8.7" in head
    assert "@" not in text.split("local TERMINAL")[0].replace("portwatch@", "")


def test_different_registries_give_different_plugins_with_their_dates(
    official_csv: Path, history_csv: Path, csv_table: PortTable
) -> None:
    old = load_table([str(history_csv)], cache=None).table
    assert old.last_updated is not None
    assert csv_table.last_updated is not None
    assert old.last_updated != csv_table.last_updated
    old_text, new_text = render_plugin(old), render_plugin(csv_table)
    assert old_text != new_text
    assert f'REGISTRY_DATE = "{old.last_updated.isoformat()}"' in old_text
    assert f'REGISTRY_DATE = "{csv_table.last_updated.isoformat()}"' in new_text


def test_cli_writes_the_plugin_for_the_loaded_registry(
    official_csv: Path, csv_table: PortTable, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plugins"
    code = main(["--registry", str(official_csv), "--no-cache", "export", "wireshark-plugin",
                 "--output", str(out)])
    assert code == 0
    assert (out / PLUGIN_FILENAME).read_bytes() == plugin_bytes(csv_table)
    assert str(out / PLUGIN_FILENAME) in capsys.readouterr().out
    assert [p.name for p in out.iterdir()] == [PLUGIN_FILENAME]  # no temp file left


def test_cli_regenerating_after_a_registry_change_updates_the_plugin(
    official_csv: Path, history_csv: Path, tmp_path: Path
) -> None:
    def export(registry: Path) -> str:
        assert main(["--registry", str(registry), "--no-cache", "export", "wireshark-plugin",
                     "-o", str(tmp_path)]) == 0
        text: str = (tmp_path / PLUGIN_FILENAME).read_text(encoding="utf-8")
        return text

    before = export(history_csv)
    after = export(official_csv)
    date_line = re.compile(r"^-- Registry last updated: (\S+)$", re.M)
    before_date, after_date = date_line.search(before), date_line.search(after)
    assert before_date is not None
    assert after_date is not None
    assert before_date[1] < after_date[1]


def test_cli_rejects_an_output_that_is_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    code = main(["--registry", str(tmp_path / "unused.csv"), "export", "wireshark-plugin",
                 "--output", str(target)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "is not a directory" in err


@needs_tshark
def test_plugin_gives_every_reason_in_the_reports_words(
    plugin: Path, synthetic: tuple[Path, PacketBatch], csv_table: PortTable
) -> None:
    """The synthetic capture reaches every sentence but unlisted; tshark shows each one."""
    capture, _ = synthetic
    shown = {reason for row in _fields(plugin, capture).values()
             for reason in row[5].split(AGGREGATOR) if reason}
    assert shown == {
        "tcp/44515 is unassigned in the IANA registry",
        "unauthorized use reported on tcp/44515: Known UNAUTHORIZED USE: Ports 44515 & 44516",
        "udp/8806 is unassigned in the IANA registry",
        "tcp/8807 is reserved in the IANA registry",
        "both ports of the flow are in the dynamic range 49152-65535 (udp/50000)",
        "tcp/60001 is in the dynamic range 49152-65535",
    }
    messages = {m for r in _tshark(plugin, capture, "-Y", "portwatch.flagged", "-T", "fields",
                                   "-E", f"aggregator={AGGREGATOR}", "-e", "_ws.expert.message")
                for m in r[0].split(AGGREGATOR)}
    assert "FLAG tcp/8807 (reserved): tcp/8807 is reserved in the IANA registry" in messages


def test_plugin_says_unlisted_as_the_report_does_for_assigned_only_sources(
    tmp_path: Path,
) -> None:
    services = tmp_path / "services"
    services.write_text("ssh\t\t22/tcp\nhttp\t\t80/tcp\t\twww\n")
    table = load_table([str(services)], cache=None).table
    assert table.assigned_only
    text = render_plugin(table)
    assert '" is not listed by the loaded registry sources (they list assigned ports only)"' in text
