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
IP must sit on the link layer (after VLAN tags, a FabricPath header, a PPPoE
session, an MPLS label stack), and a transport header scapy could not dissect
is ``TRUNCATED`` (``MALFORMED`` when scapy cut it at the IP header's declared
length). Tunnels are opened by the native decoder's rules (``_open_tunnels``):
scapy dissects every header, but we choose the tunnel by UDP port or GRE
protocol type ourselves, destination port first, and hand the payload to the
layer scapy has for it when scapy's own bindings would pick another (scapy
binds VXLAN to five ports, for one). Three more exceptions to "nothing parses
header bytes": a FabricPath header (scapy has no layer; the classical
Ethernet frame starts 2 bytes into its payload), ERSPAN type I (no header at
all: scapy leaves the mirrored frame raw) and an 802.11 HT Control field
(scapy does not skip its 4 bytes). Known differences are listed in
``docs/plugins.md``.

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
from portwatch.decode.native import (
    MAX_ENCAPSULATIONS,
    MAX_GTP_EXTENSION_HEADERS,
    MAX_MPLS_LABELS,
    DecodedBatch,
    DecodeStatus,
    Encapsulation,
)
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
_TUNNEL_PORTS = {4789: Encapsulation.VXLAN, 6081: Encapsulation.GENEVE,
                 2152: Encapsulation.GTPU}
_PPP_IP = {0x0021: 0x0800, 0x0057: 0x86DD}
_PPP_MPLS = frozenset((0x0281, 0x0283))
_MPLS_ETHERTYPES = frozenset((0x8847, 0x8848))


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
        tunnels = _tunnel_layers()
    return SimpleNamespace(
        **tunnels,
        Ether=Ether,
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
        links=(Ether, Dot1Q, Dot1AD, CookedLinux, CookedLinuxV2, Loopback, LoopbackOpenBSD,
               tunnels["PPP"], tunnels["HDLC"], tunnels["CHDLC"], tunnels["PPI"],
               *tunnels["dot11"]),
        transports={6: TCP, 17: UDP, 132: SCTP},
    )


def _tunnel_layers() -> dict[str, Any]:
    """The layers of tunnels, shims and the link types PPP, Cisco HDLC and PPI."""
    from scapy.contrib.chdlc import CHDLC
    from scapy.contrib.erspan import ERSPAN, ERSPAN_II, ERSPAN_III, ERSPAN_PlatformSpecific
    from scapy.contrib.geneve import GENEVE
    from scapy.contrib.gtp import (
        GTP_PDCP_PDU_ExtensionHeader,
        GTP_U_Header,
        GTP_UDPPort_ExtensionHeader,
        GTPPDUSessionContainer,
    )
    from scapy.contrib.mpls import MPLS
    from scapy.layers.dot11 import Dot11, Dot11QoS
    from scapy.layers.l2 import GRE, LLC, SNAP
    from scapy.layers.ppi import PPI
    from scapy.layers.ppp import HDLC, PPP, PPPoE
    from scapy.layers.vxlan import VXLAN
    return {"PPP": PPP, "HDLC": HDLC, "CHDLC": CHDLC, "PPI": PPI, "PPPoE": PPPoE, "MPLS": MPLS,
            "dot11": (Dot11, Dot11QoS, LLC, SNAP),
            "GRE": GRE, "VXLAN": VXLAN, "GENEVE": GENEVE, "GTP_U_Header": GTP_U_Header,
            "gtp_extensions": (GTPPDUSessionContainer, GTP_UDPPort_ExtensionHeader,
                               GTP_PDCP_PDU_ExtensionHeader),
            "ERSPAN": ERSPAN, "ERSPAN_II": ERSPAN_II, "ERSPAN_III": ERSPAN_III,
            "ERSPAN_PlatformSpecific": ERSPAN_PlatformSpecific}


# -- dissection -----------------------------------------------------------------
def dissect(packet: Any, wirelen: int | None = None) -> Row:
    """The decoded fields of one scapy packet, as the flow engine needs them.

    A tunnel's inner packet is the row; the rows it replaced are its
    ``tunnels`` (outermost first), as in the native decoder.
    """
    s = _scapy()
    wire = len(packet) if wirelen is None else wirelen
    row, payload, kinds = _walk(s, packet, wire, whole=len(packet) >= wire)
    return _open_tunnels(s, row, payload, kinds, wire)


