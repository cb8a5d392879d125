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

With ``Annotator(detect=True)`` nDPI reads the first packets of each flow too
(``analysis.detect``, as ``analyze --detect`` does; the packet's own bytes:
scapy's ``bytes(packet)``, pyshark's raw frame when captured with
``include_raw=True, use_json=True``, which is then decoded natively). Each
call waits until nDPI has read the packet, so the answer is deterministic:
once nDPI is done with the flow (it named the protocol, or gave up), every
later packet's ``Annotation``
carries ``detected``, ``confidence`` and ``detection`` (``confirmed``,
``mismatch``, ``unconfirmed``), and a mismatch is a flag with its sentence
(``tcp/443 https (assigned) carries ssh``); until then ``detection`` is "".
Call ``close()`` (or use the annotator as a context manager) to stop nDPI.

This module itself is callable: ``portwatch.annotate`` names it, and a call
goes to the default annotator (created on first use, loading the default
registry). The module-class switch is the documented way to customise a
module (Python reference, "Customizing module attribute access").
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import types
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from portwatch._paths import cache_dir
from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.verdict import Detection, FlagReason, summary
from portwatch.capture.batch import LinkType, PacketBatch
from portwatch.decode.native import DecodedBatch, DecodeStatus, decode_batch
from portwatch.decode.rows import Row, rows_to_batch
from portwatch.porttable.cache import load_table
from portwatch.porttable.table import PortTable
from portwatch.registry.store import select_sources

if TYPE_CHECKING:
    from collections import deque

    from portwatch.analysis.detect import FlowDetection, FlowKey, LiveDetection, NdpiFlow

__all__ = ["DEFAULT_MAX_FLOWS", "Annotation", "Annotator", "default_annotator"]

