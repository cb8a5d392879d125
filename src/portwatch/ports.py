"""The vocabulary every stage shares: transports, port statuses and flags.

These are facts of the port-number space itself (RFC 6335), not of any one
registry file, so the capture and decode stages can name a transport without
depending on the registry's data model.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

__all__ = ["DYNAMIC_PORTS", "LabelledEnum", "PortFlag", "PortStatus", "Transport"]


class LabelledEnum:
    """``label``: the member's name as users write it (``DYNAMIC_RANGE`` -> ``dynamic-range``)."""

    name: str

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


#: RFC 6335 section 6: Dynamic and/or Private Ports, never assigned.
DYNAMIC_PORTS = range(49152, 65536)


class Transport(LabelledEnum, IntEnum):
    """Transports the registry assigns ports for; the value indexes the table."""

    TCP = 0
    UDP = 1
    SCTP = 2
    DCCP = 3

    def __bool__(self) -> bool:
        """Always true: ``if rec.transport`` must not mistake TCP (value 0) for none."""
        return True

    @property
    def ip_protocol(self) -> int:
        return _IP_PROTOCOLS[self]

    @classmethod
    def parse(cls, text: str) -> Transport:
        """``'tcp'`` -> ``Transport.TCP``; raises ``ValueError`` on anything else."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown transport {text!r}") from None

    @classmethod
    def from_ip_protocol(cls, proto: int) -> Transport | None:
        return _BY_IP_PROTOCOL.get(proto)


_IP_PROTOCOLS = {Transport.TCP: 6, Transport.UDP: 17, Transport.SCTP: 132, Transport.DCCP: 33}
_BY_IP_PROTOCOL = {v: k for k, v in _IP_PROTOCOLS.items()}


class PortStatus(LabelledEnum, IntEnum):
    """Status of one (port, transport) slot of the compiled table.

    Integer valued so that it can live in a numpy ``uint8`` array.
    """

    UNLISTED = 0  # the loaded sources say nothing about this port
    ASSIGNED = 1
    RESERVED = 2
    UNASSIGNED = 3
    DYNAMIC = 4  # 49152-65535, RFC 6335 Dynamic and/or Private Ports

    @property
    def flagged(self) -> bool:
        """Traffic whose service port has this status deserves a flag."""
        return self in (PortStatus.RESERVED, PortStatus.UNASSIGNED, PortStatus.UNLISTED)


class PortFlag(IntFlag):
    """Extra facts about a port, independent of its status."""

    NONE = 0
    UNAUTHORIZED_USE = 1  # IANA's "Unauthorized Use Reported" names this port
