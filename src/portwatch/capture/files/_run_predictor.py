"""Framing runs of equal-size records with numpy instead of one record at a time.

Record framing is inherently sequential: each record's length says where the
next begins. But captures are full of runs of equal-size records (a snaplen
cuts every packet to the same length; bulk transfers send MTU-sized
segments). Once two records in a row have the same size, predict that the
next ``k`` do too, and check all ``k`` predictions with one numpy gather: the
records accepted are exactly those the sequential loop would have found.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["RunPredictor", "words_at"]

_MIN_RUN = 16
_MAX_RUN = 65536


def words_at(
    view: npt.NDArray[np.uint8], positions: npt.NDArray[np.int64], dtype: np.dtype[np.uint32]
) -> npt.NDArray[np.uint32]:
    """The 32-bit word at each of ``positions`` (any alignment, given byte order)."""
    raw = view[positions[:, None] + np.arange(4, dtype=np.int64)]
    words: npt.NDArray[np.uint32] = raw.view(dtype).reshape(-1).astype(np.uint32)
    return words


class RunPredictor:
    """Adaptive run length: grows while predictions hold, shrinks when they fail."""

    __slots__ = ("size",)

    def __init__(self) -> None:
        self.size = _MIN_RUN

    def budget(self, available: int) -> int:
        return min(self.size, available)

    def accepted(self, tried: int, got: int) -> None:
        if got == tried:
            self.size = min(self.size * 2, _MAX_RUN)
        else:
            self.size = _MIN_RUN
