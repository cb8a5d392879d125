"""The eBPF backend: the program loads, and the kernel counts what user space would.

Root only (loading BPF needs CAP_BPF); skipped with the reason elsewhere, and
when the program does not load here (the reason is the loader's one line).
Frames are sent inside a network namespace the test creates, over a veth pair
whose two ends both live in it, with IPv6 off so the kernel itself sends
nothing. The differential check feeds the same frames to the user-space path
(``TrafficCounters.feed``) and compares every traffic, flagged and
decode-error series.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.netns import Netns
from portwatch.analysis.flows import FlowLimits
from portwatch.capture.batch import PacketBatch
from portwatch.daemon import ebpf
from portwatch.daemon._libbpf import LibbpfError
from portwatch.daemon.config import Backend, CaptureConfig, DaemonConfig, parse_config
from portwatch.daemon.counters import RegistryFacts, TrafficCounters
from portwatch.daemon.supervisor import make_source
from portwatch.errors import BackendError
from portwatch.ports import PortStatus, Transport
from portwatch.porttable.table import PortTable

NS = f"pwebpf{os.getpid()}"
TX, RX = "pwe0", "pwe1"


def _loadable() -> None:
    if os.geteuid() != 0:
        pytest.skip("loading a BPF program needs root (CAP_BPF)")
    try:
        ebpf.KernelCounter(FlowLimits(max_flows=16)).close()
    except BackendError as exc:
        pytest.skip(f"the program does not load here: {exc}")


@pytest.fixture
def netns() -> Iterator[Netns]:
    _loadable()
    ns = Netns(NS, TX, RX).create()
    try:
        yield ns
    finally:
        ns.delete()


def _send(frames: list[bytes]) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        s.bind((TX, 0))
        for frame in frames:
            s.send(frame)
    finally:
        s.close()


def _wait_received(counter: ebpf.KernelCounter, counts: list[ebpf.KernelCounts],
                   expected: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        counts.append(counter.read())
        if sum(c.packets_total for c in counts) >= expected:
            return
        time.sleep(0.05)


def _frames() -> list[bytes]:
    """Every layer the program parses, both directions of a few flows."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
    from scapy.layers.inet6 import (
        IPv6,
        IPv6ExtHdrDestOpt,
        IPv6ExtHdrFragment,
        IPv6ExtHdrHopByHop,
    )
    from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
    from scapy.layers.sctp import SCTP

    cli, srv = "00:00:5e:00:53:01", "00:00:5e:00:53:02"
    up = Ether(src=cli, dst=srv)
    down = Ether(src=srv, dst=cli)
    a, b = "192.0.2.1", "192.0.2.2"
    a6, b6 = "2001:db8::1", "2001:db8::2"
    out = [
        # TCP handshake to a port in the dynamic range: the SYN decides the service
        up / IP(src=a, dst=b) / TCP(sport=40000, dport=50505, flags="S"),
        down / IP(src=b, dst=a) / TCP(sport=50505, dport=40000, flags="SA"),
        up / IP(src=a, dst=b) / TCP(sport=40000, dport=50505, flags="A") / (b"x" * 100),
        # UDP DNS, both ways, the client port dynamic
        up / IP(src=a, dst=b) / UDP(sport=50000, dport=53) / (b"q" * 30),
        down / IP(src=b, dst=a) / UDP(sport=53, dport=50000) / (b"r" * 90),
        # tagged and double-tagged frames; an IPv4 header with options
        up / Dot1Q(vlan=10) / IP(src=a, dst=b) / UDP(sport=40001, dport=123) / b"t",
        up / Dot1AD(vlan=20) / Dot1Q(vlan=30) / IP(src=a, dst=b) / UDP(sport=40002, dport=8807),
        up / IP(src=a, dst=b, options=[IPOption_NOP()] * 4) / TCP(sport=40003, dport=4),
        # IPv6 with extension headers, and a fragmented datagram
        up / IPv6(src=a6, dst=b6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
        / UDP(sport=40004, dport=1023) / b"six",
        up / IPv6(src=a6, dst=b6) / IPv6ExtHdrFragment(id=7, m=1, offset=0)
        / UDP(sport=40005, dport=514, len=40) / (b"f" * 16),
        up / IPv6(src=a6, dst=b6) / IPv6ExtHdrFragment(id=7, nh=17, m=0, offset=3)
        / (b"g" * 16),
        # IPv4 fragments: the first carries ports, the next is attributed to it
        up / IP(src=a, dst=b, id=99, flags="MF", frag=0, proto=17) / (
            bytes(UDP(sport=40006, dport=69, len=48)) + b"h" * 16),
        up / IP(src=a, dst=b, id=99, flags=0, frag=3, proto=17) / (b"i" * 24),
        # a later fragment of a datagram never seen: a portless fragment
        up / IP(src=a, dst=b, id=100, frag=5, proto=17) / (b"j" * 8),
        up / IP(src=a, dst=b) / SCTP(sport=40007, dport=9899),
        up / IP(src=a, dst=b, proto=33) / bytes.fromhex("9c4a0d02" + "00" * 12),  # DCCP
        up / IP(src=a, dst=b) / ICMP(),
        Ether(src=cli, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=a, pdst=b),
        up / IP(src=a, dst=b, proto=47) / b"gre",
    ]
    # a few hundred short UDP flows to unassigned and reserved ports (the flagged series)
    out += [up / IP(src=a, dst=b) / UDP(sport=41000 + i, dport=port)
            for i, port in enumerate([4, 8, 1023, 44515, 60000, 60001] * 5)]
    return [bytes(f) for f in out]


def _user_space(table: PortTable, frames: list[bytes]) -> TrafficCounters:
    counters = TrafficCounters(table, FlowLimits(), RegistryFacts.of(table, None))
    now = time.time_ns()
    batch = PacketBatch.from_packets(frames, 1, timestamps_ns=[now + i for i in range(len(frames))],
                                     wirelens=[len(f) for f in frames])
    counters.feed(batch, [RX])
    return counters


# -- tests that need no privilege ----------------------------------------------------
def test_missing_object_is_a_one_line_backend_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"portwatch\.bpf\.o is missing .*make bpf"):
        ebpf.KernelCounter(FlowLimits(), object_path=tmp_path / "portwatch.bpf.o")


