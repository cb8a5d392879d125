"""The data directory: registry sources a user imported or downloaded.

Layout: ``<data dir>/registry/manifest.json`` names the source files, in
load order; the files sit beside it, named by content hash. A change writes
the new files first and the manifest last, with an atomic rename, so a crash
or a refused file never leaves a half-updated registry.

``DataStore.update_from(url)`` downloads the official registry. A download is
all or nothing: the whole transfer must finish within ``timeout`` seconds (a
deadline, so a server trickling a byte a second cannot hold it open), it must
deliver every byte its ``Content-Length`` (or chunked framing) announced, and
it may not exceed 64 MiB. The result is then validated against the registry
it replaces and the packaged snapshot before anything is written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Protocol

from portwatch._paths import data_dir
from portwatch.errors import RegistryError, RegistryFormatError
from portwatch.registry.loader import parse_source, read_bytes, read_source, sha256_of
from portwatch.registry.model import ParsedSource, SourceFormat
from portwatch.registry.packaged import packaged_snapshot

# ``portwatch._atomic`` (tempfile, shutil, random) is imported by the methods that
# write: every command selects its sources here, few of them store one.

__all__ = [
    "MAX_DOWNLOAD_BYTES",
    "MAX_UPDATE_PROBLEMS",
    "MIN_RECORD_RATIO",
    "DataStore",
    "Opener",
    "SourceSelection",
    "StoredSource",
    "select_sources",
]

_OFFICIAL_FORMATS = (SourceFormat.IANA_CSV, SourceFormat.IANA_XML)

#: The official XML is about 4 MB; a download past this is not the registry.
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
#: A new registry may have at most this many rows the parser could not read.
MAX_UPDATE_PROBLEMS = 10
#: ... and at least this share of the records of the registry it replaces.
MIN_RECORD_RATIO = 0.9
_READ_CHUNK = 64 * 1024


class _Response(Protocol):
    """What ``update_from`` uses of ``urllib.request.urlopen``'s answer."""

    headers: Any

    def read(self, amt: int = ..., /) -> bytes: ...

    def close(self) -> None: ...


#: ``urllib.request.urlopen``'s shape: ``opener(url, timeout=seconds)``.
Opener = Callable[..., _Response]


@dataclass(frozen=True, slots=True)
class StoredSource:
    file: str  # name inside the store
    origin: str  # where it came from (a path or URL), for `registry info`
    format: str
    sha256: str
    official: bool  # the downloaded official registry, replaced by `update`


