"""Differential: every sample capture through the eBPF backend and the replay backend.

Inside a network namespace the test creates, tcpreplay sends each sample
capture over a veth pair; the eBPF program counts on the far end. The same
frames, written to a file, go through the replay backend. Both sides are
rendered by the exporter's collector, and the families the issue names
(``portwatch_packets_total``, ``portwatch_bytes_total``,
``portwatch_flows_total`` and the flagged series) must be equal, sample by
sample, label by label.

tcpreplay sends Ethernet only: a capture of another link type (raw IP, BSD
loopback, Linux cooked) is rewritten first with an Ethernet header in place
of its own, and both backends read that rewritten file, so they see the same
bytes. Root only; skipped with the reason elsewhere.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.daemon_proc import REPO, DaemonProcess
from helpers.netns import Netns
from portwatch.analysis.flows import FlowLimits
from portwatch.capture.batch import LinkType
from portwatch.capture.files.reader import open_capture
from portwatch.capture.live.replay import ReplaySource
from portwatch.daemon import ebpf
from portwatch.daemon.collector import PortwatchCollector
from portwatch.daemon.counters import RegistryFacts, TrafficCounters
from portwatch.errors import BackendError, CaptureError
from portwatch.porttable.table import PortTable

pytestmark = [pytest.mark.root]

NS = f"pwebpfit{os.getpid()}"
TX, RX = "pwi0", "pwi1"
FAMILIES = ("portwatch_packets_total", "portwatch_bytes_total", "portwatch_flows_total",
            "portwatch_flagged_packets_total", "portwatch_flagged_flows_total")
SAMPLES = sorted(p for p in (REPO / "pcaps").iterdir()
                 if p.name.endswith((".pcap", ".pcapng", ".pcap.gz")))
_SRC, _DST = bytes.fromhex("00005e005301"), bytes.fromhex("00005e005302")


@pytest.fixture(scope="module")
def netns() -> Iterator[Netns]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces and loading BPF need root")
    for binary in ("ip", "nsenter", "tcpreplay"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed")
    try:
        ebpf.KernelCounter(FlowLimits(max_flows=16)).close()
    except BackendError as exc:
        pytest.skip(f"the program does not load here: {exc}")
    ns = Netns(NS, TX, RX).create()
    try:
        yield ns
    finally:
        ns.delete()


def _ethernet(linktype: int, frame: bytes) -> bytes | None:
    """The frame with an Ethernet header in place of its link header (None: no IP inside)."""
    def by_nibble(payload: bytes) -> bytes | None:
        if not payload:
            return None
        kind = {4: b"\x08\x00", 6: b"\x86\xdd"}.get(payload[0] >> 4)
        return _DST + _SRC + kind + payload if kind else None

    if linktype == LinkType.ETHERNET:
        return frame
    if linktype in (LinkType.RAW, LinkType.RAW_DLT12, LinkType.RAW_DLT14, LinkType.IPV4,
                    LinkType.IPV6):
        return by_nibble(frame)
    if linktype in (LinkType.NULL, LinkType.LOOP):
        return by_nibble(frame[4:])
    if linktype == LinkType.LINUX_SLL:
        return _DST + _SRC + frame[14:16] + frame[16:]
    if linktype == LinkType.LINUX_SLL2:
        return _DST + _SRC + frame[0:2] + frame[20:]
    return None


def ethernet_pcap(sample: Path, out: Path) -> int:
    """Write the sample's readable packets as an Ethernet pcap; return how many."""
    records = []
    try:
        for batch in open_capture(sample.read_bytes(), str(sample)):
            for i in range(len(batch)):
                frame = _ethernet(int(batch.linktypes[i]), batch.packet(i))
                if frame is None:
                    continue
                missing = int(batch.wirelens[i]) - int(batch.caplens[i])
                frame += b"\0" * max(missing, 0)  # what the wire carried, in length
                ts = int(batch.timestamps_ns[i])
                records.append(struct.pack("<IIII", ts // 10**9, ts % 10**9 // 1000,
                                           len(frame), len(frame)) + frame)
    except CaptureError:
        pass  # a damaged capture (truncated.pcap): the packets before the damage
    out.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
                    + b"".join(records))
    return len(records)


