"""Runs over several captures: worker processes, typed failures, merging, spooling.

``analyze_paths`` is what ``portwatch analyze`` does, as a library call: every
capture is analysed (in ``jobs`` processes when there are several), a capture
that cannot be read at all becomes a :class:`~portwatch.errors.CaptureError`
in :attr:`RunResult.failures` (carrying its file and byte offset across the
process boundary), and the readable ones are merged into one ``Report``.

Spooling: an input that is not a regular file (``-``, a FIFO, ``/dev/stdin``
on a pipe) can be read only once. When a run must read it again (the
``annotate`` pass), hand it to a worker process, or give it to a dissecting
engine that opens files by name, it is copied once into a private temporary
directory (mode 0700). The first bytes are checked for a pcap, pcapng or gzip
magic *before* the rest is copied, so ``yes | portwatch analyze --annotate
out -`` fails at once instead of filling the disk. The directory is removed
on every way out: return, exception, SIGINT (Python's own KeyboardInterrupt),
SIGTERM and SIGHUP (turned into ``SystemExit`` while a spool exists, when
their handler is the default). A run that reads its input once streams it
and writes nothing to disk: ``tcpdump -w - | portwatch analyze -`` may run
for days.

Bounds: with ``limits``, each capture's flow table holds at most
``limits.max_flows`` flows live (``portwatch.analysis.retire``); with
``records``, every flow's record goes to that sink as its flow finishes
instead of being held for the report. ``--annotate`` needs every flow row
until its second pass, so that capture is analysed unbounded; worker
processes (``--jobs``) cannot stream, so the parent hands their flows to the
sink when their reports arrive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import numpy.typing as npt

from portwatch.analysis.analyzer import Analyzer
from portwatch.analysis.flows import FlowLimits
from portwatch.analysis.report import Report, by_start, merge_reports
from portwatch.analysis.retire import RecordSink
from portwatch.capture.batch import PacketBatch
from portwatch.capture.files.reader import (
    CaptureReader,
    looks_like_capture,
    open_capture,
    read_capture_path,
)
from portwatch.decode import ENGINES, decoder_for
from portwatch.decode.native import DecodedBatch
from portwatch.errors import (
    CaptureError,
    CaptureFormatError,
    CaptureTruncatedError,
    OutputError,
    UsageError,
)
from portwatch.ports import Transport
from portwatch.porttable.table import PortTable

# A single capture read once, without --detect, --interval, --annotate, --jobs or
# --resume, needs none of detect, live, merge or _atomic (tempfile, random):
# they are imported where used, which keeps ``portwatch analyze`` start-up short
# (tests/cli/test_startup.py checks that a plain run loads none of them).
if TYPE_CHECKING:  # dask is optional: only its progress record's type is needed here
    from portwatch.analysis.detect import FirstPackets, FlowDetection
    from portwatch.analysis.distributed import ClusterProgress
    from portwatch.analysis.live import LiveSnapshot
    from portwatch.analysis.merge import CapturePartial

    Outcome = CapturePartial | CaptureError

__all__ = [
    "AnnotateRequest",
    "CaptureInput",
    "DetectRequest",
    "IntervalRequest",
    "ProgressCallback",
    "RunResult",
    "analyze_capture",
    "analyze_paths",
    "check_capture_magic",
    "check_output_path",
    "expand_inputs",
    "is_url",
    "output_file",
    "refuse_overwriting_inputs",
    "spooled_inputs",
    "write_output",
]

#: ``progress(capture, bytes_done, bytes_total)``, called after every batch of a
#: regular, uncompressed file analysed in this process.
ProgressCallback = Callable[[str, int, int], None]

SPOOL_CHUNK = 1 << 20
#: ``portwatch.analysis.detect.DEFAULT_PACKETS``, repeated so that the dataclass
#: default below does not import nDPI's module (a test checks they agree).
_DETECT_PACKETS = 20
_SPOOL_PREFIX = "portwatch-spool-"


@dataclass(frozen=True, slots=True)
class AnnotateRequest:
    """Write a pcapng copy of the (single) capture with a comment on every packet."""

    output: str
    only_flagged: bool = False


@dataclass(frozen=True, slots=True)
class IntervalRequest:
    """Call ``emit`` with a live summary every ``seconds`` while captures are read.

    Rates are over the last ``window_s`` seconds (default: the interval). The
    summary comes from a timer thread, so a stream that stalls still gets its
    summaries; ``emit`` runs on that thread. An ``OSError`` from ``emit`` (a
    closed standard error) stops the summaries, not the analysis.
    """

    seconds: float
    emit: Callable[[LiveSnapshot], None]
    window_s: float | None = None
    clock: Callable[[], float] = time.monotonic


class _Ticker:
    """Feeds a ``LiveSummary`` from the reading thread; emits it from its own thread."""

    def __init__(self, table: PortTable, request: IntervalRequest) -> None:
        from portwatch.analysis.live import LiveSummary  # only --interval pays

        self._request = request
        self._live = LiveSummary(table, window_s=request.window_s or request.seconds,
                                 start=request.clock())
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="portwatch-interval",
                                        daemon=True)

    def feed(self, decoded: DecodedBatch, timestamps_ns: npt.NDArray[np.int64]) -> None:
        with self._lock:
            self._live.feed_decoded(decoded, timestamps_ns, self._request.clock())

    def _run(self) -> None:
        while not self._stop.wait(self._request.seconds):
            with self._lock:
                snap = self._live.snapshot(self._request.clock())
            try:
                self._request.emit(snap)
            except OSError:
                return

    def __enter__(self) -> _Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True, slots=True)
class DetectRequest:
    """Ask nDPI what each flow's payload is (``--detect``), from its first ``packets``.

    ``directory``: where the first packets of each flow are kept while the
    capture is read (a private temporary directory under it; default $TMPDIR).
    """

    packets: int = _DETECT_PACKETS
    directory: str | None = None


@dataclass(frozen=True, slots=True)
class CaptureInput:
    """``name`` is what the user gave (and reports show); ``path`` is what is read.

    ``failure`` is set when the input could not even be spooled (not a capture).
    """

    name: str
    path: str
    failure: CaptureError | None = None

    @property
    def spooled(self) -> bool:
        return self.path != self.name


@dataclass(slots=True)
class RunResult:
    """The merged report of every readable capture, and why the others were skipped.

    ``report`` is None only when no capture could be read; its warnings then
    hold nothing and ``failures`` says why.
    """

    report: Report | None
    failures: list[CaptureError] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return self.report is None or self.report.partial


# -- outputs ----------------------------------------------------------------


def check_output_path(path: str) -> None:
    """Fail before a long run, not after it: a directory or an unwritable place."""
    if os.path.isdir(path):
        raise OutputError("is a directory; expected a file name", path=path)
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):  # atomic_output creates missing directories
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write: {parent!r} is not a writable directory", path=path)


@contextlib.contextmanager
def output_file(path: str) -> Iterator[BinaryIO]:
    """``atomic_output`` whose OS errors (a directory, a full disk) are an ``OutputError``."""
    check_output_path(path)
    from portwatch._atomic import atomic_output  # tempfile and shutil: only a file output

    try:
        with atomic_output(path) as out:
            yield out
    except OSError as exc:
        raise OutputError(f"cannot write: {exc.strerror or exc}", path=path) from exc


def write_output(path: str, data: bytes) -> None:
    with output_file(path) as out:
        out.write(data)


def refuse_overwriting_inputs(inputs: Sequence[str], outputs: Sequence[str]) -> None:
    """An output that is one of the inputs (same inode, by any name) is refused."""
    seen: dict[tuple[int, int], str] = {}
    for name in inputs:
        if name == "-":
            continue
        with contextlib.suppress(OSError):
            st = os.stat(name)
            seen[(st.st_dev, st.st_ino)] = name
    for out in outputs:
        try:
            st = os.stat(out)
        except OSError:
            continue
        same = seen.get((st.st_dev, st.st_ino))
        if same is not None:
            raise OutputError(f"refusing to overwrite the input capture {same!r}", path=out)


# -- spooling -----------------------------------------------------------------


def check_capture_magic(head: bytes, name: str) -> None:
    """Raise ``CaptureFormatError`` unless ``head`` starts a capture (maybe compressed)."""
    if looks_like_capture(head):
        return
    if len(head) < 4:
        what = "empty" if not head else f"only {len(head)} bytes long"
        raise CaptureFormatError(f"not a capture: the input is {what}", path=name, offset=0)
    raise CaptureFormatError(
        f"not a capture: first bytes {head[:4].hex()!r} are not pcap, pcapng or gzip "
        "(nor zstd or lz4)",
        path=name, offset=0)


def _is_regular(path: str) -> bool:
    if path == "-":
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True  # not spooled: reading it reports the error with its name


def _exit_by_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _unwind_on_signals() -> Iterator[None]:
    """While a spool exists, SIGTERM and SIGHUP unwind the stack (running ``finally``).

    Only default dispositions are replaced: an application that installed its
    own handler (or ignores the signal) keeps it. SIGINT already raises
    ``KeyboardInterrupt`` unless it is ignored. Handlers can only be set from
    the main thread; elsewhere the caller owns signal handling.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    replaced = []
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _exit_by_signal)
            replaced.append(sig)
    try:
        yield
    finally:
        for sig in replaced:
            signal.signal(sig, signal.SIG_DFL)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Defer SIGTERM/SIGINT/SIGHUP so a cleanup is not cut short; they arrive after."""
    held = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _read_head(src: BinaryIO, count: int) -> bytes:
    head = b""
    while len(head) < count:
        chunk = src.read(count - len(head))
        if not chunk:
            break
        head += chunk
    return head


def _spool_one(name: str, directory: str, index: int, stdin: BinaryIO | None) -> CaptureInput:
    """Copy a non-regular input into ``directory``, checking its magic first."""
    try:
        src: BinaryIO = (stdin or sys.stdin.buffer) if name == "-" else open(name, "rb")  # noqa: SIM115
    except OSError as exc:
        raise CaptureFormatError(f"cannot read: {exc.strerror or exc}", path=name) from exc
    target = os.path.join(directory, f"{index}.cap")
    try:
        head = _read_head(src, 4)
        check_capture_magic(head, name)
        with open(target, "xb") as out:
            chunk, offset = head, 0
            while chunk:
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise OutputError(f"cannot spool {name!r} here: {exc.strerror or exc}",
                                      path=directory, offset=offset) from exc
                offset += len(chunk)
                try:
                    chunk = src.read(SPOOL_CHUNK)
                except OSError as exc:
                    raise CaptureFormatError(f"cannot read: {exc.strerror or exc}",
                                             path=name, offset=offset) from exc
    finally:
        if name != "-":
            src.close()
    return CaptureInput(name, target)


@contextlib.contextmanager
def spooled_inputs(
    names: Sequence[str],
    *,
    needed: bool = True,
    directory: str | None = None,
    stdin: BinaryIO | None = None,
) -> Iterator[list[CaptureInput]]:
    """The inputs, each non-regular one copied to a private temp dir when ``needed``.

    The directory (under ``directory`` or ``$TMPDIR``) is removed when the
    block exits in any way, including SIGTERM and SIGINT. An input that is no
    capture comes back with its ``failure`` set, having been read no further
    than its first bytes.
    """
    if not needed or all(_is_regular(n) for n in names):
        yield [CaptureInput(n, n) for n in names]
        return
    import shutil
    import tempfile

    with _unwind_on_signals():
        spool_dir: str | None = None
        try:
            spool_dir = tempfile.mkdtemp(prefix=_SPOOL_PREFIX, dir=directory)
            inputs: list[CaptureInput] = []
            for i, name in enumerate(names):
                if _is_regular(name):
                    inputs.append(CaptureInput(name, name))
                    continue
                try:
                    inputs.append(_spool_one(name, spool_dir, i, stdin))
                except CaptureError as exc:
                    inputs.append(CaptureInput(name, name, exc))
            yield inputs
        finally:
            if spool_dir is not None:
                with _signals_held():
                    shutil.rmtree(spool_dir, ignore_errors=True)


# -- one capture --------------------------------------------------------------


def _named(exc: CaptureError, inp: CaptureInput) -> CaptureError:
    """Errors name what the user gave, not the spool file."""
    if inp.spooled and exc.path == inp.path:
        exc.path = inp.name
    return exc


def is_url(name: str) -> bool:
    """``scheme://...``: read through fsspec (``file://`` is mapped to the local path)."""
    scheme, sep, _ = name.partition("://")
    return bool(sep) and scheme.replace("+", "").isalnum()


