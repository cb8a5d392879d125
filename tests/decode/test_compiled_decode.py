"""The compiled decoder (``_decode``) answers exactly what the numpy decoder answers.

Both decoders read the same batch; every ``DecodedBatch`` column (dtype,
shape and values, the outer tunnel layers included) must be equal. The
inputs: every sample capture under ``pcaps/`` (tunnels too), every cut of
their packets, byte edits of them, the fuzz corpus and mutations of it, and
batches hypothesis builds, both random bytes on every link type and frames
built from random header fields (VLAN stacks, MPLS, PPPoE, IPv4 options and
fragments, IPv6 extension chains, VXLAN/Geneve/GTP-U/GRE/ERSPAN/IP-in-IP
nested), so the deep paths are reached with every length cut short.
"""

from __future__ import annotations

import random
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portwatch.capture.batch import LinkType, PacketBatch
from portwatch.capture.files.reader import open_capture
from portwatch.decode import native
from portwatch.decode.native import (
    COMPILED,
    TUNNEL_DTYPE,
    DecodedBatch,
    DecodeStatus,
    decode_batch,
)
from portwatch.errors import CaptureError, UsageError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_captures import CORPUS, mutate, seeds

pytestmark = pytest.mark.skipif(not COMPILED, reason="the compiled decoder is not built")

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
SAMPLES = sorted(str(p.relative_to(PCAPS)) for p in PCAPS.rglob("*")
                 if p.suffix in {".pcap", ".pcapng", ".gz"})
COLUMNS = ("status", "ip_version", "ip_proto", "src_hi", "src_lo", "dst_hi", "dst_lo",
           "src_port", "dst_port", "tcp_flags", "frag_id", "is_first_fragment", "wirelen",
           "encap")
#: Every link type the decoder reads, and some it does not.
LINKTYPES = [int(t) for t in LinkType] + [2, 127, 65535]


def assert_same(batch: PacketBatch) -> DecodedBatch:
    """Both decoders give ``batch`` identical columns; returns the compiled answer."""
    ours = decode_batch(batch, "compiled")
    ref = decode_batch(batch, "numpy")
    for name in COLUMNS:
        got, want = getattr(ours, name), getattr(ref, name)
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert ours.tunnels.shape == ref.tunnels.shape
    for name in TUNNEL_DTYPE.names or ():
        np.testing.assert_array_equal(ours.tunnels[name], ref.tunnels[name],
                                      err_msg=f"tunnels.{name}")
    return ours


def read_batches(data: bytes, size: int = 7, nbytes: int = 512) -> list[PacketBatch]:
    """The batches a capture yields before it ends or its damage stops the read."""
    out: list[PacketBatch] = []
    try:
        for batch in open_capture(data, "in", size, batch_bytes=nbytes):
            out.append(batch)
    except CaptureError:
        pass
    return out


def packets_of(name: str) -> list[tuple[bytes, int]]:
    """(packet, link type) of every packet of a sample capture."""
    return [(b.packet(i), int(b.linktypes[i]))
            for b in read_batches((PCAPS / name).read_bytes(), 65536, 1 << 26)
            for i in range(len(b))]


def sample_packets() -> list[tuple[bytes, int]]:
    return [p for name in SAMPLES if not name.endswith(".gz") for p in packets_of(name)]


def batch_of(packets: list[tuple[bytes, int]], wirelens: list[int] | None = None) -> PacketBatch:
    batch = PacketBatch.from_packets([p for p, _ in packets], 1, wirelens=wirelens)
    batch.linktypes[:] = [lt for _, lt in packets]
    return batch


# -- sample captures, their cuts and edits -------------------------------------------------


@pytest.mark.parametrize("name", SAMPLES)
def test_every_sample_capture_decodes_alike(name: str) -> None:
    data = (PCAPS / name).read_bytes()
    for batch in read_batches(data, 65536, 1 << 26) + read_batches(data, 3, 200):
        assert_same(batch)


def test_the_tunnel_samples_open_tunnels_in_the_compiled_decoder() -> None:
    """The comparison reaches the tunnel paths: the samples' inner flows are found."""
    encaps: set[int] = set()
    for name in SAMPLES:
        if name.startswith("tunnels/"):
            for batch in read_batches((PCAPS / name).read_bytes(), 65536, 1 << 26):
                decoded = assert_same(batch)
                encaps.update(int(e) for e in np.unique(decoded.encap))
                if "nested" in name:
                    assert decoded.tunnels.shape[1] >= 2
    nibbles = {(code >> s) & 0xF for code in encaps for s in (0, 4, 8, 12)} - {0}
    assert nibbles == set(range(1, 10))  # every Encapsulation


