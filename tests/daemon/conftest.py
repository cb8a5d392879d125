"""Fixtures for in-process daemon tests: tiny packets, a services registry, a daemon."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from portwatch.capture.batch import PacketBatch
from portwatch.capture.live.source import PacketSource
from portwatch.daemon.config import DaemonConfig, load_config
from portwatch.daemon.service import Daemon, DaemonDeps, default_table_loader
from portwatch.testing import EPOCH_NS, FakeClock, FakeSource

MACS = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"


def udp_frame(sport: int, dport: int) -> bytes:
    """Ethernet/IPv4/UDP from 10.0.0.2:sport to 10.0.0.1:dport, one byte of payload."""
    udp = struct.pack("!HHHH", sport, dport, 9, 0) + b"x"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1]))
    return MACS + b"\x08\x00" + ip + udp


def udp_batch(dport: int, count: int, sport: int = 50000) -> PacketBatch:
    """``count`` datagrams of one flow to ``dport``."""
    return PacketBatch.from_packets([udp_frame(sport, dport)] * count, 1,
                                    timestamps_ns=[EPOCH_NS + i for i in range(count)])


def write_config(path: Path, registry: Path, *, web: Path | None = None,
                 extra: str = "") -> Path:
    text = (f'[registry]\nsources = ["{registry}"]\n'
            '[web]\nlisten_address = "127.0.0.1:0"\n')
    if web is not None:
        text += f'config_file = "{web}"\n'
    text += '[capture]\nbackend = "scapy"\ninterfaces = ["fake0"]\n' + extra
    path.write_text(text)
    return path


@dataclass
class Harness:
    """A daemon wired to files under ``tmp`` and a factory of scripted sources."""

    tmp: Path
    registry: Path
    config: Path
    clock: FakeClock = field(default_factory=FakeClock)
    log: io.StringIO = field(default_factory=io.StringIO)
    sources: list[PacketSource] = field(default_factory=list)
    next_source: Callable[[DaemonConfig], PacketSource] | None = None
    daemon: Daemon | None = None
    stopped: bool = False

    def make_source(self, config: DaemonConfig) -> PacketSource:
        assert self.next_source is not None
        source = self.next_source(config)
        self.sources.append(source)
        return source

    def deps(self, **changes: object) -> DaemonDeps:
        base = {
            "load_config": lambda: load_config(str(self.config)),
            "load_table": default_table_loader(None),
            "make_source": self.make_source,
            "env": {},
            "log": self.log,
            "monotonic": self.clock.monotonic,
            "wall_ns": self.clock.wall_ns,
            "config_file": str(self.config),
        }
        base.update(changes)
        return DaemonDeps(**base)  # type: ignore[arg-type]

    def start(self, source: Callable[[DaemonConfig], PacketSource], **changes: object
              ) -> Daemon:
        self.next_source = source
        self.daemon = Daemon(self.deps(**changes))
        self.daemon.start()
        return self.daemon

    def stop(self) -> int:
        assert self.daemon is not None
        self.stopped = True
        return self.daemon.shutdown()

    def lines(self) -> list[str]:
        return self.log.getvalue().splitlines()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    registry = tmp_path / "services"
    registry.write_text("domain 53/udp\nhttp 80/tcp\nflagme 44515/udp\n")
    h = Harness(tmp_path, registry, write_config(tmp_path / "pw.toml", registry))
    yield h
    if h.daemon is not None and not h.stopped:
        h.stop()


def held(*batches: PacketBatch, **kw: object) -> Callable[[DaemonConfig], FakeSource]:
    """A factory of live-like sources: each run yields ``batches`` and holds."""
    return lambda config: FakeSource(list(batches), hold=True, **kw)  # type: ignore[arg-type]
