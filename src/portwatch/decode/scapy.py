"""The scapy engine: scapy reads and dissects the capture, portwatch counts.

It is a cross-check of the native decoder, so nothing here parses header
bytes: records come from scapy's ``RawPcapReader`` (pcap, pcapng, gzip), each
is dissected by the layer scapy registers for its link type (exactly what
``scapy.utils.PcapReader`` does), and the fields are read off scapy's layers.
The one exception is DCCP, for which scapy has no layer: its ports are the
first four bytes scapy leaves as the IP payload.

We read records through ``RawPcapReader`` rather than ``PcapReader`` because
only the raw reader tells a record cut by the end of the file (its captured
length) from a complete one; ``PcapReader`` would hand the stub over as a
packet and only log a warning.

Which packets count follows the native decoder (``portwatch.decode.native``):
IP must sit directly on the link layer (after VLAN tags), the outermost IP
header decides, and a transport header scapy could not dissect is
``TRUNCATED`` (``MALFORMED`` when scapy cut it at the IP header's declared
length). Known differences are listed in ``docs/plugins.md``.

scapy is imported only when this module's functions run.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from decimal import Decimal
from functools import cache
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt

from portwatch.capture.batch import LinkType
from portwatch.decode.native import DecodedBatch, DecodeStatus
from portwatch.decode.rows import Row, address_int, rows_to_batch
from portwatch.errors import CaptureFormatError, CaptureTruncatedError

__all__ = ["dissect", "iter_decoded", "packet_timestamp_ns"]

_IPV6_EXTENSIONS = frozenset((0, 43, 44, 60, 51, 135, 139, 140))
_MAX_IPV6_EXTENSIONS = 8
_SCAPY_EXTENSIONS = frozenset((0, 43, 44, 60, 51, 135))
_ICMP = frozenset((1, 58))
_BSD_AF_INET6 = frozenset((24, 28, 30))
_INT64_MAX = (1 << 63) - 1
#: Link types scapy registers no layer for, read as the equivalent one it has.
_LINKTYPE_ALIASES = {int(LinkType.RAW_DLT14): int(LinkType.RAW_DLT12)}


@cache
def _scapy() -> SimpleNamespace:
    """Import scapy and the layers we need once; registers their bindings."""
    with warnings.catch_warnings():
        # scapy warns on import about optional crypto backends; not ours to fix
        warnings.simplefilter("ignore")
        from scapy.config import conf
        from scapy.data import MTU
        from scapy.error import Scapy_Exception
        from scapy.layers import ipsec  # noqa: F401 - binds AH for IPv6 chains
        from scapy.layers.inet import IP, TCP, UDP
        from scapy.layers.inet6 import IPv6
        from scapy.layers.l2 import (
            CookedLinux,
            CookedLinuxV2,
            Dot1AD,
            Dot1Q,
            Ether,
            Loopback,
            LoopbackOpenBSD,
        )
        from scapy.layers.sctp import SCTP
        from scapy.packet import NoPayload, Padding, Raw
        from scapy.utils import RawPcapNgReader, RawPcapReader
    return SimpleNamespace(
        conf=conf,
        MTU=MTU,
        Scapy_Exception=Scapy_Exception,
        RawPcapReader=RawPcapReader,
        RawPcapNgReader=RawPcapNgReader,
        IP=IP,
        IPv6=IPv6,
        Raw=Raw,
        Padding=Padding,
        NoPayload=NoPayload,
        loopbacks=(Loopback, LoopbackOpenBSD),
        links=(Ether, Dot1Q, Dot1AD, CookedLinux, CookedLinuxV2, Loopback, LoopbackOpenBSD),
        transports={6: TCP, 17: UDP, 132: SCTP},
    )


# -- dissection -----------------------------------------------------------------
def dissect(packet: Any, wirelen: int | None = None) -> Row:
    """The decoded fields of one scapy packet, as the flow engine needs them."""
    s = _scapy()
    wire = len(packet) if wirelen is None else wirelen
    layer = packet
    link = None
    while type(layer) in s.links:
        link, layer = layer, layer.payload
    if type(layer) is s.Raw and type(link) in s.loopbacks:
        layer = _loopback_payload(s, link, layer)
    if type(layer) is s.IP:
        return _ipv4(s, layer, wire)
    if type(layer) is s.IPv6:
        return _ipv6(s, layer, wire)
    if type(layer) is s.Raw and _link_says_ip(link):
        return Row(DecodeStatus.TRUNCATED, wire)  # scapy could not dissect the IP header
    if link is None and type(layer) is s.Raw:
        return Row(DecodeStatus.TRUNCATED, wire)  # the link header itself failed
    return Row(DecodeStatus.NON_IP, wire)


def _loopback_payload(s: SimpleNamespace, link: Any, raw: Any) -> Any:
    """BSD loopback families scapy binds only for the platform it runs on.

    scapy binds ``AF_INET6`` of the host (10 on Linux), so captures written on
    the BSDs or macOS (24, 28, 30), or in the other byte order, stay ``Raw``:
    hand their payload to scapy's IP dissectors by family, as libpcap does.
    """
    family = int(link.type)
    if family > 0xFFFF:
        family = int.from_bytes(family.to_bytes(4, "little"), "big")
    cls = s.IP if family == 2 else s.IPv6 if family in _BSD_AF_INET6 else None
    return raw if cls is None else cls(bytes(raw.load))


def _link_says_ip(link: Any) -> bool:
    if link is None:
        return False
    for name in ("type", "proto"):  # Ether/Dot1Q/SLL ``type``, SLL2 ``proto``
        try:
            value = int(link.getfieldval(name))
        except (AttributeError, TypeError, ValueError):
            continue
        return value in (0x0800, 0x86DD)
    return False


def _cut(s: SimpleNamespace, layer: Any) -> DecodeStatus:
    """Why scapy stopped short of a header: the declared IP length or the capture."""
    padded = layer.getlayer(s.Padding) is not None
    return DecodeStatus.MALFORMED if padded else DecodeStatus.TRUNCATED


def _ipv4(s: SimpleNamespace, ip: Any, wire: int) -> Row:
    if int(ip.version) != 4 or int(ip.ihl or 5) < 5:
        return Row(DecodeStatus.MALFORMED, wire)
    offset = int(ip.frag)
    row = Row(
        DecodeStatus.OK,
        wire,
        ip_version=4,
        ip_proto=int(ip.proto),
        src=address_int(ip.src),
        dst=address_int(ip.dst),
        frag_id=int(ip.id),
        is_first_fragment=offset == 0 and bool(int(ip.flags) & 1),
    )
    if offset != 0:
        row.status = DecodeStatus.FRAGMENT
        return row
    return _transport(s, row, ip, ip.payload)


def _ipv6(s: SimpleNamespace, ip: Any, wire: int) -> Row:
    if int(ip.version) != 6:
        return Row(DecodeStatus.MALFORMED, wire)
    row = Row(DecodeStatus.OK, wire, ip_version=6, src=address_int(ip.src),
              dst=address_int(ip.dst))
    proto = int(ip.nh)
    layer = ip.payload
    for _ in range(_MAX_IPV6_EXTENSIONS):
        if proto not in _IPV6_EXTENSIONS:
            break
        if isinstance(layer, s.Raw | s.Padding | s.NoPayload):
            # undissected: cut short, or a header scapy has no layer for (HIP, shim6)
            row.ip_proto = proto
            row.status = _cut(s, ip) if proto in _SCAPY_EXTENSIONS else DecodeStatus.OTHER_IP
            return row
        if proto == 44:
            offset = int(layer.offset)
            row.frag_id = int(layer.id)
            row.is_first_fragment = offset == 0 and bool(int(layer.m))
            if offset != 0:
                row.ip_proto = int(layer.nh)
                row.status = DecodeStatus.FRAGMENT
                return row
        proto = int(layer.nh)
        layer = layer.payload
    else:
        if proto in _IPV6_EXTENSIONS:
            row.ip_proto = proto
            row.status = DecodeStatus.MALFORMED  # a longer chain than the native decoder walks
            return row
    row.ip_proto = proto
    return _transport(s, row, ip, layer)


def _transport(s: SimpleNamespace, row: Row, ip: Any, layer: Any) -> Row:
    proto = row.ip_proto
    if proto in _ICMP:
        row.status = DecodeStatus.ICMP
        return row
    if proto == 33:  # DCCP: scapy has no layer, so its header is the raw payload
        data = bytes(layer.load) if type(layer) is s.Raw else b""
        if len(data) < 4:
            row.status = _cut(s, ip)
            return row
        row.src_port = int.from_bytes(data[0:2], "big")
        row.dst_port = int.from_bytes(data[2:4], "big")
        return row
    cls = s.transports.get(proto)
    if cls is None:
        row.status = DecodeStatus.OTHER_IP
        return row
    if type(layer) is not cls:
        row.status = _cut(s, ip)
        return row
    row.src_port = int(layer.sport)
    row.dst_port = int(layer.dport)
    if proto == 6:
        row.tcp_flags = int(layer.flags) & 0xFF
    return row


def packet_timestamp_ns(packet: Any) -> int:
    """scapy's ``packet.time`` (float or ``EDecimal`` seconds) in nanoseconds."""
    value = packet.time
    if isinstance(value, Decimal):
        return int(value * 1_000_000_000)
    return round(float(value) * 1e9)


