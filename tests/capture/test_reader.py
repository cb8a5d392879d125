"""The sniffing reader against every sample capture, scapy and tshark; damage; streaming."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import struct
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portwatch.capture.files._framing import REGION_SLACK
from portwatch.capture.files.reader import CaptureReader, open_capture, read_capture_path
from portwatch.errors import CaptureError, CaptureFormatError, CaptureTruncatedError

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
TRUTH = json.loads((PCAPS / "truth.json").read_text())
GOOD = sorted(name for name in TRUTH if name != "truncated.pcap")


def packets(reader: CaptureReader) -> list[tuple[bytes, int, int, int]]:
    """(bytes, timestamp ns, link type, file offset) per packet, in order."""
    out = []
    for batch in reader:
        for i in range(len(batch)):
            out.append(
                (
                    batch.packet(i),
                    int(batch.timestamps_ns[i]),
                    int(batch.linktypes[i]),
                    int(batch.file_offsets[i]),
                )
            )
    return out


def read_all(data: bytes, batch_size: int = 65536) -> list[tuple[bytes, int, int, int]]:
    return packets(open_capture(data, "t.pcap", batch_size))


def read_until_error(data: bytes) -> tuple[list[bytes], CaptureError | None]:
    got: list[bytes] = []
    try:
        for batch in open_capture(data, "t", batch_size=3):
            got.extend(batch.packet(i) for i in range(len(batch)))
    except CaptureError as exc:
        return got, exc
    return got, None


def scapy_packets(path: Path) -> list[bytes]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from scapy.utils import RawPcapReader

        with RawPcapReader(str(path)) as reader:
            return [bytes(data) for data, _meta in reader]


def tshark_fields(path: Path, *fields: str) -> list[list[str]]:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    args = ["tshark", "-r", str(path), "-T", "fields"]
    for field in fields:
        args += ["-e", field]
    run = subprocess.run(args, capture_output=True, text=True, check=False)
    return [line.split("\t") for line in run.stdout.splitlines()]


@pytest.mark.parametrize("name", GOOD)
def test_every_sample_gives_scapys_packets_byte_for_byte(name: str) -> None:
    with read_capture_path(str(PCAPS / name)) as reader:
        got = [p[0] for p in packets(reader)]
    assert got == scapy_packets(PCAPS / name)
    assert len(got) == TRUTH[name]["packets"]


@pytest.mark.parametrize("name", GOOD)
def test_every_sample_agrees_with_tshark_on_lengths_and_timestamps(name: str) -> None:
    fields = ("frame.cap_len", "frame.time_epoch", "frame.len", "frame.interface_id")
    rows = tshark_fields(PCAPS / name, *fields)
    if name.endswith(".pcapng"):
        # tshark also lists pcapng Custom Blocks as records; they have no interface.
        rows = [r for r in rows if r[3]]
    with read_capture_path(str(PCAPS / name), batch_size=5) as reader:
        batches = list(reader)
    caplens = np.concatenate([b.caplens for b in batches]).tolist()
    wirelens = np.concatenate([b.wirelens for b in batches]).tolist()
    stamps = np.concatenate([b.timestamps_ns for b in batches]).tolist()
    assert caplens == [int(r[0]) for r in rows]
    assert wirelens == [int(r[2]) for r in rows]
    for ours, theirs in zip(stamps, (r[1] for r in rows), strict=True):
        if ours == 0:  # simple packet blocks carry no timestamp
            continue
        sec, _, frac = theirs.partition(".")
        assert ours == int(sec) * 1_000_000_000 + int(frac.ljust(9, "0"))


def test_byte_orders_and_precisions_agree_on_packets_and_timestamps() -> None:
    read = {
        n: read_all((PCAPS / n).read_bytes())
        for n in ("eth-le-usec.pcap", "eth-be-usec.pcap", "eth-le-nsec.pcap", "eth-be-nsec.pcap")
    }
    assert [p[:3] for p in read["eth-le-usec.pcap"]] == [p[:3] for p in read["eth-be-usec.pcap"]]
    assert [p[:3] for p in read["eth-le-nsec.pcap"]] == [p[:3] for p in read["eth-be-nsec.pcap"]]
    usec = [p[1] for p in read["eth-le-usec.pcap"]]
    nsec = [p[1] for p in read["eth-le-nsec.pcap"]]
    assert any(t % 1000 for t in nsec), "the sample should have sub-microsecond timestamps"
    assert usec == [t // 1000 * 1000 for t in nsec]


def test_gzip_capture_reads_like_the_plain_one_from_buffer_and_stream() -> None:
    plain = read_all((PCAPS / "eth-le-usec.pcap").read_bytes())
    gz = (PCAPS / "eth-le-usec.pcap.gz").read_bytes()
    reader = open_capture(io.BytesIO(gz), "x.gz")
    assert reader.compressed
    assert reader.format == "pcap"
    assert packets(reader) == plain
    assert read_all(gz) == plain


def test_concatenated_gzip_members_read_as_one_stream() -> None:
    data = (PCAPS / "eth-le-usec.pcap").read_bytes()
    two = gzip.compress(data[:100], mtime=0) + gzip.compress(data[100:], mtime=0)
    assert read_all(two) == read_all(data)


def test_cut_gzip_gives_good_prefix_then_truncated_error() -> None:
    gz = (PCAPS / "eth-le-usec.pcap.gz").read_bytes()
    got, err = read_until_error(gz[: len(gz) - 40])
    assert isinstance(err, CaptureTruncatedError)
    assert "decompressed" in str(err)
    full = [p[0] for p in read_all((PCAPS / "eth-le-usec.pcap").read_bytes())]
    assert got == full[: len(got)]


class Trickle(io.RawIOBase):
    """A stream that hands out at most ``step`` bytes per read, like a slow pipe."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._step if n < 0 else min(n, self._step)
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out


