"""The operational assets (systemd unit, example config, alerts, dashboard) are valid.

These tests drive the real tools: promtool for the alerting rules and for every
PromQL expression of the Grafana dashboard, systemd-analyze for the unit file.
Each test that needs a binary skips, naming it, when the binary is absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "portwatch.service"
EXAMPLE_CONFIG = REPO / "systemd" / "portwatch.toml"
ALERTS = REPO / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = REPO / "prometheus" / "prometheus.yml"
DASHBOARD = REPO / "grafana" / "dashboards" / "portwatch.json"
DASHBOARD_PROVIDER = REPO / "grafana" / "provisioning" / "dashboards" / "portwatch.yml"
DATASOURCE = REPO / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

MAX_EXPOSURE = 3.0

# The metrics the daemon exposes (fixed by the spec). Dashboards and alerts may
# use nothing else, apart from Prometheus' own `up`.
SPEC_METRICS = frozenset(
    {
        "portwatch_packets_total",
        "portwatch_bytes_total",
        "portwatch_flows_total",
        "portwatch_flagged_packets_total",
        "portwatch_flagged_flows_total",
        "portwatch_capture_packets_received_total",
        "portwatch_capture_packets_dropped_total",
        "portwatch_decode_errors_total",
        "portwatch_portless_packets_total",
        "portwatch_backend_restarts_total",
        "portwatch_active_flows",
        "portwatch_flow_evictions_total",
        "portwatch_registry_records",
        "portwatch_registry_updated_timestamp_seconds",
        "portwatch_registry_info",
        "portwatch_build_info",
        "portwatch_protocol_mismatch_flows_total",  # [detect] enabled (docs/detect.md)
    }
)
ALLOWED_METRICS = SPEC_METRICS | {"up"}

# What Grafana substitutes before sending a query, as concrete PromQL.
GRAFANA_SUBSTITUTIONS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$instance": ".+",
    "$transport": "tcp|udp|sctp|dccp",
}


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed")
    return path


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


# --------------------------------------------------------------------- PromQL


_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "atan2",
    }
)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (identifiers that are not functions or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # exponent or duration suffix of a number
        if text[match.end() :].lstrip().startswith("("):
            continue  # function or aggregation call
        if match.group() not in _KEYWORDS:
            names.add(match.group())
    return names


def test_metric_name_extraction_skips_functions_labels_and_strings() -> None:
    expr = (
        'label_replace(sum by (service) (rate(portwatch_packets_total{status=~"a|b"}[5m]))'
        ', "service", "x", "service", "") / on (instance) up > 1e3'
    )
    assert metric_names(expr) == {"portwatch_packets_total", "up"}


def substitute_grafana(expr: str) -> str:
    for variable, value in sorted(GRAFANA_SUBSTITUTIONS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + variable[1:] + "}", value).replace(variable, value)
    return expr


def promtool_check_expressions(tmp_path: Path, exprs: dict[str, str]) -> Any:
    """promtool check rules on one recording rule per expression (parses the PromQL)."""
    rules = {
        "groups": [
            {
                "name": "expressions",
                "rules": [{"record": name, "expr": expr} for name, expr in exprs.items()],
            }
        ]
    }
    path = tmp_path / "expressions.rules.yml"
    path.write_text(json.dumps(rules, indent=1))  # JSON is YAML
    return run(need("promtool"), "check", "rules", str(path))


def test_expression_check_rejects_invalid_promql(tmp_path: Path) -> None:
    result = promtool_check_expressions(tmp_path, {"bad": "sum by (x (rate(foo[5m]))"})
    assert result.returncode != 0


# ---------------------------------------------------------------- alert rules


def alert_rules() -> dict[str, str]:
    """alert name -> expression, read from alerts.yml (block-scalar `expr: |`)."""
    lines = ALERTS.read_text().splitlines()
    rules: dict[str, str] = {}
    name = None
    for index, line in enumerate(lines):
        if m := re.match(r"\s*- alert:\s*(\S+)", line):
            name = m.group(1)
        elif (m := re.match(r"(\s*)expr:\s*(.*)$", line)) and name is not None:
            inline = m.group(2).strip()
            if inline not in ("|", "|-", ">", ">-"):
                rules[name] = inline
                continue
            indent = len(m.group(1))
            body = []
            for following in lines[index + 1 :]:
                if following.strip() and len(following) - len(following.lstrip()) <= indent:
                    break
                body.append(following.strip())
            rules[name] = " ".join(part for part in body if part)
    return rules


def alert_test_cases() -> Iterator[tuple[str, bool]]:
    """(alertname, expects-firing) for every alert_rule_test entry in alerts_test.yml."""
    lines = ALERTS_TEST.read_text().splitlines()
    for index, line in enumerate(lines):
        m = re.match(r"\s*alertname:\s*(\S+)", line)
        if not m:
            continue
        for following in lines[index + 1 :]:
            if e := re.match(r"\s*exp_alerts:\s*(.*)$", following):
                yield m.group(1), e.group(1).strip() != "[]"
                break


def test_alert_rules_pass_promtool_check() -> None:
    result = run(need("promtool"), "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alert_unit_tests_pass() -> None:
    result = run(need("promtool"), "test", "rules", ALERTS_TEST.name, cwd=ALERTS_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_unit_tests_fail_when_a_rule_is_broken(tmp_path: Path) -> None:
    # Loosen one threshold: the unit tests must notice.
    broken = ALERTS.read_text().replace("> 90 * 86400", "> 900 * 86400")
    assert broken != ALERTS.read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(ALERTS_TEST, tmp_path / "alerts_test.yml")
    result = run(need("promtool"), "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "PortwatchRegistryOutdated" in result.stdout + result.stderr


def test_the_required_alerts_exist() -> None:
    exprs = alert_rules()
    joined = "\n".join(exprs.values())
    assert 'portwatch_flagged_packets_total{status=~"unassigned|reserved", ' in joined
    assert 'reason="unauthorized-use"' in joined
    assert "portwatch_capture_packets_dropped_total" in joined
    assert "portwatch_backend_restarts_total" in joined
    assert "time() - portwatch_registry_updated_timestamp_seconds > 90 * 86400" in joined
    assert 'up{job="portwatch"} == 0' in joined
    assert "increase(portwatch_protocol_mismatch_flows_total[10m]) > 0" in joined
    assert len(exprs) == 7


def test_traffic_alerts_fire_once_per_port_with_the_reasons_in_a_label() -> None:
    exprs = alert_rules()
    for name in ("PortwatchTrafficOnUnassignedPort", "PortwatchTrafficOnPortWithUnauthorizedUse"):
        expr = exprs[name]
        assert "sum by (job, instance, transport, port, status)" in expr, name
        assert '"reasons"' in expr, name
    # a port with unauthorized use raises the critical alert only
    assert re.search(r"unless on \(job, instance, transport, port\)\s*"
                     r'\(rate\(portwatch_flagged_packets_total\{reason="unauthorized-use"\}',
                     exprs["PortwatchTrafficOnUnassignedPort"])
    # and the unit tests prove it on a port counted under two reasons
    cases = ALERTS_TEST.read_text()
    assert 'port="44515",status="unassigned",reason="unassigned"' in cases
    assert 'port="44515",status="unassigned",reason="unauthorized-use"' in cases
    assert 'reasons: "unassigned, unauthorized-use"' in cases


def test_every_alert_is_tested_both_firing_and_silent() -> None:
    cases = list(alert_test_cases())
    for alert in alert_rules():
        assert (alert, True) in cases, f"{alert} has no unit test in which it fires"
        assert (alert, False) in cases, f"{alert} has no unit test in which it stays silent"
    unknown = {name for name, _ in cases} - set(alert_rules())
    assert not unknown, f"tests name alerts that do not exist: {unknown}"


def test_every_alert_has_severity_summary_and_description() -> None:
    text = ALERTS.read_text()
    blocks = re.split(r"\n\s*- alert:", text)[1:]
    assert len(blocks) == len(alert_rules())
    for block in blocks:
        name = block.split()[0]
        assert re.search(r"severity:\s*(warning|critical)", block), name
        assert "summary:" in block, name
        assert "description:" in block, name
        assert "{{ $labels." in block, f"{name}: annotations should name the affected series"


def test_alert_expressions_use_only_spec_metrics() -> None:
    for name, expr in alert_rules().items():
        unknown = metric_names(expr) - ALLOWED_METRICS
        assert not unknown, f"{name} uses metrics the daemon does not expose: {unknown}"


def test_example_prometheus_config_is_valid() -> None:
    result = run(need("promtool"), "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    text = PROMETHEUS_CONFIG.read_text()
    assert "job_name: portwatch" in text  # PortwatchExporterDown depends on it
    assert "127.0.0.1:9917" in text


# ------------------------------------------------------------------ dashboard


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_expressions() -> dict[str, str]:
    """A rule-name-safe key per PromQL expression: panel targets and variable queries."""
    exprs: dict[str, str] = {}
    for panel in all_panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            exprs[f"panel_{panel['id']}_{target['refId']}"] = target["expr"]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = (
            variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        )
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert m, f"variable {variable['name']}: unexpected query {query!r}"
        exprs[f"variable_{variable['name']}"] = m.group(1)
    return exprs


def test_dashboard_is_ready_for_provisioning() -> None:
    board = dashboard()
    assert board["uid"] == "portwatch"
    assert board["id"] is None  # a fixed id would clash between Grafana instances
    assert 36 <= board["schemaVersion"] <= 41
    ids = [p["id"] for p in all_panels(board["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_has_datasource_and_transport_variables() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    transport = variables["transport"]
    assert transport["type"] == "query"
    assert transport["query"]["query"] == "label_values(portwatch_packets_total, transport)"
    assert transport["datasource"]["uid"] in ("$datasource", "${datasource}")


def test_every_panel_and_target_queries_the_datasource_variable() -> None:
    queried = 0
    for panel in all_panels(dashboard()["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in ("$datasource", "${datasource}"), panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in ("$datasource", "${datasource}"), panel["title"]
            queried += 1
    assert queried >= 8


def test_dashboard_covers_the_required_views() -> None:
    exprs = "\n".join(dashboard_expressions().values())
    for needle in (
        "rate(portwatch_packets_total",
        "rate(portwatch_bytes_total",
        "topk(",
        "portwatch_flagged_packets_total",
        'status=~"unassigned|reserved"',
        "portwatch_capture_packets_dropped_total",
        "portwatch_backend_restarts_total",
        "portwatch_decode_errors_total",
        "portwatch_portless_packets_total",
        "portwatch_active_flows",
        "portwatch_flow_evictions_total",
        "time() - portwatch_registry_updated_timestamp_seconds",
    ):
        assert needle in exprs, f"no panel uses {needle}"
    tables = [p for p in all_panels(dashboard()["panels"]) if p["type"] == "table"]
    flagged = [p for p in tables if "portwatch_flagged_packets_total" in p["targets"][0]["expr"]]
    assert flagged, "no flagged-ports table"
    assert re.search(r"by \(transport, port, status, reason\)", flagged[0]["targets"][0]["expr"])


def test_dashboard_expressions_use_only_spec_metrics() -> None:
    for key, expr in dashboard_expressions().items():
        names = metric_names(expr)
        assert names, f"{key}: selects no metric: {expr}"
        unknown = names - SPEC_METRICS
        assert not unknown, f"{key} uses metrics the daemon does not expose: {unknown}"


def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    exprs = {key: substitute_grafana(expr) for key, expr in dashboard_expressions().items()}
    for key, expr in exprs.items():
        assert "$" not in expr, f"{key}: unsubstituted variable in {expr}"
    result = promtool_check_expressions(tmp_path, exprs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


# Series shaped like the daemon's output, one hour at one-minute resolution.
_LABELS = 'job="portwatch", instance="h1:9917"'
_SERIES = [
    (
        f'portwatch_packets_total{{{_LABELS}, transport="tcp", service="http", status="assigned"}}',
        "0+600x60",
    ),
    (
        f'portwatch_packets_total{{{_LABELS}, transport="udp", service="", status="unassigned"}}',
        "0+6x60",
    ),
    (
        f'portwatch_packets_total{{{_LABELS}, transport="udp", service="", status="reserved"}}',
        "0+1x60",
    ),
    (
        f'portwatch_bytes_total{{{_LABELS}, transport="tcp", service="http", status="assigned"}}',
        "0+60000x60",
    ),
    (
        f'portwatch_bytes_total{{{_LABELS}, transport="udp", service="", status="unassigned"}}',
        "0+600x60",
    ),
    (
        f'portwatch_flows_total{{{_LABELS}, transport="tcp", service="http", status="assigned"}}',
        "0+10x60",
    ),
    (
        f'portwatch_flagged_packets_total{{{_LABELS}, transport="udp", port="4", '
        'status="unassigned", reason="unassigned"}',
        "0+6x60",
    ),
    (
        f'portwatch_flagged_flows_total{{{_LABELS}, transport="udp", port="4", '
        'status="unassigned", reason="unassigned"}',
        "0+1x60",
    ),
    (f'portwatch_capture_packets_received_total{{{_LABELS}, interface="eth0"}}', "0+700x60"),
    (f'portwatch_capture_packets_dropped_total{{{_LABELS}, interface="eth0"}}', "0+1x60"),
    (f'portwatch_decode_errors_total{{{_LABELS}, reason="truncated"}}', "0+1x60"),
    (f'portwatch_portless_packets_total{{{_LABELS}, reason="icmp"}}', "0+5x60"),
    (f'portwatch_portless_packets_total{{{_LABELS}, reason="non-ip"}}', "0+2x60"),
    (f'portwatch_backend_restarts_total{{{_LABELS}, backend="dumpcap"}}', "0x20 1x40"),
    (f"portwatch_active_flows{{{_LABELS}}}", "100+1x60"),
    (f"portwatch_flow_evictions_total{{{_LABELS}}}", "0+2x60"),
    (f'portwatch_registry_records{{{_LABELS}, kind="assigned", transport="tcp"}}', "6000x60"),
    (f'portwatch_registry_records{{{_LABELS}, kind="assigned", transport="udp"}}', "5800x60"),
    (f'portwatch_registry_records{{{_LABELS}, kind="unassigned", transport="tcp"}}', "400x60"),
    (f'portwatch_registry_records{{{_LABELS}, kind="name-only", transport=""}}', "900x60"),
    (f"portwatch_registry_updated_timestamp_seconds{{{_LABELS}}}", "0x60"),
    (
        f'portwatch_registry_info{{{_LABELS}, source="/var/lib/portwatch/ports.xml", '
        'format="iana-xml", last_updated="1970-01-01"}',
        "1x60",
    ),
    (f'portwatch_build_info{{{_LABELS}, version="0.1.0"}}', "1x60"),
    (
        f'portwatch_protocol_mismatch_flows_total{{{_LABELS}, transport="tcp", port="443", '
        'assigned="https", detected="ssh"}',
        "0+1x60",
    ),
]


def test_every_dashboard_expression_returns_data_for_daemon_shaped_series(
    tmp_path: Path,
) -> None:
    # Each expression becomes an alert `count(expr) > 0`; promtool then checks that
    # every one fires, i.e. that no matcher or label typo leaves a panel empty.
    exprs = {key: substitute_grafana(expr) for key, expr in dashboard_expressions().items()}
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"alert": key, "expr": f"count({expr}) > 0"} for key, expr in exprs.items()
                ],
            }
        ]
    }
    tests = {
        "rule_files": ["dashboard.rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in _SERIES],
                "alert_rule_test": [
                    {"eval_time": "50m", "alertname": key, "exp_alerts": [{"exp_labels": {}}]}
                    for key in exprs
                ],
            }
        ],
    }
    (tmp_path / "dashboard.rules.yml").write_text(json.dumps(rules, indent=1))
    (tmp_path / "dashboard_test.yml").write_text(json.dumps(tests, indent=1))
    result = run(need("promtool"), "test", "rules", "dashboard_test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_provisioning_files_point_at_file_dashboards_and_prometheus() -> None:
    provider = DASHBOARD_PROVIDER.read_text()
    assert re.search(r"^apiVersion: 1$", provider, re.M)
    assert re.search(r"^\s+type: file$", provider, re.M)
    assert re.search(r"^\s+path: /\S+$", provider, re.M)
    datasource = DATASOURCE.read_text()
    assert re.search(r"^apiVersion: 1$", datasource, re.M)
    assert re.search(r"^\s+type: prometheus$", datasource, re.M)


# -------------------------------------------------------------- systemd unit


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Unit file as section -> key -> every assignment, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_is_a_notify_service_with_watchdog_reload_and_capture_capabilities() -> None:
    service = parse_unit(UNIT.read_text())["Service"]
    assert service["Type"] == ["notify"]
    assert service["WatchdogSec"]
    assert service["ExecStart"] == [
        "/usr/bin/portwatch daemon --config.file=/etc/portwatch/portwatch.toml"
    ]
    assert re.fullmatch(r"(/usr)?/bin/kill -HUP \$MAINPID", service["ExecReload"][0])
    assert set(service["CapabilityBoundingSet"][0].split()) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert set(service["AmbientCapabilities"][0].split()) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    # The daemon clears its own capability sets with capset(2) once its capture
    # launcher holds them; a filter without capset would make it refuse to start.
    assert service["SystemCallFilter"][-1] == "capset"
    assert service["NoNewPrivileges"] == ["yes"]
    families = set(service["RestrictAddressFamilies"][0].split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"}
    for directory in ("StateDirectory", "CacheDirectory", "ConfigurationDirectory"):
        assert service[directory] == ["portwatch"]
    # Capture must see the host's traffic, unfiltered.
    for forbidden in ("IPAddressDeny", "IPAddressAllow", "PrivateNetwork", "PrivateUsers"):
        assert forbidden not in service


def verify(unit_dir: Path, unit: str) -> Any:
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="notice", SYSTEMD_COLORS="0")
    return run(need("systemd-analyze"), "verify", "--man=no", str(unit_dir / unit), env=env)


def verify_problems(unit_dir: Path, unit: str) -> list[str]:
    """Lines systemd-analyze verify prints about `unit`; skips if verify cannot run here."""
    probe = unit_dir / "probe.service"
    probe.write_text("[Service]\nExecStart=/bin/true\n")
    result = verify(unit_dir, probe.name)
    if result.returncode != 0:
        pytest.skip(f"systemd-analyze verify does not work here: {result.stderr.strip()}")
    result = verify(unit_dir, unit)
    output = (result.stdout + result.stderr).splitlines()
    problems = [line for line in output if unit in line]
    if result.returncode != 0:
        problems.append(f"exit status {result.returncode}: {result.stderr.strip()}")
    return problems


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart's binary exists; point it at a real one.
    unit = UNIT.read_text().replace("ExecStart=/usr/bin/portwatch ", "ExecStart=/bin/true ")
    assert "ExecStart=/bin/true daemon" in unit
    (tmp_path / "portwatch.service").write_text(unit)
    assert verify_problems(tmp_path, "portwatch.service") == []


def test_verify_check_reports_a_misspelt_directive(tmp_path: Path) -> None:
    unit = UNIT.read_text().replace("ExecStart=/usr/bin/portwatch ", "ExecStart=/bin/true ")
    (tmp_path / "typo.service").write_text(unit.replace("ProtectHome=", "ProtectHomes="))
    problems = verify_problems(tmp_path, "typo.service")
    assert any("ProtectHomes" in line for line in problems)


def exposure(unit: Path) -> float | None:
    env = dict(os.environ, SYSTEMD_COLORS="0", SYSTEMD_LOG_LEVEL="notice")
    result = run(
        need("systemd-analyze"), "security", "--offline=true", "--no-pager", str(unit), env=env
    )
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    return float(m.group(1)) if m else None


def test_unit_exposure_is_at_most_3(tmp_path: Path) -> None:
    probe = tmp_path / "probe.service"
    probe.write_text("[Service]\nExecStart=/bin/true\n")
    if exposure(probe) is None:
        pytest.skip("systemd-analyze security --offline does not work here")
    measured = exposure(UNIT)
    assert measured is not None
    assert measured <= MAX_EXPOSURE, f"exposure {measured} > {MAX_EXPOSURE}"


# ------------------------------------------------------------- example config


def test_example_config_sets_every_documented_key() -> None:
    config = tomllib.loads(EXAMPLE_CONFIG.read_text())
    capture = config["capture"]
    assert capture["backend"] in ("dumpcap", "scapy", "pyshark", "replay")
    assert isinstance(capture["interfaces"], list)
    assert capture["interfaces"]
    assert capture["bpf_filter"] == ""
    assert capture["snaplen"] == 128
    flows = config["flows"]
    assert flows["max_flows"] == 100000
    assert set(flows["idle_timeout_seconds"]) == {"tcp", "udp", "sctp", "dccp"}
    assert all(v > 0 for v in flows["idle_timeout_seconds"].values())
    assert flows["active_timeout_seconds"] > max(flows["idle_timeout_seconds"].values())
    assert config["metrics"]["max_flagged_ports"] == 100
    # the example relies on the default registry (stored update, else the packaged snapshot)
    assert "sources" not in config["registry"]
    assert "# sources = [" in EXAMPLE_CONFIG.read_text()
    assert config["web"]["listen_address"] == "127.0.0.1:9917"
    assert "config_file" in config["web"]


def test_example_config_documents_every_backend() -> None:
    text = EXAMPLE_CONFIG.read_text()
    for backend in ("dumpcap", "scapy", "pyshark", "replay"):
        assert f'"{backend}"' in text