def _local(name: str) -> str:
    return name[len("file://"):] if name.startswith("file://") else name


def _open_url(name: str) -> CaptureReader:
    """A capture by fsspec URL, streamed (s3://, gs://... need their fsspec backends)."""
    try:
        import fsspec
    except ImportError as exc:
        raise CaptureFormatError("reading URLs needs fsspec: pip install portwatch[dask]",
                                 path=name) from exc
    try:
        fileobj = fsspec.open(name, "rb").open()
    except ImportError as exc:  # the scheme's backend (s3fs, gcsfs) is not installed
        raise CaptureFormatError(f"cannot read: {exc}", path=name) from exc
    except (OSError, ValueError) as exc:
        raise CaptureFormatError(f"cannot read: {exc}", path=name) from exc
    try:
        reader = open_capture(fileobj, name)
    except BaseException:
        fileobj.close()
        raise
    reader._on_close = fileobj.close
    return reader


def _open(inp: CaptureInput, stdin: BinaryIO | None) -> CaptureReader:
    try:
        if inp.path == "-":
            return open_capture(stdin or sys.stdin.buffer, "-")
        if is_url(inp.path) and not inp.path.startswith("file://"):
            return _open_url(inp.path)
        return read_capture_path(_local(inp.path))
    except OSError as exc:
        raise CaptureFormatError(f"cannot read: {exc.strerror or exc}", path=inp.name) from exc
    except CaptureError as exc:
        raise _named(exc, inp) from None


