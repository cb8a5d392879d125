"""Fleet roll-ups: the recording rules pass promtool's unit tests and use only daemon metrics;
one daemon's worst-case series count is what docs/operations.md says."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from portwatch.analysis.flows import FlowLimits
from portwatch.capture.batch import PacketBatch
from portwatch.daemon.collector import register_collectors
from portwatch.daemon.counters import RegistryFacts, TrafficCounters
from portwatch.ports import Transport
from portwatch.porttable.table import PortTable

REPO = Path(__file__).resolve().parent
RULES = REPO.parent / "prometheus" / "recording_rules.yml"
RULES_TEST = REPO.parent / "prometheus" / "recording_rules_test.yml"
DAEMON_METRICS = frozenset({
    "portwatch_packets_total", "portwatch_bytes_total", "portwatch_flows_total",
    "portwatch_flagged_packets_total", "portwatch_flagged_flows_total",
    "portwatch_capture_packets_received_total", "portwatch_capture_packets_dropped_total",
    "portwatch_decode_errors_total", "portwatch_backend_restarts_total",
    "portwatch_active_flows", "portwatch_flow_evictions_total", "portwatch_registry_records",
    "portwatch_registry_updated_timestamp_seconds", "portwatch_registry_info",
    "portwatch_build_info", "up",
})


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed")
    return subprocess.run([binary, *args], cwd=RULES.parent, capture_output=True, text=True,
                          timeout=120, check=False)


def test_recording_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_recording_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULES_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_recording_rules_read_only_daemon_metrics_and_drop_the_instance() -> None:
    text = RULES.read_text()
    exprs = re.findall(r"expr: \|?\n?((?:.|\n)*?)(?=\n\s*- record:|\Z)", text)
    read = {name for name in re.findall(r"\b([a-z_]+)(?:\{|\[)", "\n".join(exprs))
            if name.startswith("portwatch_") or name == "up"}
    assert read
    assert read <= DAEMON_METRICS
    for group in re.findall(r"sum by \(([^)]*)\)", text):
        if "> 0" not in group:
            assert "instance" not in group.split(", ") or group.startswith("instance, "), group


def _flood(n_per_transport: int = 65536) -> PacketBatch:
    """One flow per (transport, port) for every port: sport == dport, so every port serves."""
    transports = list(Transport)
    n = len(transports) * n_per_transport
    frame = 14 + 20 + 20
    data = np.zeros((n, frame), dtype=np.uint8)
    data[:, 12:14] = (0x08, 0x00)
    data[:, 14] = 0x45
    data[:, 16:18] = (0, 40)
    data[:, 22] = 64
    data[:, 23] = np.repeat([t.ip_protocol for t in transports], n_per_transport)
    data[:, 26:30] = (10, 0, 0, 1)
    data[:, 30:34] = (10, 0, 0, 2)
    ports = np.tile(np.arange(n_per_transport, dtype=np.uint16), len(transports))
    data[:, 34], data[:, 35] = ports >> 8, ports & 0xFF
    data[:, 36], data[:, 37] = ports >> 8, ports & 0xFF
    data[:, 46] = 0x50
    data[:, 47] = 0x02  # TCP SYN (a byte of payload for the others)
    return PacketBatch(
        data=data.reshape(-1), offsets=np.arange(n, dtype=np.int64) * frame,
        caplens=np.full(n, frame, dtype=np.uint32), wirelens=np.full(n, frame, dtype=np.uint32),
        timestamps_ns=np.arange(n, dtype=np.int64) + 1_700_000_000_000_000_000,
        linktypes=np.ones(n, dtype=np.uint16), interfaces=np.zeros(n, dtype=np.uint32),
        file_offsets=np.zeros(n, dtype=np.int64))


def series_of_one_daemon(table: PortTable, limits: FlowLimits) -> dict[str, int]:
    """Series per metric family after traffic on every port of every transport."""
    counters = TrafficCounters(table, limits, RegistryFacts.of(table, None))
    counters.declare("dumpcap", ["eth0"])
    counters.feed(_flood(), ["eth0"])
    registry = CollectorRegistry()
    register_collectors(registry, counters.snapshot, process=False)
    text = generate_latest(registry).decode()
    return {f.name: len(f.samples) for f in text_string_to_metric_families(text)}


def test_worst_case_series_of_one_daemon_is_services_times_statuses_plus_the_flagged_cap(
        table: PortTable) -> None:
    limits = FlowLimits(max_flows=300_000, max_flagged_ports=100)
    series = series_of_one_daemon(table, limits)
    # the bound from the registry itself: distinct (transport, service, status) of all ports
    labels = set()
    for t in Transport:
        status, sid, _ = table.lookup_many(np.full(65536, t.value, dtype=np.uint8),
                                           np.arange(65536, dtype=np.uint16))
        labels |= set(zip([t.value] * 65536, sid.tolist(), status.tolist(), strict=True))
    for family in ("portwatch_packets", "portwatch_bytes", "portwatch_flows"):
        assert series[family] == len(labels)
    # flagged: one series per (port label, status, reason); ports beyond the cap are "other"
    assert series["portwatch_flagged_packets"] == series["portwatch_flagged_flows"]
    flagged_ports = series["portwatch_flagged_packets"]
    assert flagged_ports <= (limits.max_flagged_ports + 1) * len(Transport) * 3 * 2
    total = sum(series.values())
    print(f"\nworst case, one daemon: {series} total={total}")  # docs/operations.md
    assert total < 3 * len(labels) + flagged_ports * 2 + 100