def _walk(s: SimpleNamespace, layer: Any, wire: int, *,
          whole: bool) -> tuple[Row, Any, list[Encapsulation]]:
    """(row, the layer after IP, shims crossed) from a link layer or IP down."""
    link = None
    kinds: list[Encapsulation] = []
    fabricpath = False
    labels = 0
    while True:
        kind = type(layer)
        if kind is s.Ether and int(layer.type) == 0x8903 and not fabricpath:
            data = _payload_bytes(s, layer.payload)
            if len(data) < 16:
                return Row(DecodeStatus.MALFORMED if whole else DecodeStatus.TRUNCATED,
                           wire), None, []
            fabricpath = True  # FTag/TTL, then the classical Ethernet frame
            link, layer = layer, _as_bytes(s, s.Ether, data[2:])
            continue
        if kind is s.dot11[1] and link is not None and int(link.FCfield) & 0x80:
            # HT Control follows QoS Control when the order bit is set (scapy skips it)
            data = _payload_bytes(s, layer.payload)
            link, layer = layer, _as_bytes(s, s.dot11[2], data[4:])
            continue
        if kind in s.links:
            if kind is s.PPP and int(layer.proto) in _PPP_MPLS:
                link, layer = layer, _as_bytes(s, s.MPLS, _payload_bytes(s, layer.payload))
                continue
            link, layer = layer, layer.payload
            continue
        if kind is s.PPPoE:
            kinds.append(Encapsulation.PPPOE)
            link, layer = layer, layer.payload
            continue
        if kind is s.MPLS:
            if labels == 0:
                kinds.append(Encapsulation.MPLS)
            labels += 1
            if labels > MAX_MPLS_LABELS:
                return Row(DecodeStatus.MALFORMED, wire), None, []
            link, layer = layer, layer.payload
            if int(link.s) and type(layer) not in (s.IP, s.IPv6):
                empty = isinstance(layer, s.Padding | s.NoPayload)
                if empty:
                    status = DecodeStatus.MALFORMED if whole else DecodeStatus.TRUNCATED
                else:
                    status = DecodeStatus.NON_IP  # a pseudowire, or BIER
                return Row(status, wire), None, []
            continue
        break
    if type(layer) is s.Raw and type(link) in s.loopbacks:
        layer = _loopback_payload(s, link, layer)
    if type(layer) is s.IP:
        row, payload = _ipv4(s, layer, wire)
        return row, payload, kinds
    if type(layer) is s.IPv6:
        row, payload = _ipv6(s, layer, wire)
        return row, payload, kinds
    if type(layer) is s.Raw and _link_says_ip(s, link):
        return Row(DecodeStatus.TRUNCATED, wire), None, []  # scapy could not dissect IP
    if link is None and type(layer) is s.Raw:
        return Row(DecodeStatus.TRUNCATED, wire), None, []  # the link header itself failed
    return Row(DecodeStatus.NON_IP, wire), None, []


def _payload_bytes(s: SimpleNamespace, layer: Any) -> bytes:
    """A layer's bytes without the link padding scapy hangs at the end of it."""
    data = bytes(layer)
    pad = layer.getlayer(s.Padding)
    return data[: len(data) - len(pad)] if pad is not None else data


def _code(kinds: list[Encapsulation]) -> int:
    return sum(int(k) << (4 * i) for i, k in enumerate(kinds))


def _open_tunnels(s: SimpleNamespace, row: Row, payload: Any, kinds: list[Encapsulation],
                  wire: int) -> Row:
    """Open tunnels while the inner packet carries IP (``native._decapsulate``)."""
    stack = list(kinds)
    outer: list[Row] = []
    for _ in range(MAX_ENCAPSULATIONS):
        entry = _tunnel(s, row, payload)
        if entry is None:
            break
        kind, layer = entry
        inner, inner_payload, inner_kinds = _walk(s, layer, wire, whole=True)
        if (not inner.status.carries_ip
                or len(stack) + 1 + len(inner_kinds) > MAX_ENCAPSULATIONS):
            break
        row.encap = _code(stack)
        outer.append(row)
        stack += [kind, *inner_kinds]
        row, payload = inner, inner_payload
    row.encap = _code(stack)
    row.tunnels = outer
    return row


def _tunnel(s: SimpleNamespace, row: Row, payload: Any) -> tuple[Encapsulation, Any] | None:
    """The tunnel a row is and the layer its payload starts with, or ``None``."""
    if payload is None or row.is_first_fragment:
        return None
    if row.status is DecodeStatus.OK and row.ip_proto == 17:
        port = row.dst_port if row.dst_port in _TUNNEL_PORTS else row.src_port
        kind = _TUNNEL_PORTS.get(port)
        if kind is None:
            return None
        data = _payload_bytes(s, payload.payload)
        if len(data) < 8:
            return None
        if kind is Encapsulation.VXLAN:
            return kind, _as_bytes(s, s.Ether, data[8:])  # flags, VNI: 8 bytes, whatever
        if kind is Encapsulation.GENEVE:
            return _geneve(s, data)
        return _gtpu(s, data)
    if row.status is DecodeStatus.OTHER_IP and row.ip_proto == 47:
        return _gre(s, payload)
    if row.status is DecodeStatus.OTHER_IP and row.ip_proto in (4, 41):
        cls = s.IP if row.ip_proto == 4 else s.IPv6
        layer = _as(s, cls, payload)
        return (Encapsulation.IPIP if row.ip_proto == 4 else Encapsulation.IP6IP), layer
    return None


def _by_protocol_type(s: SimpleNamespace, proto: int) -> Any:
    """The layer GRE and Geneve name by an ethertype-valued protocol type."""
    return {0x6558: s.Ether, 0x0800: s.IP, 0x86DD: s.IPv6, 0x8847: s.MPLS,
            0x8848: s.MPLS}.get(proto)


