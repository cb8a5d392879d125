"""The web configuration file of the metrics endpoint: TLS, headers and basic auth.

It follows the Prometheus exporter-toolkit format (``docs/web-configuration.md``
in prometheus/exporter-toolkit), read with PyYAML, so the file an operator
already has for node_exporter works here. Every key is either honoured or
rejected with a ``ConfigError`` naming the file, the key and its line: a TLS
setting that is accepted and then ignored would be a security surprise. What
Python's ``ssl`` module cannot express is rejected with the reason:

- ``client_auth_type`` ``RequestClientCert`` and ``RequireAnyClientCert`` ask
  for a client certificate without verifying it; ``ssl`` can only verify.
- ``cipher_suites`` restricts TLS 1.0-1.2 suites (as in Go); TLS 1.3 suites
  cannot be chosen in either, so naming one is an error.
- ``curve_preferences`` can name one curve (``SSLContext.set_ecdh_curve``).
- ``http2: true``: the endpoint speaks HTTP/1.1 only.
- Inline ``cert``/``key``/``client_ca`` and ``rate_limit`` are not implemented.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from portwatch.errors import ConfigError

__all__ = [
    "CIPHER_SUITES",
    "CLIENT_AUTH_TYPES",
    "CURVES",
    "RESPONSE_HEADERS",
    "TLS_VERSIONS",
    "WebSettings",
    "bcrypt_cost",
    "check_settings",
    "load_web_settings",
    "parse_web_settings",
    "san_allowed",
    "tls_context",
]

#: A web configuration is a few hundred bytes; anything this large is a mistake.
MAX_FILE_BYTES = 1 << 20

#: ``min_version``/``max_version`` values.
TLS_VERSIONS: Mapping[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

#: Go ``tls.CipherSuites()`` names (TLS 1.0-1.2) -> OpenSSL names for ``set_ciphers``.
CIPHER_SUITES: Mapping[str, str] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
_TLS13_SUITES = frozenset({"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                           "TLS_CHACHA20_POLY1305_SHA256"})

#: Go ``tls.CurveID`` names -> OpenSSL group names for ``set_ecdh_curve``.
CURVES: Mapping[str, str] = {
    "X25519": "X25519",
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
}

#: The values ``ssl`` can enforce; the other two toolkit values are rejected with a reason.
CLIENT_AUTH_TYPES: Mapping[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_UNVERIFIED_CLIENT_AUTH = frozenset({"RequestClientCert", "RequireAnyClientCert",
                                     "RequireClientCert"})

#: The response headers the toolkit lets a file set, with their allowed values (empty: any).
RESPONSE_HEADERS: Mapping[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}

_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")


@dataclass(frozen=True, slots=True)
class WebSettings:
    """TLS, response headers and basic auth of the metrics endpoint (exporter-toolkit)."""

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""
    #: One of ``CLIENT_AUTH_TYPES``; empty means ``NoClientCert``.
    client_auth_type: str = ""
    #: The peer certificate must carry one of these SANs (DNS, IP, e-mail or URI).
    client_allowed_sans: tuple[str, ...] = ()
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    #: Go names, in server preference order; empty means OpenSSL's defaults.
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: tuple[str, ...] = ()
    #: Added to every response.
    headers: Mapping[str, str] = field(default_factory=dict)
    basic_auth_users: Mapping[str, str] = field(default_factory=dict)
    #: The file these came from ("" when built in code), for error messages.
    path: str = ""

    @property
    def tls(self) -> bool:
        return bool(self.cert_file)


class _Invalid(Exception):
    """A bad value, by its dotted key; turned into a ``ConfigError`` with the line."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def load_web_settings(path: str) -> WebSettings:
    """Read and check a web configuration file, including its TLS files and bcrypt hashes.

    Everything that can fail later is tried here, so a SIGHUP with a broken
    file is refused before anything is swapped.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the web configuration: {exc.strerror}",
                          path=path) from exc
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"larger than {MAX_FILE_BYTES} bytes; not a web configuration",
                          path=path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 (byte {exc.start})", path=path) from exc
    settings = parse_web_settings(text, path)
    if settings.tls:
        tls_context(settings)
    if settings.basic_auth_users:
        try:
            import bcrypt  # noqa: F401 - a missing module fails at start, not at the first scrape
        except ImportError:
            raise ConfigError("basic_auth_users needs the 'bcrypt' package "
                              "(pip install 'portwatch[web]')", path=path) from None
    return settings


def parse_web_settings(text: str, path: str) -> WebSettings:
    """The settings in ``text``; relative file names are resolved against ``path``'s directory."""
    doc = _load_yaml(text, path)
    if doc is None:
        return WebSettings(path=path)
    if not isinstance(doc, _Map):
        raise ConfigError(f"expected a mapping at the top, found {_kind(doc)}", path=path,
                          line=1)
    try:
        return _settings(doc, path)
    except _Invalid as exc:
        raise ConfigError(str(exc), path=path, line=doc.line_of(exc.key)) from None


