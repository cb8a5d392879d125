"""The install path and the units, under a real systemd in a Debian container.

A debootstrapped Debian (cached in ``/var/cache/portwatch-test``) boots under
systemd-nspawn; the checkout is installed there with the documented
``make install``; the daemon then runs as shipped (DynamicUser, notify,
watchdog) on the replay backend, so no capture privileges are needed. The
container shares the host's network namespace (pip reaches PyPI through it),
so every listener binds 127.0.0.1 on a port that was free on the host.

Root only; skips, saying why, without systemd-nspawn/debootstrap (``make
system-deps`` installs them) or when the container cannot be built or booted.
The static checks of the unit files at the end run anywhere.
"""

from __future__ import annotations

import contextlib
import lzma
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from integration.nspawn import CACHE, Container, ContainerError, apt_mirror, booted, ensure_rootfs
from portwatch.registry.packaged import packaged_snapshot

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"
SAMPLE = "/usr/share/doc/portwatch/examples/sample.pcapng"
WATCHDOG_S = 6
MAX_EXPOSURE = 3.0
#: Not copied into the container: VCS data, virtualenvs, caches, build output.
_SKIP_COPY = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "__pycache__",
                                    ".*_cache", "*.pyc")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def _wait_for(what: str, check: object, timeout: float = 60.0) -> None:
    """Poll ``check()`` until true (a condition, not a speed claim)."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _settled(container: Container, unit: str, *props: str) -> dict[str, str]:
    """The unit's properties once it has left ``reloading``.

    Under ``Type=notify`` (systemd 252, bookworm) ``systemctl reload`` returns when
    ``kill -HUP`` has; the daemon's own RELOADING=1 ... READY=1 may come just after,
    and systemd shows ``reloading`` in between. That is correct, so wait it out.
    """
    shown: dict[str, str] = {}

    def left_reloading() -> bool:
        shown.update(container.show(unit, "ActiveState", *props))
        return shown["ActiveState"] != "reloading"

    _wait_for(f"{unit} to leave reloading", left_reloading)
    return shown


def _packaged_xml() -> tuple[bytes, date]:
    xml = lzma.decompress(packaged_snapshot().read_bytes())
    m = re.search(rb"<updated>(\d{4}-\d{2}-\d{2})</updated>", xml)
    assert m, "the packaged snapshot has no <updated>"
    return xml, date.fromisoformat(m.group(1).decode())


# ----------------------------------------------------------------- the container


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, overlay mount, systemd-nspawn)")
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make system-deps installs it as root)")
    mirror, suite = apt_mirror()
    try:
        rootfs = ensure_rootfs(suite, mirror)
    except (ContainerError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot build the Debian {suite} root file system: {exc}")
    pip_cache = CACHE / "pip"
    pip_cache.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            box = stack.enter_context(booted(rootfs, tmp_path_factory.mktemp("nspawn"),
                                             binds=[(pip_cache, "/root/.cache/pip")]))
        except (ContainerError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"the container cannot boot here: {exc}")
        box.trust_host_cas()  # pip must reach PyPI as the host does
        yield box


@pytest.fixture(scope="module")
def listen_port() -> int:
    return _free_port()


@pytest.fixture(scope="module")
def installed(container: Container, listen_port: int) -> str:
    """``make install`` over a test config already in /etc/portwatch; its output."""
    shutil.copytree(REPO, container.root / "root/portwatch", ignore=_SKIP_COPY)
    config = container.root / "etc/portwatch/portwatch.toml"
    config.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    config.write_text(f'[capture]\nbackend = "replay"\n\n'
                      f'[web]\nlisten_address = "127.0.0.1:{listen_port}"\n')
    config.chmod(0o644)
    out = container.run("cd /root/portwatch && make install 2>&1", timeout=900).stdout
    dropin = container.root / "etc/systemd/system/portwatch.service.d/50-test.conf"
    dropin.write_text(
        "[Service]\n"
        f"WatchdogSec={WATCHDOG_S}s\n"
        "ExecStart=\n"
        "ExecStart=/usr/bin/portwatch daemon --config.file=/etc/portwatch/portwatch.toml "
        f"--replay {SAMPLE} --replay-speed 0\n")
    container.run("systemctl daemon-reload")
    return out


@pytest.fixture(scope="module")
def daemon(container: Container, installed: str, listen_port: int) -> dict[str, str]:
    """portwatch.service started; its properties right after start."""
    container.run("systemctl start portwatch.service", timeout=120, check=False)
    props = container.show("portwatch.service", "ActiveState", "SubState", "MainPID",
                           "InvocationID", "StatusText", "User", "DynamicUser", "Result")
    if props["ActiveState"] != "active":
        raise AssertionError(f"portwatch.service did not start: {props}\n"
                             f"{container.journal('portwatch.service')}")
    props["started"] = str(time.monotonic())
    return props


# ------------------------------------------------------------------------ install


def test_make_install_lays_out_venv_link_units_dropin_config_and_docs(
        container: Container, installed: str) -> None:
    root = container.root
    assert os.readlink(root / "usr/bin/portwatch") == "/opt/portwatch/bin/portwatch"
    version = container.run("portwatch --version").stdout
    assert "portwatch" in version
    # non-editable: the package lives in the venv, not in the checkout
    where = container.run("/opt/portwatch/bin/python -c "
                          "'import portwatch; print(portwatch.__file__)'").stdout.strip()
    assert where.startswith("/opt/portwatch/lib/")
    for unit in ("portwatch.service", "portwatch-registry-update.service",
                 "portwatch-registry-update.timer", "portwatch.service.d/10-install.conf"):
        assert (root / "etc/systemd/system" / unit).read_bytes() == (SYSTEMD / unit).read_bytes()
    for doc in ("install.md", "operations.md", "systemd.md", "examples/sample.pcapng",
                "examples/portwatch.toml"):
        assert (root / "usr/share/doc/portwatch" / doc).is_file(), doc
    for generated in ("usr/share/bash-completion/completions/portwatch",
                      "usr/share/zsh/vendor-completions/_portwatch",
                      "usr/share/man/man1/portwatch.1.gz"):
        assert (root / generated).stat().st_size > 0, generated
    # the administrator's config is kept, not overwritten by the example
    assert "keeping /etc/portwatch/portwatch.toml" in installed
    assert 'backend = "replay"' in (root / "etc/portwatch/portwatch.toml").read_text()


def test_installed_units_pass_systemd_analyze_verify(container: Container, installed: str) -> None:
    result = container.run(
        "systemd-analyze verify --man=no /etc/systemd/system/portwatch.service "
        "/etc/systemd/system/portwatch-registry-update.service "
        "/etc/systemd/system/portwatch-registry-update.timer 2>&1", check=False)
    assert result.returncode == 0, result.stdout
    assert "portwatch" not in result.stdout, result.stdout


# ------------------------------------------------------------------------- daemon


def test_daemon_is_ready_under_its_dynamic_user_and_serves_metrics(
        container: Container, daemon: dict[str, str], listen_port: int) -> None:
    # Type=notify: "active (running)" means the daemon sent READY=1
    assert daemon["SubState"] == "running"
    # the sample replays in well under a second: either status may be showing by now
    assert daemon["StatusText"] in {"capturing with replay",
                                    "replay: input finished; serving counts"}
    assert daemon["User"] == "portwatch"
    assert daemon["DynamicUser"] == "yes"
    status = container.run(f"cat /proc/{daemon['MainPID']}/status").stdout
    uid_line = re.search(r"^Uid:\s+(\d+)", status, re.M)
    assert uid_line, status
    uid = int(uid_line.group(1))
    assert 61184 <= uid <= 65519, f"uid {uid} is not in systemd's dynamic range"
    environ = container.run(f"tr '\\0' '\\n' < /proc/{daemon['MainPID']}/environ").stdout
    assert "PORTWATCH_DATA_DIR=/var/lib/portwatch" in environ.splitlines()
    assert "PORTWATCH_CACHE_DIR=/var/cache/portwatch" in environ.splitlines()
    # the replay of the sample capture is counted and served
    _wait_for("the replayed packets in /metrics",
              lambda: _total(_scrape(listen_port), "portwatch_packets_total") > 0)
    samples = _scrape(listen_port)
    assert _total(samples, "portwatch_capture_packets_received_total") > 0
    # the compiled table went into the CacheDirectory, owned by the dynamic user
    owner = container.run("stat -c %u /var/cache/private/portwatch").stdout.strip()
    assert int(owner) == uid


def test_watchdog_pings_keep_the_daemon_alive(
        container: Container, daemon: dict[str, str]) -> None:
    first = container.show("portwatch.service", "WatchdogTimestampMonotonic")
    elapsed = time.monotonic() - float(daemon["started"])
    time.sleep(max(0.0, 3 * WATCHDOG_S - elapsed))  # three watchdog periods since start
    now = container.show("portwatch.service", "ActiveState", "MainPID", "NRestarts",
                         "WatchdogUSec", "WatchdogTimestampMonotonic")
    assert now["WatchdogUSec"] == f"{WATCHDOG_S}s"
    assert now["ActiveState"] == "active"
    assert now["MainPID"] == daemon["MainPID"]
    assert now["NRestarts"] == "0"
    assert int(now["WatchdogTimestampMonotonic"]) > int(first["WatchdogTimestampMonotonic"])


def test_reload_keeps_counters(container: Container, daemon: dict[str, str],
                               listen_port: int) -> None:
    before = _scrape(listen_port)
    packets = _total(before, "portwatch_packets_total")
    assert packets > 0
    container.run("systemctl reload portwatch.service", timeout=60)
    props = _settled(container, "portwatch.service", "MainPID")
    assert props == {"ActiveState": "active", "MainPID": daemon["MainPID"]}
    # a reload replays the finished capture once more, on top of what was counted
    _wait_for("the second replay",
              lambda: _total(_scrape(listen_port), "portwatch_packets_total") == 2 * packets)
    after = _scrape(listen_port)
    for key, value in before.items():
        if key[0].endswith("_total"):
            assert after.get(key, 0.0) >= value, key
    assert "reloaded: registry" in container.journal("portwatch.service")


# ------------------------------------------------------------------- registry update


@pytest.fixture(scope="module")
def registry_server(container: Container, installed: str) -> tuple[str, date]:
    """A newer official registry served over HTTP inside the container."""
    xml, packaged = _packaged_xml()
    newer = packaged + timedelta(days=7)
    served = container.root / "srv/portwatch-test"
    served.mkdir(parents=True)
    (served / "registry.xml").write_bytes(xml.replace(
        f"<updated>{packaged.isoformat()}</updated>".encode(),
        f"<updated>{newer.isoformat()}</updated>".encode(), 1))
    port = _free_port()
    container.run(f"systemd-run --unit=portwatch-test-http --property=DynamicUser=yes "
                  f"python3 -m http.server --bind 127.0.0.1 --directory /srv/portwatch-test {port}")
    url = f"http://127.0.0.1:{port}/registry.xml"
    _wait_for("the test registry server", lambda: urllib.request.urlopen(url, timeout=5))
    dropin = container.root / "etc/systemd/system/portwatch-registry-update.service.d"
    dropin.mkdir()
    (dropin / "50-test.conf").write_text(
        f"[Service]\nExecStart=\nExecStart=/usr/bin/portwatch registry update --url {url}\n")
    container.run("systemctl daemon-reload")
    return url, newer


def _registry_info(container: Container) -> str:
    return container.run("PORTWATCH_DATA_DIR=/var/lib/portwatch PORTWATCH_CACHE_DIR=/tmp/c "
                         "portwatch registry info --json").stdout


def test_update_service_swaps_the_registry_and_reloads_the_daemon_onto_it(
        container: Container, daemon: dict[str, str], listen_port: int,
        registry_server: tuple[str, date]) -> None:
    url, newer = registry_server
    assert f'"last_updated": "{newer.isoformat()}"' not in _registry_info(container)
    container.run("systemctl start portwatch-registry-update.service", timeout=300)
    props = container.show("portwatch-registry-update.service", "Result", "ExecMainStatus",
                           "User", "DynamicUser")
    assert props == {"Result": "success", "ExecMainStatus": "0", "User": "portwatch",
                     "DynamicUser": "yes"}
    assert f"updated from {url}" in container.journal("portwatch-registry-update.service")
    info = _registry_info(container)
    assert '"origin": "data-dir"' in info
    assert f'"last_updated": "{newer.isoformat()}"' in info
    # the registry changed, so the daemon was reloaded (same invocation) onto it
    after = _settled(container, "portwatch.service", "InvocationID")
    assert after["ActiveState"] == "active"
    assert after["InvocationID"] == daemon["InvocationID"]
    stamp = datetime(newer.year, newer.month, newer.day, tzinfo=UTC).timestamp()
    _wait_for("the daemon serving the new registry date", lambda: _total(
        _scrape(listen_port), "portwatch_registry_updated_timestamp_seconds") == stamp)


def test_update_service_leaves_the_daemon_alone_when_nothing_changed(
        container: Container, registry_server: tuple[str, date]) -> None:
    before = _settled(container, "portwatch.service", "InvocationID")
    assert before["ActiveState"] == "active"
    container.run("systemctl start portwatch-registry-update.service", timeout=300)
    assert container.show("portwatch-registry-update.service", "Result")["Result"] == "success"
    assert container.show("portwatch.service", "ActiveState", "InvocationID") == before


def test_timer_is_enabled_and_scheduled(container: Container, installed: str) -> None:
    container.run("systemctl enable --now portwatch-registry-update.timer")
    props = container.show("portwatch-registry-update.timer", "ActiveState", "UnitFileState",
                           "Persistent", "RandomizedDelayUSec", "NextElapseUSecRealtime",
                           "TimersCalendar")
    assert props["ActiveState"] == "active"
    assert props["UnitFileState"] == "enabled"
    assert props["Persistent"] == "yes"
    assert props["RandomizedDelayUSec"] == "6h"
    assert "OnCalendar=Mon *-*-* 00:00:00" in props["TimersCalendar"]  # "weekly"
    assert props["NextElapseUSecRealtime"]


def test_stop_ends_cleanly_within_timeout_stop_sec(container: Container,
                                                   daemon: dict[str, str]) -> None:
    container.run("systemctl stop portwatch.service", timeout=120)
    props = container.show("portwatch.service", "ActiveState", "Result", "ExecMainStatus",
                           "TimeoutStopUSec", "ActiveExitTimestampMonotonic",
                           "InactiveEnterTimestampMonotonic")
    # Result=timeout would mean systemd had to kill it after TimeoutStopSec
    assert (props["ActiveState"], props["Result"], props["ExecMainStatus"]) == (
        "inactive", "success", "0")
    assert props["TimeoutStopUSec"] == "30s"
    stopping_us = (int(props["InactiveEnterTimestampMonotonic"])
                   - int(props["ActiveExitTimestampMonotonic"]))
    assert 0 <= stopping_us < 30_000_000, f"stopping took {stopping_us} us"
    assert "portwatch: stopped:" in container.journal("portwatch.service")


def test_uninstall_removes_the_install_and_keeps_config_and_state(
        container: Container, installed: str, registry_server: tuple[str, date]) -> None:
    container.run("cd /root/portwatch && make uninstall 2>&1", timeout=120)
    root = container.root
    for gone in ("usr/bin/portwatch", "opt/portwatch", "usr/share/doc/portwatch",
                 "etc/systemd/system/portwatch.service",
                 "etc/systemd/system/portwatch-registry-update.timer",
                 "etc/systemd/system/portwatch.service.d/10-install.conf",
                 "usr/share/bash-completion/completions/portwatch",
                 "usr/share/zsh/vendor-completions/_portwatch",
                 "usr/share/man/man1/portwatch.1.gz"):
        assert not os.path.lexists(root / gone), gone
    assert (root / "etc/portwatch/portwatch.toml").is_file()
    assert (root / "var/lib/private/portwatch/registry/manifest.json").is_file()
    timer = container.show("portwatch-registry-update.timer", "LoadState", "ActiveState")
    assert timer == {"LoadState": "not-found", "ActiveState": "inactive"}


def test_destdir_stage_runs_once_copied_to_root(container: Container, installed: str) -> None:
    # after the uninstall above: stage, then copy the stage to / as a package would
    out = container.run("cd /root/portwatch && make install DESTDIR=/tmp/stage 2>&1",
                        timeout=900).stdout
    assert "daemon-reload" not in out  # a stage never touches the running systemd
    stale = container.run("grep -rlF /tmp/stage /tmp/stage/opt/portwatch/bin", check=False)
    assert stale.stdout == ""
    container.run("cp -a /tmp/stage/. / && rm -rf /tmp/stage")
    assert "portwatch" in container.run("portwatch --version").stdout
    source = container.run(
        "/opt/portwatch/bin/python -c 'import importlib.util, marshal, portwatch.cli as m; "
        "pyc = open(importlib.util.cache_from_source(m.__file__), \"rb\").read(); "
        "print(marshal.loads(pyc[16:]).co_filename)'").stdout.strip()
    assert source.startswith("/opt/portwatch/lib/"), source


# ------------------------------------------------ the unit files, without a container


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    env = dict(os.environ, SYSTEMD_COLORS="0", SYSTEMD_LOG_LEVEL="notice")
    return subprocess.run([tool, *args], capture_output=True, text=True, env=env, timeout=120,
                          check=False)


def test_update_service_exposure_is_at_most_3() -> None:
    result = _analyze("security", "--offline=true", "--no-pager",
                      str(SYSTEMD / "portwatch-registry-update.service"))
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    if m is None:
        pytest.skip(f"systemd-analyze security --offline does not work here: {result.stderr}")
    assert float(m.group(1)) <= MAX_EXPOSURE, result.stdout


def test_update_units_verify_with_the_binary_present(tmp_path: Path) -> None:
    # verify insists ExecStart's binary exists; /usr/bin/portwatch is not installed here
    for name in ("portwatch-registry-update.service", "portwatch-registry-update.timer"):
        text = (SYSTEMD / name).read_text().replace("/usr/bin/portwatch ", "/bin/true ")
        (tmp_path / name).write_text(text)
    result = _analyze("verify", "--man=no", str(tmp_path / "portwatch-registry-update.timer"),
                      str(tmp_path / "portwatch-registry-update.service"))
    output = result.stdout + result.stderr
    if result.returncode != 0 and "portwatch" not in output:
        pytest.skip(f"systemd-analyze verify does not work here: {output.strip()}")
    assert result.returncode == 0, output
    assert "portwatch-registry-update" not in output, output


def test_update_service_shares_the_daemons_user_and_state_directory() -> None:
    def keys(text: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.startswith("#"):
                found.setdefault(key.strip(), []).append(value.strip())
        return found

    update = keys((SYSTEMD / "portwatch-registry-update.service").read_text())
    daemon = keys((SYSTEMD / "portwatch.service").read_text()
                  + (SYSTEMD / "portwatch.service.d/10-install.conf").read_text())
    for key in ("User", "DynamicUser", "StateDirectory", "Environment"):
        assert update[key][-1] == daemon[key][-1], key
    assert update["CapabilityBoundingSet"] == [""]
    assert set(update["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6",
                                                                 "AF_UNIX"}