#: How long a call waits for nDPI to read its packet before answering without it.
_NDPI_WAIT_S = 5.0

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
    # ``Annotator(detect=True)``, once nDPI is done with the flow (else ""): what its
    # payload is ("ssh"), how sure ("payload", "port-guess", "none"), and the verdict
    # against the registry ("confirmed", "mismatch", "unconfirmed")
    detected: str = ""
    confidence: str = ""
    detection: str = ""

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
                 max_flows: int = DEFAULT_MAX_FLOWS, detect: bool = False,
                 detect_dir: str | None = None) -> None:
        """``detect``: nDPI's verdict too (``UsageError`` with the install hint when nDPI
        is missing); its FIFO lives in a private directory under ``detect_dir``."""
        if table is None:
            table = load_table(list(select_sources([]).paths), cache=cache_dir()).table
        self.table = table
        self.max_flows = max_flows
        self.analyzer = Analyzer(table)
        # flow row -> (its handshake side when answered, the answer). A flow's
        # answer changes only when a SYN or SYN-ACK sets its handshake side (or,
        # with detection, when nDPI answers), so it is decided once per state.
        self._answers: dict[int, tuple[int, Annotation]] = {}
        self._detection: _Detection | None = None
        if detect:
            self._detection = _Detection(detect_dir)

    def __enter__(self) -> Annotator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop nDPI (with ``detect``) and remove its FIFO; the annotator still answers,
        without detection."""
        detection, self._detection = self._detection, None
        if detection is not None:
            detection.close()

    def __call__(self, packet: object) -> Annotation:
        if self._detection is None:
            row, stamp = _dissect(packet)
            return self.annotate_row(row, stamp)
        frame = _frame_of(packet)
        if frame is not None and _library_of(packet) == "pyshark":
            # pyshark hands over its bytes in JSON mode only, where its fields are named
            # otherwise: the packet is decoded from those bytes, by the native decoder
            from portwatch.decode import pyshark as pyshark_decoder

            stamp = pyshark_decoder.packet_timestamp_ns(packet)
            batch = PacketBatch.from_packets([frame[0]], frame[1], timestamps_ns=[stamp])
            return self._annotate(decode_batch(batch), stamp, frame)
        row, stamp = _dissect(packet)
        return self.annotate_row(row, stamp, frame=frame)

    def annotate_row(self, row: Row, timestamp_ns: int,
                     frame: tuple[bytes, int] | None = None) -> Annotation:
        """Count one already dissected packet and answer for its flow.

        ``frame``: the packet's bytes and pcap link type, for nDPI (``detect``).
        """
        return self._annotate(rows_to_batch([row]), timestamp_ns, frame)

    def _annotate(self, decoded: DecodedBatch, timestamp_ns: int,
                  frame: tuple[bytes, int] | None) -> Annotation:
        flows = self.analyzer.feed_decoded(decoded, np.asarray([timestamp_ns], dtype=np.int64))
        flow = int(flows[0])
        if flow < 0:
            return _no_ports(DecodeStatus(int(decoded.status[0])))
        found = None
        if self._detection is not None:
            found = self._detection.feed(self.analyzer, decoded, flows, frame,
                                         timestamp_ns=timestamp_ns, flow=flow)
        side = int(self.analyzer.flows.handshake_side[flow])
        state = side if found is None else side + 4  # nDPI's word comes once per flow
        cached = self._answers.get(flow)
        if cached is not None and cached[0] == state:
            answer = cached[1]
        else:
            answer = self._answer(flow, found)
            self._answers[flow] = (state, answer)
        if len(self.analyzer.flows) > self.max_flows:
            for evicted in self.analyzer.flows.enforce_limit(self.max_flows).tolist():
                self._answers.pop(evicted, None)  # the row will hold another flow
                if self._detection is not None:
                    self._detection.forget(evicted)
        return answer

    def _answer(self, flow: int, found: FlowDetection | None = None) -> Annotation:
        dec = self.analyzer.flows.decide(self.table, np.asarray([flow], dtype=np.int64))
        verdict = dec.verdict(0, self.table)
        result = Detection.UNCONFIRMED
        if found is not None:  # judged against the decision of the moment
            from portwatch.analysis.detect import judge

            aliases = self.table.lookup(verdict.transport, verdict.service_port).aliases
            result = judge(found, verdict.service, aliases, verdict.status)
            if result is Detection.MISMATCH:
                verdict = replace(verdict, flags=FlagReason(
                    verdict.flags | FlagReason.PROTOCOL_MISMATCH), detected=found.detected)
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
            detected=found.detected if found is not None else "",
            confidence=found.confidence.label if found is not None else "",
            detection=result.label if found is not None else "",
        )


class _Detection:
    """nDPI beside an annotator: the first packets of each flow, one at a time.

    Each packet worth reading goes down ``LiveDetection``'s FIFO and the call
    waits until nDPI's thread has read it, so what nDPI concluded from it is
    known before the answer is given (a thread hand-off per packet nDPI
    reads, at most 20 a flow; none once nDPI is done with the flow).
    """

    def __init__(self, directory: str | None) -> None:
        from collections import deque

        from portwatch.analysis.detect import LiveDetection, require_ndpi

        require_ndpi()
        self._dir = tempfile.mkdtemp(prefix="portwatch-detect-", dir=directory)
        self._reported: deque[NdpiFlow] = deque()
        # idle_ms 0: a flow is reported when nDPI is done with it (or at close)
        self.keeper: LiveDetection = LiveDetection(self._dir, on_flow=self._reported.append,
                                                   waitable=True)
        self._row_of_key: dict[FlowKey, int] = {}
        self._key_of_row: dict[int, FlowKey] = {}
        self._found: dict[int, FlowDetection] = {}

    def feed(self, analyzer: Analyzer, decoded: Any, flows: np.ndarray,
             frame: tuple[bytes, int] | None, *, timestamp_ns: int,
             flow: int) -> FlowDetection | None:
        """Hand the packet to nDPI if it reads it, wait, and return its word on ``flow``."""
        from portwatch.analysis.detect import flow_keys

        if flow not in self._key_of_row:
            (key,) = flow_keys(analyzer.flows, np.asarray([flow], dtype=np.int64))
            self._row_of_key[key] = flow
            self._key_of_row[flow] = key
        if frame is not None and flow not in self._found:
            data, linktype = frame
            batch = PacketBatch.from_packets([data], linktype, timestamps_ns=[timestamp_ns])
            written = self.keeper.packets
            self.keeper.add(batch, decoded, flows, analyzer.flows)
            if self.keeper.packets != written:
                self.keeper.wait(_NDPI_WAIT_S)
            self._take_reports()
        return self._found.get(flow)

    def _take_reports(self) -> None:
        from portwatch.analysis.detect import FlowDetection, ndpi_key

        while self._reported:
            flow = self._reported.popleft()
            row = self._row_of_key.get(ndpi_key(flow))
            if row is not None:
                self._found[row] = FlowDetection.of(flow)

    def forget(self, row: int) -> None:
        self._found.pop(row, None)
        key = self._key_of_row.pop(row, None)
        if key is not None and self._row_of_key.get(key) == row:
            del self._row_of_key[key]

    def close(self) -> None:
        try:
            self.keeper.finish()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)


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


#: scapy's outermost layer -> pcap link type, for the layers nDPI's reader takes.
_SCAPY_LINKTYPES = {"Ether": LinkType.ETHERNET, "IP": LinkType.RAW, "IPv6": LinkType.RAW,
                    "CookedLinux": LinkType.LINUX_SLL, "Loopback": LinkType.NULL}
#: pyshark's (tshark's) first layer -> pcap link type.
_PYSHARK_LINKTYPES = {"eth": LinkType.ETHERNET, "ip": LinkType.RAW, "ipv6": LinkType.RAW,
                      "sll": LinkType.LINUX_SLL, "null": LinkType.NULL}


def _frame_of(packet: object) -> tuple[bytes, int] | None:
    """The bytes nDPI reads and their link type; None when the library keeps no bytes
    (pyshark without ``include_raw=True, use_json=True``) or the link is not one nDPI
    reads: the packet is then annotated without detection."""
    library = _library_of(packet)
    if library == "scapy":
        linktype = _SCAPY_LINKTYPES.get(type(packet).__name__)
        return None if linktype is None else (bytes(packet), int(linktype))  # type: ignore[call-overload]
    if library == "pyshark":
        layers = getattr(packet, "layers", None) or []
        linktype = _PYSHARK_LINKTYPES.get(getattr(layers[0], "layer_name", "") if layers else "")
        get_raw = getattr(packet, "get_raw_packet", None)
        if linktype is None or get_raw is None:
            return None
        try:
            return bytes(get_raw()), int(linktype)
        except (AssertionError, AttributeError, TypeError, ValueError):  # no raw bytes kept
            return None
    return None


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
