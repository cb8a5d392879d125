"""Per-packet rows from a library's dissection, packed into a ``DecodedBatch``.

The scapy and pyshark engines (and ``portwatch.annotate``) dissect one packet
at a time in Python; each packet becomes a ``Row``, and a list of rows becomes
the same column arrays the native decoder produces, so ``Analyzer`` and
``FlowTable`` cannot tell the engines apart.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from portwatch.decode.native import TUNNEL_DTYPE, TUNNEL_UNUSED, DecodedBatch, DecodeStatus

__all__ = ["IPV4_MAPPED", "Row", "address_int", "rows_to_batch", "timestamp_ns"]

#: ``::ffff:0:0``: IPv4 addresses are stored IPv4-mapped, as the native decoder does.
IPV4_MAPPED = 0xFFFF_0000_0000
_MASK64 = (1 << 64) - 1


@dataclass(slots=True)
class Row:
    """One packet's decoded fields; addresses are 128-bit integers."""

    status: DecodeStatus
    wirelen: int
    ip_version: int = 0
    ip_proto: int = 0
    src: int = 0
    dst: int = 0
    src_port: int = 0
    dst_port: int = 0
    tcp_flags: int = 0
    frag_id: int = 0
    is_first_fragment: bool = False
    #: ``DecodedBatch.encap``: encapsulations, one nibble each, outermost lowest.
    encap: int = 0
    #: The packet's outer layers when a tunnel was opened, outermost first.
    tunnels: list[Row] = field(default_factory=list)


def address_int(text: str) -> int:
    """A dissector's address string as the 128-bit value flows are keyed by."""
    addr = ipaddress.ip_address(text)
    return int(addr) | IPV4_MAPPED if addr.version == 4 else int(addr)


def timestamp_ns(text: str) -> int:
    """``"1700000000.123456789"`` as integer nanoseconds, without float rounding."""
    sec, _, frac = text.strip().partition(".")
    negative = sec.startswith("-")
    value = abs(int(sec or "0")) * 1_000_000_000 + int((frac[:9] or "0").ljust(9, "0"))
    return -value if negative else value


def rows_to_batch(rows: Sequence[Row]) -> DecodedBatch:
    """Column arrays of ``rows``; rows without IP keep only their wire length.

    Statuses past ``OTHER_IP`` carry nothing but ``wirelen`` in the native
    decoder, so their other fields are zeroed here too.
    """
    n = len(rows)
    carries = [r.status.carries_ip for r in rows]
    src = [r.src if c else 0 for r, c in zip(rows, carries, strict=True)]
    dst = [r.dst if c else 0 for r, c in zip(rows, carries, strict=True)]

    def column(values: Iterable[int], dtype: type[np.generic]) -> npt.NDArray[Any]:
        return np.fromiter(values, dtype=dtype, count=n)

    return DecodedBatch(
        status=column([int(r.status) for r in rows], np.uint8),
        ip_version=column([r.ip_version if c else 0 for r, c in zip(rows, carries, strict=True)],
                          np.uint8),
        ip_proto=column([r.ip_proto if c else 0 for r, c in zip(rows, carries, strict=True)],
                        np.uint8),
        src_hi=column([a >> 64 for a in src], np.uint64),
        src_lo=column([a & _MASK64 for a in src], np.uint64),
        dst_hi=column([a >> 64 for a in dst], np.uint64),
        dst_lo=column([a & _MASK64 for a in dst], np.uint64),
        src_port=column([r.src_port if r.status is DecodeStatus.OK else 0 for r in rows],
                        np.uint16),
        dst_port=column([r.dst_port if r.status is DecodeStatus.OK else 0 for r in rows],
                        np.uint16),
        tcp_flags=column([r.tcp_flags if r.status is DecodeStatus.OK else 0 for r in rows],
                         np.uint8),
        frag_id=column([r.frag_id if c else 0 for r, c in zip(rows, carries, strict=True)],
                       np.uint32),
        is_first_fragment=column(
            [r.is_first_fragment and c for r, c in zip(rows, carries, strict=True)], np.bool_),
        wirelen=column([r.wirelen for r in rows], np.uint32),
        encap=column([r.encap if c else 0 for r, c in zip(rows, carries, strict=True)],
                     np.uint16),
        tunnels=_tunnels(rows),
    )


def _tunnels(rows: Sequence[Row]) -> npt.NDArray[np.void]:
    """``DecodedBatch.tunnels`` of the rows' outer layers (Python runs per layer)."""
    depth = max((len(r.tunnels) for r in rows), default=0)
    out = np.zeros((len(rows), depth), dtype=TUNNEL_DTYPE)
    if depth == 0:
        return out
    out["status"] = TUNNEL_UNUSED
    for i, row in enumerate(rows):
        for k, layer in enumerate(row.tunnels):
            ok = layer.status is DecodeStatus.OK
            out[i, k] = (int(layer.status), layer.ip_version, layer.ip_proto,
                         layer.tcp_flags if ok else 0, layer.src_port if ok else 0,
                         layer.dst_port if ok else 0, layer.encap, layer.src >> 64,
                         layer.src & _MASK64, layer.dst >> 64, layer.dst & _MASK64)
    return out
