"""``portwatch registry info|import|update|diff``."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

from portwatch import __version__
from portwatch.cli.common import Context, format_columns
from portwatch.registry.diff import Change, ChangeKind, diff_records
from portwatch.registry.freshness import age_days
from portwatch.registry.loader import read_source
from portwatch.registry.model import RecordKind
from portwatch.registry.stats import registry_stats
from portwatch.registry.store import (
    MAX_DOWNLOAD_BYTES,
    MAX_UPDATE_PROBLEMS,
    MIN_RECORD_RATIO,
    DataStore,
)

__all__ = ["DEFAULT_UPDATE_URL", "add_parser", "run"]

#: IANA's published address of the registry; the XML carries the people list too.
DEFAULT_UPDATE_URL = (
    "https://www.iana.org/assignments/service-names-port-numbers/service-names-port-numbers.xml"
)


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    reg = sub.add_parser("registry", help="inspect and manage registry sources")
    rsub = reg.add_subparsers(dest="registry_command", required=True, metavar="COMMAND")
    info = rsub.add_parser("info", parents=parents, help="sources, dates, counts and coverage")
    info.add_argument("--json", action="store_true", help="one JSON object instead of text")
    imp = rsub.add_parser("import", parents=parents, help="validate files and add them to "
                          "the data directory")
    imp.add_argument("files", nargs="+", metavar="FILE",
                     help="registry files to import: IANA's CSV or XML, its text table, or a "
                     "services(5) file such as /etc/services")
    upd = rsub.add_parser(
        "update", parents=parents, help="download the official registry",
        description="Download IANA's registry, check it, and make it the one every later run "
        "reads (it replaces an earlier download; imported files stay). Nothing changes unless "
        f"the whole download arrives within --timeout, is at most {MAX_DOWNLOAD_BYTES >> 20} "
        "MiB, parses as the official CSV or XML with at most "
        f"{MAX_UPDATE_PROBLEMS} unreadable rows, has at least "
        f"{round(MIN_RECORD_RATIO * 100)}%% of the records of the current and the packaged "
        "registry, and is not older than either.")
    upd.add_argument("--url", default=DEFAULT_UPDATE_URL,
                     help="where to download from: IANA's XML or CSV over http(s), or a "
                     "file: URL of a copy fetched by other means (default: IANA's XML, "
                     f"{DEFAULT_UPDATE_URL})")
    upd.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                     help="give up when the whole download takes longer (default 60)")
    upd.add_argument("--force", action="store_true",
                     help="install a registry older than the current or the packaged one "
                     "(e.g. to go back to an earlier download); the other checks still apply")
    dif = rsub.add_parser("diff", parents=parents, help="changes between two snapshots")
    dif.add_argument("old", metavar="OLD",
                     help="the earlier registry snapshot (any format import reads)")
    dif.add_argument("new", metavar="NEW", help="the later registry snapshot")
    dif.add_argument("--json", action="store_true", help="one JSON object a change")


def run(ctx: Context, args: argparse.Namespace) -> int:
    handler = {"info": _info, "import": _import, "update": _update, "diff": _diff}
    return handler[args.registry_command](ctx, args)


def _info(ctx: Context, args: argparse.Namespace) -> int:
    selection = ctx.selection()
    table = ctx.table()
    stats = registry_stats(ctx.registry(), table)
    updated = table.last_updated
    doc: dict[str, Any] = {
        "origin": selection.origin,
        "snapshot": table.snapshot,
        "last_updated": updated.isoformat() if updated else None,
        "age_days": age_days(updated, ctx.today()),
        "assigned_only": table.assigned_only,
        **stats.as_dict(),
    }
    if args.json:
        print(json.dumps(doc, indent=2), file=ctx.stdout)
        return 0
    out = ctx.stdout
    origin_text = {
        "explicit": "named with --registry / PORTWATCH_REGISTRY",
        "data-dir": f"imported into {ctx.data_dir}",
        "packaged": f"the official IANA registry packaged with portwatch {__version__}",
    }.get(selection.origin, selection.origin)
    age = f" ({doc['age_days']} days ago)" if doc["age_days"] is not None else ""
    print(f"Registry answering: {table.snapshot}, last updated "
          f"{doc['last_updated'] or 'unknown'}{age}", file=out)
    print(f"\nSources ({origin_text}):", file=out)
    print(format_columns(
        ["SOURCE", "FORMAT", "LAST UPDATED", "RECORDS", "PROBLEMS"],
        [[s.label, s.format + (" (assigned ports only)" if s.assigned_only else ""),
          s.last_updated.isoformat() if s.last_updated else "unknown", str(s.records),
          str(s.problems)]
         for s in stats.sources]), file=out)
    if table.assigned_only:
        print("\nNote: these sources list assigned ports only; ports absent from them are "
              "reported 'unlisted', never 'unassigned'. Import the official registry "
              "(portwatch registry update) for full coverage.", file=out)
    print("\nRecords by kind:", file=out)
    print(format_columns(["KIND", "TRANSPORT", "RECORDS"],
                         [[k, t, str(n)] for (k, t), n
                          in sorted(stats.records_by_kind_and_transport.items())]), file=out)
    print("\nCoverage of ports 0-65535:", file=out)
    print(format_columns(
        ["TRANSPORT", "LISTED", "ASSIGNED", "RESERVED", "UNASSIGNED", "DYNAMIC", "UNLISTED"],
        [[t.label, *(str(c[k]) for k in ("listed", "assigned", "reserved", "unassigned",
                                         "dynamic", "unlisted"))]
         for t, c in stats.coverage.items()]), file=out)
    return 0


def _import(ctx: Context, args: argparse.Namespace) -> int:
    store = DataStore(ctx.data_dir)
    parsed = store.import_files(args.files)
    for source in parsed:
        for problem in source.problems:
            ctx.warn(f"{problem} (row skipped)")
        print(f"imported {source.info.path}: {source.info.format.value}, "
              f"{len(source.records)} records, last updated "
              f"{source.info.last_updated or 'unknown'}", file=ctx.stdout)
    return 0


def _update(ctx: Context, args: argparse.Namespace) -> int:
    url: str = args.url
    parsed = DataStore(ctx.data_dir).update_from(url, timeout=args.timeout, force=args.force)
    print(f"updated from {url}: {parsed.info.format.value}, {len(parsed.records)} records, "
          f"last updated {parsed.info.last_updated or 'unknown'}", file=ctx.stdout)
    return 0


def _change_line(change: Change) -> str:
    rec = change.record
    where = f"{rec.port_text or '-'}/{rec.transport.label if rec.transport else '-'}"
    name = rec.name or rec.description
    if change.kind is ChangeKind.RENAMED:
        assert change.old is not None
        return f"renamed    {where:<16} {change.old.name} -> {rec.name}"
    if change.kind is ChangeKind.CHANGED:
        return f"changed    {where:<16} {name} ({', '.join(change.fields)})"
    label = change.kind.value
    if change.kind is ChangeKind.ADDED and rec.kind is RecordKind.ASSIGNED:
        label = "assigned"
    return f"{label:<10} {where:<16} {name}"


def _diff(ctx: Context, args: argparse.Namespace) -> int:
    old, new = read_source(args.old), read_source(args.new)
    changes = diff_records(old.records, new.records)
    if args.json:
        for c in changes:
            rec = c.record
            print(json.dumps({
                "change": c.kind.value, "service": rec.name, "port": rec.port_text,
                "transport": rec.transport.label if rec.transport else "",
                "kind": rec.kind.value,
                "old_service": c.old.name if c.old else None,
                "fields": list(c.fields),
            }), file=ctx.stdout)
    else:
        for c in changes:
            print(_change_line(c), file=ctx.stdout)
    counts = Counter(c.kind.value for c in changes)
    summary = ", ".join(f"{counts.get(k.value, 0)} {k.value}" for k in ChangeKind)
    print(f"{args.old} -> {args.new}: {summary}", file=ctx.stderr)
    return 0
