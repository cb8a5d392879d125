"""A Wireshark Lua post-dissector generated from a compiled table.

The plugin carries the registry inside it, so Wireshark needs neither
portwatch nor the registry files. To keep it small and its load fast, every
(transport, port) slot is reduced to an *answer* (status, unauthorized-use,
service name, description, unauthorized-use remark); the answers are
interned, and each transport's 65,536 slots become runs of equal answers.
Numbers are written as base-32 digits in printable characters; names,
descriptions and remarks as one text block each.
At load the plugin turns each transport's runs into two arrays (first port of
each run, answer) and looks ports up by binary search.

The plugin words its verdicts with the sentences of
``portwatch.analysis.verdict``, embedded here, so Wireshark says what
``portwatch analyze`` says. It also compares Wireshark's own dissection of a
packet (the application protocol above the transport in ``frame.protocols``)
with the registry's service, through the same nDPI-to-IANA table as
``--detect`` (``analysis/data/ndpi_to_iana.tsv``), keyed by Wireshark's names.

Everything here is pure: table in, Lua text out. Writing the file is the
CLI's job.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

from portwatch import __version__
from portwatch.analysis.ndpi_names import packaged_table
from portwatch.analysis.verdict import BOTH_DYNAMIC, STATUS_REASONS, FlagReason, sentences
from portwatch.ports import PortFlag, PortStatus, Transport
from portwatch.porttable.table import PortTable

__all__ = [
    "PLUGIN_FILENAME",
    "PluginData",
    "encode_numbers",
    "plugin_bytes",
    "plugin_data",
    "render_plugin",
]

PLUGIN_FILENAME = "portwatch.lua"

_TERMINAL = "0123456789ABCDEFGHIJKLMNOPQRSTUV"
_MORE = "WXYZabcdefghijklmnopqrstuvwxyz+/"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


@dataclass(frozen=True, slots=True)
class PluginData:
    """The table reduced to what the plugin needs, before encoding.

    ``answers`` holds ``(status * 2 + unauthorized_use, name index,
    description index, remark index)``; ``runs[transport]`` holds ``(length,
    answer index)`` pairs covering ports 0-65535 in order.
    """

    names: list[str]
    descriptions: list[str]
    remarks: list[str]
    answers: list[tuple[int, int, int, int]]
    runs: dict[Transport, list[tuple[int, int]]]


def _one_line(text: str) -> str:
    """Control characters would break the one-per-line text blocks."""
    return _CONTROL.sub(" ", text)


def plugin_data(table: PortTable) -> PluginData:
    """Intern each slot's answer and run-length encode every transport."""
    names: list[str] = [""]
    name_ids: dict[str, int] = {"": 0}
    descriptions: list[str] = [""]
    description_ids: dict[str, int] = {"": 0}
    remarks: list[str] = [""]
    remark_ids: dict[str, int] = {"": 0}
    answers: list[tuple[int, int, int, int]] = []
    answer_ids: dict[tuple[int, int, int, int], int] = {}
    # One description and remark per table entry; -1 (no entry) reads empty strings.
    entry_descriptions = [_one_line(e.description) for e in table.entries] + [""]
    entry_remarks = [_one_line(e.remark) for e in table.entries] + [""]
    runs: dict[Transport, list[tuple[int, int]]] = {}
    for transport in Transport:
        status = table.status[transport].astype(np.int64)
        unauthorized = (table.flags[transport] & PortFlag.UNAUTHORIZED_USE) != 0
        service = table.service_id[transport].astype(np.int64)
        entry = table.entry[transport].astype(np.int64)
        # A slot's answer is fixed by (status, flag, service id, entry).
        key = np.stack([status, unauthorized.astype(np.int64), service, entry], axis=1)
        change = np.ones(key.shape[0], dtype=np.bool_)
        change[1:] = np.any(key[1:] != key[:-1], axis=1)
        starts = np.flatnonzero(change)
        lengths = np.diff(np.append(starts, key.shape[0]))
        transport_runs: list[tuple[int, int]] = []
        for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
            st, unauth, sid, eid = key[start].tolist()
            name = _one_line(table.names[sid])
            nid = name_ids.get(name)
            if nid is None:
                nid = name_ids[name] = len(names)
                names.append(name)
            description = entry_descriptions[eid]
            did = description_ids.get(description)
            if did is None:
                did = description_ids[description] = len(descriptions)
                descriptions.append(description)
            remark = entry_remarks[eid] if unauth else ""
            rid = remark_ids.get(remark)
            if rid is None:
                rid = remark_ids[remark] = len(remarks)
                remarks.append(remark)
            answer = (st * 2 + unauth, nid, did, rid)
            aid = answer_ids.get(answer)
            if aid is None:
                aid = answer_ids[answer] = len(answers)
                answers.append(answer)
            if transport_runs and transport_runs[-1][1] == aid:  # same answer, other entry
                transport_runs[-1] = (transport_runs[-1][0] + length, aid)
            else:
                transport_runs.append((length, aid))
        runs[transport] = transport_runs
    return PluginData(names, descriptions, remarks, answers, runs)


def encode_numbers(values: Iterable[int]) -> str:
    """Non-negative integers as base-32 digits; only a number's last digit is terminal."""
    out: list[str] = []
    for value in values:
        if value < 0:
            raise ValueError(f"cannot encode negative number {value}")
        digits = [_TERMINAL[value & 31]]
        rest = value >> 5
        while rest:
            digits.append(_MORE[rest & 31])
            rest >>= 5
        out.extend(reversed(digits))
    return "".join(out)


