"""The one exception hierarchy of portwatch.

Every error a user can cause carries where it happened (a file and a line or a
byte offset) so that the CLI can print it as one line and exit non-zero::

    PortwatchError
    ├── UsageError               wrong flag or argument                  exit 2
    ├── ConfigError              bad config file                         exit 2
    ├── RegistryError
    │   ├── RegistryFormatError  file is not a registry in any known form exit 2
    │   └── RegistryRowError     one row could not be understood (strict) exit 2
    ├── CaptureError
    │   ├── CaptureFormatError   not a capture we can read at all        exit 2
    │   └── CaptureTruncatedError capture damaged after some good data   exit 1
    ├── BackendError             a capture backend failed to start       exit 2
    └── OutputError              a report or copy cannot be written      exit 2
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "CaptureError",
    "CaptureFormatError",
    "CaptureTruncatedError",
    "ConfigError",
    "OutputError",
    "PortwatchError",
    "RegistryError",
    "RegistryFormatError",
    "RegistryRowError",
    "UsageError",
]


class PortwatchError(Exception):
    """Base of every error portwatch raises on purpose.

    ``path`` names the file (or ``-`` for standard input); ``line`` is a
    1-based line number for text formats, ``offset`` a byte offset for binary
    ones. ``str()`` gives the one-line message the CLI prints.
    """

    exit_code: int = 2

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.offset = offset

    def location(self) -> str:
        """``path:line`` or ``path: byte N``, or empty when nothing is known."""
        if self.path is None:
            return ""
        if self.line is not None:
            return f"{self.path}:{self.line}"
        if self.offset is not None:
            return f"{self.path}: byte {self.offset}"
        return self.path

    def __str__(self) -> str:
        where = self.location()
        return f"{where}: {self.message}" if where else self.message


class UsageError(PortwatchError):
    """A wrong flag, argument or query on the command line."""


class ConfigError(PortwatchError):
    """A configuration file that cannot be used."""


class RegistryError(PortwatchError):
    """Something wrong with a registry source."""


class RegistryFormatError(RegistryError):
    """The file is not a registry in any form portwatch reads (or is truncated)."""


class RegistryRowError(RegistryError):
    """One row of an otherwise readable registry could not be understood."""


class CaptureError(PortwatchError):
    """Something wrong with a capture file or stream."""


class CaptureFormatError(CaptureError):
    """Not a capture portwatch can read: nothing useful could be taken from it."""


class CaptureTruncatedError(CaptureError):
    """The capture is damaged after some good data; what came before still counts."""

    exit_code = 1


class BackendError(PortwatchError):
    """A live capture backend could not be started or died."""


class OutputError(PortwatchError):
    """An output (report, annotated copy) cannot be written: a directory, a full disk,
    no permission, or one of the inputs it would overwrite."""
