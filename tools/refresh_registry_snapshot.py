"""Maintainers: replace the packaged registry snapshot with IANA's current XML.

Downloads the official XML (or takes ``--from FILE``), validates it with
portwatch's own parser (the official XML format, no unparsed row, at least
90% of the current snapshot's records, a ``Last Updated`` not older than the
current one), writes it xz-compressed over the package data with an atomic
rename, and prints ``portwatch registry diff`` of the old snapshot against the
new one. Not run by the tests; commit the new file and the diff summary.

    PYTHONPATH=src .venv/bin/python tools/refresh_registry_snapshot.py
    PYTHONPATH=src .venv/bin/python tools/refresh_registry_snapshot.py --from ~/Downloads/x.xml
"""

from __future__ import annotations

import argparse
import lzma
import sys
import tempfile
import urllib.request
from pathlib import Path

from portwatch._atomic import atomic_write_bytes
from portwatch.cli import main as portwatch_main
from portwatch.errors import PortwatchError
from portwatch.registry.loader import parse_source, read_bytes
from portwatch.registry.model import SourceFormat
from portwatch.registry.packaged import packaged_snapshot

IANA_XML = (
    "https://www.iana.org/assignments/service-names-port-numbers/service-names-port-numbers.xml"
)
MAX_BYTES = 64 * 1024 * 1024


def fetch(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        data: bytes = resp.read(MAX_BYTES + 1)
        expected = resp.headers.get("Content-Length")
    if len(data) > MAX_BYTES:
        raise SystemExit(f"{url}: larger than {MAX_BYTES} bytes")
    if expected is not None and int(expected) != len(data):
        raise SystemExit(f"{url}: got {len(data)} of {expected} bytes (cut short)")
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=IANA_XML, help="where to download the XML from")
    ap.add_argument("--from", dest="source", metavar="FILE", help="use this file, no download")
    ap.add_argument("--timeout", type=float, default=120.0, help="download timeout, seconds")
    args = ap.parse_args()
    origin = args.source or args.url
    data = read_bytes(args.source) if args.source else fetch(args.url, args.timeout)
    try:
        new = parse_source(data, origin)
        target = packaged_snapshot()
        old = parse_source(target.read_bytes(), str(target))
    except PortwatchError as exc:
        print(f"refresh: {exc}", file=sys.stderr)
        return 2
    if new.info.format is not SourceFormat.IANA_XML:
        print(f"refresh: {origin}: expected the official XML, got {new.info.format.value}",
              file=sys.stderr)
        return 2
    if new.problems:
        print(f"refresh: {origin}: {len(new.problems)} unparsed rows, first: {new.problems[0]}",
              file=sys.stderr)
        return 2
    if len(new.records) < 0.9 * len(old.records):
        print(f"refresh: {origin}: {len(new.records)} records against {len(old.records)} now",
              file=sys.stderr)
        return 2
    if old.info.last_updated and new.info.last_updated and \
            new.info.last_updated < old.info.last_updated:
        print(f"refresh: {origin}: last updated {new.info.last_updated}, older than the "
              f"packaged {old.info.last_updated}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        previous = Path(tmp) / "previous.xml.xz"
        previous.write_bytes(target.read_bytes())
        atomic_write_bytes(target, lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
        print(f"{target}: {len(new.records)} records, last updated {new.info.last_updated}, "
              f"{target.stat().st_size:,} bytes compressed")
        return portwatch_main(["registry", "diff", str(previous), str(target)])


if __name__ == "__main__":
    sys.exit(main())
