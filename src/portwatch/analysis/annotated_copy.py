"""Annotated copies of captures: every packet carries portwatch's verdict.

The copy is pcapng with an ``opt_comment`` per packet, which Wireshark and
tshark show as ``frame.comment``. Verdicts are per flow and known only once
the whole capture was read, so annotation is a second pass: replaying the
same batches through a fresh ``Analyzer`` gives every packet the same flow
index as the first pass, in the same order.

A pcapng source is copied with :func:`copy_annotated`, which loses nothing:
the blocks the reader skips (name resolution, decryption secrets, statistics,
custom blocks), section comments and each packet's own options are written
as they were, and the portwatch comment goes beside the packet's own
comments. A pcap source has none of these; :func:`write_annotated` lays out
a fresh pcapng for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.verdict import FlowDecisions
from portwatch.capture.batch import PacketBatch
from portwatch.capture.files.pcapng import RawBlock
from portwatch.capture.files.reader import CaptureReader
from portwatch.capture.files.writer import PcapngCopyWriter, PcapngWriter
from portwatch.decode.native import DecodeStatus
from portwatch.errors import CaptureTruncatedError

__all__ = ["copy_annotated", "flow_comments", "write_annotated"]


def flow_comments(analyzer: Analyzer, decisions: FlowDecisions) -> list[str]:
    """The comment of each flow row: ``portwatch: <verdict summary> [<rule>]``.

    E.g. ``portwatch: tcp/80 http (assigned) [handshake]``; a flagged flow's
    summary carries its reasons, worded as the report words them.
    """
    out: list[str] = []
    for row in range(analyzer.flows.size):
        verdict = decisions.verdict(row, analyzer.table)
        rule = verdict.rule.label if verdict.rule is not None else ""
        out.append(f"portwatch: {verdict.summary()} [{rule}]")
    return out


_PORTLESS = {s: f"portwatch: no transport ports ({s.label})" for s in DecodeStatus}


def write_annotated(
    first_pass: Analyzer,
    batches: Iterable[PacketBatch],
    writer: PcapngWriter,
    *,
    only_flagged: bool = False,
    interfaces_of: CaptureReader | None = None,
    flow_overrides: Mapping[int, tuple[str, bool]] | None = None,
) -> int:
    """Second pass: write ``batches`` with comments; returns packets written.

    ``flow_overrides``: flow row -> (comment, flagged) replacing the verdict's
    own, for what the first pass learnt besides the ports (``--detect``:
    ``portwatch.analysis.detect.annotation_comments``).
    """
    comment = _Commenter(first_pass, only_flagged, flow_overrides)
    written = 0
    for batch in batches:
        if interfaces_of is not None:
            writer.sync_interfaces(interfaces_of.interfaces)
        writer.write_batch(batch, comment(batch))
        written += len(batch)
    return written


class _Commenter:
    """The comment of every packet of a batch, from a replay of the first pass."""

    def __init__(self, first_pass: Analyzer, only_flagged: bool,
                 overrides: Mapping[int, tuple[str, bool]] | None = None) -> None:
        decisions = first_pass.decisions()
        self._of_flow = flow_comments(first_pass, decisions)
        self._flagged = (decisions.flags != 0).tolist()
        for row, (text, flagged) in (overrides or {}).items():
            self._of_flow[row] = text
            self._flagged[row] = flagged
        self._only_flagged = only_flagged
        self._replay = Analyzer(first_pass.table)

    def __call__(self, batch: PacketBatch) -> list[str | None]:
        decoded, flows = self._replay.feed(batch)
        only = self._only_flagged
        comments: list[str | None] = []
        for flow, st in zip(flows.tolist(), decoded.status.tolist(), strict=True):
            if flow >= 0:
                comments.append(self._of_flow[flow] if not only or self._flagged[flow] else None)
            else:
                comments.append(None if only else _PORTLESS[DecodeStatus(st)])
        return comments


def copy_annotated(
    first_pass: Analyzer,
    batches: Iterable[PacketBatch],
    blocks: Iterator[RawBlock],
    writer: PcapngCopyWriter,
    *,
    only_flagged: bool = False,
    flow_overrides: Mapping[int, tuple[str, bool]] | None = None,
) -> int:
    """Second pass over a pcapng source: every block copied, packets commented.

    ``batches`` and ``blocks`` are two walks of the same file (a reader's
    batches and ``pcapng.iter_raw_blocks``); a packet's batch row and its
    block are matched by file offset, and every block between two packets is
    copied in place. When the batches end on damage, the non-packet blocks
    read soundly before it are still copied, then the damage is raised.
    Returns the packets written.
    """
    comment = _Commenter(first_pass, only_flagged, flow_overrides)
    try:
        for batch in batches:
            for offset, text in zip(batch.file_offsets.tolist(), comment(batch), strict=True):
                for block in blocks:
                    if block.offset == offset:
                        writer.packet(block, text)
                        break
                    if block.is_packet:
                        raise ValueError(f"packet block at byte {block.offset} is not in the "
                                         f"reader's batches (next there: byte {offset})")
                    writer.copy(block)
                else:
                    raise ValueError(f"no block at byte {offset}, where the reader found a packet")
    except CaptureTruncatedError:
        _copy_until_packet(blocks, writer)
        raise
    _copy_until_packet(blocks, writer)
    return writer.packets


def _copy_until_packet(blocks: Iterator[RawBlock], writer: PcapngCopyWriter) -> None:
    """The trailing blocks (statistics, usually) up to a packet the reader did not give."""
    for block in blocks:
        if block.is_packet:
            return
        writer.copy(block)
