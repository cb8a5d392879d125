"""What portwatch concludes about a flow or a port, and the one place it is put into words.

``FlowTable.decide`` answers for every flow at once in ``FlowDecisions``
(numpy columns); ``Verdict`` is one row of it, or the answer for a port asked
about on its own (``portwatch lookup``). Every output words a verdict with
``reasons`` and ``summary`` from this module: the report's ``reasons`` and
flagged-flow table, the comments of an annotated copy, ``portwatch.annotate``,
``portwatch lookup``, and the Wireshark plugin, which embeds ``sentences()``
when it is exported. Change a sentence here and all of them change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag

import numpy as np
import numpy.typing as npt

from portwatch.ports import DYNAMIC_PORTS, LabelledEnum, PortFlag, PortStatus, Transport
from portwatch.porttable.table import PortInfo, PortTable

__all__ = [
    "BOTH_DYNAMIC",
    "STATUS_REASONS",
    "Confidence",
    "Detection",
    "FlagReason",
    "FlowDecisions",
    "ServiceSideRule",
    "Verdict",
    "flag_labels",
    "port_reasons",
    "reasons",
    "sentences",
    "summary",
]


class FlagReason(LabelledEnum, IntFlag):
    """Why a flow deserves attention; bits of ``FlowDecisions.flags`` (values are stored)."""

    RESERVED = 1
    UNASSIGNED = 2
    UNLISTED = 4
    UNAUTHORIZED_USE = 8
    DYNAMIC = 16  # the service port is in 49152-65535: lower severity
    PROTOCOL_MISMATCH = 32  # nDPI found another protocol in the payload (``--detect``)


class Confidence(LabelledEnum, IntEnum):
    """How the detected protocol of a flow was found (``--detect``)."""

    NONE = 0  # nothing detected
    PORT_GUESS = 1  # guessed from the port or an address, not read in this flow's payload
    PAYLOAD = 2  # read in this flow's payload


class Detection(LabelledEnum, IntEnum):
    """The payload against the registry (``--detect``)."""

    UNCONFIRMED = 0  # no payload detection, or nothing assigned to compare with
    CONFIRMED = 1  # the payload protocol is the service IANA assigns (or an alias of it)
    MISMATCH = 2  # the payload protocol is another one


class ServiceSideRule(LabelledEnum, IntEnum):
    """Which rule decided the service side of a flow (``FlowTable.decide``)."""

    HANDSHAKE = 0
    REGISTRY = 1
    DYNAMIC_RANGE = 2
    LOWER_PORT = 3


#: The reason a service port's status gives, indexed by ``PortStatus`` value.
STATUS_REASONS: npt.NDArray[np.uint8] = np.zeros(len(PortStatus), dtype=np.uint8)
STATUS_REASONS[PortStatus.RESERVED] = FlagReason.RESERVED
STATUS_REASONS[PortStatus.UNASSIGNED] = FlagReason.UNASSIGNED
STATUS_REASONS[PortStatus.UNLISTED] = FlagReason.UNLISTED
STATUS_REASONS[PortStatus.DYNAMIC] = FlagReason.DYNAMIC

_REASONS = tuple(FlagReason)  # single-bit members, in value order
#: (bit, label) per reason: plain ints, because ``int & FlagReason`` goes through
#: ``enum.Flag.__and__`` (2 us a time, and this is done per flow and at import).
_REASON_BITS = tuple((int(r), r.label) for r in _REASONS)
_FLAG_LABELS = [tuple(label for value, label in _REASON_BITS if bits & value)
                for bits in range(1 << len(_REASONS))]


def flag_labels(bits: int) -> list[str]:
    """Labels of the reasons set in ``bits``, in ``FlagReason`` order (a table, not a loop)."""
    return list(_FLAG_LABELS[bits & (len(_FLAG_LABELS) - 1)])


def port_reasons(status: PortStatus, flags: PortFlag) -> FlagReason:
    """The reasons traffic to a service port with this status and these flags is flagged."""
    bits = int(STATUS_REASONS[status])
    if flags & PortFlag.UNAUTHORIZED_USE:
        bits |= FlagReason.UNAUTHORIZED_USE
    return FlagReason(bits)


#: The ``sentences()`` key for ``DYNAMIC`` when the client port is dynamic too.
BOTH_DYNAMIC = "both-dynamic"
_FIRST_DYNAMIC = DYNAMIC_PORTS.start
_RANGE = f"{DYNAMIC_PORTS.start}-{DYNAMIC_PORTS.stop - 1}"


def sentences(assigned_only: bool) -> dict[str, str]:
    """One sentence per reason label (and ``BOTH_DYNAMIC``), ``{where}`` and ``{remark}`` unfilled.

    ``{where}`` becomes ``transport/port``, ``{remark}`` IANA's unauthorized-use
    text, ``{head}`` the port with its service and status (``tcp/443 https
    (assigned)``) and ``{detected}`` the protocol nDPI found in the payload.
    ``assigned_only``: the loaded sources list assigned ports only, so
    "unlisted" says less than "unassigned" would.
    """
    scope = " (they list assigned ports only)" if assigned_only else ""
    return {
        FlagReason.RESERVED.label: "{where} is reserved in the IANA registry",
        FlagReason.UNASSIGNED.label: "{where} is unassigned in the IANA registry",
        FlagReason.UNLISTED.label: "{where} is not listed by the loaded registry sources" + scope,
        FlagReason.UNAUTHORIZED_USE.label: "unauthorized use reported on {where}: {remark}",
        FlagReason.DYNAMIC.label: "{where} is in the dynamic range " + _RANGE,
        FlagReason.PROTOCOL_MISMATCH.label: "{head} carries {detected}",
        BOTH_DYNAMIC: "both ports of the flow are in the dynamic range " + _RANGE + " ({where})",
    }


_SENTENCES = {assigned_only: sentences(assigned_only) for assigned_only in (False, True)}
_DYNAMIC_BIT = int(FlagReason.DYNAMIC)


def _head(transport: str, port: int, service: str, status: str) -> str:
    """``tcp/80 http (assigned)``, or ``tcp/8807 (reserved)`` for a port without a service."""
    return f"{transport}/{port} {service} ({status})" if service else (
        f"{transport}/{port} ({status})")


def reasons(transport: str, port: int, bits: int, *, remark: str = "",
            assigned_only: bool = False, client_port: int | None = None,
            service: str = "", status: str = "", detected: str = "") -> list[str]:
    """One sentence per reason in ``bits``, in ``FlagReason`` order.

    ``client_port`` is the flow's other port; ``None`` for a port on its own.
    ``service``, ``status`` and ``detected`` word ``PROTOCOL_MISMATCH``:
    ``tcp/443 https (assigned) carries ssh``.
    """
    if not bits:
        return []
    text = _SENTENCES[assigned_only]
    where = f"{transport}/{port}"
    head = _head(transport, port, service, status)
    bits = int(bits)  # int & int: FlagReason & int goes through enum.Flag.__and__
    out = []
    for value, label in _REASON_BITS:
        if bits & value:
            key = label
            if value == _DYNAMIC_BIT and client_port is not None and (
                    client_port >= _FIRST_DYNAMIC):
                key = BOTH_DYNAMIC
            out.append(text[key].format(where=where, remark=remark, head=head,
                                        detected=detected))
    return out


def summary(transport: str, port: int, service: str, status: str,
            why: Sequence[str]) -> str:
    """One line: ``tcp/80 http (assigned)``, or ``FLAG tcp/8807 (reserved): <reasons>``."""
    head = _head(transport, port, service, status)
    return f"FLAG {head}: {'; '.join(why)}" if why else head


@dataclass(frozen=True, slots=True)
class Verdict:
    """One flow's answer (or one port's, with no client port and no rule)."""

    transport: Transport
    service_port: int
    service: str
    status: PortStatus
    flags: FlagReason
    remark: str = ""  # IANA's unauthorized-use text, when that flag is set
    assigned_only: bool = False  # the loaded sources list assigned ports only
    client_port: int | None = None
    rule: ServiceSideRule | None = None
    detected: str = ""  # the protocol nDPI found in the payload (``--detect``), or ""

    @classmethod
    def of_port(cls, info: PortInfo, *, assigned_only: bool) -> Verdict:
        """What traffic to ``info``'s port would be told, the port being the service."""
        return cls(info.transport, info.port, info.service, info.status,
                   port_reasons(info.status, info.flags), info.remark, assigned_only)

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    def labels(self) -> list[str]:
        return flag_labels(self.flags)

    def reasons(self) -> list[str]:
        return reasons(self.transport.label, self.service_port, self.flags, remark=self.remark,
                       assigned_only=self.assigned_only, client_port=self.client_port,
                       service=self.service, status=self.status.label, detected=self.detected)

    def summary(self) -> str:
        return summary(self.transport.label, self.service_port, self.service,
                       self.status.label, self.reasons())


U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]


@dataclass(slots=True)
class FlowDecisions:
    """Per-flow answers, parallel to the flow table's arrays (or to the rows asked for)."""

    service_is_a: npt.NDArray[np.bool_]
    service_port: U16
    client_port: U16
    rule: U8  # ServiceSideRule values
    status: U8  # PortStatus values
    service_id: npt.NDArray[np.int32]
    flags: U8  # FlagReason bits
    transport: U8  # Transport values

    def verdict(self, i: int, table: PortTable) -> Verdict:
        """Row ``i`` as a ``Verdict`` (``table`` is the one that decided)."""
        transport = Transport(int(self.transport[i]))
        port = int(self.service_port[i])
        bits = FlagReason(int(self.flags[i]))
        remark = table.lookup(transport, port).remark if bits & FlagReason.UNAUTHORIZED_USE else ""
        return Verdict(transport, port, table.names[int(self.service_id[i])],
                       PortStatus(int(self.status[i])), bits, remark, table.assigned_only,
                       int(self.client_port[i]), ServiceSideRule(int(self.rule[i])))
