"""portwatch inside scapy and pyshark loops: one packet in, its service out.

``sniff(prn=portwatch.annotate, store=False)`` prints one line per packet,
because scapy prints what ``prn`` returns and ``Annotation.__str__`` is that
line. An ``Annotator`` keeps flow state between calls (an ``Analyzer`` and its
``FlowTable``), so a SYN decides the service side for every later packet of
its flow and non-first fragments are attributed to their datagram's flow.

Every packet gets an ``Annotation``, never ``None``: packets without ports
(ARP, ICMP, unattributed fragments, damaged packets) carry the decode
reason as ``status`` (``non-ip``, ``icmp``, ``fragment`` ...), an empty
``transport`` and port 0, so a pyshark loop can count them too.

This module itself is callable: ``portwatch.annotate`` names it, and a call
goes to the default annotator (created on first use, loading the default
registry). The module-class switch is the documented way to customise a
module (Python reference, "Customizing module attribute access").
"""

from __future__ import annotations

import sys
import threading
import types
from dataclasses import dataclass
from typing import Any

import numpy as np

from portwatch._paths import cache_dir
from portwatch.analysis.analyzer import Analyzer, flag_reasons
from portwatch.analysis.flows import FlowFlag, Method, flag_labels
from portwatch.decode.native import DecodeStatus
from portwatch.decode.rows import Row, rows_to_batch
from portwatch.ports import PortStatus, Transport
from portwatch.porttable.cache import load_table
from portwatch.porttable.table import PortTable
from portwatch.registry.store import select_sources

__all__ = ["DEFAULT_MAX_FLOWS", "Annotation", "Annotator", "default_annotator"]

#: Flows an annotator remembers; the least recently seen are forgotten beyond it.
DEFAULT_MAX_FLOWS = 65536


@dataclass(frozen=True, slots=True)
class Annotation:
    """What portwatch says about one packet (and so about its flow)."""

    transport: str  # "tcp", "udp", "sctp", "dccp"; "" when the packet has no ports
    service_port: int
    client_port: int
    service: str
    status: str  # port status ("assigned" ...) or, without ports, why ("non-ip" ...)
    flags: tuple[str, ...]
    method: str  # how the service side was decided; "" without ports
    reasons: tuple[str, ...]

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    def __str__(self) -> str:
        if not self.transport:
            return f"portwatch: {self.status} (no ports)"
        where = f"{self.transport}/{self.service_port}"
        named = f"{where} {self.service}" if self.service else where
        if not self.flagged:
            return f"portwatch: {named} ({self.status})"
        notes = [_NOTES[f] for f in self.flags if f in _NOTES]
        tail = "".join(f"; {n}" for n in notes)
        return f"portwatch: FLAG {named} {self.status}{tail}"


_NOTES = {
    FlowFlag.UNAUTHORIZED_USE.label: "unauthorized use reported",
    FlowFlag.DYNAMIC.label: "both ports dynamic",
}


def _no_ports(status: DecodeStatus) -> Annotation:
    return Annotation("", 0, 0, "", status.label, (), "", ())


class Annotator:
    """Annotates scapy or pyshark packets one at a time, remembering flows.

    ``table`` defaults to the registry ``portwatch`` itself would use
    (``--registry``/``PORTWATCH_REGISTRY``, the data dir, then the system
    files), compiled through the cache. Not thread-safe: give each thread
    its own annotator.
    """

    def __init__(self, table: PortTable | None = None, *,
                 max_flows: int = DEFAULT_MAX_FLOWS) -> None:
        if table is None:
            table = load_table(list(select_sources([]).paths), cache=cache_dir()).table
        self.table = table
        self.max_flows = max_flows
        self.analyzer = Analyzer(table)
        # flow row -> (its server state when answered, the answer). A flow's
        # answer changes only when a SYN or SYN-ACK sets its server side, so
        # it is decided once per state instead of once per packet.
        self._answers: dict[int, tuple[int, Annotation]] = {}

    def __call__(self, packet: object) -> Annotation:
        row, stamp = _dissect(packet)
        return self.annotate_row(row, stamp)

    def annotate_row(self, row: Row, timestamp_ns: int) -> Annotation:
        """Count one already dissected packet and answer for its flow."""
        flows = self.analyzer.feed_decoded(
            rows_to_batch([row]), np.asarray([timestamp_ns], dtype=np.int64))
        flow = int(flows[0])
        if flow < 0:
            return _no_ports(row.status)
        server = int(self.analyzer.flows.server[flow])
        cached = self._answers.get(flow)
        if cached is not None and cached[0] == server:
            answer = cached[1]
        else:
            answer = self._answer(flow)
            self._answers[flow] = (server, answer)
        if len(self.analyzer.flows) > self.max_flows:
            for evicted in self.analyzer.flows.enforce_limit(self.max_flows).tolist():
                self._answers.pop(evicted, None)  # the row will hold another flow
        return answer

    def _answer(self, flow: int) -> Annotation:
        ft = self.analyzer.flows
        dec = ft.decide(self.table, np.asarray([flow], dtype=np.int64))
        transport = Transport(int(ft.keys["t"][flow]))
        port = int(dec.service_port[0])
        bits = int(dec.flags[0])
        remark = ""
        if bits & FlowFlag.UNAUTHORIZED_USE:
            remark = self.table.lookup(transport, port).remark
        return Annotation(
            transport=transport.label,
            service_port=port,
            client_port=int(dec.client_port[0]),
            service=self.table.names[int(dec.service_id[0])],
            status=PortStatus(int(dec.status[0])).label,
            flags=tuple(flag_labels(bits)),
            method=Method(int(dec.method[0])).label,
            reasons=tuple(flag_reasons(transport.label, port, bits, remark,
                                   self.table.assigned_only)),
        )


def _dissect(packet: object) -> tuple[Row, int]:
    """Dispatch on the packet's library without importing either library."""
    library = _library_of(packet)
    if library == "scapy":
        from portwatch.decode import scapy as scapy_engine

        wirelen = getattr(packet, "wirelen", None)
        return (scapy_engine.dissect(packet, None if wirelen is None else int(wirelen)),
                scapy_engine.packet_timestamp_ns(packet))
    if library == "pyshark":
        from portwatch.decode import pyshark as pyshark_engine

        return pyshark_engine.dissect(packet), pyshark_engine.packet_timestamp_ns(packet)
    raise TypeError(
        f"portwatch.annotate takes a scapy or pyshark packet, not {type(packet).__name__!r}")


def _library_of(packet: object) -> str:
    for cls in type(packet).__mro__:
        root = cls.__module__.partition(".")[0]
        if root in ("scapy", "pyshark"):
            return root
    return ""


_default: Annotator | None = None
_default_lock = threading.Lock()


def default_annotator() -> Annotator:
    """The shared annotator behind ``portwatch.annotate``, created on first use."""
    global _default  # noqa: PLW0603 - one lazily built default, like logging's root logger
    with _default_lock:
        if _default is None:
            _default = Annotator()
        return _default


class _CallableModule(types.ModuleType):
    """Makes ``portwatch.annotate(packet)`` call the default annotator."""

    def __call__(self, packet: Any) -> Annotation:
        return default_annotator()(packet)


sys.modules[__name__].__class__ = _CallableModule