def _batches(reader: CaptureReader, inp: CaptureInput,
             progress: ProgressCallback | None) -> Iterator[PacketBatch]:
    total = 0
    if progress is not None and not reader.compressed and _is_regular(inp.path):
        total = os.path.getsize(inp.path)
    if not total or progress is None:
        yield from reader
        return
    for batch in reader:
        if len(batch):
            progress(inp.name, int(batch.file_offsets[-1]), total)
        yield batch
    progress(inp.name, total, total)


@dataclass(frozen=True, slots=True)
class _Bounds:
    """How each capture's analyzer is bounded, and where records go."""

    limits: FlowLimits | None = None
    records: RecordSink | None = None

    def analyzer(self, table: PortTable, name: str) -> Analyzer:
        return Analyzer(table, capture=name, limits=self.limits, records=self.records)


def _analyze_native(table: PortTable, inp: CaptureInput, progress: ProgressCallback | None,
                    stdin: BinaryIO | None, bounds: _Bounds, *,
                    ticker: _Ticker | None = None,
                    keeper: FirstPackets | None = None) -> Analyzer:
    analyzer = bounds.analyzer(table, inp.name)
    reader = _open(inp, stdin)
    try:
        for batch in _batches(reader, inp, progress):
            decoded, flows = analyzer.feed(batch)
            if ticker is not None:
                ticker.feed(decoded, batch.timestamps_ns)
            if keeper is not None:
                keeper.add(batch, decoded, flows, analyzer.flows)
    except CaptureTruncatedError as exc:
        analyzer.note_damage(str(_named(exc, inp)))
    finally:
        reader.close()
    return analyzer


