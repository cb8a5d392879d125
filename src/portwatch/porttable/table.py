"""The compiled table: every (transport, port) answered by array indexing.

For each of tcp, udp, sctp and dccp there are 65,536 slots. ``status``,
``service_id`` and ``flags`` are ``(4, 65536)`` numpy arrays, so a batch of
ports is looked up with one ``np.take``; ``entry`` points each slot at an
interned ``SlotEntry`` holding what only a person reads (aliases,
description, remark, the records behind the answer).

The table is pure data: ``to_bytes``/``from_bytes`` serialise it, and the
on-disk cache (``portwatch.porttable.cache``) does the I/O. The slot entries
are stored as columns (numpy arrays and one string pool), not JSON: loading
checks every index with a few array comparisons, and an entry becomes a
``SlotEntry`` only when a lookup needs it, so every command starts without
decoding 13,000 entries.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from itertools import pairwise
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from portwatch.ports import PortFlag, PortStatus, Transport
from portwatch.registry.model import SourceFormat, SourceInfo
from portwatch.registry.packaged import source_label

__all__ = ["PORTS", "TABLE_FORMAT_VERSION", "PortInfo", "PortTable", "SlotEntry"]

#: 2: slot entries as columns and a string pool (1 stored them as JSON).
TABLE_FORMAT_VERSION = 2
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
_BLOBS = ("meta", "text")
#: The slot entries, one value per entry (``_EntryColumns``).
_ENTRY_ARRAYS: dict[str, np.dtype[Any]] = {
    "entry_status": np.dtype(np.uint8),
    "entry_flags": np.dtype(np.uint8),
    "entry_source": np.dtype(np.int32),
    "entry_service": np.dtype(np.int32),
    "entry_description": np.dtype(np.int32),
    "entry_remark": np.dtype(np.int32),
    "alias_ends": np.dtype(np.int64),
    "record_ends": np.dtype(np.int64),
}
#: Flat lists the entries point into; ``text`` is the UTF-8 string pool.
_POOL_ARRAYS: dict[str, np.dtype[Any]] = {
    "aliases": np.dtype(np.int32),
    "record_ids": np.dtype(np.int64),
    "text_ends": np.dtype(np.int64),
}
_MEMBERS = (*_SLOT_ARRAYS, *_BLOBS, *_ENTRY_ARRAYS, *_POOL_ARRAYS)
#: No member of a genuine table comes near this (the whole file is ~3.5 MB);
#: checked from the zip directory before anything is inflated.
_MAX_MEMBER_BYTES = 64 * 1024 * 1024
#: What ``from_bytes`` turns into "not a compiled table": whatever a damaged
#: or hand-made file makes numpy, zipfile or json raise (a JSON nested
#: thousands deep raises RecursionError).
_DAMAGE = (KeyError, IndexError, TypeError, ValueError, OSError, EOFError,
           zipfile.BadZipFile, RecursionError)
_I64 = npt.NDArray[np.int64]


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
        "_columns",
        "_entries",
        "_entry_cache",
        "_infos",
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
    ) -> None:
        """``entries`` None: the table comes from ``from_bytes``, which sets the columns."""
        self.status = status
        self.service_id = service_id
        self.flags = flags
        self.entry = entry
        self.names = names
        self._entries = entries
        self._columns: _EntryColumns | None = None
        self._entry_cache: dict[int, SlotEntry] = {}
        self.sources = sources
        # Plain lists make scalar lookups list indexing, not numpy scalar boxing;
        # made on the first scalar lookup (half a million ints: not every run needs them).
        self._status_rows: list[list[int]] | None = None
        self._service_rows: list[list[int]] | None = None
        # (transport << 16 | port) -> answer: a PortInfo is immutable and costs
        # ~300 ns to build, so a port asked for again is one dict probe.
        self._infos: dict[int, PortInfo] = {}

    @property
    def entries(self) -> list[SlotEntry]:
        """Slot details; decoded from the cache only when first asked for."""
        if self._entries is None:
            assert self._columns is not None
            self._entries = self._columns.all()
            self._columns, self._entry_cache = None, {}
        return self._entries

    def _entry(self, index: int) -> SlotEntry:
        """One slot's details. A report looks up a few dozen ports: decoding all
        13,000 entries (enum values and all) cost 55 ms of every start-up."""
        if self._entries is not None:
            return self._entries[index]
        entry = self._entry_cache.get(index)
        if entry is None:
            assert self._columns is not None
            entry = self._entry_cache[index] = self._columns.one(index)
        return entry

    def _rows(self) -> tuple[list[list[int]], list[list[int]]]:
        """Status and service id rows as lists, made on first use."""
        if self._status_rows is None or self._service_rows is None:
            self._status_rows = self.status.tolist()
            self._service_rows = self.service_id.tolist()
        return self._status_rows, self._service_rows

    # -- scalar ---------------------------------------------------------------
    def status_of(self, transport: Transport, port: int) -> PortStatus:
        return _STATUS_BY_CODE[self._rows()[0][transport][port]]

    def service_of(self, transport: Transport, port: int) -> str:
        return self.names[self._rows()[1][transport][port]]

    def lookup(self, transport: Transport, port: int) -> PortInfo:
        info = self._infos.get((transport << 16) | port) if 0 <= port < PORTS else None
        if info is None:
            info = self._infos[(transport << 16) | port] = self._build_info(transport, port)
        return info

    def _build_info(self, transport: Transport, port: int) -> PortInfo:
        """Once per distinct port (``lookup`` keeps the answer): numpy scalars will do;
        turning the four arrays into lists first cost 15 ms of every start-up."""
        if not 0 <= port < PORTS:
            raise ValueError(f"port {port} is outside 0-65535")
        status = _STATUS_BY_CODE[int(self.status[transport, port])]
        index = int(self.entry[transport, port])
        if index < 0:
            return _new_info(PortInfo, (transport, port, status, "", (), "", PortFlag.NONE, "",
                                        (), ""))
        e = self._entry(index)
        flags = int(self.flags[transport, port])
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
        meta = {
            "version": TABLE_FORMAT_VERSION,
            "names": self.names,
            "sources": [
                [s.path, s.format.value, s.last_updated.isoformat() if s.last_updated else None,
                 s.assigned_only, s.sha256]
                for s in self.sources
            ],
        }
        members = {
            "status": self.status,
            "service_id": self.service_id,
            "flags": self.flags,
            "entry": self.entry,
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            **_entry_columns(self.entries),
        }
        buf = io.BytesIO()
        # numpy's stub cannot tell a member named by a ** key from allow_pickle
        np.savez(buf, **members)  # type: ignore[arg-type]
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PortTable:
        """Inverse of ``to_bytes``; raises ``ValueError`` on anything else.

        Everything is checked before it is trusted (the cache directory is
        writable by the user, and a file there may be cut short or edited):
        array shapes and dtypes, every index into ``names``, the slot entries
        and the string pool, and the JSON's structure. The caller treats the
        error as a cache miss, so nothing but ``ValueError`` may escape.
        """
        try:
            return cls._checked(data)
        except _DAMAGE as exc:
            raise ValueError(f"not a compiled portwatch table: {exc!s:.200}") from None

    @classmethod
    def _checked(cls, data: bytes) -> PortTable:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for name in _MEMBERS:
                if zf.getinfo(f"{name}.npy").file_size > _MAX_MEMBER_BYTES:
                    raise ValueError(f"member {name!r} is implausibly large")
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in _MEMBERS}
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
        columns = _checked_columns(arrays, len(sources))
        status, flags = arrays["status"], arrays["flags"]
        service_id, entry = arrays["service_id"], arrays["entry"]
        if int(status.max()) >= len(PortStatus) or int(flags.max()) >= len(_FLAGS_BY_CODE):
            raise ValueError("status or flag code out of range")
        if int(service_id.min()) < 0 or int(service_id.max()) >= len(names):
            raise ValueError("service id out of range of the names")
        if int(entry.min()) < -1 or int(entry.max()) >= columns.size:
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
        table._columns = columns
        return table


def _checked_names(names: object) -> list[str]:
    if not isinstance(names, list) or not names or set(map(type, names)) != {str}:
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


@dataclass(frozen=True, slots=True)
class _EntryColumns:
    """The slot entries as stored: entry ``i``'s fields are the ``i``-th of each array.

    Strings are indices into a pool (``text`` cut at ``text_ends``); aliases
    and record ids are runs of a flat array, entry ``i``'s ending at
    ``alias_ends[i]``/``record_ends[i]`` and starting where entry ``i - 1``'s ended.
    """

    arrays: dict[str, npt.NDArray[Any]]
    text: str

    @property
    def size(self) -> int:
        return len(self.arrays["entry_status"])

    def one(self, i: int) -> SlotEntry:
        """Entry ``i``, read with a dozen scalar indexings (no list of the whole column)."""
        a = self.arrays
        ends = a["text_ends"]
        aliases = a["aliases"][_run(a["alias_ends"], i)].tolist()
        return SlotEntry(
            _STATUS_BY_CODE[int(a["entry_status"][i])],
            self._string(ends, int(a["entry_service"][i])),
            tuple(self._string(ends, k) for k in aliases),
            self._string(ends, int(a["entry_description"][i])),
            _FLAGS_BY_CODE[int(a["entry_flags"][i])],
            self._string(ends, int(a["entry_remark"][i])),
            tuple(a["record_ids"][_run(a["record_ends"], i)].tolist()),
            int(a["entry_source"][i]),
        )

    def _string(self, ends: _I64, k: int) -> str:
        return self.text[int(ends[k - 1]) if k else 0:int(ends[k])]

    def all(self) -> list[SlotEntry]:
        """Every entry, each column turned into a list once."""
        a = self.arrays
        ends = a["text_ends"].tolist()
        pool = [self.text[start:end] for start, end in pairwise([0, *ends])]
        aliases = [pool[k] for k in a["aliases"].tolist()]
        record_ids = a["record_ids"].tolist()
        alias_ends, record_ends = a["alias_ends"].tolist(), a["record_ends"].tolist()
        out = []
        alias_start = record_start = 0
        for st, sv, de, fl, rm, so, ae, re in zip(
                a["entry_status"].tolist(), a["entry_service"].tolist(),
                a["entry_description"].tolist(), a["entry_flags"].tolist(),
                a["entry_remark"].tolist(), a["entry_source"].tolist(), alias_ends,
                record_ends, strict=True):
            out.append(SlotEntry(_STATUS_BY_CODE[st], pool[sv], tuple(aliases[alias_start:ae]),
                                 pool[de], _FLAGS_BY_CODE[fl], pool[rm],
                                 tuple(record_ids[record_start:re]), so))
            alias_start, record_start = ae, re
        return out


def _run(ends: _I64, i: int) -> slice:
    return slice(int(ends[i - 1]) if i else 0, int(ends[i]))


def _entry_columns(entries: Sequence[SlotEntry]) -> dict[str, npt.NDArray[Any]]:
    """``entries`` as the arrays ``_EntryColumns`` reads, each distinct string pooled once."""
    pool: dict[str, int] = {}

    def ids(texts: Sequence[str]) -> list[int]:
        return [pool.setdefault(t, len(pool)) for t in texts]

    aliases = [a for e in entries for a in e.aliases]
    columns: dict[str, npt.NDArray[Any]] = {
        "entry_status": np.array([e.status for e in entries], dtype=np.uint8),
        "entry_flags": np.array([e.flags for e in entries], dtype=np.uint8),
        "entry_source": np.array([e.source for e in entries], dtype=np.int32),
        "entry_service": np.array(ids([e.service for e in entries]), dtype=np.int32),
        "entry_description": np.array(ids([e.description for e in entries]), dtype=np.int32),
        "entry_remark": np.array(ids([e.remark for e in entries]), dtype=np.int32),
        "alias_ends": np.cumsum([len(e.aliases) for e in entries], dtype=np.int64),
        "aliases": np.array(ids(aliases), dtype=np.int32),
        "record_ends": np.cumsum([len(e.record_ids) for e in entries], dtype=np.int64),
        "record_ids": np.array([r for e in entries for r in e.record_ids], dtype=np.int64),
        "text_ends": np.cumsum([len(t) for t in pool], dtype=np.int64),
        "text": np.frombuffer("".join(pool).encode(), dtype=np.uint8),
    }
    return columns


def _checked_columns(arrays: dict[str, npt.NDArray[Any]], n_sources: int) -> _EntryColumns:
    """The entry columns, every code and index in range (array passes, no loop per entry)."""
    for name, dtype in (*_ENTRY_ARRAYS.items(), *_POOL_ARRAYS.items()):
        if arrays[name].ndim != 1 or arrays[name].dtype != dtype:
            raise ValueError(f"{name}: {arrays[name].dtype}{arrays[name].shape}, expected "
                             f"{dtype} in one dimension")
    n = len(arrays["entry_status"])
    if any(len(arrays[name]) != n for name in _ENTRY_ARRAYS):
        raise ValueError("entries: columns of different lengths")
    text = arrays["text"].tobytes().decode("utf-8")  # UnicodeDecodeError is a ValueError
    _check_ends(arrays["text_ends"], len(text), "text_ends")
    _check_ends(arrays["alias_ends"], len(arrays["aliases"]), "alias_ends")
    _check_ends(arrays["record_ends"], len(arrays["record_ids"]), "record_ends")
    strings = len(arrays["text_ends"])
    for name, bound in (("entry_status", len(PortStatus)), ("entry_flags", len(_FLAGS_BY_CODE)),
                        ("entry_source", n_sources), ("entry_service", strings),
                        ("entry_description", strings), ("entry_remark", strings),
                        ("aliases", strings)):
        _check_range(arrays[name], bound, name)
    if arrays["record_ids"].size and int(arrays["record_ids"].min()) < 0:
        raise ValueError("record_ids: a negative record id")
    return _EntryColumns(arrays, text)


def _check_range(a: npt.NDArray[Any], bound: int, name: str) -> None:
    if a.size and (int(a.min()) < 0 or int(a.max()) >= bound):
        raise ValueError(f"{name}: an index or code outside 0-{bound - 1}")


def _check_ends(ends: _I64, total: int, name: str) -> None:
    """Run ends rise (never fall) from 0 and the last is the end of what they cut."""
    if (ends[-1] if ends.size else 0) != total:
        raise ValueError(f"{name}: the runs do not end where the data does")
    if ends.size and (int(ends[0]) < 0 or bool(np.any(ends[1:] < ends[:-1]))):
        raise ValueError(f"{name}: a run ends before it starts")
