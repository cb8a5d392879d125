"""Community ID v1 flow hashes, as Zeek, Suricata, Arkime and Wireshark compute them.

The spec (github.com/corelight/community-id-spec): SHA-1 over
``seed(2) . addr_lo . addr_hi . proto(1) . 0(1) [. port_lo(2) . port_hi(2)]``,
all in network byte order, with the endpoints ordered so the smaller
(address, port) comes first; the result is ``"1:" + base64(digest)``. Ports
enter the hash for TCP, UDP and SCTP only; every other IP protocol (DCCP among
them) hashes addresses and protocol alone. ICMP maps type and code to ports
before hashing; portwatch has no ICMP flows, so callers with ICMP pass the
mapped values themselves (and the spec's one-way ICMP types, which are never
reordered, are not special-cased here).

The flow table already keeps each flow's endpoints in the spec's order (the
smaller address, then the smaller port, is side A), so ``flow_community_ids``
hashes the key as stored: the byte strings are built for all flows at once
with numpy and only ``hashlib`` runs once per flow.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress

import numpy as np
import numpy.typing as npt

from portwatch.ports import Transport

__all__ = ["IP_PROTOCOL_OF_TRANSPORT", "PORTED_PROTOCOLS", "community_id", "flow_community_ids"]

#: IP protocols whose ports enter the hash (TCP, UDP, SCTP).
PORTED_PROTOCOLS = frozenset({6, 17, 132})

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
U64 = npt.NDArray[np.uint64]
Bool = npt.NDArray[np.bool_]

#: ``IP_PROTOCOL_OF_TRANSPORT[transport]``: the IP protocol number of a ``Transport`` value.
IP_PROTOCOL_OF_TRANSPORT: U8 = np.asarray([t.ip_protocol for t in Transport], dtype=np.uint8)
IP_PROTOCOL_OF_TRANSPORT.flags.writeable = False

#: ICMP and ICMPv6: hashed with their type and code mapped to ports by the caller.
_ICMP_PROTOCOLS = frozenset({1, 58})
_IPV4_MAPPED_HI = np.uint64(0)
_IPV4_MAPPED_MID = np.uint64(0xFFFF)
_PREFIX = "1:"


def _check_seed(seed: int) -> None:
    if not 0 <= seed <= 0xFFFF:
        raise ValueError(f"Community ID seed must be 0-65535, got {seed}")


def community_id(proto: int, saddr: str, daddr: str, sport: int | None = None,
                 dport: int | None = None, *, seed: int = 0) -> str:
    """The Community ID of one flow given as text addresses (either direction).

    ``sport``/``dport`` are ignored for protocols other than TCP, UDP and SCTP,
    as the spec says; for ICMP pass the type and code already mapped to ports.
    """
    _check_seed(seed)
    a = ipaddress.ip_address(saddr)
    b = ipaddress.ip_address(daddr)
    if a.version != b.version:
        raise ValueError(f"addresses of different IP versions: {saddr!r}, {daddr!r}")
    ported = proto in PORTED_PROTOCOLS or proto in _ICMP_PROTOCOLS
    pa, pb = (sport or 0, dport or 0) if ported else (0, 0)
    if (b.packed, pb) < (a.packed, pa):
        a, b, pa, pb = b, a, pb, pa
    data = seed.to_bytes(2, "big") + a.packed + b.packed + bytes((proto, 0))
    if ported:
        data += pa.to_bytes(2, "big") + pb.to_bytes(2, "big")
    return _PREFIX + base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")


def flow_community_ids(keys: npt.NDArray[np.void], *, seed: int = 0) -> list[str]:
    """The Community ID of every flow given as ``FlowTable.keys`` rows.

    The fields used are ``t`` (``Transport`` value), ``ah``/``al``, ``ap``,
    ``bh``/``bl``, ``bp``: addresses as 128-bit halves (IPv4 as IPv4-mapped
    ``::ffff:a.b.c.d``, hashed as 4 bytes), side A the smaller (address, port),
    as ``FlowTable`` keeps it.
    """
    _check_seed(seed)
    n = keys.shape[0]
    out = [""] * n
    if n == 0:
        return out
    proto = IP_PROTOCOL_OF_TRANSPORT[keys["t"]]
    v4 = (_is_v4_mapped(keys["ah"], keys["al"]) & _is_v4_mapped(keys["bh"], keys["bl"]))
    ported = np.isin(proto, np.fromiter(PORTED_PROTOCOLS, dtype=np.uint8))
    seed_bytes = np.frombuffer(seed.to_bytes(2, "big"), dtype=np.uint8)
    sha1, b64 = hashlib.sha1, base64.b64encode
    for is_v4 in (True, False):
        for has_ports in (True, False):
            rows = np.flatnonzero((v4 == is_v4) & (ported == has_ports))
            if rows.size == 0:
                continue
            buf = _hash_input(keys[rows], proto[rows], seed_bytes, 4 if is_v4 else 16,
                              has_ports)
            width = buf.shape[1]
            raw = buf.tobytes()
            for k, row in enumerate(rows.tolist()):
                digest = sha1(raw[k * width : (k + 1) * width]).digest()
                out[row] = _PREFIX + b64(digest).decode("ascii")
    return out


def _is_v4_mapped(hi: U64, lo: U64) -> Bool:
    mapped: Bool = (hi == _IPV4_MAPPED_HI) & ((lo >> np.uint64(32)) == _IPV4_MAPPED_MID)
    return mapped


def _address_bytes(hi: U64, lo: U64, length: int) -> U8:
    """The last ``length`` network-order bytes of each 128-bit address."""
    words = np.empty((hi.shape[0], 2), dtype=">u8")
    words[:, 0] = hi
    words[:, 1] = lo
    return words.view(np.uint8).reshape(-1, 16)[:, 16 - length :]


def _port_bytes(port: U16) -> U8:
    return port.astype(">u2").view(np.uint8).reshape(-1, 2)


def _hash_input(keys: npt.NDArray[np.void], proto: U8, seed: U8, address_length: int,
                has_ports: bool) -> U8:
    """One row of hash input bytes per flow of ``keys`` (all of one layout)."""
    n = keys.shape[0]
    parts = [np.broadcast_to(seed, (n, 2)),
             _address_bytes(keys["ah"], keys["al"], address_length),
             _address_bytes(keys["bh"], keys["bl"], address_length),
             proto.reshape(-1, 1), np.zeros((n, 1), dtype=np.uint8)]
    if has_ports:
        parts += [_port_bytes(keys["ap"]), _port_bytes(keys["bp"])]
    return np.ascontiguousarray(np.concatenate(parts, axis=1))
