"""Hostile captures from an adversarial review, rebuilt in code: bounded memory and time.

Each test regenerates one reproducer of the review (small where the defect
allows) and states what must hold now: batches bounded in bytes, linear
sections, a writer that never crashes and writes what readers accept, the
scapy engine reporting an absurd block length as damage, and timestamps
past int64 nanoseconds refused alike by both engines.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from portwatch.capture.files.reader import open_capture, read_capture_path
from portwatch.cli import main
from portwatch.decode import decoder_for
from portwatch.errors import CaptureError, CaptureTruncatedError

FRAME = bytes(12) + b"\x08\x00" + bytes(28)  # 42 bytes: Ethernet carrying nothing useful


def block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def shb() -> bytes:
    return block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(link: int = 1, *, options: bytes = b"") -> bytes:
    return block(1, struct.pack("<HHI", link, 0, 0) + options + (bytes(4) if options else b""))


def option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def epb(ticks: int, frame: bytes = FRAME, iface: int = 0) -> bytes:
    head = struct.pack("<IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame))
    return block(6, head + frame)


def drain(engine_name: str, path: Path, stamps: list[int]) -> None:
    """Read ``path`` with one engine, keeping each packet's timestamp until it raises."""
    if engine_name == "native":
        with read_capture_path(str(path)) as reader:
            for batch in reader:
                stamps.extend(batch.timestamps_ns.tolist())
        return
    pytest.importorskip(engine_name)
    for _, ts in decoder_for(engine_name)(str(path), 4096):
        stamps.extend(ts.tolist())


