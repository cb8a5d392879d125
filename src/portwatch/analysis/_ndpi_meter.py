"""nDPI over a capture or FIFO, in this process or as its own (``python -m``).

nfstream's engine (``_lib_engine``: its libpcap reader, flow meter and nDPI,
statically linked) driven packet by packet, the way nfstream's meter process
drives it. This module imports nothing but the standard library and that
engine, so that ``LiveDetection`` can run it as a child process that starts
in a few milliseconds: beside the analysis, its Python loop then has a core
and a GIL of its own (in a thread, the two loops took turns on one GIL).

As a process it reads the FIFO named on its command line and writes one
line per flow nDPI is done with (``F`` and the fields of ``Record``,
tab-separated) and, when asked, one line per record read (``R`` and the
count), which is all ``detect._Meter`` needs; an error is one line on
standard error and exit status 1.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["Record", "dissector", "engine", "main", "meter"]

_SINGLE_FILE = 0  # nfstream.utils.NFMode.SINGLE_FILE
#: nfstream splits flows on timeouts; portwatch's analysis of a file never
#: does, so nDPI's flows must not either (seconds, well inside uint64 ms).
NO_TIMEOUT_S = 10 ** 9
#: Flows finished early, remembered so their later packets are ignored.
DONE_KEYS = 1 << 20

#: One flow as nDPI left it: (IP protocol, source address, source port, destination
#: address, destination port, first seen in ms, application name, guessed, confidence).
Record = tuple[int, str, int, str, int, int, str, bool, int]


def engine() -> tuple[Any, Any]:
    """nfstream's compiled engine, ``(ffi, lib)``; ``ImportError`` if it is not installed."""
    from _lib_engine import ffi, lib

    return ffi, lib


def dissector(ffi: Any, lib: Any) -> Any:
    """An nDPI detection module with every protocol enabled, as nfstream's meter makes it."""
    checker = ffi.new("struct dissector_checker *")
    checker.flow_size = ffi.sizeof("struct ndpi_flow_struct")
    checker.flow_tcp_size = ffi.sizeof("struct ndpi_flow_tcp_struct")
    checker.flow_udp_size = ffi.sizeof("struct ndpi_flow_udp_struct")
    module = lib.dissector_init(checker)
    if module == ffi.NULL:
        raise RuntimeError("nDPI's detection module could not be initialised "
                           "(nfstream's engine and its nDPI headers disagree)")
    lib.dissector_configure(module)
    return module


def _record(ffi: Any, c: Any) -> Record:
    text = ffi.string
    return (int(c.protocol), text(c.src_ip_str).decode("ascii", errors="replace"),
            int(c.src_port), text(c.dst_ip_str).decode("ascii", errors="replace"),
            int(c.dst_port), int(c.bidirectional_first_seen_ms),
            text(c.application_name).decode("utf-8", errors="replace"), bool(c.guessed),
            int(c.confidence or 0))