def test_load_error_names_the_verifier_line_and_the_capabilities() -> None:
    log = ("libbpf: prog 'portwatch_count': BPF program load failed: Permission denied\n"
           "libbpf: prog 'portwatch_count': -- BEGIN PROG LOAD LOG --\n"
           "0: (bf) r6 = r1\n"
           "1: (61) r2 = *(u32 *)(r7 +0)\n"
           "R7 invalid mem access 'scalar'\n"
           "processed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0\n"
           "-- END PROG LOAD LOG --\n"
           "libbpf: prog 'portwatch_count': failed to load: -13\n"
           "libbpf: failed to load object 'portwatch.bpf.o'\n")
    line = ebpf.load_error(LibbpfError(13, "loading portwatch.bpf.o", log))
    assert "\n" not in line
    assert line.startswith("eBPF backend unavailable: loading portwatch.bpf.o")
    assert "CAP_BPF" in line
    assert line.endswith("; libbpf: R7 invalid mem access 'scalar'")


def test_registry_array_holds_each_transports_status(table: PortTable) -> None:
    arr = ebpf.registry_array(table)
    assert arr.shape == (4 * 65536,)
    for t, port in ((0, 80), (1, 53), (0, 8807), (1, 44515), (0, 60000)):
        assert arr[t * 65536 + port] == table.lookup(Transport(t), port).status


def test_the_object_is_shipped_beside_its_source() -> None:
    src = ebpf.OBJECT_PATH.with_name("portwatch.bpf.c")
    assert ebpf.OBJECT_PATH.is_file(), "run `make bpf`"
    assert ebpf.OBJECT_PATH.read_bytes()[:4] == b"\x7fELF"
    assert b"portwatch_count" in ebpf.OBJECT_PATH.read_bytes()
    assert b"portwatch_count" in src.read_bytes()