def test_every_cut_of_every_sample_packet_decodes_alike() -> None:
    """Each packet cut at every length: by the snapshot length, and short on the wire."""
    cut: list[tuple[bytes, int]] = []
    wire: list[int] = []
    for packet, linktype in sample_packets():
        for k in range(len(packet) + 1):
            cut.append((packet[:k], linktype))
            wire.append(len(packet))
    statuses = assert_same(batch_of(cut, wire)).status
    assert {DecodeStatus.TRUNCATED, DecodeStatus.OK} <= set(statuses.tolist())
    statuses = assert_same(batch_of(cut)).status  # whole frames: short ones are malformed
    assert DecodeStatus.TRUNCATED not in set(statuses.tolist())


@pytest.mark.parametrize("seed", range(3))
def test_byte_edits_of_sample_packets_decode_alike(seed: int) -> None:
    rng = random.Random(seed)
    packets = sample_packets()
    edited: list[tuple[bytes, int]] = []
    wire: list[int] = []
    for _ in range(4000):
        packet, linktype = rng.choice(packets)
        buf = bytearray(packet)
        for _ in range(rng.randint(1, 3)):
            if not buf:
                break
            at = rng.randrange(len(buf))
            kind = rng.randrange(4)
            if kind == 0:
                buf[at] ^= 1 << rng.randrange(8)
            elif kind == 1:
                buf[at] = rng.randrange(256)
            elif kind == 2:  # a length-like 16-bit value
                value = rng.choice((0, 1, 4, 8, 20, 40, 0xFF, 0xFFFF, rng.randrange(1 << 16)))
                buf[at : at + 2] = struct.pack(">H", value)
            else:
                del buf[rng.randrange(len(buf)) :]
        edited.append((bytes(buf), linktype if rng.random() < 0.9 else rng.choice(LINKTYPES)))
        wire.append(len(packet) if rng.random() < 0.5 else len(buf))
    assert_same(batch_of(edited, wire))


def test_packets_outside_the_buffer_decode_alike() -> None:
    """Offsets and lengths past the buffer are clamped the same way by both."""
    base = batch_of(sample_packets()[:20])
    size = base.data.shape[0]
    base.offsets[::3] = size + 5
    base.offsets[1::7] = -9
    base.caplens[::2] = 1 << 31
    assert_same(base)


# -- the fuzz corpus -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.iterdir() if p.is_file()))
def test_fuzz_corpus_decodes_alike(name: str) -> None:
    for batch in read_batches((CORPUS / name).read_bytes()):
        assert_same(batch)


@pytest.mark.parametrize("seed", range(3))
def test_mutated_corpus_inputs_decode_alike(seed: int) -> None:
    rng = random.Random(seed)
    pool = seeds()
    for _ in range(100):
        for batch in read_batches(mutate(rng.choice(pool), rng, pool)):
            assert_same(batch)


# -- random bytes on every link type -------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.binary(max_size=120), st.sampled_from(LINKTYPES),
                          st.integers(0, 200)), min_size=1, max_size=24))
def test_random_bytes_on_every_link_type_decode_alike(
    packets: list[tuple[bytes, int, int]],
) -> None:
    assert_same(batch_of([(p, lt) for p, lt, _ in packets], [w for _, _, w in packets]))


# -- frames built from random header fields ------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
MAC = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"
TRANSPORTS = (6, 17, 132, 33)


def mostly(draw: st.DrawFn, good: int, other: st.SearchStrategy[int]) -> int:
    """``good`` seven times in eight, else a value of ``other``: deep paths need sane headers."""
    return draw(other) if draw(st.integers(0, 7)) == 0 else good


@st.composite
def ports(draw: st.DrawFn) -> tuple[int, int]:
    pick = st.sampled_from([53, 443, 4789, 6081, 2152, 0, 65535]) | u16
    return draw(pick), draw(pick)