# -- reading --------------------------------------------------------------------
#: scapy reads record and block headers in pieces of at most this many bytes.
_HEADER_PROBE = 16


class _BoundedFile:
    """The capture file as scapy reads it, never asked for more than it holds.

    scapy reads a pcapng block body with one ``read(length - 12)``: a 176-byte
    file whose block claims 0xFFFFFFFC bytes made it allocate 4 GiB and die
    with ``MemoryError``. Here such a read gets what is left, scapy sees a
    short block and stops, and ``overrun`` keeps where and what for the error.
    """

    def __init__(self, path: str) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.name = path
        self.size = os.fstat(self._f.fileno()).st_size
        self.overrun: tuple[int, int] | None = None  # (offset, bytes asked)

    def read(self, n: int = -1) -> bytes:
        at = self._f.tell()
        left = max(self.size - at, 0)
        if n is None or n < 0:
            n = left
        elif n > left:
            # a header-sized read at the very end is scapy probing for the next record
            if (left or n > _HEADER_PROBE) and self.overrun is None:
                self.overrun = (at, n)
            n = left
        return self._f.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()


def _overrun_error(path: str, fileobj: _BoundedFile) -> CaptureTruncatedError | None:
    if fileobj.overrun is None:
        return None
    at, asked = fileobj.overrun
    return CaptureTruncatedError(
        f"a record asks for {asked} bytes at byte {at}, but the file ends "
        f"{max(fileobj.size - at, 0)} bytes later",
        path=path,
        offset=at,
    )