def _analyze_engine(table: PortTable, inp: CaptureInput, engine: str,
                    bounds: _Bounds, *, ticker: _Ticker | None = None) -> Analyzer:
    analyzer = bounds.analyzer(table, inp.name)
    iter_decoded = decoder_for(engine)
    try:
        if is_url(inp.path) and not inp.path.startswith("file://"):
            raise CaptureFormatError(f"the {engine} engine reads local files only", path=inp.name)
        for decoded, ts in iter_decoded(_local(inp.path), 4096):
            analyzer.feed_decoded(decoded, ts)
            if ticker is not None:
                ticker.feed(decoded, ts)
    except CaptureTruncatedError as exc:
        analyzer.note_damage(str(_named(exc, inp)))
    except CaptureError as exc:
        raise _named(exc, inp) from None
    return analyzer


def _analyze_one(table: PortTable, inp: CaptureInput, engine: str,
                 progress: ProgressCallback | None, stdin: BinaryIO | None, *,
                 bounds: _Bounds = _Bounds(), ticker: _Ticker | None = None) -> Analyzer:
    if engine == "native":
        return _analyze_native(table, inp, progress, stdin, bounds, ticker=ticker)
    return _analyze_engine(table, inp, engine, bounds, ticker=ticker)


def analyze_capture(table: PortTable, name: str, engine: str = "native") -> Analyzer:
    """One capture by path or URL, counted (what a pool or cluster worker runs)."""
    return _analyze_one(table, CaptureInput(name, name), engine, None, None)


def expand_inputs(names: Sequence[str]) -> list[str]:
    """Globs expanded (sorted: rotated files sort in time order), URLs' globs by fsspec.

    A name that exists, ``-``, or a pattern that matches nothing is kept as
    given (reading it then reports the error with its name).
    """
    out: list[str] = []
    for name in names:
        if name == "-" or not any(c in name for c in "*?["):
            out.append(name)
            continue
        if is_url(name):
            try:
                import fsspec
            except ImportError as exc:
                raise UsageError(f"{name}: URL globs need fsspec: pip install "
                                 "portwatch[dask]") from exc
            fs, _, paths = fsspec.get_fs_token_paths(name)
            protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
            found = sorted(fs.unstrip_protocol(p) if protocol != "file" else f"file://{p}"
                           for p in paths)
        else:
            import glob  # only a pattern pays

            found = sorted(glob.glob(name)) if not os.path.exists(name) else [name]
        out.extend(found or [name])
    return out


