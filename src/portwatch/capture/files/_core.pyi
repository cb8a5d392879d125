"""Types of the compiled framing extension (``_core.pyx``)."""

import numpy as np
import numpy.typing as npt

from portwatch.capture.files._framing import Buffer

LIMIT: int
END: int
PARTIAL: int
CORRUPT: int
NEED_SHB: int
NEED_IDB: int
REASON_LENGTH: int
REASON_TRAILER: int
REASON_EPB_SHORT: int
REASON_IFACE: int
REASON_CAPLEN: int
REASON_SPB: int

def frame_pcap(
    buf: Buffer,
    pos: int,
    end: int,
    limit: int,
    max_bytes: int,
    max_caplen: int,
    big: bool,
    positions: npt.NDArray[np.int64],
    words: npt.NDArray[np.uint32],
) -> tuple[int, int, int, int]: ...
def frame_pcapng(
    buf: Buffer,
    pos: int,
    end: int,
    n: int,
    limit: int,
    budget_end: int,
    max_bytes: int,
    big: bool,
    nif: int,
    positions: npt.NDArray[np.int64],
    kinds: npt.NDArray[np.uint8],
    words: npt.NDArray[np.uint32],
) -> tuple[int, int, int, int, int, int, int, int]: ...
