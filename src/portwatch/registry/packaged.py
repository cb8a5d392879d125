"""The official IANA registry that ships inside the package.

A fresh install must answer with IANA's real statuses (reserved, unassigned,
dynamic), not the assigned-only view of a services(5) file, so the package
carries the official XML, xz-compressed, as package data. It is the last
default: ``--registry``/``PORTWATCH_REGISTRY`` and what ``registry import`` or
``registry update`` stored come first. ``tools/refresh_registry_snapshot.py``
replaces it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PACKAGED_LABEL", "is_packaged", "packaged_snapshot", "source_label"]

_FILE = "service-names-port-numbers.xml.xz"

#: How reports and metrics name the packaged snapshot instead of a site-packages path.
PACKAGED_LABEL = f"packaged:{_FILE}"


def packaged_snapshot() -> Path:
    """The file inside the installed package (a plain file: wheels install unzipped).

    Found beside this module, as ``importlib.resources.files`` finds it for a
    package on disk, without importing ``importlib.resources`` (and its
    ``tempfile``) on every command's start (tests/cli/test_startup.py
    checks both agree).
    """
    return Path(__file__).parent / "data" / _FILE


def is_packaged(path: str | Path) -> bool:
    try:
        return Path(path).resolve() == packaged_snapshot().resolve()
    except OSError:
        return False


def source_label(path: str | Path) -> str:
    """``packaged:…`` for the shipped snapshot, the path itself for anything else."""
    return PACKAGED_LABEL if is_packaged(path) else str(path)
