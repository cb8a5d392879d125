"""The terminal renderer: fitting a width, escaping, colour and width decisions, progress."""

from __future__ import annotations

import csv
import fcntl
import io
import os
import re
import struct
import termios
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portwatch._terminal import (
    STATUS_COLORS,
    Align,
    Column,
    Progress,
    display_width,
    fit,
    render_table,
    sanitize,
    should_color,
    terminal_width,
)
from portwatch.cli import main
from portwatch.cli.common import format_columns
from portwatch.registry.formats.iana_csv import HEADER

SGR = re.compile(r"\x1b\[[0-9;]*m")


class FakeTTY(io.StringIO):
    """A text stream that says it is a terminal (no file descriptor behind it)."""

    def isatty(self) -> bool:
        return True


def width_of(line: str) -> int:
    """Display width computed here, apart from the module under test."""
    total = 0
    for ch in SGR.sub("", line):
        if unicodedata.category(ch) in ("Mn", "Me"):
            continue
        total += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return total


def raw_controls(text: str) -> list[str]:
    """Control, format and line-separator characters left in ``text`` (SGR codes removed)."""
    return [ch for ch in SGR.sub("", text).replace("\n", "")
            if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")]


# -- sanitising and width -------------------------------------------------------------------

@pytest.mark.parametrize(("text", "shown"), [
    ("plain text", "plain text"),
    ("title\x1b]0;owned\x07", "title\\x1b]0;owned\\x07"),
    ("clear\x1b[2J", "clear\\x1b[2J"),
    ("c1 csi\x9b31m", "c1 csi\\x9b31m"),
    ("del\x7f", "del\\x7f"),
    ("two\nlines\r\tx", "two\\x0alines\\x0d\\x09x"),
    ("bidi \u202eevil", "bidi \\u202eevil"),
    ("zero\u200bwidth", "zero\\u200bwidth"),
    ("line\u2028sep", "line\\u2028sep"),
    ("\U000e0001tag", "\\U000e0001tag"),
    ("undecodable\udcffname", "undecodable\\udcffname"),  # surrogateescape from a file name
    ("名前 café", "名前 café"),
])
def test_sanitize_escapes_control_and_invisible_characters_only(text: str, shown: str) -> None:
    assert sanitize(text) == shown


@pytest.mark.parametrize(("text", "width"), [
    ("abc", 3), ("名前", 4), ("\uff57\uff49\uff44\uff45", 8), ("cafe\u0301", 4), ("", 0),
    ("\u2026", 1),
])
def test_display_width_counts_wide_characters_twice_and_combining_marks_not_at_all(
    text: str, width: int,
) -> None:
    assert display_width(text) == width


def test_fit_shortens_free_text_with_an_ellipsis_and_leaves_it_alone_without_a_width() -> None:
    assert fit("Registry: packaged, last updated 2026-08-17", 20) == "Registry: packaged,\u2026"
    assert fit("a\x1bb", None) == "a\\x1bb"
    assert fit("名前名前", 5) == "名前\u2026"


# -- layout ------------------------------------------------------------------------------------

COLUMNS = (
    Column("port", priority=100),
    Column("service", priority=80, shrink=True, min_width=6),
    Column("status", priority=90, colors=STATUS_COLORS),
    Column("packets", priority=20, align=Align.RIGHT),
    Column("note", priority=50, shrink=True, min_width=8),
)
ROWS = [
    ["tcp/443", "https", "assigned", "12", "the web"],
    ["tcp/44515", "an-unusually-long-service-name", "unassigned", "5",
     "unauthorized use reported on this port"],
]


def test_unlimited_width_keeps_every_column_and_the_full_text() -> None:
    lines = render_table(COLUMNS, ROWS).splitlines()
    assert lines[0].split() == ["port", "service", "status", "packets", "note"]
    assert lines[2].endswith("unauthorized use reported on this port")
    assert "\u2026" not in "".join(lines)
    start = lines[0].index("packets")
    assert [line[start:start + 7] for line in lines[1:]] == ["     12", "      5"]  # right


def test_narrow_width_shortens_cells_before_dropping_columns() -> None:
    natural = max(width_of(line) for line in render_table(COLUMNS, ROWS).splitlines())
    lines = render_table(COLUMNS, ROWS, width=natural - 10).splitlines()
    assert lines[0].split() == ["port", "service", "status", "packets", "note"]
    assert all(width_of(line) <= natural - 10 for line in lines)
    assert lines[2].endswith("\u2026")


def test_columns_are_dropped_lowest_priority_first() -> None:
    # port 9 + status 10 + service 6 + note 8 + gaps 6 = 39: packets (priority 20) goes first
    lines = render_table(COLUMNS, ROWS, width=40).splitlines()
    assert lines[0].split() == ["port", "service", "status", "note"]
    # next the note (50), then the service (80); port and status stay
    assert render_table(COLUMNS, ROWS, width=30).splitlines()[0].split() == \
        ["port", "service", "status"]
    assert render_table(COLUMNS, ROWS, width=22).splitlines()[0].split() == ["port", "status"]


def test_spare_width_goes_to_the_highest_priority_shrinkable_column_first() -> None:
    # narrowest: port 9, service 6, status 10, packets 7, note 8, gaps 8 = 48; 27 to spare
    line = render_table(COLUMNS, ROWS, width=75).splitlines()[2]
    # service (80) is widened to its full name before the note (50) gets anything
    assert "an-unusually-long-service-name" in line
    assert line.endswith("  unauthoriz\u2026")  # 8 + 3 columns


def test_a_single_column_wider_than_the_terminal_is_cut_to_fit() -> None:
    lines = render_table([Column("description")], [["x" * 50]], width=12).splitlines()
    assert lines == ["description", "x" * 11 + "\u2026"]


def test_a_row_with_the_wrong_number_of_cells_is_refused() -> None:
    with pytest.raises(ValueError, match="row 0 has 2 cells for 5 columns"):
        render_table(COLUMNS, [["a", "b"]])


def test_colour_codes_appear_only_when_asked_for() -> None:
    plain = render_table(COLUMNS, ROWS, width=80)
    coloured = render_table(COLUMNS, ROWS, width=80, color=True)
    assert "\x1b" not in plain
    assert "\x1b[32massigned\x1b[0m" in coloured
    assert "\x1b[31munassigned\x1b[0m" in coloured
    assert "\x1b[1mport\x1b[0m" in coloured
    assert SGR.sub("", coloured) == plain


def test_a_cell_made_to_look_like_a_status_cannot_smuggle_escapes() -> None:
    out = render_table(COLUMNS, [["tcp/1", "x", "assigned\x1b[5m", "1", ""]], color=True)
    assert "assigned\\x1b[5m" in out
    assert "\x1b" not in SGR.sub("", out)  # every ESC left begins an SGR code of ours
    assert {m.group() for m in SGR.finditer(out)} == {"\x1b[0m", "\x1b[1m"}


cells = st.text(max_size=60)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.lists(cells, min_size=4, max_size=4), max_size=6),
       headers=st.lists(st.text(max_size=12), min_size=4, max_size=4),
       width=st.integers(min_value=40, max_value=240),
       color=st.booleans())
