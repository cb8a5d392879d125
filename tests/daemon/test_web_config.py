"""The exporter-toolkit web configuration: every key honoured or refused by name and line."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portwatch.daemon.web_config import (
    CIPHER_SUITES,
    WebSettings,
    check_settings,
    load_web_settings,
    parse_web_settings,
    san_allowed,
    tls_context,
)
from portwatch.errors import ConfigError

HASH = "$2y$10$" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0"
TLS = "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"


def _parse(text: str) -> WebSettings:
    return parse_web_settings(text, "/etc/portwatch/web.yml")


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("webcfg")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", "tls.key", "-out", "tls.crt"],
                   check=True, capture_output=True, timeout=60, cwd=d)
    (d / "ca.crt").write_bytes((d / "tls.crt").read_bytes())
    return d


def _load(tls_dir: Path, text: str) -> WebSettings:
    path = tls_dir / "web.yml"
    path.write_text(text)
    return load_web_settings(str(path))


def test_a_full_toolkit_file_is_read_with_every_key(tls_dir: Path) -> None:
    settings = _load(tls_dir, f"""\
# node_exporter's web.yml
tls_server_config:
  cert_file: tls.crt
  key_file: {tls_dir}/tls.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  client_allowed_sans: [scraper.example, 10.0.0.1]
  min_version: TLS12
  max_version: TLS13
  cipher_suites:
    - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
    - TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
  prefer_server_cipher_suites: false
  curve_preferences: [CurveP384]
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
    Strict-Transport-Security: max-age=31536000
basic_auth_users:
  prometheus: {HASH}   # bcrypt
  "user name": '{HASH}'
