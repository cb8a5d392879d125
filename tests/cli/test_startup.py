"""Start-up: a subcommand imports only what it uses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from portwatch.cli import build_parser, command_of

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"


@pytest.mark.parametrize(("argv", "command"), [
    (["analyze", "x.pcap"], "analyze"),
    (["--registry", "analyze", "lookup", "80"], "lookup"),
    (["--registry", "a.csv", "--strict", "--registry-max-age", "3", "daemon"], "daemon"),
    (["--registry=a.csv", "--no-cache", "export", "-o", "x"], "export"),
    (["--", "registry", "info"], "registry"),
    (["-h", "analyze"], None),
    (["--help"], None),
    (["--version"], None),
    (["analyse", "x.pcap"], None),
    (["--registry-max", "5", "analyze"], None),
    ([], None),
])
def test_the_subcommand_is_found_past_the_global_options(
    argv: list[str], command: str | None
) -> None:
    assert command_of(argv) == command


def test_a_parser_for_one_command_parses_it_as_the_full_parser_does() -> None:
    argv = ["--strict", "analyze", "--format", "json", "a.pcap", "--registry", "r.csv"]
    full, _ = build_parser()
    one, runners = build_parser("analyze")
    assert list(runners) == ["analyze"]
    assert vars(one.parse_args(argv)) == vars(full.parse_args(argv))


def _modules_after(argv: list[str], env: dict[str, str]) -> set[str]:
    code = (
        "import json, sys\n"
        "from portwatch.cli import main\n"
        f"main({argv!r})\n"
        "sys.stderr.write(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, **env, "PYTHONPATH": str(SRC)}, check=False,
                         cwd=ROOT)
    return set(json.loads(out.stderr.strip().splitlines()[-1]))


def _warm_env(official_csv: Path, warm_cache: Path) -> dict[str, str]:
    return {"PORTWATCH_REGISTRY": str(official_csv), "PORTWATCH_CACHE_DIR": str(warm_cache),
            "PORTWATCH_REGISTRY_MAX_AGE_DAYS": "0"}


@pytest.fixture(scope="module")
def plain_analyze(official_csv: Path, compiled_cache: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The modules a plain warm ``analyze --format json`` of the sample has loaded (run once)."""
    cache = tmp_path_factory.mktemp("startup") / "cache"
    shutil.copytree(compiled_cache, cache)
    return _modules_after(["analyze", "--format", "json", "pcaps/sample.pcapng"],
                          _warm_env(official_csv, cache))


def test_analyze_loads_neither_the_daemon_nor_the_exporter_nor_numpy_ma(
    plain_analyze: set[str],
) -> None:
    loaded = plain_analyze
    assert "portwatch.analysis.analyzer" in loaded
    assert not {m for m in loaded if m.startswith(("portwatch.cli.daemon", "portwatch.daemon",
                                                   "portwatch.export", "portwatch.cli.export"))}
    assert "numpy.ma" not in loaded


def test_only_the_prom_format_loads_prometheus_client(
    official_csv: Path, warm_cache: Path, plain_analyze: set[str]
) -> None:
    json_run = plain_analyze
    prom_run = _modules_after(["analyze", "--format", "prom", "pcaps/sample.pcapng"],
                              _warm_env(official_csv, warm_cache))
    assert not {m for m in json_run if m.startswith(("prometheus_client", "http.server"))}
    assert "prometheus_client" in prom_run


def test_a_warm_analyze_loads_neither_the_compiler_nor_the_terminal_ui(
    plain_analyze: set[str],
) -> None:
    loaded = plain_analyze
    assert "portwatch.porttable.table" in loaded
    assert not loaded & {"portwatch.porttable.compile", "portwatch.cli.top",
                         "portwatch.cli.completion", "termios", "tty"}