@dataclass(slots=True)
class _Detected:
    """nDPI's answers for the live flow rows of an analyzer."""

    rows: npt.NDArray[np.int64]
    found: dict[int, FlowDetection]

    def report(self, analyzer: Analyzer) -> Report:
        from portwatch.analysis.detect import apply_detections

        report = analyzer.report()
        apply_detections(report, self.found, self.rows, analyzer.table)
        return report


def _analyze_detected(table: PortTable, inp: CaptureInput, progress: ProgressCallback | None,
                      stdin: BinaryIO | None, detect: DetectRequest) -> tuple[Analyzer, _Detected]:
    """The native analysis, its flows' first packets kept aside, then nDPI on those.

    nDPI reads the kept packets in a thread while the capture is analysed
    (``LiveDetection``); SIGTERM and SIGHUP unwind the stack like a spool's,
    so the private FIFO directory goes too. A link type nDPI cannot read leaves its flows
    ``unconfirmed`` and says so in the report's warnings.
    """
    from portwatch.analysis.detect import live_detection, match

    with _unwind_on_signals(), live_detection(detect.directory, detect.packets) as keeper:
        analyzer = _analyze_native(table, inp, progress, stdin, _Bounds(), keeper=keeper)
        ndpi = keeper.finish()
        analyzer.warnings.extend(f"{inp.name}: nDPI could not read the first packets of some "
                                 f"flows ({error}); they stay unconfirmed"
                                 for error in keeper.errors)
    # in the order the report lists flows (by start), which apply_detections relies on
    live = by_start(analyzer.flows, np.flatnonzero(analyzer.flows.alive[: analyzer.flows.size]))
    return analyzer, _Detected(live, match(ndpi, analyzer.flows, live))


def _annotate(analyzer: Analyzer, inp: CaptureInput, request: AnnotateRequest,
              stdout: BinaryIO | None, detected: _Detected | None = None) -> None:
    """The second pass over the (spooled) capture, written atomically (or to standard output).

    A pcapng source is copied block by block (nothing it holds is lost); a
    pcap source becomes a fresh pcapng.
    """
    from portwatch.analysis.detect import annotation_comments

    reader = _open(inp, None)
    try:
        overrides = (annotation_comments(analyzer, detected.found, detected.rows)
                     if detected is not None else None)
        if request.output == "-":
            out = stdout or sys.stdout.buffer
            warnings = _write_copy(analyzer, inp, reader, request, out, overrides=overrides)
            try:
                out.flush()
            except OSError as exc:
                raise OutputError(f"cannot write the annotated copy: {exc.strerror or exc}",
                                  path="standard output") from exc
        else:
            with output_file(request.output) as out:
                warnings = _write_copy(analyzer, inp, reader, request, out, overrides=overrides)
        # what the copy had to shorten (an option or a record past what readers accept)
        analyzer.warnings.extend(f"{request.output}: {w}" for w in warnings)
    finally:
        reader.close()


def _write_copy(analyzer: Analyzer, inp: CaptureInput, reader: CaptureReader,
                request: AnnotateRequest, out: BinaryIO, *,
                overrides: Mapping[int, tuple[str, bool]] | None = None) -> list[str]:
    from portwatch.analysis import annotated_copy  # only --annotate pays
    from portwatch.capture.files import writer as writers

    if reader.format == "pcapng":
        from portwatch.capture.files.pcapng import iter_raw_blocks
        from portwatch.capture.files.reader import decompressed_stream

        copier = writers.PcapngCopyWriter(out)
        with decompressed_stream(inp.path) as read, \
                contextlib.suppress(CaptureTruncatedError):  # reported by the first pass
            annotated_copy.copy_annotated(analyzer, reader, iter_raw_blocks(read), copier,
                                          only_flagged=request.only_flagged,
                                          flow_overrides=overrides)
        return copier.warnings
    writer = writers.PcapngWriter(out)
    with contextlib.suppress(CaptureTruncatedError):  # reported by the first pass
        annotated_copy.write_annotated(analyzer, reader, writer,
                                       only_flagged=request.only_flagged, interfaces_of=reader,
                                       flow_overrides=overrides)
    return writer.warnings


