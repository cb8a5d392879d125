"""The default backend: Wireshark's dumpcap as a child writing pcapng to a pipe.

``dumpcap -i IFACE... [-f BPF] -s SNAPLEN -n -w -`` captures (and filters in
the kernel) with its own privileges; portwatch reads the stream with the
native streaming reader, so the daemon itself needs no capture rights.

Drops: dumpcap writes its interface statistics (pcapng ISBs, and the line
``Packets received/dropped on interface 'X': R/D (...)`` on standard error)
only when it stops, and ``dumpcap -S`` reports the counters of handles it
opens itself, not those of the capturing child. So portwatch reads the drops
that dumpcap reports when a run ends (restart, reload, stop) and, while it
runs, the interface's own ``rx_dropped`` counter from
``/sys/class/net/IFACE/statistics`` (packets the kernel dropped on that
interface). Both are added to ``portwatch_capture_packets_dropped_total``.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from portwatch.capture.batch import PacketBatch
from portwatch.capture.files.reader import open_capture
from portwatch.capture.live.source import sysfs_counter
from portwatch.errors import BackendError, CaptureError

__all__ = ["DumpcapSource", "dumpcap_argv", "parse_drop_lines"]

Popen = Callable[..., "subprocess.Popen[bytes]"]

_DROP_LINE = re.compile(r"Packets received/dropped on interface '(.*)': (\d+)/(\d+)")


def dumpcap_argv(command: Sequence[str], interfaces: Sequence[str], bpf_filter: str,
                 snaplen: int, buffer_mib: int | None = None) -> list[str]:
    """The child's command line: pcapng (``-n``) to standard output (``-w -``).

    ``-B`` follows each ``-i``: dumpcap applies it per interface.
    """
    argv = [*command]
    for name in interfaces:
        argv += ["-i", name]
        if buffer_mib is not None:
            argv += ["-B", str(buffer_mib)]
    if bpf_filter:
        argv += ["-f", bpf_filter]
    return [*argv, "-s", str(snaplen), "-n", "-w", "-"]


def parse_drop_lines(lines: Sequence[str], interfaces: Sequence[str]) -> dict[str, int]:
    """Drops per interface from dumpcap's closing statistics lines.

    dumpcap names an interface by its description (``Loopback: lo``); a
    configured name that the description ends with, or the only interface,
    gets the count.
    """
    out: dict[str, int] = {}
    for line in lines:
        m = _DROP_LINE.search(line)
        if not m:
            continue
        label = m[1]
        name = next((i for i in interfaces if label == i or label.endswith(f": {i}")),
                    interfaces[0] if len(interfaces) == 1 else label)
        out[name] = out.get(name, 0) + int(m[3])
    return out


class DumpcapSource:
    """One dumpcap child per run of ``batches()``."""

    backend = "dumpcap"
    finite = False

    def __init__(
        self,
        interfaces: Sequence[str],
        bpf_filter: str = "",
        snaplen: int = 128,
        *,
        buffer_mib: int | None = None,
        command: Sequence[str] = ("dumpcap",),
        popen: Popen = subprocess.Popen,
        sys_root: Path = Path("/sys"),
    ) -> None:
        self.interfaces = tuple(interfaces)
        self.argv = dumpcap_argv(command, interfaces, bpf_filter, snaplen, buffer_mib)
        self._popen = popen
        self._sys_root = sys_root
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: deque[str] = deque(maxlen=50)
        self._names: list[str] = list(interfaces)
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._final: dict[str, int] = {}
        #: Which walk frames dumpcap's pcapng stream ("compiled" when ``_core`` is built).
        self.framing: str | None = None
        self._sys_start: dict[str, int] = {}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def batches(self) -> Iterator[PacketBatch]:
        self._closing.clear()
        self._stderr.clear()
        self._final = {}
        self._sys_start = {i: sysfs_counter(i, "rx_dropped", self._sys_root) or 0
                           for i in self.interfaces}
        try:
            proc = self._popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        except OSError as exc:
            raise BackendError(f"cannot run {self.argv[0]}: {exc.strerror}") from None
        with self._lock:
            self._proc = proc
        assert proc.stdout is not None
        assert proc.stderr is not None
        drain = threading.Thread(target=self._drain, args=(proc.stderr,), daemon=True,
                                 name="dumpcap-stderr")
        drain.start()
        try:
            reader = open_capture(cast(BinaryIO, proc.stdout), "dumpcap")
            self.framing = reader.framing
            for batch in reader:
                self._names = [i.name or f"if{n}" for n, i in enumerate(reader.interfaces)]
                yield batch
        except CaptureError as exc:
            if not self._closing.is_set():
                raise BackendError(self._death(proc, f"unreadable output ({exc.message})")) \
                    from None
        finally:
            self._stop(proc)
            drain.join(timeout=2)
            if not drain.is_alive():  # closing it under a running readline() races
                proc.stderr.close()
            self._final = parse_drop_lines(list(self._stderr), self.interfaces)
        if not self._closing.is_set():
            raise BackendError(self._death(proc, "stopped"))

    def _death(self, proc: subprocess.Popen[bytes], what: str) -> str:
        code = proc.poll()
        last = next((line for line in reversed(self._stderr)
                     if line and not line.startswith(("Packets:", "File:", "Capturing on"))), "")
        status = f"exit status {code}" if code is not None else "still running"
        return f"dumpcap {what} ({status}){': ' + last if last else ''}"

    def _drain(self, stream: IO[bytes]) -> None:
        """Keep reading dumpcap's stderr so it never blocks on a full pipe."""
        for raw in iter(stream.readline, b""):
            for part in raw.decode("utf-8", "replace").replace("\r", "\n").split("\n"):
                if part.strip():
                    self._stderr.append(part.strip())

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()  # dumpcap writes its statistics and exits on SIGTERM
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:  # stderr is closed once the drain thread has finished
            proc.stdout.close()

    def interface_names(self) -> Sequence[str]:
        return self._names

    def dropped(self) -> dict[str, int]:
        """Kernel drops on each interface since this run began, plus dumpcap's final count."""
        out: dict[str, int] = {}
        for name in self.interfaces:
            now = sysfs_counter(name, "rx_dropped", self._sys_root)
            out[name] = max(0, (now or 0) - self._sys_start.get(name, 0)) if now is not None \
                else 0
        for name, n in self._final.items():
            out[name] = out.get(name, 0) + n
        return out

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def kill_child(self) -> None:
        """For tests and operators: make the child die as a crash would."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()

    def describe(self) -> dict[str, Any]:
        return {"argv": self.argv}
