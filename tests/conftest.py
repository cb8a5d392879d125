"""Shared fixtures: where the read-only registry snapshot and seeds live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PORTWATCH_SHARED", REPO.parent / "shared"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared registry snapshot sits beside the repo in CI")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _need(SHARED)


@pytest.fixture(scope="session")
def official_csv() -> Path:
    return _need(SHARED / "registry" / "service-names-port-numbers.csv")


@pytest.fixture(scope="session")
def official_xml() -> Path:
    return _need(SHARED / "registry" / "service-names-port-numbers.xml")


@pytest.fixture(scope="session")
def history_csv() -> Path:
    return _need(SHARED / "registry" / "history" / "service-names-port-numbers-2024-06.csv")


@pytest.fixture(scope="session")
def seed_files() -> list[Path]:
    return sorted(_need(SHARED / "seeds").glob("*.txt"))