class DataStore:
    """Sources kept in a data directory, changed only by atomic manifest swaps."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "registry"
        self.manifest = self.dir / "manifest.json"

    def entries(self) -> list[StoredSource]:
        try:
            raw = json.loads(self.manifest.read_text(encoding="utf-8"))
            return [StoredSource(**item) for item in raw["sources"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RegistryFormatError(
                f"damaged data directory manifest: {exc}", path=str(self.manifest)
            ) from None

    def source_paths(self) -> list[Path]:
        return [self.dir / e.file for e in self.entries()]

    def _store(
        self, data: bytes, parsed: ParsedSource, origin: str, official: bool
    ) -> StoredSource:
        digest = sha256_of(data)
        suffix = {SourceFormat.IANA_XML: ".xml", SourceFormat.IANA_CSV: ".csv"}.get(
            parsed.info.format, ".txt"
        )
        name = f"{digest[:16]}{suffix}"
        target = self.dir / name
        if not target.exists():
            from portwatch._atomic import atomic_write_bytes

            atomic_write_bytes(target, data)
        return StoredSource(name, origin, parsed.info.format.value, digest, official)

    def _commit(self, entries: Sequence[StoredSource]) -> None:
        doc = {"sources": [
            {"file": e.file, "origin": e.origin, "format": e.format, "sha256": e.sha256,
             "official": e.official}
            for e in entries
        ]}
        from portwatch._atomic import atomic_write_bytes

        atomic_write_bytes(self.manifest, json.dumps(doc, indent=2).encode())
        keep = {e.file for e in entries} | {self.manifest.name}
        for path in self.dir.iterdir():
            if path.name not in keep and not path.name.startswith("."):
                path.unlink(missing_ok=True)

    def import_files(self, paths: Sequence[str]) -> list[ParsedSource]:
        """Validate every file first; only if all are usable, add them."""
        loaded = [(p, read_bytes(p)) for p in paths]
        parsed = [parse_source(data, p) for p, data in loaded]
        entries = self.entries()
        known = {e.sha256 for e in entries}
        self.dir.mkdir(parents=True, exist_ok=True)
        for (path, data), source in zip(loaded, parsed, strict=True):
            if sha256_of(data) in known:
                continue
            entry = self._store(data, source, str(Path(path).resolve()), official=False)
            entries.append(entry)
            known.add(entry.sha256)
        self._commit(entries)
        return parsed

    def official_records(self) -> int | None:
        """Record count of the current official source, if there is one."""
        current = self._current_official()
        return None if current is None else len(current.records)

    def _current_official(self) -> ParsedSource | None:
        for entry in self.entries():
            if entry.official:
                data = read_bytes(self.dir / entry.file)
                return parse_source(data, str(self.dir / entry.file))
        return None

    def update_from(
        self,
        url: str,
        *,
        timeout: float = 60.0,
        force: bool = False,
        opener: Opener | None = None,
        max_bytes: int = MAX_DOWNLOAD_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> ParsedSource:
        """Download the official registry from ``url``, validate it, swap it in.

        ``opener`` defaults to ``urllib.request.urlopen``. Raises
        ``RegistryError`` when the download fails or is refused and
        ``RegistryFormatError`` when its content is not a usable registry; in
        both cases the data directory is left exactly as it was.
        """
        if not url.startswith(("http://", "https://", "file:")):
            raise RegistryError(f"unsupported URL {url!r}: expected http(s) or file", path=url)
        if timeout <= 0:
            raise RegistryError(f"timeout must be positive, not {timeout}", path=url)
        data = _download(url, timeout, opener, max_bytes, clock)
        return self.replace_official(data, url, force=force)

    def replace_official(
        self,
        data: bytes,
        origin: str,
        *,
        force: bool = False,
        min_ratio: float = MIN_RECORD_RATIO,
        max_problems: int = MAX_UPDATE_PROBLEMS,
    ) -> ParsedSource:
        """Swap in an official registry, refusing one that looks wrong.

        It must be the official CSV or XML with at most ``max_problems``
        unreadable rows, have at least ``min_ratio`` of the records of the
        larger of the current official source and the packaged snapshot, and
        (unless ``force``) not be older than either.
        """
        parsed = parse_source(data, origin)
        if parsed.info.format not in _OFFICIAL_FORMATS:
            raise RegistryFormatError(
                f"expected the official IANA CSV or XML, got a {parsed.info.format.value} file",
                path=origin,
            )
        if len(parsed.problems) > max_problems:
            first = parsed.problems[0]
            raise RegistryFormatError(
                f"refusing a registry with {len(parsed.problems)} unreadable rows (at most "
                f"{max_problems} allowed); the first, line {first.line}: {first.message}",
                path=origin,
            )
        _check_against(parsed, self._current_official(), "the current registry", origin,
                       force=force, min_ratio=min_ratio)
        _check_against(parsed, read_source(packaged_snapshot()), "the packaged snapshot",
                       origin, force=force, min_ratio=min_ratio)
        self.dir.mkdir(parents=True, exist_ok=True)
        entry = self._store(data, parsed, origin, official=True)
        others = [e for e in self.entries() if not e.official]
        self._commit([entry, *others])
        return parsed


def _check_against(new: ParsedSource, old: ParsedSource | None, what: str, origin: str, *,
                   force: bool, min_ratio: float) -> None:
    if old is None:
        return
    have, had = len(new.records), len(old.records)
    if have < had * min_ratio:
        raise RegistryFormatError(
            f"refusing a registry with {have} records: {what} has {had} (more than "
            f"{round((1 - min_ratio) * 100)}% fewer)",
            path=origin,
        )
    if force:
        return
    new_date, old_date = new.info.last_updated, old.info.last_updated
    if old_date is not None and (new_date is None or new_date < old_date):
        raise RegistryError(
            f"refusing a registry last updated {_day(new_date)}: {what} is newer "
            f"({_day(old_date)}); use --force to install it anyway",
            path=origin,
        )


def _day(value: date | None) -> str:
    return value.isoformat() if value else "on an unknown date"


def _download(url: str, timeout: float, opener: Opener | None, max_bytes: int,
              clock: Callable[[], float]) -> bytes:
    """The whole body, or ``RegistryError``: deadline, length and size all enforced."""
    import http.client  # only `registry update` downloads
    import urllib.error
    import urllib.request

    deadline = clock() + timeout
    open_url: Opener = opener or urllib.request.urlopen
    try:
        resp = open_url(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise RegistryError(f"download failed: HTTP {exc.code} {exc.reason}", path=url) from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise RegistryError(f"download failed: {reason}", path=url) from exc
    try:
        announced = _content_length(resp, url, max_bytes)
        body = _read_body(resp, url, deadline, max_bytes, clock)
    except http.client.IncompleteRead as exc:
        raise RegistryError(f"download cut short after {len(exc.partial)} more bytes "
                            "(the chunked body ended early)", path=url) from exc
    except (http.client.HTTPException, OSError) as exc:
        if isinstance(exc, TimeoutError) or "timed out" in str(exc):
            raise RegistryError(f"download took longer than {timeout:g} s", path=url) from exc
        raise RegistryError(f"download failed: {exc}", path=url) from exc
    finally:
        resp.close()
    if announced is not None and len(body) != announced:
        raise RegistryError(f"download cut short: {len(body)} of the {announced} bytes "
                            "announced by Content-Length", path=url)
    return body


def _content_length(resp: _Response, url: str, max_bytes: int) -> int | None:
    text = resp.headers.get("Content-Length") if resp.headers is not None else None
    if text is None:
        return None
    try:
        length = int(text)
    except ValueError:
        raise RegistryError(f"download refused: bad Content-Length {text!r}", path=url) from None
    if length > max_bytes:
        raise RegistryError(f"download refused: {length} bytes announced, more than "
                            f"{_size(max_bytes)}", path=url)
    return length


def _read_body(resp: _Response, url: str, deadline: float, max_bytes: int,
               clock: Callable[[], float]) -> bytes:
    """Read in chunks until EOF, checking the deadline between reads.

    Each read returns what one socket read brings (``read1``), so a slow
    server cannot make one call outlast the deadline by much; the socket's
    own timeout is narrowed to what is left of it, when the socket is reachable.
    """
    read = getattr(resp, "read1", None) or resp.read
    chunks: list[bytes] = []
    size = 0
    while True:
        left = deadline - clock()
        if left <= 0:
            raise TimeoutError("timed out")
        _narrow_timeout(resp, left)
        chunk = read(_READ_CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise RegistryError(f"download refused: larger than {_size(max_bytes)}", path=url)
        chunks.append(chunk)


def _size(nbytes: int) -> str:
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes} bytes"


def _narrow_timeout(resp: _Response, seconds: float) -> None:
    """Best effort: ``http.client`` keeps the socket at ``resp.fp.raw._sock``."""
    sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)
    settimeout = getattr(sock, "settimeout", None)
    if settimeout is not None:
        settimeout(max(seconds, 0.001))


@dataclass(frozen=True, slots=True)
class SourceSelection:
    """Which files to read and why (``explicit``, ``data-dir`` or ``packaged``)."""

    paths: tuple[str, ...]
    origin: str


def select_sources(
    explicit: Sequence[str], *, env: Mapping[str, str] | None = None
) -> SourceSelection:
    """``--registry`` and ``PORTWATCH_REGISTRY`` win; else the data dir; else the snapshot.

    The packaged snapshot is the official registry, so even a fresh install
    tells reserved and unassigned ports apart. A machine's services(5) files
    list assigned ports only; they are read when named, never by default.
    """
    env = os.environ if env is None else env
    named = list(explicit)
    if env.get("PORTWATCH_REGISTRY"):
        named += [p for p in env["PORTWATCH_REGISTRY"].split(":") if p]
    if named:
        return SourceSelection(tuple(named), "explicit")
    stored = DataStore(data_dir(env)).source_paths()
    if stored:
        return SourceSelection(tuple(str(p) for p in stored), "data-dir")
    return SourceSelection((str(packaged_snapshot()),), "packaged")