@st.composite
def transport(draw: st.DrawFn, depth: int) -> tuple[int, bytes]:
    """(IP protocol, payload): a transport header, a tunnel, or anything."""
    kind = draw(st.sampled_from(["tcp", "udp", "other_l4", "icmp", "gre", "ipip", "random"]))
    if depth > 4 and kind in ("gre", "ipip"):
        kind = "random"
    if kind == "tcp":
        sport, dport = draw(ports())
        header = struct.pack(">HHIIBBHHH", sport, dport, 0, 0, 0x50, draw(u8), 0, 0, 0)
        return 6, header + draw(st.binary(max_size=8))
    if kind == "udp":
        sport, dport = draw(ports())
        if depth <= 4 and draw(st.integers(0, 3)):  # a tunnel, on its port (either side)
            port = draw(st.sampled_from([4789, 6081, 2152]))
            sport, dport = (port, sport) if draw(st.integers(0, 3)) == 0 else (sport, port)
            body = draw(tunnel_payload(port, depth))
        else:
            body = draw(st.binary(max_size=12))
        return 17, struct.pack(">HHHH", sport, dport, 8 + len(body), 0) + body
    if kind == "other_l4":
        return draw(st.sampled_from([132, 33])), draw(st.binary(max_size=16))
    if kind == "icmp":
        return draw(st.sampled_from([1, 58])), draw(st.binary(max_size=8))
    if kind == "gre":
        return 47, draw(gre(depth))
    if kind == "ipip":
        packet = draw(ip_packet(depth + 1))
        return (4 if packet[:1] and packet[0] >> 4 == 4 else 41), packet
    return draw(u8), draw(st.binary(max_size=16))


@st.composite
def tunnel_payload(draw: st.DrawFn, port: int, depth: int) -> bytes:
    """What follows a UDP header on a tunnel port (or any port)."""
    kind = {4789: "vxlan", 6081: "geneve", 2152: "gtpu"}.get(port, "vxlan")
    if kind == "vxlan":
        return draw(st.binary(min_size=8, max_size=8)) + draw(frame(depth + 1))
    if kind == "geneve":
        options = draw(st.integers(0, 3))
        proto = mostly(draw, draw(st.sampled_from([0x6558, 0x0800, 0x86DD, 0x8847, 0x8848])),
                       u16)
        head = struct.pack(">BBHI", mostly(draw, 0, st.sampled_from([0x40, 0x80])) | options, 0,
                           proto, 0) + draw(st.binary(min_size=4 * options, max_size=4 * options))
        return head + draw(payload_for(proto, depth))
    flags = mostly(draw, draw(st.sampled_from([0x30, 0x32, 0x34, 0x36, 0x31])),
                   st.sampled_from([0x20, 0x50]) | u8)
    head = struct.pack(">BBHI", flags, mostly(draw, 255, u8), 0, 1)
    if flags & 7:  # sequence, N-PDU, next extension type; then the extension headers
        exts = draw(st.lists(st.integers(1, 3), max_size=5)) if flags & 4 else []
        head += b"\0\0\0" + bytes([0x85 if exts else mostly(draw, 0, st.just(0x85))])
        for i, wanted in enumerate(exts):
            words = mostly(draw, wanted, st.just(0))  # 0: a header that claims no length
            last = i == len(exts) - 1
            head += bytes([words]) + bytes(max(0, 4 * words - 2)) + bytes([0 if last else 0x85])
    return head + draw(ip_packet(depth + 1))


@st.composite
def gre(draw: st.DrawFn, depth: int) -> bytes:
    bits = mostly(draw, draw(st.sampled_from([0, 0x2000, 0x1000, 0x8000, 0xB000])),
                  st.sampled_from([0x4000, 0x0001]) | u16)
    proto = mostly(draw, draw(st.sampled_from([0x6558, 0x0800, 0x86DD, 0x8847, 0x88BE, 0x22EB])),
                   u16)
    optional = 4 * (((bits >> 15) & 1) + ((bits >> 13) & 1) + ((bits >> 12) & 1))
    head = struct.pack(">HH", bits, proto) + bytes(optional)
    if proto == 0x88BE and bits & 0x1000:  # ERSPAN II
        head += bytes([mostly(draw, 0x10, st.sampled_from([0x20]) | u8)]) + bytes(7)
    elif proto == 0x22EB:  # ERSPAN III, maybe with the platform subheader
        o_flag = draw(st.integers(0, 1))
        head += bytes([mostly(draw, 0x20, st.just(0x10))]) + bytes(10) + bytes([o_flag])
        head += bytes(8 * o_flag)
    return head + draw(payload_for(proto, depth))


