"""A ``Report`` rendered as text: table, json, jsonl, csv, or Prometheus exposition.

Rendering is pure (report in, string out); the CLI decides where it goes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from enum import Enum
from operator import attrgetter

from portwatch._terminal import STATUS_COLORS, Align, Column, fit, render_table
from portwatch.analysis.report import DETECTION_FIELDS, FlowReport, Report

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


def _c_encoder() -> Callable[[object], str]:
    """``json.dumps`` with its default options, minus its per-call set-up.

    ``json.dumps`` builds a new C encoder for every value; one line per flow
    made that a third of the cost of ``-f json``/``-f jsonl``. This is the
    encoder ``json.dumps`` would build, made once (without the check for
    circular references, which a report cannot have); ``json.dumps`` itself
    where the C accelerator is missing.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has _json
        return json.dumps
    defaults = json.JSONEncoder()
    encode = make(None, defaults.default, json.encoder.encode_basestring_ascii, None, ": ",
                  ", ", False, False, True)

    def dumps(value: object) -> str:
        return "".join(encode(value, 0))

    return dumps


_dumps = _c_encoder()


def json_document(doc: dict[str, object]) -> str:
    parts = []
    for key, value in doc.items():
        name = json.dumps(key)
        if isinstance(value, list) and value:
            items = ",\n".join(["    " + _dumps(item) for item in value])
            parts.append(f"  {name}: [\n{items}\n  ]")
        else:
            parts.append(f"  {name}: {_dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _jsonl(report: Report) -> str:
    return "".join([_dumps(f.as_dict()) + "\n" for f in report.flows])


_CSV_FIELDS = tuple(f for f in FlowReport.__slots__ if f not in DETECTION_FIELDS)


def _detected(report: Report) -> bool:
    """Whether detection ran (``--detect``): its flows carry a ``detection``."""
    return any(f.detection is not None for f in report.flows)


def _csv(report: Report) -> str:
    fields = _CSV_FIELDS + DETECTION_FIELDS if _detected(report) else _CSV_FIELDS
    values = attrgetter(*fields)  # one C call per flow, no dict per flow
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields)
    writer.writerows(
        [";".join(v) if isinstance(v, list) else v for v in values(flow)]
        for flow in report.flows
    )
    return buf.getvalue()


def _prom(report: Report, width: int | None, color: bool) -> str:
    """Text exposition for node_exporter's textfile collector (no timestamps).

    ``prometheus_client`` (with ``http.server``, ``email`` and ``platform``) is
    imported only here: it cost every other format a third of its start-up.
    """
    from portwatch.analysis.render_prom import prom_text

    return prom_text(report)


def _human(n: float) -> str:
    for unit in ("", "k", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}P"


_SERVICE_COLUMNS = (
    Column("port", priority=100),
    Column("service", priority=80, shrink=True, min_width=8),
    Column("status", priority=90, colors=STATUS_COLORS),
    Column("packets", priority=70, align=Align.RIGHT),
    Column("bytes", priority=50, align=Align.RIGHT),
    Column("flows", priority=40, align=Align.RIGHT),
    Column("flags", priority=60, shrink=True, min_width=10),
)

_FLAGGED_COLUMNS = (
    # an IPv4 flow (up to 33 columns with typical addresses) is never cut
    Column("flow", priority=80, shrink=True, min_width=33),
    Column("port", priority=100),
    Column("status", priority=90, colors=STATUS_COLORS),
    Column("method", priority=30),
    Column("packets", priority=40, align=Align.RIGHT),
    Column("why", priority=70, shrink=True, min_width=20),
)


_FLAGGED_DETECTED = Column("detected", priority=65, shrink=True, min_width=8)

