"""PcapngWriter round trips through our reader and through the real tshark."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from portwatch._atomic import atomic_output
from portwatch.capture.batch import PacketBatch
from portwatch.capture.files._framing import Interface
from portwatch.capture.files.reader import open_capture, read_capture_path
from portwatch.capture.files.writer import (
    MAX_WRITE_CAPLEN,
    WRITE_BYTES,
    WRITE_PACKETS,
    PcapngWriter,
)

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"


def annotate(source: Path, out: io.BufferedIOBase | io.BytesIO, every: int = 3) -> list[str]:
    """Copy ``source`` with a comment on every ``every``-th packet; the comments written."""
    written: list[str] = []
    with read_capture_path(str(source), batch_size=5) as reader:
        writer = PcapngWriter(out, reader.interfaces)  # type: ignore[arg-type]
        n = 0
        for batch in reader:
            writer.sync_interfaces(reader.interfaces)
            comments = []
            for _ in range(len(batch)):
                text = f"packet {n} — ünïcode" if n % every == 0 else None
                comments.append(text)
                written.append(text or "")
                n += 1
            writer.write_batch(batch, comments)
    return written


def snapshot(data: bytes) -> list[tuple[bytes, int, int, int]]:
    out = []
    for batch in open_capture(data, "x"):
        for i in range(len(batch)):
            out.append(
                (
                    batch.packet(i),
                    int(batch.timestamps_ns[i]),
                    int(batch.linktypes[i]),
                    int(batch.wirelens[i]),
                )
            )
    return out


@pytest.mark.parametrize(
    "name", ["sample.pcapng", "multi-section.pcapng", "eth-be-nsec.pcap", "linktype-sll2-276.pcap"]
)
def test_round_trip_keeps_bytes_timestamps_and_link_types(name: str) -> None:
    out = io.BytesIO()
    annotate(PCAPS / name, out)
    assert snapshot(out.getvalue()) == snapshot((PCAPS / name).read_bytes())


def test_tshark_reads_the_comments_as_frame_comment(tmp_path: Path) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    target = tmp_path / "out.pcapng"
    with atomic_output(target) as fileobj:
        written = annotate(PCAPS / "sample.pcapng", fileobj)  # type: ignore[arg-type]
    run = subprocess.run(
        ["tshark", "-r", str(target), "-T", "fields", "-e", "frame.comment"],
        capture_output=True,
        check=True,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    assert run.stdout.decode().splitlines() == written


def test_batch_without_comments_writes_plain_packets() -> None:
    source = (PCAPS / "eth-le-usec.pcap").read_bytes()
    reader = open_capture(source, "s")
    out = io.BytesIO()
    writer = PcapngWriter(out, reader.interfaces)
    for batch in reader:
        writer.write_batch(batch)
    data = out.getvalue()
    assert snapshot(data) == snapshot(source)
    assert b"packet" not in data


def test_comment_count_must_match_the_batch() -> None:
    reader = open_capture((PCAPS / "eth-le-usec.pcap").read_bytes(), "s")
    writer = PcapngWriter(io.BytesIO(), reader.interfaces)
    batch = next(iter(reader))
    with pytest.raises(ValueError, match="comments for"):
        writer.write_batch(batch, ["one"])


def test_packets_of_an_unwritten_interface_are_refused() -> None:
    reader = open_capture((PCAPS / "eth-le-usec.pcap").read_bytes(), "s")
    writer = PcapngWriter(io.BytesIO())
    with pytest.raises(ValueError, match="interface 0"):
        writer.write_batch(next(iter(reader)))


def test_big_batches_round_trip() -> None:
    reader = open_capture((PCAPS / "sample.pcapng").read_bytes(), "s")
    batch = next(iter(reader))
    idx = np.tile(np.arange(len(batch)), 300)
    big = type(batch)(
        data=batch.data,
        offsets=batch.offsets[idx],
        caplens=batch.caplens[idx],
        wirelens=batch.wirelens[idx],
        timestamps_ns=batch.timestamps_ns[idx],
        linktypes=batch.linktypes[idx],
        interfaces=batch.interfaces[idx],
        file_offsets=batch.file_offsets[idx],
    )
    out = io.BytesIO()
    PcapngWriter(out, reader.interfaces).write_batch(big, ["c"] * len(big))
    back = list(open_capture(out.getvalue(), "o"))
    assert sum(len(b) for b in back) == len(big)
    assert back[0].packet(len(batch)) == batch.packet(0)
    written = [b.packet(i) for b in back for i in range(len(b))]
    assert written == [big.packet(i) for i in range(len(big))]  # across the write parts
    assert len(big) > WRITE_PACKETS


def test_atomic_output_leaves_no_file_when_the_body_fails(tmp_path: Path) -> None:
    target = tmp_path / "annotated.pcapng"

    def write_then_fail() -> None:
        with atomic_output(target) as fileobj:
            fileobj.write(b"half")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail()
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_replaces_the_old_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "annotated.pcapng"
    target.write_bytes(b"old")
    with atomic_output(target) as fileobj:
        fileobj.write(b"new contents")
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"new contents"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_output_gives_the_mode_a_plain_open_would(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "report.json") as fileobj:
            fileobj.write(b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644


# -- hostile sources: the copy stays readable, the writer never crashes ------------------


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def pcapng_named(name: bytes) -> bytes:
    """One Ethernet interface named ``name`` (raw option bytes) and one packet on it."""
    name_opt = struct.pack("<HH", 2, len(name)) + name + b"\0" * (-len(name) % 4)
    frame = bytes(12) + b"\x08\x00" + bytes(46)
    return (
        _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
        + _block(1, struct.pack("<HHI", 1, 0, 0) + name_opt + bytes(4))
        + _block(6, struct.pack("<IIIII", 0, 0, 7, len(frame), len(frame)) + frame)
    )


def copy_of(data: bytes) -> tuple[bytes, PcapngWriter]:
    out = io.BytesIO()
    reader = open_capture(data, "hostile.pcapng")
    writer = PcapngWriter(out)
    for batch in reader:
        writer.sync_interfaces(reader.interfaces)
        writer.write_batch(batch, ["c"] * len(batch))
    return out.getvalue(), writer


def test_interface_name_of_invalid_utf8_past_the_option_limit_is_cut_not_a_crash() -> None:
    # 21,846 bytes of 0xff read as 21,846 U+FFFD: 65,538 bytes of UTF-8, 3 past the limit
    data, writer = copy_of(pcapng_named(b"\xff" * 21_846))
    reader = open_capture(data, "copy.pcapng")
    assert sum(len(b) for b in reader) == 1
    assert reader.interfaces[0].name == "\ufffd" * 21_845
    assert writer.warnings == [
        "interface 0 name is 65,538 bytes in UTF-8, more than a pcapng option holds: cut to 65,535"
    ]


@pytest.mark.parametrize("char", ["é", "€", "🦈"])
def test_long_names_are_cut_on_a_character_boundary(char: str) -> None:
    name = char * (70_000 // len(char.encode()))
    out = io.BytesIO()
    writer = PcapngWriter(out)
    writer.add_interface(Interface(link_type=1, snaplen=0, name=name, description=name))
    reader = open_capture(out.getvalue(), "names.pcapng")
    list(reader)
    got = reader.interfaces[0]
    assert got.name == got.description
    assert name.startswith(got.name)
    assert 65_535 - len(char.encode()) < len(got.name.encode()) <= 65_535
    assert len(writer.warnings) == 2


def test_lone_surrogates_in_a_name_are_written_not_raised() -> None:
    out = io.BytesIO()
    writer = PcapngWriter(out)
    writer.add_interface(Interface(link_type=1, snaplen=0, name="eth\udcff0"))
    list(reader := open_capture(out.getvalue(), "s.pcapng"))
    assert reader.interfaces[0].name == "eth?0"


def test_packet_comment_past_the_option_limit_is_cut_with_a_warning() -> None:
    source = (PCAPS / "eth-le-usec.pcap").read_bytes()
    batch = next(iter(open_capture(source, "s")))
    out = io.BytesIO()
    writer = PcapngWriter(out, [Interface(link_type=1, snaplen=65535)])
    writer.write_batch(batch, ["x" * 70_000] + [None] * (len(batch) - 1))
    assert len(next(iter(open_capture(out.getvalue(), "c")))) == len(batch)
    assert writer.warnings == [
        "a packet comment is 70,000 bytes in UTF-8, more than a pcapng option holds: cut to 65,535"
    ]


def big_record_pcap(size: int) -> bytes:
    frame = bytes(12) + b"\x08\x00" + bytes([0x5A]) * (size - 14)
    return (
        struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 1 << 26, 1)
        + struct.pack("<IIII", 1, 0, 60, 60) + frame[:60]
        + struct.pack("<IIII", 2, 0, size, size) + frame
    )


def test_a_20_mib_record_is_cut_to_what_readers_accept_keeping_its_length(
    tmp_path: Path,
) -> None:
    size = 20 << 20
    data, writer = copy_of(big_record_pcap(size))
    back = list(open_capture(data, "copy.pcapng"))
    caplens = np.concatenate([b.caplens for b in back]).tolist()
    wirelens = np.concatenate([b.wirelens for b in back]).tolist()
    assert caplens == [60, MAX_WRITE_CAPLEN]
    assert wirelens == [60, size]
    assert back[-1].packet(len(back[-1]) - 1)[14:20] == b"\x5a" * 6
    assert writer.warnings == [
        "packet data longer than 262,144 bytes is cut to that in the copy, original length "
        "kept: the record at byte 100 of the source holds 20,971,520"
    ]
    if shutil.which("tshark") is not None:
        path = tmp_path / "copy.pcapng"
        path.write_bytes(data)
        run = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.cap_len",
                              "-e", "frame.len"], capture_output=True, text=True, check=False)
        assert run.stdout.split() == ["60", "60", "262144", str(size)], run.stderr


class _Writes(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def write(self, b: object) -> int:
        self.sizes.append(len(b))  # type: ignore[arg-type]
        return super().write(b)  # type: ignore[arg-type]


def test_writes_are_bounded_in_bytes_whatever_the_packet_sizes() -> None:
    sizes = [200_000] * 200 + [60] * 50
    frames = [bytes([i % 256]) * s for i, s in enumerate(sizes)]
    batch = PacketBatch.from_packets(frames, 1)
    out = _Writes()
    writer = PcapngWriter(out, [Interface(link_type=1, snaplen=0)])
    writer.write_batch(batch, ["c"] * len(batch))
    assert max(out.sizes[2:]) <= WRITE_BYTES  # after the section and interface blocks
    back = [b.packet(i) for b in open_capture(out.getvalue(), "w") for i in range(len(b))]
    assert back == frames
    assert writer.warnings == []


@pytest.mark.parametrize("tsresol", [0x94, 0x80 | 30, 0x80 | 34, 6, 9, 12])
def test_copied_timestamps_read_back_exactly_at_any_resolution(tsresol: int) -> None:
    """Rounding ticks down lost a nanosecond per copy at 2**-20 s (found by the fuzzer)."""
    from portwatch.capture.files.pcapng import tsresol_to_ns

    ticks = np.array([0, 1, 977, 1_234_567_891, (1 << 40) + 12_345], dtype=np.uint64)
    ns = tsresol_to_ns(tsresol, ticks)
    batch = PacketBatch.from_packets([b"x" * 20] * len(ns), 1, timestamps_ns=ns.tolist())
    out = io.BytesIO()
    PcapngWriter(out, [Interface(link_type=1, snaplen=0, tsresol=tsresol)]).write_batch(batch)
    back = next(iter(open_capture(out.getvalue(), "r")))
    assert back.timestamps_ns.tolist() == ns.tolist()
