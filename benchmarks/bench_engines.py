"""The three analysis engines, and the per-packet Annotator, on one capture.

``pcaps/sample.pcapng`` concatenated 300 times (300 sections, 20,400 small
packets): full analysis including the flow table with the native reader,
scapy (``--engine scapy``) and tshark through pyshark (``--engine pyshark``),
in-process, after the registry table is loaded; and ``Annotator`` called on
each packet of the sample as scapy reads it, repeated as often (what
``sniff(prn=portwatch.annotate)`` costs).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_engines.py [--copies N]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from portwatch._paths import cache_dir
from portwatch.analysis.analyzer import Analyzer
from portwatch.annotate import Annotator
from portwatch.capture.files.reader import read_capture_path
from portwatch.decode import decoder_for
from portwatch.porttable.cache import load_table

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CSV = REPO.parent / "shared/registry/service-names-port-numbers.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=300)
    parser.add_argument("--registry", default=str(DEFAULT_CSV))
    args = parser.parse_args()
    table = load_table([args.registry], cache=cache_dir()).table
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sections.pcapng"
        path.write_bytes((REPO / "pcaps" / "sample.pcapng").read_bytes() * args.copies)
        rows: list[tuple[str, float, int]] = []

        started = time.perf_counter()
        native = Analyzer(table)
        with read_capture_path(str(path)) as reader:
            for batch in reader:
                native.feed(batch)
        rows.append(("native", time.perf_counter() - started, native.packets))

        for name in ("scapy", "pyshark"):
            started = time.perf_counter()
            analyzer = Analyzer(table)
            for decoded, stamps in decoder_for(name)(str(path), 4096):
                analyzer.feed_decoded(decoded, stamps)
            rows.append((name, time.perf_counter() - started, analyzer.packets))

        from scapy.utils import PcapNgReader

        # The sample's packets, repeated in memory: scapy's own reader misreads
        # the later sections of the concatenated file (see docs/plugins.md).
        packets = list(PcapNgReader(str(REPO / "pcaps" / "sample.pcapng"))) * args.copies
        annotator = Annotator(table)
        started = time.perf_counter()
        for packet in packets:
            annotator(packet)
        rows.append(("`Annotator` on scapy packets (reading excluded)",
                     time.perf_counter() - started, len(packets)))

    print(f"Machine: {platform.node()} {platform.machine()}, Python {platform.python_version()}")
    print(f"Capture: pcaps/sample.pcapng x {args.copies}\n")
    print("| engine | packets | time | packets/s |")
    print("|---|---:|---:|---:|")
    for name, seconds, count in rows:
        print(f"| {name} | {count:,} | {seconds:.2f} s | {count / seconds:,.0f} |")


if __name__ == "__main__":
    main()