def test_unit_with_the_ebpf_drop_in_keeps_exposure_at_most_3(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    systemd = Path(__file__).resolve().parents[2] / "systemd"
    drop_in = (systemd / "portwatch-ebpf.conf").read_text()
    granted = [ln for ln in drop_in.splitlines()
               if ln.startswith(("CapabilityBoundingSet=", "AmbientCapabilities="))]
    assert granted[-1] == "AmbientCapabilities=CAP_BPF CAP_NET_RAW"
    assert granted[-3] == "CapabilityBoundingSet=CAP_BPF CAP_NET_RAW"
    # a drop-in applies as if appended to the unit: repeated sections are allowed
    merged = tmp_path / "portwatch.service"
    merged.write_text((systemd / "portwatch.service").read_text() + "\n" + drop_in)
    result = subprocess.run([tool, "security", "--offline=true", "--no-pager", str(merged)],
                            capture_output=True, text=True, timeout=120, check=False,
                            env=dict(os.environ, SYSTEMD_COLORS="0"))
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    if m is None:
        pytest.skip(f"systemd-analyze security --offline does not work here: {result.stderr}")
    assert float(m.group(1)) <= 3.0, result.stdout
    assert re.search(r"✓ CapabilityBoundingSet=~CAP_NET_ADMIN", result.stdout)


# -- root ------------------------------------------------------------------------------
@pytest.mark.root
def test_program_passes_the_verifier_and_sizes_the_flow_map() -> None:
    _loadable()
    counter = ebpf.KernelCounter(FlowLimits(max_flows=1234))
    try:
        assert counter.maps["flows"].max_entries == 1234
        assert counter.maps["traffic"].max_entries == 4 * 65536
        assert counter.program_fd > 0
    finally:
        counter.close()


@pytest.mark.root
def test_kernel_counts_equal_user_space_counts(netns: Netns, table: PortTable) -> None:
    pytest.importorskip("scapy")
    frames = _frames()
    counter = ebpf.KernelCounter(FlowLimits())
    counts: list[ebpf.KernelCounts] = []
    try:
        counter.set_registry(table)
        netns.call(lambda: counter.attach([RX]))
        netns.call(lambda: _send(frames))
        _wait_received(counter, counts, len(frames))
        assert counter.attached() == [RX]
    finally:
        counter.close()
    kernel = TrafficCounters(table, FlowLimits(), RegistryFacts.of(table, None))
    for c in counts:
        kernel.add_kernel_counts(c)
    got, want = kernel.snapshot(), _user_space(table, frames).snapshot()
    assert len(want.traffic) >= 8
    assert len(want.flagged) >= 5
    assert got.received == {RX: len(frames)}
    assert got.traffic == want.traffic
    assert got.flagged == want.flagged
    assert got.decode_errors == want.decode_errors
    assert got.portless == want.portless
    assert got.active_flows == want.active_flows
    # and the cases that prove the parser went where it should
    assert got.traffic[("tcp", "", "dynamic")] == (3, sum(len(f) for f in frames[:3]), 1)
    assert got.portless["fragment"] == 1  # only the datagram whose first was never seen


@pytest.mark.root
def test_flood_keeps_the_lru_at_its_size_and_counts_evictions(netns: Netns,
                                                              table: PortTable) -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    template = bytes(Ether(src="00:00:5e:00:53:01", dst="00:00:5e:00:53:02")
                     / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1, dport=9))
    frames = [template[:34] + i.to_bytes(2, "big") + template[36:] for i in range(1024, 3024)]
    counter = ebpf.KernelCounter(FlowLimits(max_flows=256))
    counts: list[ebpf.KernelCounts] = []
    try:
        counter.set_registry(table)
        netns.call(lambda: counter.attach([RX]))
        netns.call(lambda: _send(frames))
        _wait_received(counter, counts, len(frames))
    finally:
        counter.close()
    new = sum(c.new_flows for c in counts)
    active = counts[-1].active_flows
    assert new == 2000
    assert active <= 256
    assert sum(c.evictions for c in counts) == new - active
    assert sum(int(c.flows.sum()) for c in counts) == 2000  # every flow counted once


