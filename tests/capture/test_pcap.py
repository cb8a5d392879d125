"""Classic pcap framing: headers, link type bits, and each kind of damage."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from portwatch.capture.files.pcap import parse_header
from portwatch.capture.files.reader import open_capture
from portwatch.errors import CaptureError, CaptureFormatError, CaptureTruncatedError

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
GOOD = (PCAPS / "eth-le-usec.pcap").read_bytes()


def record_offsets(data: bytes, order: str = "<") -> list[int]:
    offsets, pos = [], 24
    while pos < len(data):
        offsets.append(pos)
        pos += 16 + struct.unpack_from(order + "I", data, pos + 8)[0]
    return offsets


def read(data: bytes) -> tuple[list[bytes], CaptureError | None]:
    got: list[bytes] = []
    try:
        for batch in open_capture(data, "f.pcap", batch_size=2):
            got.extend(batch.packet(i) for i in range(len(batch)))
    except CaptureError as exc:
        return got, exc
    return got, None


FULL, _ = read(GOOD)
RECORDS = record_offsets(GOOD)


@pytest.mark.parametrize(
    ("name", "order", "nano"),
    [
        ("eth-le-usec.pcap", "<", False),
        ("eth-be-usec.pcap", ">", False),
        ("eth-le-nsec.pcap", "<", True),
        ("eth-be-nsec.pcap", ">", True),
    ],
)
def test_header_names_byte_order_and_precision(name: str, order: str, nano: bool) -> None:
    header = parse_header((PCAPS / name).read_bytes()[:24], name)
    assert (header.byteorder, header.nanosecond, header.link_type) == (order, nano, 1)
    assert header.interface().tsresol == (9 if nano else 6)


def test_fcs_bits_in_the_link_type_field_are_masked_off() -> None:
    linkfield = 0x10000000 | (4 << 29) | 1  # F bit set, 4 bytes of FCS, Ethernet
    data = GOOD[:20] + struct.pack("<I", linkfield) + GOOD[24:]
    reader = open_capture(data, "fcs.pcap")
    assert reader.link_types == (1,)
    assert reader.interfaces[0].fcs_len == 4
    assert {int(t) for b in reader for t in b.linktypes} == {1}


def test_unsupported_major_version_is_a_format_error() -> None:
    data = GOOD[:4] + struct.pack("<H", 3) + GOOD[6:]
    with pytest.raises(CaptureFormatError, match=r"version 3\.4"):
        open_capture(data, "v.pcap")


def test_record_claiming_four_gigabytes_stops_at_that_record() -> None:
    bad = bytearray(GOOD)
    struct.pack_into("<I", bad, RECORDS[3] + 8, 0xFFFFFFF0)
    got, err = read(bytes(bad))
    assert got == FULL[:3]
    assert isinstance(err, CaptureTruncatedError)
    assert err.offset == RECORDS[3]
    assert "4294967280" in err.message


def test_garbage_after_good_records_stops_at_the_garbage() -> None:
    got, err = read(GOOD + b"\xff" * 40)
    assert got == FULL
    assert isinstance(err, CaptureTruncatedError)
    assert err.offset == len(GOOD)


@pytest.mark.parametrize("cut_into", [1, 15, 16, 20])
def test_cut_inside_a_record_reports_its_start(cut_into: int) -> None:
    got, err = read(GOOD[: RECORDS[5] + cut_into])
    assert got == FULL[:5]
    assert isinstance(err, CaptureTruncatedError)
    assert err.offset == RECORDS[5]


def test_cut_exactly_between_records_is_a_clean_end() -> None:
    assert read(GOOD[: RECORDS[4]]) == (FULL[:4], None)


def test_file_offsets_point_at_record_headers() -> None:
    offsets = [int(o) for b in open_capture(GOOD, "f") for o in b.file_offsets]
    assert offsets == RECORDS


def test_runs_of_equal_size_records_frame_exactly_like_one_at_a_time() -> None:
    """The numpy run predictor must accept exactly the records the loop would."""
    import struct as _struct

    from portwatch.capture.files.reader import open_capture

    sizes = [60] * 40 + [61, 60, 60] + [1500] * 100 + [60, 60] + [90] * 3 + [60] * 70
    body = b"".join(
        _struct.pack("<IIII", 1, i, size, size) + bytes([i % 256]) * size
        for i, size in enumerate(sizes)
    )
    header = _struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    got_sizes: list[int] = []
    firsts: list[int] = []
    for batch in open_capture(header + body, "runs.pcap", batch_size=37):
        got_sizes += batch.caplens.tolist()
        firsts += [batch.packet(i)[0] for i in range(len(batch))]
    assert got_sizes == sizes
    assert firsts == [i % 256 for i in range(len(sizes))]
