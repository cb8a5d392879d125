"""Capabilities of this process: read them, and drop every one for good.

The daemon parses untrusted packets and HTTP requests; it must not hold
CAP_NET_RAW or CAP_NET_ADMIN while doing so. ``separate_capture_privileges``
runs once at start, before the registry is read or any packet is seen: for
the dumpcap and scapy backends it forks the ``CaptureLauncher`` (which keeps
the capabilities, starts dumpcap and opens AF_PACKET sockets on request),
then clears every capability set of this process with prctl(2) and capset(2)
through ctypes. Each capture run asks the launcher again, so restarts after
a failure need no privilege here.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from portwatch.capture.live.dumpcap import DumpcapSource, Popen
from portwatch.capture.live.scapy import ScapySource
from portwatch.capture.live.source import PacketSource
from portwatch.daemon.config import Backend, DaemonConfig
from portwatch.daemon.ebpf import EbpfSource, KernelCounter
from portwatch.daemon.launcher import CaptureLauncher
from portwatch.errors import BackendError

__all__ = [
    "CAPTURE_CAPABILITIES",
    "CapabilitySets",
    "Isolation",
    "LaunchedScapySource",
    "drop_all_capabilities",
    "keep_privileges",
    "read_capabilities",
    "separate_capture_privileges",
]

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
#: The bits of CAP_NET_ADMIN and CAP_NET_RAW in a capability mask.
CAPTURE_CAPABILITIES = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW)

_PR_SET_NO_NEW_PRIVS = 38
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_ETH_P_ALL = 0x0003
_ARPHRD_ETHERNET_LIKE = frozenset({1, 772})  # ARPHRD_ETHER, ARPHRD_LOOPBACK

SourceFactory = Callable[[DaemonConfig], PacketSource]
#: Given the configuration at start and the source factory, the factory to use
#: and a log line saying where the capture privileges are (empty: nothing to say).
Isolation = Callable[[DaemonConfig, SourceFactory], tuple[SourceFactory, str]]


@dataclass(frozen=True, slots=True)
class CapabilitySets:
    """The capability masks of ``/proc/PID/status``."""

    inheritable: int
    permitted: int
    effective: int
    bounding: int
    ambient: int

    @property
    def none_held(self) -> bool:
        """Nothing permitted, effective or ambient: no capability can be used or regained."""
        return not (self.permitted or self.effective or self.ambient or self.inheritable)


def read_capabilities(status: Path = Path("/proc/self/status")) -> CapabilitySets:
    fields = {}
    for line in status.read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            fields[key] = int(value.strip(), 16)
    return CapabilitySets(fields.get("CapInh", 0), fields.get("CapPrm", 0),
                          fields.get("CapEff", 0), fields.get("CapBnd", 0),
                          fields.get("CapAmb", 0))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_all_capabilities() -> None:
    """Clear the ambient, permitted, effective and inheritable sets; no new privileges.

    The bounding set is emptied too where that is allowed (CAP_SETPCAP, as
    for root outside systemd), so that even an exec cannot regain anything.
    Raises ``BackendError`` if a capability is still held afterwards.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)  # EPERM without CAP_SETPCAP: the unit's
        # CapabilityBoundingSet already bounds it
    if libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        if code != errno.EINVAL:  # EINVAL: a kernel before 4.3 has no ambient set
            raise BackendError(f"cannot clear the ambient capabilities: {os.strerror(code)}")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        raise BackendError(f"cannot drop capabilities: {os.strerror(ctypes.get_errno())}")
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    held = read_capabilities()
    if not held.none_held:
        raise BackendError(f"capabilities still held after dropping them: {held}")


class _LaunchedSocket:
    """What ``ScapySource`` uses of scapy's ``L2ListenSocket``: ``ins``, ``lvl``, ``close``."""

    def __init__(self, ins: socket.socket) -> None:
        self.ins = ins
        self.lvl = 2

    def close(self) -> None:
        self.ins.close()


class LaunchedScapySource(ScapySource):
    """The scapy backend on sockets the launcher opens: this process needs no capability.

    The launcher creates each AF_PACKET socket (and forces its buffer size);
    here the filter is compiled and attached (scapy with libpcap, no
    privilege), then the socket is bound to its interface and flushed, as
    scapy's own ``L2ListenSocket`` does.
    """

    def __init__(self, launcher: CaptureLauncher, interfaces: tuple[str, ...],
                 bpf_filter: str = "", snaplen: int = 128, *,
                 buffer_mib: int | None = None) -> None:
        # The buffer is set by the launcher: SO_RCVBUFFORCE needs CAP_NET_ADMIN.
        super().__init__(interfaces, bpf_filter, snaplen, buffer_mib=None)
        self._launcher = launcher
        self._buffer_bytes = (buffer_mib or 0) << 20

    def _open(self) -> list[Any]:
        opened: list[_LaunchedSocket] = []
        try:
            for name in self.interfaces:
                launched = _LaunchedSocket(self._launcher.packet_socket(self._buffer_bytes))
                opened.append(launched)
                if self.bpf_filter:
                    from scapy.arch.linux import attach_filter
                    attach_filter(launched.ins, self.bpf_filter, name)
                launched.ins.bind((name, _ETH_P_ALL))
                _flush(launched.ins)
                if launched.ins.getsockname()[3] not in _ARPHRD_ETHERNET_LIKE:
                    launched.lvl = 3
        except BackendError:
            for s in opened:
                s.close()
            raise
        except Exception as exc:  # OSError from bind, Scapy_Exception from the filter
            for s in opened:
                s.close()
            raise BackendError(f"scapy cannot capture on {self.interfaces}: {exc}") from None
        return opened


