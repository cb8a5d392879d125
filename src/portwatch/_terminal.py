"""Terminal output: one table renderer, colour and width decisions, a progress line.

Standard library only and no pipeline imports, so every command (``analyze``,
``lookup``, ``registry info``) renders the same way. Three rules hold for
every line this module produces:

- Nothing from the data reaches the terminal raw: C0/C1 control characters,
  ESC, DEL and invisible format characters (bidi overrides, zero-width
  characters) are shown escaped (``\\x1b``, ``\\u202e``), so registry text or
  a capture's file name cannot inject terminal escape sequences.
- Rows never wrap: with a width, cells are shortened with an ellipsis and
  whole columns are dropped by priority until every line fits. Without one
  (output to a pipe or file) nothing is shortened, so scripts see full text.
- Width is display width: East Asian wide and fullwidth characters count 2,
  combining marks 0.
"""

from __future__ import annotations

import os
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType
from typing import TextIO

__all__ = [
    "STATUS_COLORS",
    "Align",
    "Column",
    "Progress",
    "display_width",
    "fit",
    "render_table",
    "sanitize",
    "should_color",
    "terminal_width",
]

ELLIPSIS = "\u2026"
RESET = "\x1b[0m"
BOLD = "1"

#: SGR parameters for port statuses: red for what the registry says is not in use,
#: yellow for what the loaded sources do not list, blue for the dynamic range.
STATUS_COLORS: Mapping[str, str] = {
    "assigned": "32",
    "reserved": "31",
    "unassigned": "31",
    "unlisted": "33",
    "dynamic": "34",
}


