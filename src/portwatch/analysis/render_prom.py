"""``analyze -f prom``: a ``Report`` as Prometheus text exposition.

Apart from ``portwatch.analysis.render`` because ``prometheus_client`` pulls in
``http.server``, ``email`` and ``platform`` (about 30 ms): only this format
pays for them.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from portwatch import __version__
from portwatch.analysis.report import PORTLESS_STATUSES, UNDECODABLE_STATUSES, Report
from portwatch.ports import LabelledEnum

__all__ = ["prom_text"]


class _ReportCollector(Collector):
    """The report as metric families, for one ``generate_latest`` in a throwaway registry.

    Gauges, not counters: each run describes the captures it was given, and the
    next run's file replaces this one (node_exporter's textfile collector).
    """

    def __init__(self, report: Report) -> None:
        self.report = report

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        report = self.report
        labels = ["transport", "port", "service", "status"]
        per_service = [
            (GaugeMetricFamily("portwatch_capture_packets",
                               "Packets per service in the analysed captures.", labels=labels),
             "packets"),
            (GaugeMetricFamily("portwatch_capture_bytes",
                               "Bytes per service in the analysed captures.", labels=labels),
             "bytes"),
            (GaugeMetricFamily("portwatch_capture_flows",
                               "Flows per service in the analysed captures.", labels=labels),
             "flows"),
        ]
        for s in report.services:
            values = [s.transport, str(s.port), s.service, s.status]
            for family, attr in per_service:
                family.add_metric(values, getattr(s, attr))
        yield from (family for family, _ in per_service)
        flagged = GaugeMetricFamily(
            "portwatch_capture_flagged_flows",
            "Flagged flows by service port and reason in the analysed captures.",
            labels=["transport", "port", "status", "reason"])
        counts = report.flagged_flow_counts()  # exact, even when only some are listed
        for (transport, port, status, reason), n in sorted(counts.items()):
            flagged.add_metric([transport, str(port), status, reason], n)
        yield flagged
        undecoded = GaugeMetricFamily("portwatch_capture_undecoded_packets",
                                      "Packets without transport ports of their own, by reason "
                                      "(fragment-attributed: later IP fragments counted with "
                                      "their flow).",
                                      labels=["reason"])
        for reason, n in sorted(report.decode.items()):
            undecoded.add_metric([reason], n)
        yield undecoded
        yield _by_reason("portwatch_capture_portless_packets",
                         "Packets decoded without transport ports of their own, by reason "
                         "(fragment: IP fragments not counted with a flow).",
                         report.decode, PORTLESS_STATUSES)
        yield _by_reason("portwatch_capture_decode_errors",
                         "Packets that could not be decoded, by reason.",
                         report.decode, UNDECODABLE_STATUSES)
        yield GaugeMetricFamily("portwatch_capture_analysed_packets",
                                "All packets analysed, with or without transport ports.",
                                value=report.packets)
        yield GaugeMetricFamily("portwatch_capture_analysed_bytes",
                                "Bytes on the wire of all packets analysed.",
                                value=report.bytes)
        build = InfoMetricFamily("portwatch_build", "portwatch version.")
        build.add_metric([], {"version": __version__})
        yield build


def _by_reason(name: str, documentation: str, counts: dict[str, int],
               reasons: Iterable[LabelledEnum]) -> GaugeMetricFamily:
    """One sample per reason, zeros included, so every series exists in every file."""
    family = GaugeMetricFamily(name, documentation, labels=["reason"])
    for label in sorted(r.label for r in reasons):
        family.add_metric([label], counts.get(label, 0))
    return family


def prom_text(report: Report) -> str:
    """Text exposition for node_exporter's textfile collector (no timestamps)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ReportCollector(report))
    return generate_latest(registry).decode()