# -- worker processes ---------------------------------------------------------

@dataclass(slots=True)
class _WorkerState:
    """What a worker process keeps between captures (set in the worker only)."""

    table: PortTable | None = None


_worker = _WorkerState()


def _init_worker(table_bytes: bytes) -> None:
    """Each worker process rebuilds the parent's table once (a few milliseconds)."""
    _worker.table = PortTable.from_bytes(table_bytes)


def _work(inp: CaptureInput, engine: str) -> CapturePartial | CaptureError:
    """A capture's partial state, or the typed error that made it unreadable (picklable)."""
    from portwatch.analysis.merge import partial_of

    table = _worker.table
    assert table is not None, "worker started without _init_worker"
    try:
        return partial_of(_analyze_one(table, inp, engine, None, None))
    except CaptureError as exc:
        return exc



def _in_pool(table: PortTable, inputs: Sequence[CaptureInput], jobs: int,
             engine: str) -> list[Outcome]:
    from concurrent.futures import ProcessPoolExecutor  # only --jobs pays for it

    todo = [inp for inp in inputs if inp.failure is None]
    if not todo:
        return [inp.failure for inp in inputs if inp.failure is not None]
    with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), initializer=_init_worker,
                             initargs=(table.to_bytes(),)) as pool:
        done = iter(pool.map(_work, todo, [engine] * len(todo)))
        return [inp.failure if inp.failure is not None else next(done) for inp in inputs]


# -- the run ------------------------------------------------------------------


def _check(names: Sequence[str], jobs: int, engine: str,
           annotate: AnnotateRequest | None, interval: IntervalRequest | None = None, *,
           detect: DetectRequest | None = None) -> None:
    if not names:
        raise UsageError("no capture to analyse")
    if jobs < 1:
        raise UsageError(f"--jobs takes a positive number, not {jobs}")
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if list(names).count("-") > 1:
        raise UsageError("standard input ('-') can be read only once")
    if interval is not None:
        if not interval.seconds > 0:
            raise UsageError(f"--interval takes a positive number of seconds, "
                             f"not {interval.seconds:g}")
        if jobs > 1 and len(names) > 1:
            raise UsageError("--interval summarises one process's reading: not with --jobs")
    if annotate is not None:
        if len(names) != 1:
            raise UsageError("--annotate takes exactly one capture")
        if engine != "native":
            raise UsageError("--annotate works with the native engine only")
    if detect is not None:
        if engine != "native":
            raise UsageError("--detect works with the native engine only")
        from portwatch.analysis.detect import require_ndpi

        require_ndpi()


def _merge(outcomes: Sequence[Outcome], table: PortTable,
           idle_s: Mapping[Transport, float] | None) -> RunResult:
    """Partial states merged into one report; failures become warnings (partial report)."""
    from portwatch.analysis.merge import CapturePartial, merge_partials

    partials = [o for o in outcomes if isinstance(o, CapturePartial)]
    failures = [o for o in outcomes if isinstance(o, CaptureError)]
    if not partials:
        return RunResult(None, failures)
    merged = merge_partials(partials, idle_s=idle_s).report(table)
    return _with_failures(merged, failures)


def _with_failures(report: Report, failures: list[CaptureError]) -> RunResult:
    for failure in failures:
        report.warnings.append(f"skipped: {failure}")
        report.partial = True
    return RunResult(report, failures)


def _sizes(names: Sequence[str]) -> list[int]:
    sizes = []
    for name in names:
        try:
            sizes.append(os.path.getsize(_local(name)) if not is_url(name) or
                         name.startswith("file://") else 0)
        except OSError:
            sizes.append(0)
    return sizes


def _resumed(names: Sequence[str], resume_dir: str | None) -> dict[int, CapturePartial]:
    """Captures of an earlier run of ``resume_dir`` already read, by input position."""
    if resume_dir is None:
        return {}
    from portwatch.analysis.merge import load_state

    found = {}
    for i, name in enumerate(names):
        saved = load_state(resume_dir, name, _fingerprint(name))
        if saved is not None:
            found[i] = saved
    return found


def _fingerprint(name: str) -> str:
    """What says a capture is unchanged since its state was saved (size and mtime)."""
    if is_url(name) and not name.startswith("file://"):
        return name
    try:
        st = os.stat(_local(name))
    except OSError:
        return name
    return f"{st.st_size}:{st.st_mtime_ns}"