_DETECTION_COLUMNS = (
    Column("port", priority=100),
    Column("service", priority=80, shrink=True, min_width=8),
    Column("detected", priority=90, shrink=True, min_width=8),
    Column("confidence", priority=50),
    Column("verdict", priority=95),
    Column("flows", priority=70, align=Align.RIGHT),
)


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _table(report: Report, width: int | None, color: bool) -> str:
    """Services, flagged flows with their reasons, then what had no ports and the registry.

    Every line fits ``width`` (None: unlimited); the status column is coloured
    when ``color`` is true. The flags column lists only what the status does
    not already say (``unauthorized-use``).
    """
    title = (f"{', '.join(report.captures) or 'capture'}: {report.packets} packets, "
             f"{_human(report.bytes)}B, {report.flow_count} flows")
    services = [
        [f"{s.transport}/{s.port}", s.service or "-", s.status, str(s.packets),
         _human(s.bytes), str(s.flows), ", ".join(f for f in s.flags if f != s.status)]
        for s in report.services
    ]
    parts = [fit(title, width), render_table(_SERVICE_COLUMNS, services, width=width,
                                             color=color)]
    flagged = report.flagged
    detected = _detected(report)
    if flagged:
        rows = [
            [f"{_endpoint(f.client, f.client_port)} -> {f.server}",
             f"{f.transport}/{f.service_port}", f.status, f.method, str(f.packets),
             "; ".join(f.reasons)]
            for f in flagged
        ]
        columns: tuple[Column, ...] = _FLAGGED_COLUMNS
        if detected:
            columns = (*_FLAGGED_COLUMNS[:-1], _FLAGGED_DETECTED, _FLAGGED_COLUMNS[-1])
            for row, f in zip(rows, flagged, strict=True):
                row.insert(len(row) - 1, f.detected or "-")
        parts += ["", fit(f"Flagged flows ({len(flagged)})", width),
                  render_table(columns, rows, width=width, color=color)]
    if detected:
        parts += ["", *_detection_table(report, width, color)]
    parts.append("")
    if report.decode:
        parts.append(fit("Packets without ports: " + ", ".join(
            f"{k} {v}" for k, v in sorted(report.decode.items())), width))
    reg = report.registry
    parts.append(fit(f"Registry: {reg.get('snapshot') or 'unknown'}, last updated "
                     f"{reg.get('last_updated') or 'unknown'}"
                     + (" (assigned ports only)" if reg.get("assigned_only") else ""), width))
    return "\n".join(parts) + "\n"


def _detection_table(report: Report, width: int | None, color: bool) -> list[str]:
    """Flows per (service port, detected protocol, verdict): what the payload says."""
    counts: dict[tuple[str, int, str, str, str, str], int] = {}
    for f in report.flows:
        key = (f.transport, f.service_port, f.service, f.detected or "", f.confidence or "",
               f.detection or "")
        counts[key] = counts.get(key, 0) + 1
    order = {"mismatch": 0, "confirmed": 1, "unconfirmed": 2}
    rows = [
        [f"{t}/{port}", service or "-", detected or "-", confidence, verdict, str(n)]
        for (t, port, service, detected, confidence, verdict), n in sorted(
            counts.items(), key=lambda kv: (order.get(kv[0][5], 3), -kv[1], kv[0]))
    ]
    mismatched = sum(n for key, n in counts.items() if key[5] == "mismatch")
    return [fit(f"Protocol detection (nDPI): {mismatched} mismatched flows", width),
            render_table(_DETECTION_COLUMNS, rows, width=width, color=color)]


def _plain(fn: Callable[[Report], str]) -> Callable[[Report, int | None, bool], str]:
    """A format that ignores terminal width and colour (machine-readable output)."""
    return lambda report, width, color: fn(report)


_RENDERERS: dict[OutputFormat, Callable[[Report, int | None, bool], str]] = {
    OutputFormat.TABLE: _table,
    OutputFormat.JSON: _plain(_json),
    OutputFormat.JSONL: _plain(_jsonl),
    OutputFormat.CSV: _plain(_csv),
    OutputFormat.PROM: _prom,
}


def render(report: Report, fmt: OutputFormat, *, width: int | None = None,
           color: bool = False) -> str:
    """``report`` as ``fmt``. ``width`` and ``color`` shape the table format only.

    The defaults (unlimited width, no colour) suit a pipe or a file; for a
    terminal pass ``_terminal.terminal_width(stream, env)`` and
    ``_terminal.should_color(stream, env)``.
    """
    return _RENDERERS[fmt](report, width, color)
