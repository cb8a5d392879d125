"""Shell completion and the man page, generated from the argument parser itself.

``portwatch completion bash|zsh|tcsh`` prints a completion script (shtab) and
``portwatch manpage`` a roff man page (argparse-manpage), so neither can fall
behind the options: both read the same parser ``portwatch --help`` does.
``make install`` writes them where bash-completion, zsh and man look. Both
libraries are the optional extra ``completion`` (in ``dev`` too) and are
imported only here.

File arguments complete as files: an option whose metavar names a file
(``FILE``, ``CAPTURE``, ``OUT.pcapng``, ...) or a directory (``DIR``) is
marked for shtab here, so command modules need not import it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from typing import Any

from portwatch.errors import UsageError

__all__ = ["SHELLS", "add_parsers", "completion_script", "iter_actions", "manpage"]

SHELLS = ("bash", "zsh", "tcsh")
_FILE_METAVARS = frozenset({"FILE", "CAPTURE", "OUT.pcapng", "OUT", "OLD", "NEW", "PATH"})
_DIR_METAVARS = frozenset({"DIR"})
_INSTALL_HINT = "pip install 'portwatch[completion]'"

BuildParser = Callable[[], argparse.ArgumentParser]


def iter_actions(parser: argparse.ArgumentParser,
                 path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.Action]]:
    """Every action of ``parser`` and its subcommands, with the command path leading to it."""
    here = path or (parser.prog,)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from iter_actions(sub, (*here, name))
        else:
            yield here, action


def _mark_paths(parser: argparse.ArgumentParser) -> None:
    import shtab

    for _, action in iter_actions(parser):
        metavar = action.metavar if isinstance(action.metavar, str) else ""
        if metavar in _FILE_METAVARS:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        elif metavar in _DIR_METAVARS:
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell`` (one of :data:`SHELLS`)."""
    try:
        import shtab
    except ImportError:
        raise UsageError(f"completion scripts need shtab: {_INSTALL_HINT}") from None
    if shell not in SHELLS:
        raise UsageError(f"no completion for {shell!r}: expected one of {', '.join(SHELLS)}")
    _mark_paths(parser)
    script: str = shtab.complete(parser, shell=shell)
    return script


def manpage(parser: argparse.ArgumentParser, version: str) -> str:
    """The man page (section 1, roff) of ``parser`` and every subcommand."""
    try:
        from argparse_manpage.manpage import Manpage
    except ImportError:
        raise UsageError(f"the man page needs argparse-manpage: {_INSTALL_HINT}") from None
    page = Manpage(parser)
    page.source = f"portwatch {version}"
    page.manual = "portwatch manual"
    page.description = ("name every network flow by the IANA port registry and flag traffic on "
                        "reserved or unassigned ports")
    return _escape_text_lines(str(page))


#: The requests argparse-manpage writes; any other line starting with "." is help text.
_MACROS = frozenset({"TH", "SH", "SS", "TP", "B", "I", "BR", "IR", "RB", "RI", "PP", "P", "LP",
                     "IP", "HP", "RS", "RE", "nf", "fi", "br", "sp", "UR", "UE", "EX", "EE",
                     "in", "ad", "na"})


def _escape_text_lines(roff: str) -> str:
    r"""Help text wrapped to the start of a line must not read as a roff request.

    argparse-manpage leaves a help line starting with ``'`` or ``.`` as it is,
    so "'-' reads standard input" became a (broken) request and vanished from
    the page. ``\&`` (a zero-width character) in front makes it text.
    """
    out = []
    for line in roff.split("\n"):
        request = line[1:].split(" ", 1)[0]
        text = line.startswith("'") or (line.startswith(".") and request not in _MACROS)
        out.append("\\&" + line if text else line)
    return "\n".join(out)


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """The ``completion`` and ``manpage`` subcommands (run by ``portwatch.cli``)."""
    comp = sub.add_parser(
        "completion", help="print a shell completion script",
        description="Print a completion script generated from portwatch's options. bash: "
        "portwatch completion bash > /usr/share/bash-completion/completions/portwatch; zsh: "
        "portwatch completion zsh > \"${fpath[1]}/_portwatch\". make install installs both.")
    comp.add_argument("shell", choices=SHELLS, help="the shell to complete for")
    sub.add_parser(
        "manpage", help="print the man page (roff)",
        description="Print portwatch(1) in roff, generated from the options; read it with "
        "'portwatch manpage | man -l -'. make install installs it.")
