"""The daemon's configuration: the TOML file and the flags that override it.

The TOML keys are exactly those of ``systemd/portwatch.toml``; an unknown key
is an error (a typo must not silently fall back to a default). The web
configuration file (TLS, basic auth) is ``daemon.web_config``.

Every number has a range, checked here so that a value the daemon cannot
use is a one-line ``ConfigError`` at start or on SIGHUP, never a traceback
later (``inf`` seconds once passed, and the flow expiry died on it):

==============================  =========================================
``[capture] snaplen``           64 .. 262,144 bytes
``[capture] buffer_mib``        1 .. 4,096 MiB
``[flows] max_flows``           1 .. 10,000,000
``[flows] idle_timeout_seconds.{tcp,udp,sctp,dccp}``
                                more than 0, at most 604,800 (7 days)
``[flows] active_timeout_seconds``  more than 0, at most 604,800 (7 days)
``[metrics] max_flagged_ports``  0 .. 10,000
==============================  =========================================
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from portwatch.analysis.flows import FlowLimits
from portwatch.errors import ConfigError
from portwatch.ports import Transport

__all__ = [
    "DEFAULT_LISTEN",
    "DETECT_BACKENDS",
    "DETECT_MIN_SNAPLEN",
    "INT_RANGES",
    "MAX_TIMEOUT_S",
    "Backend",
    "CaptureConfig",
    "DaemonConfig",
    "load_config",
    "parse_config",
    "parse_listen_address",
]

DEFAULT_LISTEN = "127.0.0.1:9917"

#: The longest flow timeout accepted, idle or active: 7 days.
MAX_TIMEOUT_S = 7 * 24 * 3600

#: (section, key) -> inclusive (minimum, maximum) of every integer key.
INT_RANGES: dict[tuple[str, str], tuple[int, int]] = {
    ("capture", "snaplen"): (64, 262_144),
    ("capture", "buffer_mib"): (1, 4096),
    ("flows", "max_flows"): (1, 10_000_000),
    ("metrics", "max_flagged_ports"): (0, 10_000),
}


class Backend(Enum):
    DUMPCAP = "dumpcap"
    SCAPY = "scapy"
    PYSHARK = "pyshark"
    REPLAY = "replay"
    EBPF = "ebpf"  # the kernel counts (docs/ebpf.md)
    AUTO = "auto"  # ebpf when its program loads here, else dumpcap


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    backend: Backend = Backend.DUMPCAP
    interfaces: tuple[str, ...] = ("eth0",)
    bpf_filter: str = ""
    snaplen: int = 128
    buffer_mib: int = 32  # kernel capture buffer; dumpcap's own default is 2 MiB
    replay_files: tuple[str, ...] = ()
    replay_speed: float = 1.0  # 0: as fast as possible


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    flows: FlowLimits = field(default_factory=FlowLimits)
    registry_sources: tuple[str, ...] = ()
    listen_address: str = DEFAULT_LISTEN
    web_config_file: str = ""
    # [detect] enabled: nDPI names each flow's payload (portwatch.analysis.detect);
    # mismatches with the registry are counted in portwatch_protocol_mismatch_flows_total
    detect_enabled: bool = False


_KEYS: dict[str, frozenset[str]] = {
    "capture": frozenset({"backend", "interfaces", "bpf_filter", "snaplen", "buffer_mib"}),
    "flows": frozenset({"max_flows", "idle_timeout_seconds", "active_timeout_seconds"}),
    "metrics": frozenset({"max_flagged_ports"}),
    "registry": frozenset({"sources"}),
    "web": frozenset({"listen_address", "config_file"}),
    "detect": frozenset({"enabled"}),
}

#: Backends whose packets carry their payload: the ones detection can use.
DETECT_BACKENDS = frozenset({Backend.DUMPCAP, Backend.PYSHARK, Backend.REPLAY})
#: Below this snapshot length the payload nDPI reads is mostly cut away.
DETECT_MIN_SNAPLEN = 512


def _get(section: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str,
         default: Any) -> Any:
    if key not in section:
        return default
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"[{where}] {key} = {value!r}: expected {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({"str": "a string", "int": "an integer", "float": "a number",
                        "list": "a list", "dict": "a table"}[k.__name__] for k in kinds)


def _int_in_range(section: Mapping[str, Any], where: str, key: str, default: int) -> int:
    """An integer key, checked against ``INT_RANGES``."""
    value: int = _get(section, key, int, where, default)
    low, high = INT_RANGES[where, key]
    if not low <= value <= high:
        raise ConfigError(f"[{where}] {key} = {value}: expected {low}-{high}")
    return value


def _seconds(value: Any, what: str) -> float:
    """A flow timeout: a finite number of seconds, more than 0, at most ``MAX_TIMEOUT_S``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{what} = {value!r}: expected a number of seconds")
    seconds = float(value)
    if not 0 < seconds <= MAX_TIMEOUT_S:  # also false for nan; inf is above the maximum
        raise ConfigError(f"{what} = {value!r}: expected seconds more than 0 and at most "
                          f"{MAX_TIMEOUT_S} (7 days)")
    return seconds


def _strings(value: list[Any], what: str) -> tuple[str, ...]:
    if not all(isinstance(v, str) and v and "\0" not in v for v in value):
        raise ConfigError(f"{what} = {value!r}: expected a list of non-empty strings")
    return tuple(value)