def _open(path: str) -> Any:
    """scapy's reader on a file we own: scapy leaks its own if the sniff fails."""
    s = _scapy()
    fileobj = _BoundedFile(path)
    try:
        reader = s.RawPcapReader(fileobj)
    except s.Scapy_Exception as exc:
        fileobj.close()
        raise CaptureFormatError(f"scapy cannot read it: {exc}", path=path, offset=0) from exc
    except BaseException:
        fileobj.close()
        raise
    if isinstance(reader, s.RawPcapNgReader):
        _forget_interfaces_at_each_section(reader)
    return reader


def _forget_interfaces_at_each_section(reader: Any) -> None:
    """Work around scapy 2.8 keeping interface ids across pcapng sections.

    Interface ids restart at 0 in every section, but scapy's reader appends
    the new section's interfaces to the old list, so later packets get the
    first section's link type and time resolution. The spec says a Section
    Header Block starts a new, independent set of interfaces.
    """
    read_shb = reader._read_block_shb

    def read_shb_and_reset() -> None:
        read_shb()
        reader.interfaces = []

    reader._read_block_shb = read_shb_and_reset


def _layer_class(s: SimpleNamespace, linktype: int) -> Any:
    return s.conf.l2types.num2layer.get(_LINKTYPE_ALIASES.get(linktype, linktype))