""")
    assert settings == WebSettings(
        cert_file=str(tls_dir / "tls.crt"), key_file=str(tls_dir / "tls.key"),
        client_ca_file=str(tls_dir / "ca.crt"), client_auth_type="RequireAndVerifyClientCert",
        client_allowed_sans=("scraper.example", "10.0.0.1"), min_version="TLS12",
        max_version="TLS13",
        cipher_suites=("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                       "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
        prefer_server_cipher_suites=False, curve_preferences=("CurveP384",),
        headers={"X-Frame-Options": "deny", "X-Content-Type-Options": "nosniff",
                 "Strict-Transport-Security": "max-age=31536000"},
        basic_auth_users={"prometheus": HASH, "user name": HASH},
        path=str(tls_dir / "web.yml"))


def test_an_empty_file_means_plain_http_without_auth() -> None:
    assert _parse("# nothing yet\n") == WebSettings(path="/etc/portwatch/web.yml")
    assert _parse("tls_server_config:\nbasic_auth_users: {}\n").tls is False


def test_an_unknown_key_names_the_file_key_and_line() -> None:
    with pytest.raises(ConfigError, match=r"^/etc/portwatch/web\.yml:3: "
                                          r"tls_server_config\.cert_flie: unknown key"):
        _parse("tls_server_config:\n  cert_file: a\n  cert_flie: b\n  key_file: c\n")
    with pytest.raises(ConfigError, match=r"web\.yml:2: basic_auth: unknown key 'basic_auth'"):
        _parse("tls_server_config: {}\nbasic_auth: {}\n")


@pytest.mark.parametrize(("text", "message"), [
    ("rate_limit:\n  burst: 1\n", r":1: rate_limit: is not implemented"),
    (TLS + "  cert: PEM\n", r":4: tls_server_config\.cert: \(inline PEM\) is not supported"),
    (TLS + "  client_ca: PEM\n", r"client_ca: \(inline PEM\)"),
    ("http_server_config:\n  http2: true\n", r":2: http_server_config\.http2: .*HTTP/1\.1 only"),
])
def test_toolkit_keys_portwatch_cannot_honour_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _parse(text)


def test_http2_false_is_accepted() -> None:
    assert _parse("http_server_config:\n  http2: false\n").tls is False


def test_duplicate_keys_are_an_error_with_the_line() -> None:
    with pytest.raises(ConfigError, match=r"web\.yml:4: duplicate key 'key_file'"):
        _parse(TLS + "  key_file: other.key\n")


@pytest.mark.parametrize(("text", "message"), [
    ("- tls_server_config\n", r"web\.yml:1: expected a mapping at the top, found a list"),
    ("just text\n", r"expected a mapping at the top, found a string"),
    ("tls_server_config: [a]\n", r":1: tls_server_config: expected a mapping, found a list"),
    (TLS + "  cipher_suites: TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\n",
     r":4: tls_server_config\.cipher_suites: expected a list of strings, found a string"),
    (TLS + "  prefer_server_cipher_suites: maybe\n",
     r"prefer_server_cipher_suites: expected true or false, found a string 'maybe'"),
    (TLS + "  min_version: 1.2\n", r"min_version: expected a string, found a number"),
    ("basic_auth_users:\n  123: x\n", r"user name 123 is not a non-empty string"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: [deny]\n",
     r":3: http_server_config\.headers\.X-Frame-Options: expected a string, found a list"),
    ("tls_server_config:\n  cert_file: 'unterminated\n", r"not valid YAML"),
])
def test_wrong_shapes_and_types_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _parse(text)


def test_client_ca_file_without_client_auth_type_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r":4: tls_server_config\.client_ca_file: .*would ask "
                                          r"no client certificate"):
        _parse(TLS + "  client_ca_file: ca.crt\n")


@pytest.mark.parametrize("value", ["RequestClientCert", "RequireAnyClientCert"])
def test_client_auth_without_verification_is_refused_with_the_reason(value: str) -> None:
    with pytest.raises(ConfigError, match=f"{value} accepts a client certificate without "
                                          "verifying it"):
        _parse(TLS + f"  client_auth_type: {value}\n  client_ca_file: ca.crt\n")


@pytest.mark.parametrize("value", ["VerifyClientCertIfGiven", "RequireAndVerifyClientCert"])
def test_verifying_client_auth_needs_a_ca(value: str) -> None:
    with pytest.raises(ConfigError, match=f"{value} needs client_ca_file"):
        _parse(TLS + f"  client_auth_type: {value}\n")
    settings = _parse(TLS + f"  client_auth_type: {value}\n  client_ca_file: ca.crt\n")
    assert settings.client_auth_type == value


def test_an_unknown_client_auth_type_lists_the_five() -> None:
    with pytest.raises(ConfigError, match="not one of NoClientCert, RequestClientCert, "
                                          "RequireAnyClientCert, VerifyClientCertIfGiven, "
                                          "RequireAndVerifyClientCert"):
        _parse(TLS + "  client_auth_type: Always\n")


def test_allowed_sans_need_a_required_verified_certificate() -> None:
    with pytest.raises(ConfigError, match="client_allowed_sans: needs client_auth_type: "
                                          "RequireAndVerifyClientCert"):
        _parse(TLS + "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n"
                     "  client_allowed_sans: [a.example]\n")


@pytest.mark.parametrize(("lines", "message"), [
    ("  min_version: TLS14\n", r"'TLS14' is not one of TLS10, TLS11, TLS12, TLS13"),
    ("  min_version: TLS13\n  max_version: TLS12\n", r"TLS13 is above max_version TLS12"),
    ("  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", r"TLS 1\.3 suite; TLS 1\.3 suites cannot"),
    ("  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n", r"unknown cipher suite"),
    ("  min_version: TLS13\n  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n",
     r"applies up to TLS 1\.2 only, but min_version is TLS13"),
    ("  curve_preferences: [X25519, CurveP256]\n",
     r"Python's ssl can set one curve only \(SSLContext\.set_ecdh_curve\)"),
    ("  curve_preferences: [CurveP224]\n", r"unknown curve 'CurveP224'"),
])
def test_tls_parameters_out_of_reach_are_refused(lines: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _parse(TLS + lines)


def test_tls_settings_without_a_certificate_are_refused() -> None:
    with pytest.raises(ConfigError, match="TLS settings are given but no cert_file"):
        _parse("tls_server_config:\n  min_version: TLS13\n")
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        _parse("tls_server_config:\n  cert_file: tls.crt\n")


@pytest.mark.parametrize(("header", "message"), [
    ("Connection: close", r"'Connection' can not be configured"),
    ("Transfer-Encoding: chunked", r"'Transfer-Encoding' can not be configured"),
    ("Server: nginx", r"'Server' can not be configured"),
    ("x-frame-options: deny", r"'x-frame-options' can not be configured"),
    ("X-Frame-Options: allow", r"expected one of \['deny', 'sameorigin'\], found 'allow'"),
    ('Content-Security-Policy: "a\\r\\nSet-Cookie: x=1"', r"cannot hold a line break"),
])
def test_response_headers_are_the_toolkit_list_only(header: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _parse(f"http_server_config:\n  headers:\n    {header}\n")


def test_blank_header_values_mean_unset() -> None:
    settings = _parse("http_server_config:\n  headers:\n    X-XSS-Protection: ''\n")
    assert settings.headers == {"X-XSS-Protection": ""}


@pytest.mark.parametrize(("users", "message"), [
    ("  prometheus: secret\n", r":2: basic_auth_users\.prometheus: expected a bcrypt hash"),
    ("  prometheus: $2y$10$abcdefghijklmnopqrstuv\n", r"expected a bcrypt hash"),
    (f"  'a:b': {HASH}\n", r"a user name cannot contain ':'"),
    (f"  prometheus: {HASH.replace('$10$', '$03$')}\n", r"bcrypt cost must be 04 to 31"),
])
def test_users_need_bcrypt_hashes_and_usable_names(users: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _parse("basic_auth_users:\n" + users)


def test_relative_files_are_resolved_against_the_config_directory() -> None:
    settings = _parse(TLS)
    assert settings.cert_file == "/etc/portwatch/tls.crt"
    assert settings.key_file == "/etc/portwatch/tls.key"


def test_the_cipher_list_is_what_openssl_offers_for_tls12(tls_dir: Path) -> None:
    chosen = ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA")
    ctx = tls_context(WebSettings(cert_file=str(tls_dir / "tls.crt"),
                                  key_file=str(tls_dir / "tls.key"), cipher_suites=chosen))
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] != "TLSv1.3"]
    assert tls12 == [CIPHER_SUITES[name] for name in chosen]
    assert ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE


def test_every_go_cipher_name_maps_to_a_suite_this_openssl_knows(tls_dir: Path) -> None:
    for name in CIPHER_SUITES:
        ctx = tls_context(WebSettings(cert_file=str(tls_dir / "tls.crt"),
                                      key_file=str(tls_dir / "tls.key"), cipher_suites=(name,)))
        assert [c["name"] for c in ctx.get_ciphers()
                if c["protocol"] != "TLSv1.3"] == [CIPHER_SUITES[name]]


def test_load_refuses_missing_or_mismatched_tls_files(tls_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot load cert_file .*nope\.crt"):
        _load(tls_dir, "tls_server_config:\n  cert_file: nope.crt\n  key_file: tls.key\n")
    with pytest.raises(ConfigError, match=r"cannot load client_ca_file .*tls\.key"):
        _load(tls_dir, "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
                       "  client_auth_type: RequireAndVerifyClientCert\n"
                       "  client_ca_file: tls.key\n")


def test_load_refuses_unreadable_oversized_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.yml: cannot read the web configuration"):
        load_web_settings(str(tmp_path / "absent.yml"))
    big = tmp_path / "big.yml"
    big.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ConfigError, match=r"big\.yml: larger than"):
        load_web_settings(str(big))
    binary = tmp_path / "bin.yml"
    binary.write_bytes(b"a: \xff\n")
    with pytest.raises(ConfigError, match=r"bin\.yml: not UTF-8 \(byte 3\)"):
        load_web_settings(str(binary))


def test_settings_built_in_code_follow_the_same_rules() -> None:
    with pytest.raises(ConfigError, match="client_ca_file without client_auth_type"):
        check_settings(WebSettings(cert_file="a", key_file="b", client_ca_file="c"))
    check_settings(WebSettings(basic_auth_users={"prometheus": HASH}))


def test_allowed_sans_match_dns_exactly_and_ip_by_value() -> None:
    peer = {"subjectAltName": (("DNS", "scraper.example"), ("IP Address", "2001:DB8:0:0:0:0:0:1"))}
    assert san_allowed(peer, ("scraper.example",))
    assert not san_allowed(peer, ("SCRAPER.example", "other.example"))
    assert san_allowed(peer, ("2001:db8::1",))
    assert not san_allowed(None, ("scraper.example",))
    assert san_allowed(None, ())


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_either_settings_or_a_config_error(text: str) -> None:
    assert _outcome(text).startswith(("/etc/portwatch/web.yml", "settings"))


def _outcome(text: str) -> str:
    """``settings`` or the one-line error: nothing else may come out of the reader."""
    try:
        _parse(text)
    except ConfigError as exc:
        return str(exc)
    return "settings"


_KEYS = st.sampled_from(["tls_server_config", "http_server_config", "basic_auth_users",
                         "cert_file", "key_file", "headers", "http2", "cipher_suites",
                         "X-Frame-Options", "prometheus", "min_version"])
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(["TLS12", "deny", HASH, "a"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=10)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=4))
def test_any_shaped_document_is_either_settings_or_a_config_error(doc: dict[str, object]) -> None:
    import yaml

    assert _outcome(yaml.safe_dump(doc)).startswith(("/etc/portwatch/web.yml", "settings"))
