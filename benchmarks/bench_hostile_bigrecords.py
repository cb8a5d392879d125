"""Peak memory reading a capture of many large records (70,000 of 64 KiB by default).

The file is sparse (only the record headers are written), so it costs no disk
space. Each measurement runs in a fresh process that only reads the capture
(``read_capture_path``, the mmap path ``portwatch analyze`` takes) and reports
its peak RSS. Before batches were bounded by bytes, a batch of 65,536 such
records copied 4 GiB at once.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_hostile_bigrecords.py
    PYTHONPATH=src .venv/bin/python benchmarks/bench_hostile_bigrecords.py --records 10000

Run it with ``PYTHONPATH`` pointing at another tree's ``src`` to compare.
"""

from __future__ import annotations

import argparse
import os
import platform
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import resource, sys, time
from portwatch.capture.files.reader import read_capture_path
started = time.perf_counter()
packets = batches = 0
with read_capture_path(sys.argv[1]) as reader:
    for batch in reader:
        packets += len(batch)
        batches += 1
elapsed = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(packets, batches, peak, elapsed)
"""


def write_sparse_pcap(path: Path, records: int, size: int) -> int:
    """A pcap of ``records`` records of ``size`` zero bytes; returns the file size."""
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for i in range(records):
            out.write(struct.pack("<IIII", i, 0, size, size))
            out.seek(size, os.SEEK_CUR)
        out.truncate()
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=70_000)
    parser.add_argument("--size", type=int, default=65536, help="captured bytes per record")
    args = parser.parse_args()
    print(f"Machine: {platform.node()} {platform.machine()}, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.pcap"
        size = write_sparse_pcap(path, args.records, args.size)
        run = subprocess.run([sys.executable, "-c", _CHILD, str(path)], check=True,
                             capture_output=True, text=True)
    packets, batches, peak_kib, elapsed = run.stdout.split()
    print(f"{args.records:,} records of {args.size:,} bytes ({int(size) / 2**30:.2f} GiB): "
          f"{int(packets):,} packets in {int(batches):,} batches, "
          f"peak RSS {int(peak_kib) / 1024:,.0f} MiB, {float(elapsed):.1f} s")


if __name__ == "__main__":
    main()
