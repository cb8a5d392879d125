"""Fuzz the compiled capture framing (``capture/files/_core.pyx``) against the numpy framing.

Every input is read twice, with ``framing="compiled"`` and ``framing="numpy"``,
in small batches (so batch and byte bounds fall everywhere), from a buffer and
from a stream handing out a few bytes per read. The two reads must give the
same batches (every array) and end with the same error (type, offset,
message); the only exceptions allowed are ``CaptureError`` from the input.

Three ways to run it, from the repository root:

* pure-Python mutation loop (what ``make test`` runs briefly, seeded)::

      PYTHONPATH=src python tests/fuzz/fuzz_core.py --seconds 600 --seed 1

* the same loop on an AddressSanitizer + UBSan build of the extension (built
  into ``--asan-dir``; the process re-executes itself with libasan preloaded,
  so any out-of-bounds read in the walk aborts with a report)::

      PYTHONPATH=src python tests/fuzz/fuzz_core.py --asan --seconds 1800 --only pcap

* under atheris (libFuzzer drives the mutations, steered by the Python coverage of the
  reader; ``pip install atheris``). libFuzzer writes new inputs into the first
  directory, so give it a scratch one before the corpus::

      mkdir -p /tmp/core-corpus
      PYTHONPATH=src python tests/fuzz/fuzz_core.py --atheris /tmp/core-corpus tests/fuzz/corpus \
          -max_len=65536 -max_total_time=1800

Failing inputs are saved under ``tests/fuzz/crashes/``.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fuzz_captures import CORPUS, CRASHES, MAX_INPUT, fuzz  # noqa: E402

ROOT = HERE.parents[1]
SOURCE = ROOT / "src" / "portwatch" / "capture" / "files" / "_core.pyx"
FIELDS = ("data", "offsets", "caplens", "wirelens", "timestamps_ns", "linktypes", "interfaces",
          "file_offsets")
#: (batch_size, batch_bytes, stream step or 0 for a buffer) per read of one input.
READS = ((7, 512, 0), (2, 96, 0), (5, 300, 13))


class _Trickle(io.RawIOBase):
    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        out = self._data[self._pos : self._pos + self._step]
        self._pos += len(out)
        return out


def _read(data: bytes, framing: str, size: int, nbytes: int, step: int) -> tuple[object, ...]:
    from portwatch.capture.files.reader import open_capture
    from portwatch.errors import CaptureError

    source: bytes | io.RawIOBase = _Trickle(data, step) if step else data
    batches: list[list[bytes]] = []
    try:
        reader = open_capture(source, "fuzz", size, batch_bytes=nbytes, framing=framing)
    except CaptureError as exc:
        return ("open", type(exc).__name__, exc.offset, str(exc))
    error: tuple[object, ...] = ()
    try:
        for batch in reader:
            assert 0 < len(batch) <= size
            assert bool((batch.offsets + batch.caplens <= batch.data.shape[0]).all())
            batches.append([np.ascontiguousarray(getattr(batch, f)).tobytes() + str(
                getattr(batch, f).dtype).encode() for f in FIELDS])
    except CaptureError as exc:
        error = (type(exc).__name__, exc.offset, str(exc))
    return (batches, error, [repr(i) for i in reader.interfaces])


def one_input(data: bytes) -> int:
    """Read ``data`` with both framings; AssertionError when they differ. Reads compared."""
    data = data[:MAX_INPUT]
    for size, nbytes, step in READS:
        ours = _read(data, "compiled", size, nbytes, step)
        ref = _read(data, "numpy", size, nbytes, step)
        assert ours == ref, f"framings differ (batch {size}, {nbytes} bytes, stream {step})"
    return len(READS)


def _load_core(path: Path) -> None:
    """Use the extension at ``path`` (an instrumented build) as ``_core``."""
    spec = importlib.util.spec_from_file_location("portwatch.capture.files._core", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["portwatch.capture.files._core"] = module
    spec.loader.exec_module(module)


def _build_asan(out: Path) -> Path:
    """Compile ``_core.pyx`` with AddressSanitizer and UBSan into ``out``."""
    from Cython.Build import cythonize  # noqa: F401 - fails early if Cython is missing

    out.mkdir(parents=True, exist_ok=True)
    c_file = out / "_core.c"
    so = out / ("_core" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run([sys.executable, "-m", "cython", "-3", str(SOURCE), "-o", str(c_file)],
                   check=True)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                    "-I" + sysconfig.get_paths()["include"], str(c_file), "-o", str(so)],
                   check=True)
    return so


def _preload() -> str:
    libs = [subprocess.run(["gcc", f"-print-file-name={lib}"], capture_output=True, text=True,
                           check=True).stdout.strip() for lib in ("libasan.so", "libubsan.so")]
    return ":".join(libs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("pcap", "pcapng"), help="seed from one format only")
    parser.add_argument("--asan", action="store_true", help="run on a sanitizer build")
    parser.add_argument("--asan-dir", type=Path, default=Path("/tmp/portwatch-core-asan"))
    parser.add_argument("--core", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--atheris", action="store_true", help="libFuzzer via atheris")
    args, rest = parser.parse_known_args(argv)
    if args.asan and args.core is None:
        so = _build_asan(args.asan_dir)
        env = dict(os.environ, LD_PRELOAD=_preload(),
                   ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
                   UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
        again = [sys.executable, __file__, *(argv or sys.argv[1:]), "--core", str(so)]
        return subprocess.run(again, env=env, check=False).returncode
    if args.core is not None:
        _load_core(args.core)
        asan = "libasan" in Path("/proc/self/maps").read_text()
        print(f"_core from {args.core} (libasan loaded: {asan})", file=sys.stderr)
    from portwatch.capture.files.reader import COMPILED

    if not COMPILED:
        print("the compiled framing is not built: nothing to fuzz", file=sys.stderr)
        return 2
    if args.atheris:
        import atheris  # type: ignore[import-not-found]

        def target(data: bytes) -> None:
            one_input(data)

        # Python coverage of the reader and both framers steers libFuzzer; the C walk is
        # not instrumented (that needs clang's -fsanitize=fuzzer-no-link build).
        atheris.instrument_all()
        atheris.Setup([sys.argv[0], *rest], target)
        atheris.Fuzz()
        return 0
    suffix = {"pcap": (".pcap",), "pcapng": (".pcapng",), None: (".pcap", ".pcapng", ".gz")}
    pool = [p.read_bytes() for p in sorted(CORPUS.iterdir()) if p.name.endswith(
        suffix[args.only])]
    done, failures = fuzz(args.runs, None if args.runs else args.seconds, args.seed,
                          target=one_input, pool=pool)
    print(f"{done} inputs, {len(failures)} failures", file=sys.stderr)
    if failures:
        CRASHES.mkdir(exist_ok=True)
        for n, (data, trace) in enumerate(failures[:20]):
            (CRASHES / f"core-{args.seed}-{n}.bin").write_bytes(data)
            print(trace, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
