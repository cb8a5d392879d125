"""A booted Debian container under systemd-nspawn, for tests against a real systemd.

The root file system is built once with debootstrap into a cache directory
outside the repository and reused; each test run boots an overlay of it, so
nothing a test installs survives into the next run. Commands run inside the
container through ``nsenter`` into its init's namespaces (the host need not run
systemd or machined: ``--register=no --keep-unit``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CACHE",
    "Container",
    "ContainerError",
    "apt_mirror",
    "booted",
    "ensure_rootfs",
]

CACHE = Path(os.environ.get("PORTWATCH_NSPAWN_CACHE", "/var/cache/portwatch-test"))
#: What the container needs beyond debootstrap's minbase: an init, a bus for
#: systemctl, Python with venv for `make install`, make, TLS roots for pip.
#: procps: /bin/kill, which the unit's ExecReload= runs (minbase lacks it).
PACKAGES = ("systemd", "systemd-sysv", "dbus", "procps", "python3", "python3-venv", "make",
            "ca-certificates")
_DEFAULT_MIRROR = ("http://deb.debian.org/debian", "bookworm")
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ContainerError(RuntimeError):
    """The container could not be built or booted (the test skips on it)."""


def apt_mirror(sources: Path = Path("/etc/apt")) -> tuple[str, str]:
    """The Debian mirror URL and suite this machine's apt uses (deb822 or one-line)."""
    files = sorted(sources.glob("sources.list.d/*.sources")) + sorted(
        sources.glob("sources.list.d/*.list")) + [sources / "sources.list"]
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            uri = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(\S+)", stanza, re.M)
            if uri and suites and "/debian" in uri.group(1) and "security" not in uri.group(1):
                return uri.group(1).rstrip("/"), suites.group(1)
        for line in text.splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s+(\S+)\s", line)
            if m and not m.group(2).endswith(("-security", "-updates")):
                return m.group(1), m.group(2)
    return _DEFAULT_MIRROR


def ensure_rootfs(suite: str, mirror: str, *, timeout: float = 1200.0) -> Path:
    """``CACHE/rootfs-<suite>-<packages hash>``, debootstrapped on first use, under a lock.

    Built in a temporary directory and renamed, so an interrupted build is never
    reused; a changed package list gets a root file system of its own.
    """
    tag = hashlib.sha256(" ".join(PACKAGES).encode()).hexdigest()[:8]
    target = CACHE / f"rootfs-{suite}-{tag}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"rootfs-{suite}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "usr/lib/systemd/systemd").exists():
            return target
        partial = Path(tempfile.mkdtemp(prefix=f"rootfs-{suite}.", dir=CACHE))
        try:
            result = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                 suite, str(partial), mirror],
                capture_output=True, text=True, timeout=timeout, check=False)
            if result.returncode != 0:
                log = (partial / "debootstrap/debootstrap.log")
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise ContainerError(f"debootstrap {suite} from {mirror} failed "
                                     f"({result.returncode}): {result.stderr[-2000:]}{tail}")
            # A machine id makes journald and DynamicUser behave as on a real system.
            (partial / "etc/machine-id").write_text("")
            partial.rename(target)
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
    return target


@dataclass(slots=True)
class Container:
    """A booted container: ``run`` executes a command inside it as root."""

    root: Path  # the merged (writable) root, seen from the host
    nspawn: subprocess.Popen[bytes]
    init_pid: int
    log: Path
    mounts: list[Path] = field(default_factory=list)

    def run(self, command: str, *, timeout: float = 120.0, check: bool = True,
            ) -> subprocess.CompletedProcess[str]:
        """``sh -c command`` in every namespace of the container's init."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "-a", "/usr/bin/env", "-i", f"PATH={_PATH}",
             "HOME=/root", "LANG=C.UTF-8", "SYSTEMD_COLORS=0", "SYSTEMD_PAGER=",
             "/bin/sh", "-c", command],
            capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"in the container: {command!r} exited {result.returncode}\n"
                                 f"stdout: {result.stdout[-3000:]}\n"
                                 f"stderr: {result.stderr[-3000:]}")
        return result

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show`` properties of ``unit``."""
        out = self.run(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def trust_host_cas(self, local: Path = Path("/usr/local/share/ca-certificates")) -> None:
        """Trust the CAs the host added locally (a TLS-inspecting proxy's, say), as it does."""
        certs = sorted(local.glob("**/*.crt")) if local.is_dir() else []
        if not certs:
            return
        target = self.root / "usr/local/share/ca-certificates"
        target.mkdir(parents=True, exist_ok=True)
        for cert in certs:
            shutil.copyfile(cert, target / cert.name)
        self.run("update-ca-certificates >/dev/null")

    def journal(self, unit: str) -> str:
        return self.run(f"journalctl --no-pager -o cat -u {unit}", check=False).stdout


def _init_pid(nspawn_pid: int, deadline: float) -> int:
    """The container's PID 1 seen from the host: nspawn's child running systemd."""
    children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children")
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for pid in children.read_text().split():
                exe = os.readlink(f"/proc/{pid}/exe")
                if exe.endswith("/systemd"):
                    return int(pid)
        if not Path(f"/proc/{nspawn_pid}").exists():
            break
        time.sleep(0.2)
    raise ContainerError("the container's init did not start")


def _overlay(lower: Path, work: Path) -> tuple[Path, list[Path]]:
    upper, scratch, merged = work / "upper", work / "work", work / "root"
    for d in (upper, scratch, merged):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={scratch}", str(merged)],
                   check=True, capture_output=True)
    return merged, [merged]


@contextlib.contextmanager
def booted(rootfs: Path, work: Path, *, binds: Sequence[tuple[Path, str]] = (),
           boot_timeout: float = 90.0) -> Iterator[Container]:
    """Boot an overlay of ``rootfs``; always terminate nspawn and unmount on exit."""
    root, mounts = _overlay(rootfs, work)
    log = work / "nspawn.log"
    args = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "-b", "-D", str(root),
            "--console=passive", *[f"--bind={host}:{inside}" for host, inside in binds]]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    container: Container | None = None
    try:
        deadline = time.monotonic() + boot_timeout
        try:
            pid = _init_pid(proc.pid, deadline)
        except ContainerError as exc:
            raise ContainerError(f"{exc}: {log.read_text(errors='replace')[-2000:]}") from exc
        container = Container(root, proc, pid, log, mounts)
        state, result = "", None
        while not state and time.monotonic() < deadline:
            # empty until init answers on its bus (nsenter may come first)
            left = max(1, int(deadline - time.monotonic()))
            result = container.run(f"timeout {left} systemctl is-system-running --wait",
                                   timeout=left + 10, check=False)
            state = result.stdout.strip()
            if not state:
                time.sleep(0.5)
        if state not in ("running", "degraded"):
            errors = result.stderr.strip() if result else ""
            raise ContainerError(f"the container did not boot (state {state!r}, {errors}): "
                                 f"{log.read_text(errors='replace')[-2000:]}")
        yield container
    finally:
        _terminate(proc)
        unmounted = all(_unmount(m) for m in reversed(mounts))
        if unmounted:  # the container's writes (a venv, logs): hundreds of MB a run
            for layer in ("upper", "work"):
                shutil.rmtree(work / layer, ignore_errors=True)


def _unmount(mount: Path) -> bool:
    """Unmount; lazily if busy (then the layers are left for the next reboot to free)."""
    if subprocess.run(["umount", str(mount)], check=False, capture_output=True).returncode == 0:
        return True
    subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)
    return False


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """Power the container off (SIGTERM to nspawn), then kill what is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
