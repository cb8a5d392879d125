"""The pyshark engine: tshark dissects the capture, portwatch counts.

A cross-check of the native decoder and the way to read formats only
Wireshark reads. Every field comes from tshark's dissection as pyshark hands
it over (``ip.src``, ``tcp.srcport``, ``ip.flags.mf``, ``ipv6.fraghdr.ident``,
``dccp.srcport``, ``sctp.srcport`` ...); nothing here parses header bytes.

IP reassembly is switched off (``ip.defragment``/``ipv6.defragment``), so
every record stays one packet: non-first fragments are ``FRAGMENT`` and the
first fragment carries the ports, exactly as in the native decoder.

Which packets count follows the native decoder: IP must sit on the link layer
(after VLAN tags, FabricPath, a PPPoE session, an MPLS label stack), and a
transport header tshark could not dissect is ``MALFORMED`` when tshark says
the packet is malformed (the IP header's declared length cut it) and
``TRUNCATED`` otherwise. Tunnels are opened by the native decoder's rules
(``_open_tunnels``) on tshark's layers: the tunnel is chosen by UDP port
(destination first) or IP protocol, and tshark must have dissected it as that
tunnel. Known differences are listed in ``docs/plugins.md``.

pyshark is imported only when this module's functions run.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from portwatch.decode.native import (
    MAX_ENCAPSULATIONS,
    MAX_MPLS_LABELS,
    DecodedBatch,
    DecodeStatus,
    Encapsulation,
)
from portwatch.decode.rows import Row, address_int, rows_to_batch, timestamp_ns
from portwatch.errors import CaptureFormatError, CaptureTruncatedError

__all__ = ["OVERRIDE_PREFS", "dissect", "iter_decoded", "packet_timestamp_ns"]

#: tshark preferences: one record, one packet (no IP reassembly).
OVERRIDE_PREFS = {"ip.defragment": "FALSE", "ipv6.defragment": "FALSE"}

#: Layers tshark may show before the IP layer that the native decoder also reads.
_LINK_LAYERS = frozenset(("eth", "vlan", "ieee8021ad", "sll", "null", "loop", "raw", "frame",
                          "pkt_comment", "ethertype", "ppp", "chdlc", "ppi", "pcap_pktdata",
                          "cfp", "wlan", "wlan_radio", "llc"))
#: UDP tunnels: destination port (else source port) -> (kind, tshark's layer).
_UDP_TUNNELS = {4789: (Encapsulation.VXLAN, "vxlan"), 6081: (Encapsulation.GENEVE, "geneve"),
                2152: (Encapsulation.GTPU, "gtp")}
_TRANSPORT_LAYERS = {6: "tcp", 17: "udp", 132: "sctp", 33: "dccp"}
_ICMP = frozenset((1, 58))
_MAX_IPV6_EXTENSIONS = 8
#: IPv6 extension headers tshark dissects inside the ``ipv6`` layer: field prefix.
_IPV6_EXTENSION_FIELDS = {0: "ipv6.hopopts", 43: "ipv6.routing", 44: "ipv6.fraghdr",
                          60: "ipv6.dstopts"}
#: Extension headers tshark dissects as layers of their own: (layer, next-header field).
_IPV6_EXTENSION_LAYERS = {51: ("ah", "ah.nxt"), 135: ("mipv6", "mip6.proto")}


# -- field access ------------------------------------------------------------------
class _Fields:
    """Typed reads of one pyshark layer's fields by their full tshark names.

    A field that occurs more than once (two Destination Options headers) is
    read in order: the n-th read of a name returns its n-th occurrence.
    """

    __slots__ = ("_layer", "_seen")

    def __init__(self, layer: Any) -> None:
        self._layer = layer
        self._seen: dict[str, int] = {}

    def text(self, *names: str) -> str | None:
        for name in names:
            container = self._layer.get_field(name)
            if container is None:
                continue
            index = self._seen.get(name, 0)
            self._seen[name] = index + 1
            fields = container.all_fields
            field = fields[min(index, len(fields) - 1)]
            value = field.get_default_value()
            return None if value is None else str(value)
        return None

    def int(self, *names: str) -> int | None:
        value = self.text(*names)
        if value is None or value == "":
            return None
        try:
            return int(value, 0)
        except ValueError:
            return None


def _field(layer: Any, name: str) -> int | None:
    return _Fields(layer).int(name)


# -- dissection --------------------------------------------------------------------
def dissect(packet: Any) -> Row:
    """The decoded fields of one pyshark packet, as the flow engine needs them.

    A tunnel's inner packet is the row; the rows it replaced are its
    ``tunnels`` (outermost first), as in the native decoder.
    """
    wire = int(packet.length)
    layers = list(packet.layers)
    names = [str(layer.layer_name) for layer in layers]
    problem = DecodeStatus.MALFORMED if "_ws.malformed" in names else DecodeStatus.TRUNCATED
    row, after, kinds = _walk(layers, names, 0, wire, problem)
    return _open_tunnels(layers, names, (row, after, kinds), wire, problem)


def _walk(layers: list[Any], names: list[str], start: int, wire: int,
          problem: DecodeStatus) -> tuple[Row, int | None, list[Encapsulation]]:
    """(row, index of its last layer, shims crossed) from ``layers[start]`` on."""
    kinds: list[Encapsulation] = []
    labels = 0
    for i in range(start, len(names)):
        name = names[i]
        if name in ("ip", "ipv6"):
            row, after = (_ipv4 if name == "ip" else _ipv6)(layers, i, wire, problem)
            return row, after, kinds
        if name == "mpls":
            if labels == 0:
                kinds.append(Encapsulation.MPLS)
            labels += 1
            if labels > MAX_MPLS_LABELS:
                return Row(DecodeStatus.MALFORMED, wire), None, []
            if _field(layers[i], "mpls.bottom"):
                following = names[i + 1] if i + 1 < len(names) else None
                if following not in ("ip", "ipv6"):
                    short = following is None or following.startswith("_ws.")
                    return Row(problem if short else DecodeStatus.NON_IP, wire), None, []
            continue
        if name == "pppoes":
            kinds.append(Encapsulation.PPPOE)
            continue
        if name not in _LINK_LAYERS and not name.startswith("_ws."):
            break
    rest = names[start:]
    if "_ws.short" in rest and all(n in _LINK_LAYERS or n.startswith("_ws.") for n in rest):
        return Row(DecodeStatus.TRUNCATED, wire), None, []  # the link header itself is cut
    return Row(DecodeStatus.NON_IP, wire), None, []


def _code(kinds: list[Encapsulation]) -> int:
    return sum(int(k) << (4 * i) for i, k in enumerate(kinds))


def _open_tunnels(layers: list[Any], names: list[str],
                  walked: tuple[Row, int | None, list[Encapsulation]], wire: int,
                  problem: DecodeStatus) -> Row:
    """Open tunnels while the inner packet carries IP (``native._decapsulate``)."""
    row, after, stack = walked
    outer: list[Row] = []
    for _ in range(MAX_ENCAPSULATIONS):
        entry = _tunnel(layers, names, row, after)
        if entry is None:
            break
        kind, start = entry
        inner, inner_after, inner_kinds = _walk(layers, names, start, wire, problem)
        if (not inner.status.carries_ip
                or len(stack) + 1 + len(inner_kinds) > MAX_ENCAPSULATIONS):
            break
        row.encap = _code(stack)
        outer.append(row)
        stack = [*stack, kind, *inner_kinds]
        row, after = inner, inner_after
    row.encap = _code(stack)
    row.tunnels = outer
    return row


def _tunnel(layers: list[Any], names: list[str], row: Row,
            after: int | None) -> tuple[Encapsulation, int] | None:
    """The tunnel a row is and the index of its payload's first layer, or ``None``."""
    if after is None or row.is_first_fragment or after + 1 >= len(names):
        return None
    following = after + 1
    if row.status is DecodeStatus.OK and row.ip_proto == 17:
        port = row.dst_port if row.dst_port in _UDP_TUNNELS else row.src_port
        if port not in _UDP_TUNNELS:
            return None
        kind, layer_name = _UDP_TUNNELS[port]
        if names[following] != layer_name:
            return None
        if kind is Encapsulation.GTPU and _field(layers[following], "gtp.message") != 255:
            return None
        return kind, following + 1
    if row.status is not DecodeStatus.OTHER_IP:
        return None
    if row.ip_proto == 47:
        if names[following] != "gre":
            return None
        gre = _Fields(layers[following])
        if gre.int("gre.flags.version") or gre.int("gre.flags.routing"):
            return None
        if following + 1 < len(names) and names[following + 1] == "erspan":
            return Encapsulation.ERSPAN, following + 2
        return Encapsulation.GRE, following + 1
    if row.ip_proto in (4, 41):
        return (Encapsulation.IPIP if row.ip_proto == 4 else Encapsulation.IP6IP), following
    return None


