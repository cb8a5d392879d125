"""The I/O edge of the registry: find sources, read them, detect their format.

Parsers never see a path or a file; this module reads bytes, sniffs the
format from content (never from the file name), and hands text to the right
parser.
"""

from __future__ import annotations

import bz2
import dataclasses
import hashlib
import lzma
import re
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from portwatch.errors import RegistryFormatError, RegistryRowError
from portwatch.registry.model import ParsedSource, SourceFormat

if TYPE_CHECKING:
    from portwatch.registry.merge import Registry

# The parsers and the merge are imported where they are used: a warm ``analyze``
# answers from the cached table and reads no registry source (about 30 ms saved).

__all__ = [
    "MAX_LINES",
    "MAX_LINE_BYTES",
    "MAX_SOURCE_BYTES",
    "check_lines",
    "decompress_source",
    "detect_format",
    "load_registry",
    "parse_source",
    "read_bytes",
    "read_source",
    "sha256_of",
    "transcode_bom",
]

_SNIFF_BYTES = 64 * 1024

#: The official XML is about 4 MB; nothing genuine comes near this, a bomb or
#: ``/dev/zero`` does. Applies to the file as read and as inflated.
MAX_SOURCE_BYTES = 64 * 1024 * 1024
#: The official CSV's longest line is about 400 bytes, a text rendering's
#: under 2 KB. A longer line in a text source is damage (or ``/dev/urandom``
#: without NULs), refused before it is decoded and split.
MAX_LINE_BYTES = 64 * 1024
#: The official CSV has 15,381 lines, the XML 127,034. Each line of a text
#: source costs a Python string; a million is ample and bounds that memory.
MAX_LINES = 1_000_000

_LONG_LINE_RE = re.compile(rb"\n[^\n]{%d}" % (MAX_LINE_BYTES + 1))
#: Byte-order marks, longest first (UTF-32 LE begins like UTF-16 LE).
_BOMS: tuple[tuple[bytes, str, str], ...] = (
    (b"\x00\x00\xfe\xff", "utf-32", "UTF-32"),
    (b"\xff\xfe\x00\x00", "utf-32", "UTF-32"),
    (b"\xfe\xff", "utf-16", "UTF-16"),
    (b"\xff\xfe", "utf-16", "UTF-16"),
)


class _Decompressor(Protocol):
    """What lzma, bz2 and zlib decompressor objects share."""

    @property
    def eof(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int, /) -> bytes: ...


def _inflater(data: bytes) -> tuple[str, Callable[[], _Decompressor]] | None:
    if data.startswith(b"\xfd7zXZ\x00"):
        return "xz", lzma.LZMADecompressor
    if data.startswith(b"\x1f\x8b"):
        return "gzip", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)
    if data[:3] == b"BZh" and data[4:10] == b"1AY&SY":
        return "bzip2", bz2.BZ2Decompressor
    return None


def decompress_source(data: bytes, path: str) -> bytes:
    """Inflate an xz, gzip or bzip2 source (judged by magic bytes), bounded in size.

    The packaged snapshot is xz; users may keep theirs compressed too.
    Anything else is returned unchanged.
    """
    found = _inflater(data)
    if found is None:
        return data
    name, make = found
    inflater = make()
    try:
        out = inflater.decompress(data, MAX_SOURCE_BYTES + 1)
    except (lzma.LZMAError, OSError, EOFError, zlib.error, ValueError) as exc:
        raise RegistryFormatError(f"damaged {name} data: {exc}", path=path) from None
    if len(out) > MAX_SOURCE_BYTES:
        raise RegistryFormatError(
            f"{name} data inflates past {MAX_SOURCE_BYTES >> 20} MiB: not a port registry",
            path=path,
        )
    if not inflater.eof:
        raise RegistryFormatError(f"{name} data ends early (truncated file)", path=path)
    return out


def detect_format(data: bytes, path: str) -> SourceFormat:
    """Which form of the registry ``data`` is, judged by its content alone."""
    from portwatch.registry.formats import iana_csv, iana_xml, services_file, text_table

    head = data[:_SNIFF_BYTES]
    if not head.strip():
        raise RegistryFormatError("empty file: expected an IANA port registry", path=path)
    if b"\0" in head:
        line = head[: head.index(b"\0")].count(b"\n") + 1
        raise RegistryFormatError(
            "binary content (NUL byte): expected an IANA port registry", path=path, line=line
        )
    if iana_xml.looks_like_iana_xml(head):
        return SourceFormat.IANA_XML
    text = head.decode("utf-8", errors="replace")
    if iana_csv.looks_like_iana_csv(text):
        return SourceFormat.IANA_CSV
    if text_table.looks_like_text_table(text):
        return SourceFormat.TEXT_TABLE
    if services_file.looks_like_services(text):
        return SourceFormat.SERVICES
    # Never quote what an unrecognised file holds: ``--registry /etc/shadow``
    # must not print a password hash. Say what was expected instead.
    raise RegistryFormatError(
        "not an IANA port registry: expected the official CSV (header 'Service Name,"
        "Port Number,...'), the official XML (<registry id=\"service-names-port-numbers\">),"
        " a text/Markdown rendering of the registry page, or a services(5) file",
        path=path,
        line=1,
    )