@st.composite
def payload_for(draw: st.DrawFn, proto: int, depth: int) -> bytes:
    if proto in (0x6558, 0x88BE, 0x22EB):
        return draw(frame(depth + 1))
    if proto in (0x0800, 0x86DD):
        return draw(ip_packet(depth + 1))
    if proto in (0x8847, 0x8848):
        return draw(mpls(depth))
    return draw(st.binary(max_size=12))


@st.composite
def mpls(draw: st.DrawFn, depth: int) -> bytes:
    labels = mostly(draw, draw(st.integers(1, 3)), st.integers(0, 10))
    stack = b"".join(struct.pack(">I", (i << 12) | (0x100 if i == labels - 1 else 0) | 64)
                     for i in range(labels))
    if draw(st.integers(0, 9)) == 0 and stack:  # no bottom of stack anywhere
        stack = bytes(b & ~1 if i % 4 == 2 else b for i, b in enumerate(stack))
    return stack + (draw(ip_packet(depth + 1)) if draw(st.booleans()) else draw(
        st.binary(max_size=8)))


@st.composite
def ip_packet(draw: st.DrawFn, depth: int = 0) -> bytes:
    proto, payload = draw(transport(depth))
    if draw(st.booleans()):
        ihl = mostly(draw, draw(st.sampled_from([5, 5, 6, 15])), st.sampled_from([4, 0]))
        options = draw(st.binary(min_size=max(0, ihl - 5) * 4, max_size=max(0, ihl - 5) * 4))
        length = 20 + len(options) + len(payload)
        total = mostly(draw, draw(st.sampled_from([length, length, 0])),
                       st.sampled_from([length - 1, length + 7]) | u16) & 0xFFFF
        frag = mostly(draw, draw(st.sampled_from([0, 0, 0x4000, 0x2000])),
                      st.sampled_from([0x0001, 0x2005]) | u16)
        proto = mostly(draw, proto, u8)
        head = struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, total, draw(u16), frag, 64, proto,
                           0, b"\x0a\x00\x00\x01", bytes(draw(st.binary(min_size=4, max_size=4))))
        return head + options + payload
    chain: list[tuple[int, bytes]] = []
    exts = st.sampled_from([0, 43, 44, 60, 51, 135, 139, 140])
    for ext in draw(st.lists(exts, max_size=10 if draw(st.integers(0, 3)) == 0 else 3)):
        if ext == 44:
            offset = mostly(draw, 0, st.sampled_from([1, 100]))
            chain.append((ext, struct.pack(">HI", (offset << 3) | draw(st.integers(0, 1)),
                                           draw(st.integers(0, (1 << 32) - 1)))))
        else:
            size = draw(st.integers(0, 2))
            body = bytes([size]) + bytes((size + 2) * 4 - 2 if ext == 51 else (size + 1) * 8 - 2)
            chain.append((ext, body))
    body = b""
    following = proto
    for ext, rest in reversed(chain):
        body = bytes([following]) + rest + body
        following = ext
    body += payload
    length = mostly(draw, draw(st.sampled_from([len(body), 0])),
                    st.just(max(0, len(body) - 3)) | u16)
    src = draw(st.binary(min_size=16, max_size=16))
    return struct.pack(">IHBB", 0x60000000, length, following, 64) + src + bytes(15) + b"\x02" \
        + body


@st.composite
def frame(draw: st.DrawFn, depth: int = 0) -> bytes:
    """An Ethernet frame: FabricPath, VLAN tags, then IP, MPLS, PPPoE or anything."""
    out = MAC
    if draw(st.integers(0, 5)) == 0:
        out += b"\x89\x03" + b"\x00\x01" + MAC
    for _ in range(mostly(draw, draw(st.integers(0, 2)), st.integers(3, 6))):
        out += struct.pack(">H", draw(st.sampled_from([0x8100, 0x88A8, 0x9100]))) + b"\x00\x0a"
    kind = draw(st.sampled_from(["ip", "ip", "ip", "mpls", "pppoe", "arp"]))
    if kind == "ip":
        packet = draw(ip_packet(depth))
        return out + (b"\x08\x00" if packet[0] >> 4 == 4 else b"\x86\xdd") + packet
    if kind == "mpls":
        return out + b"\x88\x47" + draw(mpls(depth))
    if kind == "pppoe":
        proto = draw(st.sampled_from([0x0021, 0x0057, 0x0281, 0xC021]))
        body = draw(mpls(depth)) if proto == 0x0281 else draw(ip_packet(depth))
        return out + b"\x88\x64" + struct.pack(">BBHHH", 0x11, 0, 1, len(body) + 2, proto) + body
    return out + b"\x08\x06" + draw(st.binary(max_size=28))