def test_no_line_exceeds_the_width_and_no_raw_control_character_is_emitted(
    rows: list[list[str]], headers: list[str], width: int, color: bool,
) -> None:
    columns = [Column(headers[0], priority=3, shrink=True, min_width=10),
               Column(headers[1], priority=9),
               Column(headers[2], priority=5, colors=STATUS_COLORS, align=Align.RIGHT),
               Column(headers[3], priority=1, shrink=True, min_width=4)]
    out = render_table(columns, rows, width=width, color=color)
    lines = out.split("\n")
    assert len(lines) == len(rows) + 1  # rows never wrap
    assert all(width_of(line) <= width for line in lines)
    stripped = SGR.sub("", out)
    assert raw_controls(stripped) == []
    if not color:
        assert stripped == out


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=80), width=st.integers(min_value=1, max_value=100))
def test_fit_never_exceeds_the_width_even_below_forty(text: str, width: int) -> None:
    line = fit(text, width)
    assert width_of(line) <= width
    assert raw_controls(line) == []


# -- format_columns (lookup, registry info) ------------------------------------------------------

def test_format_columns_keeps_its_plain_layout_and_escapes_cells() -> None:
    out = format_columns(["KIND", "RECORDS"], [["service", "14000"], ["evil\x1b[2J", "1"]])
    assert out.splitlines() == ["KIND         RECORDS", "service      14000",
                                "evil\\x1b[2J  1"]