@pytest.mark.parametrize("name", ["sample.pcapng", "multi-section.pcapng", "eth-be-nsec.pcap"])
@pytest.mark.parametrize("step", [1, 7, 4096])
def test_streaming_in_small_chunks_gives_the_same_packets(name: str, step: int) -> None:
    data = (PCAPS / name).read_bytes()
    streamed = packets(open_capture(Trickle(data, step), name, batch_size=4))  # type: ignore[arg-type]
    assert streamed == read_all(data)


def test_truncated_file_gives_good_prefix_then_error_at_cut_record() -> None:
    path = PCAPS / "truncated.pcap"
    got: list[bytes] = []
    err: CaptureError | None = None
    with read_capture_path(str(path)) as reader:
        try:
            for batch in reader:
                got.extend(batch.packet(i) for i in range(len(batch)))
        except CaptureError as exc:
            err = exc
    truth = TRUTH["truncated.pcap"]
    assert isinstance(err, CaptureTruncatedError)
    assert len(got) == truth["packets"] == 6
    assert err.offset == truth["truncated_at"]
    assert err.exit_code == 1
    assert str(err).startswith(f"{path}: byte {truth['truncated_at']}:")


def test_truncated_file_streamed_reports_the_same_offset() -> None:
    data = (PCAPS / "truncated.pcap").read_bytes()
    with pytest.raises(CaptureTruncatedError) as info:
        for _ in open_capture(Trickle(data, 5), "-"):  # type: ignore[arg-type]
            pass
    assert info.value.offset == TRUTH["truncated.pcap"]["truncated_at"]
    assert info.value.path == "-"


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"", "empty"),
        (b"abc", "only 3 bytes"),
        (b"GET / HTTP/1.1\r\nHost: example\r\n\r\n", "not pcap"),
        (bytes(range(256)) * 4, "not pcap"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "cut short"),
        (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x99\x99\x99\x99" + bytes(16), "byte-order magic"),
        (gzip.compress(b"just some text", mtime=0), "not pcap"),
        (b"\x1f\x8b\x08\x00garbage", "empty"),
    ],
)
def test_non_capture_input_is_a_format_error_at_offset_zero(data: bytes, what: str) -> None:
    with pytest.raises(CaptureFormatError, match=what) as info:
        open_capture(data, "junk.bin")
    assert info.value.offset == 0
    assert info.value.path == "junk.bin"