class Align(Enum):
    LEFT = "left"
    RIGHT = "right"


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a table.

    ``priority``: higher survives longer; when the width cannot hold every
    column at its narrowest, the lowest-priority columns are dropped, and
    spare width goes to the highest-priority columns first.
    ``shrink``: the cells may be shortened with an ellipsis, down to
    ``min_width`` columns; a column that may not shrink is shown at its full
    width or not at all (``min_width`` does not apply to it).
    ``colors``: SGR parameters by cell text (e.g. ``STATUS_COLORS``), used only
    when the table is rendered with colour.
    """

    header: str
    priority: int = 0
    min_width: int = 1
    align: Align = Align.LEFT
    shrink: bool = False
    colors: Mapping[str, str] = field(default_factory=dict)


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def sanitize(text: str) -> str:
    """``text`` safe to print: every non-printable character shown escaped.

    Python's ``isprintable`` is false for control (Cc), format (Cf: bidi
    overrides, zero-width), separator (Zl, Zp), private-use, surrogate and
    unassigned characters; all of these are escaped. Spaces (Zs) are kept.
    """
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() or unicodedata.category(ch) == "Zs" else _escape(ch)
        for ch in text
    )


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(text: str) -> int:
    """Columns ``text`` (already sanitised) takes on a terminal."""
    if text.isascii():
        return len(text)
    return sum(_char_width(ch) for ch in text)


def _truncate(text: str, width: int, ellipsis: str) -> str:
    """``text`` cut to at most ``width`` columns, the cut marked with ``ellipsis``."""
    if display_width(text) <= width:
        return text
    room = width - display_width(ellipsis)
    if room < 0:
        ellipsis, room = "", width
    out: list[str] = []
    used = 0
    for ch in text:
        w = _char_width(ch)
        if used + w > room:
            break
        out.append(ch)
        used += w
    return "".join(out) + ellipsis


def fit(text: str, width: int | None, *, ellipsis: str = ELLIPSIS) -> str:
    """One line of free text (a title, a footer), sanitised and cut to ``width``."""
    clean = sanitize(text)
    return clean if width is None else _truncate(clean, width, ellipsis)


def _layout(columns: Sequence[Column], natural: list[int], width: int | None,
            gap: int) -> list[tuple[int, int]]:
    """(column index, width) of the columns kept, in display order.

    Columns are taken by priority (ties: leftmost first); each is kept if its
    narrowest width still fits beside those kept already. Spare width then
    widens the kept shrinkable columns, highest priority first, up to their
    natural width.
    """
    if width is None:
        return list(enumerate(natural))
    floors = [min(n, max(1, c.min_width)) if c.shrink else n
              for c, n in zip(columns, natural, strict=True)]
    order = sorted(range(len(columns)), key=lambda i: -columns[i].priority)
    kept: dict[int, int] = {}
    used = 0
    for i in order:
        need = floors[i] + (gap if kept else 0)
        if used + need <= width:
            kept[i] = floors[i]
            used += need
    if not kept and order:  # not even the first column fits: show it cut to the width
        top = order[0]
        return [(top, min(natural[top], max(width, 0)))]
    spare = width - used
    for i in order:
        if i in kept and spare > 0:
            extra = min(natural[i] - kept[i], spare)
            kept[i] += extra
            spare -= extra
    return sorted(kept.items())


def _cell(text: str, width: int, align: Align, sgr: str | None, *, last: bool,
          ellipsis: str) -> str:
    shown = _truncate(text, width, ellipsis)
    pad = " " * (width - display_width(shown))
    if sgr:
        shown = f"\x1b[{sgr}m{shown}{RESET}"
    if align is Align.RIGHT:
        return pad + shown
    return shown if last else shown + pad


def render_table(columns: Sequence[Column], rows: Sequence[Sequence[str]], *,
                 width: int | None = None, color: bool = False, gap: int = 2,
                 ellipsis: str = ELLIPSIS) -> str:
    """A header line and one line per row, joined by newlines (no final newline).

    ``width=None`` means unlimited: nothing is shortened or dropped. With a
    width, no line is longer than ``width`` columns (see ``Column``).
    ``color`` adds ANSI SGR codes: bold headers, ``Column.colors`` for cells.
    """
    headers = [sanitize(c.header) for c in columns]
    body = [[sanitize(cell) for cell in row] for row in rows]
    for n, row in enumerate(body):
        if len(row) != len(columns):
            raise ValueError(f"row {n} has {len(row)} cells for {len(columns)} columns")
    natural = [display_width(h) for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            natural[i] = max(natural[i], display_width(cell))
    layout = _layout(columns, natural, width, gap)
    sep = " " * gap
    last = len(layout) - 1
    lines = [sep.join(_cell(headers[i], w, columns[i].align, BOLD if color else None,
                            last=k == last, ellipsis=ellipsis)
                      for k, (i, w) in enumerate(layout)).rstrip(" ")]
    for row in body:
        lines.append(sep.join(
            _cell(row[i], w, columns[i].align, columns[i].colors.get(row[i]) if color else None,
                  last=k == last, ellipsis=ellipsis)
            for k, (i, w) in enumerate(layout)).rstrip(" "))
    return "\n".join(lines)


# -- decisions about the output stream -------------------------------------------------------

def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _set(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "") not in ("", "0")


def should_color(stream: TextIO, env: Mapping[str, str]) -> bool:
    """Colour only for a person: a TTY, ``NO_COLOR`` unset or empty, ``TERM`` not dumb.

    ``NO_COLOR`` (no-color.org) always wins. ``FORCE_COLOR`` or ``CLICOLOR_FORCE``
    set to anything but empty or ``0`` turns colour on without a TTY (CI logs
    that render ANSI).
    """
    if env.get("NO_COLOR", ""):
        return False
    if _set(env, "FORCE_COLOR") or _set(env, "CLICOLOR_FORCE"):
        return True
    return env.get("TERM", "") != "dumb" and _isatty(stream)


def terminal_width(stream: TextIO, env: Mapping[str, str]) -> int | None:
    """Columns to fit ``stream``'s lines into, or None (unlimited) when it is no terminal.

    On a terminal: ``COLUMNS`` when it is a positive number, else the size
    the terminal reports for the stream, else 80. A pipe or a file gets None
    so that scripts keep the full text.
    """
    if not _isatty(stream):
        return None
    columns = env.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        size = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 80
    return size if size > 0 else 80


# -- progress ----------------------------------------------------------------------------------

def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """A single status line on a TTY (``stream``, usually stderr), redrawn with ``\\r``.

    Silent when the stream is not a terminal or ``TERM`` is dumb, so logs
    and pipes never see it. Redraws at most every ``interval`` seconds; the
    line is erased on ``close()``, leaving the terminal as it was.
    """

    def __init__(self, stream: TextIO, label: str, total: int | None = None, *,
                 env: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 interval: float = 0.1) -> None:
        env = os.environ if env is None else env
        self.stream = stream
        self.label = label
        self.total = total
        self.enabled = _isatty(stream) and env.get("TERM", "") != "dumb"
        self.width = (terminal_width(stream, env) or 80) if self.enabled else 80
        self._clock = clock
        self._interval = interval
        self._start = clock()
        self._last_draw: float | None = None
        self._shown = 0  # columns of the line on screen

    def line(self, done: int) -> str:
        """The status text for ``done`` units (bytes) of ``total``."""
        parts = [self.label]
        elapsed = self._clock() - self._start
        if self.total:
            fraction = min(done / self.total, 1.0)
            parts.append(f"{fraction * 100:3.0f}%")
            parts.append(f"{_bytes(done)} / {_bytes(self.total)}")
            if 0 < fraction < 1 and elapsed > 0:
                parts.append(f"eta {_duration(elapsed * (1 - fraction) / fraction)}")
        else:
            parts.append(_bytes(done))
        return fit("  ".join(parts), self.width - 1)  # the last column would wrap on some terms

    def update(self, done: int, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self._clock()
        if not force and self._last_draw is not None and now - self._last_draw < self._interval:
            return
        self._last_draw = now
        text = self.line(done)
        width = display_width(text)
        self.stream.write("\r" + text + " " * max(self._shown - width, 0))
        self.stream.flush()
        self._shown = width

    def close(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