def _ipv4(layers: list[Any], at: int, wire: int,
          problem: DecodeStatus) -> tuple[Row, int | None]:
    f = _Fields(layers[at])
    src, dst, proto = f.text("ip.src"), f.text("ip.dst"), f.int("ip.proto")
    if src is None or dst is None or proto is None:
        return Row(problem, wire), None
    offset = f.int("ip.frag_offset") or 0
    more = f.int("ip.flags.mf") or 0
    row = Row(DecodeStatus.OK, wire, ip_version=4, ip_proto=proto, src=address_int(src),
              dst=address_int(dst), frag_id=f.int("ip.id") or 0,
              is_first_fragment=offset == 0 and more != 0)
    if offset != 0:
        row.status = DecodeStatus.FRAGMENT
        return row, None
    return _transport(layers, at, row, problem)


def _ipv6(layers: list[Any], at: int, wire: int,
          problem: DecodeStatus) -> tuple[Row, int | None]:
    f = _Fields(layers[at])
    src, dst, proto = f.text("ipv6.src"), f.text("ipv6.dst"), f.int("ipv6.nxt")
    if src is None or dst is None or proto is None:
        return Row(problem, wire), None
    row = Row(DecodeStatus.OK, wire, ip_version=6, src=address_int(src), dst=address_int(dst))
    after = at  # the last layer the chain used; the transport layer follows it
    for _ in range(_MAX_IPV6_EXTENSIONS):
        if proto == 44:
            offset = f.int("ipv6.fraghdr.offset", "ipv6.fragment.offset")
            nxt = f.int("ipv6.fraghdr.nxt", "ipv6.fragment.nxt")
            row.frag_id = f.int("ipv6.fraghdr.ident", "ipv6.fragment.id") or 0
            more = f.int("ipv6.fraghdr.more", "ipv6.fragment.more") or 0
            if offset is None or nxt is None:
                row.ip_proto, row.status = proto, problem
                return row, None
            row.is_first_fragment = offset == 0 and more != 0
            if offset != 0:
                row.ip_proto, row.status = nxt, DecodeStatus.FRAGMENT
                return row, None
            proto = nxt
        elif proto in _IPV6_EXTENSION_FIELDS:
            nxt = f.int(f"{_IPV6_EXTENSION_FIELDS[proto]}.nxt")
            if nxt is None:
                row.ip_proto, row.status = proto, problem
                return row, None
            proto = nxt
        elif proto in _IPV6_EXTENSION_LAYERS:
            name, field = _IPV6_EXTENSION_LAYERS[proto]
            found = _next_layer(layers, after, name)
            nxt = None if found is None else _field(layers[found], field)
            if found is None or nxt is None:
                row.ip_proto, row.status = proto, DecodeStatus.OTHER_IP
                return row, None
            after, proto = found, nxt
        else:
            break
    else:
        row.ip_proto, row.status = proto, DecodeStatus.MALFORMED  # longer than we walk
        return row, None
    row.ip_proto = proto
    return _transport(layers, after, row, problem)