def test_header_only_captures_give_no_packets() -> None:
    pcap = (PCAPS / "eth-le-usec.pcap").read_bytes()[:24]
    ng = (PCAPS / "sample.pcapng").read_bytes()
    shb_len = int.from_bytes(ng[4:8], "little")
    for data in (pcap, ng[:shb_len]):
        assert read_all(data) == []


def test_empty_regular_file_is_a_format_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    with pytest.raises(CaptureFormatError, match="empty"):
        read_capture_path(str(empty))


def test_an_open_file_object_is_streamed(tmp_path: Path) -> None:
    data = (PCAPS / "sample.pcapng").read_bytes()
    src = tmp_path / "in.pcapng"
    src.write_bytes(data)
    with open(src, "rb") as fileobj:
        assert packets(open_capture(fileobj, "in")) == read_all(data)


def test_reader_can_be_iterated_once() -> None:
    reader = open_capture((PCAPS / "eth-le-usec.pcap").read_bytes(), "x")
    list(reader)
    with pytest.raises(RuntimeError, match="once"):
        iter(reader)


def test_batches_never_exceed_the_batch_size() -> None:
    with read_capture_path(str(PCAPS / "sample.pcapng"), batch_size=7) as reader:
        sizes = [len(b) for b in reader]
    assert max(sizes) <= 7
    assert sum(sizes) == TRUTH["sample.pcapng"]["packets"]


def test_batches_own_their_bytes_after_the_file_is_closed() -> None:
    with read_capture_path(str(PCAPS / "sample.pcapng")) as reader:
        batches = list(reader)
    assert batches[0].packet(0) == scapy_packets(PCAPS / "sample.pcapng")[0]


SAMPLES = {n: (PCAPS / n).read_bytes() for n in ("sample.pcapng", "eth-le-nsec.pcap")}
FULL = {n: [p[0] for p in read_all(d)] for n, d in SAMPLES.items()}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(name=st.sampled_from(sorted(SAMPLES)), data=st.data())
def test_truncation_anywhere_yields_a_prefix_and_only_capture_errors(
    name: str, data: st.DataObject
) -> None:
    blob = SAMPLES[name]
    cut = data.draw(st.integers(0, len(blob)))
    got, err = read_until_error(blob[:cut])
    assert got == FULL[name][: len(got)]
    if isinstance(err, CaptureFormatError):
        assert not got
        header = 24 if name.endswith(".pcap") else int.from_bytes(blob[4:8], "little")
        assert cut < header  # only a cut inside the file header makes it unreadable
    elif err is not None:
        assert isinstance(err, CaptureTruncatedError)
        assert err.offset is not None
        assert err.offset <= cut


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    name=st.sampled_from(sorted(SAMPLES)),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.none() | st.integers(0, 10**6),
)
def test_random_mutations_raise_nothing_but_capture_errors(
    name: str, edits: list[tuple[int, int]], cut: int | None
) -> None:
    blob = bytearray(SAMPLES[name])
    for at, value in edits:
        blob[at % len(blob)] = value
    if cut is not None:
        del blob[cut % (len(blob) + 1) :]
    try:
        for batch in open_capture(bytes(blob), "m", batch_size=5):
            assert len(batch) <= 5
            assert bool((batch.offsets + batch.caplens <= batch.data.shape[0]).all())
    except CaptureError:
        pass


# -- batches are bounded in bytes as well as in records ----------------------------------