def transcode_bom(data: bytes, path: str) -> tuple[bytes, bool]:
    """UTF-16/32 text (judged by its byte-order mark) as UTF-8; whether it was transcoded.

    Done before any NUL check, since every ASCII character of UTF-16 text
    carries a NUL byte.
    """
    found = next((b for b in _BOMS if data.startswith(b[0])), None)
    if found is None:
        return data, False
    _, codec, name = found
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].decode(codec, errors="ignore").count("\n") + 1
        raise RegistryFormatError(
            f"not valid {name} text despite its byte-order mark (byte offset {exc.start})",
            path=path,
            line=line,
        ) from None
    return text.encode("utf-8"), True


def check_lines(data: bytes, path: str) -> None:
    """Refuse a text source with a line over ``MAX_LINE_BYTES`` or too many lines.

    Runs on the bytes before decoding, so a 60 MB one-line file costs one
    scan, not a decoded copy and a csv module buffer.
    """
    first = data.find(b"\n", 0, MAX_LINE_BYTES + 1)
    long_at: int | None = None
    if first == -1 and len(data) > MAX_LINE_BYTES:
        long_at = 1
    else:
        m = _LONG_LINE_RE.search(data)
        if m:
            long_at = data.count(b"\n", 0, m.start()) + 2
    if long_at is not None:
        raise RegistryFormatError(
            f"line longer than {MAX_LINE_BYTES:,} bytes: not a port registry"
            " (the official files' lines are under 2 KB)",
            path=path,
            line=long_at,
        )
    if data.count(b"\n") > MAX_LINES:
        raise RegistryFormatError(
            f"more than {MAX_LINES:,} lines: not a port registry"
            " (the official CSV has about 15,000)",
            path=path,
        )


def _decode(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RegistryFormatError(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            path=path,
            line=line,
        ) from None


def parse_source(data: bytes, path: str) -> ParsedSource:
    """Parse one source from its bytes, whatever form (and compression) it is in.

    ``SourceInfo.sha256`` is the digest of ``data`` as read, compressed or
    not, so that it matches ``sha256sum`` of the file and the cache key.
    """
    digest = sha256_of(data)
    data = decompress_source(data, path)
    data, transcoded = transcode_bom(data, path)
    fmt = detect_format(data, path)
    parsed = _parse(fmt, data, path, transcoded)
    parsed.info = dataclasses.replace(parsed.info, sha256=digest)
    return parsed


def _parse(fmt: SourceFormat, data: bytes, path: str, transcoded: bool) -> ParsedSource:
    from portwatch.registry.formats import iana_csv, iana_xml, services_file, text_table

    if fmt is SourceFormat.IANA_XML:
        return iana_xml.parse_iana_xml(data, path, encoding="UTF-8" if transcoded else None)
    check_lines(data, path)
    text = _decode(data, path)
    if fmt is SourceFormat.IANA_CSV:
        return iana_csv.parse_iana_csv(text, path)
    if fmt is SourceFormat.TEXT_TABLE:
        return text_table.parse_text_table(text, path)
    return services_file.parse_services(text, path)


def read_bytes(path: str | Path) -> bytes:
    """Read a whole source (bounded), turning OS errors into one-line registry errors."""
    try:
        with Path(path).open("rb") as f:
            data = f.read(MAX_SOURCE_BYTES + 1)
    except IsADirectoryError:
        raise RegistryFormatError(
            "is a directory, expected a registry file", path=str(path)
        ) from None
    except OSError as exc:
        raise RegistryFormatError(f"cannot read: {exc.strerror}", path=str(path)) from None
    if len(data) > MAX_SOURCE_BYTES:
        raise RegistryFormatError(
            f"larger than {MAX_SOURCE_BYTES >> 20} MiB: not a port registry", path=str(path)
        )
    return data


def read_source(path: str | Path) -> ParsedSource:
    return parse_source(read_bytes(path), str(path))


def load_registry(paths: Sequence[str | Path], *, strict: bool = False) -> Registry:
    """Read and merge sources; with ``strict`` the first bad row is an error."""
    from portwatch.registry.merge import merge_sources

    parsed = [read_source(p) for p in paths]
    registry = merge_sources(parsed)
    if strict and registry.problems:
        first = registry.problems[0]
        raise RegistryRowError(first.message, path=first.path, line=first.line)
    return registry


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
