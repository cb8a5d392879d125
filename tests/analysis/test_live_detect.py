"""``LiveSummary(detect=True)``: nDPI's verdict per service in the live view (``top --detect``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from helpers.ndpi import HAVE_NDPI, needs_ndpi
from portwatch.analysis.detect import INSTALL_HINT
from portwatch.analysis.live import LiveSnapshot, LiveSummary
from portwatch.capture.files.reader import read_capture_path
from portwatch.errors import UsageError
from portwatch.porttable.table import PortTable

DETECT = Path(__file__).resolve().parents[2] / "pcaps" / "detect.pcap"



def _play(live: LiveSummary, path: Path) -> None:
    with read_capture_path(str(path)) as reader:
        for batch in reader:
            live.feed(batch, 0.5)


@pytest.fixture(scope="module")
def detected(packaged: PortTable, tmp_path_factory: pytest.TempPathFactory) -> LiveSnapshot:
    if not HAVE_NDPI:
        pytest.skip("nfstream (nDPI) is not installed")
    live = LiveSummary(packaged, detect=True,
                       detect_dir=str(tmp_path_factory.mktemp("detect")))
    _play(live, DETECT)
    live.close()
    return live.snapshot(1.0)


@needs_ndpi
def test_each_service_shows_the_verdict_of_its_flows(detected: LiveSnapshot) -> None:
    by_label = {s.label: s for s in detected.services}
    assert detected.detecting
    assert by_label["tcp/22"].detection == "confirmed"  # ssh on its port
    assert by_label["tcp/80"].detection == "confirmed"  # http
    assert by_label["udp/53"].detection == "confirmed"  # dns
    assert by_label["tcp/443"].detection == "mismatch: ssh"  # tls flows too, ssh is news
    assert by_label["tcp/53"].detection == "mismatch: http"
    assert by_label["tcp/8806"].detection == "mismatch: tls"  # unassigned, carries tls
    assert by_label["tcp/9100"].detection == "unconfirmed"  # unknown bytes


@needs_ndpi
def test_a_mismatch_flags_the_service_with_both_sides(detected: LiveSnapshot) -> None:
    flagged = {f.label: f for f in detected.flagged}
    assert flagged["tcp/443"].why == "tcp/443 https (assigned) carries ssh"
    assert flagged["tcp/53"].why == "tcp/53 domain (assigned) carries http"
    assert flagged["tcp/8806"].why == ("tcp/8806 is unassigned in the IANA registry; "
                                       "tcp/8806 (unassigned) carries tls")
    assert "tcp/22" not in flagged
    assert "tcp/9100" not in flagged  # unconfirmed is never a mismatch
    assert {s.label for s in detected.services if s.flagged} == set(flagged)


@needs_ndpi
def test_verdicts_come_while_the_capture_is_still_running(
    packaged: PortTable, tmp_path: Path,
) -> None:
    """nDPI reports a flow once it is done with it, or once it has been silent for 10 s of
    packet time: no need to close the summary (or end the capture) first."""
    import time

    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    from portwatch.capture.batch import PacketBatch

    live = LiveSummary(packaged, detect=True, detect_dir=str(tmp_path))
    try:
        _play(live, DETECT)
        later = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                      / IP(src="192.0.2.1", dst="198.51.100.2") / UDP(sport=40000, dport=123)
                      / (b"\x23" + bytes(47)))
        last_ns = 1_700_000_000_200_000_000  # after detect.pcap's last packet
        live.feed(PacketBatch.from_packets([later], 1, timestamps_ns=[last_ns + 11 * 10**9]),
                  0.6)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            labels = {s.label: s.detection for s in live.snapshot(1.0).services}
            if labels.get("tcp/22") == "confirmed":
                break
            time.sleep(0.05)
        assert labels["tcp/22"] == "confirmed"
    finally:
        live.close()


@needs_ndpi
def test_close_stops_ndpi_and_removes_its_private_directory(
    packaged: PortTable, tmp_path: Path,
) -> None:
    live = LiveSummary(packaged, detect=True, detect_dir=str(tmp_path))
    _play(live, DETECT)
    assert len(os.listdir(tmp_path)) == 1  # the private directory with its FIFO
    live.close()
    live.close()  # twice is harmless
    assert os.listdir(tmp_path) == []


def test_without_detection_nothing_is_judged_and_no_column_is_asked_for(
    packaged: PortTable,
) -> None:
    live = LiveSummary(packaged)
    _play(live, DETECT)
    snap = live.snapshot(1.0)
    assert not snap.detecting
    assert {s.detection for s in snap.services} == {""}
    assert "tcp/443" not in {f.label for f in snap.flagged}


def test_detection_without_ndpi_is_a_usage_error_with_the_install_hint(
    packaged: PortTable, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "_lib_engine", None)
    with pytest.raises(UsageError, match=r"pip install 'portwatch\[detect\]'") as caught:
        LiveSummary(packaged, detect=True)
    assert str(caught.value) == INSTALL_HINT
