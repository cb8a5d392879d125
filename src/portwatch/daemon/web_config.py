"""The web configuration file of the metrics endpoint: TLS and basic auth.

It follows the Prometheus exporter-toolkit format (YAML), so the file an
operator already has for node_exporter works here unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portwatch.errors import ConfigError

__all__ = ["WebSettings", "load_web_settings", "parse_simple_yaml"]


@dataclass(frozen=True, slots=True)
class WebSettings:
    """TLS and basic auth of the metrics endpoint (exporter-toolkit web config)."""

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""
    client_auth_type: str = ""
    basic_auth_users: Mapping[str, str] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return bool(self.cert_file)


_WEB_KEYS = frozenset({"tls_server_config", "basic_auth_users", "http_server_config"})
_TLS_KEYS = frozenset({"cert_file", "key_file", "client_ca_file", "client_auth_type",
                       "min_version", "max_version", "cipher_suites",
                       "prefer_server_cipher_suites", "curve_preferences"})
_CLIENT_AUTH = frozenset({"", "NoClientCert", "RequireAndVerifyClientCert",
                          "VerifyClientCertIfGiven"})


def load_web_settings(path: str) -> WebSettings:
    """Read an exporter-toolkit web configuration file; ``ConfigError`` on anything unusable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the web configuration: {exc}", path=path) from None
    doc = parse_simple_yaml(text, path)
    unknown = set(doc) - _WEB_KEYS
    if unknown:
        raise ConfigError(f"unknown key {sorted(unknown)[0]!r}", path=path)
    tls = doc.get("tls_server_config") or {}
    users = doc.get("basic_auth_users") or {}
    if not isinstance(tls, dict) or not isinstance(users, dict):
        raise ConfigError("tls_server_config and basic_auth_users must be mappings", path=path)
    if set(tls) - _TLS_KEYS:
        raise ConfigError(f"unknown tls_server_config key {sorted(set(tls) - _TLS_KEYS)[0]!r}",
                          path=path)
    settings = WebSettings(
        cert_file=_resolve(path, str(tls.get("cert_file", ""))),
        key_file=_resolve(path, str(tls.get("key_file", ""))),
        client_ca_file=_resolve(path, str(tls.get("client_ca_file", ""))),
        client_auth_type=str(tls.get("client_auth_type", "")),
        basic_auth_users={str(u): str(h) for u, h in users.items()},
    )
    if bool(settings.cert_file) != bool(settings.key_file):
        raise ConfigError("tls_server_config needs both cert_file and key_file", path=path)
    if settings.client_auth_type not in _CLIENT_AUTH:
        raise ConfigError(f"client_auth_type {settings.client_auth_type!r} is not supported",
                          path=path)
    for user, hashed in settings.basic_auth_users.items():
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise ConfigError(f"basic_auth_users {user!r}: expected a bcrypt hash ($2y$...)",
                              path=path)
    return settings


def _resolve(config_path: str, value: str) -> str:
    """Relative paths are relative to the web configuration file, as in exporter-toolkit."""
    if not value or Path(value).is_absolute():
        return value
    return str(Path(config_path).parent / value)


def parse_simple_yaml(text: str, path: str) -> dict[str, Any]:
    """Nested block mappings of scalars: the subset exporter web configs use."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(-1, root)]
    for number, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).rstrip()
        if not line.strip() or line.strip() == "---":
            continue
        indent = len(line) - len(line.lstrip(" "))
        key, sep, value = line.strip().partition(":")
        if not sep or not key:
            raise ConfigError(f"expected 'key: value', found {raw.strip()!r}", path=path,
                              line=number)
        while indent <= stack[-1][0]:
            stack.pop()
        parent = stack[-1][1]
        key = _unquote(key.strip())
        value = value.strip()
        if value in ("", "{}"):
            child: dict[str, Any] = {}
            parent[key] = child
            if value == "":
                stack.append((indent, child))
        else:
            parent[key] = _unquote(value)
    return root


def _strip_comment(line: str) -> str:
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value
