"""portwatch.annotate from Python: scapy and pyshark packets in, one-line answers out."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from portwatch.annotate import Annotation, Annotator
from portwatch.porttable.table import PortTable

MACS: dict[str, Any] = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
CLIENT, SERVER = "192.0.2.10", "198.51.100.20"


def web_exchange() -> list[Any]:
    scapy_inet = pytest.importorskip("scapy.layers.inet")
    from scapy.layers.l2 import Ether

    ip, tcp = scapy_inet.IP, scapy_inet.TCP
    out = Ether(**MACS) / ip(src=CLIENT, dst=SERVER)
    back = Ether(**MACS) / ip(src=SERVER, dst=CLIENT)
    return [
        out / tcp(sport=49200, dport=80, flags="S"),
        back / tcp(sport=80, dport=49200, flags="SA"),
        out / tcp(sport=49200, dport=80, flags="PA") / b"GET / HTTP/1.1\r\n\r\n",
    ]


def udp(sport: int, dport: int) -> Any:
    scapy_inet = pytest.importorskip("scapy.layers.inet")
    from scapy.layers.l2 import Ether

    return Ether(**MACS) / scapy_inet.IP(src=CLIENT, dst=SERVER) / scapy_inet.UDP(
        sport=sport, dport=dport)


def test_handshake_names_the_service_for_every_packet_of_the_flow(table: PortTable) -> None:
    annotate = Annotator(table)
    answers = [annotate(p) for p in web_exchange()]
    assert [str(a) for a in answers] == ["portwatch: tcp/80 http (assigned)"] * 3
    assert {(a.service_port, a.client_port, a.method) for a in answers} == {
        (80, 49200, "handshake")}
    assert not any(a.flagged for a in answers)


def test_syn_ack_alone_decides_the_service_side_even_from_a_high_port(
        table: PortTable) -> None:
    scapy_inet = pytest.importorskip("scapy.layers.inet")
    from scapy.layers.l2 import Ether

    annotate = Annotator(table)
    pkt = Ether(**MACS) / scapy_inet.IP(src=SERVER, dst=CLIENT) / scapy_inet.TCP(
        sport=60001, dport=80, flags="SA")
    answer = annotate(pkt)
    assert (answer.service_port, answer.client_port, answer.method) == (60001, 80, "handshake")


def test_a_late_syn_ack_changes_the_answer_for_the_rest_of_the_flow(
        table: PortTable) -> None:
    scapy_inet = pytest.importorskip("scapy.layers.inet")
    from scapy.layers.l2 import Ether

    annotate = Annotator(table)
    ip_out = Ether(**MACS) / scapy_inet.IP(src=CLIENT, dst=SERVER)
    mid = ip_out / scapy_inet.TCP(sport=60001, dport=80, flags="A")
    before = annotate(mid)
    assert (before.service_port, before.method) == (80, "registry")
    # the same flow: its 60001 side answers a SYN, so 60001 is the service
    synack = ip_out / scapy_inet.TCP(sport=60001, dport=80, flags="SA")
    after = [annotate(synack), annotate(mid)]
    assert {(a.service_port, a.method) for a in after} == {(60001, "handshake")}


def test_unassigned_port_with_reported_unauthorized_use_is_flagged(
        table: PortTable) -> None:
    answer = Annotator(table)(udp(51000, 44515))
    assert answer.flagged
    assert answer.status == "unassigned"
    assert answer.flags == ("unassigned", "unauthorized-use")
    assert answer.reasons == (
        "udp/44515 is unassigned in the IANA registry",
        "unauthorized use reported on udp/44515: Known UNAUTHORIZED USE: Ports 44515 & 44516")
    assert str(answer) == ("portwatch: FLAG udp/44515 (unassigned): " + "; ".join(answer.reasons))


def test_flow_between_dynamic_ports_is_flagged_with_lower_severity(
        table: PortTable) -> None:
    answer = Annotator(table)(udp(50000, 60000))
    assert answer.status == "dynamic"
    assert answer.flags == ("dynamic",)
    assert answer.method == "lower-port"
    assert answer.reasons == (
        "both ports of the flow are in the dynamic range 49152-65535 (udp/50000)",)
    assert str(answer) == f"portwatch: FLAG udp/50000 (dynamic): {answer.reasons[0]}"


def test_packets_without_ports_say_why(table: PortTable) -> None:
    scapy_l2 = pytest.importorskip("scapy.layers.l2")
    from scapy.layers.inet import ICMP, IP

    annotate = Annotator(table)
    arp = annotate(scapy_l2.Ether(**MACS) / scapy_l2.ARP())
    ping = annotate(scapy_l2.Ether(**MACS) / IP(src=CLIENT, dst=SERVER) / ICMP())
    assert (arp.transport, arp.status, str(arp)) == ("", "non-ip", "portwatch: non-ip (no ports)")
    assert (ping.transport, ping.status) == ("", "icmp")


def test_annotation_is_a_frozen_record(table: PortTable) -> None:
    answer = Annotator(table)(udp(51000, 53))
    assert isinstance(answer, Annotation)
    with pytest.raises(AttributeError):
        answer.status = "reserved"  # type: ignore[misc]


def test_flows_beyond_the_limit_are_forgotten(table: PortTable) -> None:
    annotate = Annotator(table, max_flows=2)
    for sport in range(51000, 51010):
        annotate(udp(sport, 53))
    assert len(annotate.analyzer.flows) <= 2


def test_other_objects_are_refused_with_their_type(table: PortTable) -> None:
    with pytest.raises(TypeError, match="bytes"):
        Annotator(table)(b"\x00" * 60)


def test_pyshark_packets_get_the_same_answers_as_scapy_packets(
        table: PortTable, tmp_path: Path) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    pyshark = pytest.importorskip("pyshark")
    from scapy.utils import wrpcap

    from portwatch.decode.pyshark import OVERRIDE_PREFS

    packets = [*web_exchange(), udp(51000, 44515), udp(50000, 60000)]
    for i, p in enumerate(packets):
        p.time = 1_700_000_000 + i
    path = tmp_path / "small.pcap"
    wrpcap(str(path), packets)
    expected = [str(a) for a in map(Annotator(table), packets)]
    annotate = Annotator(table)
    capture = pyshark.FileCapture(str(path), keep_packets=False, override_prefs=OVERRIDE_PREFS)
    try:
        got = [str(annotate(p)) for p in capture]
    finally:
        capture.close()
    assert got == expected
    assert got[0] == "portwatch: tcp/80 http (assigned)"


def test_portwatch_annotate_is_callable_and_import_stays_light(tmp_path: Path) -> None:
    """``import portwatch`` loads neither scapy nor numpy; ``portwatch.annotate`` calls."""
    code = (
        "import sys, portwatch\n"
        "assert 'scapy' not in sys.modules and 'numpy' not in sys.modules\n"
        "import portwatch.annotate\n"
        "assert callable(portwatch.annotate)\n"
        "assert 'scapy' not in sys.modules and 'pyshark' not in sys.modules\n"
        "print('ok')\n"
    )
    src = str(Path(__file__).resolve().parent.parent / "src")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": src, "PORTWATCH_CACHE_DIR": str(tmp_path)},
                         check=False)
    assert run.stdout.strip() == "ok", run.stderr


def test_default_annotate_loads_the_registry_it_is_pointed_at(
        official_csv: Path, tmp_path: Path) -> None:
    pytest.importorskip("scapy")
    code = (
        "import portwatch\n"
        "from scapy.layers.l2 import Ether\n"
        "from scapy.layers.inet import IP, TCP\n"
        f"p = Ether(src='02:00:00:00:00:01', dst='02:00:00:00:00:02') / IP(src='{CLIENT}', "
        f"dst='{SERVER}') / TCP(sport=49200, dport=443, flags='S')\n"
        "print(portwatch.annotate(p))\n"
    )
    src = str(Path(__file__).resolve().parent.parent / "src")
    env = {"PYTHONPATH": src, "PORTWATCH_CACHE_DIR": str(tmp_path),
           "PORTWATCH_REGISTRY": str(official_csv), "HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=False)
    assert run.stdout.strip() == "portwatch: tcp/443 https (assigned)", run.stderr
