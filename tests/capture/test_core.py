"""The compiled framing (``_core``) answers exactly what the numpy framing answers.

Both walks read the same input with the same batch bounds; every batch array
and the error that ends the read (type, offset, message) must be equal. The
inputs: every sample capture, cuts and byte edits of them, the fuzz corpus and
mutations of it, and captures hypothesis builds from records of random sizes
in either byte order, damaged at random. Every input is read whole (a buffer)
and as a stream handing out a few bytes at a time.
"""

from __future__ import annotations

import io
import random
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portwatch.capture.files import reader as reader_module
from portwatch.capture.files.reader import COMPILED, open_capture, read_capture_path
from portwatch.errors import CaptureError, UsageError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))

from fuzz_captures import CORPUS, mutate, seeds

pytestmark = pytest.mark.skipif(not COMPILED, reason="the compiled framing is not built")

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
SAMPLES = sorted(p.name for p in PCAPS.iterdir() if p.suffix in {".pcap", ".pcapng", ".gz"})
FIELDS = ("data", "offsets", "caplens", "wirelens", "timestamps_ns", "linktypes", "interfaces",
          "file_offsets")
#: (batch_size, batch_bytes): one record per batch, small batches crossing blocks, the default.
BOUNDS = [(1, 1 << 20), (3, 200), (5, 64), (65536, 64 << 20)]


