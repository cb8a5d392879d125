"""The ``portwatch`` command line: parse options, run a subcommand, map errors.

Exit codes: 0 success; 1 partial result (a damaged capture after good data,
a lookup that found nothing); 2 unusable input or wrong usage. Errors are
one line on standard error, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from portwatch import __version__
from portwatch.errors import PortwatchError, UsageError

# portwatch does no linear algebra, yet numpy's OpenBLAS starts a thread per core at
# import, and they spin beside the analysis: on 2 cores a 68-packet run took 0.15 s
# instead of 0.12 s. One thread, unless the operator set a number (before numpy loads).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


@contextlib.contextmanager
def _collecting_no_garbage(*, freeze: bool = True) -> Iterator[None]:
    """The cyclic garbage collector held off while modules are imported.

    Importing numpy and portwatch allocates hundreds of thousands of
    long-lived objects and next to no garbage, yet the allocation count sets
    off about 50 collections, each walking the young objects again: 5-10 ms
    of a 68-packet run. After the imports the collector runs as before (a
    long analysis needs it). With ``freeze``, what exists then is moved out
    of the collector's sight (``gc.freeze``); otherwise the first collection
    would walk every object the imports made.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        if freeze:
            gc.freeze()


# numpy, the table and the registry sources' selection; ``main`` freezes them when it
# runs as the program (importing this module must not change a caller's collector).
with _collecting_no_garbage(freeze=False):
    from portwatch.cli.common import Context, PortwatchArgumentParser
    from portwatch.registry.freshness import DEFAULT_MAX_AGE_DAYS

__all__ = ["build_parser", "command_of", "main"]

Runner = Callable[[Context, argparse.Namespace], int]


def _global_options(*, suppress: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the subcommand (``--registry`` may repeat)."""
    p = argparse.ArgumentParser(add_help=False)
    dest = "registry_after" if suppress else "registry"
    p.add_argument("--registry", dest=dest, action="append", metavar="FILE",
                   default=argparse.SUPPRESS if suppress else [],
                   help="registry source to read (repeatable); replaces the defaults")
    p.add_argument("--strict", action="store_true",
                   default=argparse.SUPPRESS if suppress else False,
                   help="treat any unparseable registry row as an error")
    p.add_argument("--no-cache", action="store_true",
                   default=argparse.SUPPRESS if suppress else False,
                   help="compile the table afresh instead of using the cache")
    p.add_argument("--registry-max-age", dest="registry_max_age" + ("_after" if suppress else ""),
                   type=_days, metavar="DAYS",
                   default=argparse.SUPPRESS if suppress else None,
                   help="warn when the registry's Last Updated is older than DAYS "
                   f"(default {DEFAULT_MAX_AGE_DAYS}, or PORTWATCH_REGISTRY_MAX_AGE_DAYS; "
                   "0 turns the warning off)")
    return p


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of days, got {text!r}") \
            from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more days, got {value}")
    return value


def _max_age(args: argparse.Namespace) -> int:
    """The command line wins, then ``PORTWATCH_REGISTRY_MAX_AGE_DAYS``, then the default."""
    given = getattr(args, "registry_max_age_after", None)
    if given is None:
        given = args.registry_max_age
    if given is not None:
        return int(given)
    env = os.environ.get("PORTWATCH_REGISTRY_MAX_AGE_DAYS", "")
    if not env:
        return DEFAULT_MAX_AGE_DAYS
    try:
        return _days(env)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"PORTWATCH_REGISTRY_MAX_AGE_DAYS: {exc}") from None


#: Subcommand -> its module, in ``--help`` order. A module is imported only when its
#: command runs (or for the full help): ``analyze`` need not load the daemon, the
#: Wireshark exporter or the registry tools (start-up is part of every run).
_MODULES = {
    "lookup": "portwatch.cli.lookup",
    "registry": "portwatch.cli.registry",
    "export": "portwatch.cli.export",
    "daemon": "portwatch.cli.daemon",
    "analyze": "portwatch.cli.analyze",
    "top": "portwatch.cli.top",
}
#: Global options that take a value as the next argument.
_VALUED = frozenset({"--registry", "--registry-max-age"})


def _commands(
    only: str | None = None,
) -> dict[str, tuple[Callable[[Any, list[argparse.ArgumentParser]], None], Runner]]:
    commands: dict[str, tuple[Callable[[Any, list[argparse.ArgumentParser]], None], Runner]] = {}
    for name, module_name in _MODULES.items():
        if only is None or name == only:
            module = importlib.import_module(module_name)
            commands[name] = (module.add_parser, module.run)
    return commands


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names, or None when unsure (help, unknown): then load all.

    Skips the global options before it (and the values of those that take one);
    any doubt answers None, which only costs the imports of the other commands.
    """
    args = iter(argv)
    for arg in args:
        if arg in _VALUED:
            next(args, None)
        elif arg == "--":
            command = next(args, "")
            return command if command in _MODULES else None
        elif arg in ("-h", "--help"):
            return None
        elif not arg.startswith("-"):
            return arg if arg in _MODULES else None
    return None


def build_parser(only: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, Runner]]:
    """The parser and runners; with ``only``, just that subcommand (it must exist)."""
    parser = PortwatchArgumentParser(
        prog="portwatch",
        description="Name every flow by the IANA service registry; flag unassigned and "
        "reserved ports.",
        parents=[_global_options(suppress=False)],
    )
    parser.add_argument("--version", action="version", version=f"portwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=PortwatchArgumentParser)
    runners: dict[str, Runner] = {}
    after = [_global_options(suppress=True)]
    for name, (add, runner) in _commands(only).items():
        add(sub, after)
        runners[name] = runner
    if only in (None, "completion", "manpage"):
        from portwatch.cli import completion  # not needed to run any other command

        completion.add_parsers(sub, after)
        runners["completion"] = _print_completion
        runners["manpage"] = _print_manpage
    return parser, runners


def _print_completion(ctx: Context, args: argparse.Namespace) -> int:
    """Generated from a fresh parser: the script must not depend on this run's options."""
    from portwatch.cli import completion

    ctx.stdout.write(completion.completion_script(build_parser()[0], args.shell))
    return 0


def _print_manpage(ctx: Context, args: argparse.Namespace) -> int:
    from portwatch.cli import completion

    ctx.stdout.write(completion.manpage(build_parser()[0], __version__))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # The subcommand's modules. Only the command's own process freezes what exists
    # (a caller passing ``argv``, a test, keeps its objects collectable).
    with _collecting_no_garbage(freeze=argv is None):
        parser, runners = build_parser(command_of(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
        ctx = Context(
            registry_paths=[*args.registry, *getattr(args, "registry_after", [])],
            strict=args.strict,
            use_cache=not args.no_cache,
            max_age_days=_max_age(args),
        )
        return runners[args.command](ctx, args)
    except PortwatchError as exc:
        print(f"portwatch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("portwatch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
