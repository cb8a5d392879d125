"""Test helpers for code built on portwatch: a scripted packet source and a fake clock.

They are public so that a plugin or an operator's own tests can drive the
daemon's pieces (``CaptureSupervisor``, ``Daemon`` through ``DaemonDeps``)
in-process, in milliseconds, without a network or root. portwatch's own
tests use them the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from portwatch.capture.batch import PacketBatch
from portwatch.errors import BackendError

__all__ = ["FakeClock", "FakeSource"]

#: 2023-11-14T22:13:20Z: what ``FakeClock.wall_ns`` reads at ``now == 0``.
EPOCH_NS = 1_700_000_000 * 10**9


@dataclass(slots=True)
class FakeClock:
    """A monotonic clock that moves only when told to; ``sleep`` advances it at once.

    ``sleeps`` records every sleep asked for, so back-off delays can be read
    back; ``on_sleep`` runs after each one (a test stops the loop from there).
    """

    now: float = 0.0
    sleeps: list[float] = field(default_factory=list)
    on_sleep: Callable[[float], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def monotonic(self) -> float:
        with self._lock:
            return self.now

    def wall_ns(self) -> int:
        with self._lock:
            return EPOCH_NS + int(self.now * 1e9)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(seconds)


@dataclass(slots=True)
class FakeSource:
    """A scripted ``PacketSource``: yields ``script`` batches, then ends, fails or holds.

    ``fail_with`` makes the run raise that message after the batches (as a
    dying backend does); ``hold`` keeps the run open after the batches until
    ``close()``, like a live capture with no more traffic (``holding`` is set
    then). With a ``clock``, each run advances it by ``run_s`` before ending,
    so a test decides how long a run lasted. Each call of ``batches()`` is one
    run; ``runs`` counts them. ``close()`` ends the current run, or the next
    one if none is running.
    """

    script: list[PacketBatch] = field(default_factory=list)
    backend: str = "fake"
    finite: bool = False
    fail_with: str | None = None
    hold: bool = False
    names: tuple[str, ...] = ("fake0",)
    drops: dict[str, int] = field(default_factory=dict)
    clock: FakeClock | None = None
    run_s: float = 0.0
    runs: int = 0
    holding: threading.Event = field(default_factory=threading.Event)
    _closed: threading.Event = field(default_factory=threading.Event)

    def batches(self) -> Iterator[PacketBatch]:
        self.runs += 1
        try:
            for batch in self.script:
                if self._closed.is_set():
                    return
                yield batch
            if self.clock is not None:
                self.clock.advance(self.run_s)
            if self.fail_with is not None and not self._closed.is_set():
                raise BackendError(self.fail_with)
            if self.hold:
                self.holding.set()
                self._closed.wait()
        finally:
            self.holding.clear()
            self._closed.clear()

    def interface_names(self) -> Sequence[str]:
        return self.names

    def dropped(self) -> dict[str, int]:
        return dict(self.drops)

    def close(self) -> None:
        self._closed.set()