@pytest.mark.root
def test_registry_refresh_changes_decisions_not_counts(netns: Netns, table: PortTable) -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    # Two client ports the registry does not assign, above the reserved 1023: no
    # registry rule, so the lower port (1023) is the service; mark the second
    # assigned in the kernel's array and the registry rule picks it instead.
    c1, c2 = [p for p in range(30000, 49152)
              if table.lookup(Transport.UDP, p).status != PortStatus.ASSIGNED][:2]
    up = Ether(src="00:00:5e:00:53:01", dst="00:00:5e:00:53:02") / IP(
        src="192.0.2.1", dst="192.0.2.2")
    first = bytes(up / UDP(sport=c1, dport=1023))
    second = bytes(up / UDP(sport=c2, dport=1023))
    counter = ebpf.KernelCounter(FlowLimits())
    counts: list[ebpf.KernelCounts] = []
    try:
        counter.set_registry(table)
        netns.call(lambda: counter.attach([RX]))
        netns.call(lambda: _send([first]))
        _wait_received(counter, counts, 1)
        arr = ebpf.registry_array(table)
        arr[1 * 65536 + c2] = PortStatus.ASSIGNED
        counter.maps["registry"].update(b"\0\0\0\0", arr)
        netns.call(lambda: _send([second]))
        _wait_received(counter, counts, 2)
    finally:
        counter.close()
    slots = sorted(int(s) for c in counts for s in c.slots)
    assert slots == [65536 + 1023, 65536 + c2]
    assert sum(c.packets_total for c in counts) == 2  # counters carried on

def test_a_known_flow_is_decided_again_after_set_registry(
        netns: Netns, table: PortTable, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flow caches its service port; a registry refresh must not leave it stale."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    client = next(p for p in range(30000, 49152)
                  if table.lookup(Transport.UDP, p).status != PortStatus.ASSIGNED)
    frame = bytes(Ether(src="00:00:5e:00:53:01", dst="00:00:5e:00:53:02")
                  / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=client, dport=1023))
    counter = ebpf.KernelCounter(FlowLimits())
    before: list[ebpf.KernelCounts] = []
    after: list[ebpf.KernelCounts] = []
    try:
        counter.set_registry(table)
        netns.call(lambda: counter.attach([RX]))
        netns.call(lambda: _send([frame, frame]))
        _wait_received(counter, before, 2)
        arr = ebpf.registry_array(table)
        arr[1 * 65536 + client] = PortStatus.ASSIGNED
        monkeypatch.setattr(ebpf, "registry_array", lambda _table: arr)
        counter.set_registry(table)
        netns.call(lambda: _send([frame]))
        _wait_received(counter, after, 1)
    finally:
        counter.close()
    assert sorted(int(s) for c in before for s in c.slots) == [65536 + 1023]
    assert sorted(int(s) for c in after for s in c.slots) == [65536 + client]
    assert sum(int(c.flows.sum()) for c in before + after) == 1  # the same flow, not a new one


