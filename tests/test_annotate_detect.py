"""``Annotator(detect=True)``: nDPI's verdict in the per-packet API, scapy packets built here."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers.ndpi import needs_ndpi
from portwatch.analysis.detect import INSTALL_HINT
from portwatch.annotate import Annotation, Annotator
from portwatch.errors import UsageError
from portwatch.porttable.table import PortTable

scapy_inet = pytest.importorskip("scapy.layers.inet")
from scapy.layers.l2 import Ether  # noqa: E402 - after the importorskip

IP, TCP, UDP = scapy_inet.IP, scapy_inet.TCP, scapy_inet.UDP
MACS: dict[str, Any] = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
CLIENT, SERVER = "192.0.2.10", "198.51.100.20"



def exchange(sport: int, dport: int, client: list[bytes], server: list[bytes]) -> list[Any]:
    """A TCP handshake, then each client payload answered by the server's."""
    out = Ether(**MACS) / IP(src=CLIENT, dst=SERVER)
    back = Ether(**MACS) / IP(src=SERVER, dst=CLIENT)
    packets = [out / TCP(sport=sport, dport=dport, flags="S", seq=100),
               back / TCP(sport=dport, dport=sport, flags="SA", seq=500, ack=101),
               out / TCP(sport=sport, dport=dport, flags="A", seq=101, ack=501)]
    cseq, sseq = 101, 501
    for asked, answered in zip(client, server, strict=True):
        packets.append(out / TCP(sport=sport, dport=dport, flags="PA", seq=cseq, ack=sseq)
                       / asked)
        cseq += len(asked)
        packets.append(back / TCP(sport=dport, dport=sport, flags="PA", seq=sseq, ack=cseq)
                       / answered)
        sseq += len(answered)
    return packets


SSH_ON_443 = exchange(50001, 443, [b"SSH-2.0-OpenSSH_9.6\r\n", b"\0\0\1\x0c\x0a\x14" + bytes(300)],
                      [b"SSH-2.0-OpenSSH_9.2p1\r\n", b"\0\0\1\x0c\x0a\x14" + bytes(300)])
