"""Field shapes every registry parser shares: ports, dates, quoted snippets.

One definition each, so that the four formats agree on what a port is.
Digits are ASCII only: Python's ``int()`` and ``str.isdigit`` also take
Arabic-Indic or full-width digits, which no registry means as a port.
"""

from __future__ import annotations

import re

from portwatch.errors import RegistryFormatError

__all__ = [
    "DATE_RE",
    "MAX_PORT",
    "MAX_PROBLEMS",
    "parse_port_range",
    "port_range_or_none",
    "shorten",
    "too_many_problems",
]

MAX_PORT = 65535
#: Rows that could not be understood before a file is judged no registry at
#: all: the official sources have none, and each one kept costs memory.
MAX_PROBLEMS = 10_000

#: ``2007-06`` or ``2020-04-29`` as IANA publishes dates; groups: year, month, day.
DATE_RE = re.compile(r"^([0-9]{4})-([0-9]{2})(?:-([0-9]{2}))?$", re.ASCII)

_PORT_RE = re.compile(r"^([0-9]+)(?:\s*-\s*([0-9]+))?$", re.ASCII)
#: More digits than this cannot be a port; never hand them to ``int()``.
_PORT_DIGITS = 5


def parse_port_range(text: str) -> tuple[int, int]:
    """``'80'`` -> (80, 80); ``'6000-6063'`` -> (6000, 6063).

    Raises ``ValueError`` with a message quoting the text when it is no port
    number or range of ASCII digits, is above 65535, or runs backwards.
    """
    text = text.strip()
    m = _PORT_RE.match(text)
    if not m:
        raise ValueError(
            f"bad port number {shorten(text)!r}: expected a number or a range like 6000-6063"
        )
    low_text, high_text = m[1], m[2] if m[2] is not None else m[1]
    if max(len(low_text), len(high_text)) > _PORT_DIGITS:
        raise ValueError(f"bad port number {shorten(text)!r}: ports run from 0 to {MAX_PORT}")
    low, high = int(low_text), int(high_text)
    if high > MAX_PORT or low > MAX_PORT:
        raise ValueError(f"bad port number {text!r}: ports run from 0 to {MAX_PORT}")
    if low > high:
        raise ValueError(f"bad port range {text!r}: {low} is above {high}")
    return low, high


def port_range_or_none(text: str) -> tuple[int, int] | None:
    """``parse_port_range`` for shape tests: ``None`` where it would raise."""
    try:
        return parse_port_range(text)
    except ValueError:
        return None


def shorten(text: str, limit: int = 120) -> str:
    """``text`` on one line, cut to ``limit`` characters, for quoting in a message."""
    head = " ".join(text[: 4 * limit].split())  # never split a huge value whole
    if len(head) <= limit and len(text) <= 4 * limit:
        return head
    return head[: limit - 3] + "..."


def too_many_problems(path: str, line: int, expected: str) -> RegistryFormatError:
    """The error for a file whose rows mostly fail: it is something else."""
    return RegistryFormatError(
        f"gave up after {MAX_PROBLEMS:,} rows that could not be understood:"
        f" expected {expected}",
        path=path,
        line=line,
    )