@st.composite
def linked(draw: st.DrawFn) -> tuple[bytes, int]:
    """A frame on one of the link types, with that link type's header."""
    linktype = draw(st.sampled_from([int(t) for t in LinkType]))
    if linktype == LinkType.ETHERNET:
        return draw(frame()), linktype
    if linktype == LinkType.PPI:
        inner = draw(frame())
        dlt = draw(st.sampled_from([1, 1, 192, 228, 1 << 20]))
        return struct.pack("<BBHI", draw(st.sampled_from([0, 0, 1])), 0,
                           draw(st.sampled_from([8, 8, 4, 12])), dlt) + inner, linktype
    packet = draw(ip_packet())
    ethertype = 0x0800 if packet[0] >> 4 == 4 else 0x86DD
    if linktype in (LinkType.LINUX_SLL, LinkType.LINUX_SLL2, LinkType.C_HDLC):
        et = struct.pack(">H", ethertype)
        head = {LinkType.LINUX_SLL: bytes(14) + et, LinkType.LINUX_SLL2: et + bytes(18),
                LinkType.C_HDLC: b"\x0f\x00" + et}[LinkType(linktype)]
        return head + packet, linktype
    if linktype in (LinkType.NULL, LinkType.LOOP):
        family = 2 if ethertype == 0x0800 else draw(st.sampled_from([24, 28, 30, 7]))
        order = ">" if linktype == LinkType.LOOP or draw(st.booleans()) else "<"
        return struct.pack(order + "I", family) + packet, linktype
    if linktype == LinkType.PPP:
        proto = 0x21 if ethertype == 0x0800 else 0x57
        head = (b"\xff\x03" if draw(st.booleans()) else b"") + (
            bytes([proto]) if draw(st.booleans()) else struct.pack(">H", proto))
        return head + packet, linktype
    if linktype == LinkType.IEEE802_11:
        control = draw(st.sampled_from([0x08, 0x88, 0x48, 0x80]))
        flags = draw(st.sampled_from([0x01, 0x03, 0x83, 0x41]))
        header = bytes([control, flags]) + bytes(22)
        header += bytes(6 if flags & 3 == 3 else 0) + (
            bytes(2 + (4 if flags & 0x80 else 0)) if control & 0x80 else b"")
        snap = b"\xaa\xaa\x03\x00\x00" + bytes([draw(st.sampled_from([0, 0xF8, 1]))])
        return header + snap + struct.pack(">H", ethertype) + packet, linktype
    return packet, linktype  # RAW, IPV4, IPV6: the packet alone


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(linked(), st.integers(0, 400), st.booleans()), min_size=1,
                max_size=12))
def test_frames_from_random_header_fields_decode_alike(
    frames: list[tuple[tuple[bytes, int], int, bool]],
) -> None:
    """Each frame whole, or cut by the snapshot length or short on the wire."""
    packets: list[tuple[bytes, int]] = []
    wire: list[int] = []
    for (packet, linktype), cut, snapped in frames:
        packets += [(packet, linktype), (packet, linktype)]
        wire += [len(packet), len(packet) + 1]  # whole, or cut just past its last byte
        packets.append((packet[: len(packet) - cut % (len(packet) + 1)], linktype))
        wire.append(len(packet) if snapped else len(packets[-1][0]))
    assert_same(batch_of(packets, wire))


def padded(packets: list[tuple[bytes, int]], wire: list[int], fill: bytes) -> PacketBatch:
    """``batch_of``, with ``fill`` after every packet in the buffer."""
    batch = batch_of([(p + fill, lt) for p, lt in packets], wire)
    batch.caplens -= len(fill)
    return batch


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(linked(), st.integers(1, 400)), min_size=1, max_size=8),
       st.binary(min_size=1, max_size=64))
def test_bytes_past_a_packet_never_change_its_decoding(
    frames: list[tuple[tuple[bytes, int], int]], fill: bytes,
) -> None:
    """Whatever follows a packet's captured bytes in the buffer, its row is the same."""
    packets = [(p[: len(p) - cut % (len(p) + 1)], lt) for (p, lt), cut in frames]
    wire = [len(p) for (p, _), _ in frames]
    ours = assert_same(padded(packets, wire, fill))
    zeros = assert_same(padded(packets, wire, bytes(len(fill))))
    for name in COLUMNS:
        np.testing.assert_array_equal(getattr(ours, name), getattr(zeros, name), err_msg=name)
    np.testing.assert_array_equal(ours.tunnels, zeros.tunnels)