HTTP_ON_80 = exchange(50002, 80, [b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"],
                      [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])


@pytest.fixture
def annotator(packaged: PortTable, tmp_path: Path) -> Any:
    with Annotator(packaged, detect=True, detect_dir=str(tmp_path)) as annotate:
        yield annotate


@needs_ndpi
def test_ssh_on_the_https_port_becomes_a_flagged_mismatch_once_ndpi_is_done(
    annotator: Annotator,
) -> None:
    answers = [annotator(p) for p in SSH_ON_443]
    last = answers[-1]
    assert (last.detected, last.confidence, last.detection) == ("ssh", "payload", "mismatch")
    assert "protocol-mismatch" in last.flags
    assert "tcp/443 https (assigned) carries ssh" in last.reasons
    assert str(last) == ("portwatch: FLAG tcp/443 https (assigned): "
                         "tcp/443 https (assigned) carries ssh")
    # before nDPI was done with the flow, nothing was claimed either way
    assert {a.detection for a in answers[:3]} == {""}
    assert not any(a.flagged for a in answers[:3])
    # every packet from then on carries the verdict
    assert annotator(SSH_ON_443[-1]).detection == "mismatch"


@needs_ndpi
def test_http_on_its_port_is_confirmed_and_not_flagged(annotator: Annotator) -> None:
    last = [annotator(p) for p in HTTP_ON_80][-1]
    assert (last.detected, last.confidence, last.detection) == ("http", "payload", "confirmed")
    assert not last.flagged
    assert str(last) == "portwatch: tcp/80 http (assigned)"


@needs_ndpi
def test_a_flow_without_payload_is_never_a_mismatch(annotator: Annotator) -> None:
    handshake = exchange(50003, 443, [], [])
    answers = [annotator(p) for p in handshake * 3]
    assert all(a.detection in ("", "unconfirmed") for a in answers)
    assert not any(a.flagged for a in answers)


@needs_ndpi
def test_dns_query_and_answer_on_53_are_confirmed(annotator: Annotator) -> None:
    question = "123401000001000000000000076578616d706c6503636f6d0000010001"  # example.com A
    reply = "123481800001000100000000076578616d706c6503636f6d0000010001" \
            "c00c000100010000012c00045db8d822"
    query = (Ether(**MACS) / IP(src=CLIENT, dst=SERVER) / UDP(sport=40000, dport=53)
             / bytes.fromhex(question))
    answer = (Ether(**MACS) / IP(src=SERVER, dst=CLIENT) / UDP(sport=53, dport=40000)
              / bytes.fromhex(reply))
    got = [annotator(p) for p in (query, answer)][-1]
    assert (got.service_port, got.detected, got.detection) == (53, "dns", "confirmed")


@needs_ndpi
def test_raw_ip_packets_without_ethernet_are_read_too(annotator: Annotator) -> None:
    bare = [p[IP] for p in HTTP_ON_80]  # scapy IP as the outermost layer: link type RAW
    assert [annotator(p) for p in bare][-1].detection == "confirmed"


@needs_ndpi
def test_close_stops_ndpi_removes_its_directory_and_leaves_a_plain_annotator(
    packaged: PortTable, tmp_path: Path,
) -> None:
    annotate = Annotator(packaged, detect=True, detect_dir=str(tmp_path))
    annotate(HTTP_ON_80[0])
    assert len(os.listdir(tmp_path)) == 1
    annotate.close()
    assert os.listdir(tmp_path) == []
    after = annotate(exchange(50009, 80, [], [])[0])
    assert (after.detection, str(after)) == ("", "portwatch: tcp/80 http (assigned)")


def test_without_detect_the_detection_fields_stay_empty(packaged: PortTable) -> None:
    last = [Annotator(packaged)(p) for p in SSH_ON_443][-1]
    assert (last.detected, last.confidence, last.detection) == ("", "", "")
    assert not last.flagged
    assert isinstance(last, Annotation)


def test_detect_without_ndpi_is_a_usage_error_with_the_install_hint(
    packaged: PortTable, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "_lib_engine", None)
    with pytest.raises(UsageError, match=r"pip install 'portwatch\[detect\]'") as caught:
        Annotator(packaged, detect=True)
    assert str(caught.value) == INSTALL_HINT


@needs_ndpi
def test_pyshark_packets_with_their_raw_bytes_get_the_same_verdict_as_scapy(
    packaged: PortTable, tmp_path: Path,
) -> None:
    import shutil

    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    pyshark = pytest.importorskip("pyshark")
    from scapy.utils import wrpcap

    from portwatch.decode.pyshark import OVERRIDE_PREFS

    packets = [p.copy() for p in SSH_ON_443]
    for i, p in enumerate(packets):
        p.time = 1_700_000_000 + i / 1000
    path = tmp_path / "ssh-on-443.pcap"
    wrpcap(str(path), packets)
    capture = pyshark.FileCapture(str(path), keep_packets=False, override_prefs=OVERRIDE_PREFS,
                                  include_raw=True, use_json=True)
    try:
        with Annotator(packaged, detect=True, detect_dir=str(tmp_path)) as annotate:
            got = [annotate(p) for p in capture]
    finally:
        capture.close()
    last = got[-1]
    assert (last.service_port, last.detected, last.detection) == (443, "ssh", "mismatch")
    assert "tcp/443 https (assigned) carries ssh" in last.reasons


@needs_ndpi
def test_pyshark_packets_without_raw_bytes_are_annotated_without_detection(
    packaged: PortTable, tmp_path: Path,
) -> None:
    import shutil

    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    pyshark = pytest.importorskip("pyshark")
    from scapy.utils import wrpcap

    from portwatch.decode.pyshark import OVERRIDE_PREFS

    path = tmp_path / "ssh-on-443.pcap"
    wrpcap(str(path), SSH_ON_443)
    capture = pyshark.FileCapture(str(path), keep_packets=False, override_prefs=OVERRIDE_PREFS)
    try:
        with Annotator(packaged, detect=True, detect_dir=str(tmp_path)) as annotate:
            got = [annotate(p) for p in capture]
    finally:
        capture.close()
    assert {a.detection for a in got} == {""}
    assert got[-1].service_port == 443