def _record(s: SimpleNamespace, reader: Any, data: bytes, meta: Any) -> tuple[Row, int, bool]:
    """(row, timestamp in ns, cut short by the end of the file)."""
    if hasattr(meta, "linktype"):  # pcapng
        linktype = int(meta.linktype)
        cut = False
        if meta.tshigh is None:  # Simple Packet Block: no timestamp
            stamp = 0
        else:
            ticks = (int(meta.tshigh) << 32) | int(meta.tslow)
            stamp = ticks * 1_000_000_000 // int(meta.tsresol)
    else:
        linktype = int(reader.linktype)
        cut = len(data) < min(int(meta.caplen), s.MTU)
        stamp = int(meta.sec) * 1_000_000_000 + int(meta.usec) * (1 if reader.nano else 1000)
    cls = _layer_class(s, linktype)
    if cls is None:
        return Row(DecodeStatus.UNSUPPORTED_LINK, int(meta.wirelen)), stamp, cut
    try:
        packet = cls(data)
    except Exception:  # scapy's readers fall back to Raw the same way
        packet = s.Raw(data)
    return dissect(packet, int(meta.wirelen)), stamp, cut


def _batch(rows: list[Row], stamps: list[int]) -> tuple[DecodedBatch, npt.NDArray[np.int64]]:
    return rows_to_batch(rows), np.asarray(stamps, dtype=np.int64)


def iter_decoded(
    path: str, batch_size: int = 4096
) -> Iterator[tuple[DecodedBatch, npt.NDArray[np.int64]]]:
    """Batches of packets dissected by scapy, with their timestamps in ns.

    Raises ``CaptureFormatError`` when scapy cannot open ``path`` as a capture
    and, after yielding every good packet, ``CaptureTruncatedError`` when a
    pcap file ends inside a record or scapy rejects a later section header.
    scapy ends a damaged pcapng block silently (it only logs), so there the
    batches simply stop.
    """
    s = _scapy()
    reader = _open(path)
    bounded = reader.f if isinstance(reader.f, _BoundedFile) else None
    rows: list[Row] = []
    stamps: list[int] = []
    try:
        while True:
            offset = reader.f.tell()
            try:
                record = next(reader, None)
            except s.Scapy_Exception as exc:  # e.g. a damaged later section header
                if rows:
                    yield _batch(rows, stamps)
                raise CaptureTruncatedError(
                    f"scapy stopped: {exc}", path=path, offset=offset
                ) from exc
            except MemoryError as exc:  # a length we could not bound (inside gzip)
                if rows:
                    yield _batch(rows, stamps)
                raise CaptureTruncatedError(
                    "scapy ran out of memory on a record claiming a huge length",
                    path=path, offset=offset,
                ) from exc
            if record is None:
                overrun = None if bounded is None else _overrun_error(path, bounded)
                if overrun is not None:
                    if rows:
                        yield _batch(rows, stamps)
                    raise overrun
                break
            data, meta = record
            row, stamp, cut = _record(s, reader, data, meta)
            if cut:
                if rows:
                    yield _batch(rows, stamps)
                raise CaptureTruncatedError(
                    f"capture ends inside a record ({len(data)} bytes of it)",
                    path=path, offset=offset,
                )
            if not -_INT64_MAX <= stamp <= _INT64_MAX:
                # the native reader's rule: damage at this record, the packets before count
                if rows:
                    yield _batch(rows, stamps)
                raise CaptureTruncatedError(
                    f"record timestamp {stamp} ns is out of range "
                    "(64-bit nanoseconds end in April 2262)",
                    path=path, offset=offset,
                )
            rows.append(row)
            stamps.append(stamp)
            if len(rows) >= batch_size:
                yield _batch(rows, stamps)
                rows, stamps = [], []
        if rows:
            yield _batch(rows, stamps)
    finally:
        reader.close()
