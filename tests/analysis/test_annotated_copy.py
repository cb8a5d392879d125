"""``--annotate`` loses nothing: the source's comments and blocks survive, in order."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portwatch.analysis.run import AnnotateRequest, analyze_paths
from portwatch.capture.files.pcapng import (
    BLOCK_CUSTOM_NOCOPY,
    BLOCK_EPB,
    BLOCK_SHB,
    RawBlock,
    iter_raw_blocks,
    split_epb,
)
from portwatch.porttable.table import PortTable

TSHARK = shutil.which("tshark")
REPO = Path(__file__).resolve().parents[2]

BLOCK_IDB, BLOCK_ISB, BLOCK_NRB, BLOCK_DSB, BLOCK_CUSTOM = 1, 5, 4, 0x0A, 0x00000BAD
MAC = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"
SECTION_COMMENT = "captured on the lab uplink by alice"
FIRST_COMMENTS = ("analyst: login starts here",)
THIRD_COMMENTS = ("analyst: odd port", "second opinion: scan?")


def _ipv4(proto: int, payload: bytes) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                      bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return MAC + b"\x08\x00" + hdr + payload


def _tcp(sport: int, dport: int, flags: int) -> bytes:
    return _ipv4(6, struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 1024, 0, 0))


def _udp(sport: int, dport: int) -> bytes:
    return _ipv4(17, struct.pack("!HHHH", sport, dport, 9, 0) + b"x")


def _opt(o: str, code: int, value: bytes) -> bytes:
    return struct.pack(o + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(o: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack(o + "II", btype, 12 + len(body)) + body + struct.pack(o + "I",
                                                                            12 + len(body))


def _epb(o: str, ts_us: int, packet: bytes, options: bytes = b"") -> bytes:
    body = struct.pack(o + "IIIII", 0, ts_us >> 32, ts_us & 0xFFFFFFFF, len(packet), len(packet))
    return _block(o, BLOCK_EPB, body + packet + b"\0" * (-len(packet) % 4) + options)


def source_capture(o: str = "<") -> list[bytes]:
    """A section with a comment, an NRB, a DSB, custom blocks, commented packets, an ISB."""
    shb_opts = _opt(o, 1, SECTION_COMMENT.encode()) + _opt(o, 0, b"")
    # the section length is given (not -1): the copy must say "unknown" instead
    shb = _block(o, BLOCK_SHB, struct.pack(o + "IHHq", 0x1A2B3C4D, 1, 0, 0) + shb_opts)
    idb = _block(o, BLOCK_IDB, struct.pack(o + "HHI", 1, 0, 65535)
                 + _opt(o, 2, b"eth0") + _opt(o, 0, b""))
    nrb = _block(o, BLOCK_NRB, _opt(o, 1, bytes([10, 0, 0, 2]) + b"server.example\0")
                 + _opt(o, 0, b""))
    secrets = b"CLIENT_RANDOM 00112233 44556677\n"
    dsb = _block(o, BLOCK_DSB, struct.pack(o + "II", 0x544C534B, len(secrets)) + secrets)
    custom = _block(o, BLOCK_CUSTOM, struct.pack(o + "I", 32473) + b"vendor data, copy me")
    nocopy = _block(o, BLOCK_CUSTOM_NOCOPY, struct.pack(o + "I", 32473) + b"do not copy")
    t0 = 1_700_000_000_000_000
    first = _epb(o, t0, _tcp(40000, 80, 0x02),
                 _opt(o, 1, FIRST_COMMENTS[0].encode()) + _opt(o, 2, struct.pack(o + "I", 1))
                 + _opt(o, 0, b""))
    second = _epb(o, t0 + 10, _udp(40001, 8806))
    third = _epb(o, t0 + 20, _tcp(40002, 44515, 0x02),
                 b"".join(_opt(o, 1, c.encode()) for c in THIRD_COMMENTS))
    isb = _block(o, BLOCK_ISB, struct.pack(o + "III", 0, t0 >> 32, t0 & 0xFFFFFFFF))
    return [shb, idb, nrb, dsb, first, custom, second, nocopy, third, isb]


def _blocks(data: bytes) -> list[RawBlock]:
    return list(iter_raw_blocks(io.BytesIO(data).read))


def _options(block: RawBlock) -> list[tuple[int, bytes]]:
    parts = split_epb(block)
    assert parts is not None
    _, data_end, opts_end = parts
    assert opts_end is not None
    out, at, raw = [], data_end, block.data
    while at < opts_end:
        code, length = struct.unpack_from(block.order + "HH", raw, at)
        out.append((code, raw[at + 4 : at + 4 + length]))
        at += 4 + length + (-length % 4)
    return out


def _annotate(table: PortTable, tmp_path: Path, data: bytes, name: str = "src.pcapng") -> bytes:
    src = tmp_path / name
    src.write_bytes(data)
    out = tmp_path / "copy.pcapng"
    result = analyze_paths([str(src)], table, annotate=AnnotateRequest(str(out)))
    assert result.report is not None
    assert not result.report.partial, result.report.warnings
    return out.read_bytes()


@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
def test_blocks_the_writer_does_not_interpret_are_copied_byte_for_byte_in_order(
    table: PortTable, tmp_path: Path, order: str,
) -> None:
    source = source_capture(order)
    copy = _blocks(_annotate(table, tmp_path, b"".join(source)))
    kept = [b for b in _blocks(b"".join(source)) if b.btype != BLOCK_CUSTOM_NOCOPY]
    assert [b.btype for b in copy] == [b.btype for b in kept]
    for before, after in zip(kept, copy, strict=True):
        if before.btype not in (BLOCK_SHB, BLOCK_EPB):
            assert after.data == before.data, hex(before.btype)
    # the section header keeps its comment; only its length becomes "unknown" (-1)
    shb = copy[0].data
    assert struct.unpack_from(order + "q", shb, 16)[0] == -1
    assert shb[24:] == kept[0].data[24:]


def test_packet_comments_and_options_are_kept_and_portwatch_comment_comes_after(
    table: PortTable, tmp_path: Path,
) -> None:
    source = source_capture()
    copy = [b for b in _blocks(_annotate(table, tmp_path, b"".join(source)))
            if b.btype == BLOCK_EPB]
    originals = [b for b in _blocks(b"".join(source)) if b.btype == BLOCK_EPB]
    assert len(copy) == 3
    for before, after in zip(originals, copy, strict=True):
        assert after.data[8:28] == before.data[8:28]  # interface, timestamp, lengths
        caplen = struct.unpack_from("<I", before.data, 20)[0]
        assert after.data[28 : 28 + caplen] == before.data[28 : 28 + caplen]
        old, new = _options(before), _options(after)
        assert new[: len(old)] == old  # the source's own options first, untouched
        added = new[len(old) :]
        assert len(added) == 1
        assert added[0][0] == 1
        assert added[0][1].startswith(b"portwatch: ")
    assert _options(copy[0])[1] == (2, struct.pack("<I", 1))  # epb_flags kept
    assert b"tcp/80 http (assigned)" in _options(copy[0])[-1][1]


def test_do_not_copy_custom_blocks_are_left_out_with_a_warning(
    table: PortTable, tmp_path: Path,
) -> None:
    src = tmp_path / "src.pcapng"
    src.write_bytes(b"".join(source_capture()))
    result = analyze_paths([str(src)], table,
                           annotate=AnnotateRequest(str(tmp_path / "copy.pcapng")))
    assert result.report is not None
    assert any("0x40000BAD" in w for w in result.report.warnings)


def test_gzipped_pcapng_is_copied_with_its_blocks(table: PortTable, tmp_path: Path) -> None:
    source = b"".join(source_capture())
    copy = _blocks(_annotate(table, tmp_path, gzip.compress(source), "src.pcapng.gz"))
    assert [b.btype for b in copy] == [b.btype for b in _blocks(source)
                                       if b.btype != BLOCK_CUSTOM_NOCOPY]


def test_only_flagged_leaves_unflagged_packets_byte_for_byte(
    table: PortTable, tmp_path: Path,
) -> None:
    source = source_capture()
    src = tmp_path / "src.pcapng"
    src.write_bytes(b"".join(source))
    out = tmp_path / "copy.pcapng"
    analyze_paths([str(src)], table, annotate=AnnotateRequest(str(out), only_flagged=True))
    copy = [b for b in _blocks(out.read_bytes()) if b.btype == BLOCK_EPB]
    assert copy[0].data == source[4]  # tcp/80: not flagged, untouched
    assert len(_options(copy[2])) == len(THIRD_COMMENTS) + 1


def test_damage_after_good_blocks_keeps_what_came_before(table: PortTable, tmp_path: Path) -> None:
    source = source_capture()
    cut = b"".join(source[:-1]) + source[-1][:-6]  # the trailing statistics block is cut
    src = tmp_path / "src.pcapng"
    src.write_bytes(cut)
    out = tmp_path / "copy.pcapng"
    result = analyze_paths([str(src)], table, annotate=AnnotateRequest(str(out)))
    assert result.report is not None
    assert result.report.partial
    assert [b.btype for b in _blocks(out.read_bytes())].count(BLOCK_EPB) == 3


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
def test_tshark_shows_the_original_comments_and_the_portwatch_ones(
    table: PortTable, tmp_path: Path, order: str,
) -> None:
    copy = tmp_path / "tshark.pcapng"
    copy.write_bytes(_annotate(table, tmp_path, b"".join(source_capture(order))))
    assert TSHARK is not None
    fields = subprocess.run(
        [TSHARK, "-n", "-r", str(copy), "-Y", "ip", "-T", "fields", "-E", "occurrence=a",
         "-E", "aggregator=|", "-e", "frame.comment"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout.splitlines()
    per_packet = [line.split("|") for line in fields]
    assert per_packet[0][: len(FIRST_COMMENTS)] == list(FIRST_COMMENTS)
    assert per_packet[0][-1].startswith("portwatch: tcp/80 http (assigned)")
    assert per_packet[1][0].startswith("portwatch: FLAG udp/8806")
    assert per_packet[2][: len(THIRD_COMMENTS)] == list(THIRD_COMMENTS)
    assert per_packet[2][-1].startswith("portwatch: FLAG tcp/44515")
    # tshark shows the custom block that may be copied as a frame of its own
    blocks = subprocess.run([TSHARK, "-n", "-r", str(copy)], capture_output=True, text=True,
                            check=True, timeout=120).stdout
    assert blocks.count("Custom Block") == 1
    capinfos = shutil.which("capinfos")
    if capinfos is not None:
        meta = subprocess.run([capinfos, str(copy)], check=True, capture_output=True, text=True,
                              timeout=120).stdout
        assert SECTION_COMMENT in meta


def test_annotate_dash_writes_the_pcapng_to_standard_output(
    tmp_path: Path, official_csv: Path, warm_cache: Path,
) -> None:
    src = tmp_path / "src.pcapng"
    src.write_bytes(b"".join(source_capture()))
    env = {**os.environ, "PORTWATCH_REGISTRY": str(official_csv),
           "PORTWATCH_CACHE_DIR": str(warm_cache), "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "portwatch", "analyze", "-f", "json", "--annotate", "-", str(src)],
        capture_output=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "-").exists()
    copy = _blocks(proc.stdout)
    assert [b.btype for b in copy].count(BLOCK_EPB) == 3
    assert b'"packets": 3' in proc.stderr  # the report went to standard error


def test_annotate_dash_reads_standard_input_too(
    tmp_path: Path, official_csv: Path, warm_cache: Path,
) -> None:
    env = {**os.environ, "PORTWATCH_REGISTRY": str(official_csv),
           "PORTWATCH_CACHE_DIR": str(warm_cache), "PYTHONPATH": str(REPO / "src"),
           "TMPDIR": str(tmp_path)}
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "portwatch", "analyze", "-f", "json", "-o", str(report),
         "--annotate", "-", "-"],
        input=b"".join(source_capture()), capture_output=True, env=env, timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert [b.btype for b in _blocks(proc.stdout)].count(BLOCK_EPB) == 3
    assert report.exists()


# -- the raw block walk, as a parser -------------------------------------------------------------

_block_bodies = st.lists(
    st.tuples(st.sampled_from([BLOCK_IDB, BLOCK_NRB, BLOCK_DSB, BLOCK_ISB, BLOCK_CUSTOM,
                               0x0BADCAFE]), st.binary(max_size=64)),
    max_size=8,
)


@given(order=st.sampled_from(["<", ">"]), bodies=_block_bodies, cut=st.integers(min_value=0))
@settings(max_examples=200, deadline=None)
def test_raw_walk_returns_every_sound_block_as_stored_and_stops_at_a_cut(
    order: str, bodies: list[tuple[int, bytes]], cut: int,
) -> None:
    shb = _block(order, BLOCK_SHB, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    blocks = [shb, *(_block(order, btype, body) for btype, body in bodies)]
    data = b"".join(blocks)
    walked = list(iter_raw_blocks(io.BytesIO(data).read, chunk=7))
    assert [b.data for b in walked] == blocks
    assert all(b.order == order for b in walked)
    assert [b.offset for b in walked] == [sum(map(len, blocks[:i])) for i in range(len(blocks))]
    cut %= len(data) + 1
    prefix = [b.data for b in iter_raw_blocks(io.BytesIO(data[:cut]).read)]
    whole = [b for i, b in enumerate(blocks) if sum(map(len, blocks[: i + 1])) <= cut]
    assert prefix == whole


@given(junk=st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_raw_walk_never_raises_on_junk(junk: bytes) -> None:
    shb = _block("<", BLOCK_SHB, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    for block in iter_raw_blocks(io.BytesIO(shb + junk).read):
        assert len(block.data) >= 12
        assert len(block.data) % 4 == 0


@given(comments=st.lists(st.text(max_size=40), max_size=4), endofopt=st.booleans(),
       caplen=st.integers(min_value=0, max_value=9))
def test_split_epb_finds_where_a_new_option_goes(
    comments: list[str], endofopt: bool, caplen: int,
) -> None:
    options = b"".join(_opt("<", 1, c.encode()) for c in comments)
    block = RawBlock(0, BLOCK_EPB, "<", _epb("<", 0, bytes(caplen),
                                            options + (_opt("<", 0, b"") if endofopt else b"")))
    parts = split_epb(block)
    assert parts is not None
    got_caplen, data_end, opts_end = parts
    assert got_caplen == caplen
    assert data_end == 28 + caplen + (-caplen % 4)
    assert opts_end == data_end + len(options)


def test_annotate_dash_refuses_a_terminal(
    tmp_path: Path, official_csv: Path, warm_cache: Path,
) -> None:
    src = tmp_path / "src.pcapng"
    src.write_bytes(b"".join(source_capture()))
    env = {**os.environ, "PORTWATCH_REGISTRY": str(official_csv),
           "PORTWATCH_CACHE_DIR": str(warm_cache), "PYTHONPATH": str(REPO / "src")}
    leader, follower = os.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "portwatch", "analyze", "--annotate", "-", str(src)],
            stdout=follower, stderr=subprocess.PIPE, env=env, timeout=120, check=False)
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 2
    assert b"refusing to write a capture to a terminal" in proc.stderr
