"""The compiled table: every (transport, port) answered by array indexing.

For each of tcp, udp, sctp and dccp there are 65,536 slots. ``status``,
``service_id`` and ``flags`` are ``(4, 65536)`` numpy arrays, so a batch of
ports is looked up with one ``np.take``; ``entry`` points each slot at an
interned ``SlotEntry`` holding what only a person reads (aliases,
description, remark, the records behind the answer).

The table is pure data: ``to_bytes``/``from_bytes`` serialise it, and the
on-disk cache (``portwatch.porttable.cache``) does the I/O.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from datetime import date
from itertools import chain
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from portwatch.ports import PortFlag, PortStatus, Transport
from portwatch.registry.model import SourceFormat, SourceInfo
from portwatch.registry.packaged import source_label

__all__ = ["PORTS", "TABLE_FORMAT_VERSION", "PortInfo", "PortTable", "SlotEntry"]

TABLE_FORMAT_VERSION = 1
PORTS = 65536
_STATUS_BY_CODE = tuple(PortStatus(i) for i in range(len(PortStatus)))
#: ``tuple.__new__`` builds a PortInfo without the generated keyword-handling
#: ``__new__`` of NamedTuple: 426 ns -> about 100 ns a lookup.
_new_info = tuple.__new__
_FLAGS_BY_CODE = tuple(PortFlag(i) for i in range(2))
_SLOT_ARRAYS: dict[str, np.dtype[Any]] = {
    "status": np.dtype(np.uint8),
    "service_id": np.dtype(np.int32),
    "flags": np.dtype(np.uint8),
    "entry": np.dtype(np.int32),
}
_BLOBS = ("meta", "entries")
#: No member of a genuine table comes near this (the whole file is ~3.5 MB);
#: checked from the zip directory before anything is inflated.
_MAX_MEMBER_BYTES = 64 * 1024 * 1024
#: What ``from_bytes`` turns into "not a compiled table": whatever a damaged
#: or hand-made file makes numpy, zipfile or json raise (a JSON nested
#: thousands deep raises RecursionError).
_DAMAGE = (KeyError, IndexError, TypeError, ValueError, OSError, EOFError,
           zipfile.BadZipFile, RecursionError)


@dataclass(frozen=True, slots=True)
class SlotEntry:
    """What a slot says, shared by every slot that says the same thing."""

    status: PortStatus
    service: str
    aliases: tuple[str, ...]
    description: str
    flags: PortFlag
    remark: str  # IANA's "Unauthorized Use Reported" text, when it applies
    record_ids: tuple[int, ...]
    source: int  # index into PortTable.sources


class PortInfo(NamedTuple):
    """The answer for one (transport, port); a tuple because it is built per lookup."""

    transport: Transport
    port: int
    status: PortStatus
    service: str
    aliases: tuple[str, ...]
    description: str
    flags: PortFlag
    remark: str
    record_ids: tuple[int, ...]
    source: str  # path of the source that answered, "" when none did

    @property
    def flagged(self) -> bool:
        return self.status.flagged or bool(self.flags & PortFlag.UNAUTHORIZED_USE)


class PortTable:
    """O(1) answers for every port of every transport."""

    __slots__ = (
        "_entries",
        "_entries_blob",
        "_entry_cache",
        "_entry_rows",
        "_flag_rows",
        "_infos",
        "_raw_entries",
        "_service_rows",
        "_status_rows",
        "entry",
        "flags",
        "names",
        "service_id",
        "sources",
        "status",
    )

    def __init__(
        self,
        *,
        status: npt.NDArray[np.uint8],
        service_id: npt.NDArray[np.int32],
        flags: npt.NDArray[np.uint8],
        entry: npt.NDArray[np.int32],
        names: list[str],
        entries: list[SlotEntry] | None,
        sources: list[SourceInfo],
        entries_blob: bytes = b"",
    ) -> None:
        self.status = status
        self.service_id = service_id
        self.flags = flags
        self.entry = entry
        self.names = names
        self._entries = entries
        self._entries_blob = entries_blob
        self._raw_entries: list[Any] | None = None
        self._entry_cache: dict[int, SlotEntry] = {}
        self.sources = sources
        # Plain lists make scalar lookups list indexing, not numpy scalar boxing.
        self._status_rows: list[list[int]] = status.tolist()
        self._service_rows: list[list[int]] = service_id.tolist()
        self._entry_rows: list[list[int]] | None = None
        self._flag_rows: list[list[int]] | None = None
        # (transport << 16 | port) -> answer: a PortInfo is immutable and costs
        # ~300 ns to build, so a port asked for again is one dict probe.
        self._infos: dict[int, PortInfo] = {}

    @property
    def entries(self) -> list[SlotEntry]:
        """Slot details; decoded from the cache only when first asked for."""
        if self._entries is None:
            self._entries = [self._entry(i) for i in range(len(self._raw()))]
            self._raw_entries, self._entry_cache = None, {}
        return self._entries

    def _raw(self) -> list[Any]:
        if self._raw_entries is None:  # a table built by hand with a blob
            self._raw_entries = json.loads(self._entries_blob)
            self._entries_blob = b""
        return self._raw_entries

    def _entry(self, index: int) -> SlotEntry:
        """One slot's details. A report looks up a few dozen ports: decoding all
        13,000 entries (enum values and all) cost 55 ms of every start-up."""
        if self._entries is not None:
            return self._entries[index]
        entry = self._entry_cache.get(index)
        if entry is None:
            st, sv, al, de, fl, rm, ri, so = self._raw()[index]
            entry = SlotEntry(PortStatus(st), sv, tuple(al), de, PortFlag(fl), rm, tuple(ri), so)
            self._entry_cache[index] = entry
        return entry

    # -- scalar ---------------------------------------------------------------
    def status_of(self, transport: Transport, port: int) -> PortStatus:
        return _STATUS_BY_CODE[self._status_rows[transport][port]]

    def service_of(self, transport: Transport, port: int) -> str:
        return self.names[self._service_rows[transport][port]]

    def lookup(self, transport: Transport, port: int) -> PortInfo:
        info = self._infos.get((transport << 16) | port) if 0 <= port < PORTS else None
        if info is None:
            info = self._infos[(transport << 16) | port] = self._build_info(transport, port)
        return info

    def _build_info(self, transport: Transport, port: int) -> PortInfo:
        if not 0 <= port < PORTS:
            raise ValueError(f"port {port} is outside 0-65535")
        if self._entry_rows is None or self._flag_rows is None:
            self._entry_rows = self.entry.tolist()
            self._flag_rows = self.flags.tolist()
        status = _STATUS_BY_CODE[self._status_rows[transport][port]]
        index = self._entry_rows[transport][port]
        if index < 0:
            return _new_info(PortInfo, (transport, port, status, "", (), "", PortFlag.NONE, "",
                                        (), ""))
        e = self._entry(index)
        flags = self._flag_rows[transport][port]
        return _new_info(PortInfo, (
            transport,
            port,
            status,
            e.service,
            e.aliases,
            e.description,
            _FLAGS_BY_CODE[flags],
            e.remark if flags else "",
            e.record_ids,
            self.sources[e.source].path,
        ))

    # -- vectorised -----------------------------------------------------------
    def lookup_many(
        self, transports: npt.NDArray[np.integer[Any]], ports: npt.NDArray[np.integer[Any]]
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int32], npt.NDArray[np.uint8]]:
        """Status, service id and flags for each (transport, port) pair.

        ``transports`` holds ``Transport`` values (0-3); ``ports`` 0-65535.
        """
        flat = transports.astype(np.intp) * PORTS + ports
        return (
            np.take(self.status.reshape(-1), flat),
            np.take(self.service_id.reshape(-1), flat),
            np.take(self.flags.reshape(-1), flat),
        )

    # -- facts ----------------------------------------------------------------
    @property
    def last_updated(self) -> date | None:
        dates = [s.last_updated for s in self.sources if s.last_updated is not None]
        return max(dates) if dates else None

    @property
    def snapshot(self) -> str:
        """Which source answers for the registry's date: the newest one, as users name it.

        ``packaged:…`` for the snapshot shipped in the package, else its path.
        """
        if not self.sources:
            return ""
        newest = max(self.sources, key=lambda s: s.last_updated or date.min)
        return source_label(newest.path)

    @property
    def assigned_only(self) -> bool:
        """True when every source lists assigned ports only (services files)."""
        return bool(self.sources) and all(s.assigned_only for s in self.sources)

    def listed_counts(self) -> dict[Transport, int]:
        """How many of the 65,536 ports of each transport some source speaks about."""
        return {t: int(np.count_nonzero(self.entry[t] >= 0)) for t in Transport}

    def status_counts(self) -> dict[Transport, dict[PortStatus, int]]:
        out: dict[Transport, dict[PortStatus, int]] = {}
        for t in Transport:
            counts = np.bincount(self.status[t], minlength=len(PortStatus))
            out[t] = {s: int(counts[s]) for s in PortStatus}
        return out

    # -- serialisation --------------------------------------------------------
    def to_bytes(self) -> bytes:
        entries = [
            [e.status, e.service, list(e.aliases), e.description, int(e.flags), e.remark,
             list(e.record_ids), e.source]
            for e in self.entries
        ]
        meta = {
            "version": TABLE_FORMAT_VERSION,
            "names": self.names,
            "sources": [
                [s.path, s.format.value, s.last_updated.isoformat() if s.last_updated else None,
                 s.assigned_only, s.sha256]
                for s in self.sources
            ],
        }
        buf = io.BytesIO()
        np.savez(
            buf,
            status=self.status,
            service_id=self.service_id,
            flags=self.flags,
            entry=self.entry,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            entries=np.frombuffer(json.dumps(entries).encode(), dtype=np.uint8),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PortTable:
        """Inverse of ``to_bytes``; raises ``ValueError`` on anything else.

        Everything is checked before it is trusted (the cache directory is
        writable by the user, and a file there may be cut short or edited):
        array shapes and dtypes, every index into ``names`` and the slot
        entries, and the JSON's structure. The caller treats the error as a
        cache miss, so nothing but ``ValueError`` may escape.
        """
        try:
            return cls._checked(data)
        except _DAMAGE as exc:
            raise ValueError(f"not a compiled portwatch table: {exc!s:.200}") from None

    @classmethod
    def _checked(cls, data: bytes) -> PortTable:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for name in (*_SLOT_ARRAYS, *_BLOBS):
                if zf.getinfo(f"{name}.npy").file_size > _MAX_MEMBER_BYTES:
                    raise ValueError(f"member {name!r} is implausibly large")
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in (*_SLOT_ARRAYS, *_BLOBS)}
        for name, dtype in _SLOT_ARRAYS.items():
            a = arrays[name]
            if a.shape != (len(Transport), PORTS) or a.dtype != dtype:
                raise ValueError(f"{name}: {a.dtype}{a.shape}, expected {dtype}(4, {PORTS})")
        for name in _BLOBS:
            if arrays[name].ndim != 1 or arrays[name].dtype != np.uint8:
                raise ValueError(f"{name}: not a byte string")
        meta = json.loads(arrays["meta"].tobytes())
        if not isinstance(meta, dict) or meta.get("version") != TABLE_FORMAT_VERSION:
            raise ValueError("compiled table of another format version")
        names, sources = _checked_names(meta["names"]), _checked_sources(meta["sources"])
        raw = json.loads(arrays["entries"].tobytes())
        _check_entries(raw, len(sources))
        status, flags = arrays["status"], arrays["flags"]
        service_id, entry = arrays["service_id"], arrays["entry"]
        if int(status.max()) >= len(PortStatus) or int(flags.max()) >= len(_FLAGS_BY_CODE):
            raise ValueError("status or flag code out of range")
        if int(service_id.min()) < 0 or int(service_id.max()) >= len(names):
            raise ValueError("service id out of range of the names")
        if int(entry.min()) < -1 or int(entry.max()) >= len(raw):
            raise ValueError("slot entry index out of range of the entries")
        table = cls(
            status=np.ascontiguousarray(status),
            service_id=np.ascontiguousarray(service_id),
            flags=np.ascontiguousarray(flags),
            entry=np.ascontiguousarray(entry),
            names=names,
            entries=None,
            sources=sources,
        )
        table._raw_entries = raw  # already decoded to check it: keep, do not decode twice
        return table


def _checked_names(names: object) -> list[str]:
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError("names: expected a list of strings")
    return names


def _checked_sources(sources: object) -> list[SourceInfo]:
    if not isinstance(sources, list):
        raise ValueError("sources: expected a list")
    out: list[SourceInfo] = []
    for item in sources:
        p, f, d, a, h = item  # ValueError/TypeError on another shape
        if not (isinstance(p, str) and isinstance(a, bool) and isinstance(h, str)
                and (d is None or isinstance(d, str))):
            raise ValueError("sources: an item of the wrong types")
        out.append(SourceInfo(p, SourceFormat(f), date.fromisoformat(d) if d else None, a, h))
    return out


_STATUS_CODES = frozenset(int(s) for s in PortStatus)
_FLAG_CODES = frozenset(range(len(_FLAGS_BY_CODE)))


def _check_entries(raw: object, n_sources: int) -> None:
    """Every entry is ``[status, service, aliases, description, flags, remark, ids, source]``.

    Checked column by column with C-level set/map passes: a per-entry Python
    loop over 13,000 entries would triple the warm start-up.
    """
    if not isinstance(raw, list):
        raise ValueError("entries: expected a list")
    if not raw:
        return
    if set(map(type, raw)) != {list} or set(map(len, raw)) != {8}:
        raise ValueError("entries: an entry of the wrong shape")
    st, sv, al, de, fl, rm, ri, so = zip(*raw, strict=True)
    for column, kind in ((st, int), (sv, str), (al, list), (de, str), (fl, int), (rm, str),
                         (ri, list), (so, int)):
        if set(map(type, column)) != {kind}:
            raise ValueError("entries: a field of the wrong type")
    aliases, ids = list(chain.from_iterable(al)), list(chain.from_iterable(ri))
    if not set(map(type, aliases)) <= {str} or not set(map(type, ids)) <= {int}:
        raise ValueError("entries: an alias or record id of the wrong type")
    if not set(st) <= _STATUS_CODES or not set(fl) <= _FLAG_CODES:
        raise ValueError("entries: a status or flag code out of range")
    if min(so) < 0 or max(so) >= n_sources or (ids and min(ids) < 0):
        raise ValueError("entries: a source or record index out of range")
