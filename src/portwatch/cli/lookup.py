"""``portwatch lookup``: what the registry says about ports and service names."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from typing import Any

from portwatch.analysis.verdict import FlagReason, Verdict, flag_labels
from portwatch.cli.common import Context, format_columns
from portwatch.errors import UsageError
from portwatch.ports import Transport
from portwatch.porttable.table import PortInfo
from portwatch.registry.model import RecordKind
from portwatch.registry.serialize import record_dict

__all__ = ["add_parser", "run"]

_PORT_QUERY = re.compile(r"^([0-9]+)(?:/([A-Za-z]+))?$")  # ASCII digits only


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "lookup",
        parents=parents,
        help="look up ports and service names",
        description="Each QUERY is PORT/TRANSPORT, PORT (every transport) or a service name. "
        "'-' reads queries from standard input, one a line.",
    )
    p.add_argument("queries", nargs="+", metavar="QUERY",
                   help="PORT/TRANSPORT (80/tcp), PORT (every transport) or a service name "
                   "or alias; '-' reads them from standard input")
    p.add_argument("--json", action="store_true", help="one JSON object a line")


def _queries(raw: list[str]) -> Iterator[str]:
    for q in raw:
        if q == "-":
            for line in sys.stdin:
                if line.strip():
                    yield line.strip()
        else:
            yield q


def _registry_flags(verdict: Verdict) -> list[str]:
    """The registry's own flags on the port (the status has its own field)."""
    return flag_labels(verdict.flags & FlagReason.UNAUTHORIZED_USE)


def _answers(ctx: Context, query: str) -> list[tuple[PortInfo | None, list[int], str]]:
    """(port info, record ids, transport text) for each answer to one query."""
    table = ctx.table()
    m = _PORT_QUERY.match(query)
    if m:
        port = int(m[1])
        if port > 65535:
            raise UsageError(f"port {port} in query {query!r} is outside 0-65535")
        if m[2]:
            try:
                transports = [Transport.parse(m[2])]
            except ValueError:
                raise UsageError(
                    f"unknown transport {m[2]!r} in query {query!r} (tcp, udp, sctp or dccp)"
                ) from None
        else:
            transports = list(Transport)
        out: list[tuple[PortInfo | None, list[int], str]] = []
        for t in transports:
            info = table.lookup(t, port)
            out.append((info, list(info.record_ids), t.label))
        return out
    registry = ctx.registry()
    rids = registry.records_named(query)
    if not rids:
        raise UsageError(f"no service named {query!r} in the loaded registry")
    answers: list[tuple[PortInfo | None, list[int], str]] = []
    seen: set[tuple[int, int]] = set()
    for rid in rids:
        rec = registry.records[rid]
        if rec.kind is RecordKind.NAME_ONLY or rec.port_low is None:
            answers.append((None, [rid], rec.transport.label if rec.transport else ""))
            continue
        for t in rec.transports:
            for port in rec.ports():
                if (t, port) not in seen:
                    seen.add((t, port))
                    info = table.lookup(t, port)
                    answers.append((info, list(info.record_ids), t.label))
    return answers


def _as_json(ctx: Context, query: str, info: PortInfo | None, rids: list[int],
             transport: str) -> dict[str, Any]:
    registry, table = ctx.registry(), ctx.table()
    records = [record_dict(registry.records[i], registry.people) for i in rids]
    updated = table.last_updated
    answered_by = {"snapshot": table.snapshot,
                   "last_updated": updated.isoformat() if updated else None}
    if info is None:
        rec = registry.records[rids[0]]
        return {"query": query, "port": None, "transport": transport, "status": "name-only",
                "service": rec.name, "aliases": [], "description": rec.description,
                "flags": [], "reasons": [], "summary": "", "records": records,
                "registry": answered_by}
    verdict = Verdict.of_port(info, assigned_only=table.assigned_only)
    return {
        "query": query,
        "port": info.port,
        "transport": transport,
        "status": info.status.label,
        "service": info.service,
        "aliases": list(info.aliases),
        "description": info.description,
        "flags": _registry_flags(verdict),
        "reasons": verdict.reasons(),
        "summary": verdict.summary(),
        "remark": info.remark,
        "source": info.source,
        "records": records,
        "registry": answered_by,
    }


def run(ctx: Context, args: argparse.Namespace) -> int:
    failed = 0
    rows: list[list[str]] = []
    flagged: dict[str, None] = {}  # summaries of flagged answers, in order, once each
    for query in _queries(args.queries):
        try:
            answers = _answers(ctx, query)
        except UsageError as exc:
            print(f"portwatch: {exc}", file=ctx.stderr)
            failed += 1
            continue
        for info, rids, transport in answers:
            if args.json:
                print(json.dumps(_as_json(ctx, query, info, rids, transport)), file=ctx.stdout)
            elif info is None:
                rec = ctx.registry().records[rids[0]]
                rows.append([query, "-", transport or "-", "name-only", rec.name, "",
                             rec.description])
            else:
                verdict = Verdict.of_port(info, assigned_only=ctx.table().assigned_only)
                if verdict.flagged:
                    flagged[verdict.summary()] = None
                flags = ",".join(_registry_flags(verdict))
                service = info.service + (f" ({', '.join(info.aliases)})" if info.aliases else "")
                rows.append([query, str(info.port), transport, info.status.label, service or "-",
                             flags, info.description])
    if rows:
        print(format_columns(
            ["QUERY", "PORT", "TRANSPORT", "STATUS", "SERVICE", "FLAGS", "DESCRIPTION"], rows
        ), file=ctx.stdout)
    for line in flagged:
        print(line, file=ctx.stdout)
    return 1 if failed else 0
