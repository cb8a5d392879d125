"""pcapng framing: sections, interfaces, simple and unknown blocks, block damage."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from portwatch.capture.files.pcapng import tsresol_to_ns
from portwatch.capture.files.reader import open_capture
from portwatch.errors import CaptureError, CaptureFormatError, CaptureTruncatedError

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
SAMPLE = (PCAPS / "sample.pcapng").read_bytes()


def blocks(data: bytes) -> list[tuple[int, int]]:
    """(offset, type) of every block of a little-endian file."""
    out, pos = [], 0
    while pos < len(data):
        btype, length = struct.unpack_from("<II", data, pos)
        out.append((pos, btype))
        pos += length
    return out


def read(data: bytes) -> tuple[list[bytes], CaptureError | None]:
    got: list[bytes] = []
    try:
        for batch in open_capture(data, "f.pcapng", batch_size=4):
            got.extend(batch.packet(i) for i in range(len(batch)))
    except CaptureError as exc:
        return got, exc
    return got, None


FULL, _ = read(SAMPLE)
EPBS = [pos for pos, btype in blocks(SAMPLE) if btype == 6]


def test_two_interfaces_keep_their_own_link_types_and_resolutions() -> None:
    reader = open_capture(SAMPLE, "s")
    batches = list(reader)
    assert [(i.name, i.link_type, i.tsresol) for i in reader.interfaces] == [
        ("eth0", 1, 6),
        ("tun0", 228, 9),
    ]
    assert reader.link_types == (1, 228)
    links = np.concatenate([b.linktypes for b in batches])
    ifaces = np.concatenate([b.interfaces for b in batches])
    assert set(zip(ifaces.tolist(), links.tolist(), strict=True)) == {(0, 1), (1, 228)}


def test_sections_each_bring_byte_order_and_interfaces() -> None:
    reader = open_capture((PCAPS / "multi-section.pcapng").read_bytes(), "m")
    batches = list(reader)
    assert [(i.section, i.link_type, i.name) for i in reader.interfaces] == [
        (0, 1, "eth0"),
        (1, 101, "raw0"),
        (1, 113, "any"),
    ]
    ifaces = np.concatenate([b.interfaces for b in batches]).tolist()
    assert ifaces == [0] * 5 + [1] * 2 + [2] * 5
    links = np.concatenate([b.linktypes for b in batches]).tolist()
    assert links == [1] * 5 + [101] * 2 + [113] * 5
    stamps = np.concatenate([b.timestamps_ns for b in batches])
    assert bool((np.diff(stamps) > 0).all())


def test_simple_packet_blocks_read_and_unknown_blocks_are_skipped() -> None:
    reader = open_capture((PCAPS / "simple-and-unknown-blocks.pcapng").read_bytes(), "u")
    batches = list(reader)
    caplens = np.concatenate([b.caplens for b in batches]).tolist()
    stamps = np.concatenate([b.timestamps_ns for b in batches]).tolist()
    assert caplens == [46, 52, 54, 54]
    assert stamps[:2] == [0, 0]  # simple packet blocks carry no timestamp
    # 2^-20 s ticks: within a microsecond of the generator's nanosecond time
    assert abs(stamps[2] - 1_700_000_000_123_456_789) < 1000


@pytest.mark.parametrize(
    ("tsresol", "ticks", "ns"),
    [
        (6, 1_500_000, 1_500_000_000),
        (9, 7, 7),
        (3, 2, 2_000_000),
        (12, 5_000, 5),
        (0x80 | 10, 1024 + 512, 1_500_000_000),
        (0x80 | 0, 3, 3_000_000_000),
    ],
)
def test_timestamp_resolutions_convert_to_nanoseconds(tsresol: int, ticks: int, ns: int) -> None:
    assert tsresol_to_ns(tsresol, np.array([ticks], dtype=np.uint64)).tolist() == [ns]


def test_trailing_length_differing_from_leading_stops_at_that_block() -> None:
    bad = bytearray(SAMPLE)
    at = EPBS[10]
    length = struct.unpack_from("<I", bad, at + 4)[0]
    struct.pack_into("<I", bad, at + length - 4, length + 4)
    got, err = read(bytes(bad))
    assert got == FULL[:10]
    assert isinstance(err, CaptureTruncatedError)
    assert err.offset == at
    assert "trailing" in err.message


@pytest.mark.parametrize("length", [0, 8, 30, 0x7FFFFFFC, 0xFFFFFFFF])
def test_insane_block_lengths_stop_at_that_block(length: int) -> None:
    bad = bytearray(SAMPLE)
    struct.pack_into("<I", bad, EPBS[7] + 4, length)
    got, err = read(bytes(bad))
    assert got == FULL[:7]
    assert isinstance(err, CaptureTruncatedError)
    assert err.offset == EPBS[7]


def test_packet_naming_an_undeclared_interface_is_damage() -> None:
    bad = bytearray(SAMPLE)
    struct.pack_into("<I", bad, EPBS[3] + 8, 5)
    got, err = read(bytes(bad))
    assert got == FULL[:3]
    assert isinstance(err, CaptureTruncatedError)
    assert "interface 5" in err.message


def test_random_bytes_after_the_last_block_are_damage() -> None:
    got, err = read(SAMPLE + bytes(range(7, 47)))
    assert got == FULL
    assert isinstance(err, CaptureTruncatedError)
    assert err.offset == len(SAMPLE)


def test_cut_inside_a_block_reports_its_start() -> None:
    got, err = read(SAMPLE[: EPBS[20] + 30])
    assert got == FULL[:20]
    assert isinstance(err, CaptureTruncatedError)
    assert err.offset == EPBS[20]


def test_broken_first_section_header_is_a_format_error() -> None:
    bad = bytearray(SAMPLE)
    struct.pack_into("<I", bad, 8, 0xDEADBEEF)
    with pytest.raises(CaptureFormatError, match="byte-order magic"):
        open_capture(bytes(bad), "b")


def test_runs_of_equal_size_blocks_stop_exactly_at_a_damaged_block() -> None:
    """The numpy run check accepts just the blocks the one-by-one loop accepts."""
    import io

    from portwatch.capture.batch import PacketBatch
    from portwatch.capture.files._framing import Interface
    from portwatch.capture.files.writer import PcapngWriter

    packets = [bytes([i % 256]) * 60 for i in range(300)]
    out = io.BytesIO()
    PcapngWriter(out, [Interface(link_type=1, snaplen=65535)]).write_batch(
        PacketBatch.from_packets(packets, 1))
    data = bytearray(out.getvalue())
    packet_blocks = [pos for pos, btype in blocks(bytes(data)) if btype == 6]
    bad = packet_blocks[211]
    struct.pack_into("<I", data, bad + 92 - 4, 0xDEAD)  # trailing length of block 211

    got: list[bytes] = []

    def read_all() -> None:
        for batch in open_capture(bytes(data), "runs.pcapng", batch_size=1000):
            got.extend(batch.packet(i) for i in range(len(batch)))

    with pytest.raises(CaptureTruncatedError) as err:
        read_all()
    assert got == packets[:211]
    assert err.value.offset == bad


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def one_packet_section(link_type: int, tag: int) -> bytes:
    return (
        _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
        + _block(1, struct.pack("<HHI", link_type, 0, 0))
        + _block(6, struct.pack("<IIIII", 0, 0, tag, 4, 4) + struct.pack("<I", tag))
    )


class _Untouchable(list[object]):
    """The framer's list of every interface so far: building a batch must not scan it."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise AssertionError("a batch scanned the interfaces of earlier sections")

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        raise AssertionError("a batch indexed the interfaces of earlier sections")


def test_many_sections_each_give_their_own_link_type_and_interface_index() -> None:
    links = [1, 101, 113, 228, 229, 276]
    data = b"".join(one_packet_section(links[i % 6], i) for i in range(600))
    reader = open_capture(data, "many.pcapng")
    batches = list(reader)
    assert np.concatenate([b.linktypes for b in batches]).tolist() == [
        links[i % 6] for i in range(600)]
    assert np.concatenate([b.interfaces for b in batches]).tolist() == list(range(600))
    assert np.concatenate([b.timestamps_ns for b in batches]).tolist() == [
        i * 1000 for i in range(600)]
    assert [i.section for i in reader.interfaces] == list(range(600))


def test_building_a_batch_never_scans_earlier_sections_interfaces() -> None:
    """Work per section stays constant: 50,000 sections once took 58 s (quadratic)."""
    data = b"".join(one_packet_section(1, i) for i in range(50))
    reader = open_capture(data, "many.pcapng")
    framer = reader._framer
    it = iter(reader)
    for _ in range(10):
        next(it)
    framer.interfaces = _Untouchable(framer.interfaces)
    rest = list(it)
    assert len(rest) == 40
    assert [int(b.interfaces[0]) for b in rest] == list(range(10, 50))