def test_a_flow_idle_past_its_timeout_counts_as_new_again(netns: Netns, table: PortTable) -> None:
    """The kernel's clock is CLOCK_MONOTONIC_COARSE: a tick of error, seconds of timeout."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    frame = bytes(Ether(src="00:00:5e:00:53:01", dst="00:00:5e:00:53:02")
                  / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=40000, dport=53))
    idle = dict.fromkeys(Transport, 300.0) | {Transport.UDP: 0.3}
    counter = ebpf.KernelCounter(FlowLimits(idle_s=idle))
    counts: list[ebpf.KernelCounts] = []
    try:
        counter.set_registry(table)
        netns.call(lambda: counter.attach([RX]))
        netns.call(lambda: _send([frame, frame]))
        _wait_received(counter, counts, 2)
        time.sleep(0.6)
        netns.call(lambda: _send([frame]))
        _wait_received(counter, counts, 3)
    finally:
        counter.close()
    assert sum(int(c.packets.sum()) for c in counts) == 3
    assert sum(int(c.flows.sum()) for c in counts) == 2


# -- choosing the backend --------------------------------------------------------------
def _config(backend: str, bpf_filter: str = "") -> DaemonConfig:
    return DaemonConfig(capture=CaptureConfig(backend=Backend(backend), interfaces=("lo",),
                                              bpf_filter=bpf_filter))


def _unloadable(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: object, *args: object, **kwargs: object) -> None:
        raise BackendError("eBPF backend unavailable: loading portwatch.bpf.o: "
                           "Operation not permitted")
    monkeypatch.setattr(ebpf.KernelCounter, "__init__", refuse)


def test_auto_falls_back_to_dumpcap_when_the_program_does_not_load(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _unloadable(monkeypatch)
    assert make_source(_config("auto")).backend == "dumpcap"


def test_ebpf_that_does_not_load_is_the_loaders_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _unloadable(monkeypatch)
    with pytest.raises(BackendError, match="Operation not permitted"):
        make_source(_config("ebpf"))


def test_a_capture_filter_is_refused_by_ebpf_and_sends_auto_to_dumpcap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackendError, match=r"counts every frame.*bpf_filter 'port 53'"):
        make_source(_config("ebpf", "port 53"))
    loaded: list[object] = []
    monkeypatch.setattr(ebpf.KernelCounter, "__init__",
                        lambda self, *a, **k: loaded.append(self))
    assert make_source(_config("auto", "port 53")).backend == "dumpcap"
    assert loaded == []  # not even tried


def test_config_accepts_ebpf_and_auto() -> None:
    for name in ("ebpf", "auto"):
        text = f'[capture]\nbackend = "{name}"\n'.encode()
        assert parse_config(text, "pw.toml").capture.backend is Backend(name)


# -- kernel counts into the exporter's counters (no privilege) ----------------------------
def _counts(rows: list[tuple[Transport, int, int, int, int]]) -> ebpf.KernelCounts:
    import numpy as np
    return ebpf.KernelCounts(
        slots=np.asarray([t.value * 65536 + port for t, port, *_ in rows], dtype=np.int64),
        packets=np.asarray([r[2] for r in rows], dtype=np.uint64),
        bytes=np.asarray([r[3] for r in rows], dtype=np.uint64),
        flows=np.asarray([r[4] for r in rows], dtype=np.uint64),
        portless=np.asarray([0, 3, 1, 0, 2, 0, 0, 0], dtype=np.int64),
        received={"eth0": 20}, new_flows=4, evictions=1, active_flows=3)


def test_kernel_counts_become_the_same_labels_and_flags(table: PortTable) -> None:
    counters = TrafficCounters(table, FlowLimits(max_flagged_ports=2),
                               RegistryFacts.of(table, None))
    counters.add_kernel_counts(_counts([
        (Transport.TCP, 80, 5, 500, 1),      # assigned: not flagged
        (Transport.TCP, 44515, 4, 400, 1),   # unassigned, unauthorized use reported
        (Transport.UDP, 8806, 3, 300, 1),    # unassigned: beyond the cap of 2 ports
        (Transport.TCP, 8807, 2, 200, 1),    # reserved
    ]))
    counters.add_kernel_counts(_counts([(Transport.TCP, 80, 1, 100, 0)]))
    snap = counters.snapshot()
    http = table.lookup(Transport.TCP, 80)
    assert snap.traffic[("tcp", http.service, "assigned")] == (6, 600, 1)
    assert snap.traffic[("udp", "", "unassigned")] == (3, 300, 1)
    assert snap.flagged[("tcp", "44515", "unassigned", "unassigned")] == (4, 1)
    assert snap.flagged[("tcp", "44515", "unassigned", "unauthorized-use")] == (4, 1)
    assert snap.flagged[("tcp", "8807", "reserved", "reserved")] == (2, 1)
    # ports take the cap's places in (transport, status, port) order, as per batch
    assert snap.flagged[("udp", "other", "unassigned", "unassigned")] == (3, 1)
    assert snap.received == {"eth0": 40}
    assert snap.portless["icmp"] == 6
    assert snap.portless["non-ip"] == 4
    assert snap.evictions == 2
    assert snap.active_flows == 3  # a level, not a sum
