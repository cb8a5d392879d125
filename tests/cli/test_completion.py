"""Completion scripts and the man page come from the parser; every option explains itself."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import pytest

from portwatch.cli import build_parser, main
from portwatch.cli.completion import iter_actions

BASH = shutil.which("bash")
ZSH = shutil.which("zsh")
GROFF = shutil.which("groff")


def test_every_option_and_argument_of_every_command_has_help_text() -> None:
    parser, _ = build_parser()
    missing = [f"{' '.join(path)}: {'/'.join(action.option_strings) or action.dest}"
               for path, action in iter_actions(parser)
               if not action.help or action.help == argparse.SUPPRESS]
    assert missing == []


def test_every_command_is_reached_by_the_walk() -> None:
    parser, runners = build_parser()
    commands = {path[1] for path, _ in iter_actions(parser) if len(path) > 1}
    assert commands == set(runners)
    assert {"top", "completion", "manpage", "analyze"} <= commands


@pytest.fixture
def bash_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    pytest.importorskip("shtab")
    assert main(["completion", "bash"]) == 0
    script = tmp_path / "portwatch.bash"
    script.write_text(capsys.readouterr().out)
    return script


def _complete(script: Path, *words: str) -> list[str]:
    """What bash offers for the last of ``words``, as a user pressing Tab would get."""
    assert BASH is not None
    line = " ".join(words)
    program = f"""
source {script}
COMP_WORDS=({line})
COMP_CWORD={len(words) - 1}
COMP_LINE="{line}"
COMP_POINT=${{#COMP_LINE}}
_shtab_portwatch portwatch "{words[-1]}" "{words[-2] if len(words) > 1 else ''}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    out = subprocess.run([BASH, "--norc", "--noprofile", "-c", program], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return out.split()


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_bash_completes_commands_options_and_choices(bash_script: Path) -> None:
    assert "top" in _complete(bash_script, "portwatch", "t")
    assert "analyze" in _complete(bash_script, "portwatch", "an")
    assert "--annotate" in _complete(bash_script, "portwatch", "analyze", "--ann")
    assert "--interval" in _complete(bash_script, "portwatch", "analyze", "--int")
    assert set(_complete(bash_script, "portwatch", "analyze", "--engine", "")) == {
        "native", "scapy", "pyshark"}
    assert "--replay" in _complete(bash_script, "portwatch", "top", "--re")


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_bash_completes_capture_files(bash_script: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lab.pcapng").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert "lab.pcapng" in _complete(bash_script, "portwatch", "analyze", "la")


@pytest.mark.skipif(ZSH is None, reason="zsh is not installed")
def test_zsh_script_parses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("shtab")
    assert main(["completion", "zsh"]) == 0
    script = tmp_path / "_portwatch"
    script.write_text(capsys.readouterr().out)
    assert ZSH is not None
    subprocess.run([ZSH, "-n", str(script)], check=True, timeout=60)


def test_zsh_script_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("shtab")
    assert main(["completion", "zsh"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#compdef portwatch")
    for command in ("analyze", "top", "lookup", "registry", "daemon", "export"):
        assert f"\n    {command}:" in script


def test_unknown_shell_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "fish"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_man_page_documents_every_command_and_option(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("argparse_manpage")
    assert main(["manpage"]) == 0
    page = capsys.readouterr().out
    assert page.startswith(".TH PORTWATCH")
    for command in ("analyze", "top", "lookup", "registry update", "completion"):
        assert f"'portwatch {command}'" in page
    for option in ("annotate", "interval", "replay", "registry\\-max\\-age"):
        assert f"\\-\\-{option}" in page


@pytest.mark.skipif(GROFF is None, reason="groff is not installed")
def test_man_page_renders_without_warnings_and_keeps_help_that_starts_with_a_quote(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("argparse_manpage")
    assert main(["manpage"]) == 0
    page = capsys.readouterr().out
    assert GROFF is not None
    done = subprocess.run([GROFF, "-man", "-Tutf8", "-ww"], input=page, capture_output=True,
                          text=True, check=True, timeout=60)
    assert done.stderr == ""
    text = " ".join(done.stdout.split())
    assert "'-' reads them from standard input" in text
