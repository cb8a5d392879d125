"""The official registry shipped in the package is what a fresh install answers from."""

from __future__ import annotations

import io
import json
import lzma
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from portwatch.cli import main
from portwatch.registry.packaged import packaged_snapshot

_NS = "{http://www.iana.org/assignments}"
# IANA's conventions for unnamed rows, as the README states them
_UNASSIGNED = re.compile(r"unassigned|de-?registered|removed|deprecated|decom+is+ioned|"
                         r"de-commissioned", re.I)


def _independent_reading() -> dict[tuple[str, int], tuple[str, str, list[str]]]:
    """(transport, port) -> (status, service, aliases) straight from the XML, tcp and udp.

    A row for one port beats a range; the first named row is the service and
    the later ones its aliases; 49152-65535 is dynamic; a port no row names is
    unlisted.
    """
    root = ET.fromstring(lzma.decompress(packaged_snapshot().read_bytes()))
    single: dict[tuple[str, int], list[tuple[str, str]]] = {}
    ranged: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for rec in root.iter(_NS + "record"):
        number = rec.findtext(_NS + "number")
        if not number:
            continue
        low, _, high = number.partition("-")
        ports = range(int(low), int(high or low) + 1)
        name = rec.findtext(_NS + "name") or ""
        desc = "".join(rec.find(_NS + "description").itertext()).strip()  # type: ignore[union-attr]
        if name:
            status = "assigned"
        elif desc.lower().startswith("reserved"):
            status = "reserved"
        elif _UNASSIGNED.search(desc):
            status = "unassigned"
        else:
            status = "assigned"  # a described use without a service name
        proto = rec.findtext(_NS + "protocol")
        for transport in [proto] if proto else ["tcp", "udp"]:
            for port in ports:
                (single if len(ports) == 1 else ranged).setdefault(
                    (transport, port), []).append((status, name))
    out: dict[tuple[str, int], tuple[str, str, list[str]]] = {}
    for transport in ("tcp", "udp"):
        for port in range(65536):
            rows = single.get((transport, port)) or ranged.get((transport, port))
            if port >= 49152:
                out[(transport, port)] = ("dynamic", "", [])
            elif not rows:
                out[(transport, port)] = ("unlisted", "", [])
            else:
                names = list(dict.fromkeys(n for s, n in rows if s == "assigned" and n))
                assigned = any(s == "assigned" for s, _ in rows)
                status = "assigned" if assigned else rows[0][0]
                out[(transport, port)] = (status, names[0] if names else "", names[1:])
    return out


def test_default_lookup_equals_an_independent_reading_of_the_official_xml_cell_by_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PORTWATCH_DATA_DIR", str(tmp_path / "empty-data"))
    monkeypatch.setenv("PORTWATCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PORTWATCH_REGISTRY", raising=False)
    expected = _independent_reading()
    queries = "".join(f"{port}/{t}\n" for t, port in expected)
    monkeypatch.setattr("sys.stdin", io.StringIO(queries))
    assert main(["lookup", "--json", "-"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    got = {(a["transport"], a["port"]): (a["status"], a["service"], a["aliases"])
           for a in answers}
    assert len(got) == 2 * 65536
    differing = [(k, expected[k], got[k]) for k in expected if got[k] != expected[k]]
    assert differing == []
    statuses = {s for s, _, _ in got.values()}
    assert "unlisted" not in {got[("tcp", p)][0] for p in (0, 4, 8807)}
    assert {"assigned", "reserved", "unassigned", "dynamic"} <= statuses


def test_packaged_snapshot_carries_people_remarks_and_unauthorized_use(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PORTWATCH_DATA_DIR", str(tmp_path / "empty-data"))
    monkeypatch.setenv("PORTWATCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PORTWATCH_REGISTRY", raising=False)
    assert main(["lookup", "--json", "80/tcp", "44515/tcp"]) == 0
    http, squatted = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    people = [p for r in http["records"] for p in r["assignees"] + r["contacts"]]
    assert any("@" in p["email"] for p in people)
    assert squatted["status"] == "unassigned"
    assert squatted["flags"] == ["unauthorized-use"]
