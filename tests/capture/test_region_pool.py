"""Batch buffers are reused only when no batch holds them: a kept batch keeps its bytes."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from portwatch.capture.files._framing import RegionPool, copy_region
from portwatch.capture.files.reader import open_capture

FRAMINGS = ["numpy", "auto"]


def _pcap(n: int) -> bytes:
    """``n`` 60-byte Ethernet frames, packet ``i`` filled with byte ``i % 251``."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i in range(n):
        frame = bytes([i % 251]) * 60
        out.append(struct.pack("<IIII", i, 0, len(frame), len(frame)) + frame)
    return b"".join(out)


def test_pool_hands_back_a_buffer_only_after_its_batch_is_gone() -> None:
    pool = RegionPool()
    first = pool.take(100)
    second = pool.take(100)
    assert not np.shares_memory(first, second)  # both still held
    address = first.__array_interface__["data"][0]
    del first
    again = pool.take(80)
    assert again.__array_interface__["data"][0] == address
    assert again.shape == (80,)


def test_pool_never_hands_out_a_buffer_a_view_still_uses() -> None:
    pool = RegionPool()
    region = pool.take(64)
    view = region[10:20]
    del region
    other = pool.take(64)
    assert not np.shares_memory(other, view)


def test_copy_region_with_a_pool_copies_and_zeroes_the_slack() -> None:
    pool = RegionPool()
    data = bytes(range(200))
    stale = copy_region(b"\xff" * 300, 0, 300, pool)
    del stale  # its buffer is reused, with 0xff left in it
    region = copy_region(data, 50, 150, pool)
    assert bytes(region[:100]) == data[50:150]
    assert not region[100:].any()


@pytest.mark.parametrize("framing", FRAMINGS)
def test_batches_kept_by_the_consumer_keep_their_packets(framing: str) -> None:
    capture = _pcap(600)
    reader = open_capture(capture, "kept.pcap", batch_size=50, framing=framing)
    kept = list(reader)  # every batch alive at once: no buffer may be reused
    assert len(kept) == 12
    for b, batch in enumerate(kept):
        for j in range(len(batch)):
            i = b * 50 + j
            assert batch.packet(j) == bytes([i % 251]) * 60


@pytest.mark.parametrize("framing", FRAMINGS)
def test_batches_dropped_by_the_consumer_are_read_into_reused_buffers(framing: str) -> None:
    capture = _pcap(600)
    reader = open_capture(capture, "dropped.pcap", batch_size=50, framing=framing)
    addresses = set()
    seen = 0
    for batch in reader:
        addresses.add(batch.data.__array_interface__["data"][0])
        for j in range(len(batch)):
            assert batch.packet(j) == bytes([(seen + j) % 251]) * 60
        seen += len(batch)
    assert seen == 600
    assert len(addresses) <= RegionPool.KEEP + 1
