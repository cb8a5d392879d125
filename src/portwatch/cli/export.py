"""``portwatch export``: the loaded registry in forms other tools read."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from portwatch._atomic import atomic_write_bytes
from portwatch.cli.common import Context
from portwatch.errors import UsageError
from portwatch.export.wireshark import PLUGIN_FILENAME, plugin_bytes

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "export",
        help="export the registry for other tools (Wireshark plugin)",
        description="Generate files from the registry portwatch loads; regenerate them "
        "after `portwatch registry update`.",
    )
    kinds = p.add_subparsers(dest="export_kind", required=True, metavar="KIND")
    w = kinds.add_parser(
        "wireshark-plugin",
        parents=parents,
        help=f"write {PLUGIN_FILENAME}, a Lua post-dissector for Wireshark and tshark",
        description=f"Write {PLUGIN_FILENAME}: a Wireshark Lua post-dissector naming each "
        "packet's service port by the registry and flagging unassigned, reserved and "
        "unlisted ports. Install it in ~/.local/lib/wireshark/plugins/ or load it with "
        f"`tshark -X lua_script:{PLUGIN_FILENAME}`.",
    )
    w.add_argument("--output", "-o", metavar="DIR", default=".",
                   help="directory to write the plugin into (default: the current directory)")


def run(ctx: Context, args: argparse.Namespace) -> int:
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--output {args.output!r} is not a directory")
    table = ctx.table()
    data = plugin_bytes(table)
    target = out_dir / PLUGIN_FILENAME
    try:
        atomic_write_bytes(target, data)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None
    last = table.last_updated
    print(f"wrote {target} ({len(data)} bytes, registry last updated "
          f"{last.isoformat() if last else 'unknown'})", file=ctx.stdout)
    return 0
