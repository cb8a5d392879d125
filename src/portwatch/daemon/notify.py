"""sd_notify(3) for ``Type=notify`` units: READY, RELOADING, STOPPING, WATCHDOG, STATUS.

The protocol is one AF_UNIX datagram of ``KEY=VALUE`` lines to the socket
named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract
namespace). Outside systemd the variable is unset and every call is silent.
25 lines of socket code do not justify a dependency (``sdnotify``,
``systemd-python``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

__all__ = ["SystemdNotifier"]


class SystemdNotifier:
    """Tells systemd about the service's state; does nothing when not run by systemd."""

    def __init__(self, env: Mapping[str, str]) -> None:
        path = env.get("NOTIFY_SOCKET", "")
        self._address = ("\0" + path[1:]) if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        owned = not pid or pid == str(os.getpid())
        #: How often to send WATCHDOG=1 (half the unit's WatchdogSec), or 0 if not asked.
        self.watchdog_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and owned else 0.0

    def send(self, *lines: str) -> None:
        """One datagram of ``KEY=VALUE`` lines; errors are dropped (systemd may be gone)."""
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall("\n".join(lines).encode())
        except OSError:
            pass  # systemd gone or socket absent: nothing to tell

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={_one_line(status)}", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        self.send("RELOADING=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={_one_line(text)}")


def _one_line(text: str) -> str:
    """A newline would start a new ``KEY=VALUE`` assignment."""
    return " ".join(text.split())
