"""The data directory: registry sources a user imported or downloaded.

Layout: ``<data dir>/registry/manifest.json`` names the source files, in
load order; the files sit beside it, named by content hash. A change writes
the new files first and the manifest last, with an atomic rename, so a crash
or a refused file never leaves a half-updated registry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from portwatch._atomic import atomic_write_bytes
from portwatch._paths import data_dir
from portwatch.errors import RegistryFormatError
from portwatch.registry.loader import parse_source, read_bytes, sha256_of
from portwatch.registry.model import ParsedSource, SourceFormat
from portwatch.registry.packaged import packaged_snapshot

__all__ = [
    "DataStore",
    "SourceSelection",
    "StoredSource",
    "select_sources",
]

_OFFICIAL_FORMATS = (SourceFormat.IANA_CSV, SourceFormat.IANA_XML)


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
            atomic_write_bytes(target, data)
        return StoredSource(name, origin, parsed.info.format.value, digest, official)

    def _commit(self, entries: Sequence[StoredSource]) -> None:
        doc = {"sources": [
            {"file": e.file, "origin": e.origin, "format": e.format, "sha256": e.sha256,
             "official": e.official}
            for e in entries
        ]}
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
        for entry in self.entries():
            if entry.official:
                data = read_bytes(self.dir / entry.file)
                return len(parse_source(data, str(self.dir / entry.file)).records)
        return None

    def replace_official(self, data: bytes, origin: str, *, min_ratio: float = 0.9) -> ParsedSource:
        """Swap in a downloaded official registry, refusing a suspiciously small one."""
        parsed = parse_source(data, origin)
        if parsed.info.format not in _OFFICIAL_FORMATS:
            raise RegistryFormatError(
                f"expected the official IANA CSV or XML, got a {parsed.info.format.value} file",
                path=origin,
            )
        current = self.official_records()
        if current and len(parsed.records) < current * min_ratio:
            raise RegistryFormatError(
                f"refusing a registry with {len(parsed.records)} records: the current one has "
                f"{current} (more than {100 - int(min_ratio * 100)}% fewer)",
                path=origin,
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        entry = self._store(data, parsed, origin, official=True)
        others = [e for e in self.entries() if not e.official]
        self._commit([entry, *others])
        return parsed


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
