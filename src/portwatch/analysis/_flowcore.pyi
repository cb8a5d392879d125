"""Types of the compiled flow table core (``_flowcore.pyx``)."""

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

KEY_BYTES: int

class FlowIndex:
    def __len__(self) -> int: ...
    def clear(self) -> None: ...
    def lookup(self, keys: U8, rows: I64) -> None: ...
    def insert(self, keys: U8, rows: I64) -> None: ...
    def delete(self, keys: U8) -> int: ...
    def update(
        self,
        status: U8,
        ip_proto: U8,
        src_hi: U64,
        src_lo: U64,
        dst_hi: U64,
        dst_lo: U64,
        src_port: U16,
        dst_port: U16,
        tcp_flags: U8,
        wirelen: U32,
        encap_in: U16,
        ts: I64,
        transport_of_proto: U8,
        keys: U8,
        packets_ab: U64,
        packets_ba: U64,
        bytes_ab: U64,
        bytes_ba: U64,
        first_ns: I64,
        last_ns: I64,
        handshake_side: U8,
        tcp_flags_ab: U8,
        tcp_flags_ba: U8,
        first_flags: U8,
        first_from_a: U8,
        alive: U8,
        encap: U16,
        free_rows: I64,
        size: int,
        flow_of_packet: I64,
    ) -> tuple[int, int]: ...
