"""Exact merging of captures analysed apart: rotated files give the uncut capture's report.

A capture cut into rotated files (``dumpcap -b``, ``editcap -c``) splits flows
at every cut. Merging finished ``Report``s cannot undo that: a flow whose SYN
is in one file and whose data is in the next is decided twice, once without
its handshake. So each capture returns its *partial state* instead
(``CapturePartial``): per flow the 5-tuple key, per-direction packet and byte
counts, first/last timestamps and the handshake evidence (which side sent the
SYN-ACK or received the SYN), plus the capture-wide counters. ``merge_partials``
joins them with numpy (one sort, then ``reduceat`` per column) and
``MergedCapture.report`` decides the service side once, over the merged flows,
exactly as ``FlowTable.decide`` does for the uncut capture:

- counts add up, first is the minimum, last the maximum;
- the handshake side is the one of the *latest* capture that saw a SYN or
  SYN-ACK (within a capture the latest packet wins too), so captures are
  merged in time order: by their first packet, then by the order given;
- with ``idle_s`` (one timeout per transport, ``FlowLimits.idle_s``), a
  5-tuple silent for longer than its timeout across a cut starts a new flow;
  without it (the default) a 5-tuple is one flow however long the gap, as
  ``portwatch analyze`` counts an uncut capture.

Partials are small (about 100 bytes per flow), picklable, and hold no
``PortTable``: workers count, the merging process decides with its own table.

Not merged exactly: a non-first IP fragment whose first fragment lies in an
earlier file is counted as an unattributed fragment (the analyzer forgets
first fragments at the end of a capture).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from portwatch._atomic import atomic_write_bytes
from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.flows import FlowTable
from portwatch.analysis.report import Report, build_report
from portwatch.decode.native import DecodeStatus
from portwatch.ports import Transport
from portwatch.porttable.table import PortTable

__all__ = [
    "COLUMN_MERGE",
    "CapturePartial",
    "MergedCapture",
    "load_state",
    "merge_partials",
    "partial_of",
    "save_state",
    "state_path",
]

I64 = npt.NDArray[np.int64]

#: How each ``FlowTable`` column merges across captures. A column the flow
#: table grows that is missing here makes ``partial_of`` fail loudly rather
#: than drop it: a new column needs its rule (``sum``, ``min``, ``max``, ``or``
#: (bitwise), ``first``: the value of the earliest capture, or ``last``: the
#: value of the latest capture where it is non-zero).
COLUMN_MERGE: dict[str, str] = {
    "packets_ab": "sum",
    "packets_ba": "sum",
    "bytes_ab": "sum",
    "bytes_ba": "sum",
    "first_ns": "min",
    "last_ns": "max",
    "handshake_side": "last",
    "tcp_flags_ab": "or",  # the flags seen each way, over the whole flow
    "tcp_flags_ba": "or",
    "first_flags": "first",  # the flow's earliest packet is in its earliest capture
    "first_from_a": "first",
    "encap": "first",  # the encapsulation of the flow's first packet
}
#: Columns that are the table's own bookkeeping, not flow state.
_NOT_STATE = frozenset({"keys", "alive"})
_KEY_FIELDS = ("t", "ah", "al", "ap", "bh", "bl", "bp")
_NO_TIME = np.iinfo(np.int64).max


@dataclass(slots=True)
class CapturePartial:
    """What one capture contributes to a merged report (picklable, no port table).

    ``columns`` holds one array per ``COLUMN_MERGE`` entry, parallel to ``keys``
    (the flow table's structured 5-tuple keys, endpoints in canonical order).
    """

    capture: str
    keys: npt.NDArray[np.void]
    columns: dict[str, npt.NDArray[Any]]
    packets: int
    bytes: int
    decode_counts: I64
    fragments_attributed: int = 0
    warnings: list[str] = field(default_factory=list)
    partial: bool = False

    @property
    def flows(self) -> int:
        return int(self.keys.shape[0])

    @property
    def start_ns(self) -> int:
        """The capture's first packet in a flow (merge order); max int64 when it has none."""
        first = self.columns["first_ns"]
        return int(first.min()) if first.size else int(_NO_TIME)


def _flow_columns(ft: FlowTable) -> dict[str, npt.NDArray[Any]]:
    """Every per-flow array of ``ft`` by name (found, not listed: new columns show up)."""
    return {name: value for name, value in vars(ft).items()
            if isinstance(value, np.ndarray) and value.shape == (ft.capacity,)}


def partial_of(analyzer: Analyzer) -> CapturePartial:
    """The partial state of everything ``analyzer`` counted (live flows only)."""
    ft = analyzer.flows
    columns = _flow_columns(ft)
    unknown = set(columns) - set(COLUMN_MERGE) - _NOT_STATE
    if unknown:
        raise TypeError(f"FlowTable column(s) {sorted(unknown)} have no rule in "
                        "portwatch.analysis.merge.COLUMN_MERGE: say how they merge")
    live = np.flatnonzero(ft.alive[: ft.size])
    return CapturePartial(
        capture=analyzer.capture,
        keys=ft.keys[live].copy(),
        columns={name: columns[name][live].copy() for name in COLUMN_MERGE},
        packets=analyzer.packets,
        bytes=analyzer.bytes,
        decode_counts=analyzer.decode_counts.copy(),
        fragments_attributed=analyzer.fragments_attributed,
        warnings=list(analyzer.warnings),
        partial=analyzer.partial,
    )


@dataclass(slots=True)
class MergedCapture:
    """The flows of several captures joined; ``report(table)`` decides and words them.

    ``first_capture`` is, per flow, the index in ``captures`` of the capture
    where the flow was first seen (the report's ``capture`` field).
    """

    captures: list[str]
    keys: npt.NDArray[np.void]
    columns: dict[str, npt.NDArray[Any]]
    first_capture: I64
    packets: int
    bytes: int
    decode_counts: I64
    fragments_attributed: int
    warnings: list[str]
    partial: bool

    def analyzer(self, table: PortTable) -> Analyzer:
        """An ``Analyzer`` holding the merged flows, as if it had read every capture."""
        n = int(self.keys.shape[0])
        out = Analyzer(table, capture=self.captures[0] if len(self.captures) == 1 else "")
        ft = FlowTable(capacity=max(n, 1))
        ft.keys[:n] = self.keys
        for name, values in self.columns.items():
            getattr(ft, name)[:n] = values
        ft.alive[:n] = True
        ft.size = n
        ft.reindex()
        out.flows = ft
        out.packets, out.bytes = self.packets, self.bytes
        out.decode_counts = self.decode_counts.copy()
        out.fragments_attributed = self.fragments_attributed
        out.warnings = list(self.warnings)
        out.partial = self.partial
        return out

    def report(self, table: PortTable) -> Report:
        """The report of the merged flows; each flow names the capture it started in."""
        rep = build_report(self.analyzer(table))
        rep.captures = list(self.captures)
        names = [self.captures[i] for i in self.first_capture.tolist()]
        for flow, name in zip(rep.flows, names, strict=True):
            flow.capture = name
        return rep


def _time_order(partials: Sequence[CapturePartial]) -> list[int]:
    """Captures by their first packet, then as given (rotated files sort by name anyway)."""
    return sorted(range(len(partials)), key=lambda i: (partials[i].start_ns, i))


def merge_partials(partials: Sequence[CapturePartial], *,
                   idle_s: Mapping[Transport, float] | None = None) -> MergedCapture:
    """Join the partial states of captures into the flows of one capture (vectorised)."""
    if not partials:
        raise ValueError("merge_partials needs at least one capture")
    order = _time_order(partials)
    parts = [partials[i] for i in order]
    keys = np.concatenate([p.keys for p in parts])
    seq = np.concatenate([np.full(p.flows, rank, dtype=np.int64) for rank, p in enumerate(parts)])
    cols = {name: np.concatenate([p.columns[name] for p in parts]) for name in COLUMN_MERGE}
    # One sort: by 5-tuple, then by capture in time order (lexsort's last key is primary).
    sort = np.lexsort([seq, *(keys[f] for f in reversed(_KEY_FIELDS))])
    keys, seq = keys[sort], seq[sort]
    cols = {name: values[sort] for name, values in cols.items()}
    n = keys.shape[0]
    new = np.ones(n, dtype=np.bool_)
    if n > 1:
        same = np.ones(n - 1, dtype=np.bool_)
        for f in _KEY_FIELDS:
            same &= keys[f][1:] == keys[f][:-1]
        if idle_s is not None:
            idle_ns = np.asarray([int(idle_s[t] * 1e9) for t in Transport], dtype=np.int64)
            gap = cols["first_ns"][1:] - cols["last_ns"][:-1]
            same &= gap <= idle_ns[keys["t"][1:]]
        new[1:] = ~same
    starts = np.flatnonzero(new)
    merged = {name: _reduce(COLUMN_MERGE[name], values, starts)
              for name, values in cols.items()}
    # A flow's capture is where it was first seen: rows of a group are in time order.
    first_capture = np.asarray(order, dtype=np.int64)[seq[starts]]
    # Report order: by first packet, then 5-tuple (deterministic whatever the split).
    out_keys = keys[starts]
    by_time = np.lexsort([*(out_keys[f] for f in reversed(_KEY_FIELDS)), merged["first_ns"]])
    decode = np.zeros(len(DecodeStatus), dtype=np.int64)
    for p in parts:
        decode += p.decode_counts
    return MergedCapture(
        captures=[p.capture for p in partials],
        keys=out_keys[by_time],
        columns={name: values[by_time] for name, values in merged.items()},
        first_capture=first_capture[by_time],
        packets=sum(p.packets for p in parts),
        bytes=sum(p.bytes for p in parts),
        decode_counts=decode,
        fragments_attributed=sum(p.fragments_attributed for p in parts),
        warnings=[w for p in parts for w in p.warnings],
        partial=any(p.partial for p in parts),
    )


def _reduce(how: str, values: npt.NDArray[Any], starts: I64) -> npt.NDArray[Any]:
    """One value per group of rows beginning at ``starts`` (rows are in time order)."""
    if values.size == 0:
        return values.copy()
    if how == "sum":
        return np.add.reduceat(values, starts)
    if how == "min":
        return np.minimum.reduceat(values, starts)
    if how == "max":
        return np.maximum.reduceat(values, starts)
    if how == "or":
        return np.bitwise_or.reduceat(values, starts)
    if how == "first":
        return values[starts]
    if how == "last":  # the latest non-zero value of the group, else zero
        pos = np.where(values != 0, np.arange(values.size), -1)
        last = np.maximum.reduceat(pos, starts)
        return np.where(last >= 0, values[np.maximum(last, 0)], 0).astype(values.dtype)
    raise ValueError(f"unknown merge rule {how!r}")


# -- saved state (``--resume``) -----------------------------------------------------

_STATE_VERSION = 1
STATE_DIR = "_state"


def state_path(directory: str, capture: str) -> str:
    """Where the state of ``capture`` is kept under ``directory`` (one file per capture)."""
    digest = hashlib.sha256(capture.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return os.path.join(directory, STATE_DIR, f"{digest}.npz")


def save_state(directory: str, capture: str, fingerprint: str, partial: CapturePartial) -> None:
    """Keep ``partial`` (atomically): a later run with the same fingerprint skips the capture."""
    meta = {"version": _STATE_VERSION, "capture": capture, "fingerprint": fingerprint,
            "packets": partial.packets, "bytes": partial.bytes,
            "fragments_attributed": partial.fragments_attributed,
            "warnings": partial.warnings, "partial": partial.partial}
    arrays: dict[str, Any] = {f"col_{name}": values for name, values in partial.columns.items()}
    arrays.update(meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                  keys=partial.keys, decode_counts=partial.decode_counts)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(state_path(directory, capture), buf.getvalue())


def load_state(directory: str, capture: str, fingerprint: str) -> CapturePartial | None:
    """The saved state of ``capture``, or None when absent, stale, or unreadable."""
    try:
        with np.load(state_path(directory, capture), allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            if (meta.get("version"), meta.get("capture"), meta.get("fingerprint")) != (
                    _STATE_VERSION, capture, fingerprint):
                return None
            keys = data["keys"]
            columns = {name: data[f"col_{name}"] for name in COLUMN_MERGE}
            if keys.dtype != FlowTable().keys.dtype or any(
                    c.shape != keys.shape for c in columns.values()):
                return None
            return CapturePartial(capture, keys, columns, int(meta["packets"]),
                                  int(meta["bytes"]), data["decode_counts"].astype(np.int64),
                                  int(meta["fragments_attributed"]), list(meta["warnings"]),
                                  bool(meta["partial"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
