"""The daemon's protocol detection: ``[detect] enabled`` and the mismatch counter."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from helpers.ndpi import needs_ndpi
from portwatch.analysis.flows import FlowLimits
from portwatch.capture.files.reader import read_capture_path
from portwatch.daemon.collector import PortwatchCollector
from portwatch.daemon.config import DaemonConfig, parse_config
from portwatch.daemon.counters import RegistryFacts, TrafficCounters
from portwatch.errors import ConfigError
from portwatch.porttable.table import PortTable

DETECT = Path(__file__).resolve().parents[2] / "pcaps" / "detect.pcap"



# -- configuration ---------------------------------------------------------------------------

def test_detection_is_off_by_default() -> None:
    assert DaemonConfig().detect_enabled is False
    assert parse_config(b"", "portwatch.toml").detect_enabled is False


def test_detect_enabled_with_a_payload_backend_and_snaplen() -> None:
    config = parse_config(b'[capture]\nsnaplen = 1536\n[detect]\nenabled = true\n', "p.toml")
    assert config.detect_enabled is True


@pytest.mark.parametrize(("text", "message"), [
    (b'[detect]\nenabled = "yes"\n', r"\[detect\] enabled = 'yes': expected true or false"),
    (b'[detect]\nenabled = true\n', r"needs \[capture\] snaplen >= 512 .* not 128"),
    (b'[capture]\nbackend = "scapy"\nsnaplen = 1536\n[detect]\nenabled = true\n',
     r"needs a backend that hands over payloads \(dumpcap, pyshark, replay\), not scapy"),
    (b'[detect]\nsample = 1\n', r"unknown key \[detect\] sample"),
])
def test_a_detect_section_that_cannot_work_is_refused_with_the_reason(
    text: bytes, message: str,
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text, "p.toml")


# -- counting -----------------------------------------------------------------------------------

def _counters(table: PortTable, **limits: int) -> TrafficCounters:
    return TrafficCounters(table, FlowLimits(**limits),  # type: ignore[arg-type]
                           RegistryFacts.of(table, None))


def _feed(counters: TrafficCounters) -> None:
    reader = read_capture_path(str(DETECT))
    try:
        for batch in reader:
            counters.feed(batch)
    finally:
        reader.close()


@needs_ndpi
def test_mismatched_flows_are_counted_by_port_assignment_and_detection(
    packaged: PortTable, tmp_path: Path,
) -> None:
    counters = _counters(packaged)
    counters.enable_detection(str(tmp_path))
    _feed(counters)
    counters.stop_detection()
    assert counters.snapshot().mismatches == {
        ("tcp", "443", "https", "ssh"): 1,
        ("tcp", "53", "domain", "http"): 1,
        ("tcp", "8806", "unassigned", "tls"): 1,
    }
    assert list(tmp_path.iterdir()) == []  # the FIFOs' directory is gone


@needs_ndpi
def test_mismatch_ports_share_the_flagged_port_cap(packaged: PortTable, tmp_path: Path) -> None:
    counters = _counters(packaged, max_flagged_ports=1)
    counters.enable_detection(str(tmp_path))
    _feed(counters)
    counters.stop_detection()
    # tcp/8806 (unassigned, flagged as it arrived) took the one port; the others fold
    assert counters.snapshot().mismatches == {
        ("tcp", "other", "https", "ssh"): 1,
        ("tcp", "other", "domain", "http"): 1,
        ("tcp", "8806", "unassigned", "tls"): 1,
    }


@needs_ndpi
def test_the_exporter_publishes_the_mismatch_counter(packaged: PortTable, tmp_path: Path) -> None:
    counters = _counters(packaged)
    counters.enable_detection(str(tmp_path))
    _feed(counters)
    counters.stop_detection()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PortwatchCollector(counters.snapshot))
    text = generate_latest(registry).decode()
    (family,) = [f for f in text_string_to_metric_families(text)
                 if f.name == "portwatch_protocol_mismatch_flows"]
    assert family.type == "counter"
    assert {(s.labels["port"], s.labels["assigned"], s.labels["detected"], s.value)
            for s in family.samples if s.name.endswith("_total")} == {
        ("443", "https", "ssh", 1.0), ("53", "domain", "http", 1.0),
        ("8806", "unassigned", "tls", 1.0)}


def test_without_detection_the_counter_is_published_empty(packaged: PortTable) -> None:
    counters = _counters(packaged)
    _feed(counters)
    assert counters.snapshot().mismatches == {}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PortwatchCollector(counters.snapshot))
    assert "# TYPE portwatch_protocol_mismatch_flows_total counter" in (
        generate_latest(registry).decode())
