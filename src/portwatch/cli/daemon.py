"""``portwatch daemon``: the Prometheus exporter, with exporter-style flags."""

from __future__ import annotations

import argparse
import math
import signal
from typing import Any

from portwatch._paths import cache_dir
from portwatch.cli.common import Context
from portwatch.daemon.config import (
    Backend,
    DaemonConfig,
    load_config,
    parse_listen_address,
    with_overrides,
)
from portwatch.errors import ConfigError
from portwatch.registry.store import select_sources

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "daemon",
        parents=parents,
        help="capture live traffic and export Prometheus metrics",
        description="Capture traffic, name every flow by the registry and serve Prometheus "
        "metrics. SIGHUP re-reads --config.file and the registry; SIGTERM stops.",
    )
    p.add_argument("--config.file", dest="config_file", metavar="FILE",
                   help="TOML configuration (see systemd/portwatch.toml)")
    p.add_argument("--web.listen-address", dest="listen_address", metavar="HOST:PORT",
                   help="address for /metrics (default 127.0.0.1:9917)")
    p.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                   help="exporter-toolkit web configuration: TLS and basic auth")
    p.add_argument("--backend", choices=[b.value for b in Backend],
                   help="capture backend (overrides [capture] backend)")
    p.add_argument("--interface", "-i", dest="interfaces", action="append", metavar="IFACE",
                   help="capture interface (repeatable; overrides [capture] interfaces)")
    p.add_argument("--bpf-filter", dest="bpf_filter", metavar="FILTER",
                   help="libpcap filter (overrides [capture] bpf_filter)")
    p.add_argument("--replay", action="append", metavar="FILE", default=[],
                   help="capture file for --backend replay (repeatable)")
    p.add_argument("--replay-speed", type=float, default=1.0, metavar="N",
                   help="replay N times faster than recorded; 0 = as fast as possible")


def _configure(ctx: Context, args: argparse.Namespace) -> DaemonConfig:
    """The file's configuration with flags applied (read again on every SIGHUP)."""
    config = load_config(args.config_file)
    changes: dict[str, Any] = {}
    if args.listen_address:
        parse_listen_address(args.listen_address)
        changes["listen_address"] = args.listen_address
    if args.web_config_file is not None:
        changes["web_config_file"] = args.web_config_file
    if args.backend:
        changes["backend"] = Backend(args.backend)
    if args.interfaces:
        changes["interfaces"] = tuple(args.interfaces)
    if args.bpf_filter is not None:
        changes["bpf_filter"] = args.bpf_filter
    if args.replay:
        changes["replay_files"] = tuple(args.replay)
    if not math.isfinite(args.replay_speed) or args.replay_speed < 0:
        raise ConfigError(f"--replay-speed {args.replay_speed}: expected a finite number, "
                          "0 or more (0: as fast as possible)")
    changes["replay_speed"] = args.replay_speed
    if ctx.registry_paths:
        changes["registry_sources"] = tuple(ctx.registry_paths)
    elif not config.registry_sources:
        # chosen afresh on every SIGHUP: `registry update` may have stored a newer one
        changes["registry_sources"] = select_sources((), env=ctx.env).paths
    config = with_overrides(config, **changes)
    if config.capture.backend is Backend.REPLAY and not config.capture.replay_files:
        raise ConfigError("--backend replay needs --replay FILE")
    return config


def run(ctx: Context, args: argparse.Namespace) -> int:
    # imported here: prometheus_client and http.server are not needed by other commands
    from portwatch.daemon.privileges import separate_capture_privileges
    from portwatch.daemon.service import Daemon, DaemonDeps, default_table_loader, make_source

    _configure(ctx, args)  # flag and file errors: exit 2 before anything starts
    deps = DaemonDeps(
        load_config=lambda: _configure(ctx, args),
        load_table=default_table_loader(cache_dir(ctx.env) if ctx.use_cache else None),
        make_source=make_source,
        env=ctx.env,
        log=ctx.stderr,
        config_file=args.config_file or "",
        isolate_capture=separate_capture_privileges,
    )
    daemon = Daemon(deps)
    daemon.install_signal_handlers()
    try:
        return daemon.run()
    finally:
        # Python resets its own handlers to the default at exit, so a second SIGTERM
        # during interpreter shutdown would turn a clean exit 0 into death by signal.
        # Ignored signals are left ignored.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
