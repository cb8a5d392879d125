"""Flow records as Parquet: one file per capture and day, Hive-partitioned by date.

``write_parquet(report, DIR)`` writes every flow of ``report`` to
``DIR/date=YYYY-MM-DD/<capture>-<hash>.parquet``: the day is the flow's
``first_seen`` (UTC), the capture the one the flow started in (a flow merged
across rotated files is written once). DuckDB reads the directory as one
table (``read_parquet('DIR/*/*.parquet', hive_partitioning = true)``), and so
do pyarrow datasets, Spark and Trino (``date`` becomes a column).

The schema follows ``FlowReport``'s fields, whatever they are: each field's
annotation gives its Arrow type (``int`` -> int64, ``str`` -> string,
``list[str]`` -> list<string>, ``float`` -> float64, ``bool`` -> bool,
``X | None`` nullable), so fields added to the flow record reach the files
without a change here; an annotation not in that table lets Arrow infer the
type from the values. ``DIR/_manifest.json`` lists the files each capture
has and the schema; files of an earlier run of the same directory that this
run did not write again are removed. ``_``-prefixed entries are skipped by
pyarrow and by the ``*/*.parquet`` glob.

Each file is written to a temporary name and renamed, so a reader never sees
half a file. ``pyarrow`` is the ``parquet`` extra, imported only here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath
from typing import Any

from portwatch._atomic import atomic_write_bytes
from portwatch.analysis.report import DETECTION_FIELDS, FlowReport, Report
from portwatch.errors import OutputError

__all__ = ["MANIFEST", "flow_schema", "write_parquet"]

MANIFEST = "_manifest.json"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: Arrow type names by the annotation text of a ``FlowReport`` field.
_ARROW_TYPES = {"int": "int64", "str": "string", "float": "float64", "bool": "bool",
                "list[str]": "list<string>", "list[int]": "list<int64>"}


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise OutputError("-f parquet needs pyarrow: pip install portwatch[parquet]",
                          path=None) from exc
    return pa, pq


def flow_schema() -> list[tuple[str, str, bool]]:
    """(field, Arrow type name, nullable) per ``FlowReport`` field; '' lets Arrow infer."""
    out = []
    for f in dataclasses.fields(FlowReport):
        text = str(f.type).replace(" ", "")
        nullable = text.endswith("|None") or text.startswith("None|")
        base = text.removesuffix("|None").removeprefix("None|")
        out.append((f.name, _ARROW_TYPES.get(base, ""), nullable))
    return out


def _arrow_type(pa: Any, name: str) -> Any:
    return {"int64": pa.int64(), "string": pa.string(), "float64": pa.float64(),
            "bool": pa.bool_(), "list<string>": pa.list_(pa.string()),
            "list<int64>": pa.list_(pa.int64())}[name]


def _table(pa: Any, flows: Sequence[FlowReport]) -> Any:
    columns, fields = [], []
    for name, type_name, nullable in flow_schema():
        values = [getattr(f, name) for f in flows]
        if name in DETECTION_FIELDS and all(v is None for v in values):
            continue  # as in jsonl: nDPI's fields only when --detect ran
        array = pa.array(values, type=_arrow_type(pa, type_name) if type_name else None)
        columns.append(array)
        fields.append(pa.field(name, array.type, nullable=nullable or array.null_count > 0))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _file_name(capture: str) -> str:
    """A file name per capture: readable stem, plus a hash so two ``a/x.pcap``s differ."""
    stem = _SAFE.sub("_", PurePosixPath(capture.rstrip("/")).name)[:80] or "capture"
    digest = hashlib.sha256(capture.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{stem}-{digest}.parquet"


def _groups(flows: Iterable[FlowReport]) -> dict[tuple[str, str], list[FlowReport]]:
    out: dict[tuple[str, str], list[FlowReport]] = {}
    for flow in flows:
        out.setdefault((flow.first_seen[:10], flow.capture), []).append(flow)
    return out


def _previous_files(directory: str) -> set[str]:
    try:
        with open(os.path.join(directory, MANIFEST), encoding="utf-8") as fh:
            doc = json.load(fh)
        return {path for entry in doc["captures"].values() for path in entry["files"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def write_parquet(report: Report, directory: str) -> list[str]:
    """Write ``report``'s flows under ``directory``; return the files, relative to it."""
    pa, pq = _pyarrow()
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise OutputError("exists and is not a directory; -f parquet writes a directory",
                          path=directory)
    previous = _previous_files(directory)
    written: dict[str, list[str]] = {c: [] for c in report.captures}
    counts: dict[str, int] = dict.fromkeys(report.captures, 0)
    try:
        for (day, capture), flows in sorted(_groups(report.flows).items()):
            rel = f"date={day}/{_file_name(capture)}"
            sink = pa.BufferOutputStream()
            pq.write_table(_table(pa, flows), sink, compression="zstd")
            atomic_write_bytes(os.path.join(directory, rel), sink.getvalue().to_pybytes())
            written.setdefault(capture, []).append(rel)
            counts[capture] = counts.get(capture, 0) + len(flows)
        manifest = {
            "schema": [{"name": n, "type": t or "inferred", "nullable": nullable}
                       for n, t, nullable in flow_schema()],
            "partitioning": "hive: date=YYYY-MM-DD (UTC day of first_seen)",
            "captures": {c: {"files": files, "flows": counts.get(c, 0)}
                         for c, files in written.items()},
            "partial": report.partial,
        }
        atomic_write_bytes(os.path.join(directory, MANIFEST),
                           (json.dumps(manifest, indent=1) + "\n").encode())
    except OSError as exc:
        raise OutputError(f"cannot write: {exc.strerror or exc}", path=directory) from exc
    files = [rel for rels in written.values() for rel in rels]
    for stale in previous - set(files):
        if ".." not in PurePosixPath(stale).parts:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, stale))
    return sorted(files)