def _series(counters: TrafficCounters) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in PortwatchCollector(counters.snapshot).collect():
        for s in family.samples:
            if s.name in FAMILIES:
                out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def _replayed(table: PortTable, pcap: Path) -> TrafficCounters:
    counters = TrafficCounters(table, FlowLimits(), RegistryFacts.of(table, None))
    source = ReplaySource([str(pcap)], 0)
    for batch in source.batches():
        counters.feed(batch, source.interface_names())
    return counters


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.name for p in SAMPLES])
def test_ebpf_and_replay_backends_give_the_same_series(netns: Netns, table: PortTable,
                                                       sample: Path, tmp_path: Path) -> None:
    pcap = tmp_path / "ethernet.pcap"
    sent = ethernet_pcap(sample, pcap)
    assert sent > 0
    want = _replayed(table, pcap)
    counter = ebpf.KernelCounter(FlowLimits())
    kernel = TrafficCounters(table, FlowLimits(), RegistryFacts.of(table, None))
    try:
        counter.set_registry(table)
        netns.call(lambda: counter.attach([RX]))
        netns.run(["tcpreplay", "-q", "--topspeed", "-i", TX, str(pcap)])
        deadline = time.monotonic() + 10
        received = 0
        while received < sent and time.monotonic() < deadline:
            counts = counter.read()
            kernel.add_kernel_counts(counts)
            received += counts.packets_total
            time.sleep(0.02)
    finally:
        counter.close()
    assert received == sent
    got, expected = _series(kernel), _series(want)
    assert expected, "the replay backend counted no flow"
    assert got == expected


def test_daemon_with_ebpf_serves_what_the_replay_daemon_serves(netns: Netns,
                                                                tmp_path: Path) -> None:
    pcap = tmp_path / "sample-ethernet.pcap"
    sent = ethernet_pcap(REPO / "pcaps" / "sample.pcapng", pcap)
    args = ["daemon", "--web.listen-address", "127.0.0.1:0"]
    with DaemonProcess([*args, "--backend", "replay", "--replay", str(pcap),
                        "--replay-speed", "0"]) as replay, \
            DaemonProcess([*args, "--backend", "ebpf", "-i", RX],
                          prefix=netns.prefix()) as live:
        live.wait_for_log(r"capture started: ebpf " + RX, 30)
        status, health = netns.call(lambda: live.get("/healthz"))
        assert status == 200, health
        assert "ebpf" in health
        netns.run(["tcpreplay", "-q", "--topspeed", "-i", TX, str(pcap)])

        def received(s: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> bool:
            return s.get(("portwatch_capture_packets_received_total",
                          (("interface", RX),)), 0) >= sent

        got = netns.call(lambda: live.wait_until(received, 15))
        assert received(got)
        want = replay.wait_until(lambda s: any(n == "portwatch_packets_total" for n, _ in s),
                                 15)
        assert {k: v for k, v in got.items() if k[0] in FAMILIES} == {
            k: v for k, v in want.items() if k[0] in FAMILIES}
        # SIGHUP refreshes the registry array; the counters carry on
        live.proc.send_signal(signal.SIGHUP)
        live.wait_for_log("reloaded: registry", 30)
        time.sleep(1.2)  # one poll after the reload
        after = netns.call(live.samples)
        assert {k: v for k, v in after.items() if k[0] in FAMILIES} == {
            k: v for k, v in got.items() if k[0] in FAMILIES}
        started = time.monotonic()
        assert live.stop(timeout=5) == 0
        assert time.monotonic() - started < 5
