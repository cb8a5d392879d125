"""Shared fixtures: the official registry (packaged, or test data) and the seeds.

The official XML is the snapshot that ships inside the package; the official
CSV and an older CSV export live xz-compressed under ``tests/data``. A plain
clone runs every test of the official registry; only the seeds' text
renderings are read from ``../shared/seeds`` when it sits beside the repo.
"""

from __future__ import annotations

import lzma
import os
import shutil
from pathlib import Path

import pytest

from portwatch.porttable.cache import load_table
from portwatch.porttable.table import PortTable
from portwatch.registry.packaged import packaged_snapshot

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
SHARED = Path(os.environ.get("PORTWATCH_SHARED", REPO.parent / "shared"))


def _inflate(source: Path, target_dir: Path, name: str) -> Path:
    """The plain file a test reads, inflated once per session."""
    target = target_dir / name
    target.write_bytes(lzma.decompress(source.read_bytes()))
    return target


@pytest.fixture(scope="session")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registry")


@pytest.fixture(scope="session")
def official_csv(registry_dir: Path) -> Path:
    """IANA's CSV export of 2026-04-09 (14,512 rows)."""
    return _inflate(DATA / "registry" / "service-names-port-numbers.csv.xz", registry_dir,
                    "service-names-port-numbers.csv")


@pytest.fixture(scope="session")
def official_xml(registry_dir: Path) -> Path:
    """The packaged snapshot, inflated: IANA's XML of 2026-08-17 with its people."""
    return _inflate(packaged_snapshot(), registry_dir, "service-names-port-numbers.xml")


@pytest.fixture(scope="session")
def history_csv(registry_dir: Path) -> Path:
    """An older official CSV export (registry as of 2024-06)."""
    return _inflate(DATA / "registry" / "service-names-port-numbers-2024-06.csv.xz",
                    registry_dir, "service-names-port-numbers-2024-06.csv")


@pytest.fixture(scope="session")
def seed_files() -> list[Path]:
    seeds = SHARED / "seeds"
    if not seeds.is_dir():
        pytest.skip(f"{seeds} is absent: the seeds' text renderings sit beside the repo in CI "
                    "(small text-table fixtures cover every quirk without them)")
    return sorted(seeds.glob("*.txt"))


@pytest.fixture(autouse=True)
def _no_registry_age_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test data ages with the calendar; tests of the warning turn it on themselves."""
    monkeypatch.setenv("PORTWATCH_REGISTRY_MAX_AGE_DAYS", "0")


@pytest.fixture(scope="session")
def table(official_csv: Path) -> PortTable:
    """The official CSV compiled once for the whole run (tests only read it)."""
    return load_table([str(official_csv)], cache=None).table


@pytest.fixture(scope="session")
def packaged() -> PortTable:
    """The table of the packaged snapshot (the default registry), compiled once."""
    return load_table([str(packaged_snapshot())], cache=None).table


@pytest.fixture(scope="session")
def compiled_cache(tmp_path_factory: pytest.TempPathFactory, official_csv: Path) -> Path:
    """The cache files of the registries most tests load, compiled once per run."""
    cache = tmp_path_factory.mktemp("compiled-cache")
    for sources in ([str(packaged_snapshot())], [str(official_csv)]):
        load_table(sources, cache=cache)
    return cache


@pytest.fixture
def warm_cache(tmp_path: Path, compiled_cache: Path) -> Path:
    """A cache directory of this test's own, holding copies of the session's tables.

    Copies, not links: a test may tamper with its cache files.
    """
    cache = tmp_path / "cache"
    shutil.copytree(compiled_cache, cache)
    return cache