def _geneve(s: SimpleNamespace, data: bytes) -> tuple[Encapsulation, Any] | None:
    geneve = _as_bytes(s, s.GENEVE, data)
    if type(geneve) is not s.GENEVE:
        return None
    size = 8 + 4 * int(geneve.optionlen)
    cls = _by_protocol_type(s, int(geneve.proto))
    if int(geneve.version) != 0 or len(data) < size or cls is None:
        return None
    return Encapsulation.GENEVE, _as_bytes(s, cls, data[size:])


def _gtpu(s: SimpleNamespace, data: bytes) -> tuple[Encapsulation, Any] | None:
    gtp = _as_bytes(s, s.GTP_U_Header, data)
    if type(gtp) is not s.GTP_U_Header:
        return None
    if int(gtp.version) != 1 or int(gtp.PT) != 1 or int(gtp.gtp_type) != 255:
        return None
    layer = gtp.payload
    for _ in range(MAX_GTP_EXTENSION_HEADERS):
        if type(layer) not in s.gtp_extensions:
            break
        following = layer.getfieldval("NextExtHdr" if type(layer) is s.gtp_extensions[0]
                                      else "next_ex")
        if int(following) == 0:
            layer = layer.payload
            break
        layer = layer.payload
    else:
        return None
    if type(layer) not in (s.IP, s.IPv6):
        raw = _payload_bytes(s, layer)
        nibble = raw[0] >> 4 if raw else 0
        layer = _as_bytes(s, s.IP if nibble == 4 else s.IPv6 if nibble == 6 else s.Raw, raw)
    return Encapsulation.GTPU, layer


def _gre(s: SimpleNamespace, gre: Any) -> tuple[Encapsulation, Any] | None:
    if type(gre) is not s.GRE or int(gre.version) != 0 or int(gre.routing_present):
        return None
    proto = int(gre.proto)
    inner = gre.payload
    if proto == 0x88BE and not int(gre.seqnum_present):  # ERSPAN type I: no header
        return Encapsulation.ERSPAN, _as_bytes(s, s.Ether, _payload_bytes(s, inner))
    if proto == 0x88BE:
        if type(inner) is not s.ERSPAN_II or int(inner.ver) != 1:
            return None
        return Encapsulation.ERSPAN, _as(s, s.Ether, inner.payload)
    if proto == 0x22EB:
        if type(inner) is not s.ERSPAN_III or int(inner.ver) != 2:
            return None
        frame = inner.payload
        if type(frame) is s.ERSPAN_PlatformSpecific:
            frame = frame.payload
        return Encapsulation.ERSPAN, _as(s, s.Ether, frame)
    cls = _by_protocol_type(s, proto)
    if cls is None:
        return None
    kind = Encapsulation.GRE
    return kind, _as(s, cls, inner)


def _as(s: SimpleNamespace, cls: Any, layer: Any) -> Any:
    """``layer`` dissected as ``cls`` (scapy may have bound another layer there)."""
    return layer if type(layer) is cls else _as_bytes(s, cls, _payload_bytes(s, layer))


def _as_bytes(s: SimpleNamespace, cls: Any, data: bytes) -> Any:
    """``cls(data)``, or ``Raw`` when scapy cannot dissect it (as its readers do).

    No bytes is ``Raw`` too: scapy would build a layer of default values.
    """
    if not data:
        return s.Raw(data)
    try:
        return cls(data)
    except Exception:  # scapy raises struct.error and others on short input
        return s.Raw(data)


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


def _link_says_ip(s: SimpleNamespace, link: Any) -> bool:
    if link is None:
        return False
    if type(link) is s.PPP:
        return int(link.proto) in _PPP_IP
    if type(link) is s.PPI:
        return False
    for name in ("type", "proto", "code"):  # Ether/Dot1Q/SLL, SLL2, SNAP
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


def _ipv4(s: SimpleNamespace, ip: Any, wire: int) -> tuple[Row, Any]:
    if int(ip.version) != 4 or int(ip.ihl or 5) < 5:
        return Row(DecodeStatus.MALFORMED, wire), None
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
        return row, None
    return _transport(s, row, ip, ip.payload), ip.payload


def _ipv6(s: SimpleNamespace, ip: Any, wire: int) -> tuple[Row, Any]:
    if int(ip.version) != 6:
        return Row(DecodeStatus.MALFORMED, wire), None
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
            return row, None
        if proto == 44:
            offset = int(layer.offset)
            row.frag_id = int(layer.id)
            row.is_first_fragment = offset == 0 and bool(int(layer.m))
            if offset != 0:
                row.ip_proto = int(layer.nh)
                row.status = DecodeStatus.FRAGMENT
                return row, None
        proto = int(layer.nh)
        layer = layer.payload
    else:
        if proto in _IPV6_EXTENSIONS:
            row.ip_proto = proto
            row.status = DecodeStatus.MALFORMED  # a longer chain than the native decoder walks
            return row, None
    row.ip_proto = proto
    return _transport(s, row, ip, layer), layer


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
