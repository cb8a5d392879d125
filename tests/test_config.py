"""Daemon configuration: the shipped example loads; mistakes are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from portwatch.daemon.config import Backend, parse_config, parse_listen_address
from portwatch.daemon.web_config import load_web_settings
from portwatch.errors import ConfigError
from portwatch.ports import Transport

EXAMPLE = Path(__file__).resolve().parent.parent / "systemd" / "portwatch.toml"


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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[capture]\nbackend = 'pcap'\n", "expected one of dumpcap"),
        ("[capture]\ninterface = ['eth0']\n", r"unknown key \[capture\] interface "),
        ("[flow]\nmax_flows = 1\n", r"unknown section \[flow\]"),
        ("[flows]\nmax_flows = 0\n", "expected a positive number"),
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


def test_web_config_reads_exporter_toolkit_tls_and_users(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(
        "# exporter-toolkit\ntls_server_config:\n  cert_file: tls.crt\n"
        '  key_file: "/abs/tls.key"\nbasic_auth_users:\n'
        "  prometheus: $2y$10$abcdefghijklmnopqrstuv  # bcrypt\n")
    settings = load_web_settings(str(path))
    assert settings.cert_file == str(tmp_path / "tls.crt")
    assert settings.key_file == "/abs/tls.key"
    assert settings.basic_auth_users == {"prometheus": "$2y$10$abcdefghijklmnopqrstuv"}


def test_web_config_rejects_plain_passwords(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users:\n  prometheus: secret\n")
    with pytest.raises(ConfigError, match="expected a bcrypt hash"):
        load_web_settings(str(path))