def meter(path: str, limit: int, report: Callable[[Record], None], idle_ms: int = 0,
          on_read: Callable[[int], None] | None = None) -> None:
    """nDPI over the capture (or FIFO) at ``path``; ``report`` gets each flow once.

    A flow is finished (nDPI's answer reported, its state freed, its later
    packets ignored) as soon as nDPI is done with it: nfstream's
    ``detection_completed`` (which waits for nDPI's extra dissection),
    nDPI's own give-up (``already_gaveup``: every dissector excluded, or its
    packet budget spent; it then reads nothing more of the flow), or
    ``limit`` packets read; with ``idle_ms``, also when no packet of it came
    for that long in packet time (time moves with the packets of this
    stream). What is left is reported at the end of the input.

    ``on_read(n)``, if given, is told after each record that ``n`` records
    have been read and dealt with (their flows reported).
    """
    ffi, lib = engine()
    mode = _SINGLE_FILE
    error = ffi.new("char[256]")
    capture = lib.capture_open(path.encode(), mode, error, 0)
    if capture == ffi.NULL:
        raise ValueError(ffi.string(error).decode("utf-8", errors="replace") or path)
    if lib.capture_activate(capture, mode, error):
        lib.capture_close(capture)
        raise ValueError(ffi.string(error).decode("utf-8", errors="replace") or path)
    module = dissector(ffi, lib)
    # flow key -> (its nf_flow, its key the other way round); both directions are keys
    meters: dict[bytes, tuple[Any, bytes]] = {}
    done: OrderedDict[bytes, None] = OrderedDict()
    packet = ffi.new("struct nf_packet *")
    raw = ffi.buffer(packet)
    # the key is the packet struct's own bytes (two slices: 0.3 us, where a tuple of
    # eight cffi fields took 1 us a packet): addresses and ports, then the rest of the
    # 5-tuple and the VLAN, each direction spelt once
    types = dict(ffi.typeof("struct nf_packet").fields)
    field = {name: (ffi.offsetof("struct nf_packet", name), ffi.sizeof(types[name].type))
             for name in ("src_ip", "dst_ip", "src_port", "dst_port", "ip_version", "protocol",
                          "vlan_id")}
    src_ip, dst_ip = _span(field["src_ip"]), _span(field["dst_ip"])
    src_port, dst_port = _span(field["src_port"]), _span(field["dst_port"])
    tail = slice(field["ip_version"][0], field["vlan_id"][0] + field["vlan_id"][1])
    if not (src_ip.stop == dst_ip.start and dst_ip.stop == src_port.start
            and dst_port.stop == tail.start and field["protocol"][0] < tail.stop):
        raise RuntimeError("nfstream's nf_packet has another layout than this meter reads")
    head = slice(src_ip.start, src_port.stop)
    tick = scanned = records = 0
    forever = NO_TIMEOUT_S * 1000
    null = ffi.NULL

    def finish(key: bytes) -> None:
        flow, other = meters.pop(key)
        meters.pop(other, None)
        try:
            lib.meter_expire_flow(flow, limit, module)  # nDPI's last word (and guess)
            found = _record(ffi, flow)
        finally:
            lib.meter_free_flow(flow, limit, 0, 1)
        report(found)

    try:
        while True:
            if on_read is not None and records:
                on_read(records)  # the record before this one is dealt with
            ret = lib.capture_next(capture, packet, 0, 1, 0, mode)
            if ret < -1:  # end of input (-1: nothing read this time; 0: ignored)
                break
            if ret >= 0:
                records += 1
            if ret != 1:
                continue
            if packet.time > tick:
                tick = packet.time
            else:
                packet.time = tick  # the meter wants time in order
            key = raw[head] + raw[dst_port] + raw[tail]
            got = meters.get(key)
            if got is None:
                if key in done:
                    continue
                flow = lib.meter_initialize_flow(packet, 0, 0, 0, limit, module, 0)
                if flow == null:
                    raise MemoryError("nDPI could not allocate a flow")
                other = raw[dst_ip] + raw[src_ip] + raw[dst_port] + raw[src_port] + raw[tail]
                meters[key] = (flow, other)
                if other != key:  # a flow to itself has one key
                    meters[other] = (flow, key)
            else:
                flow = got[0]
                lib.meter_update_flow(flow, packet, forever, forever, 0, 0, 0, limit, module, 0)
            if (flow.detection_completed or flow.bidirectional_packets >= limit
                    or (flow.ndpi_flow != null and flow.ndpi_flow.already_gaveup)):
                _remember(done, key, meters[key][1])
                finish(key)
            if idle_ms and tick - scanned >= min(idle_ms, 1000):  # at most once a second
                scanned = tick
                for old in [k for k, (m, other) in meters.items()
                            if k <= other and m.bidirectional_last_seen_ms + idle_ms < tick]:
                    _remember(done, old, meters[old][1])  # what comes later is past its start
                    finish(old)
        for key, (_, other) in list(meters.items()):
            if key <= other and key in meters:  # each flow once (it has two keys)
                finish(key)
    finally:
        for key, (flow, other) in meters.items():
            if key <= other:
                lib.meter_free_flow(flow, limit, 0, 1)
        lib.capture_close(capture)
        lib.dissector_cleanup(module)


def _span(at: tuple[int, int]) -> slice:
    return slice(at[0], at[0] + at[1])


def _remember(done: OrderedDict[bytes, None], key: bytes, other: bytes) -> None:
    """Both keys of a finished flow, the oldest forgotten beyond ``DONE_KEYS``."""
    done[key] = done[other] = None
    while len(done) > DONE_KEYS:
        done.popitem(last=False)


def main(argv: list[str]) -> int:
    """``PATH LIMIT IDLE_MS WAITABLE``: the flows of ``PATH`` as lines on standard output."""
    path, limit, idle_ms, waitable = argv[0], int(argv[1]), int(argv[2]), argv[3] == "1"
    out = sys.stdout
    # a live stream (idle_ms) or a waiting caller wants each flow at once; a file's
    # analysis only wants the copying of finished flows stopped soon: 32 lines at a time
    every = 1 if waitable or idle_ms else 32
    pending = 0

    def report(found: Record) -> None:
        nonlocal pending
        out.write("F\t" + "\t".join(map(str, found)) + "\n")
        pending += 1
        if pending >= every:
            out.flush()
            pending = 0

    def on_read(records: int) -> None:
        out.write(f"R\t{records}\n")
        out.flush()

    try:
        meter(path, limit, report, idle_ms, on_read if waitable else None)
    except (ImportError, ValueError, RuntimeError, MemoryError, OSError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the parent went away: its FIFO is closed or gone
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
