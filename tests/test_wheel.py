"""The wheel a user installs carries the registry and answers with true statuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_answers_from_the_packaged_registry(
    tmp_path: Path,
) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
                    str(REPO)], check=True, cwd=tmp_path, timeout=600)
    (wheel,) = dist.glob("portwatch-*.whl")
    assert wheel.stat().st_size < 2 * 1024 * 1024
    with zipfile.ZipFile(wheel) as zf:
        assert "portwatch/registry/data/service-names-port-numbers.xml.xz" in zf.namelist()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True,
                   cwd=tmp_path, timeout=900)
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}
    out = subprocess.run(
        [str(venv / "bin" / "portwatch"), "lookup", "--json", "0/tcp", "4/tcp", "8807/tcp",
         "80/tcp"],
        check=True, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(a["port"], a["status"]) for a in answers] == [
        (0, "reserved"), (4, "unassigned"), (8807, "reserved"), (80, "assigned")]
    assert answers[3]["service"] == "http"
    assert answers[0]["registry"]["snapshot"] == "packaged:service-names-port-numbers.xml.xz"
    # answered by the installed copy, not by this checkout
    assert answers[3]["records"][0]["provenance"]["path"].startswith(str(venv))
