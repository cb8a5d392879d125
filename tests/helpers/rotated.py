"""A capture generated in code, and the same capture cut into rotated files.

``traffic(n)`` writes ``n`` Ethernet/IPv4 packets (classic pcap, microsecond
timestamps, strictly increasing) over a few hundred TCP and UDP flows that
interleave, so most flows cross every cut. TCP flows open with a SYN and a
SYN-ACK whose service side contradicts the registry and the lower port on
purpose (a service on 50000 reached from port 80), so a merge that loses the
handshake of the first file decides differently. ``rotate`` cuts a capture as
``editcap -c`` does (tshark's editcap when installed, else the same cut in
Python).
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

from portwatch.analysis.report import Report

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
_MAC = bytes.fromhex("020000000001") + bytes.fromhex("020000000002") + b"\x08\x00"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def packet(src: bytes, dst: bytes, proto: int, ports: tuple[int, int], *, flags: int,
           payload: bytes = b"") -> bytes:
    """An Ethernet/IPv4 frame; ``flags`` are TCP flags (ignored for UDP)."""
    sport, dport = ports
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return _MAC + ip + l4


def traffic(path: Path, packets: int, *, flows: int = 300, seed: int = 7,
            start_s: int = 1_760_000_000, step_us: int = 997) -> Path:
    """``packets`` packets over ``flows`` interleaved flows, written to ``path``."""
    rng = random.Random(seed)
    specs = []
    for i in range(flows):
        client = bytes([10, 0, i // 250, 1 + i % 250])
        server = bytes([192, 0, 2, 1 + i % 7])
        if i % 3 == 0:  # a handshake says 50000 is the service, ports alone would say 80
            specs.append((6, client, server, 80, 50000 + i % 50, True))
        elif i % 3 == 1:
            specs.append((6, client, server, 40000 + i, rng.choice([22, 443, 8807, 5000]), True))
        else:
            specs.append((17, client, server, 50000 + i, rng.choice([53, 123, 1021, 7]), False))
    opened = [False] * flows
    records = []
    for n in range(packets):
        i = rng.randrange(flows)
        proto, client, server, cport, sport, tcp = specs[i]
        flags, forward = 0x18, rng.random() < 0.6
        if tcp and not opened[i]:
            flags, forward = 0x02, True
            opened[i] = True
        elif tcp and rng.random() < 0.02:
            flags, forward = 0x12, False  # a late SYN-ACK (retransmitted): the latest wins
        src, dst, sp, dp = (client, server, cport, sport) if forward else (
            server, client, sport, cport)
        frame = packet(src, dst, proto, (sp, dp), flags=flags,
                       payload=b"x" * rng.randrange(0, 200))
        ts_us = n * step_us
        records.append(struct.pack("<IIII", start_s + ts_us // 1_000_000, ts_us % 1_000_000,
                                   len(frame), len(frame)) + frame)
    path.write_bytes(PCAP_HEADER + b"".join(records))
    return path


def records_of(data: bytes) -> list[bytes]:
    out, pos = [], len(PCAP_HEADER)
    while pos < len(data):
        incl = struct.unpack_from("<I", data, pos + 8)[0]
        out.append(data[pos : pos + 16 + incl])
        pos += 16 + incl
    return out


def rotate(capture: Path, directory: Path, per_file: int) -> list[Path]:
    """``capture`` cut every ``per_file`` packets, files in time order (as editcap names them)."""
    directory.mkdir(parents=True, exist_ok=True)
    editcap = shutil.which("editcap")
    if editcap is not None:
        subprocess.run([editcap, "-F", "pcap", "-c", str(per_file), str(capture),
                        str(directory / "part.pcap")], check=True, capture_output=True,
                       timeout=60)
        return sorted(directory.glob("part_*.pcap"))
    records = records_of(capture.read_bytes())
    paths = []
    for k in range(0, len(records), per_file):
        path = directory / f"part_{k // per_file:05d}.pcap"
        path.write_bytes(PCAP_HEADER + b"".join(records[k : k + per_file]))
        paths.append(path)
    return paths


# -- comparing a merged report with the uncut capture's -------------------------

def flow_key(flow: dict[str, Any]) -> tuple[Any, ...]:
    ends = sorted([(flow["client"], flow["client_port"]), (flow["server"], flow["service_port"])])
    return (flow["transport"], *ends[0], *ends[1])


def by_flow(report: Report) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Every flow's record without the capture it came from (the one thing a cut changes)."""
    out = {}
    for f in report.flows:
        doc = f.as_dict()
        doc.pop("capture")
        out[flow_key(doc)] = doc
    return out


def assert_same_report(merged: Report, uncut: Report) -> None:
    assert by_flow(merged) == by_flow(uncut)
    assert [s.as_dict() for s in merged.services] == [s.as_dict() for s in uncut.services]
    assert (merged.packets, merged.bytes, merged.decode) == (uncut.packets, uncut.bytes,
                                                             uncut.decode)