class Trickle(io.RawIOBase):
    """A stream that hands out at most ``step`` bytes per read (a slow pipe)."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        out = self._data[self._pos : self._pos + min(self._step, n if n >= 0 else self._step)]
        self._pos += len(out)
        return out


@dataclass
class Outcome:
    framing: str
    arrays: list[dict[str, np.ndarray]]  # type: ignore[type-arg]
    interfaces: list[object]
    error: tuple[type[BaseException], int | None, str] | None


def outcome(source: bytes | io.RawIOBase, framing: str, size: int, nbytes: int) -> Outcome:
    arrays: list[dict[str, np.ndarray]] = []  # type: ignore[type-arg]
    interfaces: list[object] = []
    try:
        reader = open_capture(source, "in", size, batch_bytes=nbytes, framing=framing)
    except CaptureError as exc:
        return Outcome(framing, arrays, interfaces, (type(exc), exc.offset, str(exc)))
    error = None
    try:
        for batch in reader:
            arrays.append({f: getattr(batch, f).copy() for f in FIELDS})
    except CaptureError as exc:
        error = (type(exc), exc.offset, str(exc))
    return Outcome(reader.framing, arrays, list(reader.interfaces), error)


def assert_same(data: bytes, size: int = 4, nbytes: int = 256, *, stream: int = 0) -> None:
    """Both framings read ``data`` (a stream of ``stream`` bytes per read if set) alike."""
    def source() -> bytes | io.RawIOBase:
        return Trickle(data, stream) if stream else data

    ours = outcome(source(), "compiled", size, nbytes)
    ref = outcome(source(), "numpy", size, nbytes)
    assert ours.error == ref.error
    assert ours.interfaces == ref.interfaces
    assert len(ours.arrays) == len(ref.arrays)
    for got, want in zip(ours.arrays, ref.arrays, strict=True):
        for field in FIELDS:
            assert got[field].dtype == want[field].dtype, field
            np.testing.assert_array_equal(got[field], want[field], err_msg=field)
    if ours.arrays or ours.error is None or ours.interfaces:
        assert (ours.framing, ref.framing) == ("compiled", "numpy")


@pytest.mark.parametrize(("size", "nbytes"), BOUNDS)
@pytest.mark.parametrize("name", SAMPLES)
def test_every_sample_capture_frames_alike(name: str, size: int, nbytes: int) -> None:
    data = (PCAPS / name).read_bytes()
    assert_same(data, size, nbytes)
    assert_same(data, size, nbytes, stream=37)


@pytest.mark.parametrize("name", SAMPLES)
def test_every_cut_of_a_sample_capture_frames_alike(name: str) -> None:
    data = (PCAPS / name).read_bytes()
    step = max(1, len(data) // 150)
    for cut in range(0, len(data), step):
        assert_same(data[:cut], 3, 300)


@pytest.mark.parametrize("name", [n for n in SAMPLES if not n.endswith(".gz")])
def test_damaged_header_words_of_a_sample_capture_frame_alike(name: str) -> None:
    data = (PCAPS / name).read_bytes()
    rng = random.Random(name)
    for _ in range(120):
        at = rng.randrange(0, len(data) - 4) & ~3
        value = rng.choice((0, 1, 3, 6, 12, 16, 31, 32, 0x0A0D0D0A, 0xFFFFFFFF, 1 << 24,
                            rng.randrange(1 << 32)))
        damaged = bytearray(data)
        damaged[at : at + 4] = struct.pack(rng.choice("<>") + "I", value)
        assert_same(bytes(damaged), 2, 128)


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.iterdir() if p.is_file()))
def test_fuzz_corpus_frames_alike(name: str) -> None:
    data = (CORPUS / name).read_bytes()
    assert_same(data, 7, 512)
    assert_same(data, 7, 512, stream=5)


@pytest.mark.parametrize("seed", range(4))
def test_mutated_corpus_inputs_frame_alike(seed: int) -> None:
    rng = random.Random(seed)
    pool = seeds()
    for _ in range(150):
        assert_same(mutate(rng.choice(pool), rng, pool), 7, 512)


# -- captures built by hypothesis ----------------------------------------------------------

records = st.lists(st.tuples(st.binary(max_size=80), st.integers(0, (1 << 32) - 1)), max_size=12)
edits = st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=3)


def pcap_file(order: str, nano: bool, recs: list[tuple[bytes, int]], snaplen: int) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, 1)
    for body, stamp in recs:
        out += struct.pack(order + "IIII", stamp, stamp % 1000, len(body), len(body) + 4) + body
    return out


def ng_block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack(order + "II", btype, len(body) + 12) + body + struct.pack(
        order + "I", len(body) + 12)


def pcapng_file(order: str, recs: list[tuple[bytes, int]], tsresol: int, kinds: list[int]) -> bytes:
    shb = struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1)
    idb = struct.pack(order + "HHI", 1, 0, 0) + struct.pack(order + "HH", 9, 1) + bytes(
        [tsresol, 0, 0, 0]) + struct.pack(order + "HH", 0, 0)
    out = ng_block(order, 0x0A0D0D0A, shb) + ng_block(order, 1, idb)
    for (body, stamp), kind in zip(recs, kinds, strict=False):
        if kind == 0:
            head = struct.pack(order + "IIIII", 0, stamp >> 8, stamp, len(body), len(body) + 2)
            out += ng_block(order, 6, head + body)
        elif kind == 1:
            out += ng_block(order, 3, struct.pack(order + "I", len(body)) + body)
        elif kind == 2:  # a second interface, then a statistics block
            out += ng_block(order, 1, struct.pack(order + "HHI", 101, 0, 0))
            out += ng_block(order, 5, struct.pack(order + "III", 0, stamp, 0))
        else:  # a new section in the other byte order
            order = "<" if order == ">" else ">"
            out += ng_block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))
            out += ng_block(order, 1, struct.pack(order + "HHI", 228, 0, 0))
    return out


def damage(data: bytes, changes: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for at, value in changes:
        if buf:
            buf[at % len(buf)] = value
    return bytes(buf if cut is None else buf[:cut])


@st.composite
def pcap_inputs(draw: st.DrawFn) -> bytes:
    data = pcap_file(draw(st.sampled_from("<>")), draw(st.booleans()), draw(records),
                     draw(st.sampled_from([0, 64, 65535, 1 << 30])))
    return damage(data, draw(edits), draw(st.none() | st.integers(0, 2000)))


@st.composite
def pcapng_inputs(draw: st.DrawFn) -> bytes:
    kinds = st.lists(st.sampled_from([0, 0, 0, 1, 2, 3]), min_size=12, max_size=12)
    data = pcapng_file(draw(st.sampled_from("<>")), draw(records),
                       draw(st.sampled_from([6, 9, 0x80 | 20, 0x80 | 40, 12])), draw(kinds))
    return damage(data, draw(edits), draw(st.none() | st.integers(0, 2000)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pcap_inputs(), st.integers(1, 9), st.integers(1, 400))
def test_generated_pcap_captures_frame_alike(data: bytes, size: int, nbytes: int) -> None:
    assert_same(data, size, nbytes)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pcapng_inputs(), st.integers(1, 9), st.integers(1, 400))
def test_generated_pcapng_captures_frame_alike(data: bytes, size: int, nbytes: int) -> None:
    assert_same(data, size, nbytes)


@pytest.mark.parametrize("nbytes", range(16, 200, 4))
def test_batches_ending_exactly_at_the_byte_bound_frame_alike(nbytes: int) -> None:
    same = [(bytes(4), 7)] * 12  # 20-byte pcap records, 48-byte pcapng blocks
    assert_same(pcap_file("<", False, same, 65535), 50, nbytes)
    assert_same(pcapng_file(">", same, 6, [0, 0, 1, 0, 2, 0, 0, 1, 0, 0, 0, 0]), 50, nbytes)


# -- the compiled path itself ---------------------------------------------------------------


def test_files_and_streams_use_the_compiled_framing_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PORTWATCH_FRAMING", raising=False)
    with read_capture_path(str(PCAPS / "sample.pcapng")) as mapped:
        assert mapped.framing == "compiled"
        assert sum(len(b) for b in mapped) == 68
    piped = open_capture(Trickle((PCAPS / "sample.pcapng").read_bytes(), 4096), "pipe")
    assert piped.framing == "compiled"
    assert sum(len(b) for b in piped) == 68


def test_portwatch_framing_numpy_forces_the_reference_framers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PORTWATCH_FRAMING", "numpy")
    assert open_capture((PCAPS / "eth-le-usec.pcap").read_bytes(), "x").framing == "numpy"


def test_an_unknown_framing_is_refused() -> None:
    with pytest.raises(ValueError, match="framing must be one of auto, compiled, numpy"):
        open_capture(b"", "x", framing="fast")


def test_a_wrong_portwatch_framing_is_a_usage_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PORTWATCH_FRAMING", "fast")
    with pytest.raises(UsageError, match="PORTWATCH_FRAMING: framing must be one of"):
        open_capture(b"", "x")


def test_asking_for_the_compiled_framing_when_it_is_not_built_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reader_module, "COMPILED", False)
    monkeypatch.setattr(reader_module, "_WHY_NOT", "the compiled framing is not built (test)")
    with pytest.raises(ValueError, match="not built"):
        open_capture(b"", "x", framing="compiled")
    reader = open_capture((PCAPS / "eth-le-usec.pcap").read_bytes(), "x")
    assert reader.framing == "numpy"


def test_verbose_says_once_which_framing_reads(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PORTWATCH_VERBOSE", "1")
    monkeypatch.setattr(reader_module, "_said", set())
    data = (PCAPS / "eth-le-usec.pcap").read_bytes()
    open_capture(data, "x")
    open_capture(data, "x")
    assert capsys.readouterr().err == "portwatch: capture framing: compiled (_core)\n"


def test_the_walk_refuses_spans_and_limits_outside_its_arrays() -> None:
    from portwatch.capture.files import _core

    pos = np.empty(4, dtype=np.int64)
    words = np.empty(16, dtype=np.uint32)
    with pytest.raises(ValueError, match="outside a 8-byte buffer"):
        _core.frame_pcap(bytes(8), 0, 9, 1, 100, 100, False, pos, words)
    with pytest.raises(ValueError, match="exceeds the output arrays"):
        _core.frame_pcap(bytes(80), 0, 80, 5, 100, 100, False, pos, words)
    kinds = np.empty(2, dtype=np.uint8)
    with pytest.raises(ValueError, match="does not fit"):
        _core.frame_pcapng(bytes(80), 0, 80, 0, 2, 80, 100, False, 0, pos,
                           np.empty(1, dtype=np.uint8), np.empty(14, dtype=np.uint32))
    with pytest.raises(ValueError, match="exceeds the output arrays"):
        _core.frame_pcapng(bytes(80), 0, 80, 0, 3, 80, 100, False, 0, pos, kinds,
                           np.empty(14, dtype=np.uint32))


def test_records_claiming_lengths_past_the_buffer_stop_inside_it() -> None:
    from portwatch.capture.files import _core

    pos = np.empty(8, dtype=np.int64)
    words = np.empty(32, dtype=np.uint32)
    # one whole 4-byte record, then a header claiming 1000 bytes that are not there
    buf = struct.pack("<IIII", 1, 0, 4, 4) + b"abcd" + struct.pack("<IIII", 1, 0, 1000, 1000)
    n, end, stop, _ = _core.frame_pcap(buf, 0, len(buf), 8, 1 << 20, 1 << 20, False, pos, words)
    assert (n, end, stop) == (1, 20, _core.PARTIAL)
    assert words[:4].tolist() == [1, 0, 4, 4]


# -- whole reports ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLES)
def test_the_json_report_of_every_sample_is_the_same_with_either_framing(
    name: str, official_csv: Path, warm_cache: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from portwatch.cli import main

    monkeypatch.setenv("PORTWATCH_REGISTRY", str(official_csv))
    monkeypatch.setenv("PORTWATCH_CACHE_DIR", str(warm_cache))
    reports = {}
    for framing in ("compiled", "numpy"):
        monkeypatch.setenv("PORTWATCH_FRAMING", framing)
        code = main(["analyze", "--format", "json", "--no-progress", str(PCAPS / name)])
        out = capsys.readouterr()
        reports[framing] = (code, out.out, out.err)
    assert reports["compiled"] == reports["numpy"]
    assert '"flows"' in reports["compiled"][1]
