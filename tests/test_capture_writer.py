"""PcapngWriter round trips through our reader and through the real tshark."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from portwatch._atomic import atomic_output
from portwatch.capture.files.reader import open_capture, read_capture_path
from portwatch.capture.files.writer import WRITE_PACKETS, PcapngWriter

PCAPS = Path(__file__).resolve().parent.parent / "pcaps"


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
