"""Daemon configuration: the shipped example loads; mistakes are one-line errors."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portwatch.daemon.config import (
    INT_RANGES,
    MAX_TIMEOUT_S,
    Backend,
    parse_config,
    parse_listen_address,
)
from portwatch.daemon.web_config import load_web_settings, parse_web_settings
from portwatch.errors import ConfigError
from portwatch.ports import Transport

EXAMPLE = Path(__file__).resolve().parents[2] / "systemd" / "portwatch.toml"


def test_the_shipped_example_config_loads_with_every_key() -> None:
    config = parse_config(EXAMPLE.read_bytes(), str(EXAMPLE))
    assert config.capture.backend is Backend.DUMPCAP
    assert config.capture.interfaces == ("eth0",)
    assert config.capture.snaplen == 128
    assert config.capture.buffer_mib == 32
    assert config.flows.max_flows == 100000
    assert config.flows.idle_s[Transport.UDP] == 60
    assert config.flows.idle_s[Transport.DCCP] == 120
    assert config.flows.active_s == 1800
    assert config.flows.max_flagged_ports == 100
    assert config.registry_sources == ()  # the default: stored update, else packaged
    assert config.listen_address == "127.0.0.1:9917"
    assert config.web_config_file == ""


@pytest.mark.parametrize("key", ["idle_timeout_seconds.tcp", "idle_timeout_seconds.udp",
                                 "idle_timeout_seconds.sctp", "idle_timeout_seconds.dccp",
                                 "active_timeout_seconds"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "-1", "0", "0.0", "604801", "1e300"])
def test_flow_timeouts_outside_0_to_7_days_are_rejected_naming_file_and_key(
        key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^pw\.toml: \[flows\] {re.escape(key)} = .*: "
                                          r"expected seconds more than 0 and at most 604800"):
        parse_config(f"[flows]\n{key} = {value}\n".encode(), "pw.toml")


@pytest.mark.parametrize("value", ["0.001", "1", "604800", "604800.0"])
def test_flow_timeouts_up_to_7_days_are_accepted(value: str) -> None:
    config = parse_config(f"[flows]\nactive_timeout_seconds = {value}\n"
                          f"idle_timeout_seconds.udp = {value}\n".encode(), "pw.toml")
    assert config.flows.active_s == float(value)
    assert config.flows.idle_s[Transport.UDP] == float(value)


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2**63, 2**63 - 1))
def test_a_timeout_is_accepted_exactly_when_finite_positive_and_at_most_7_days(
        value: float) -> None:
    text = f"[flows]\nactive_timeout_seconds = {_toml_number(value)}\n".encode()
    if math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S:
        assert parse_config(text, "pw.toml").flows.active_s == float(value)
    else:
        with pytest.raises(ConfigError, match=r"^pw\.toml: \[flows\] active_timeout_seconds = "):
            parse_config(text, "pw.toml")


def _toml_number(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


@pytest.mark.parametrize(("section", "key"), sorted(INT_RANGES))
def test_every_integer_key_accepts_both_ends_of_its_range_and_nothing_beyond(
        section: str, key: str) -> None:
    low, high = INT_RANGES[section, key]
    for good in (low, high):
        parse_config(f"[{section}]\n{key} = {good}\n".encode(), "pw.toml")
    for bad in (low - 1, high + 1):
        with pytest.raises(ConfigError, match=rf"^pw\.toml: \[{section}\] {key} = {bad}: "
                                              rf"expected {low}-{high}$"):
            parse_config(f"[{section}]\n{key} = {bad}\n".encode(), "pw.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[capture]\nbackend = 'pcap'\n", "expected one of dumpcap"),
        ("[capture]\ninterface = ['eth0']\n", r"unknown key \[capture\] interface "),
        ("[flow]\nmax_flows = 1\n", r"unknown section \[flow\]"),
        ("[flows]\nmax_flows = 0\n", r"max_flows = 0: expected 1-10000000"),
        ("[flows]\nmax_flows = 10000001\n", r"max_flows = 10000001: expected 1-10000000"),
        ("[metrics]\nmax_flagged_ports = -1\n", r"max_flagged_ports = -1: expected 0-10000"),
        ("[metrics]\nmax_flagged_ports = 10001\n", r"expected 0-10000"),
        ("[capture]\nsnaplen = 63\n", r"snaplen = 63: expected 64-262144"),
        ("[capture]\nsnaplen = 262145\n", r"snaplen = 262145: expected 64-262144"),
        ("[capture]\nbuffer_mib = 4097\n", r"buffer_mib = 4097: expected 1-4096"),
        ("[capture]\ninterfaces = []\n", r"expected at least one interface"),
        ("[capture]\ninterfaces = ['-w/tmp/x']\n", r"'-w/tmp/x' is not an interface name"),
        ("[capture]\ninterfaces = ['eth0 lo']\n", r"is not an interface name"),
        ('[capture]\nbpf_filter = "udp\\u0000"\n', r"bpf_filter: a NUL character"),
        ("[flows]\nidle_timeout_seconds.tcp = 'long'\n", "expected a number of seconds"),
        ("[flows]\nidle_timeout_seconds.icmp = 5\n", "expected tcp, udp"),
        ("[web]\nlisten_address = 'localhost'\n", "expected HOST:PORT"),
        ("[capture]\nsnaplen = 'big'\n", "expected an integer"),
        ("[capture]\nbuffer_mib = 0\n", r"buffer_mib = 0: expected 1-4096"),
        ("[capture\n", "not valid TOML"),
    ],
)
def test_config_mistakes_name_the_file_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(text.encode(), "pw.toml")
    assert str(info.value).startswith("pw.toml: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9917", ("127.0.0.1", 9917)), ("[::1]:80", ("::1", 80)), (":9917", ("", 9917))],
)
def test_listen_addresses_take_exporter_forms(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


_HASH = "$2y$10$" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0"


def test_web_config_reads_exporter_toolkit_tls_and_users(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(
        "# exporter-toolkit\ntls_server_config:\n  cert_file: tls.crt\n"
        '  key_file: "/abs/tls.key"\nbasic_auth_users:\n'
        f"  prometheus: {_HASH}  # bcrypt\n")
    settings = parse_web_settings(path.read_text(), str(path))  # parsing only: no files read
    assert settings.cert_file == str(tmp_path / "tls.crt")  # relative to the config file
    assert settings.key_file == "/abs/tls.key"
    assert settings.basic_auth_users == {"prometheus": _HASH}


def test_web_config_rejects_plain_passwords(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users:\n  prometheus: secret\n")
    with pytest.raises(ConfigError, match="expected a bcrypt hash"):
        load_web_settings(str(path))
