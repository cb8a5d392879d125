"""The compiled flow table core (``analysis/_flowcore.pyx``) against the numpy engine.

Differential: the same batches (hypothesis-generated, and every sample
capture) through ``FlowTable(engine="compiled")`` and ``engine="numpy"``
leave every column, the row numbering, the free rows and the key index
equal, with flows retired in between; and reports are byte-identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portwatch.analysis import flows
from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.flows import FlowLimits, FlowTable
from portwatch.analysis.render import OutputFormat, render
from portwatch.analysis.report import FlowReport
from portwatch.capture.files.reader import looks_like_capture, read_capture_path
from portwatch.decode.native import TUNNEL_DTYPE, TUNNEL_UNUSED, DecodedBatch, DecodeStatus
from portwatch.errors import CaptureError, CaptureTruncatedError, UsageError
from portwatch.porttable.table import PortTable

needs_core = pytest.mark.skipif(not flows.COMPILED, reason="analysis._flowcore is not built "
                                "(python setup.py build_ext --inplace)")

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
I64_MIN, I64_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max

# A small pool so flows repeat, meet in both directions and share addresses.
_ADDRS = [(0, 0xFFFF_C000_0201), (0, 0xFFFF_C000_0202), (0x2001_0DB8_0000_0000, 1)]
_PORTS = [53, 80, 443, 50000, 65535]
_PROTOS = [6, 6, 17, 132, 33, 1, 47]  # tcp twice (flags matter); 1, 47: no ports
_FLAGS = [0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x00, 0xFF]
_STATUSES = [DecodeStatus.OK] * 6 + [DecodeStatus.ICMP, DecodeStatus.FRAGMENT,
                                     DecodeStatus.TRUNCATED]
_TIMES = [0, 1, 2, 3, 5, 8, 1_000_000_000, I64_MAX, I64_MIN + 1]

_endpoint = st.tuples(st.sampled_from(_ADDRS), st.sampled_from(_PORTS))
_row = st.fixed_dictionaries({
    "status": st.sampled_from(_STATUSES),
    "proto": st.sampled_from(_PROTOS),
    "src": _endpoint,
    "dst": _endpoint,
    "flags": st.sampled_from(_FLAGS),
    "wirelen": st.sampled_from([0, 60, 1514, 2**32 - 1]),
    "ts": st.sampled_from(_TIMES),
    "encap": st.integers(0, 0xFFFF),
    "outer": st.lists(st.tuples(st.sampled_from([17, 6, 47]), _endpoint, _endpoint,
                                st.booleans()), max_size=2),
})
_batch = st.lists(_row, max_size=24)
# Between batches: evict some live rows, the limit's least recent, or the idle.
_retire = st.one_of(st.none(),
                    st.tuples(st.just("evict"), st.lists(st.integers(0, 10_000), max_size=6)),
                    st.tuples(st.just("limit"), st.integers(0, 6)),
                    st.tuples(st.just("expire"), st.sampled_from(_TIMES)))


def _decoded(rows: list[dict[str, object]]) -> tuple[DecodedBatch, npt.NDArray[np.int64]]:
    n = len(rows)
    depth = max((len(r["outer"]) for r in rows), default=0)

    def col(dtype: type, get: object) -> npt.NDArray[np.generic]:
        return np.asarray([get(r) for r in rows], dtype=dtype)

    tunnels = np.zeros((n, depth), dtype=TUNNEL_DTYPE)
    tunnels["status"] = TUNNEL_UNUSED
    for i, r in enumerate(rows):
        for k, (proto, (sa, sp), (da, dp), used) in enumerate(r["outer"]):
            if used:
                tunnels[i, k] = (DecodeStatus.OK, 4, proto, 0, sp, dp, 1, sa[0], sa[1],
                                 da[0], da[1])
    decoded = DecodedBatch(
        status=col(np.uint8, lambda r: r["status"]),
        ip_version=np.full(n, 4, dtype=np.uint8),
        ip_proto=col(np.uint8, lambda r: r["proto"]),
        src_hi=col(np.uint64, lambda r: r["src"][0][0]),
        src_lo=col(np.uint64, lambda r: r["src"][0][1]),
        dst_hi=col(np.uint64, lambda r: r["dst"][0][0]),
        dst_lo=col(np.uint64, lambda r: r["dst"][0][1]),
        src_port=col(np.uint16, lambda r: r["src"][1]),
        dst_port=col(np.uint16, lambda r: r["dst"][1]),
        tcp_flags=col(np.uint8, lambda r: r["flags"]),
        frag_id=np.zeros(n, dtype=np.uint32),
        is_first_fragment=np.zeros(n, dtype=np.bool_),
        wirelen=col(np.uint32, lambda r: r["wirelen"]),
        encap=col(np.uint16, lambda r: r["encap"]),
        tunnels=tunnels,
    )
    return decoded, col(np.int64, lambda r: r["ts"])


def _columns(ft: FlowTable) -> dict[str, npt.NDArray[np.generic]]:
    """Every per-row column of ``ft`` (found, not listed), rows in use only."""
    return {name: value[: ft.size] for name, value in vars(ft).items()
            if isinstance(value, np.ndarray) and value.shape == (ft.capacity,)}


def assert_same_table(ours: FlowTable, ref: FlowTable) -> None:
    assert ours.compiled
    assert not ref.compiled
    assert (ours.size, len(ours), ours.evicted) == (ref.size, len(ref), ref.evicted)
    assert ours._free == ref._free
    mine, theirs = _columns(ours), _columns(ref)
    assert mine.keys() == theirs.keys()
    for name, want in theirs.items():
        np.testing.assert_array_equal(mine[name], want, err_msg=name)
    assert ours._index == ref._index  # every live key found at its row in the C index
    assert len(ours._core) == len(ref._index)  # and nothing else held


def _both(capacity: int = 1) -> tuple[FlowTable, FlowTable]:
    return FlowTable(capacity, engine="compiled"), FlowTable(capacity, engine="numpy")


def _retire_both(op: tuple[str, object] | None, tables: tuple[FlowTable, FlowTable]) -> None:
    ours, ref = tables
    if op is None:
        return
    kind, arg = op
    if kind == "evict":
        live = np.flatnonzero(ref.alive[: ref.size])
        if live.size:
            rows = np.unique(live[np.asarray(arg, dtype=np.int64) % live.size])
            ours.evict(rows)
            ref.evict(rows)
    elif kind == "limit":
        np.testing.assert_array_equal(ours.enforce_limit(int(arg)),
                                      ref.enforce_limit(int(arg)))
    else:
        idle = FlowLimits().idle_ns()
        np.testing.assert_array_equal(ours.expire(int(arg), idle, 10**12),
                                      ref.expire(int(arg), idle, 10**12))


@needs_core
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_batch, _retire), min_size=1, max_size=8))
def test_compiled_core_counts_every_batch_as_the_numpy_engine(
    steps: list[tuple[list[dict[str, object]], tuple[str, object] | None]],
) -> None:
    tables = _both()
    ours, ref = tables
    for rows, op in steps:
        decoded, ts = _decoded(rows)
        got, want = ours.update(decoded, ts), ref.update(decoded, ts)
        np.testing.assert_array_equal(got, want)
        for mine, theirs in zip(ours.last_tunnel_flows, ref.last_tunnel_flows, strict=True):
            np.testing.assert_array_equal(mine, theirs)
        assert_same_table(ours, ref)
        _retire_both(op, tables)
        assert_same_table(ours, ref)


@needs_core
def test_new_flows_take_freed_rows_last_freed_first_then_new_rows_in_order_of_appearance(
) -> None:
    rows = [{"status": DecodeStatus.OK, "proto": 17, "src": (_ADDRS[0], 1000 + i),
             "dst": (_ADDRS[1], 53), "flags": 0, "wirelen": 60, "ts": i, "encap": 0,
             "outer": []} for i in range(5)]
    for ft in _both():
        decoded, ts = _decoded(rows)
        np.testing.assert_array_equal(ft.update(decoded, ts), [0, 1, 2, 3, 4])
        ft.evict(np.asarray([1, 3], dtype=np.int64))
        later = [dict(r, src=(_ADDRS[2], 2000 + i)) for i, r in enumerate(rows[:4])]
        decoded, ts = _decoded(later[::-1] + later[:1])
        # New keys in batch order: 2003 -> row 3 (freed last), 2002 -> 1, then 5, 6.
        np.testing.assert_array_equal(ft.update(decoded, ts), [3, 1, 5, 6, 6])
        assert ft._free == []
        assert (ft.size, len(ft)) == (7, 7)


@needs_core
def test_first_packet_flags_come_from_the_earliest_and_first_of_equal_times() -> None:
    syn_ack = {"status": DecodeStatus.OK, "proto": 6, "src": (_ADDRS[1], 80),
               "dst": (_ADDRS[0], 50000), "flags": 0x12, "wirelen": 60, "ts": 7, "encap": 0,
               "outer": []}
    syn = dict(syn_ack, src=syn_ack["dst"], dst=syn_ack["src"], flags=0x02)
    ack = dict(syn, flags=0x10)
    for ft in _both():
        decoded, ts = _decoded([ack, syn_ack, dict(syn, ts=3), dict(ack, ts=3)])
        ft.update(decoded, ts)
        # the SYN at 3 (A -> B), not the ACK after it at the same time
        assert (ft.first_flags[0], ft.first_from_a[0], ft.first_ns[0]) == (0x02, True, 3)
        assert ft.handshake_side[0] == 2  # the server, 192.0.2.2:80, is side B
        decoded, ts = _decoded([dict(syn_ack, ts=3)])  # not earlier: the first stays
        ft.update(decoded, ts)
        assert (ft.first_flags[0], ft.first_from_a[0]) == (0x02, True)


@needs_core
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 300)), max_size=400))
def test_index_insert_lookup_delete_agree_with_a_dict(ops: list[tuple[bool, int]]) -> None:
    index = flows.FlowIndex()
    model: dict[bytes, int] = {}
    keys = np.zeros(301, dtype=flows._KEY_DTYPE)
    keys["t"] = np.arange(301) % 4
    keys["al"] = np.arange(301) // 7  # many keys share fields: probe runs get long
    keys["bp"] = np.arange(301) * 3
    raw = keys.view(np.uint8).reshape(301, -1)
    for add, k in ops:
        if add:
            index.insert(raw[k].copy(), np.asarray([k + 10], dtype=np.int64))
            model[raw[k].tobytes()] = k + 10
        else:
            assert index.delete(raw[k].copy()) == int(model.pop(raw[k].tobytes(), None) is not None)
    found = np.empty(301, dtype=np.int64)
    index.lookup(keys.view(np.uint8), found)
    want = [model.get(raw[k].tobytes(), -1) for k in range(301)]
    assert found.tolist() == want
    assert len(index) == len(model)


@needs_core
def test_compiled_pass_refuses_columns_of_other_lengths() -> None:
    ft = FlowTable(engine="compiled")
    decoded, ts = _decoded([{"status": DecodeStatus.OK, "proto": 6, "src": (_ADDRS[0], 1),
                             "dst": (_ADDRS[1], 2), "flags": 2, "wirelen": 60, "ts": 1,
                             "encap": 0, "outer": []}] * 3)
    with pytest.raises(ValueError, match=r"batch columns differ in length from status \(3 rows\)"):
        ft.update(decoded, ts[:2])
    index = flows.FlowIndex()
    with pytest.raises(ValueError, match="not a multiple of 37"):
        index.delete(np.zeros(36, dtype=np.uint8))
    with pytest.raises(ValueError, match="outside the table's 0 rows"):
        index.update(*(np.zeros(0, dtype=t) for t in (
            np.uint8, np.uint8, np.uint64, np.uint64, np.uint64, np.uint64, np.uint16,
            np.uint16, np.uint8, np.uint32, np.uint16, np.int64)),
            np.zeros(256, dtype=np.uint8), np.zeros(0, dtype=np.uint8),
            *(np.zeros(0, dtype=t) for t in (np.uint64, np.uint64, np.uint64, np.uint64,
                                             np.int64, np.int64, np.uint8, np.uint8, np.uint8,
                                             np.uint8, np.uint8, np.uint8, np.uint16)),
            np.zeros(0, dtype=np.int64), 1, np.zeros(0, dtype=np.int64))


@needs_core
def test_compiled_pass_refuses_an_index_row_outside_the_table() -> None:
    ft = FlowTable(capacity=4, engine="compiled")
    row = {"status": DecodeStatus.OK, "proto": 17, "src": (_ADDRS[0], 1000),
           "dst": (_ADDRS[1], 53), "flags": 0, "wirelen": 60, "ts": 1, "encap": 0,
           "outer": []}
    decoded, ts = _decoded([row])
    ft.update(decoded, ts)
    ft._index = {ft.keys[:1].tobytes(): 4096}
    with pytest.raises(ValueError, match="maps a key to row 4096, outside the table's 4 rows"):
        ft.update(decoded, ts)


@needs_core
def test_an_index_assigned_by_a_merge_is_used_by_later_batches() -> None:
    rows = [{"status": DecodeStatus.OK, "proto": 17, "src": (_ADDRS[0], 1000 + i),
             "dst": (_ADDRS[1], 53), "flags": 0, "wirelen": 60, "ts": i, "encap": 0,
             "outer": []} for i in range(3)]
    decoded, ts = _decoded(rows)
    source = FlowTable(engine="numpy")
    source.update(decoded, ts)
    for ft in _both(capacity=4):
        ft.keys[:3] = source.keys[2::-1]  # filled directly, in another order
        ft.alive[:3] = True
        ft.size = 3
        raw = ft.keys[:3].tobytes()
        ft._index = {raw[i * 37 : (i + 1) * 37]: i for i in range(3)}
        np.testing.assert_array_equal(ft.update(decoded, ts), [2, 1, 0])
        ft.alive[:3] = [True, False, True]  # reindex() follows alive
        ft.reindex()
        np.testing.assert_array_equal(ft.update(decoded, ts), [2, 3, 0])


def test_flow_engine_setting_is_checked_and_said_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PORTWATCH_FLOWS", "fast")
    with pytest.raises(UsageError, match="PORTWATCH_FLOWS: flow engine must be one of "
                                         "auto, compiled, numpy, not 'fast'"):
        FlowTable()
    with pytest.raises(ValueError, match="not 'fast'"):
        FlowTable(engine="fast")
    monkeypatch.setenv("PORTWATCH_FLOWS", "numpy")
    monkeypatch.setenv("PORTWATCH_VERBOSE", "1")
    monkeypatch.setattr(flows, "_said", set())
    assert not FlowTable().compiled
    FlowTable()
    assert capsys.readouterr().err.count("portwatch: flow table: numpy") == 1
    monkeypatch.delenv("PORTWATCH_FLOWS")
    assert FlowTable().compiled is flows.COMPILED


def test_compiled_engine_asked_for_but_not_built_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(flows, "COMPILED", False)
    monkeypatch.setattr(flows, "_WHY_NOT", "the compiled flow table is not built (test)")
    monkeypatch.setenv("PORTWATCH_FLOWS", "compiled")
    with pytest.raises(UsageError, match=r"PORTWATCH_FLOWS: the compiled flow table is not "
                                         r"built \(test\)"):
        FlowTable()
    monkeypatch.delenv("PORTWATCH_FLOWS")
    assert not FlowTable().compiled  # auto falls back to numpy


# -- every sample capture ---------------------------------------------------------------

def _captures() -> list[Path]:
    return sorted(p for p in PCAPS.rglob("*")
                  if p.is_file() and looks_like_capture(p.read_bytes()[:4]))


def _run(table: PortTable, path: Path, limits: FlowLimits | None,
         batch_size: int) -> tuple[str, list[FlowReport]]:
    """The JSON report of ``path`` (and the records of retired flows, in order)."""
    records: list[FlowReport] = []
    analyzer = Analyzer(table, capture=path.name, limits=limits, records=records.extend)
    try:
        with read_capture_path(str(path), batch_size) as reader:
            for batch in reader:
                analyzer.feed(batch)
    except CaptureTruncatedError as exc:
        analyzer.note_damage(str(exc))
    except CaptureError as exc:
        return f"error: {exc}", []
    return render(analyzer.report(), OutputFormat.JSON), records


def test_sample_captures_are_found() -> None:
    names = {p.relative_to(PCAPS).as_posix() for p in _captures()}
    assert {"sample.pcapng", "eth-le-usec.pcap.gz", "tunnels/tunnel-vxlan.pcap"} <= names


@needs_core
@pytest.mark.parametrize("path", _captures(), ids=lambda p: p.relative_to(PCAPS).as_posix())
@pytest.mark.parametrize(("limits", "batch_size"), [(None, 4096), (FlowLimits(max_flows=2), 3)],
                         ids=["unbounded", "two-flows-in-batches-of-3"])
def test_every_sample_capture_reports_the_same_with_either_engine(
    monkeypatch: pytest.MonkeyPatch, table: PortTable, path: Path, limits: FlowLimits | None,
    batch_size: int,
) -> None:
    monkeypatch.setenv("PORTWATCH_FLOWS", "numpy")
    want = _run(table, path, limits, batch_size)
    monkeypatch.setenv("PORTWATCH_FLOWS", "compiled")
    got = _run(table, path, limits, batch_size)
    assert got == want
    report = json.loads(want[0])  # a report, not an error
    if limits is not None and report["flow_count"] > 2:
        assert want[1]  # more than two flows: some retired and went to the records
