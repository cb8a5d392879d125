"""``portwatch top``: a full-screen live view of services by rate and flagged ports.

Like iftop or htop: the screen is redrawn every second (``--refresh``) from a
:class:`~portwatch.analysis.live.LiveSummary` that a capture thread feeds.
The source is a live capture (``-i IFACE`` with any daemon backend, made by
the daemon's own ``make_source``), a replayed file (``--replay FILE``, paced
as recorded) or a capture stream (``-`` for standard input, or a FIFO).

The screen is drawn with plain ANSI sequences on the controlling terminal
(``/dev/tty``, so standard input can carry the capture), every line placed
by cursor position and cut to the terminal's width by the shared table
renderer, so no line ever wraps. ``--detect`` adds nDPI's verdict per service
(a DETECTED column: confirmed, ``mismatch: ssh``, unconfirmed) and lists a
mismatch among the flagged ports, as ``analyze --detect`` and the daemon's
``[detect]`` do; without nDPI it exits 2 with the install hint.

``q`` (or Ctrl-C) quits with status 0; a resize (SIGWINCH) redraws at once at
the new size. Colours follow the shared rules (``NO_COLOR``, ``TERM=dumb``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO

from portwatch._terminal import STATUS_COLORS, Align, Column, fit, render_table, should_color
from portwatch.analysis.flows import FlowLimits
from portwatch.analysis.live import DEFAULT_WINDOW_S, LiveSnapshot, LiveSummary, ServiceRate
from portwatch.capture.batch import PacketBatch
from portwatch.capture.files.reader import open_capture
from portwatch.capture.live.source import PacketSource
from portwatch.cli.common import Context
from portwatch.errors import PortwatchError, UsageError

__all__ = ["add_parser", "format_bytes", "format_rate", "render_screen", "render_summary",
           "run"]

_LIVE_BACKENDS = ("dumpcap", "scapy", "pyshark")
_SNAPLEN = 128  # headers: enough to name a service
#: ``--detect`` on a live interface: enough of each packet for nDPI to read a TLS
#: ClientHello or an HTTP request line (the daemon refuses below 512).
_DETECT_SNAPLEN = 2048
#: How long quitting waits for the capture thread to end after its source was closed.
_JOIN_S = 5.0
_SERVICE_COLUMNS = (
    Column("PORT", priority=10),
    Column("SERVICE", priority=7, shrink=True, min_width=6),
    Column("STATUS", priority=8, colors=STATUS_COLORS),
    Column("PKT/S", priority=9, align=Align.RIGHT),
    Column("BYTES/S", priority=9, align=Align.RIGHT),
    Column("PACKETS", priority=5, align=Align.RIGHT),
    Column("BYTES", priority=4, align=Align.RIGHT),
    Column("FLOWS", priority=3, align=Align.RIGHT),
)
#: With ``--detect``: nDPI's verdict, after STATUS (it says what the port carries).
_DETECTED_COLUMN = Column("DETECTED", priority=8, shrink=True, min_width=9)
_FLAGGED_COLUMNS = (
    Column("PORT", priority=10),
    Column("STATUS", priority=9, colors=STATUS_COLORS),
    Column("PKT/S", priority=7, align=Align.RIGHT),
    Column("PACKETS", priority=6, align=Align.RIGHT),
    Column("SEEN", priority=5, align=Align.RIGHT),
    Column("SERVICE", priority=2, shrink=True, min_width=6),
    Column("WHY", priority=8, shrink=True, min_width=12),
)


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "top",
        parents=parents,
        help="live full-screen view of services by rate and flagged ports",
        description="A live view like iftop: services by packets/s and bytes/s and the "
        "flagged ports, redrawn every second and fitted to the terminal. Read from an "
        "interface (-i), a replayed file (--replay) or a capture stream ('-' is standard "
        "input). Keys: q quits.",
    )
    p.add_argument("capture", nargs="?", metavar="CAPTURE",
                   help="a capture stream to read as it comes: '-' for standard input "
                   "(e.g. tcpdump -w - | portwatch top -), or a FIFO")
    p.add_argument("-i", "--interface", action="append", default=[], metavar="IFACE",
                   help="capture live on IFACE (repeatable)")
    p.add_argument("--backend", choices=_LIVE_BACKENDS, default="dumpcap",
                   help="live capture backend, as the daemon's (default dumpcap)")
    p.add_argument("--bpf", default="", metavar="FILTER",
                   help="capture filter in BPF syntax for -i (e.g. 'not port 22')")
    p.add_argument("--snaplen", type=int, default=None, metavar="BYTES",
                   help=f"bytes kept per packet in a live capture (default {_SNAPLEN}: "
                   f"headers; {_DETECT_SNAPLEN} with --detect)")
    p.add_argument("--replay", action="append", default=[], metavar="FILE",
                   help="play FILE back as if live, keeping its recorded pace (repeatable)")
    p.add_argument("--speed", type=float, default=1.0, metavar="X",
                   help="with --replay: play X times faster (0: as fast as possible)")
    p.add_argument("--window", type=float, default=DEFAULT_WINDOW_S, metavar="SECONDS",
                   help=f"average rates over the last SECONDS (default {DEFAULT_WINDOW_S:g})")
    p.add_argument("--refresh", type=float, default=1.0, metavar="SECONDS",
                   help="redraw every SECONDS (default 1)")
    p.add_argument("--detect", action="store_true",
                   help="have nDPI read the first packets of each flow and show whether the "
                   "payload confirms the port's assignment; a mismatch is flagged "
                   "(needs nfstream: pip install 'portwatch[detect]'; with -i, a backend "
                   "that keeps payloads: dumpcap or pyshark)")


# -- formatting -------------------------------------------------------------------------------

def format_rate(value: float) -> str:
    """``950``, ``12.3k``, ``4.5M``: short enough for a narrow column."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"


