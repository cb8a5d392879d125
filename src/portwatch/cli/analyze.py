"""``portwatch analyze``: read captures, name every flow's service, flag the rest."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from portwatch import decode as engines
from portwatch._atomic import atomic_output
from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.render import OutputFormat, render
from portwatch.analysis.report import Report, merge_reports
from portwatch.capture.batch import PacketBatch
from portwatch.capture.files.reader import CaptureReader, read_capture_path
from portwatch.cli.common import Context
from portwatch.errors import CaptureError, CaptureFormatError, CaptureTruncatedError, UsageError
from portwatch.porttable.cache import load_table
from portwatch.porttable.table import PortTable

__all__ = ["add_parser", "run"]

ENGINES = ("native", "scapy", "pyshark")


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "analyze",
        parents=parents,
        help="analyse captures: services, flagged flows, annotated copies",
        description="Read pcap/pcapng captures (gzip too; '-' is standard input), find each "
        "flow's service port, count packets/bytes/flows per service and flag traffic on "
        "reserved, unassigned or unlisted ports.",
    )
    p.add_argument("captures", nargs="+", metavar="CAPTURE")
    p.add_argument("--format", "-f", choices=[f.value for f in OutputFormat], default=None,
                   help="output format (default: table on a terminal, json otherwise)")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="write the report to FILE (atomically) instead of standard output")
    p.add_argument("--annotate", metavar="OUT.pcapng",
                   help="write a copy of the capture with a comment on every packet")
    p.add_argument("--annotate-only-flagged", action="store_true",
                   help="with --annotate, comment only packets of flagged flows")
    p.add_argument("--top", type=int, metavar="N",
                   help="only the N busiest services and the first N flagged flows")
    p.add_argument("--filter", action="append", default=[], metavar="EXPR",
                   help="keep services/flows matching EXPR: status:S, service:NAME, "
                   "transport:T, port:N, flagged (repeatable: all must match)")
    p.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                   help="analyse several captures in N parallel processes")
    p.add_argument("--engine", choices=ENGINES, default="native",
                   help="packet dissector: portwatch's own (fast), scapy or tshark (pyshark)")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")


@dataclass(frozen=True, slots=True)
class _Filter:
    field: str
    value: str

    def matches(self, item: Any) -> bool:
        if self.field == "flagged":
            return bool(getattr(item, "flags", None))
        attr = {"port": "port" if hasattr(item, "port") else "service_port"}.get(
            self.field, self.field)
        return str(getattr(item, attr, "")).lower() == self.value.lower()


def _parse_filters(exprs: list[str]) -> list[_Filter]:
    out = []
    for expr in exprs:
        key, sep, value = expr.partition(":")
        if not sep:
            key, sep, value = expr.partition("=")
        key = key.strip().lower()
        if key == "flagged" and not sep:
            out.append(_Filter("flagged", ""))
        elif sep and key in ("status", "service", "transport", "port") and value:
            out.append(_Filter(key, value.strip()))
        else:
            raise UsageError(f"bad --filter {expr!r}: expected status:S, service:NAME, "
                             "transport:T, port:N or flagged")
    return out


def _open(path: str) -> CaptureReader:
    try:
        return read_capture_path(path)
    except OSError as exc:
        raise CaptureFormatError(f"cannot read: {exc.strerror or exc}", path=path) from None


def _progress(reader: CaptureReader, path: str, enabled: bool) -> Iterator[PacketBatch]:
    """Batches of ``reader``, with a progress bar on a terminal for big files."""
    size = os.path.getsize(path) if path != "-" and os.path.isfile(path) else 0
    if not enabled or size < 32 * 1024 * 1024 or reader.compressed:
        yield from reader
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), console=None, transient=True) as bar:
        task = bar.add_task(os.path.basename(path), total=size)
        for batch in reader:
            if len(batch):
                bar.update(task, completed=int(batch.file_offsets[-1]))
            yield batch


def _analyze_native(table: PortTable, path: str, progress: bool) -> Analyzer:
    analyzer = Analyzer(table, capture=path)
    reader = _open(path)
    try:
        for batch in _progress(reader, path, progress):
            analyzer.feed(batch)
    except CaptureTruncatedError as exc:
        analyzer.note_damage(str(exc))
    finally:
        reader.close()
    return analyzer


def _analyze_engine(table: PortTable, path: str, engine: str) -> Analyzer:
    analyzer = Analyzer(table, capture=path)
    iter_decoded = engines.engine(engine)
    try:
        for decoded, ts in iter_decoded(path, 4096):
            analyzer.feed_decoded(decoded, ts)
    except CaptureTruncatedError as exc:
        analyzer.note_damage(str(exc))
    return analyzer


def _analyze_one(table: PortTable, path: str, engine: str, progress: bool) -> Analyzer:
    if engine == "native":
        return _analyze_native(table, path, progress)
    return _analyze_engine(table, path, engine)


def _worker(paths: tuple[str, ...], cache: str | None, path: str, engine: str) -> Report:
    """A ``--jobs`` worker: loads the (cached) table itself, returns a picklable report."""
    from pathlib import Path

    table = load_table(paths, cache=Path(cache) if cache else None).table
    try:
        return _analyze_one(table, path, engine, False).report()
    except CaptureFormatError as exc:
        return Report([path], 0, 0, [], [], {}, {}, [f"error: {exc}"], partial=True)


def _spool_stdin() -> str:
    """Annotation reads the capture twice: keep standard input in a temp file."""
    fd, tmp = tempfile.mkstemp(prefix="portwatch-stdin-", suffix=".cap")
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(sys.stdin.buffer, out, 1024 * 1024)
    return tmp


def _filtered(report: Report, filters: list[_Filter], top: int | None) -> Report:
    services = [s for s in report.services if all(f.matches(s) for f in filters)]
    flows = [f for f in report.flows if all(flt.matches(f) for flt in filters)]
    if top is not None:
        services = services[:top]
        flagged = [f for f in flows if f.flagged][:top]
        keep = {id(f) for f in flagged}
        flows = [f for f in flows if not f.flagged or id(f) in keep]
    return Report(report.captures, report.packets, report.bytes, services, flows,
                  report.decode, report.registry, report.warnings, report.partial)


def run(ctx: Context, args: argparse.Namespace) -> int:
    filters = _parse_filters(args.filter)
    if args.top is not None and args.top < 1:
        raise UsageError(f"--top takes a positive number, not {args.top}")
    if args.jobs < 1:
        raise UsageError(f"--jobs takes a positive number, not {args.jobs}")
    if args.annotate and len(args.captures) != 1:
        raise UsageError("--annotate takes exactly one capture")
    if args.annotate_only_flagged and not args.annotate:
        raise UsageError("--annotate-only-flagged needs --annotate OUT.pcapng")
    if args.annotate and args.engine != "native":
        raise UsageError("--annotate works with the native engine only")
    if args.captures.count("-") > 1:
        raise UsageError("standard input ('-') can be read only once")
    fmt = OutputFormat(args.format) if args.format else (
        OutputFormat.TABLE if ctx.stdout.isatty() and not args.output else OutputFormat.JSON)
    progress = not args.no_progress and sys.stderr.isatty()

    loaded = ctx.loaded()
    table = loaded.table
    spooled: str | None = None
    captures = list(args.captures)
    if args.annotate and captures == ["-"]:
        spooled = captures[0] = _spool_stdin()
    try:
        report = _run_analysis(ctx, args, table, captures, progress)
    finally:
        if spooled:
            os.unlink(spooled)
    if spooled:
        report.captures = ["-"]
        for flow in report.flows:
            flow.capture = "-"
    for warning in report.warnings:
        ctx.warn(warning)
    text = render(_filtered(report, filters, args.top), fmt)
    if args.output:
        with atomic_output(args.output) as out:
            out.write(text.encode())
    else:
        ctx.stdout.write(text)
        ctx.stdout.flush()
    return 1 if report.partial else 0


def _run_analysis(ctx: Context, args: argparse.Namespace, table: PortTable,
                  captures: list[str], progress: bool) -> Report:
    if args.jobs > 1 and len(captures) > 1 and "-" not in captures:
        from concurrent.futures import ProcessPoolExecutor  # only --jobs pays for it

        from portwatch._paths import cache_dir

        cache = str(cache_dir(ctx.env)) if ctx.use_cache else None
        paths = ctx.selection().paths
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            reports = list(pool.map(_worker, [paths] * len(captures), [cache] * len(captures),
                                    captures, [args.engine] * len(captures)))
        errors = [w for r in reports for w in r.warnings if w.startswith("error: ")]
        if errors and len(errors) == len(captures):
            raise CaptureFormatError(errors[0].removeprefix("error: "))
        return merge_reports(reports)
    reports = []
    failures: list[CaptureError] = []
    for path in captures:
        try:
            analyzer = _analyze_one(table, path, args.engine, progress)
        except CaptureFormatError as exc:
            if len(captures) == 1:
                raise
            failures.append(exc)
            continue
        if args.annotate:
            _annotate(analyzer, path, args.annotate, args.annotate_only_flagged)
        reports.append(analyzer.report())
    if not reports:
        raise failures[0]
    merged = merge_reports(reports) if len(reports) > 1 else reports[0]
    for failure in failures:
        merged.warnings.append(f"skipped: {failure}")
        merged.partial = True
    return merged


def _annotate(analyzer: Analyzer, path: str, out_path: str, only_flagged: bool) -> None:
    from portwatch.analysis.annotated_copy import (
        write_annotated,  # only --annotate pays for the writer
    )
    from portwatch.capture.files.writer import PcapngWriter

    reader = _open(path)
    try:
        with atomic_output(out_path) as out:
            writer = PcapngWriter(out)
            with contextlib.suppress(CaptureTruncatedError):  # reported by the first pass
                write_annotated(analyzer, reader, writer, only_flagged=only_flagged,
                                interfaces_of=reader)
    finally:
        reader.close()
