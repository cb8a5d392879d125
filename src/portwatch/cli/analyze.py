"""``portwatch analyze``: read captures, name every flow's service, flag the rest.

Memory stays bounded on captures of millions of flows: each capture's flow
table is bounded by ``FlowLimits`` (the daemon's defaults), and the record
formats (``-f jsonl``, ``-f csv``) write each flow as it finishes instead of
holding them all for the report.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO, cast

from portwatch._terminal import Progress, should_color, terminal_width
from portwatch.analysis.filters import ReportFilter, apply_filters, parse_filters
from portwatch.analysis.flows import FlowLimits
from portwatch.analysis.render import OutputFormat, render
from portwatch.analysis.report import FlowReport, Report
from portwatch.analysis.run import (
    AnnotateRequest,
    DetectRequest,
    IntervalRequest,
    analyze_paths,
    check_output_path,
    expand_inputs,
    output_file,
    refuse_overwriting_inputs,
    write_output,
)
from portwatch.cli.common import Context
from portwatch.decode import ENGINES
from portwatch.errors import OutputError, UsageError

if TYPE_CHECKING:
    from portwatch.analysis.distributed import ClusterProgress
    from portwatch.analysis.live import LiveSnapshot

__all__ = ["add_parser", "run"]

#: Flow records in Parquet: a directory, not a rendering of the report.
PARQUET = "parquet"
#: How often a cluster run's progress line is printed when standard error is no terminal.
_LOG_EVERY_S = 10.0

#: Files smaller than this are read too fast for a progress bar to help.
_BAR_MIN_BYTES = 32 * 1024 * 1024
#: Formats that are one record per flow: written as flows finish, never held.
_RECORD_FORMATS = (OutputFormat.JSONL, OutputFormat.CSV)


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "analyze",
        parents=parents,
        help="analyse captures: services, flagged flows, annotated copies",
        description="Read pcap/pcapng captures (gzip too; '-' is standard input), find each "
        "flow's service port, count packets/bytes/flows per service and flag traffic on "
        "reserved, unassigned or unlisted ports.",
    )
    p.add_argument("captures", nargs="+", metavar="CAPTURE",
                   help="capture files, globs ('ring/*.pcapng', expanded in time order) or "
                   "fsspec URLs (file://, s3://, gs:// with their fsspec backends)")
    p.add_argument("--format", "-f", choices=[*(f.value for f in OutputFormat), PARQUET],
                   default=None,
                   help="output format (default: table on a terminal, json otherwise); "
                   "parquet writes flow records to the --output directory")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="write the report to FILE (atomically) instead of standard output "
                   "(a directory with -f parquet)")
    p.add_argument("--annotate", metavar="OUT.pcapng",
                   help="write a pcapng copy of the capture with a comment on every packet, "
                   "keeping its own comments and blocks ('-' is standard output; the report "
                   "then goes to standard error unless --output is given)")
    p.add_argument("--annotate-only-flagged", action="store_true",
                   help="with --annotate, comment only packets of flagged flows")
    p.add_argument("--top", type=int, metavar="N",
                   help="only the N busiest services and the first N flagged flows")
    p.add_argument("--filter", action="append", default=[], metavar="EXPR",
                   help="keep services/flows matching EXPR: status:S (assigned, reserved, "
                   "unassigned, dynamic, unlisted), service:NAME (or an alias, any case), "
                   "transport:T, port:N or port:N-M, flagged (repeatable: all must match; "
                   "totals count only what is kept)")
    p.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                   help="analyse several captures in N parallel processes on this machine "
                   "(a process pool: no dask needed, starts in a tenth of the time of "
                   "--scheduler local:N)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT|local:N", default=None,
                   help="run the per-capture work on a Dask cluster (the dask extra): a "
                   "scheduler's address, or local:N worker processes started for this run")
    p.add_argument("--resume", metavar="DIR", default=None,
                   help="write flow records to DIR as Parquet (-f parquet -o DIR) and skip "
                   "captures an earlier run of DIR already read (same name, size and mtime)")
    p.add_argument("--spool-dir", metavar="DIR", default=None,
                   help="where to copy standard input or a FIFO when it must be read twice "
                   "(--annotate, --jobs, --engine scapy/pyshark; default $TMPDIR)")
    p.add_argument("--engine", choices=ENGINES, default="native",
                   help="packet dissector: portwatch's own (fast), scapy or tshark (pyshark)")
    p.add_argument("--detect", action="store_true",
                   help="ask nDPI what each flow's payload is (its first packets) and flag "
                   "flows whose protocol is not the one IANA assigns to the port "
                   "(needs nfstream: pip install 'portwatch[detect]')")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    p.add_argument("--interval", type=float, metavar="SECONDS", default=None,
                   help="while reading, print a summary every SECONDS (rates over those "
                   "seconds, busiest services, flagged ports): for a stream such as "
                   "'tcpdump -w - | portwatch analyze --interval 10 -'. It goes to standard "
                   "error, or to standard output when --output takes the report")


class _ProgressBar:
    """One progress line on standard error per big file, redrawn in place on a terminal."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self._lines: dict[str, Progress] = {}

    def __call__(self, name: str, done: int, total: int) -> None:
        if total < _BAR_MIN_BYTES:
            return
        line = self._lines.get(name)
        if line is None:
            for other in self._lines.values():
                other.close()
            line = self._lines[name] = Progress(sys.stderr, os.path.basename(name), total,
                                                env=self._env)
        line.update(done, force=done >= total)

    def close(self) -> None:
        for line in self._lines.values():
            line.close()


