"""Fuzz the compiled decoder against the numpy decoder, under AddressSanitizer if built so.

Mutates the packets of every sample capture, the fuzz corpus and the depth-limit
frames of ``test_compiled_decode.py`` (bit flips, random bytes, tunnel ports
and ethertypes, deletions, splices; now and then another link type and a
wirelen past the capture). Each mutated packet is decoded alone from a buffer
of exactly its size, so a read past it leaves the buffer; every 256 packets
are then decoded as one batch by both decoders, which must agree column for
column. Any difference raises; a bad read aborts under the sanitizers::

    CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \\
        -fno-sanitize-recover=undefined" LDFLAGS="-fsanitize=address,undefined" \\
        .venv/bin/cythonize -f -i -3 src/portwatch/decode/_decode.pyx
    LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \\
        ASAN_OPTIONS=detect_leaks=0 PYTHONPATH=src \\
        .venv/bin/python tests/decode/fuzz_decode.py --seconds 180 --seed 1

(rebuild without the flags afterwards: ``CFLAGS="-O3 -g0" .venv/bin/cythonize -f -i -3 ...``).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import test_compiled_decode as t

#: Two-byte values that steer a decoder into its deeper paths.
STEERS = (b"\0\0", b"\xff\xff", b"\x00\x08", b"\x12\xb5", b"\x17\xc1", b"\x08\x68",
          b"\x88\x47", b"\x81\x00", b"\x88\x64", b"\x65\x58", b"\x88\xbe", b"\x22\xeb")


def pool() -> list[tuple[bytes, int]]:
    """(packet, link type) of the samples, the depth-limit frames and the fuzz corpus."""
    out = t.sample_packets() + [(f, 1) for f in t.limit_frames()]
    for path in sorted(p for p in t.CORPUS.iterdir() if p.is_file()):
        for batch in t.read_batches(path.read_bytes()):
            out += [(batch.packet(i), int(batch.linktypes[i])) for i in range(len(batch))]
    return out


def mutate(packet: bytes, rng: random.Random, others: list[tuple[bytes, int]]) -> bytes:
    buf = bytearray(packet)
    for _ in range(rng.randint(1, 6)):
        if not buf:
            break
        at = rng.randrange(len(buf))
        kind = rng.randrange(5)
        if kind == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            buf[at] = rng.randrange(256)
        elif kind == 2:
            buf[at : at + 2] = rng.choice(STEERS)
        elif kind == 3:
            del buf[at : at + rng.randint(1, 16)]
        else:
            buf[at:at] = rng.choice(others)[0][: rng.randint(1, 64)]
    return bytes(buf)


def fuzz(seconds: float, seed: int) -> tuple[int, int]:
    """Mutated packets and batches checked in ``seconds``; raises on the first difference."""
    rng = random.Random(seed)
    packets_in = pool()
    done = batches = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        packets: list[tuple[bytes, int]] = []
        wire: list[int] = []
        for _ in range(256):
            packet, linktype = rng.choice(packets_in)
            mutated = mutate(packet, rng, packets_in)
            if rng.random() < 0.1:
                linktype = rng.choice(t.LINKTYPES)
            wirelen = len(mutated) + rng.choice((0, 0, 1, 100))
            t.alone(mutated, linktype, wirelen)
            packets.append((mutated, linktype))
            wire.append(wirelen)
        t.assert_same(t.batch_of(packets, wire))
        done += len(packets)
        batches += 1
    return done, batches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not t.COMPILED:
        print("the compiled decoder is not built", file=sys.stderr)
        return 1
    done, batches = fuzz(args.seconds, args.seed)
    print(f"{done:,} mutated packets decoded alone and in {batches:,} batches in "
          f"{args.seconds:.0f} s (seed {args.seed}): both decoders agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