def test_a_cold_cache_still_compiles(official_csv: Path, tmp_path: Path) -> None:
    env = {"PORTWATCH_REGISTRY": str(official_csv), "PORTWATCH_CACHE_DIR": str(tmp_path),
           "PORTWATCH_REGISTRY_MAX_AGE_DAYS": "0"}
    loaded = _modules_after(["analyze", "--format", "json", "pcaps/sample.pcapng"], env)
    assert "portwatch.porttable.compile" in loaded
    assert list(tmp_path.glob("table-*.npz"))


#: Made lazy for a plain ``analyze`` (single capture, no --detect/--interval/--annotate/
#: --jobs/--resume/--filter error): each is imported only by the option that needs it.
_LAZY_FOR_PLAIN_ANALYZE = frozenset({
    "portwatch.analysis.detect", "portwatch.analysis.live", "portwatch.analysis.merge",
    "portwatch._atomic", "tempfile", "subprocess", "difflib", "importlib.resources", "glob",
})


def test_a_plain_analyze_loads_none_of_the_modules_only_options_need(
    plain_analyze: set[str],
) -> None:
    loaded = plain_analyze
    assert "portwatch.analysis.run" in loaded
    assert loaded & _LAZY_FOR_PLAIN_ANALYZE == set()


def test_the_detect_request_default_is_the_detectors() -> None:
    from portwatch.analysis.detect import DEFAULT_PACKETS
    from portwatch.analysis.run import DetectRequest

    assert DetectRequest().packets == DEFAULT_PACKETS


def test_a_mistyped_filter_still_suggests_the_nearest_spelling(
    official_csv: Path, warm_cache: Path
) -> None:
    env = {**os.environ, "PORTWATCH_REGISTRY": str(official_csv),
           "PORTWATCH_CACHE_DIR": str(warm_cache), "PORTWATCH_REGISTRY_MAX_AGE_DAYS": "0",
           "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-m", "portwatch", "analyze", "-f", "json",
                          "--filter", "status=reserverd", "pcaps/sample.pcapng"],
                         capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "did you mean 'reserved'" in out.stderr


def test_the_packaged_snapshot_is_where_importlib_resources_finds_it() -> None:
    from importlib import resources

    from portwatch.registry.packaged import packaged_snapshot

    found = Path(str(resources.files("portwatch.registry") / "data"
                     / packaged_snapshot().name))
    assert packaged_snapshot() == found
    assert found.is_file()


def test_the_collector_runs_again_after_start_up_even_when_the_command_fails() -> None:
    code = (
        "import gc, sys\n"
        "import portwatch.cli\n"
        "after_import = gc.isenabled()\n"
        "rc = portwatch.cli.main(['analyze', '--registry', '/nonexistent.csv', 'x.pcap'])\n"
        "print(after_import, gc.isenabled(), rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)}, check=False, cwd=ROOT)
    assert out.stdout.split() == ["True", "True", "2"]
    assert out.stderr.startswith("portwatch: error: ")


def test_a_disabled_collector_stays_disabled(official_csv: Path, warm_cache: Path) -> None:
    code = (
        "import gc\n"
        "gc.disable()\n"
        "import portwatch.cli\n"
        "portwatch.cli.main(['analyze', '-f', 'json', 'pcaps/sample.pcapng'])\n"
        "print(gc.isenabled())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "PORTWATCH_REGISTRY": str(official_csv),
           "PORTWATCH_CACHE_DIR": str(warm_cache), "PORTWATCH_REGISTRY_MAX_AGE_DAYS": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=False, cwd=ROOT)
    assert out.stdout.splitlines()[-1] == "False"


@pytest.mark.parametrize(("given", "threads"), [(None, 1), ("2", min(2, os.cpu_count() or 1))])
def test_the_command_runs_numpy_with_one_blas_thread_unless_the_operator_chose(
        given: str | None, threads: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    code = ("import os, portwatch.cli, numpy\n"
            "print(len(os.listdir('/proc/self/task')))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert int(out) == threads  # the process's threads: OpenBLAS's, the main one among them