def format_bytes(value: float) -> str:
    """Bytes with a decimal unit: ``512 B``, ``1.5 kB``, ``3.2 MB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f} B"


def _ago(seconds: float) -> str:
    if seconds < 1:
        return "now"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def _service_table(snap: LiveSnapshot,
                   services: Sequence[ServiceRate]) -> tuple[tuple[Column, ...], list[list[str]]]:
    """The services' columns and rows; with detection, nDPI's verdict after STATUS."""
    rows = [[s.label, s.service or "-", s.status.label, format_rate(s.packets_per_s),
             format_bytes(s.bytes_per_s), f"{s.packets:,}", format_bytes(s.bytes),
             f"{s.flows:,}"] for s in services]
    if not snap.detecting:
        return _SERVICE_COLUMNS, rows
    for row, s in zip(rows, services, strict=True):
        row.insert(3, s.detection or "-")
    return (*_SERVICE_COLUMNS[:3], _DETECTED_COLUMN, *_SERVICE_COLUMNS[3:]), rows


def render_screen(snap: LiveSnapshot, *, width: int, height: int, color: bool, title: str,
                  status: str = "") -> list[str]:
    """The lines of one screen, none longer than ``width``, at most ``height`` of them.

    A header (source, totals), the services by rate and the flagged ports;
    the flagged ports get up to half of the rows left when both need more
    than there is. The last line is a key hint and ``status`` (why the
    capture stopped, if it did).
    """
    width, height = max(width, 1), max(height, 1)
    head = [
        title,
        f"{format_rate(snap.packets_per_s)} pkt/s  {format_bytes(snap.bytes_per_s)}/s  over "
        f"{snap.window_s:.0f}s   total {snap.packets:,} packets  {format_bytes(snap.bytes)}"
        + (f"   no ports: {', '.join(f'{k} {v:,}' for k, v in snap.portless.items())}"
           if snap.portless else ""),
    ]
    foot = "q quit" + (f"   {status}" if status else "")
    service_columns, services = _service_table(snap, snap.services)
    flagged = [[f.label, f.status.label, format_rate(f.packets_per_s), f"{f.packets:,}",
                _ago(f.last_seen_s), f.service or "-", f.why] for f in snap.flagged]
    # rows for table bodies: the screen less header (2), blank lines, titles, table headers, foot
    room = height - len(head) - 1 - 2 - 2 - 1 - 1
    flag_rows = min(len(flagged), max(room - len(services), room // 2, 0))
    service_rows = max(room - flag_rows, 0)
    lines = [fit(line, width) for line in head]
    lines.append("")
    lines.append(fit(f"SERVICES BY RATE ({len(services):,})", width))
    lines.extend(render_table(service_columns, services[:service_rows], width=width,
                              color=color).split("\n"))
    lines.append("")
    lines.append(fit(f"FLAGGED PORTS ({len(flagged):,})", width))
    if flagged:
        lines.extend(render_table(_FLAGGED_COLUMNS, flagged[:flag_rows], width=width,
                                  color=color).split("\n"))
    else:
        lines.append(fit("none so far", width))
    lines = lines[: height - 1]
    lines.extend([""] * (height - 1 - len(lines)))
    lines.append(fit(foot, width))
    return lines


def render_summary(snap: LiveSnapshot, *, width: int | None, color: bool, limit: int = 10,
                   clock_text: str = "") -> str:
    """The periodic summary ``analyze --interval`` prints: a totals line and two tables.

    The ``limit`` busiest services and most recent flagged ports; ``width``
    None (a pipe or a file) shortens nothing. Ends with a blank line.
    """
    head = (f"[{clock_text}] " if clock_text else "") + (
        f"{format_rate(snap.packets_per_s)} pkt/s  {format_bytes(snap.bytes_per_s)}/s over "
        f"the last {snap.window_s:.0f}s; total {snap.packets:,} packets "
        f"{format_bytes(snap.bytes)}; {len(snap.services):,} services, "
        f"{len(snap.flagged):,} flagged ports")
    parts = [fit(head, width)]
    if snap.services:
        columns, rows = _service_table(snap, snap.services[:limit])
        parts.append(render_table(columns, rows, width=width, color=color))
    if snap.flagged:
        rows = [[f.label, f.status.label, format_rate(f.packets_per_s), f"{f.packets:,}",
                 _ago(f.last_seen_s), f.service or "-", f.why] for f in snap.flagged[:limit]]
        parts.append(render_table(_FLAGGED_COLUMNS, rows, width=width, color=color))
    return "\n".join(parts) + "\n\n"


# -- sources ----------------------------------------------------------------------------------

@dataclass(slots=True)
class _StreamSource:
    """A capture read from a stream as it comes (standard input, a FIFO)."""

    stream: BinaryIO
    name: str
    backend: str = "stream"
    finite: bool = True

    def batches(self) -> Iterator[PacketBatch]:
        reader = open_capture(self.stream, self.name, 4096)
        yield from reader

    def interface_names(self) -> Sequence[str]:
        return ()

    def dropped(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        """Nothing to stop: the reading thread ends with the stream or the process."""


def _make_source(args: argparse.Namespace, stdin: BinaryIO) -> tuple[PacketSource, str]:
    if args.capture is not None:
        # Unbuffered: a buffered stream's lock, held by the reading thread blocked in
        # read(), aborts the interpreter at exit ("could not acquire lock ... at shutdown").
        if args.capture == "-":
            return _StreamSource(open(os.dup(stdin.fileno()), "rb", buffering=0), "-"), \
                "standard input"
        try:
            stream = open(args.capture, "rb", buffering=0)  # noqa: SIM115 - read until exit
        except OSError as exc:
            raise UsageError(f"top: cannot read {args.capture!r}: {exc.strerror or exc}") \
                from None
        return _StreamSource(stream, args.capture), args.capture
    from portwatch.daemon.config import Backend, CaptureConfig, DaemonConfig
    from portwatch.daemon.supervisor import make_source

    if args.replay:
        if args.speed < 0:
            raise UsageError(f"top: --speed takes 0 or more, not {args.speed}")
        config = CaptureConfig(backend=Backend.REPLAY, replay_files=tuple(args.replay),
                               replay_speed=args.speed)
        label = "replay " + ", ".join(args.replay)
    else:
        snaplen = _snaplen(args)
        config = CaptureConfig(backend=Backend(args.backend), interfaces=tuple(args.interface),
                               bpf_filter=args.bpf, snaplen=snaplen)
        label = f"{args.backend} on {', '.join(args.interface)}"
    return make_source(DaemonConfig(capture=config)), label


@dataclass(slots=True)
class _Feeder:
    """The capture thread: source batches into the summary, under a lock."""

    source: PacketSource
    summary: LiveSummary
    clock: Callable[[], float]
    lock: threading.Lock = field(default_factory=threading.Lock)
    status: str = ""

    def run(self) -> None:
        try:
            for batch in self.source.batches():
                with self.lock:
                    self.summary.feed(batch, self.clock())
            with self.lock:  # nDPI's verdict on the flows it was still reading
                self.summary.close()
            self.status = "capture finished"
        except PortwatchError as exc:
            self.status = f"capture stopped: {exc}"
        except OSError as exc:
            self.status = f"capture stopped: {exc.strerror or exc}"

    def snapshot(self) -> LiveSnapshot:
        with self.lock:
            return self.summary.snapshot(self.clock())


# -- the terminal -----------------------------------------------------------------------------

class _Terminal:
    """The controlling terminal in cbreak mode on the alternate screen; restored on exit."""

    def __init__(self, env: dict[str, str] | Any) -> None:
        try:
            self.fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as exc:
            raise UsageError(
                f"top needs a terminal (/dev/tty: {exc.strerror or exc}); for a summary of a "
                "stream without one, use: portwatch analyze --interval SECONDS -") from None
        with open(self.fd, "w", encoding="utf-8", closefd=False) as text:
            self.color = should_color(text, env)
        self._saved = termios.tcgetattr(self.fd)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self.resized = True

    @contextlib.contextmanager
    def active(self) -> Iterator[_Terminal]:
        previous_wakeup = -1
        previous_winch = signal.getsignal(signal.SIGWINCH)
        try:
            tty.setcbreak(self.fd)
            self._write("\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J")
            signal.signal(signal.SIGWINCH, self._on_resize)
            previous_wakeup = signal.set_wakeup_fd(self._wake_w)
            yield self
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            signal.signal(signal.SIGWINCH, previous_winch)
            with contextlib.suppress(OSError):
                self._write("\x1b[?25h\x1b[?1049l")
            termios.tcsetattr(self.fd, termios.TCSAFLUSH, self._saved)
            os.close(self._wake_r)
            os.close(self._wake_w)
            os.close(self.fd)

    def _on_resize(self, signum: int, frame: object) -> None:
        self.resized = True

    def size(self) -> tuple[int, int]:
        size = os.get_terminal_size(self.fd)
        return size.columns, size.lines

    def draw(self, lines: Sequence[str]) -> None:
        """Each line at its row, the rest of the row cleared: nothing scrolls or wraps."""
        out = ["\x1b[H"]
        out.extend(f"\x1b[{row};1H{line}\x1b[0m\x1b[K" for row, line in enumerate(lines, 1))
        out.append("\x1b[J")
        self._write("".join(out))

    def _write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        while data:
            data = data[os.write(self.fd, data):]

    def key(self, timeout: float) -> str:
        """A key pressed within ``timeout`` seconds ("" if none, or on a resize)."""
        ready, _, _ = select.select([self.fd, self._wake_r], [], [], max(timeout, 0.0))
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 512)
        if self.fd in ready:
            return os.read(self.fd, 64).decode("utf-8", "replace")
        return ""


def _snaplen(args: argparse.Namespace) -> int:
    """``--snaplen``, or its default: headers, or enough payload for nDPI with ``--detect``."""
    from portwatch.daemon.config import DETECT_MIN_SNAPLEN

    if args.snaplen is None:
        return _DETECT_SNAPLEN if args.detect else _SNAPLEN
    if not 1 <= args.snaplen <= 262_144:
        raise UsageError(f"top: --snaplen takes 1-262144, not {args.snaplen}")
    if args.detect and args.snaplen < DETECT_MIN_SNAPLEN:
        raise UsageError(f"top: --detect needs --snaplen >= {DETECT_MIN_SNAPLEN} (nDPI reads "
                         f"payloads), not {args.snaplen}")
    return int(args.snaplen)


def _check_detect(args: argparse.Namespace) -> None:
    """``--detect``: nDPI is there (else exit 2 with the install hint), the backend keeps
    payloads, and the snapshot length leaves some."""
    from portwatch.analysis.detect import require_ndpi
    from portwatch.daemon.config import DETECT_BACKENDS, Backend

    require_ndpi()
    if args.interface and Backend(args.backend) not in DETECT_BACKENDS:
        raise UsageError(f"top: --detect needs a backend that hands over payloads "
                         f"({', '.join(sorted(b.value for b in DETECT_BACKENDS))}), "
                         f"not {args.backend}")
    if args.interface:
        _snaplen(args)


def _check(args: argparse.Namespace) -> None:
    given = [bool(args.interface), bool(args.replay), args.capture is not None]
    if sum(given) != 1:
        raise UsageError("top: give exactly one of -i IFACE, --replay FILE or a capture "
                         "stream (CAPTURE, '-' for standard input)")
    if not args.window > 0:
        raise UsageError(f"top: --window takes a positive number of seconds, not {args.window}")
    if not args.refresh >= 0.1:
        raise UsageError(f"top: --refresh takes 0.1 seconds or more, not {args.refresh}")
    if args.detect:
        _check_detect(args)


def run(ctx: Context, args: argparse.Namespace) -> int:
    _check(args)
    table = ctx.table()
    source, label = _make_source(args, sys.stdin.buffer)
    clock = time.monotonic
    summary: LiveSummary | None = None
    try:
        summary = LiveSummary(table, window_s=args.window, limits=FlowLimits(), start=clock(),
                              detect=args.detect)
        term = _Terminal(ctx.env)
    except BaseException:
        source.close()
        if summary is not None:
            summary.close()
        raise
    feeder = _Feeder(source, summary, clock)
    thread = threading.Thread(target=feeder.run, name="portwatch-top-capture", daemon=True)
    thread.start()
    try:
        with term.active():
            _loop(term, feeder, label + (" - nDPI on" if args.detect else ""), args.refresh,
                  clock)
    except KeyboardInterrupt:
        pass
    finally:
        source.close()
        # A live backend's thread ends once its capture process is stopped; a stream's may
        # stay blocked in read() (it reads unbuffered, so exiting under it is safe).
        thread.join(_JOIN_S)
        with feeder.lock:  # a thread still blocked in read() feeds nothing after this
            summary.close()
    return 0


def _loop(term: _Terminal, feeder: _Feeder, label: str, refresh: float,
          clock: Callable[[], float]) -> None:
    due = clock()
    while True:
        now = clock()
        if term.resized or now >= due:
            term.resized = False
            width, height = term.size()
            title = f"portwatch top - {label} - {datetime.now().strftime('%H:%M:%S')}"
            term.draw(render_screen(feeder.snapshot(), width=width, height=height,
                                    color=term.color, title=title, status=feeder.status))
            due = now + refresh
        if "q" in term.key(due - clock()).lower():
            return
