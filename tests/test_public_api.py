"""The public API: what users may rely on is exported by ``portwatch`` itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import portwatch

PCAPS = Path(__file__).resolve().parent.parent / "pcaps"


def test_every_public_name_resolves() -> None:
    for name in portwatch.__all__:
        assert getattr(portwatch, name) is not None, name


def test_import_portwatch_loads_neither_numpy_nor_the_registry() -> None:
    code = ("import sys, portwatch; "
            "print(sorted(m for m in ('numpy', 'portwatch.registry', 'portwatch.porttable') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_every_public_name_is_listed_once_and_resolvable_by_name() -> None:
    assert sorted(portwatch.__all__) == sorted(set(portwatch.__all__))
    assert set(portwatch.__all__) - {"__version__"} <= set(dir(portwatch))


def test_the_documented_library_example_analyses_a_capture() -> None:
    table = portwatch.open_table()
    analyzer = portwatch.Analyzer(table)
    with portwatch.read_capture(str(PCAPS / "sample.pcapng")) as reader:
        for batch in reader:
            analyzer.feed(batch)
    report = analyzer.report()
    assert report.packets > 0
    statuses = {s.status for s in report.services}
    assert {"reserved", "unassigned"} <= statuses  # the packaged registry answered


def test_errors_are_one_family() -> None:
    for name in portwatch.__all__:
        value = getattr(portwatch, name)
        if isinstance(value, type) and name.endswith("Error"):
            assert issubclass(value, portwatch.PortwatchError)
