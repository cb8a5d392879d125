"""Types of the compiled decoder extension (``_decode.pyx``)."""

import numpy as np
import numpy.typing as npt

COLUMNS: tuple[str, ...]

def decode(
    data: npt.NDArray[np.uint8],
    start: npt.NDArray[np.int64],
    end: npt.NDArray[np.int64],
    wirelen: npt.NDArray[np.uint32],
    modes: npt.NDArray[np.int64],
    carried: npt.NDArray[np.uint8],
    status: npt.NDArray[np.uint8],
    ip_version: npt.NDArray[np.uint8],
    ip_proto: npt.NDArray[np.uint8],
    src_hi: npt.NDArray[np.uint64],
    src_lo: npt.NDArray[np.uint64],
    dst_hi: npt.NDArray[np.uint64],
    dst_lo: npt.NDArray[np.uint64],
    src_port: npt.NDArray[np.uint16],
    dst_port: npt.NDArray[np.uint16],
    tcp_flags: npt.NDArray[np.uint8],
    frag_id: npt.NDArray[np.uint32],
    first: npt.NDArray[np.uint8],
    encap: npt.NDArray[np.uint16],
    layers: npt.NDArray[np.uint8],
    offsets: npt.NDArray[np.int64],
    itemsize: int,
    layer_packet: npt.NDArray[np.int64],
    layer_depth: npt.NDArray[np.uint8],
) -> int: ...