def _next_layer(layers: list[Any], after: int, name: str) -> int | None:
    for j in range(after + 1, len(layers)):
        if layers[j].layer_name == name:
            return j
        if layers[j].layer_name in ("ip", "ipv6"):
            return None  # a tunnelled packet's layers are not ours
    return None


def _transport(layers: list[Any], after: int, row: Row,
               problem: DecodeStatus) -> tuple[Row, int | None]:
    """The row with its ports; and the index of its last layer (the transport
    layer, or the IP header's when there is none), where a tunnel would follow."""
    proto = row.ip_proto
    if proto in _ICMP:
        row.status = DecodeStatus.ICMP
        return row, None
    name = _TRANSPORT_LAYERS.get(proto)
    if name is None:
        row.status = DecodeStatus.OTHER_IP
        return row, after
    found = _next_layer(layers, after, name)
    if found is None:
        row.status = problem
        return row, None
    f = _Fields(layers[found])
    sport, dport = f.int(f"{name}.srcport"), f.int(f"{name}.dstport")
    flags = f.int("tcp.flags") if proto == 6 else 0
    if sport is None or dport is None or flags is None:
        row.status = problem
        return row, None
    row.src_port, row.dst_port, row.tcp_flags = sport, dport, flags & 0xFF
    return row, found