def test_lookup_shows_a_registry_description_with_escape_sequences_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PORTWATCH_CACHE_DIR", str(tmp_path / "cache"))
    registry = tmp_path / "evil.csv"
    with registry.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(HEADER)
        writer.writerow(["evil", "4444", "tcp", "pwn\x1b]0;owned\x07 \x1b[2J\x9b1m here",
                         *[""] * (len(HEADER) - 4)])
    assert main(["--registry", str(registry), "lookup", "4444/tcp"]) == 0
    out = capsys.readouterr().out
    assert "pwn\\x1b]0;owned\\x07 \\x1b[2J\\x9b1m here" in out
    assert raw_controls(out) == []


# -- colour and width decisions -----------------------------------------------------------------

@pytest.mark.parametrize(("tty", "env", "expected"), [
    (True, {}, True),
    (False, {}, False),
    (True, {"NO_COLOR": "1"}, False),
    (True, {"NO_COLOR": ""}, True),
    (True, {"TERM": "dumb"}, False),
    (True, {"TERM": "xterm-256color"}, True),
    (False, {"FORCE_COLOR": "1"}, True),
    (False, {"CLICOLOR_FORCE": "1"}, True),
    (False, {"FORCE_COLOR": "0"}, False),
    (True, {"NO_COLOR": "1", "FORCE_COLOR": "1"}, False),
])
def test_colour_only_for_a_terminal_unless_no_color_or_forced(
    tty: bool, env: dict[str, str], expected: bool,
) -> None:
    stream = FakeTTY() if tty else io.StringIO()
    assert should_color(stream, env) is expected


def test_a_pipe_or_file_gets_unlimited_width_whatever_columns_says(tmp_path: Path) -> None:
    assert terminal_width(io.StringIO(), {"COLUMNS": "100"}) is None
    with (tmp_path / "out.txt").open("w") as out:
        assert terminal_width(out, {}) is None


@pytest.mark.parametrize(("env", "expected"), [
    ({"COLUMNS": "132"}, 132), ({}, 80), ({"COLUMNS": "wide"}, 80), ({"COLUMNS": "0"}, 80),
])
def test_a_terminal_uses_columns_else_80_when_it_cannot_tell(
    env: dict[str, str], expected: int,
) -> None:
    assert terminal_width(FakeTTY(), env) == expected


@pytest.fixture
def pty_stream() -> Iterator[TextIO]:
    """The terminal side of a pseudo-terminal sized 57 columns by 20 rows."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 20, 57, 0, 0))
    stream = os.fdopen(follower, "w")
    try:
        yield stream
    finally:
        stream.close()
        os.close(leader)


def test_a_terminal_without_columns_reports_its_own_size(pty_stream: TextIO) -> None:
    assert terminal_width(pty_stream, {}) == 57
    assert terminal_width(pty_stream, {"COLUMNS": "90"}) == 90


# -- progress line --------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_silent_when_stderr_is_not_a_terminal() -> None:
    stream = io.StringIO()
    with Progress(stream, "big.pcap", 1000, env={}) as bar:
        bar.update(500)
    assert stream.getvalue() == ""


def test_progress_redraws_one_line_with_carriage_returns_and_erases_it() -> None:
    stream, clock = FakeTTY(), Clock()
    with Progress(stream, "big.pcap", 200_000_000, env={"COLUMNS": "80"}, clock=clock,
                  interval=0.5) as bar:
        clock.now = 1.0
        bar.update(50_000_000)
        clock.now = 1.2
        bar.update(60_000_000)  # within the interval: not drawn
        clock.now = 2.0
        bar.update(100_000_000)
    drawn = stream.getvalue()
    frames = drawn.split("\r")
    assert "\n" not in drawn
    assert frames[1] == "big.pcap   25%  50.0 MB / 200.0 MB  eta 0:00:03"
    assert frames[2].startswith("big.pcap   50%  100.0 MB / 200.0 MB  eta 0:00:02")
    assert len(frames) == 5  # two frames, then the erasing blanks and the final return
    assert frames[3] == " " * len(frames[2])
    assert frames[4] == ""


def test_progress_line_fits_a_narrow_terminal_and_escapes_the_label() -> None:
    stream = FakeTTY()
    bar = Progress(stream, "evil\x1b[2J" + "x" * 100, 1000, env={"COLUMNS": "40"})
    bar.update(10, force=True)
    frame = stream.getvalue().split("\r")[1]
    assert width_of(frame) <= 39
    assert frame.startswith("evil\\x1b[2J")
    assert raw_controls(frame) == []


def test_progress_is_silent_on_a_dumb_terminal() -> None:
    stream = FakeTTY()
    Progress(stream, "x", 10, env={"TERM": "dumb"}).update(5, force=True)
    assert stream.getvalue() == ""
