"""Annotated copies of captures: every packet carries portwatch's verdict.

The copy is pcapng with an ``opt_comment`` per packet, which Wireshark and
tshark show as ``frame.comment``. Verdicts are per flow and known only once
the whole capture was read, so annotation is a second pass: replaying the
same batches through a fresh ``Analyzer`` gives every packet the same flow
index as the first pass, in the same order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.verdict import FlowDecisions
from portwatch.capture.batch import PacketBatch
from portwatch.capture.files.reader import CaptureReader
from portwatch.capture.files.writer import PcapngWriter
from portwatch.decode.native import DecodeStatus

__all__ = ["flow_comments", "write_annotated"]


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
    decisions = first_pass.decisions()
    comments_of_flow = flow_comments(first_pass, decisions)
    flagged_flow = decisions.flags != 0
    for row, (comment, flagged) in (flow_overrides or {}).items():
        comments_of_flow[row] = comment
        flagged_flow[row] = flagged
    replay = Analyzer(first_pass.table)
    written = 0
    for batch in batches:
        if interfaces_of is not None:
            writer.sync_interfaces(interfaces_of.interfaces)
        decoded, flows = replay.feed(batch)
        comments: list[str | None] = []
        status = decoded.status.tolist()
        for flow, st in zip(flows.tolist(), status, strict=True):
            if flow >= 0:
                keep = not only_flagged or bool(flagged_flow[flow])
                comments.append(comments_of_flow[flow] if keep else None)
            else:
                comments.append(None if only_flagged else _PORTLESS[DecodeStatus(st)])
        writer.write_batch(batch, comments)
        written += len(batch)
    return written
