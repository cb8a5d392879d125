"""Community ID v1: the spec's published vectors, the vectorised form, and tshark on the samples."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.community_id import community_id, flow_community_ids
from portwatch.capture.files.reader import read_capture_path
from portwatch.decode.native import DecodeStatus
from portwatch.ports import Transport
from portwatch.porttable.table import PortTable

REPO = Path(__file__).resolve().parents[2]
VECTORS = REPO / "tests" / "data" / "community_id"
PCAPS = REPO / "pcaps"


def vectors(name: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((VECTORS / name).read_text())
    return entries


@pytest.mark.parametrize(("seed", "name"), [(0, "baseline_deflt.json"),
                                            (1, "baseline_seed1.json")])
def test_every_published_baseline_vector_is_reproduced(seed: int, name: str) -> None:
    entries = vectors(name)
    assert len(entries) == 23
    for e in entries:
        got = community_id(e["proto"], e["saddr"], e["daddr"], e["sport"], e["dport"], seed=seed)
        assert got == e["communityid"], e


def test_the_spec_example_tuples_hash_alike_in_both_directions() -> None:
    one = community_id(6, "10.0.0.1", "127.0.0.1", 1234, 80)
    other = community_id(6, "127.0.0.1", "10.0.0.1", 80, 1234)
    assert one == other
    assert one.startswith("1:")
    assert len(one) == 2 + 28  # base64 of a 20-byte SHA-1


def test_ports_are_ignored_for_protocols_the_spec_hashes_without_them() -> None:
    # DCCP (33) has ports on the wire, but Community ID v1 hashes it by address only.
    assert community_id(33, "192.0.2.10", "198.51.100.20", 1, 5004) == \
        community_id(33, "198.51.100.20", "192.0.2.10", None, None)


def test_seed_out_of_range_and_mixed_ip_versions_are_refused() -> None:
    with pytest.raises(ValueError, match="seed must be 0-65535, got 65536"):
        community_id(6, "10.0.0.1", "10.0.0.2", 1, 2, seed=65536)
    with pytest.raises(ValueError, match="different IP versions"):
        community_id(6, "10.0.0.1", "::1", 1, 2)


def _halves(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int]:
    value = int(addr) | (0xFFFF << 32) if addr.version == 4 else int(addr)
    return value >> 64, value & (2**64 - 1)


_v4 = st.ip_addresses(v=4)
_v6 = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None)
_flows = st.lists(
    st.tuples(st.sampled_from([6, 17, 132, 33]),
              st.one_of(st.tuples(_v4, _v4), st.tuples(_v6, _v6)),
              st.integers(0, 65535), st.integers(0, 65535)),
    min_size=1, max_size=30)


_KEYS = np.dtype([("t", "u1"), ("ah", "u8"), ("al", "u8"), ("ap", "u2"),
                  ("bh", "u8"), ("bl", "u8"), ("bp", "u2")])


@settings(max_examples=60, deadline=None)
@given(_flows, st.integers(0, 65535))
def test_vectorised_ids_equal_the_scalar_function(flows: list[Any], seed: int) -> None:
    keys = np.zeros(len(flows), dtype=_KEYS)
    want = []
    for i, (proto, (x, y), px, py) in enumerate(flows):
        # canonical order, as the flow table keeps it: the smaller (address, port) is A
        a, pa, b, pb = (x, px, y, py) if (int(x), px) <= (int(y), py) else (y, py, x, px)
        transport = Transport.from_ip_protocol(proto)
        assert transport is not None
        keys[i] = (transport.value, *_halves(a), pa, *_halves(b), pb)
        want.append(community_id(proto, str(a), str(b), pa, pb, seed=seed))
    assert flow_community_ids(keys, seed=seed) == want


def test_no_flows_give_no_ids() -> None:
    assert flow_community_ids(np.zeros(0, dtype=_KEYS)) == []


# -- tshark ------------------------------------------------------------------------------------

def _tshark_ids(path: Path) -> list[str]:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed")
    result = subprocess.run(
        [tshark, "--enable-protocol", "communityid", "-n", "-r", str(path),
         "-T", "fields", "-e", "communityid"],
        capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0 or "communityid" in result.stderr:
        pytest.skip(f"tshark cannot compute Community IDs here: {result.stderr.strip()}")
    return result.stdout.splitlines()


_CAPTURES = ["sample.pcapng", "eth-le-usec.pcap", "linktype-raw-101.pcap",
             "linktype-ipv6-229.pcap", "linktype-sll2-276.pcap", "linktype-null-0.pcap",
             "linktype-loop-108.pcap", "ip-corners.pcap"]


@pytest.mark.parametrize("name", _CAPTURES)
def test_each_flow_has_the_id_tshark_computes_for_its_packets(table: PortTable,
                                                              name: str) -> None:
    """Per packet: tshark's ``communityid`` equals the ID of the flow portwatch put it in.

    IP fragments are left out: tshark hashes them before reassembly without
    ports (and the reassembled datagram with them), portwatch by their flow.
    """
    path = PCAPS / name
    if not path.exists():
        pytest.skip(f"{path} is missing: run `make pcaps`")
    tshark_ids = _tshark_ids(path)
    analyzer = Analyzer(table)
    flow_of: list[int] = []
    fragment: list[bool] = []
    with read_capture_path(str(path)) as reader:
        for batch in reader:
            decoded, flows = analyzer.feed(batch)
            flow_of += flows.tolist()
            fragment += ((decoded.status == DecodeStatus.FRAGMENT)
                         | decoded.is_first_fragment).tolist()
    assert len(tshark_ids) == len(flow_of)
    ft = analyzer.flows
    ours = flow_community_ids(ft.keys[: ft.size])
    compared = set()
    for frame, (fid, frag) in enumerate(zip(flow_of, fragment, strict=True), start=1):
        if fid < 0 or frag:
            continue
        assert ours[fid] == tshark_ids[frame - 1], f"{name} frame {frame}"
        compared.add(fid)
    assert compared, "no flow compared"
    assert len(compared) >= ft.size - 2  # at most the fragmented datagrams' flows go unchecked