def _saver(names: Sequence[str], resume_dir: str | None) -> Callable[[int, Outcome], None]:
    def save(i: int, outcome: Outcome) -> None:
        if resume_dir is None or isinstance(outcome, CaptureError):
            return
        from portwatch.analysis.merge import save_state

        if not outcome.partial:  # a damaged capture is read again next time
            save_state(resume_dir, names[i], _fingerprint(names[i]), outcome)
    return save


def analyze_paths(
    names: Sequence[str],
    table: PortTable,
    *,
    jobs: int = 1,
    engine: str = "native",
    progress: ProgressCallback | None = None,
    annotate: AnnotateRequest | None = None,
    spool_dir: str | None = None,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    interval: IntervalRequest | None = None,
    limits: FlowLimits | None = None,
    records: RecordSink | None = None,
    detect: DetectRequest | None = None,
    scheduler: str | None = None,
    cluster_progress: Callable[[ClusterProgress], None] | None = None,
    resume_dir: str | None = None,
    idle_s: Mapping[Transport, float] | None = None,
) -> RunResult:
    """Analyse captures by name (``-`` is ``stdin``, default standard input).

    With ``jobs > 1`` and several captures, each is analysed in a worker
    process; reports merge as if one process had read them all. A capture
    damaged after good data counts what came before and marks the report
    partial; one that is no capture at all is a failure, never an exception,
    unless it is the only one (the caller decides: ``RunResult.report`` is
    None). ``annotate`` writes the annotated copy through
    :func:`~portwatch.analysis.annotated_copy.write_annotated`; an ``annotate``
    output of ``-`` goes to ``stdout`` (default standard output) instead.
    ``interval`` emits a live summary periodically while the captures are
    read (a stream read for hours reports as it goes). ``limits`` bounds each
    capture's flow table; ``records`` receives every flow's record and the
    report then lists only the first flagged flows (see the module docstring).
    ``detect`` adds nDPI's verdict to every flow (``portwatch.analysis.detect``);
    it reads the first packets of each flow as the capture streams by, so it
    needs no second pass and no spool of its own.

    Several captures (``jobs``, ``scheduler`` or one after another) merge
    exactly: each gives its partial state, and the states merge as if one
    process had read them all in time order (``portwatch.analysis.merge``;
    ``idle_s`` splits a 5-tuple silent longer than its transport's timeout).
    With ``scheduler`` (``tcp://HOST:PORT`` or ``local:N``) the captures are
    read on a Dask cluster. ``resume_dir`` saves each capture's state there as
    it completes and skips captures an earlier run saved (same name, size,
    mtime). ``detect`` reads each capture on its own (nDPI answers per
    capture) and their reports add up.
    """
    _check(names, jobs, engine, annotate, interval, detect=detect)
    if scheduler is not None:
        if annotate is not None or detect is not None or interval is not None:
            raise UsageError("--scheduler reads captures on the cluster: it takes no "
                             "--annotate, --detect or --interval")
        if jobs > 1:
            raise UsageError("--jobs and --scheduler exclude each other: give local:N "
                             "to run N Dask workers on this machine")
        result = _on_cluster(names, table, scheduler, engine=engine,
                             progress=cluster_progress, resume_dir=resume_dir, idle_s=idle_s)
        return _send_records(result, records)
    if annotate is not None and annotate.output != "-":
        refuse_overwriting_inputs(names, [annotate.output])
        check_output_path(annotate.output)
    parallel = jobs > 1 and len(names) > 1 and detect is None
    needed = annotate is not None or parallel or engine != "native"
    with spooled_inputs(names, needed=needed, directory=spool_dir, stdin=stdin) as inputs:
        if parallel:
            return _send_records(_several(table, inputs, jobs=jobs, engine=engine,
                                          resume_dir=resume_dir, idle_s=idle_s), records)
        if len(inputs) > 1 and detect is None:
            ticker = _Ticker(table, interval) if interval is not None else None
            with ticker if ticker is not None else contextlib.nullcontext():
                result = _several(table, inputs, jobs=1, engine=engine, progress=progress,
                                  stdin=stdin, ticker=ticker, resume_dir=resume_dir,
                                  idle_s=idle_s)
            return _send_records(result, records)
        bounds = _Bounds(None if annotate is not None or detect is not None else limits,
                         records)
        ticker = _Ticker(table, interval) if interval is not None else None
        with ticker if ticker is not None else contextlib.nullcontext():
            outcomes = [_one_outcome(table, inp, engine, progress=progress, stdin=stdin,
                                     ticker=ticker, annotate=annotate, stdout=stdout,
                                     bounds=bounds, detect=detect)
                        for inp in inputs]
        return _merge_reports(outcomes)