def alone(packet: bytes, linktype: int, wirelen: int) -> DecodedBatch:
    """Decode ``packet`` from a heap buffer of exactly its size (64 bytes at least,
    the packet at its end), so a read past the packet leaves the buffer."""
    data = b"\0" * max(0, 64 - len(packet)) + packet
    batch = PacketBatch.from_packets([data], linktype, wirelens=[wirelen])
    batch.offsets[:] = len(data) - len(packet)
    batch.caplens[:] = len(packet)
    batch.data = np.frombuffer(data, dtype=np.uint8).copy()
    return assert_same(batch)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(linked(), st.integers(0, 400), st.integers(0, 2))
def test_a_packet_alone_in_its_buffer_decodes_alike(
    frame_: tuple[bytes, int], cut: int, extra: int,
) -> None:
    """Under AddressSanitizer (build ``_decode`` with ``-fsanitize=address`` and
    ``LD_PRELOAD`` libasan) a read past any of these packets is reported."""
    packet, linktype = frame_
    short = packet[: len(packet) - cut % (len(packet) + 1)]
    alone(packet, linktype, len(packet) + extra)
    alone(short, linktype, len(short) + extra)


def test_threads_decoding_at_once_get_what_one_thread_gets() -> None:
    """The loop runs without the GIL and keeps no state between calls."""
    rng = random.Random(7)
    packets = sample_packets() + [(f, 1) for f in limit_frames()]
    batches = [batch_of(rng.sample(packets, 200)) for _ in range(16)]
    alone_ = [decode_batch(b, "compiled") for b in batches]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda b: decode_batch(b, "compiled"), batches * 4))
    for k, got in enumerate(together):
        want = alone_[k % len(batches)]
        for name in COLUMNS:
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        np.testing.assert_array_equal(got.tunnels, want.tunnels)


# -- the depth limits, each side of the limit ----------------------------------------------


def ipv4(proto: int, payload: bytes) -> bytes:
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                       b"\x0a\0\0\x01", b"\x0a\0\0\x02") + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def eth(ethertype: int, payload: bytes) -> bytes:
    return MAC + struct.pack(">H", ethertype) + payload


def limit_frames() -> list[bytes]:
    """Stacks one short of, at and past every limit: tags, labels, headers, tunnels."""
    inner = ipv4(17, udp(5353, 53))
    frames = []
    for k in range(8):
        frames.append(MAC + b"\x81\x00\x00\x01" * k + b"\x08\x00" + inner)  # VLAN tags
        nested = inner
        for _ in range(k):
            nested = ipv4(4, nested)  # IP-in-IP
        frames.append(eth(0x0800, nested))
        frames.append(eth(0x8864, struct.pack(">BBHHH", 0x11, 0, 1, 0, 0x0281)  # PPPoE, MPLS
                          + b"\0\0\x01\x40" + nested))
        vxlan = inner
        for _ in range(k):
            vxlan = ipv4(17, udp(1, 4789, bytes(8) + eth(0x0800, vxlan)))
        frames.append(eth(0x0800, vxlan))
    for k in range(12):
        bottom = b"\0\0\x01\x40"
        frames.append(eth(0x8847, b"\0\0\0\x40" * k + bottom + inner))  # MPLS labels
        frames.append(eth(0x8847, b"\0\0\0\x40" * k))  # no bottom of stack
        chain = b"".join(bytes([60, 0]) + bytes(6) for _ in range(k))[:-8]
        head = bytes([60 if k else 17])
        v6 = struct.pack(">IHBB", 0x60000000, len(chain) + 16, head[0], 64) + bytes(32)
        chain = chain + bytes([17, 0]) + bytes(6) if k else b""
        frames.append(eth(0x86DD, v6[:4] + struct.pack(">H", len(chain) + 8) + v6[6:] + chain
                          + udp(1, 2)))  # IPv6 extension headers
        gtp = struct.pack(">BBHI", 0x34, 255, 0, 1) + b"\0\0\0\x85"
        gtp += b"".join(b"\x01\0\0" + (b"\x85" if i < k - 1 else b"\0") for i in range(k))
        frames.append(eth(0x0800, ipv4(17, udp(1, 2152, gtp + inner))))  # GTP-U extensions
    return frames


