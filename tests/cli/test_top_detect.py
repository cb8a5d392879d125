"""``portwatch top --detect``: nDPI's verdict on the screen, and its usage errors."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.ndpi import HAVE_NDPI, needs_ndpi
from portwatch._terminal import display_width
from portwatch.analysis.detect import INSTALL_HINT
from portwatch.analysis.live import LiveSnapshot, LiveSummary
from portwatch.capture.files.reader import read_capture_path
from portwatch.cli import main
from portwatch.cli.top import render_screen, render_summary
from portwatch.porttable.table import PortTable

REPO = Path(__file__).resolve().parents[2]
DETECT = REPO / "pcaps" / "detect.pcap"
TMUX = shutil.which("tmux")
#: Not a speed claim: how long a screen may take to show up on a loaded machine.
PATIENCE_S = 60.0



@pytest.fixture(scope="module")
def snapshot(table: PortTable, tmp_path_factory: pytest.TempPathFactory) -> LiveSnapshot:
    if not HAVE_NDPI:
        pytest.skip("nfstream (nDPI) is not installed")
    live = LiveSummary(table, detect=True, detect_dir=str(tmp_path_factory.mktemp("detect")))
    with read_capture_path(str(DETECT)) as reader:
        for batch in reader:
            live.feed(batch, 0.5)
    live.close()
    return live.snapshot(1.0)


@needs_ndpi
def test_the_screen_has_a_detected_column_and_flags_the_mismatches(
    snapshot: LiveSnapshot,
) -> None:
    lines = render_screen(snapshot, width=200, height=40, color=False, title="t")
    text = "\n".join(lines)
    header = next(line for line in lines if line.startswith("PORT") and "DETECTED" in line)
    assert header.split()[:4] == ["PORT", "SERVICE", "STATUS", "DETECTED"]
    row_22 = next(line for line in lines if line.startswith("tcp/22 "))
    assert "confirmed" in row_22
    flagged = text.split("FLAGGED PORTS", 1)[1]
    assert "tcp/443 https (assigned) carries ssh" in flagged
    assert "tcp/53 domain (assigned) carries http" in flagged
    assert "tcp/22 " not in flagged


@needs_ndpi
@pytest.mark.parametrize(("width", "height"), [(80, 24), (40, 10), (200, 50)])
def test_the_detect_screen_still_fits_the_terminal(
    snapshot: LiveSnapshot, width: int, height: int,
) -> None:
    lines = render_screen(snapshot, width=width, height=height, color=False, title="t")
    assert len(lines) == height
    assert all(display_width(line) <= width for line in lines)


@needs_ndpi
def test_the_stream_summary_carries_the_column_too(snapshot: LiveSnapshot) -> None:
    text = render_summary(snapshot, width=None, color=False, limit=20)
    assert "DETECTED" in text
    assert "mismatch: ssh" in text


@pytest.fixture
def _registry(official_csv: Path, warm_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTWATCH_REGISTRY", str(official_csv))
    monkeypatch.setenv("PORTWATCH_CACHE_DIR", str(warm_cache))


@pytest.mark.usefixtures("_registry")
def test_top_detect_without_ndpi_exits_2_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "nfstream", None)
    monkeypatch.setitem(sys.modules, "_lib_engine", None)
    assert main(["top", "--detect", "--replay", str(DETECT)]) == 2
    err = capsys.readouterr().err
    assert INSTALL_HINT in err
    assert err.count("\n") == 1


@needs_ndpi
@pytest.mark.usefixtures("_registry")
@pytest.mark.parametrize(("argv", "message"), [
    (["-i", "lo", "--backend", "scapy"], "--detect needs a backend that hands over payloads"),
    (["-i", "lo", "--snaplen", "128"], "--detect needs --snaplen >= 512"),
])
def test_top_detect_refuses_a_capture_without_payload(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["top", "--detect", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


# -- the real screen, in tmux ---------------------------------------------------------------------

@pytest.fixture
def tmux_base(tmp_path: Path) -> Iterator[list[str]]:
    if TMUX is None:
        pytest.skip("tmux is not installed (Debian package tmux)")
    base = [TMUX, "-L", f"portwatch-test-detect-{tmp_path.name}", "-f", "/dev/null"]
    try:
        yield base
    finally:
        subprocess.run([*base, "kill-server"], capture_output=True, check=False,
                       timeout=PATIENCE_S)


def _top_command(env: dict[str, str], status: Path, source: list[str]) -> str:
    return " ".join(["env", *(f"{k}={shlex.quote(v)}" for k, v in env.items()),
                     shlex.quote(sys.executable), "-m", "portwatch", "top", "--detect", *source,
                     "--refresh", "0.2", ";", "echo", "$?", ">", shlex.quote(str(status))])


def _wait_for(tmux_base: list[str], *needles: str) -> str:
    give_up = time.monotonic() + PATIENCE_S
    while True:
        text = subprocess.run([*tmux_base, "capture-pane", "-p", "-J", "-t", "top"],
                              capture_output=True, text=True, check=True,
                              timeout=PATIENCE_S).stdout
        if all(n in text for n in needles):
            return text
        assert time.monotonic() < give_up, f"never showed {needles}:\n{text}"
        time.sleep(0.2)


def _quit(tmux_base: list[str], status: Path) -> str:
    subprocess.run([*tmux_base, "send-keys", "-t", "top", "q"], check=True, timeout=PATIENCE_S)
    give_up = time.monotonic() + PATIENCE_S
    while not status.exists() or not status.read_text().strip():
        assert time.monotonic() < give_up, "top did not exit on q"
        time.sleep(0.1)
    return status.read_text().strip()


@pytest.fixture
def top_env(tmp_path: Path, official_csv: Path, warm_cache: Path) -> dict[str, str]:
    return {"PORTWATCH_REGISTRY": str(official_csv), "PORTWATCH_CACHE_DIR": str(warm_cache),
            "PYTHONPATH": str(REPO / "src"), "TERM": "xterm-256color", "TMPDIR": str(tmp_path)}


def _no_fifo_directory_left(tmp_path: Path) -> None:
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("portwatch-detect-")]
    assert leftovers == []  # nDPI's private FIFO directory went with top


@needs_ndpi
def test_top_detect_replay_in_tmux_shows_the_verdicts_and_q_exits_0(
    tmux_base: list[str], tmp_path: Path, top_env: dict[str, str],
) -> None:
    status = tmp_path / "status"
    top = _top_command(top_env, status, ["--replay", shlex.quote(str(DETECT)), "--speed", "0"])
    subprocess.run([*tmux_base, "new-session", "-d", "-s", "top", "-x", "160", "-y", "30",
                    f"{top}; sleep 600"], check=True, timeout=PATIENCE_S)
    text = _wait_for(tmux_base, "capture finished", "DETECTED", "mismatch: ssh",
                     "tcp/443 https (assigned) carries ssh", "confirmed")
    assert all(display_width(line) <= 160 for line in text.split("\n"))
    assert _quit(tmux_base, status) == "0"
    _no_fifo_directory_left(tmp_path)


@needs_ndpi
def test_top_detect_on_standard_input_judges_flows_while_the_stream_is_open(
    tmux_base: list[str], tmp_path: Path, top_env: dict[str, str],
) -> None:
    """Flows nDPI is done with show at once; the rest when the stream ends."""
    import os

    fifo = tmp_path / "capture.fifo"
    os.mkfifo(fifo)
    status = tmp_path / "status"
    top = _top_command(top_env, status, ["-"])
    subprocess.run([*tmux_base, "new-session", "-d", "-s", "top", "-x", "160", "-y", "30",
                    f"({top}) < {shlex.quote(str(fifo))}; sleep 600"], check=True,
                   timeout=PATIENCE_S)
    with fifo.open("wb") as stream:  # opens once top's shell opened the reading end
        stream.write(DETECT.read_bytes())
        stream.flush()
        text = _wait_for(tmux_base, "DETECTED", "mismatch: http", "confirmed")
        assert "capture finished" not in text
    _wait_for(tmux_base, "capture finished", "mismatch: ssh")
    assert _quit(tmux_base, status) == "0"
    _no_fifo_directory_left(tmp_path)