def _long_string(lines: Sequence[str]) -> str:
    """A Lua long-bracket literal holding each line followed by a newline."""
    body = "".join(f"{line}\n" for line in lines)
    level = 0
    while f"]{'=' * level}]" in body:
        level += 1
    eq = "=" * level
    # Lua drops a newline right after the opening bracket, so start with one.
    return f"[{eq}[\n{body}]{eq}]"


def _lua_quoted(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + _CONTROL.sub(" ", escaped) + '"'


_SENTENCE_GAPS = re.compile(r"(\{where\}|\{remark\}|\{head\}|\{detected\})")
_GAP_NAMES = {"{where}": "WHERE", "{remark}": "REMARK", "{head}": "HEAD",
              "{detected}": "DETECTED"}


def _lua_sentences(assigned_only: bool) -> str:
    """``verdict.sentences()`` as a Lua table of pieces; WHERE, REMARK, HEAD, DETECTED fill gaps."""
    entries = []
    for key, text in sentences(assigned_only).items():
        pieces = [_GAP_NAMES.get(p) or _lua_quoted(p)
                  for p in _SENTENCE_GAPS.split(text) if p]
        entries.append(f'  [{_lua_quoted(key)}] = {{ {", ".join(pieces)} }},')
    return "{\n" + "\n".join(entries) + "\n}"


def _lua_reasons() -> str:
    """Reason labels and bits in ``FlagReason`` order, and the reason of each status."""
    order = ", ".join(_lua_quoted(r.label) for r in FlagReason)
    bits = ", ".join(f"[{_lua_quoted(r.label)}] = {int(r)}" for r in FlagReason)
    status = ", ".join(f"[{int(s)}] = {int(STATUS_REASONS[s])}" for s in PortStatus)
    return (f"local REASON_ORDER = {{ {order} }}\nlocal REASON = {{ {bits} }}\n"
            f"local STATUS_REASON = {{ {status} }}")


#: Wireshark's name of a protocol where it is not nDPI's, lower-cased.
_WIRESHARK_NAMES = {
    "ftp_control": "ftp", "ftp_data": "ftp-data", "smbv1": "smb", "smbv23": "smb2",
    "mssql-tds": "tds", "postgresql": "pgsql", "netbios": "nbns", "resp": "redis",
    "ipsec": "isakmp", "jabber": "xmpp", "usenet": "nntp", "modbus": "mbtcp",
    "iec60870": "iec60870_104", "ethernetip": "enip", "gtp_u": "gtp", "gtp_c": "gtp",
    "h323": "h225", "doh_dot": "dot", "wsd": "wsdd",
}


def _lua_confirms() -> str:
    """Wireshark protocol -> the IANA names that confirm it, from ``ndpi_to_iana.tsv``."""
    merged: dict[str, set[str]] = {}
    for ndpi, names in packaged_table().items():
        key = _WIRESHARK_NAMES.get(ndpi.lower(), ndpi.lower())
        merged.setdefault(key, set()).update(n.lower() for n in names)
    entries = []
    for key, iana in sorted(merged.items()):
        members = ", ".join(f"[{_lua_quoted(n)}] = true" for n in sorted(iana))
        entries.append(f"  [{_lua_quoted(key)}] = {{ {members} }},")
    return "{\n" + "\n".join(entries) + "\n}"


def _registry_date(table: PortTable) -> str:
    last = table.last_updated
    return last.isoformat() if last is not None else "unknown"


def _source_lines(table: PortTable) -> list[str]:
    if not table.sources:
        return ["(no sources)"]
    out = []
    for s in table.sources:
        date = s.last_updated.isoformat() if s.last_updated else "undated"
        digest = f", sha256 {s.sha256[:16]}" if s.sha256 else ""
        out.append(f"{os.path.basename(s.path)} ({s.format.value}, last updated {date}{digest})")
    return out


def _template() -> str:
    return (resources.files(__package__) / "portwatch.lua.in").read_text(encoding="utf-8")


def render_plugin(table: PortTable, *, version: str = __version__) -> str:
    """The complete Lua source of the post-dissector for ``table``."""
    data = plugin_data(table)
    sources = _source_lines(table)
    values = {
        "VERSION": _one_line(version),
        "REGISTRY_DATE": _registry_date(table),
        "SOURCES_COMMENT": "\n".join(f"--   {_one_line(s)}" for s in sources),
        "NAMES": _long_string(data.names),
        "DESCRIPTIONS": _long_string(data.descriptions),
        "REMARKS": _long_string(data.remarks),
        "SENTENCES": _lua_sentences(table.assigned_only),
        "BOTH_DYNAMIC": _lua_quoted(BOTH_DYNAMIC),
        "REASONS": _lua_reasons(),
        "CONFIRMS": _lua_confirms(),
        "ENTRIES": _lua_quoted(encode_numbers(v for a in data.answers for v in a)),
    }
    for transport in Transport:
        pairs = data.runs[transport]
        values[f"RUNS_{transport.name}"] = _lua_quoted(
            encode_numbers(v for run in pairs for v in run)
        )

    def fill(m: re.Match[str]) -> str:
        return values[m[1]]

    return _PLACEHOLDER.sub(fill, _template())


def plugin_bytes(table: PortTable, *, version: str = __version__) -> bytes:
    return render_plugin(table, version=version).encode("utf-8")

