"""A connection state per flow in the style of Zeek's ``conn_state``, for all flows at once.

Zeek derives ``conn_state`` (``base/protocols/conn/main.zeek``) from the TCP
state of each endpoint when the connection ends. portwatch keeps, per flow,
the OR of the TCP flags sent in each direction and the flags and direction of
the first packet (``FlowTable``), and derives each endpoint's state from them:

* ``inactive``: it sent nothing; ``partial``: it sent packets but never a SYN
  (midstream);
* ``reset``: it sent a RST; else ``closed``: it sent a FIN;
* ``established``: it sent a SYN and the handshake completed (both sides sent
  a SYN and the originator sent an ACK); else ``attempt`` (Zeek's SYN_SENT and
  SYN_ACK_SENT).

The originator is the flow's client (the side opposite the service port that
``FlowTable.decide`` chose: the SYN sender when a handshake was seen), where
Zeek takes the first packet's sender and flips it by heuristics. Zeek's
decision function is then applied as written. UDP follows Zeek too (``SF``
both sides sent, ``S0`` only the originator, ``SHR`` only the responder);
SCTP and DCCP flows are ``OTH``, as Zeek gives every protocol but TCP and UDP.

Where the flag summary cannot say what Zeek would: a responder RST after an
originator RST is ``REJ`` in Zeek only if neither side sent payload, which the
flow table does not count, so it is ``RSTR`` here; ``RSTOS0`` needs the
originator's first packet to be the flow's first and a SYN, and the
originator to have sent no FIN (Zeek also rules out a pure ACK before the RST,
which the OR of flags cannot tell from the RST's own ACK bit).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import numpy.typing as npt

from portwatch.analysis.flows import FlowTable
from portwatch.ports import Transport

__all__ = ["CONN_STATE_LABELS", "ConnState", "conn_states"]

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]


class ConnState(IntEnum):
    """Zeek's ``conn_state`` values; the name is what records carry."""

    S0 = 0  # connection attempt seen, no reply
    S1 = 1  # established, not terminated
    SF = 2  # normal establishment and termination
    REJ = 3  # connection attempt rejected
    S2 = 4  # established, close attempt by the originator seen (no reply)
    S3 = 5  # established, close attempt by the responder seen (no reply)
    RSTO = 6  # established, the originator aborted (sent a RST)
    RSTR = 7  # the responder sent a RST
    RSTOS0 = 8  # the originator sent a SYN then a RST; no SYN-ACK seen
    RSTRH = 9  # the responder sent a SYN-ACK then a RST; no SYN seen
    SH = 10  # the originator sent a SYN then a FIN; no SYN-ACK seen ("half" open)
    SHR = 11  # the responder sent a SYN-ACK then a FIN; no SYN seen
    OTH = 12  # no SYN seen, just midstream traffic


#: ``CONN_STATE_LABELS[code]``: the text of a ``ConnState`` code.
CONN_STATE_LABELS = tuple(s.name for s in ConnState)

_FIN, _SYN, _RST, _ACK = np.uint8(0x01), np.uint8(0x02), np.uint8(0x04), np.uint8(0x10)

# Endpoint states (Zeek's TCP_* endpoint states, merged where conn_state does not tell apart).
_INACTIVE, _PARTIAL, _ATTEMPT, _ESTABLISHED, _CLOSED, _RESET = range(6)


def _has(flags: U8, bit: np.uint8) -> Bool:
    has: Bool = (flags & bit) != 0
    return has


def _endpoint(flags: U8, packets: npt.NDArray[np.uint64], handshake: Bool) -> I64:
    state: I64 = np.select(
        [packets == 0, _has(flags, _RST), _has(flags, _FIN), ~_has(flags, _SYN), handshake],
        [_INACTIVE, _RESET, _CLOSED, _PARTIAL, _ESTABLISHED],
        default=_ATTEMPT,
    ).astype(np.int64)
    return state


def conn_states(flows: FlowTable, rows: I64, service_is_a: Bool) -> U8:
    """The ``ConnState`` code of each flow of ``rows``; the client is the originator."""
    orig_is_a = ~service_is_a
    ab, ba = flows.tcp_flags_ab[rows], flows.tcp_flags_ba[rows]
    pab, pba = flows.packets_ab[rows], flows.packets_ba[rows]
    fo, fr = np.where(orig_is_a, ab, ba), np.where(orig_is_a, ba, ab)
    no, nr = np.where(orig_is_a, pab, pba), np.where(orig_is_a, pba, pab)
    handshake = _has(fo, _SYN) & _has(fr, _SYN) & _has(fo, _ACK)
    os, rs = _endpoint(fo, no, handshake), _endpoint(fr, nr, handshake)
    o_inactive = (os == _INACTIVE) | (os == _PARTIAL)
    r_inactive = (rs == _INACTIVE) | (rs == _PARTIAL)
    first = flows.first_flags[rows]
    orig_opened = ((flows.first_from_a[rows] == orig_is_a) & _has(first, _SYN)
                   & ~_has(first, _ACK) & ~_has(fo, _FIN))
    r_reset, o_reset = rs == _RESET, os == _RESET
    o_closed, r_closed = os == _CLOSED, rs == _CLOSED
    tcp_state = np.select(
        [r_reset & (os == _ATTEMPT), r_reset & o_inactive, r_reset,
         o_reset & r_inactive & orig_opened, o_reset & r_inactive, o_reset,
         o_closed & r_closed, o_closed & r_inactive, o_closed, r_closed & o_inactive, r_closed,
         (os == _ATTEMPT) & (rs == _INACTIVE), (os == _ESTABLISHED) & (rs == _ESTABLISHED)],
        [ConnState.REJ, ConnState.RSTRH, ConnState.RSTR,
         ConnState.RSTOS0, ConnState.OTH, ConnState.RSTO,
         ConnState.SF, ConnState.SH, ConnState.S2, ConnState.SHR, ConnState.S3,
         ConnState.S0, ConnState.S1],
        default=ConnState.OTH,
    )
    udp_state = np.select([(no > 0) & (nr > 0), no > 0, nr > 0],
                          [ConnState.SF, ConnState.S0, ConnState.SHR], default=ConnState.OTH)
    transport = flows.keys["t"][rows]
    state: U8 = np.select([transport == Transport.TCP, transport == Transport.UDP],
                          [tcp_state, udp_state], default=ConnState.OTH).astype(np.uint8)
    return state
