"""The capture launcher: the one process that keeps capture privileges.

Forked by the daemon at start, before anything parses input, it keeps
CAP_NET_RAW and CAP_NET_ADMIN (from the unit's ``AmbientCapabilities``) and
does one thing: start dumpcap when the daemon asks, with an argument vector
that must have exactly the shape ``dumpcap_argv`` builds (interfaces, buffer,
filter, snaplen; pcapng to standard output), and hand back the read ends of
dumpcap's output pipes over an AF_UNIX socket (SCM_RIGHTS). It parses no
packets and no HTTP, only small JSON requests from its parent, and it starts
nothing but its fixed dumpcap path. Even a daemon taken over through a
parser bug can only ask it for another capture.

Requests (SOCK_SEQPACKET, one JSON object each): ``spawn`` an argv ->
``{pid, id}`` plus two descriptors; ``signal`` (SIGTERM or SIGKILL) a child it
started; ``poll`` a child's exit status; ``packet_socket``: a new AF_PACKET
socket (for the scapy backend), unbound and with protocol 0 so that it
receives nothing until the daemon has attached its filter and bound it, with
its receive buffer already forced to the configured size (SO_RCVBUFFORCE
needs CAP_NET_ADMIN). When the daemon's end closes, the
launcher stops its children and exits; it ignores SIGINT, SIGTERM and SIGHUP
(systemd signals the whole cgroup), and dies with the daemon (PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

from portwatch.capture.live.dumpcap import dumpcap_argv
from portwatch.errors import BackendError

__all__ = ["CaptureLauncher", "LaunchedProcess", "validate_dumpcap_argv"]

_PR_SET_PDEATHSIG = 1
_SO_RCVBUFFORCE = 33
_MAX_MESSAGE = 1 << 16
_MAX_BUFFER = 4096 << 20
_SIGNALS = frozenset({signal.SIGTERM, signal.SIGKILL})


def _check_name(name: str) -> str:
    if not name or name.startswith("-") or len(name) > 255 or "\0" in name \
            or any(c.isspace() for c in name):
        raise ValueError(f"not an interface name: {name!r}")
    return name


def _number(text: str, low: int, high: int, what: str) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"{what} {text!r}: expected {low}-{high}")
    return int(text)


def validate_dumpcap_argv(argv: Sequence[str], dumpcap: str) -> list[str]:
    """``argv`` with ``dumpcap`` as its program, if it is one ``dumpcap_argv`` could build.

    Accepted: ``dumpcap (-i NAME [-B MIB])... [-f FILTER] -s SNAPLEN -n -w -``;
    anything else raises ``ValueError``.
    """
    args = list(argv)
    if not args or args[0] != "dumpcap" or not all(isinstance(a, str) for a in args):
        raise ValueError("the program must be 'dumpcap'")
    interfaces: list[str] = []
    buffers: set[int] = set()
    i, bpf, snaplen = 1, "", None
    while i < len(args) and args[i] == "-i":
        interfaces.append(_check_name(args[i + 1] if i + 1 < len(args) else ""))
        i += 2
        if i < len(args) and args[i] == "-B":
            buffers.add(_number(args[i + 1] if i + 1 < len(args) else "", 1, 4096, "-B"))
            i += 2
    if not interfaces or len(buffers) > 1:
        raise ValueError("expected -i NAME, each with the same -B")
    if i < len(args) and args[i] == "-f":
        bpf = args[i + 1] if i + 1 < len(args) else ""
        if not bpf or "\0" in bpf or len(bpf) > _MAX_MESSAGE // 2:
            raise ValueError("bad -f filter")
        i += 2
    if i + 1 < len(args) and args[i] == "-s":
        snaplen = _number(args[i + 1], 64, 262_144, "-s")
    if snaplen is None:
        raise ValueError("expected -s SNAPLEN")
    buffer_mib = next(iter(buffers)) if buffers else None
    rebuilt = dumpcap_argv(["dumpcap"], interfaces, bpf, snaplen, buffer_mib)
    if rebuilt != args:
        raise ValueError("unexpected dumpcap arguments")
    return [dumpcap, *rebuilt[1:]]


# ---------------------------------------------------------------- launcher side

def _child_setup() -> None:
    """In dumpcap before exec: get SIGTERM when the launcher dies.

    (The launcher's signal handlers are reset to the default by exec; it
    catches signals rather than ignoring them so that they are.)
    """
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _serve(sock: socket.socket, dumpcap: str) -> None:
    children: dict[int, subprocess.Popen[bytes]] = {}
    next_id = 0
    while True:
        try:
            data, _, flags, _ = sock.recvmsg(_MAX_MESSAGE)
        except InterruptedError:
            continue
        except OSError:
            break
        if not data:
            break  # the daemon is gone or closed us
        fds: list[int] = []
        try:
            if flags & socket.MSG_TRUNC:
                raise ValueError("request too long")
            request = json.loads(data)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            op = request.get("op")
            if op == "spawn":
                argv = validate_dumpcap_argv(request.get("argv", []), dumpcap)
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE,
                                        preexec_fn=_child_setup)  # noqa: PLW1509 - one thread
                next_id += 1
                children[next_id] = proc
                assert proc.stdout is not None
                assert proc.stderr is not None
                fds = [proc.stdout.fileno(), proc.stderr.fileno()]
                reply: dict[str, Any] = {"ok": True, "id": next_id, "pid": proc.pid}
            elif op == "packet_socket":
                packet = _packet_socket(int(request.get("buffer_bytes", 0)))
                fds = [packet.detach()]
                reply = {"ok": True}
            else:
                proc = children[int(request["id"])]
                if op == "signal":
                    sig = signal.Signals(int(request["signal"]))
                    if sig not in _SIGNALS:
                        raise ValueError(f"signal {sig.name} is not allowed")
                    if proc.poll() is None:
                        proc.send_signal(sig)
                    reply = {"ok": True}
                elif op == "poll":
                    code = proc.poll()
                    if code is not None:
                        del children[int(request["id"])]
                    reply = {"ok": True, "returncode": code}
                else:
                    raise ValueError(f"unknown request {op!r}")
        except Exception as exc:  # a bad request gets an answer, never ends the launcher
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
        try:
            socket.send_fds(sock, [json.dumps(reply).encode()], fds)
        except OSError:
            break
        finally:
            if fds and "id" in reply:
                proc = children[reply["id"]]
                for stream in (proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()
            elif fds:
                os.close(fds[0])
    _stop_all(children.values())


def _packet_socket(buffer_bytes: int) -> socket.socket:
    if not 0 <= buffer_bytes <= _MAX_BUFFER:
        raise ValueError(f"buffer_bytes {buffer_bytes}: expected 0-{_MAX_BUFFER}")
    packet = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    if buffer_bytes:
        try:
            packet.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, buffer_bytes)
        except OSError:
            packet.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
    return packet


def _stop_all(children: Any) -> None:
    procs = [p for p in children if p.poll() is None]
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + 3
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ignore(signum: int, frame: object) -> None:
    """The daemon's end of the socket closing is the launcher's only reason to stop."""


def _launcher_main(sock: socket.socket, dumpcap: str) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _ignore)  # caught, not SIG_IGN: dumpcap must not inherit "ignored"
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:
        return  # the daemon died before PDEATHSIG was set
    _serve(sock, dumpcap)


# ------------------------------------------------------------------ daemon side

class CaptureLauncher:
    """The daemon's handle on the launcher process; thread-safe."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self._sock = sock
        self.pid = pid
        self._lock = threading.Lock()

    @classmethod
    def start(cls, dumpcap: str) -> CaptureLauncher:
        """Fork the launcher; call it before any thread starts."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # the launcher
            status = 0
            try:
                parent.close()
                _launcher_main(child, dumpcap)
            except BaseException:
                status = 1
            finally:
                os._exit(status)
        child.close()
        return cls(parent, pid)

    def request(self, message: dict[str, Any], fds: int = 0) -> tuple[dict[str, Any], list[int]]:
        """One request and its answer; ``BackendError`` if the launcher refuses or is gone."""
        with self._lock:
            try:
                self._sock.sendall(json.dumps(message).encode())
                data, received, _, _ = socket.recv_fds(self._sock, _MAX_MESSAGE, fds)
            except OSError as exc:
                raise BackendError(f"the capture launcher is gone: {exc.strerror}") from None
        if not data:
            raise BackendError("the capture launcher is gone (pid "
                               f"{self.pid}); restart the daemon")
        reply = json.loads(data)
        if not reply.get("ok"):
            for fd in received:
                os.close(fd)
            raise BackendError(f"the capture launcher refused: {reply.get('error')}")
        return reply, received

    def popen(self, argv: Sequence[str], **_: Any) -> LaunchedProcess:
        """Start dumpcap with ``argv`` (``dumpcap_argv``'s shape) as ``subprocess.Popen`` would."""
        reply, fds = self.request({"op": "spawn", "argv": list(argv)}, fds=2)
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            raise BackendError("the capture launcher sent no pipes")
        return LaunchedProcess(self, list(argv), ident=int(reply["id"]), pid=int(reply["pid"]),
                               stdout=os.fdopen(fds[0], "rb"), stderr=os.fdopen(fds[1], "rb"))

    def packet_socket(self, buffer_bytes: int = 0) -> socket.socket:
        """A new AF_PACKET socket (protocol 0, unbound) with its receive buffer set."""
        _, fds = self.request({"op": "packet_socket", "buffer_bytes": buffer_bytes}, fds=1)
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise BackendError("the capture launcher sent no socket")
        return socket.socket(fileno=fds[0])

    def close(self) -> None:
        """Close our end: the launcher stops its children and exits; reap it."""
        with contextlib.suppress(OSError):
            self._sock.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


class LaunchedProcess:
    """A dumpcap started by the launcher, with the ``subprocess.Popen`` methods dumpcap uses."""

    def __init__(self, launcher: CaptureLauncher, args: list[str], *, ident: int, pid: int,
                 stdout: IO[bytes], stderr: IO[bytes]) -> None:
        self.args = args
        self.pid = pid
        self.stdout: IO[bytes] | None = stdout
        self.stderr: IO[bytes] | None = stderr
        self.returncode: int | None = None
        self._launcher = launcher
        self._id = ident

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                reply, _ = self._launcher.request({"op": "poll", "id": self._id})
            except BackendError:
                self.returncode = -signal.SIGKILL  # the launcher died, and took dumpcap along
                return self.returncode
            self.returncode = reply["returncode"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(0.01)
        return code

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(BackendError):
                self._launcher.request({"op": "signal", "id": self._id, "signal": int(sig)})

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