def check_settings(settings: WebSettings) -> None:
    """The rules the file reader applies, for settings built in code; ``ConfigError``."""
    try:
        _check(settings)
    except _Invalid as exc:
        raise ConfigError(str(exc), path=settings.path or None) from None


def tls_context(settings: WebSettings) -> ssl.SSLContext:
    """A server context that enforces every TLS setting, or ``ConfigError``."""
    check_settings(settings)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[settings.min_version]
    ctx.maximum_version = TLS_VERSIONS[settings.max_version]
    if settings.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    where = settings.path or None
    if settings.cipher_suites:
        names = ":".join(CIPHER_SUITES[c] for c in settings.cipher_suites)
        try:
            ctx.set_ciphers(names)
        except ssl.SSLError:
            raise ConfigError("tls_server_config.cipher_suites: none of "
                              f"{list(settings.cipher_suites)} is available in this OpenSSL",
                              path=where) from None
    if settings.curve_preferences:
        ctx.set_ecdh_curve(CURVES[settings.curve_preferences[0]])
    try:
        ctx.load_cert_chain(settings.cert_file, settings.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls_server_config: cannot load cert_file {settings.cert_file!r} "
                          f"with key_file {settings.key_file!r}: {_reason(exc)}",
                          path=where) from exc
    ctx.verify_mode = CLIENT_AUTH_TYPES[settings.client_auth_type or "NoClientCert"]
    if settings.client_ca_file:
        try:
            ctx.load_verify_locations(settings.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("tls_server_config: cannot load client_ca_file "
                              f"{settings.client_ca_file!r}: {_reason(exc)}",
                              path=where) from exc
    return ctx


def san_allowed(peer: Mapping[str, Any] | None, allowed: tuple[str, ...]) -> bool:
    """Whether a verified peer certificate (``getpeercert()``) has one of ``allowed`` as a SAN.

    DNS names, e-mail addresses and URIs match exactly, as in the toolkit; IP
    addresses match by value, since OpenSSL spells IPv6 differently from Go.
    """
    if not allowed:
        return True
    if not peer:
        return False
    wanted = set(allowed)
    wanted_ips = {ip for ip in map(_ip, allowed) if ip is not None}
    for kind, value in peer.get("subjectAltName", ()):
        if kind in ("DNS", "email", "URI") and value in wanted:
            return True
        if kind == "IP Address" and _ip(value.strip()) in wanted_ips:
            return True
    return False


def bcrypt_cost(hashed: str) -> int:
    """The cost factor of a bcrypt hash (``$2y$10$...`` -> 10)."""
    match = _BCRYPT.fullmatch(hashed)
    if match is None:
        raise ValueError("not a bcrypt hash")
    return int(match.group(1))


# -- reading ---------------------------------------------------------------------------


class _Map(dict[Any, Any]):
    """A YAML mapping that remembers the line of each key."""

    lines: dict[Any, int]

    def line_of(self, dotted: str) -> int | None:
        """The line of ``a.b.c``, or of the deepest part of it that exists."""
        node: Any = self
        line: int | None = None
        for part in dotted.split("."):
            if not isinstance(node, _Map) or part not in node:
                break
            line = node.lines.get(part, line)
            node = node[part]
        return line


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(key)
        self.key, self.line = key, line


class _Loader(yaml.SafeLoader):
    """``safe_load`` with duplicate keys refused and key lines recorded."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    result = _Map()
    result.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            duplicate = key in result
        except TypeError:  # a list or mapping as a key
            raise _DuplicateKey(key, line) from None
        if duplicate:
            raise _DuplicateKey(key, line)
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = line
    return result


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def _load_yaml(text: str, path: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except _DuplicateKey as exc:
        raise ConfigError(f"duplicate key {exc.key!r}", path=path, line=exc.line) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"not valid YAML: {exc.problem or exc.context}", path=path,
                          line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", path=path) from None


# -- the schema ------------------------------------------------------------------------

_TOP = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS = ("cert_file", "key_file", "client_ca_file", "client_auth_type", "client_allowed_sans",
        "min_version", "max_version", "cipher_suites", "prefer_server_cipher_suites",
        "curve_preferences")
_HTTP = ("http2", "headers")
_NOT_IMPLEMENTED = {
    "rate_limit": "is not implemented by portwatch; put a reverse proxy in front to limit rates",
    "tls_server_config.cert": "(inline PEM) is not supported; use cert_file",
    "tls_server_config.key": "(inline PEM) is not supported; use key_file",
    "tls_server_config.client_ca": "(inline PEM) is not supported; use client_ca_file",
}


def _settings(doc: _Map, path: str) -> WebSettings:
    _known(doc, "", _TOP)
    tls = _section(doc, "tls_server_config")
    http = _section(doc, "http_server_config")
    users = _section(doc, "basic_auth_users")
    _known(tls, "tls_server_config.", _TLS)
    _known(http, "http_server_config.", _HTTP)
    if _typed(http, "http_server_config.http2", bool, False):
        raise _Invalid("http_server_config.http2",
                       "portwatch serves HTTP/1.1 only; remove the key or set it to false")
    headers = _section(http, "headers", "http_server_config.headers")

    def text(key: str) -> str:
        return str(_typed(tls, f"tls_server_config.{key}", str, ""))

    def names(key: str) -> tuple[str, ...]:
        return _strings(tls, f"tls_server_config.{key}")

    settings = WebSettings(
        cert_file=_resolve(path, text("cert_file")),
        key_file=_resolve(path, text("key_file")),
        client_ca_file=_resolve(path, text("client_ca_file")),
        client_auth_type=text("client_auth_type"),
        client_allowed_sans=names("client_allowed_sans"),
        min_version=text("min_version") or "TLS12",
        max_version=text("max_version") or "TLS13",
        cipher_suites=names("cipher_suites"),
        prefer_server_cipher_suites=bool(_typed(
            tls, "tls_server_config.prefer_server_cipher_suites", bool, True)),
        curve_preferences=names("curve_preferences"),
        headers={str(k): _header_value(k, v) for k, v in headers.items()},
        basic_auth_users={_user(u): _hash(u, h) for u, h in users.items()},
        path=path,
    )
    _check(settings)
    return settings


def _check(s: WebSettings) -> None:
    """Rules across keys; shared by the file reader and settings built in code."""
    pre = "tls_server_config."
    tls_keys_used = (s.client_ca_file or s.client_auth_type or s.client_allowed_sans
                     or s.cipher_suites or s.curve_preferences or s.min_version != "TLS12"
                     or s.max_version != "TLS13" or not s.prefer_server_cipher_suites)
    if bool(s.cert_file) != bool(s.key_file):
        raise _Invalid(pre + ("key_file" if s.cert_file else "cert_file"),
                       "cert_file and key_file go together")
    if tls_keys_used and not s.cert_file:
        raise _Invalid(pre + "cert_file", "TLS settings are given but no cert_file/key_file")
    for key in ("min_version", "max_version"):
        value = getattr(s, key)
        if value not in TLS_VERSIONS:
            raise _Invalid(pre + key, f"{value!r} is not one of {', '.join(TLS_VERSIONS)}")
    if TLS_VERSIONS[s.min_version] > TLS_VERSIONS[s.max_version]:
        raise _Invalid(pre + "min_version",
                       f"{s.min_version} is above max_version {s.max_version}")
    for name in s.cipher_suites:
        if name in _TLS13_SUITES:
            raise _Invalid(pre + "cipher_suites",
                           f"{name} is a TLS 1.3 suite; TLS 1.3 suites cannot be restricted "
                           "(neither in Go nor in Python's ssl), list TLS 1.2 suites only")
        if name not in CIPHER_SUITES:
            raise _Invalid(pre + "cipher_suites", f"unknown cipher suite {name!r}")
    if s.cipher_suites and s.min_version == "TLS13":
        raise _Invalid(pre + "cipher_suites",
                       "applies up to TLS 1.2 only, but min_version is TLS13")
    for name in s.curve_preferences:
        if name not in CURVES:
            raise _Invalid(pre + "curve_preferences",
                           f"unknown curve {name!r}; one of {', '.join(CURVES)}")
    if len(s.curve_preferences) > 1:
        raise _Invalid(pre + "curve_preferences",
                       "Python's ssl can set one curve only (SSLContext.set_ecdh_curve); "
                       f"list one of {list(s.curve_preferences)}")
    auth = s.client_auth_type or "NoClientCert"
    if auth in _UNVERIFIED_CLIENT_AUTH:
        raise _Invalid(pre + "client_auth_type",
                       f"{auth} accepts a client certificate without verifying it, which "
                       "Python's ssl cannot do; use RequireAndVerifyClientCert with "
                       "client_ca_file")
    if auth not in CLIENT_AUTH_TYPES:
        raise _Invalid(pre + "client_auth_type",
                       f"{auth!r} is not one of NoClientCert, RequestClientCert, "
                       "RequireAnyClientCert, VerifyClientCertIfGiven, "
                       "RequireAndVerifyClientCert")
    if s.client_ca_file and auth == "NoClientCert":
        raise _Invalid(pre + "client_ca_file",
                       "client_ca_file without client_auth_type would ask no client "
                       "certificate; set client_auth_type: RequireAndVerifyClientCert")
    if auth != "NoClientCert" and not s.client_ca_file:
        raise _Invalid(pre + "client_auth_type",
                       f"{auth} needs client_ca_file to verify client certificates against")
    if s.client_allowed_sans and auth != "RequireAndVerifyClientCert":
        raise _Invalid(pre + "client_allowed_sans",
                       "needs client_auth_type: RequireAndVerifyClientCert (with any other "
                       "value a client may send no certificate to match)")
    for name, value in s.headers.items():
        _check_header(name, value)
    for user, hashed in s.basic_auth_users.items():
        _user(user)
        _hash(user, hashed)


def _known(section: _Map, prefix: str, keys: tuple[str, ...]) -> None:
    for key in section:
        dotted = f"{prefix}{key}"
        if dotted in _NOT_IMPLEMENTED:
            raise _Invalid(dotted, _NOT_IMPLEMENTED[dotted])
        if key not in keys:
            where = prefix.rstrip(".") or "the top level"
            raise _Invalid(dotted, f"unknown key {key!r} in {where}; "
                                   f"expected one of {', '.join(keys)}")


def _section(doc: _Map, key: str, dotted: str | None = None) -> _Map:
    value = doc.get(key)
    if value is None:
        empty = _Map()
        empty.lines = {}
        return empty
    if not isinstance(value, _Map):
        raise _Invalid(dotted or key, f"expected a mapping, found {_kind(value)}")
    return value


def _typed(section: _Map, dotted: str, kind: type, default: object) -> object:
    value = section.get(dotted.rsplit(".", 1)[-1])
    if value is None:
        return default
    if not isinstance(value, kind):
        raise _Invalid(dotted, f"expected {_kind_name(kind)}, found {_kind(value)} {value!r}")
    return value


def _strings(section: _Map, dotted: str) -> tuple[str, ...]:
    value = section.get(dotted.rsplit(".", 1)[-1])
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Invalid(dotted, f"expected a list of strings, found {_kind(value)} {value!r}")
    return tuple(value)


def _header_value(name: object, value: object) -> str:
    if not isinstance(name, str):
        raise _Invalid("http_server_config.headers", f"header name {name!r} is not a string")
    if not isinstance(value, str):
        raise _Invalid(f"http_server_config.headers.{name}",
                       f"expected a string, found {_kind(value)}")
    _check_header(name, value)
    return value


def _check_header(name: str, value: str) -> None:
    key = f"http_server_config.headers.{name}"
    allowed = RESPONSE_HEADERS.get(name)
    if allowed is None:
        raise _Invalid(key, f"HTTP header {name!r} can not be configured; one of "
                            f"{', '.join(RESPONSE_HEADERS)}")
    if any(ch in value for ch in "\r\n\0"):
        raise _Invalid(key, "a header value cannot hold a line break")
    if allowed and value and value not in allowed:
        raise _Invalid(key, f"expected one of {list(allowed)}, found {value!r}")


def _user(user: object) -> str:
    if not isinstance(user, str) or not user:
        raise _Invalid("basic_auth_users", f"user name {user!r} is not a non-empty string "
                                           "(quote it)")
    if ":" in user:
        raise _Invalid(f"basic_auth_users.{user}", "a user name cannot contain ':'")
    return user


def _hash(user: object, hashed: object) -> str:
    if not isinstance(hashed, str) or _BCRYPT.fullmatch(hashed) is None:
        raise _Invalid(f"basic_auth_users.{user}",
                       "expected a bcrypt hash ($2y$10$ and 53 characters; "
                       "htpasswd -nBC 10 '' | tr -d ':\\n')")
    if not 4 <= bcrypt_cost(hashed) <= 31:
        raise _Invalid(f"basic_auth_users.{user}", "bcrypt cost must be 04 to 31")
    return hashed


def _resolve(config_path: str, value: str) -> str:
    """Relative paths are relative to the web configuration file, as in exporter-toolkit."""
    if not value or Path(value).is_absolute():
        return value
    return str(Path(config_path).parent / value)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return str(exc.strerror or exc)


_KIND_NAMES: Mapping[type, str] = {bool: "true or false", str: "a string",
                                   list: "a list", _Map: "a mapping"}


def _kind_name(kind: type) -> str:
    return _KIND_NAMES.get(kind, kind.__name__)


def _kind(value: object) -> str:
    kinds: list[tuple[type, str]] = [(bool, "a boolean"), (str, "a string"), (int, "a number"),
                                     (float, "a number"), (list, "a list"), (dict, "a mapping")]
    for kind, name in kinds:
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__

