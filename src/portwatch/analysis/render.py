"""A ``Report`` rendered as text: table, json, jsonl, csv, or Prometheus exposition.

Rendering is pure (report in, string out); the CLI decides where it goes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from enum import Enum

from portwatch import __version__
from portwatch.analysis.report import FlowReport, Report

__all__ = ["OutputFormat", "json_document", "render"]


class OutputFormat(Enum):
    TABLE = "table"
    JSON = "json"
    JSONL = "jsonl"
    CSV = "csv"
    PROM = "prom"


def _json(report: Report) -> str:
    """Indented at the top level, one compact line per list item.

    ``json.dumps(indent=...)`` falls back to the pure-Python encoder, which
    took longer than analysing a million packets; encoding each item
    compactly keeps the C encoder and still reads well (one service or
    flagged flow per line).
    """
    return json_document(report.as_dict())


def json_document(doc: dict[str, object]) -> str:
    parts = []
    for key, value in doc.items():
        name = json.dumps(key)
        if isinstance(value, list) and value:
            items = ",\n".join("    " + json.dumps(item) for item in value)
            parts.append(f"  {name}: [\n{items}\n  ]")
        else:
            parts.append(f"  {name}: {json.dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _jsonl(report: Report) -> str:
    return "".join(json.dumps(f.as_dict()) + "\n" for f in report.flows)


_CSV_FIELDS = tuple(FlowReport.__slots__)


def _csv(report: Report) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_CSV_FIELDS)
    for flow in report.flows:
        row = flow.as_dict()
        writer.writerow(
            ";".join(v) if isinstance(v := row[name], list) else v for name in _CSV_FIELDS
        )
    return buf.getvalue()


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _prom(report: Report) -> str:
    """Text exposition for node_exporter's textfile collector (no timestamps)."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    for metric, attr, text in (
        ("portwatch_capture_packets", "packets", "Packets per service in the analysed captures."),
        ("portwatch_capture_bytes", "bytes", "Bytes per service in the analysed captures."),
        ("portwatch_capture_flows", "flows", "Flows per service in the analysed captures."),
    ):
        family(metric, "gauge", text)
        for s in report.services:
            lines.append(
                f'{metric}{{transport="{s.transport}",port="{s.port}",'
                f'service="{_label(s.service)}",status="{s.status}"}} {getattr(s, attr)}'
            )
    family("portwatch_capture_flagged_flows", "gauge",
           "Flagged flows by service port and reason in the analysed captures.")
    flagged: dict[tuple[str, int, str, str], int] = {}
    for f in report.flagged:
        for reason in f.flags:
            key = (f.transport, f.service_port, f.status, reason)
            flagged[key] = flagged.get(key, 0) + 1
    for (transport, port, status, reason), n in sorted(flagged.items()):
        lines.append(f'portwatch_capture_flagged_flows{{transport="{transport}",port="{port}",'
                     f'status="{status}",reason="{reason}"}} {n}')
    family("portwatch_capture_undecoded_packets", "gauge",
           "Packets without transport ports, by reason.")
    for reason, n in sorted(report.decode.items()):
        lines.append(f'portwatch_capture_undecoded_packets{{reason="{reason}"}} {n}')
    family("portwatch_capture_packets_total_count", "gauge", "All packets analysed.")
    lines.append(f"portwatch_capture_packets_total_count {report.packets}")
    family("portwatch_build_info", "gauge", "portwatch version.")
    lines.append(f'portwatch_build_info{{version="{__version__}"}} 1')
    return "\n".join(lines) + "\n"


def _human(n: float) -> str:
    for unit in ("", "k", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}P"


def _table(report: Report) -> str:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=io.StringIO(), width=120, force_terminal=False, color_system=None)
    title = (f"{', '.join(report.captures) or 'capture'}: {report.packets} packets, "
             f"{_human(report.bytes)}B, {len(report.flows)} flows")
    services = Table(title=title, title_justify="left")
    for col, justify in (("transport", "left"), ("port", "right"), ("service", "left"),
                         ("status", "left"), ("packets", "right"), ("bytes", "right"),
                         ("flows", "right"), ("flags", "left")):
        services.add_column(col, justify=justify)  # type: ignore[arg-type]
    for s in report.services:
        services.add_row(s.transport, str(s.port), s.service or "-", s.status, str(s.packets),
                         _human(s.bytes), str(s.flows), ", ".join(s.flags))
    console.print(services)
    if report.flagged:
        flagged = Table(title=f"Flagged flows ({len(report.flagged)})", title_justify="left")
        for col in ("flow", "service port", "status", "method", "packets", "why"):
            flagged.add_column(col)
        for f in report.flagged:
            flagged.add_row(f"{f.client}:{f.client_port} -> {f.server}", f"{f.transport}/"
                            f"{f.service_port}", f.status, f.method, str(f.packets),
                            "; ".join(f.reasons))
        console.print(flagged)
    if report.decode:
        console.print("Packets without ports: " + ", ".join(
            f"{k} {v}" for k, v in sorted(report.decode.items())))
    reg = report.registry
    console.print(f"Registry: {reg.get('snapshot') or 'unknown'}, last updated "
                  f"{reg.get('last_updated') or 'unknown'}"
                  + (" (assigned ports only)" if reg.get("assigned_only") else ""))
    out = console.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


_RENDERERS: dict[OutputFormat, Callable[[Report], str]] = {
    OutputFormat.TABLE: _table,
    OutputFormat.JSON: _json,
    OutputFormat.JSONL: _jsonl,
    OutputFormat.CSV: _csv,
    OutputFormat.PROM: _prom,
}


def render(report: Report, fmt: OutputFormat) -> str:
    return _RENDERERS[fmt](report)