def test_stacks_at_every_depth_limit_decode_alike() -> None:
    """Each frame whole, cut by the snapshot length, and short on the wire."""
    frames = limit_frames()
    packets = [(f, 1) for f in frames] * 3 + [(f[:-1], 1) for f in frames] * 2
    wire = ([len(f) for f in frames] + [len(f) + 1 for f in frames] + [len(f) + 9 for f in frames]
            + [len(f) for f in frames] + [len(f) - 1 for f in frames])
    decoded = assert_same(batch_of(packets, wire))
    assert decoded.tunnels.shape[1] == native.MAX_ENCAPSULATIONS
    assert DecodeStatus.MALFORMED in set(decoded.status[len(frames): 2 * len(frames)].tolist())


# -- choosing the decoder ------------------------------------------------------------------


def test_portwatch_decode_numpy_selects_the_numpy_decoder(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(native, "_decode_numpy", lambda b: calls.append("numpy"))
    monkeypatch.setattr(native, "_decode_compiled", lambda b: calls.append("compiled"))
    monkeypatch.setattr(native, "_said", set())
    batch = batch_of(sample_packets()[:2])
    monkeypatch.setenv("PORTWATCH_VERBOSE", "1")
    monkeypatch.setenv("PORTWATCH_DECODE", "numpy")
    decode_batch(batch)
    decode_batch(batch)
    assert calls == ["numpy", "numpy"]
    assert capsys.readouterr().err == "portwatch: packet decoder: numpy\n"  # said once
    monkeypatch.delenv("PORTWATCH_DECODE")
    decode_batch(batch)
    monkeypatch.setenv("PORTWATCH_DECODE", "compiled")
    decode_batch(batch)
    assert calls[2:] == ["compiled", "compiled"]


def test_an_unknown_portwatch_decode_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTWATCH_DECODE", "fast")
    with pytest.raises(UsageError, match=r"PORTWATCH_DECODE: decoder must be one of auto, "
                                         r"compiled, numpy, not 'fast'"):
        decode_batch(batch_of(sample_packets()[:1]))
    with pytest.raises(ValueError, match="not 'turbo'"):
        decode_batch(batch_of(sample_packets()[:1]), "turbo")


def test_the_compiled_loop_refuses_columns_of_the_wrong_size() -> None:
    from portwatch.decode import _decode

    n = 3
    z8 = np.zeros(n, dtype=np.uint8)
    z16 = np.zeros(n, dtype=np.uint16)
    z64 = np.zeros(n, dtype=np.uint64)
    with pytest.raises(ValueError, match="a column has 2 rows, start has 3"):
        _decode.decode(np.zeros(64, dtype=np.uint8), np.zeros(n, dtype=np.int64),
                       np.zeros(2, dtype=np.int64), np.zeros(n, dtype=np.uint32),
                       np.ones(n, dtype=np.int64), native.TRANSPORT_OF_PROTO, z8, z8, z8,
                       z64, z64, z64, z64, z16, z16, z8, np.zeros(n, dtype=np.uint32), z8,
                       z16, np.zeros(12 * 42, dtype=np.uint8), native._LAYER_OFFSETS, 42,
                       np.zeros(12, dtype=np.int64), np.zeros(12, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"packet 0 spans 0:99, outside 64 bytes"):
        _decode.decode(np.zeros(64, dtype=np.uint8), np.zeros(n, dtype=np.int64),
                       np.full(n, 99, dtype=np.int64), np.zeros(n, dtype=np.uint32),
                       np.ones(n, dtype=np.int64), native.TRANSPORT_OF_PROTO, z8, z8, z8,
                       z64, z64, z64, z64, z16, z16, z8, np.zeros(n, dtype=np.uint32), z8,
                       z16, np.zeros(12 * 42, dtype=np.uint8), native._LAYER_OFFSETS, 42,
                       np.zeros(12, dtype=np.int64), np.zeros(12, dtype=np.uint8))


def test_the_fuzzing_harness_runs() -> None:
    """``fuzz_decode.py`` (run for minutes under the sanitizers) stays runnable."""
    import fuzz_decode

    done, batches = fuzz_decode.fuzz(0.2, seed=3)
    assert batches >= 1
    assert done == 256 * batches
