"""The replay backend: captures from files played back as if live.

``speed`` 1 keeps the recorded gaps between packets, N plays N times faster,
0 plays as fast as the daemon can count. The source is ``finite``: when the
files are done the daemon keeps serving what it counted and does not restart
it. Clock and sleep are injectable so pacing is testable without waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

from portwatch.capture.batch import PacketBatch
from portwatch.capture.files.reader import read_capture_path
from portwatch.errors import BackendError, CaptureError

__all__ = ["ReplaySource"]

#: Packets handed over at once while pacing, so a slow replay still reports promptly.
PACED_BATCH = 256


class ReplaySource:
    backend = "replay"
    finite = True

    def __init__(
        self,
        paths: Sequence[str],
        speed: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        batch_size: int = 65536,
    ) -> None:
        if speed < 0:
            raise BackendError(f"replay speed {speed} is negative")
        if not paths:
            raise BackendError("the replay backend needs at least one file (--replay FILE)")
        self.paths = tuple(paths)
        self.speed = speed
        self._clock = clock
        self._batch_size = batch_size
        self._closed = threading.Event()
        self._names: list[str] = []
        self.done = False

    def batches(self) -> Iterator[PacketBatch]:
        self._closed.clear()
        start_wall: float | None = None
        start_ts = 0
        for path in self.paths:
            try:
                reader = read_capture_path(path, self._batch_size)
            except CaptureError as exc:
                raise BackendError(f"cannot replay {path}: {exc}") from None
            with reader:
                try:
                    for batch in reader:
                        self._names = [i.name or path for i in reader.interfaces]
                        if self.speed == 0:
                            yield batch
                        else:
                            for part in _split(batch, PACED_BATCH):
                                if start_wall is None:
                                    start_wall = self._clock()
                                    start_ts = int(part.timestamps_ns[0])
                                due = start_wall + (int(part.timestamps_ns[0]) - start_ts) \
                                    / 1e9 / self.speed
                                if self._closed.wait(max(0.0, due - self._clock())):
                                    return
                                yield part
                        if self._closed.is_set():
                            return
                except CaptureError as exc:
                    raise BackendError(f"replay of {path} stopped: {exc}") from None
        self.done = True

    def interface_names(self) -> Sequence[str]:
        return self._names

    def dropped(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        self._closed.set()


def _split(batch: PacketBatch, size: int) -> Iterator[PacketBatch]:
    n = len(batch)
    for lo in range(0, n, size):
        yield batch.slice(lo, min(n, lo + size))