@pytest.fixture
def registry(official_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTWATCH_REGISTRY", str(official_csv))
    monkeypatch.setenv("PORTWATCH_CACHE_DIR", str(tmp_path / "cache"))


# -- memory: batches bounded in bytes -------------------------------------------------------


def test_large_records_never_make_a_batch_over_64_mib(tmp_path: Path) -> None:
    """Review: 70,000 records of 64 KiB peaked at 8.45 GB (65,536 records per batch)."""
    path = tmp_path / "big.pcap"
    records, size = 1200, 65536  # 75 MiB sparse: bigger than one batch may be
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for i in range(records):
            out.write(struct.pack("<IIII", i, 0, size, size))
            out.seek(size, os.SEEK_CUR)
        out.truncate()
    counts = []
    with read_capture_path(str(path)) as reader:
        for batch in reader:
            assert batch.data.nbytes <= (64 << 20) + 64
            counts.append(len(batch))
    assert sum(counts) == records
    assert len(counts) == 2  # 1,023 records of 65,552 bytes fill 64 MiB


# -- time: many sections --------------------------------------------------------------------


def test_many_sections_read_in_order_with_each_sections_interfaces() -> None:
    """Review: 50,000 sections (6.2 MB) took 58 s; bench_hostile_sections.py times it."""
    count = 5000
    data = b"".join(shb() + idb(1 if i % 2 else 101) + epb(i) for i in range(count))
    reader = open_capture(data, "sections.pcapng")
    batches = list(reader)
    links = np.concatenate([b.linktypes for b in batches])
    assert links.tolist() == [1 if i % 2 else 101 for i in range(count)]
    assert len(reader.interfaces) == count


# -- the writer (--annotate) ----------------------------------------------------------------


def test_annotating_an_interface_named_with_invalid_utf8_does_not_crash(
    registry: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "name.pcapng"
    source.write_bytes(shb() + idb(options=option(2, b"\xff" * 21_846)) + epb(1))
    copy = tmp_path / "copy.pcapng"
    assert main(["analyze", "-f", "json", "--annotate", str(copy), str(source)]) == 0
    reader = read_capture_path(str(copy))
    with reader:
        assert sum(len(b) for b in reader) == 1
        assert reader.interfaces[0].name == "\ufffd" * 21_846
    capsys.readouterr()


def test_annotating_a_20_mib_record_writes_a_copy_portwatch_reads_again(
    registry: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    size = 20 << 20
    source = tmp_path / "huge.pcap"
    frame = FRAME + bytes(size - len(FRAME))
    source.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 1 << 26, 1)
                       + struct.pack("<IIII", 1, 0, size, size) + frame)
    copy = tmp_path / "copy.pcapng"
    assert main(["analyze", "-f", "json", "--annotate", str(copy), str(source)]) == 0
    with read_capture_path(str(copy)) as reader:
        batch = next(iter(reader))
    assert batch.caplens.tolist() == [262_144]
    assert batch.wirelens.tolist() == [size]
    capsys.readouterr()


# -- the scapy engine on an absurd block length ---------------------------------------------


def absurd_block_length() -> bytes:
    """176 bytes: a section, an interface, a packet, then a block claiming 0xFFFFFFFC."""
    good = shb() + idb() + epb(1)
    tail = struct.pack("<II", 6, 0xFFFFFFFC)
    return good + tail + bytes(176 - len(good) - len(tail))


@pytest.mark.parametrize("name", ["native", "scapy"])
def test_a_block_claiming_4_gib_is_damage_after_the_good_packets(
    name: str, tmp_path: Path
) -> None:
    data = absurd_block_length()
    assert len(data) == 176
    path = tmp_path / "absurd.pcapng"
    path.write_bytes(data)
    got: list[int] = []
    with pytest.raises(CaptureTruncatedError, match=r"absurd\.pcapng: byte \d+"):
        drain(name, path, got)
    assert len(got) == 1


# -- timestamps past int64 nanoseconds ------------------------------------------------------


def with_resolution(tsresol: int, ticks: list[int]) -> bytes:
    return shb() + idb(options=option(9, bytes([tsresol]))) + b"".join(epb(t) for t in ticks)


HOSTILE_TIMES = {
    "2^64-1 microseconds": with_resolution(6, [5, (1 << 64) - 1, 7]),
    "2^64-1 nanoseconds": with_resolution(9, [5, (1 << 64) - 1, 7]),
    "10^10 whole seconds": with_resolution(0, [5, 10**10, 7]),
    "2^64-1 ticks of 1/16 s": with_resolution(0x84, [5, (1 << 64) - 1, 7]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TIMES))
@pytest.mark.parametrize("name", ["native", "scapy"])
def test_timestamps_past_2262_are_refused_alike_by_both_engines(
    name: str, case: str, tmp_path: Path
) -> None:
    path = tmp_path / "late.pcapng"
    path.write_bytes(HOSTILE_TIMES[case])
    stamps: list[int] = []
    with pytest.raises(CaptureTruncatedError, match=r"late\.pcapng: byte 136: record timestamp"
                       r" \d+ ns is out of range") as info:
        drain(name, path, stamps)
    assert len(stamps) == 1
    assert stamps[0] >= 0
    assert info.value.offset == 136


def test_a_large_timestamp_offset_pushing_past_2262_is_refused_by_the_native_engine() -> None:
    # if_tsoffset of 2^33 s (year 2242) plus 2^31 s of ticks: past 2262. scapy ignores
    # if_tsoffset altogether (a known difference), so only the native engine is asked.
    data = shb() + idb(options=option(14, struct.pack("<q", 1 << 33))) + epb(0) + epb(
        (1 << 31) * 1_000_000)
    reader = iter(open_capture(data, "offset.pcapng"))
    assert next(reader).timestamps_ns.tolist() == [(1 << 33) * 1_000_000_000]
    with pytest.raises(CaptureTruncatedError, match="out of range"):
        next(reader)


def test_the_last_representable_timestamp_is_kept() -> None:
    limit = (1 << 63) - 1
    batch = next(iter(open_capture(with_resolution(9, [limit]), "edge.pcapng")))
    assert batch.timestamps_ns.tolist() == [limit]
    with pytest.raises(CaptureError, match="out of range"):
        list(open_capture(with_resolution(9, [limit + 1]), "edge.pcapng"))