def pcap_of(sizes: list[int]) -> bytes:
    """A little-endian microsecond pcap (Ethernet) with one record per size, filled 0xAB."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)]
    for i, size in enumerate(sizes):
        out.append(struct.pack("<IIII", i, 0, size, size) + bytes([i % 251]) * size)
    return b"".join(out)


def pcapng_of(blocks: list[tuple[str, int]]) -> bytes:
    """A pcapng with one interface; ``("epb", n)`` is a packet, ``("cb", n)`` a custom block."""
    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    out = [block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)),
           block(1, struct.pack("<HHI", 1, 0, 0))]
    for i, (kind, size) in enumerate(blocks):
        if kind == "epb":
            out.append(block(6, struct.pack("<IIIII", 0, 0, i, size, size) + bytes([i]) * size))
        else:
            out.append(block(0x00000BAD, struct.pack("<I", 32473) + bytes(size)))
    return b"".join(out)


def spans(reader: CaptureReader) -> list[tuple[int, int, int]]:
    """(records, file bytes from the first record to the end of the last, bytes copied).

    The copied region starts at the first record, so the last packet's end in it is the span.
    """
    out = []
    for batch in reader:
        span = int(batch.offsets[-1]) + int(batch.caplens[-1])
        out.append((len(batch), span, int(batch.data.shape[0]) - REGION_SLACK))
    return out


def _open_as(kind: str, data: bytes, tmp_path: Path, batch_bytes: int) -> CaptureReader:
    if kind == "mmap":
        path = tmp_path / "c.cap"
        path.write_bytes(data)
        return read_capture_path(str(path), batch_bytes=batch_bytes)
    if kind == "stream":
        return open_capture(io.BytesIO(data), "s", batch_bytes=batch_bytes)
    if kind == "gzip":
        return open_capture(gzip.compress(data, mtime=0), "g", batch_bytes=batch_bytes)
    return open_capture(data, "b", batch_bytes=batch_bytes)


@pytest.mark.parametrize("kind", ["bytes", "mmap", "stream", "gzip"])
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_batches_never_copy_more_than_batch_bytes(kind: str, fmt: str, tmp_path: Path) -> None:
    sizes = [1000] * 40 + [100] * 30 + [1500, 7, 1500] * 5
    data = pcap_of(sizes) if fmt == "pcap" else pcapng_of([("epb", s) for s in sizes])
    with _open_as(kind, data, tmp_path, 4096) as reader:
        got = spans(reader)
    assert sum(n for n, _, _ in got) == len(sizes)
    for _, span, copied in got:
        assert span <= 4096
        assert copied <= 4096 + 28  # pcapng: the last block's options and trailer
    assert max(n for n, _, _ in got) >= 3  # small records still share a batch
    assert read_all(data, 65536) == read_all_bounded(data, 4096)


def read_all_bounded(data: bytes, batch_bytes: int) -> list[tuple[bytes, int, int, int]]:
    return packets(open_capture(data, "t", batch_bytes=batch_bytes))


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_a_record_bigger_than_batch_bytes_comes_alone(fmt: str) -> None:
    sizes = [100, 9000, 100, 100]
    data = pcap_of(sizes) if fmt == "pcap" else pcapng_of([("epb", s) for s in sizes])
    got = spans(open_capture(data, "t", batch_bytes=4096))
    assert [n for n, _, _ in got] == [1, 1, 2]
    assert [len(p[0]) for p in read_all_bounded(data, 4096)] == sizes


def test_blocks_skipped_between_packets_count_against_batch_bytes() -> None:
    data = pcapng_of([("epb", 60), ("cb", 100_000), ("epb", 60), ("cb", 100_000), ("epb", 60)])
    got = spans(open_capture(data, "t", batch_bytes=4096))
    assert [n for n, _, _ in got] == [1, 1, 1]
    assert max(copied for _, _, copied in got) < 4096


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=40),
    batch_bytes=st.integers(1, 20_000),
    batch_size=st.integers(1, 9),
)
def test_byte_and_record_bounds_never_change_what_is_read(
    sizes: list[int], batch_bytes: int, batch_size: int
) -> None:
    for data in (pcap_of(sizes), pcapng_of([("epb", s) for s in sizes])):
        reader = open_capture(data, "t", batch_size, batch_bytes=batch_bytes)
        got = [(p[0], p[3]) for p in packets(reader)]
        assert got == [(p[0], p[3]) for p in read_all(data)]
        for n, span, _ in spans(open_capture(data, "t", batch_size, batch_bytes=batch_bytes)):
            assert n <= batch_size
            assert n == 1 or span <= batch_bytes


def test_batch_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_bytes"):
        open_capture(pcap_of([10]), "t", batch_bytes=0)