def _flush(sock: socket.socket) -> None:
    """Drop what arrived between bind and now (nothing unfiltered: the filter came first)."""
    sock.setblocking(False)
    with contextlib.suppress(OSError):
        while select.select([sock], [], [], 0)[0]:
            sock.recv(65536)


def keep_privileges(config: DaemonConfig, make_source: SourceFactory
                    ) -> tuple[SourceFactory, str]:
    """No separation (tests, and callers that manage privileges themselves)."""
    return make_source, ""


def separate_capture_privileges(config: DaemonConfig, make_source: SourceFactory
                                ) -> tuple[SourceFactory, str]:
    """Move capture privileges out of this process, if it has any.

    dumpcap and scapy: fork the launcher (it keeps them, starts dumpcap and
    opens packet sockets), then drop every capability here. replay: drop
    them, nothing captures. pyshark runs tshark (and tshark dumpcap) from
    this process: it keeps them.
    """
    counter, note = _preload_ebpf(config)
    held = read_capabilities()
    if not (held.permitted | held.ambient) & CAPTURE_CAPABILITIES:
        if counter is not None:
            counter.close()  # no capability to drop: make_source loads its own
        return make_source, note.lstrip("; ")
    backend = config.capture.backend
    if backend is Backend.PYSHARK:
        return make_source, ("the pyshark backend runs tshark from this process, which keeps "
                             "CAP_NET_RAW and CAP_NET_ADMIN; dumpcap and scapy do not need them "
                             "here")
    if backend is Backend.REPLAY:
        drop_all_capabilities()
        return make_source, "capabilities dropped: replay needs none"
    launcher = CaptureLauncher.start(shutil.which("dumpcap") or "/usr/bin/dumpcap")
    drop_all_capabilities()

    def through_launcher(config: DaemonConfig) -> PacketSource:
        cap = config.capture
        if cap.backend is Backend.DUMPCAP:
            # LaunchedProcess has the Popen methods DumpcapSource uses (pid, stdout,
            # stderr, poll, wait, terminate, kill).
            return DumpcapSource(cap.interfaces, cap.bpf_filter, cap.snaplen,
                                 buffer_mib=cap.buffer_mib, popen=cast(Popen, launcher.popen))
        if cap.backend is Backend.SCAPY:
            return LaunchedScapySource(launcher, cap.interfaces, cap.bpf_filter, cap.snaplen,
                                       buffer_mib=cap.buffer_mib)
        if cap.backend in (Backend.EBPF, Backend.AUTO) and counter is not None:
            # Loaded above with CAP_BPF; the launcher opens the packet sockets
            # (CAP_NET_RAW); attaching, binding and reading the maps need none.
            return EbpfSource(cap.interfaces, config.flows, counter=counter,
                              open_socket=lambda _name: launcher.packet_socket())
        if cap.backend is Backend.AUTO:
            return DumpcapSource(cap.interfaces, cap.bpf_filter, cap.snaplen,
                                 buffer_mib=cap.buffer_mib, popen=cast(Popen, launcher.popen))
        if cap.backend is Backend.REPLAY:
            return make_source(config)
        raise BackendError(f"the {cap.backend.value} backend needs capabilities this process "
                           "dropped at start: restart the daemon to use it")

    return through_launcher, (f"capture privileges are held only by the capture launcher "
                              f"(pid {launcher.pid}); this process has none{note}")


def _preload_ebpf(config: DaemonConfig) -> tuple[KernelCounter | None, str]:
    """Load the eBPF program while this process holds CAP_BPF (before dropping it).

    ``ebpf``: a program that does not load is the daemon's one-line error (exit 2).
    ``auto``: it is a note, and capture falls back to dumpcap.
    """
    backend = config.capture.backend
    if backend not in (Backend.EBPF, Backend.AUTO):
        return None, ""
    if config.capture.bpf_filter:
        if backend is Backend.EBPF:
            raise BackendError("the ebpf backend counts every frame: [capture] bpf_filter "
                               f"{config.capture.bpf_filter!r} cannot be applied (remove it, "
                               "or use dumpcap)")
        return None, "; backend auto: dumpcap (a capture filter is set)"
    try:
        counter = KernelCounter(config.flows)
    except BackendError as exc:
        if backend is Backend.EBPF:
            raise
        return None, f"; backend auto: dumpcap ({exc.message})"
    return counter, "; the eBPF program was loaded before dropping them"