class _ClusterProgressLine:
    """Captures done, bytes and packets/s: redrawn on a terminal, else a line every 10 s."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last = 0.0
        self._drawn = False

    def __call__(self, progress: ClusterProgress) -> None:
        now = time.monotonic()
        final = progress.captures_done == progress.captures_total
        line = f"portwatch: {progress.line()}"
        if self._tty:
            self._stream.write("\r\x1b[K" + line + ("\n" if final else ""))
            self._drawn = not final
        elif final or now - self._last >= _LOG_EVERY_S:
            self._stream.write(line + "\n")
            self._last = now
        self._stream.flush()

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()


def _check_args(args: argparse.Namespace) -> None:
    if args.annotate_only_flagged and not args.annotate:
        raise UsageError("--annotate-only-flagged needs --annotate OUT.pcapng")
    if args.top is not None and args.top < 1:
        raise UsageError(f"--top takes a positive number, not {args.top}")
    if args.resume is not None:
        if args.format not in (None, PARQUET) or args.output not in (None, args.resume):
            raise UsageError("--resume DIR writes Parquet to DIR: it takes no other "
                             "--format or --output")
        args.format, args.output = PARQUET, args.resume
    if args.format == PARQUET:
        if not args.output:
            raise UsageError("-f parquet writes a directory: give it with --output DIR")
        if os.path.exists(args.output) and not os.path.isdir(args.output):
            raise OutputError("exists and is not a directory; -f parquet writes a directory",
                              path=args.output)
    outputs = [o for o in (args.annotate,) if o and o != "-"]
    if args.format != PARQUET and args.output:
        outputs.append(args.output)
    refuse_overwriting_inputs(args.captures, outputs)
    for out in outputs:
        check_output_path(out)


def _binary_stdout(ctx: Context) -> BinaryIO:
    """Standard output for ``--annotate -``: never a terminal (it would get pcapng bytes)."""
    if ctx.stdout.isatty():
        raise UsageError("--annotate -: refusing to write a capture to a terminal; "
                         "redirect standard output to a file or a pipe")
    buffer = getattr(ctx.stdout, "buffer", None)
    if buffer is None:
        raise UsageError("--annotate -: standard output takes no bytes here")
    return cast(BinaryIO, buffer)


def _interval(ctx: Context, args: argparse.Namespace) -> IntervalRequest:
    """Summaries on standard error, or standard output when the report goes to a file."""
    from portwatch.cli.top import render_summary  # the terminal UI: only for --interval

    stream = ctx.stdout if args.output else ctx.stderr
    width = terminal_width(stream, ctx.env)
    color = should_color(stream, ctx.env)

    def emit(snap: LiveSnapshot) -> None:
        stream.write(render_summary(snap, width=width, color=color,
                                    clock_text=datetime.now().strftime("%H:%M:%S")))
        stream.flush()

    return IntervalRequest(args.interval, emit)


class _RecordWriter:
    """The record sink of ``-f jsonl``/``-f csv``: filtered, rendered and written per chunk.

    Output is what rendering the whole report would give: the same filter, the
    same ``--top`` (every unflagged flow and the first N flagged ones), one CSV
    header. ``out`` is the ``-o`` file, else standard output.
    """

    def __init__(self, ctx: Context, out: BinaryIO | None, fmt: OutputFormat,
                 filters: Sequence[ReportFilter], top: int | None) -> None:
        self._ctx, self._out, self._fmt = ctx, out, fmt
        self._filters = filters
        self._flagged_left = top
        self._started = False  # a CSV header is written with the first chunk only

    def __call__(self, flows: list[FlowReport]) -> None:
        kept = apply_filters(Report([], 0, 0, [], flows, {}, {}), self._filters).flows
        if self._flagged_left is not None:
            kept = [f for f in kept if not f.flagged or self._take_flagged()]
        if kept:
            self._write(kept)

    def _take_flagged(self) -> bool:
        assert self._flagged_left is not None
        self._flagged_left -= 1
        return self._flagged_left >= 0

    def _write(self, flows: list[FlowReport]) -> None:
        text = render(Report([], 0, 0, [], flows, {}, {}), self._fmt)
        if self._started and self._fmt is OutputFormat.CSV:
            text = text.partition("\n")[2]
        self._started = True
        if self._out is not None:
            self._out.write(text.encode())
        else:
            _print(self._ctx, text)

    def close(self) -> None:
        """A CSV of no flow is still its header."""
        if not self._started and self._fmt is OutputFormat.CSV:
            self._write([])


def run(ctx: Context, args: argparse.Namespace) -> int:
    _check_args(args)
    capture_out = _binary_stdout(ctx) if args.annotate == "-" else None
    if capture_out is not None and not args.output:
        ctx.stdout = ctx.stderr  # standard output carries the capture: the report goes here
    parquet = args.format == PARQUET
    fmt = OutputFormat.JSONL if parquet else OutputFormat(args.format) if args.format else (
        OutputFormat.TABLE if ctx.stdout.isatty() and not args.output else OutputFormat.JSON)
    table = ctx.table()
    filters = parse_filters(args.filter, table)
    annotate = AnnotateRequest(args.annotate, args.annotate_only_flagged) \
        if args.annotate else None
    detect = DetectRequest(directory=args.spool_dir) if args.detect else None
    bar = _ProgressBar(ctx.env) if not args.no_progress and sys.stderr.isatty() else None
    interval = _interval(ctx, args) if args.interval is not None else None
    if interval is not None:
        bar = None  # the summaries and a redrawn bar would overwrite each other
    cluster_bar = _ClusterProgressLine(ctx.stderr) \
        if args.scheduler and not args.no_progress else None
    with contextlib.ExitStack() as stack:
        records = None
        if fmt in _RECORD_FORMATS and not parquet:  # written while the captures are read
            out = stack.enter_context(output_file(args.output)) if args.output else None
            records = _RecordWriter(ctx, out, fmt, filters, args.top)
        try:
            result = analyze_paths(expand_inputs(args.captures), table, jobs=args.jobs,
                                   engine=args.engine, progress=bar, annotate=annotate,
                                   spool_dir=args.spool_dir, stdout=capture_out,
                                   interval=interval, detect=detect,
                                   limits=None if parquet else FlowLimits(),
                                   records=records, scheduler=args.scheduler,
                                   cluster_progress=cluster_bar, resume_dir=args.resume)
        finally:
            if bar is not None:
                bar.close()
            if cluster_bar is not None:
                cluster_bar.close()
        if result.report is None:
            for failure in result.failures[1:]:
                ctx.warn(f"skipped: {failure}")
            raise result.failures[0]
        report = result.report
        for warning in report.warnings:
            ctx.warn(warning)
        if records is not None:
            records.close()
            return 1 if report.partial else 0
    if parquet:
        from portwatch.analysis.parquet import write_parquet

        write_parquet(apply_filters(report, filters, top=args.top), args.output)
        return 1 if report.partial else 0
    to_terminal = not args.output
    text = render(_shown(report, filters, args.top), fmt,
                  width=terminal_width(ctx.stdout, ctx.env) if to_terminal else None,
                  color=should_color(ctx.stdout, ctx.env) if to_terminal else False)
    if args.output:
        write_output(args.output, text.encode())
    else:
        _print(ctx, text)
    return 1 if report.partial else 0


def _shown(report: Report, filters: Sequence[ReportFilter], top: int | None) -> Report:
    """``apply_filters``, keeping a bounded report's exact flow count.

    A bounded report lists only some flows; the flows a filter keeps are
    counted from the services it keeps (a flow's service fields are its
    service's).
    """
    shown = apply_filters(report, filters, top=top)
    if report.flow_total is not None:
        shown.flow_total = sum(s.flows for s in report.services
                               if all(f.keeps_service(s) for f in filters))
    return shown


def _print(ctx: Context, text: str) -> None:
    """The report on standard output; a full disk there is one line, not a traceback."""
    try:
        ctx.stdout.write(text)
        ctx.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        if ctx.stdout is sys.stdout:  # the interpreter's last flush would fail again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        raise OutputError(f"cannot write the report: {exc.strerror or exc}",
                          path="standard output") from exc