def packet_timestamp_ns(packet: Any) -> int:
    """pyshark's ``sniff_timestamp`` (tshark's epoch text) in nanoseconds, exactly."""
    return timestamp_ns(str(packet.sniff_timestamp))


def _is_record(packet: Any) -> bool:
    """tshark also lists pcapng Custom Blocks as frames; they have no interface."""
    frame = packet.frame_info
    if frame.layer_name != "frame":  # a packet comment took frame_info's place
        frame = next((la for la in packet.layers if la.layer_name == "frame"), None)
        if frame is None:
            return True
    return frame.get_field("frame.encap_type") is not None


# -- reading -----------------------------------------------------------------------
def _open(path: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import pyshark
    return pyshark.FileCapture(path, keep_packets=False, override_prefs=OVERRIDE_PREFS)


def _crash_type() -> type[Exception]:
    from pyshark.capture.capture import TSharkCrashException

    crash: type[Exception] = TSharkCrashException
    return crash


def _close(capture: Any, crash: type[Exception]) -> Exception | None:
    """Close the capture; return tshark's failure instead of raising it.

    pyshark keeps a failed tshark registered after raising, so its ``__del__``
    would raise the same error again at garbage collection: forget the
    process, then close once more to wait for the stderr reader.
    """
    try:
        capture.close()
    except crash as exc:
        capture._running_processes.clear()
        capture.close()
        return exc
    return None


def _error(path: str, exc: Exception, packets: int) -> CaptureFormatError | CaptureTruncatedError:
    """tshark's last error line, as a format error (nothing read) or damage."""
    lines = [ln for ln in str(exc).splitlines() if ln.startswith("tshark:")]
    detail = lines[-1].removeprefix("tshark:").strip() if lines else str(exc).strip()
    if packets == 0:
        return CaptureFormatError(f"tshark cannot read it: {detail}", path=path)
    return CaptureTruncatedError(f"tshark stopped after {packets} packets: {detail}", path=path)


def iter_decoded(
    path: str, batch_size: int = 4096
) -> Iterator[tuple[DecodedBatch, npt.NDArray[np.int64]]]:
    """Batches of packets dissected by tshark (via pyshark), timestamps in ns.

    Raises ``CaptureFormatError`` when tshark reads no packet before failing
    and ``CaptureTruncatedError`` (after yielding every packet it did read)
    when it fails later, e.g. on a file cut inside a record.
    """
    crash = _crash_type()
    capture = _open(path)
    rows: list[Row] = []
    stamps: list[int] = []
    count = 0
    failure: Exception | None = None
    try:
        for packet in capture:
            if not _is_record(packet):
                continue
            rows.append(dissect(packet))
            stamps.append(packet_timestamp_ns(packet))
            count += 1
            if len(rows) >= batch_size:
                yield rows_to_batch(rows), np.asarray(stamps, dtype=np.int64)
                rows, stamps = [], []
    except crash as exc:
        failure = exc
    finally:
        closing = _close(capture, crash)  # tshark's exit status is only read on close
        failure = failure or closing
    if rows:
        yield rows_to_batch(rows), np.asarray(stamps, dtype=np.int64)
    if failure is not None and not _tshark_error_lines(failure) and _tshark_reads_whole(path):
        # pyshark reported an exit status with no error from tshark: under load its
        # asyncio child watcher can lose the real status (it then reports 255). tshark,
        # asked again on its own, read the whole file: the capture is not damaged.
        failure = None
    if failure is not None:
        raise _error(path, failure, count) from failure


def _tshark_error_lines(exc: Exception) -> list[str]:
    return [ln for ln in str(exc).splitlines() if ln.startswith("tshark:")
            or ln.startswith("Last error line: tshark:")]


def _tshark_reads_whole(path: str) -> bool:
    """Whether tshark, run directly, reads ``path`` to its end and exits 0."""
    import shutil
    import subprocess

    tshark = shutil.which("tshark")
    if tshark is None:
        return False
    try:
        done = subprocess.run([tshark, "-n", "-q", "-r", path], capture_output=True,
                              timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and b"tshark:" not in done.stderr
