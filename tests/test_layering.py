"""The tree is the architecture: each package imports only the stages before it.

The rule, drawn as the pipeline: ``registry -> porttable``;
``capture -> decode -> analysis -> export``; ``daemon`` on top of analysis and
the live capture sources; ``annotate`` (the public per-packet API) and
``testing`` above; ``cli`` over everything. Every stage may use the shared
vocabulary, errors and paths (``ports``, ``errors``, ``_paths``, ``_atomic``,
``_terminal``, ``_engines``). Imports under ``if TYPE_CHECKING:`` do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "portwatch"

BASE = frozenset({"ports", "errors", "_paths", "_atomic", "_terminal", "_engines", "__init__"})
#: stage -> the stages it may import (besides itself and BASE)
ALLOWED: dict[str, frozenset[str]] = {
    "registry": frozenset(),
    "porttable": frozenset({"registry"}),
    "capture": frozenset(),
    "decode": frozenset({"capture"}),
    "analysis": frozenset({"porttable", "capture", "decode"}),
    "export": frozenset({"porttable", "analysis"}),
    "daemon": frozenset({"registry", "porttable", "capture", "decode", "analysis"}),
    "testing": frozenset({"capture"}),
    "annotate": frozenset({"registry", "porttable", "capture", "decode", "analysis"}),
    "cli": frozenset({"registry", "porttable", "capture", "decode", "analysis", "export",
                      "daemon", "annotate"}),
    "__main__": frozenset({"cli"}),
}
#: inside capture, files/ never reaches for live/ (a reader must not need a live backend)
INNER_FORBIDDEN = {("capture.files", "capture.live")}


def stage_of(module: str) -> str:
    """``portwatch.analysis.flows`` -> ``analysis``; top-level modules are their own stage."""
    return module.split(".")[1] if module.count(".") >= 1 else module


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
    return [m for m in found if m == "portwatch" or m.startswith("portwatch.")]


def violations(edges: list[tuple[str, str]]) -> list[str]:
    """Each (importer, imported) pair that breaks the layering, as a readable line."""
    bad = []
    for importer, imported in edges:
        src, dst = stage_of(importer), stage_of(imported)
        if imported == "portwatch" or dst in BASE or dst == src:
            inner_src = ".".join(importer.split(".")[1:3])
            inner_dst = ".".join(imported.split(".")[1:3])
            if (inner_src, inner_dst) in INNER_FORBIDDEN:
                bad.append(f"{importer} imports {imported} (files before live)")
            continue
        if src in BASE:
            bad.append(f"{importer} (shared vocabulary) imports the stage {imported}")
        elif dst not in ALLOWED.get(src, frozenset()):
            bad.append(f"{importer} imports {imported}: {src} may not depend on {dst}")
    return bad


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 2:
        parts.pop()
    return ".".join(parts)


def _edges() -> list[tuple[str, str]]:
    return [(_module_name(p), imported) for p in sorted(SRC.rglob("*.py"))
            for imported in _imports(p)]


def test_no_module_imports_a_later_stage_of_the_pipeline() -> None:
    edges = _edges()
    assert len(edges) > 100  # the walk really found the package's imports
    assert violations(edges) == []


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("portwatch.decode.native", "portwatch.registry.model"),  # decode needs only ports
        ("portwatch.analysis.flows", "portwatch.daemon.config"),  # an earlier stage upward
        ("portwatch.capture.files.reader", "portwatch.capture.live.dumpcap"),
        ("portwatch.ports", "portwatch.registry.model"),
        ("portwatch.registry.store", "portwatch.porttable.cache"),
    ],
)
def test_a_deliberate_violation_is_caught(importer: str, imported: str) -> None:
    assert violations([(importer, imported)]) != []


def test_every_top_level_name_has_a_stage() -> None:
    top = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
           if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert top - BASE - set(ALLOWED) == set()