def _interfaces(value: list[Any]) -> tuple[str, ...]:
    """Names handed to a capture tool's ``-i``: never empty, and never an option."""
    names = _strings(value, "[capture] interfaces")
    if not names:
        raise ConfigError("[capture] interfaces = []: expected at least one interface")
    for name in names:
        if name.startswith("-") or len(name) > 255 or any(c.isspace() for c in name):
            raise ConfigError(f"[capture] interfaces: {name!r} is not an interface name")
    return names


def parse_config(data: bytes, path: str) -> DaemonConfig:
    """The configuration in ``data`` (TOML); raises ``ConfigError`` naming ``path``."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=path) from None
    try:
        return _config(doc)
    except ConfigError as exc:
        raise ConfigError(exc.message, path=path) from None


def _config(doc: Mapping[str, Any]) -> DaemonConfig:
    for name, section in doc.items():
        if name not in _KEYS:
            raise ConfigError(f"unknown section [{name}] (known: {', '.join(sorted(_KEYS))})")
        if not isinstance(section, dict):
            raise ConfigError(f"{name} must be a [{name}] table")
        unknown = set(section) - _KEYS[name]
        if unknown:
            raise ConfigError(f"unknown key [{name}] {sorted(unknown)[0]} "
                              f"(known: {', '.join(sorted(_KEYS[name]))})")
    cap, flows = doc.get("capture", {}), doc.get("flows", {})
    metrics, reg, web = doc.get("metrics", {}), doc.get("registry", {}), doc.get("web", {})
    backend_name = _get(cap, "backend", str, "capture", "dumpcap")
    try:
        backend = Backend(backend_name)
    except ValueError:
        raise ConfigError(f"[capture] backend = {backend_name!r}: expected one of "
                          f"{', '.join(b.value for b in Backend)}") from None
    if "\0" in _get(cap, "bpf_filter", str, "capture", ""):
        raise ConfigError("[capture] bpf_filter: a NUL character cannot be passed to libpcap")
    capture = CaptureConfig(
        backend=backend,
        interfaces=_interfaces(_get(cap, "interfaces", list, "capture", ["eth0"])),
        bpf_filter=_get(cap, "bpf_filter", str, "capture", ""),
        snaplen=_int_in_range(cap, "capture", "snaplen", 128),
        buffer_mib=_int_in_range(cap, "capture", "buffer_mib", 32),
    )
    defaults = FlowLimits()
    idle = dict(defaults.idle_s)
    for key, value in _get(flows, "idle_timeout_seconds", dict, "flows", {}).items():
        try:
            transport = Transport.parse(key)
        except ValueError:
            raise ConfigError(f"[flows] idle_timeout_seconds.{key}: expected tcp, udp, sctp "
                              "or dccp") from None
        idle[transport] = _seconds(value, f"[flows] idle_timeout_seconds.{key}")
    limits = FlowLimits(
        max_flows=_int_in_range(flows, "flows", "max_flows", defaults.max_flows),
        idle_s=idle,
        active_s=_seconds(flows.get("active_timeout_seconds", defaults.active_s),
                          "[flows] active_timeout_seconds"),
        max_flagged_ports=_int_in_range(metrics, "metrics", "max_flagged_ports",
                                        defaults.max_flagged_ports),
    )
    listen = _get(web, "listen_address", str, "web", DEFAULT_LISTEN)
    parse_listen_address(listen)
    detect = _detect_enabled(doc.get("detect", {}), capture)
    return DaemonConfig(
        capture=capture,
        flows=limits,
        registry_sources=_strings(_get(reg, "sources", list, "registry", []),
                                  "[registry] sources"),
        listen_address=listen,
        web_config_file=_get(web, "config_file", str, "web", ""),
        detect_enabled=detect,
    )


def _detect_enabled(section: Mapping[str, Any], capture: CaptureConfig) -> bool:
    """``[detect] enabled``: a boolean, and only with a backend and snaplen that keep payload."""
    enabled = section.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"[detect] enabled = {enabled!r}: expected true or false")
    if not enabled:
        return False
    if capture.backend not in DETECT_BACKENDS:
        raise ConfigError(f"[detect] enabled needs a backend that hands over payloads "
                          f"({', '.join(sorted(b.value for b in DETECT_BACKENDS))}), "
                          f"not {capture.backend.value}")
    if capture.backend is not Backend.REPLAY and capture.snaplen < DETECT_MIN_SNAPLEN:
        raise ConfigError(f"[detect] enabled needs [capture] snaplen >= {DETECT_MIN_SNAPLEN} "
                          f"(nDPI reads payloads), not {capture.snaplen}")
    return True


def load_config(path: str | None) -> DaemonConfig:
    """The file's configuration, or the defaults when no file is named."""
    if path is None:
        return DaemonConfig()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration: {exc.strerror}", path=path) from None
    return parse_config(data, path)


def with_overrides(config: DaemonConfig, **changes: Any) -> DaemonConfig:
    """``config`` with flags applied (flags win over the file, also after SIGHUP)."""
    capture_changes = {k: v for k, v in changes.items() if k in CaptureConfig.__slots__}
    rest = {k: v for k, v in changes.items() if k not in CaptureConfig.__slots__}
    return replace(config, capture=replace(config.capture, **capture_changes), **rest)


def parse_listen_address(text: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (every address) as (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"listen address {text!r}: expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)
