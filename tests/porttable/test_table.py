"""The compiled table against independent readings of the official files."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portwatch.ports import PortFlag, PortStatus, Transport
from portwatch.porttable.cache import load_table
from portwatch.porttable.compile import _entry_for, _remark_ports, compile_table
from portwatch.porttable.table import PortTable, SlotEntry
from portwatch.registry.formats.iana_csv import parse_iana_csv
from portwatch.registry.formats.iana_xml import parse_iana_xml
from portwatch.registry.merge import Registry, merge_sources
from portwatch.registry.model import (
    ParsedSource,
    Provenance,
    RecordKind,
    ServiceRecord,
    SourceFormat,
    SourceInfo,
)

Slot = tuple[str, int]
Answer = tuple[str, str, tuple[str, ...]]  # status, canonical, aliases


def _expected_slots(rows: list[tuple[str, str, str, str]]) -> dict[Slot, Answer]:
    """A from-scratch reading: rows of (name, port, transport, description).

    Specific rows beat ranges; assigned beats reserved beats unassigned; the
    first name in file order is canonical, the rest are aliases. Unnamed rows
    are reserved/unassigned by their description, else unnamed assignments.
    """
    specific: dict[Slot, list[tuple[str, str]]] = {}
    ranged: dict[Slot, list[tuple[str, str]]] = {}
    for name, port, transport, desc in rows:
        if not port:
            continue
        lo, _, hi = port.partition("-")
        target = ranged if hi else specific
        for t in [transport] if transport else ["tcp", "udp"]:
            for p in range(int(lo), int(hi or lo) + 1):
                target.setdefault((t, p), []).append((name, desc))
    out: dict[Slot, Answer] = {}
    for slot in set(specific) | set(ranged):
        entries = specific.get(slot) or ranged[slot]
        d = [desc.lower() for _, desc in entries]

        def kind(name: str, desc: str) -> str:
            if name:
                return "assigned"
            low = desc.lower().strip()
            if low.startswith("reserved"):
                return "reserved"
            if any(w in low for w in ("unassigned", "de-registered", "removed", "deprecated",
                                      "decomissioned", "de-commissioned")):
                return "unassigned"
            return "assigned"

        kinds = [kind(n, de) for n, de in entries]
        del d
        for wanted in ("assigned", "reserved", "unassigned"):
            if wanted in kinds:
                names: list[str] = []
                for (n, _de), k in zip(entries, kinds, strict=True):
                    if k == wanted and n and n.lower() not in [x.lower() for x in names]:
                        names.append(n)
                out[slot] = (wanted, names[0] if names else "", tuple(names[1:]))
                break
    return out


def _check(table: PortTable, expected: dict[Slot, Answer]) -> None:
    mismatches = []
    for t in Transport:
        for port in range(65536):
            info = table.lookup(t, port)
            want = expected.get((t.label, port))
            if want is None:
                want_status = "dynamic" if port >= 49152 else "unlisted"
                got = (info.status.label, info.service, info.aliases)
                if got != (want_status, "", ()):
                    mismatches.append((t.label, port, got, want_status))
            elif (info.status.label, info.service, info.aliases) != want:
                mismatches.append((t.label, port, (info.status.label, info.service,
                                                   info.aliases), want))
    assert mismatches[:5] == []


@pytest.fixture(scope="module")
def csv_source(official_csv: Path) -> ParsedSource:
    return parse_iana_csv(official_csv.read_text(encoding="utf-8"), str(official_csv))


@pytest.fixture(scope="module")
def xml_source(official_xml: Path) -> ParsedSource:
    return parse_iana_xml(official_xml.read_bytes(), str(official_xml))


def test_every_slot_of_the_official_csv_agrees_with_an_independent_reading(
    official_csv: Path, csv_source: ParsedSource
) -> None:
    with official_csv.open(newline="", encoding="utf-8") as fh:
        rows = [(r["Service Name"], r["Port Number"], r["Transport Protocol"], r["Description"])
                for r in csv.DictReader(fh)]
    _check(compile_table(merge_sources([csv_source])), _expected_slots(rows))


def _xml_rows(path: Path) -> list[tuple[str, str, str, str]]:
    ns = "{http://www.iana.org/assignments}"
    rows = []
    for rec in ET.parse(path).getroot().iter(f"{ns}record"):
        def text(tag: str, rec: ET.Element = rec) -> str:
            el = rec.find(f"{ns}{tag}")
            return "" if el is None else " ".join("".join(el.itertext()).split())
        rows.append((text("name"), text("number"), text("protocol"), text("description")))
    return rows


def test_every_slot_of_the_official_xml_agrees_with_an_independent_reading(
    official_xml: Path, xml_source: ParsedSource
) -> None:
    _check(compile_table(merge_sources([xml_source])), _expected_slots(_xml_rows(official_xml)))


def test_csv_and_xml_together_answer_as_the_newer_xml_wherever_they_differ(
    csv_source: ParsedSource, xml_source: ParsedSource
) -> None:
    csv_only = compile_table(merge_sources([csv_source]))
    xml_only = compile_table(merge_sources([xml_source]))
    for order in ([csv_source, xml_source], [xml_source, csv_source]):
        both = compile_table(merge_sources(order))
        assert np.array_equal(both.status, xml_only.status)
        names_both = np.array(both.names, dtype=object)[both.service_id]
        names_xml = np.array(xml_only.names, dtype=object)[xml_only.service_id]
        assert (names_both == names_xml).all()
    differ = np.argwhere(csv_only.status != xml_only.status)
    assert len(differ) > 0  # the XML is four months newer: some ports changed
    t, port = (int(x) for x in differ[0])
    merged = compile_table(merge_sources([csv_source, xml_source]))
    assert merged.lookup(Transport(t), port).source == xml_source.info.path


def test_specific_entry_wins_over_the_range_around_it(csv_source: ParsedSource) -> None:
    table = compile_table(merge_sources([csv_source]))
    assert table.lookup(Transport.TCP, 7775).service == "inetfs"
    assert table.lookup(Transport.TCP, 7775).status is PortStatus.ASSIGNED
    assert table.lookup(Transport.TCP, 7774).status is PortStatus.UNASSIGNED


def test_unauthorized_use_remark_flags_only_the_ports_it_names(csv_source: ParsedSource) -> None:
    table = compile_table(merge_sources([csv_source]))
    flagged = table.lookup(Transport.TCP, 44515)
    assert flagged.flags & PortFlag.UNAUTHORIZED_USE
    assert "44515" in flagged.remark
    assert table.lookup(Transport.UDP, 44516).flags & PortFlag.UNAUTHORIZED_USE
    assert not table.lookup(Transport.TCP, 44517).flags
    assert table.lookup(Transport.TCP, 79).flags & PortFlag.UNAUTHORIZED_USE  # finger


def test_vectorised_lookup_equals_scalar_lookup(csv_source: ParsedSource) -> None:
    table = compile_table(merge_sources([csv_source]))
    rng = np.random.default_rng(7)
    transports = rng.integers(0, 4, 5000).astype(np.uint8)
    ports = rng.integers(0, 65536, 5000).astype(np.uint16)
    status, service_id, flags = table.lookup_many(transports, ports)
    for i in range(5000):
        info = table.lookup(Transport(int(transports[i])), int(ports[i]))
        assert status[i] == info.status
        assert table.names[service_id[i]] == info.service
        assert flags[i] == info.flags


def test_table_survives_serialisation_unchanged(csv_source: ParsedSource) -> None:
    table = compile_table(merge_sources([csv_source]))
    again = PortTable.from_bytes(table.to_bytes())
    assert np.array_equal(again.status, table.status)
    assert np.array_equal(again.entry, table.entry)
    assert again.names == table.names
    assert again.entries == table.entries
    assert again.sources == table.sources


def test_a_loaded_table_answers_each_lookup_as_the_compiled_one(
    csv_source: ParsedSource,
) -> None:
    """Entries decoded one at a time (lookups) and all at once (``entries``) agree."""
    table = compile_table(merge_sources([csv_source]))
    blob = table.to_bytes()
    one_by_one, whole = PortTable.from_bytes(blob), PortTable.from_bytes(blob)
    for t in Transport:
        for port in [*np.flatnonzero(table.entry[t] >= 0).tolist()[::7], 0, 65535]:
            assert one_by_one.lookup(t, port) == table.lookup(t, port)
    assert whole.entries == table.entries
    assert PortTable.from_bytes(whole.to_bytes()).entries == table.entries


def test_an_empty_table_survives_serialisation() -> None:
    empty = compile_table(merge_sources([]))
    again = PortTable.from_bytes(empty.to_bytes())
    assert again.entries == empty.entries == []
    assert again.lookup(Transport.UDP, 53).status == empty.lookup(Transport.UDP, 53).status


def test_garbage_is_not_taken_for_a_compiled_table() -> None:
    with pytest.raises(ValueError, match="not a compiled portwatch table"):
        PortTable.from_bytes(b"garbage")


# -- a tampered cache is a cache miss, never a traceback ------------------------

_SMALL_SERVICES = "http 80/tcp www # World Wide Web HTTP\ndomain 53/udp\nmyapp 6000-6003/tcp\n"


def _small_table_bytes(tmp_path: Path) -> bytes:
    src = tmp_path / "services"
    src.write_text(_SMALL_SERVICES)
    return load_table([str(src)], cache=None).table.to_bytes()


def _members(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _savez(members: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **members)  # type: ignore[arg-type]
    return buf.getvalue()


def _json_member(value: object) -> np.ndarray:
    return np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)


def _edit_meta(members: dict[str, np.ndarray], **changes: object) -> np.ndarray:
    meta = json.loads(members["meta"].tobytes())
    meta.update(changes)
    return _json_member(meta)


def _poke(name: str, index: int, value: int) -> Callable[[dict[str, np.ndarray]], None]:
    """Set one element of an entry column (index -1: the last)."""
    return lambda m: m[name].__setitem__(index, value)


_TAMPERINGS: dict[str, Callable[[dict[str, np.ndarray]], None]] = {
    "missing-entry-array": lambda m: m.pop("entry"),
    "missing-meta": lambda m: m.pop("meta"),
    "short-status": lambda m: m.update(status=m["status"][:, :1000]),
    "flat-flags": lambda m: m.update(flags=m["flags"].reshape(-1)),
    "three-transports": lambda m: m.update(service_id=m["service_id"][:3]),
    "service-id-as-int64": lambda m: m.update(service_id=m["service_id"].astype(np.int64)),
    "status-as-float": lambda m: m.update(status=m["status"].astype(np.float32)),
    "big-endian-entry": lambda m: m.update(entry=m["entry"].astype(">i4")),
    "service-id-past-the-names": lambda m: m["service_id"].__setitem__((0, 80), 10_000),
    "negative-service-id": lambda m: m["service_id"].__setitem__((1, 53), -3),
    "entry-past-the-entries": lambda m: m["entry"].__setitem__((0, 80), 999),
    "entry-below-minus-one": lambda m: m["entry"].__setitem__((0, 81), -2),
    "status-code-unknown": lambda m: m["status"].__setitem__((2, 9), 200),
    "flag-code-unknown": lambda m: m["flags"].__setitem__((2, 9), 7),
    "meta-not-json": lambda m: m.update(meta=np.frombuffer(b"{not json", dtype=np.uint8)),
    "meta-a-list": lambda m: m.update(meta=_json_member([1, 2, 3])),
    "meta-nested-deep": lambda m: m.update(
        meta=np.frombuffer(b"[" * 100_000 + b"]" * 100_000, dtype=np.uint8)),
    "meta-other-version": lambda m: m.update(meta=_edit_meta(m, version=99)),
    "names-not-strings": lambda m: m.update(meta=_edit_meta(m, names=["", 5])),
    "names-empty": lambda m: m.update(meta=_edit_meta(m, names=[])),
    "source-of-four-fields": lambda m: m.update(
        meta=_edit_meta(m, sources=[["p", "services", None, True]])),
    "source-format-unknown": lambda m: m.update(
        meta=_edit_meta(m, sources=[["p", "yaml", None, True, ""]])),
    "source-date-garbage": lambda m: m.update(
        meta=_edit_meta(m, sources=[["p", "services", "2024-13-45", True, ""]])),
    "missing-text": lambda m: m.pop("text"),
    "entry-status-unknown": _poke("entry_status", -1, len(PortStatus)),
    "entry-flag-unknown": _poke("entry_flags", -1, 2),
    "entry-source-past-the-sources": _poke("entry_source", -1, 4),
    "entry-source-negative": _poke("entry_source", 0, -1),
    "entry-service-past-the-strings": _poke("entry_service", -1, 1_000_000),
    "entry-description-negative": _poke("entry_description", 0, -1),
    "entry-remark-past-the-strings": _poke("entry_remark", 0, 1_000_000),
    "alias-past-the-strings": _poke("aliases", 0, 1_000_000),
    "record-id-negative": _poke("record_ids", -1, -1),
    "alias-run-falling": _poke("alias_ends", 0, 10_000),
    "alias-runs-past-the-aliases": lambda m: m.update(aliases=m["aliases"][:-1]),
    "record-runs-short-of-the-ids": lambda m: m.update(
        record_ids=np.append(m["record_ids"], np.int64(5))),
    "text-ends-past-the-text": lambda m: m.update(text=m["text"][:-3]),
    "text-ends-falling": _poke("text_ends", 0, 10_000),
    "text-not-utf8": _poke("text", 0, 0xFF),
    "columns-of-different-lengths": lambda m: m.update(entry_flags=m["entry_flags"][:-1]),
    "entry-status-as-int64": lambda m: m.update(
        entry_status=m["entry_status"].astype(np.int64)),
    "aliases-two-dimensional": lambda m: m.update(aliases=m["aliases"].reshape(1, -1)),
    "big-endian-record-ids": lambda m: m.update(record_ids=m["record_ids"].astype(">i8")),
    "object-array-member": lambda m: m.update(text_ends=np.array([{"x": 1}], dtype=object)),
}


@pytest.mark.parametrize("tamper", list(_TAMPERINGS), ids=list(_TAMPERINGS))
def test_tampered_table_is_refused_with_a_value_error(tmp_path: Path, tamper: str) -> None:
    members = _members(_small_table_bytes(tmp_path))
    _TAMPERINGS[tamper](members)
    if tamper == "object-array-member":
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=True, **members)  # type: ignore[arg-type]
        blob = buf.getvalue()
    else:
        blob = _savez(members)
    with pytest.raises(ValueError, match="not a compiled portwatch table"):
        PortTable.from_bytes(blob)


def test_untouched_members_resaved_still_load(tmp_path: Path) -> None:
    """The tamper harness itself changes nothing by re-saving: the refusals are real."""
    blob = _savez(_members(_small_table_bytes(tmp_path)))
    assert PortTable.from_bytes(blob).lookup(Transport.TCP, 80).service == "http"


@pytest.mark.parametrize("cut", [0, 1, 22, 100, 5_000, -1_000, -1])
def test_truncated_table_is_refused_with_a_value_error(tmp_path: Path, cut: int) -> None:
    blob = _small_table_bytes(tmp_path)
    with pytest.raises(ValueError, match="not a compiled portwatch table"):
        PortTable.from_bytes(blob[:cut])


def test_member_claiming_a_huge_size_is_refused_before_inflating(tmp_path: Path) -> None:
    members = _members(_small_table_bytes(tmp_path))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, array in members.items():
            if name != "text":
                with zf.open(f"{name}.npy", "w") as out:
                    np.lib.format.write_array(out, array)
        with zf.open("text.npy", "w") as out:  # 65 MiB of zeros deflate to 64 KiB: a bomb
            np.lib.format.write_array(out, np.zeros(65 * 1024 * 1024, dtype=np.uint8))
    with pytest.raises(ValueError, match="implausibly large"):
        PortTable.from_bytes(buf.getvalue())


@pytest.mark.parametrize(
    "tamper", ["short-status", "entry-past-the-entries", "meta-nested-deep", "missing-meta"]
)
def test_load_table_recompiles_over_a_tampered_cache_file(tmp_path: Path, tamper: str) -> None:
    src = tmp_path / "services"
    src.write_text(_SMALL_SERVICES)
    cache = tmp_path / "cache"
    fresh = load_table([str(src)], cache=cache)
    (cached,) = cache.glob("table-*.npz")
    good = cached.read_bytes()
    members = _members(good)
    _TAMPERINGS[tamper](members)
    cached.write_bytes(_savez(members))
    again = load_table([str(src)], cache=cache)
    assert not again.from_cache
    assert again.table.lookup(Transport.TCP, 80).service == "http"
    assert cached.read_bytes() == good == fresh.table.to_bytes()  # overwritten with a good one
    assert load_table([str(src)], cache=cache).from_cache


def test_cache_is_reused_and_invalidated_when_a_source_changes(tmp_path: Path) -> None:
    src = tmp_path / "services"
    src.write_text("http 80/tcp www # World Wide Web HTTP\n")
    cache = tmp_path / "cache"
    first = load_table([str(src)], cache=cache)
    assert not first.from_cache
    second = load_table([str(src)], cache=cache)
    assert second.from_cache
    assert second.table.lookup(Transport.TCP, 80).service == "http"
    src.write_text("gopher 70/tcp\n")
    third = load_table([str(src)], cache=cache)
    assert not third.from_cache
    assert third.table.lookup(Transport.TCP, 80).status is PortStatus.UNLISTED
    assert third.table.lookup(Transport.TCP, 70).service == "gopher"


# -- property: the table is a linear scan of the records, made O(1) ------------

_KINDS = st.sampled_from([RecordKind.ASSIGNED, RecordKind.RESERVED, RecordKind.UNASSIGNED])


@st.composite
def _records(draw: st.DrawFn) -> list[ServiceRecord]:
    out = []
    for i in range(draw(st.integers(0, 12))):
        lo = draw(st.integers(0, 300))
        hi = lo + draw(st.sampled_from([0, 0, 0, 1, 5, 40]))
        kind = draw(_KINDS)
        name = f"svc{draw(st.integers(0, 5))}" if kind is RecordKind.ASSIGNED else ""
        transport = draw(st.sampled_from([None, *Transport]))
        out.append(ServiceRecord(name, lo, hi, transport, "d", kind,
                                 Provenance("p", i + 1, None)))
    return out


def _linear_scan(records: list[ServiceRecord], t: Transport, port: int) -> tuple[str, str]:
    covering = [r for r in records if t in r.transports and r.port_low is not None
                and r.port_high is not None and r.port_low <= port <= r.port_high]
    specific = [r for r in covering if not r.is_range]
    chosen = specific or covering
    for kind in (RecordKind.ASSIGNED, RecordKind.RESERVED, RecordKind.UNASSIGNED):
        of_kind = [r for r in chosen if r.kind is kind]
        if of_kind:
            named = [r.name for r in of_kind if r.name]
            return kind.value, named[0] if named else ""
    return ("dynamic" if port >= 49152 else "unlisted"), ""


@settings(max_examples=60, deadline=None)
@given(_records(), _records())
def test_table_agrees_with_a_linear_scan_for_every_port(
    older: list[ServiceRecord], newer: list[ServiceRecord]
) -> None:
    sources = [
        ParsedSource(SourceInfo("old", SourceFormat.IANA_CSV, date(2020, 1, 1)), older),
        ParsedSource(SourceInfo("new", SourceFormat.IANA_CSV, date(2024, 1, 1)), newer),
    ]
    table = compile_table(merge_sources(sources))
    for t in Transport:
        for port in [*range(0, 400), 49152, 65535]:
            in_newer = any(t in r.transports and r.port_low is not None
                           and r.port_high is not None and r.port_low <= port <= r.port_high
                           for r in newer)
            want = _linear_scan(newer if in_newer else older, t, port)
            assert (table.status_of(t, port).label, table.service_of(t, port)) == want


# -- the vectorised compiler equals the slot-by-slot one, byte for byte ---------


def _reference_table(registry: Registry) -> PortTable:
    """The compiler as it was: one dict item per slot, numbered as first met."""
    status = np.zeros((4, 65536), dtype=np.uint8)
    service_id = np.zeros((4, 65536), dtype=np.int32)
    flags = np.zeros((4, 65536), dtype=np.uint8)
    entry = np.full((4, 65536), -1, dtype=np.int32)
    names, name_ids = [""], {"": 0}
    entries: list[SlotEntry] = []
    interned: dict[tuple[tuple[int, ...], int], int] = {}
    for (transport, port), view in registry.slot_views().items():
        st_, service, aliases, description, remarked = _entry_for(registry, view)
        flag = PortFlag.NONE
        if remarked is not None:
            ports = _remark_ports(remarked)
            if ports is None or port in ports:
                flag = PortFlag.UNAUTHORIZED_USE
        index = interned.setdefault((view.record_ids, int(flag)), len(entries))
        if index == len(entries):
            entries.append(SlotEntry(st_, service, aliases, description, flag,
                                     remarked.unauthorized_use if remarked else "",
                                     view.record_ids, view.source_index))
        sid = name_ids.setdefault(service, len(names))
        if sid == len(names):
            names.append(service)
        status[transport, port] = st_
        service_id[transport, port] = sid
        flags[transport, port] = flag
        entry[transport, port] = index
    dynamic = status[:, 49152:]
    dynamic[dynamic == PortStatus.UNLISTED] = PortStatus.DYNAMIC
    return PortTable(status=status, service_id=service_id, flags=flags, entry=entry,
                     names=names, entries=entries, sources=list(registry.sources))


@st.composite
def _remarked_records(draw: st.DrawFn, path: str) -> list[ServiceRecord]:
    out = []
    for i in range(draw(st.integers(0, 10))):
        lo = draw(st.integers(0, 120))
        hi = lo + draw(st.sampled_from([0, 0, 2, 30]))
        kind = draw(_KINDS)
        remark = draw(st.sampled_from(["", "", f"port {lo}", f"ports {lo + 1} and {hi}", "yes"]))
        out.append(ServiceRecord(
            f"svc{draw(st.integers(0, 6))}" if kind is RecordKind.ASSIGNED else "", lo, hi,
            draw(st.sampled_from([None, *Transport])), f"d{i % 3}", kind,
            Provenance(path, i + 1, None), unauthorized_use=remark))
    return out


@settings(max_examples=80, deadline=None)
@given(_remarked_records("a"), _remarked_records("b"), st.booleans())
def test_compiled_table_equals_the_slot_by_slot_reference(
    first: list[ServiceRecord], second: list[ServiceRecord], newer_first: bool
) -> None:
    dates = (date(2024, 1, 1), date(2020, 1, 1)) if newer_first else (None, date(2020, 1, 1))
    registry = merge_sources([
        ParsedSource(SourceInfo("a", SourceFormat.IANA_CSV, dates[0]), first),
        ParsedSource(SourceInfo("b", SourceFormat.IANA_CSV, dates[1]), second),
    ])
    assert compile_table(registry).to_bytes() == _reference_table(registry).to_bytes()


def test_official_tables_equal_the_slot_by_slot_reference(
    csv_source: ParsedSource, xml_source: ParsedSource
) -> None:
    for sources in ([xml_source], [csv_source, xml_source]):
        registry = merge_sources(sources)
        assert compile_table(registry).to_bytes() == _reference_table(registry).to_bytes()


_SLOT_ENTRIES = st.builds(
    SlotEntry,
    st.sampled_from(list(PortStatus)),
    st.text(max_size=8),
    st.lists(st.text(max_size=6), max_size=3).map(tuple),
    st.text(max_size=30),  # any code point: the pool is cut by characters, not bytes
    st.sampled_from([PortFlag.NONE, PortFlag.UNAUTHORIZED_USE]),
    st.text(max_size=10),
    st.lists(st.integers(0, 2**40), max_size=4).map(tuple),
    st.just(0),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_SLOT_ENTRIES, max_size=12))
def test_any_slot_entries_survive_serialisation(entries: list[SlotEntry]) -> None:
    entry = np.full((len(Transport), 65536), -1, dtype=np.int32)
    entry[0, : len(entries)] = np.arange(len(entries))
    table = PortTable(
        status=np.zeros((len(Transport), 65536), dtype=np.uint8),
        service_id=np.zeros((len(Transport), 65536), dtype=np.int32),
        flags=np.zeros((len(Transport), 65536), dtype=np.uint8),
        entry=entry, names=[""], entries=entries,
        sources=[SourceInfo("s", SourceFormat.SERVICES, None, True, "")],
    )
    blob = table.to_bytes()
    one_by_one = PortTable.from_bytes(blob)
    for i, e in enumerate(entries):
        info = one_by_one.lookup(Transport.TCP, i)
        assert (info.aliases, info.description, info.record_ids) == (
            e.aliases, e.description, e.record_ids)
    assert PortTable.from_bytes(blob).entries == entries
