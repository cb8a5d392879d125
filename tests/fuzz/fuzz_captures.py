"""Fuzz the capture readers (and the writer's copy of what they read).

Every input is read with ``open_capture`` in small batches; whatever is read
is copied with ``PcapngWriter`` and the copy read back. The only exceptions
allowed are ``CaptureError`` subclasses from reading the input; the copy must
read back whole, with as many packets. Inputs are cut to :data:`MAX_INPUT`
bytes so every run is bounded in size, hence in time.

With atheris installed (``pip install atheris``) this is a libFuzzer target::

    python tests/fuzz/fuzz_captures.py tests/fuzz/corpus -max_len=65536

Without it, a pure-Python mutation fuzzer seeded from ``tests/fuzz/corpus``
runs instead; inputs that fail are saved under ``tests/fuzz/crashes/``::

    PYTHONPATH=src python tests/fuzz/fuzz_captures.py --seconds 600 --seed 1
"""

from __future__ import annotations

import argparse
import io
import random
import struct
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from portwatch.capture.files.reader import open_capture
from portwatch.capture.files.writer import MAX_WRITE_CAPLEN, PcapngWriter
from portwatch.errors import CaptureError

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
CRASHES = HERE / "crashes"
#: Inputs are cut to this size: it bounds the work of one input.
MAX_INPUT = 1 << 16
#: Small bounds so one input exercises many batches and batch boundaries.
BATCH_SIZE = 7
BATCH_BYTES = 512

_INTERESTING_U32 = (0, 1, 3, 4, 11, 12, 16, 27, 28, 31, 32, 0x7FFFFFFF, 0x80000000,
                    0xFFFFFFFC, 0xFFFFFFFF, 0x1000000, 0x1000004, 262144, 262145)


def one_input(data: bytes) -> int:
    """Read ``data``, copy what was read, read the copy back; packets read from the input.

    Raises anything but ``CaptureError`` from the input; ``AssertionError`` when
    a batch points outside its buffer or the copy differs.
    """
    data = data[:MAX_INPUT]
    try:
        reader = open_capture(data, "fuzz", BATCH_SIZE, batch_bytes=BATCH_BYTES)
    except CaptureError:
        return 0
    out = io.BytesIO()
    writer = PcapngWriter(out)
    read: list[tuple[bytes, int, int]] = []
    try:
        for batch in reader:
            assert 0 < len(batch) <= BATCH_SIZE
            assert bool((batch.offsets + batch.caplens <= batch.data.shape[0]).all())
            writer.sync_interfaces(reader.interfaces)
            writer.write_batch(batch, ["fuzz"] * len(batch))
            read.extend((batch.packet(i)[:MAX_WRITE_CAPLEN], int(batch.timestamps_ns[i]),
                         int(batch.linktypes[i])) for i in range(len(batch)))
    except CaptureError:
        pass
    copy = open_capture(out.getvalue(), "copy")
    again = [(b.packet(i), int(b.timestamps_ns[i]), int(b.linktypes[i]))
             for b in copy for i in range(len(b))]
    assert [(p, lt) for p, _, lt in again] == [(p, lt) for p, _, lt in read], (
        "the annotated copy does not read back as what was read")
    coarse = any(i.tsresol & 0x80 and i.tsresol & 0x7F > 34 for i in reader.interfaces)
    for (_, ours, _), (_, theirs, _) in zip(read, again, strict=True):
        # binary resolutions finer than 2**-34 s go through float64 both ways
        slack = max(1, abs(ours) >> 50) if coarse else 0
        assert abs(ours - theirs) <= slack, f"timestamp {ours} ns comes back as {theirs} ns"
    return len(read)


# -- a pure-Python mutator -----------------------------------------------------------------


def mutate(data: bytes, rng: random.Random, others: Sequence[bytes]) -> bytes:
    """One to four random edits of ``data``, favouring length fields and boundaries."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(7)
        at = rng.randrange(len(buf)) if buf else 0
        if kind == 0 and buf:  # flip a bit
            buf[at] ^= 1 << rng.randrange(8)
        elif kind == 1 and buf:  # a random byte
            buf[at] = rng.randrange(256)
        elif kind == 2 and len(buf) >= 4:  # an interesting 32-bit value, either byte order
            at = rng.randrange(0, len(buf) - 3) & ~3 if rng.random() < 0.7 else at
            at = min(at, len(buf) - 4)
            order = rng.choice("<>")
            buf[at : at + 4] = struct.pack(order + "I", rng.choice(_INTERESTING_U32))
        elif kind == 3:  # cut
            del buf[rng.randrange(len(buf) + 1) :]
        elif kind == 4 and buf:  # delete a chunk
            del buf[at : at + rng.randint(1, 64)]
        elif kind == 5 and buf:  # duplicate a chunk
            end = min(len(buf), at + rng.randint(1, 256))
            buf[at:at] = buf[at:end]
        elif kind == 6 and others:  # splice with another seed
            other = rng.choice(others)
            cut = rng.randrange(len(other) + 1)
            buf = buf[:at] + bytearray(other[cut:])
    return bytes(buf[:MAX_INPUT])


def seeds() -> list[bytes]:
    return [p.read_bytes() for p in sorted(CORPUS.iterdir()) if p.is_file()]


def fuzz(
    runs: int | None,
    seconds: float | None,
    seed: int,
    target: Callable[[bytes], int] = one_input,
    pool: Sequence[bytes] | None = None,
) -> tuple[int, list[tuple[bytes, str]]]:
    """Mutate ``pool`` (the corpus) for ``runs`` inputs or ``seconds``; (inputs run, failures)."""
    rng = random.Random(seed)
    pool = seeds() if pool is None else pool
    failures: list[tuple[bytes, str]] = []
    started = time.monotonic()
    done = 0
    while (runs is None or done < runs) and (
        seconds is None or time.monotonic() - started < seconds
    ):
        data = mutate(rng.choice(pool), rng, pool)
        try:
            target(data)
        except Exception:
            failures.append((data, traceback.format_exc()))
        done += 1
    return done, failures


def main(argv: list[str] | None = None) -> int:
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        atheris = None
    args_in = sys.argv if argv is None else [sys.argv[0], *argv]
    if atheris is not None and "--pure" not in args_in:

        def target(data: bytes) -> None:
            one_input(data)

        atheris.Setup(args_in, target)
        atheris.Fuzz()
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pure", action="store_true", help="ignore atheris even if installed")
    args = parser.parse_args(args_in[1:])
    started = time.monotonic()
    done, failures = fuzz(args.runs, args.seconds, args.seed)
    elapsed = time.monotonic() - started
    print(f"{done:,} inputs in {elapsed:.0f} s (seed {args.seed}): {len(failures)} failures")
    if failures:
        CRASHES.mkdir(exist_ok=True)
        for i, (data, trace) in enumerate(failures):
            (CRASHES / f"crash-{args.seed}-{i}.bin").write_bytes(data)
            print(trace.splitlines()[-1])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