def _several(table: PortTable, inputs: Sequence[CaptureInput], *, jobs: int, engine: str,
             resume_dir: str | None, idle_s: Mapping[Transport, float] | None,
             progress: ProgressCallback | None = None, stdin: BinaryIO | None = None,
             ticker: _Ticker | None = None) -> RunResult:
    """Several captures, one after another or in a pool, their partial states merged."""
    from portwatch.analysis.merge import partial_of

    names = [inp.name for inp in inputs]
    resumed = _resumed(names, resume_dir)
    save = _saver(names, resume_dir)
    slots: dict[int, Outcome] = dict(resumed)
    todo = [(i, inp) for i, inp in enumerate(inputs) if i not in resumed]
    if jobs > 1:
        for (i, _), outcome in zip(todo, _in_pool(table, [t for _, t in todo], jobs, engine),
                                   strict=True):
            save(i, outcome)
            slots[i] = outcome
        return _merge([slots[i] for i in range(len(inputs))], table, idle_s)
    for i, inp in todo:
        if inp.failure is not None:
            slots[i] = inp.failure
            continue
        try:
            analyzer = _analyze_one(table, inp, engine, progress, stdin, ticker=ticker)
        except CaptureError as exc:
            slots[i] = exc
            continue
        outcome = partial_of(analyzer)
        save(i, outcome)
        slots[i] = outcome
    return _merge([slots[i] for i in range(len(inputs))], table, idle_s)


def _send_records(result: RunResult, records: RecordSink | None) -> RunResult:
    """A merged run's flows to the record sink (they exist only once all are merged)."""
    if records is not None and result.report is not None:
        records(result.report.flows)
    return result


def _merge_reports(outcomes: Sequence[Report | CaptureError]) -> RunResult:
    """Reports of captures read on their own (one capture, or ``--detect``) added up."""
    reports = [o for o in outcomes if isinstance(o, Report)]
    failures = [o for o in outcomes if isinstance(o, CaptureError)]
    if not reports:
        return RunResult(None, failures)
    merged = merge_reports(reports) if len(reports) > 1 else reports[0]
    return _with_failures(merged, failures)


def _on_cluster(names: Sequence[str], table: PortTable, scheduler: str, *, engine: str,
                progress: Callable[[ClusterProgress], None] | None, resume_dir: str | None,
                idle_s: Mapping[Transport, float] | None) -> RunResult:
    """The run on Dask: only files and URLs the workers can read (no standard input)."""
    from portwatch.analysis.distributed import analyze_on_cluster, parse_scheduler

    where = parse_scheduler(scheduler)
    if "-" in names:
        raise UsageError("standard input ('-') cannot be sent to a Dask cluster")
    resumed = _resumed(names, resume_dir)
    todo = [i for i in range(len(names)) if i not in resumed]
    save = _saver(names, resume_dir)
    slots: dict[int, Outcome] = dict(resumed)
    if todo:
        sizes = _sizes(names)
        got = analyze_on_cluster(
            [names[i] for i in todo], table, where, engine=engine,
            sizes=[sizes[i] for i in todo], progress=progress,
            on_result=lambda j, outcome: save(todo[j], outcome))
        slots.update(zip(todo, got, strict=True))
    return _merge([slots[i] for i in range(len(names))], table, idle_s)


def _one_outcome(table: PortTable, inp: CaptureInput, engine: str, *,
                 progress: ProgressCallback | None, stdin: BinaryIO | None,
                 ticker: _Ticker | None, annotate: AnnotateRequest | None,
                 stdout: BinaryIO | None, bounds: _Bounds,
                 detect: DetectRequest | None = None) -> Report | CaptureError:
    if inp.failure is not None:
        return inp.failure
    detected: _Detected | None = None
    try:
        if detect is not None:
            analyzer, detected = _analyze_detected(table, inp, progress, stdin, detect)
        else:
            analyzer = _analyze_one(table, inp, engine, progress, stdin, bounds=bounds,
                                    ticker=ticker)
    except CaptureError as exc:
        return exc
    if annotate is not None:
        _annotate(analyzer, inp, annotate, stdout, detected)
    if detected is not None:
        report = detected.report(analyzer)
        if bounds.records is not None:  # nDPI answers at the end: the records go out then
            bounds.records(report.flows)
        return report
    if bounds.records is not None:
        analyzer.finish()
    return analyzer.report()
