"""``portwatch top`` and ``analyze --interval``: the live views, on a screen and on a stream."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from portwatch._terminal import display_width
from portwatch.analysis.live import LiveSnapshot, LiveSummary
from portwatch.analysis.run import IntervalRequest, analyze_paths
from portwatch.capture.files.reader import read_capture_path
from portwatch.cli import main
from portwatch.cli.top import format_bytes, format_rate, render_screen, render_summary
from portwatch.porttable.table import PortTable

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "pcaps" / "sample.pcapng"
TMUX = shutil.which("tmux")
#: Not a speed claim: how long a screen may take to show up on a loaded machine.
PATIENCE_S = 60.0


@pytest.fixture(scope="module")
def sample_snapshot(table: PortTable) -> LiveSnapshot:
    if not SAMPLE.exists():
        pytest.skip("pcaps/sample.pcapng is missing: run `make pcaps`")
    live = LiveSummary(table, window_s=10.0)
    with read_capture_path(str(SAMPLE)) as reader:
        for batch in reader:
            live.feed(batch, 0.5)
    return live.snapshot(1.0)


@pytest.mark.parametrize(("width", "height"), [(80, 24), (200, 50), (40, 10), (120, 6)])
def test_screen_fits_the_terminal_exactly(
    sample_snapshot: LiveSnapshot, width: int, height: int,
) -> None:
    lines = render_screen(sample_snapshot, width=width, height=height, color=False,
                          title="portwatch top - test", status="capture finished")
    assert len(lines) == height
    assert all(display_width(line) <= width for line in lines)
    assert lines[-1].startswith("q quit")


def test_screen_shows_services_by_rate_and_flagged_ports(sample_snapshot: LiveSnapshot) -> None:
    text = "\n".join(render_screen(sample_snapshot, width=200, height=50, color=False,
                                   title="t"))
    assert "tcp/80" in text
    assert "http" in text
    flagged = text.split("FLAGGED PORTS", 1)[1]
    for port in ("tcp/44515", "tcp/8807", "udp/8806"):
        assert port in flagged
    assert "tcp/80 " not in flagged
    assert "unassigned in the IANA registry" in flagged


def test_flagged_ports_keep_rows_on_a_short_screen(sample_snapshot: LiveSnapshot) -> None:
    lines = render_screen(sample_snapshot, width=80, height=16, color=False, title="t")
    flagged_at = next(i for i, line in enumerate(lines) if line.startswith("FLAGGED PORTS"))
    assert any(line.startswith("tcp/") or line.startswith("udp/")
               for line in lines[flagged_at + 2 :])


def test_colour_marks_statuses(sample_snapshot: LiveSnapshot) -> None:
    text = "\n".join(render_screen(sample_snapshot, width=200, height=50, color=True,
                                   title="t"))
    assert "\x1b[31munassigned" in text
    assert "\x1b[32massigned" in text


@pytest.mark.parametrize(("value", "rate", "size"), [
    (0, "0", "0 B"), (2.5, "2.5", "2 B"), (950, "950", "950 B"), (12_300, "12.3k", "12.3 kB"),
    (4_500_000, "4.5M", "4.5 MB"),
])
def test_numbers_are_short(value: float, rate: str, size: str) -> None:
    assert (format_rate(value), format_bytes(value)) == (rate, size)


def test_summary_for_a_pipe_is_not_shortened(sample_snapshot: LiveSnapshot) -> None:
    text = render_summary(sample_snapshot, width=None, color=False)
    assert "Known UNAUTHORIZED USE: Ports 44515 & 44516" in text
    assert text.endswith("\n\n")


# -- usage errors -------------------------------------------------------------------------------


@pytest.fixture
def _registry(official_csv: Path, warm_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTWATCH_REGISTRY", str(official_csv))
    monkeypatch.setenv("PORTWATCH_CACHE_DIR", str(warm_cache))


@pytest.mark.usefixtures("_registry")
@pytest.mark.parametrize(("argv", "message"), [
    (["top"], "exactly one of"),
    (["top", "-i", "lo", "--replay", "x.pcap"], "exactly one of"),
    (["top", "--window", "0", "-"], "--window"),
    (["analyze", "--interval", "0", "x.pcap"], "--interval"),
])
def test_bad_top_usage_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_top_without_a_terminal_says_what_to_use_instead(
    official_csv: Path, warm_cache: Path,
) -> None:
    env = {**os.environ, "PORTWATCH_REGISTRY": str(official_csv),
           "PORTWATCH_CACHE_DIR": str(warm_cache), "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(  # a new session has no controlling terminal
        [sys.executable, "-m", "portwatch", "top", "--replay", str(SAMPLE)],
        capture_output=True, text=True, env=env, start_new_session=True, timeout=PATIENCE_S,
        check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert "top needs a terminal" in proc.stderr
    assert "analyze --interval" in proc.stderr
    assert proc.stderr.count("\n") == 1


# -- analyze --interval ---------------------------------------------------------------------------


def test_interval_summaries_come_while_the_stream_is_still_open(table: PortTable) -> None:
    """The stream stays open until a summary arrived: it cannot come from the end."""
    got: list[LiveSnapshot] = []
    arrived = threading.Event()

    def emit(snap: LiveSnapshot) -> None:
        got.append(snap)
        if snap.packets:
            arrived.set()

    read_fd, write_fd = os.pipe()

    def writer() -> None:
        with os.fdopen(write_fd, "wb") as out:
            out.write(SAMPLE.read_bytes())
            out.flush()
            arrived.wait(PATIENCE_S)

    feeder = threading.Thread(target=writer)
    feeder.start()
    with os.fdopen(read_fd, "rb") as stream:
        result = analyze_paths(["-"], table, stdin=stream,
                               interval=IntervalRequest(0.05, emit))
    feeder.join()
    assert arrived.is_set()
    assert result.report is not None
    first = next(s for s in got if s.packets)
    assert first.packets == result.report.packets
    assert {s.label for s in first.flagged} >= {"tcp/44515", "tcp/8807", "udp/8806"}


def test_interval_cli_writes_summaries_to_stderr_and_the_report_to_stdout(
    tmp_path: Path, official_csv: Path, warm_cache: Path,
) -> None:
    env = {**os.environ, "PORTWATCH_REGISTRY": str(official_csv),
           "PORTWATCH_CACHE_DIR": str(warm_cache), "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "portwatch", "analyze", "-f", "json", "--interval", "0.05", "-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdin is not None
    assert proc.stderr is not None
    proc.stdin.write(SAMPLE.read_bytes())
    proc.stdin.flush()
    first = proc.stderr.readline()  # blocks until a summary: the stream is still open
    out, err = proc.communicate(timeout=PATIENCE_S)  # closes standard input: the end
    assert proc.returncode == 0, err
    assert b"pkt/s" in first
    assert out.startswith(b"{")
    assert b"Traceback" not in err


# -- the real screen, in tmux ---------------------------------------------------------------------


class _Tmux:
    def __init__(self, socket: str) -> None:
        assert TMUX is not None
        self.base = [TMUX, "-L", socket, "-f", "/dev/null"]

    def __call__(self, *args: str) -> str:
        return subprocess.run([*self.base, *args], capture_output=True, text=True,
                              check=True, timeout=PATIENCE_S).stdout

    def screen(self) -> list[str]:
        # -J joins wrapped lines: a wrapped row shows up as a line longer than the pane
        return self("capture-pane", "-p", "-J", "-t", "top").split("\n")

    def wait_for(self, *needles: str) -> list[str]:
        give_up = time.monotonic() + PATIENCE_S
        while True:
            lines = self.screen()
            text = "\n".join(lines)
            if all(n in text for n in needles):
                return lines
            assert time.monotonic() < give_up, f"never showed {needles}:\n{text}"
            time.sleep(0.2)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[_Tmux]:
    if TMUX is None:
        pytest.skip("tmux is not installed (Debian package tmux)")
    if not SAMPLE.exists():
        pytest.skip("pcaps/sample.pcapng is missing: run `make pcaps`")
    session = _Tmux(f"portwatch-test-{os.getpid()}-{tmp_path.name}")
    try:
        yield session
    finally:
        subprocess.run([*session.base, "kill-server"], capture_output=True, check=False,
                       timeout=PATIENCE_S)


@pytest.fixture
def top_env(official_csv: Path, warm_cache: Path) -> dict[str, str]:
    return {"PORTWATCH_REGISTRY": str(official_csv), "PORTWATCH_CACHE_DIR": str(warm_cache),
            "PYTHONPATH": str(REPO / "src"), "TERM": "xterm-256color"}


def _start(tmux: _Tmux, tmp_path: Path, env: dict[str, str], width: int, height: int,
           *, stdin: bool = False) -> Path:
    status = tmp_path / "status"
    source = ["-"] if stdin else ["--replay", shlex.quote(str(SAMPLE)), "--speed", "0"]
    top = " ".join([
        "env", *(f"{k}={shlex.quote(v)}" for k, v in env.items()),
        shlex.quote(sys.executable), "-m", "portwatch", "top", *source, "--refresh", "0.2",
        ";", "echo", "$?", ">", shlex.quote(str(status)),
    ])
    # a stream that stays open after the sample: top must show it before it ends
    command = (f"(cat {shlex.quote(str(SAMPLE))}; sleep 600) | ({top})" if stdin
               else f"{top}; sleep 600")
    tmux("new-session", "-d", "-s", "top", "-x", str(width), "-y", str(height), command)
    return status


def _exit_status(status: Path) -> str:
    give_up = time.monotonic() + PATIENCE_S
    while not status.exists() or not status.read_text().strip():
        assert time.monotonic() < give_up, "top did not exit on q"
        time.sleep(0.1)
    return status.read_text().strip()


@pytest.mark.parametrize(("width", "height"), [(80, 24), (200, 50)])
def test_top_in_tmux_shows_services_and_flagged_ports_without_wrapping_and_q_exits_0(
    tmux: _Tmux, tmp_path: Path, top_env: dict[str, str], width: int, height: int,
) -> None:
    status = _start(tmux, tmp_path, top_env, width, height)
    lines = tmux.wait_for("capture finished", "FLAGGED PORTS (5)", "tcp/44515")
    text = "\n".join(lines)
    assert "tcp/80" in text
    assert "http" in text
    for port in ("tcp/8807", "udp/8806"):
        assert port in text.split("FLAGGED PORTS", 1)[1]
    assert max(display_width(line) for line in lines) <= width
    assert len([line for line in lines if line]) <= height
    tmux("send-keys", "-t", "top", "q")
    assert _exit_status(status) == "0"


def test_top_refits_when_the_terminal_is_resized(
    tmux: _Tmux, tmp_path: Path, top_env: dict[str, str],
) -> None:
    status = _start(tmux, tmp_path, top_env, 200, 50)
    wide = tmux.wait_for("capture finished", "BYTES/S")
    assert any("FLOWS" in line for line in wide)
    tmux("resize-window", "-t", "top", "-x", "60", "-y", "20")
    give_up = time.monotonic() + PATIENCE_S
    while True:
        lines = tmux.screen()
        if max(display_width(line) for line in lines) <= 60 and any(
                line.startswith("q quit") for line in lines):
            break
        assert time.monotonic() < give_up, "\n".join(lines)
        time.sleep(0.2)
    assert not any("FLOWS" in line for line in lines)  # dropped to fit, not wrapped
    tmux("send-keys", "-t", "top", "q")
    assert _exit_status(status) == "0"


def test_top_reads_a_capture_stream_on_standard_input_and_q_exits_0(
    tmux: _Tmux, tmp_path: Path, top_env: dict[str, str],
) -> None:
    status = _start(tmux, tmp_path, top_env, 100, 30, stdin=True)
    lines = tmux.wait_for("standard input", "FLAGGED PORTS (5)", "tcp/44515")
    assert "capture finished" not in "\n".join(lines)  # the stream is still open
    tmux("send-keys", "-t", "top", "q")
    assert _exit_status(status) == "0"
