"""The dumpcap backend against a stand-in child: argv, streaming, final drop counts."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from portwatch.capture.files.reader import COMPILED, open_capture
from portwatch.capture.live.dumpcap import DumpcapSource, dumpcap_argv, parse_drop_lines
from portwatch.errors import BackendError

SAMPLE = Path(__file__).resolve().parents[2] / "pcaps" / "sample.pcapng"


def test_argv_gives_each_interface_its_buffer_and_writes_pcapng_to_stdout() -> None:
    argv = dumpcap_argv(["dumpcap"], ["eth0", "eth1"], "udp", 128, 32)
    assert argv == ["dumpcap", "-i", "eth0", "-B", "32", "-i", "eth1", "-B", "32",
                    "-f", "udp", "-s", "128", "-n", "-w", "-"]
    assert "-B" not in dumpcap_argv(["dumpcap"], ["lo"], "", 128)


def test_drop_lines_are_credited_to_the_configured_interface() -> None:
    lines = ["Capturing on 'Loopback: lo'",
             "Packets received/dropped on interface 'Loopback: lo': 120/7 (pcap:7/dumpcap:0)",
             "Packets received/dropped on interface 'eth1': 5/1 (pcap:1/dumpcap:0)"]
    assert parse_drop_lines(lines, ["lo", "eth1"]) == {"lo": 7, "eth1": 1}
    assert parse_drop_lines(lines[:2], ["wlan0"]) == {"wlan0": 7}


def _fake_dumpcap(tmp_path: Path, *, exit_early: bool = False) -> tuple[str, ...]:
    """A child that streams the sample capture, then waits for SIGTERM like dumpcap."""
    script = tmp_path / "fake_dumpcap.py"
    script.write_text(textwrap.dedent(f"""
        import signal, sys, time
        def stop(*_):
            sys.stderr.write("Packets received/dropped on interface 'Loopback: lo': "
                             "40/3 (pcap:3/dumpcap:0/flushed:0/ps_ifdrop:0) (7.0%)\\n")
            sys.stderr.flush()
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        sys.stdout.buffer.write(open({str(SAMPLE)!r}, "rb").read())
        sys.stdout.buffer.flush()
        if {exit_early!r}:
            sys.stderr.write("dumpcap: The capture session could not be initiated\\n")
            sys.exit(2)
        while True:
            time.sleep(0.05)
    """))
    return (sys.executable, str(script))


def test_batches_stream_from_the_child_and_its_final_drops_are_counted(
        tmp_path: Path) -> None:
    expected = sum(len(b) for b in open_capture(SAMPLE.read_bytes(), "sample.pcapng"))
    source = DumpcapSource(["lo"], command=_fake_dumpcap(tmp_path), sys_root=tmp_path)
    received = 0
    for batch in source.batches():
        received += len(batch)
        if received >= expected:
            source.close()
    assert received == expected
    assert source.dropped() == {"lo": 3}
    assert source.framing == ("compiled" if COMPILED else "numpy")


def test_a_child_that_dies_is_a_backend_error_with_its_last_words(tmp_path: Path) -> None:
    source = DumpcapSource(["lo"], command=_fake_dumpcap(tmp_path, exit_early=True),
                           sys_root=tmp_path)
    with pytest.raises(BackendError, match=r"exit status 2.*could not be initiated"):
        for _ in source.batches():
            pass


def test_a_missing_dumpcap_is_a_backend_error(tmp_path: Path) -> None:
    source = DumpcapSource(["lo"], command=(str(tmp_path / "no-such-dumpcap"),))
    with pytest.raises(BackendError, match="cannot run"):
        next(iter(source.batches()))


@pytest.mark.parametrize(("layer", "linktype"),
                         [("eth", 1), ("sll", 113), ("sll2", 276), ("null", 0), ("ip", 101),
                          ("ipv6", 101), ("something-new", 1)])
def test_pyshark_frames_get_the_link_type_of_their_first_layer(layer: str, linktype: int) -> None:
    from portwatch.capture.live.pyshark import link_type_of

    assert link_type_of(layer) == linktype


def test_pyshark_producer_gives_up_on_a_full_queue_once_the_run_is_over() -> None:
    import queue
    import threading

    from portwatch.capture.live.pyshark import PysharkSource

    source = PysharkSource(["lo"])
    frames: queue.Queue[object] = queue.Queue(1)
    frames.put("unread")
    offered = threading.Thread(target=source._offer, args=(frames, "more"), daemon=True)
    offered.start()
    offered.join(0.5)
    assert offered.is_alive()  # still trying while the run goes on
    source.close()
    offered.join(2)
    assert not offered.is_alive()
