"""The Prometheus collector: reads a counters snapshot at scrape time.

Nothing is registered at import; the caller passes the collector registry
(client_python's custom-collector pattern).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from portwatch import __version__
from portwatch.daemon.counters import (
    RegistryFacts,
    Snapshot,
)

__all__ = ["PortwatchCollector", "register_collectors"]


class PortwatchCollector(Collector):
    """Builds every ``portwatch_*`` family from a fresh snapshot at each scrape."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        return []  # register without a scrape; names are fixed anyway

    def collect(self) -> Iterable[Metric]:
        snap = self._snapshot()
        yield from _traffic_families(snap)
        yield from _health_families(snap)
        yield from _registry_families(snap.registry_facts)
        yield _mismatch_family(snap)
        build = InfoMetricFamily("portwatch_build", "portwatch version and Python runtime.")
        build.add_metric([], {"version": __version__,
                              "python_version": platform.python_version()})
        yield build


def _mismatch_family(snap: Snapshot) -> Metric:
    """Flows whose payload is another protocol than the port's assignment (``[detect]``)."""
    family = CounterMetricFamily(
        "portwatch_protocol_mismatch_flows",
        "Flows whose payload nDPI found to be another protocol than the one IANA assigns "
        "to the service port ([detect] enabled; port capped like flagged traffic).",
        labels=["transport", "port", "assigned", "detected"])
    for labels, n in sorted(snap.mismatches.items()):
        family.add_metric(list(labels), n)
    return family


def _traffic_families(snap: Snapshot) -> Iterable[Metric]:
    labels = ["transport", "service", "status"]
    packets = CounterMetricFamily(
        "portwatch_packets", "Packets of flows, by the flow's service and its registry status.",
        labels=labels)
    nbytes = CounterMetricFamily(
        "portwatch_bytes", "Bytes on the wire of flows, by service and registry status.",
        labels=labels)
    flows = CounterMetricFamily(
        "portwatch_flows", "Flows when first seen, by service and registry status.",
        labels=labels)
    for key, (p, b, f) in sorted(snap.traffic.items()):
        packets.add_metric(list(key), p)
        nbytes.add_metric(list(key), b)
        flows.add_metric(list(key), f)
    flabels = ["transport", "port", "status", "reason"]
    fpackets = CounterMetricFamily(
        "portwatch_flagged_packets",
        "Packets of flagged flows by service port (capped; the rest are port=\"other\").",
        labels=flabels)
    fflows = CounterMetricFamily(
        "portwatch_flagged_flows", "Flagged flows when first seen, by service port and reason.",
        labels=flabels)
    for fkey, (p, f) in sorted(snap.flagged.items()):
        fpackets.add_metric(list(fkey), p)
        fflows.add_metric(list(fkey), f)
    return [packets, nbytes, flows, fpackets, fflows]


def _by_label(family: CounterMetricFamily, values: Mapping[str, int]) -> CounterMetricFamily:
    """One sample per label value, in a stable order."""
    for value, n in sorted(values.items()):
        family.add_metric([value], n)
    return family


def _health_families(snap: Snapshot) -> Iterable[Metric]:
    received = _by_label(CounterMetricFamily(
        "portwatch_capture_packets_received", "Packets the capture backend delivered.",
        labels=["interface"]), snap.received)
    dropped = _by_label(CounterMetricFamily(
        "portwatch_capture_packets_dropped",
        "Packets lost by the kernel or the capture backend before portwatch saw them.",
        labels=["interface"]), snap.dropped)
    errors = _by_label(CounterMetricFamily(
        "portwatch_decode_errors",
        "Packets that could not be decoded, by reason (truncated, malformed, unsupported-link).",
        labels=["reason"]), snap.decode_errors)
    portless = _by_label(CounterMetricFamily(
        "portwatch_portless_packets",
        "Packets decoded without transport ports of their own, by reason (icmp, non-ip, "
        "fragment: IP fragments not counted with a flow, other-ip).",
        labels=["reason"]), snap.portless)
    restarts = _by_label(CounterMetricFamily(
        "portwatch_backend_restarts", "Times a capture backend was restarted after it stopped.",
        labels=["backend"]), snap.restarts)
    active = GaugeMetricFamily("portwatch_active_flows", "Flows currently tracked.",
                               value=snap.active_flows)
    evictions = CounterMetricFamily(
        "portwatch_flow_evictions", "Flows forgotten early because the flow table was full.",
        value=snap.evictions)
    return [received, dropped, errors, portless, restarts, active, evictions]


def _registry_families(facts: RegistryFacts) -> Iterable[Metric]:
    records = GaugeMetricFamily("portwatch_registry_records",
                                "Records of the loaded registry sources, by kind and transport "
                                "(transport \"\" for records without one).",
                                labels=["kind", "transport"])
    by_transport = facts.by_transport or {(kind, ""): n for kind, n in facts.records.items()}
    for (kind, transport), n in sorted(by_transport.items()):
        records.add_metric([kind, transport], n)
    out: list[Metric] = [records]
    if facts.updated_seconds is not None:
        out.append(GaugeMetricFamily(
            "portwatch_registry_updated_timestamp_seconds",
            "The newest 'Last Updated' date of the loaded registry sources (Unix time).",
            value=facts.updated_seconds))
    info = InfoMetricFamily("portwatch_registry", "Loaded registry sources.",
                            labels=["source", "format", "last_updated"])
    for path, fmt, updated in facts.sources:
        info.add_metric([path, fmt, updated], {})
    out.append(info)
    return out


def register_collectors(
    collector_registry: CollectorRegistry, snapshot: Callable[[], Snapshot], *,
    process: bool = True,
    **process_kwargs: Any,
) -> None:
    """Register the portwatch collector (and the process collector) on ``collector_registry``."""
    collector_registry.register(PortwatchCollector(snapshot))
    if process:
        from prometheus_client import ProcessCollector

        ProcessCollector(registry=collector_registry, **process_kwargs)
