"""The per-flow report and renderers as they were before the column-wise fast path.

``tests/analysis/test_report_columns.py`` checks that ``build_report`` and the
json, jsonl and csv renderers give exactly what these give. Kept verbatim (one
``FlowReport`` per flow with per-flow enum arithmetic, ``getattr`` per field,
``json.dumps`` per item), not optimised: they are the specification.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from typing import Any

import numpy as np

from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.community_id import flow_community_ids
from portwatch.analysis.conn_state import CONN_STATE_LABELS, conn_states
from portwatch.analysis.report import (
    DETECTION_FIELDS,
    I64,
    FlowReport,
    Report,
    ServiceCount,
    _Addresses,
    _seconds,
    _times,
    build_report,
    by_start,
)
from portwatch.analysis.verdict import (
    FlagReason,
    FlowDecisions,
    ServiceSideRule,
    flag_labels,
    port_reasons,
    reasons,
)
from portwatch.decode.native import encapsulation_labels
from portwatch.ports import PortStatus, Transport

_STATUS_LABELS = [s.label for s in PortStatus]
_RULE_LABELS = [r.label for r in ServiceSideRule]
_TRANSPORT_LABELS = [t.label for t in Transport]


def reference_report(analyzer: Analyzer) -> Report:
    """``build_report(analyzer)`` with its services and flows made the per-flow way."""
    ft = analyzer.flows
    live = by_start(ft, np.flatnonzero(ft.alive[: ft.size]))
    dec = ft.decide(analyzer.table, live)
    fast = build_report(analyzer)
    services = [replace(s, flags=flag_labels(port_reasons(*_status_and_flags(analyzer, s))))
                for s in fast.services]
    return replace(fast, services=services, flows=reference_flows(analyzer, live, dec))


def _status_and_flags(analyzer: Analyzer, s: ServiceCount) -> tuple[Any, Any]:
    info = analyzer.table.lookup(Transport[s.transport.upper()], s.port)
    return info.status, info.flags


def reference_flows(analyzer: Analyzer, live: I64, dec: FlowDecisions) -> list[FlowReport]:
    """One ``FlowReport`` per live flow; Python runs once per flow, over plain lists."""
    ft, table = analyzer.flows, analyzer.table
    keys = ft.keys[live]
    ends = _Addresses()
    a_side = [ends(hi, lo) for hi, lo in zip(keys["ah"].tolist(), keys["al"].tolist(),
                                             strict=True)]
    b_side = [ends(hi, lo) for hi, lo in zip(keys["bh"].tolist(), keys["bl"].tolist(),
                                             strict=True)]
    p_ab, p_ba, b_ab, b_ba = (getattr(ft, name)[live].tolist() for name in
                              ("packets_ab", "packets_ba", "bytes_ab", "bytes_ba"))
    first_ns, last_ns = ft.first_ns[live], ft.last_ns[live]
    first_seen, last_seen = _times(first_ns), _times(last_ns)
    start_time = _seconds(first_ns).tolist()
    duration = ((last_ns - first_ns) / 1e9).tolist()
    states = [CONN_STATE_LABELS[c] for c in conn_states(ft, live, dec.service_is_a).tolist()]
    community = flow_community_ids(ft.keys[live])
    svc_is_a, svc_port = dec.service_is_a.tolist(), dec.service_port.tolist()
    cli_port, statuses = dec.client_port.tolist(), dec.status.tolist()
    flag_bits, rules, sids = dec.flags.tolist(), dec.rule.tolist(), dec.service_id.tolist()
    transports = dec.transport.tolist()
    encapsulations = encapsulation_labels(ft.encap[live])
    assigned_only = table.assigned_only
    out: list[FlowReport] = []
    for j in range(live.size):
        svc_a = svc_is_a[j]
        transport = _TRANSPORT_LABELS[transports[j]]
        port = svc_port[j]
        bits = flag_bits[j]
        remark = ""
        if bits & FlagReason.UNAUTHORIZED_USE:
            remark = table.lookup(Transport(transports[j]), port).remark
        out.append(FlowReport(
            transport=transport,
            client=b_side[j] if svc_a else a_side[j],
            client_port=cli_port[j],
            server=a_side[j] if svc_a else b_side[j],
            service_port=port,
            service=table.names[sids[j]],
            status=_STATUS_LABELS[statuses[j]],
            method=_RULE_LABELS[rules[j]],
            flags=flag_labels(bits),
            reasons=reasons(transport, port, bits, remark=remark, assigned_only=assigned_only,
                            client_port=cli_port[j]),
            packets=p_ab[j] + p_ba[j],
            bytes=b_ab[j] + b_ba[j],
            packets_to_service=p_ba[j] if svc_a else p_ab[j],
            packets_from_service=p_ab[j] if svc_a else p_ba[j],
            bytes_to_service=b_ba[j] if svc_a else b_ab[j],
            bytes_from_service=b_ab[j] if svc_a else b_ba[j],
            first_seen=first_seen[j],
            last_seen=last_seen[j],
            capture=analyzer.capture,
            start_time=start_time[j],
            duration=duration[j],
            conn_state=states[j],
            community_id=community[j],
            encapsulation=encapsulations[j],
        ))
    return out


def flow_dict(flow: FlowReport) -> dict[str, Any]:
    """``FlowReport.as_dict`` as it was: ``getattr`` per slot, detection fields deleted."""
    doc = {name: getattr(flow, name) for name in flow.__slots__}
    if flow.detection is None:
        for name in DETECTION_FIELDS:
            del doc[name]
    return doc


def report_dict(report: Report) -> dict[str, Any]:
    doc = report.as_dict()
    doc["flagged"] = [flow_dict(f) for f in report.flagged]
    return doc


def json_text(report: Report) -> str:
    parts = []
    for key, value in report_dict(report).items():
        name = json.dumps(key)
        if isinstance(value, list) and value:
            items = ",\n".join("    " + json.dumps(item) for item in value)
            parts.append(f"  {name}: [\n{items}\n  ]")
        else:
            parts.append(f"  {name}: {json.dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def jsonl_text(report: Report) -> str:
    return "".join(json.dumps(flow_dict(f)) + "\n" for f in report.flows)


def csv_text(report: Report) -> str:
    fields = tuple(f for f in FlowReport.__slots__ if f not in DETECTION_FIELDS)
    if any(f.detection is not None for f in report.flows):
        fields += DETECTION_FIELDS
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields)
    for flow in report.flows:
        row = flow_dict(flow)
        writer.writerow(
            ";".join(v) if isinstance(v, list) else v for v in (row.get(n) for n in fields)
        )
    return buf.getvalue()
