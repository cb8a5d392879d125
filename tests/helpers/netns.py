"""A network namespace for a test, with a veth pair whose two ends both live in it.

Nothing crosses into the host's namespaces: frames sent on ``tx`` arrive on
``rx``, and IPv6 is off in the namespace so the kernel itself sends nothing
(no router solicitations, no MLD reports) that a capture would count.
``run`` uses ``nsenter --net=`` rather than ``ip netns exec``, which remounts
/sys and so hides /sys/fs/bpf. ``call`` runs Python in a thread that joined
the namespace: sockets made there (packet sockets, HTTP clients) stay in it.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000


class Netns:
    def __init__(self, name: str, tx: str = "pwe0", rx: str = "pwe1") -> None:
        self.name, self.tx, self.rx = name, tx, rx
        self.path = f"/run/netns/{name}"

    def create(self) -> Netns:
        self.delete()
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        for key in ("all", "default"):
            self.run(["sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"])
        for cmd in (["link", "add", self.tx, "type", "veth", "peer", "name", self.rx],
                    ["link", "set", self.tx, "up"], ["link", "set", self.rx, "up"],
                    ["link", "set", "lo", "up"]):
            subprocess.run(["ip", "-n", self.name, *cmd], check=True, capture_output=True)
        return self

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)

    def prefix(self) -> list[str]:
        return ["nsenter", f"--net={self.path}"]

    def run(self, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix(), *argv], check=True, capture_output=True,
                              text=True, timeout=timeout)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` in a thread inside the namespace (the thread ends, and its membership)."""
        libc = ctypes.CDLL(None, use_errno=True)
        box: list[T] = []
        errors: list[BaseException] = []

        def run() -> None:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
                box.append(fn())
            except BaseException as exc:
                errors.append(exc)
            finally:
                os.close(fd)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return box[0]
