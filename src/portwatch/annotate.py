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
from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.verdict import summary
from portwatch.decode.native import DecodeStatus
from portwatch.decode.rows import Row, rows_to_batch
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
    method: str  # the rule that decided the service side; "" without ports
    reasons: tuple[str, ...]  # one sentence per flag, as the report words it
    summary: str  # the verdict on one line, as the report and annotated copies word it

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    def __str__(self) -> str:
        if not self.transport:
            return f"portwatch: {self.status} (no ports)"
        return f"portwatch: {self.summary}"


def _no_ports(status: DecodeStatus) -> Annotation:
    return Annotation("", 0, 0, "", status.label, (), "", (), "")


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
        # flow row -> (its handshake side when answered, the answer). A flow's
        # answer changes only when a SYN or SYN-ACK sets its handshake side, so
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
        side = int(self.analyzer.flows.handshake_side[flow])
        cached = self._answers.get(flow)
        if cached is not None and cached[0] == side:
            answer = cached[1]
        else:
            answer = self._answer(flow)
            self._answers[flow] = (side, answer)
        if len(self.analyzer.flows) > self.max_flows:
            for evicted in self.analyzer.flows.enforce_limit(self.max_flows).tolist():
                self._answers.pop(evicted, None)  # the row will hold another flow
        return answer

    def _answer(self, flow: int) -> Annotation:
        dec = self.analyzer.flows.decide(self.table, np.asarray([flow], dtype=np.int64))
        verdict = dec.verdict(0, self.table)
        why = verdict.reasons()
        return Annotation(
            transport=verdict.transport.label,
            service_port=verdict.service_port,
            client_port=int(dec.client_port[0]),
            service=verdict.service,
            status=verdict.status.label,
            flags=tuple(verdict.labels()),
            method=verdict.rule.label if verdict.rule is not None else "",
            reasons=tuple(why),
            summary=summary(verdict.transport.label, verdict.service_port, verdict.service,
                            verdict.status.label, why),
        )


def _dissect(packet: object) -> tuple[Row, int]:
    """Dispatch on the packet's library without importing either library."""
    library = _library_of(packet)
    if library == "scapy":
        from portwatch.decode import scapy as scapy_decoder

        wirelen = getattr(packet, "wirelen", None)
        return (scapy_decoder.dissect(packet, None if wirelen is None else int(wirelen)),
                scapy_decoder.packet_timestamp_ns(packet))
    if library == "pyshark":
        from portwatch.decode import pyshark as pyshark_decoder

        return pyshark_decoder.dissect(packet), pyshark_decoder.packet_timestamp_ns(packet)
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
