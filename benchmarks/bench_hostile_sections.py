"""Reading a pcapng of many small sections: the time must grow linearly with their number.

Each section is a Section Header Block, one Interface Description Block and
one Enhanced Packet Block (a 42-byte frame), 124 bytes in all, so 50,000
sections make a 6.2 MB file. Before the per-section interface tables, every
batch rebuilt the link types of every interface seen so far: quadratic.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_hostile_sections.py
    PYTHONPATH=src .venv/bin/python benchmarks/bench_hostile_sections.py --sections 10000 20000

Run it with ``PYTHONPATH`` pointing at another tree's ``src`` to compare.
"""

from __future__ import annotations

import argparse
import platform
import struct
import time

from portwatch.capture.files.reader import open_capture


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def sections(count: int) -> bytes:
    """``count`` sections of one interface and one packet each."""
    frame = bytes(12) + b"\x08\x00" + bytes(28)
    one = (
        _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
        + _block(1, struct.pack("<HHI", 1, 0, 0))
        + _block(6, struct.pack("<IIIII", 0, 0, 0, len(frame), len(frame)) + frame)
    )
    return one * count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", type=int, nargs="+", default=[12_500, 25_000, 50_000])
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    print(f"Machine: {platform.node()} {platform.machine()}, Python {platform.python_version()}")
    print(f"| sections | file | packets | seconds (best of {args.repeat}) |")
    print("|---:|---:|---:|---:|")
    for count in args.sections:
        data = sections(count)
        best = float("inf")
        for _ in range(args.repeat):
            started = time.perf_counter()
            packets = sum(len(b) for b in open_capture(data, "sections.pcapng"))
            best = min(best, time.perf_counter() - started)
        assert packets == count
        print(f"| {count:,} | {len(data) / 1e6:.1f} MB | {packets:,} | {best:.2f} |")


if __name__ == "__main__":
    main()
