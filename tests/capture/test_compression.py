"""Compressed captures: gzip (igzip or zlib), zstd and lz4, told by magic bytes."""

from __future__ import annotations

import gzip
import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from portwatch.capture.files import _compression
from portwatch.capture.files._compression import open_decompressor
from portwatch.capture.files.reader import looks_like_capture, open_capture, read_capture_path
from portwatch.errors import CaptureFormatError, CaptureTruncatedError

zstandard = pytest.importorskip("zstandard")
lz4_frame = pytest.importorskip("lz4.frame")

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
SAMPLE = (PCAPS / "sample.pcapng").read_bytes()
PLAIN = (PCAPS / "eth-le-usec.pcap").read_bytes()


def big_capture(records: int = 3000, size: int = 1000) -> bytes:
    """A pcap of random payloads (hardly compressible): about 3 MB, many compressed blocks,
    more than one read's worth, so damage at the end comes after good packets."""
    rng = np.random.default_rng(7)
    body = rng.integers(0, 256, size=(records, size), dtype=np.uint8)
    head = struct.pack("<IIII", 1_700_000_000, 0, size, size)
    return PLAIN[:24] + b"".join(head + row.tobytes() for row in body)


BIG = big_capture()


def zstd(data: bytes, *, checksum: bool = False) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=checksum).compress(data)


def lz4(data: bytes) -> bytes:
    return lz4_frame.compress(data, content_checksum=True)


COMPRESS = {"gzip": lambda d: gzip.compress(d, mtime=0), "zstd": zstd, "lz4": lz4}


def packets(source: bytes | io.BytesIO, **kw: int) -> list[tuple[bytes, int, int]]:
    return [(b.packet(i), int(b.timestamps_ns[i]), int(b.linktypes[i]))
            for b in open_capture(source, "c", **kw) for i in range(len(b))]


EXPECTED = {name: packets(data) for name, data in (("sample", SAMPLE), ("plain", PLAIN))}


@pytest.mark.parametrize("kind", sorted(COMPRESS))
@pytest.mark.parametrize("name", ["sample", "plain"])
def test_a_compressed_capture_reads_like_the_plain_one_from_buffer_and_stream(
    kind: str, name: str
) -> None:
    data = COMPRESS[kind](SAMPLE if name == "sample" else PLAIN)
    assert packets(data, batch_size=5) == EXPECTED[name]
    assert packets(io.BytesIO(data)) == EXPECTED[name]
    reader = open_capture(data, "c")
    assert reader.compressed


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_concatenated_frames_read_as_one_stream(kind: str) -> None:
    cut = len(SAMPLE) // 3
    data = COMPRESS[kind](SAMPLE[:cut]) + COMPRESS[kind](SAMPLE[cut:])
    assert packets(data) == EXPECTED["sample"]


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_the_format_is_told_by_magic_bytes_not_by_name(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "looks-plain.pcap"
    path.write_bytes(COMPRESS[kind](SAMPLE))
    with read_capture_path(str(path)) as reader:
        assert reader.format == "pcapng"
        assert sum(len(b) for b in reader) == 68
    assert looks_like_capture(path.read_bytes()[:4])


def test_gzip_reads_alike_through_igzip_and_zlib(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("isal")
    data = gzip.compress(SAMPLE, mtime=0)
    assert _compression.gzip_backend() == "isal"
    through_isal = packets(data)
    monkeypatch.setattr(_compression, "_isal", lambda: None)
    assert _compression.gzip_backend() == "zlib"
    assert packets(data) == through_isal == EXPECTED["sample"]


@pytest.mark.parametrize(("kind", "why"), [
    ("gzip", "gzip stream ends before its end marker"),
    ("lz4", "lz4 stream ends before its end mark"),
    ("zstd", r"capture ends inside a record"),
])
def test_a_cut_compressed_capture_gives_the_good_prefix_then_damage(kind: str, why: str) -> None:
    data = COMPRESS[kind](BIG)
    got: list[int] = []
    with pytest.raises(CaptureTruncatedError, match=why) as caught:  # noqa: PT012
        for batch in open_capture(data[: len(data) * 2 // 3], "cut", batch_size=400):
            got.append(len(batch))
    assert 0 < sum(got) < 3000
    assert "offset in the decompressed data" in str(caught.value)


def damaged_after_good_packets(data: bytes, at: int, why: str) -> None:
    bad = bytearray(data)
    bad[at] ^= 0xFF
    got = 0
    with pytest.raises(CaptureTruncatedError, match=why):  # noqa: PT012
        for batch in open_capture(bytes(bad), "bad"):
            got += len(batch)
    assert got > 0


def test_damaged_zstd_data_is_reported_as_damage_after_the_good_packets() -> None:
    damaged_after_good_packets(zstd(BIG, checksum=True), -2, "zstd data is damaged")


def test_damaged_lz4_data_is_reported_as_damage_after_the_good_packets() -> None:
    damaged_after_good_packets(lz4(BIG), -3, "lz4 data is damaged")


@pytest.mark.parametrize(("kind", "module", "package"), [
    ("zstd", "zstandard", "zstandard"), ("lz4", "lz4.frame", "lz4")])
def test_a_missing_package_is_named_in_one_line(
    kind: str, module: str, package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = COMPRESS[kind](SAMPLE)
    monkeypatch.setitem(sys.modules, module, None)
    if module == "lz4.frame":
        monkeypatch.setitem(sys.modules, "lz4", None)
    with pytest.raises(CaptureFormatError, match=rf"{kind}-compressed capture: install the "
                       rf"Python package '{package}' to read it \(pip install {package}\)"):
        open_capture(data, "c.pcap")


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_a_decompression_bomb_is_read_a_bounded_piece_at_a_time(kind: str) -> None:
    bomb = COMPRESS[kind](bytes(32 << 20))
    assert len(bomb) < 1 << 20
    inflate = open_decompressor(bomb[:4], io.BytesIO(bomb).read, "bomb")
    assert inflate is not None
    sizes = [len(inflate.read(4096)) for _ in range(50)]
    assert max(sizes) <= 4096
    assert sum(sizes) > 0
    with pytest.raises(CaptureFormatError, match="are not pcap, pcapng or gzip"):
        open_capture(bomb, "bomb")


def test_compressed_batches_equal_the_plain_ones_array_for_array() -> None:
    plain = list(open_capture(SAMPLE, "p", batch_size=7))
    for compress in COMPRESS.values():
        packed = list(open_capture(compress(SAMPLE), "z", batch_size=7))
        assert len(packed) == len(plain)
        for a, b in zip(plain, packed, strict=True):
            np.testing.assert_array_equal(a.timestamps_ns, b.timestamps_ns)
            np.testing.assert_array_equal(a.file_offsets, b.file_offsets)
            np.testing.assert_array_equal(a.caplens, b.caplens)


@pytest.mark.parametrize("isal", [True, False])
def test_damaged_gzip_data_is_reported_as_damage_after_the_good_packets(
    isal: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not isal:
        monkeypatch.setattr(_compression, "_isal", lambda: None)
    data = zlib.compress(BIG, wbits=31)
    damaged_after_good_packets(data, -6, "gzip data is damaged")  # the CRC-32
