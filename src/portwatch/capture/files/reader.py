"""Open any capture portwatch reads and iterate it as bounded :class:`PacketBatch`es.

``open_capture`` sniffs the first bytes: classic pcap (either byte order,
micro- or nanosecond), pcapng, or either inside gzip, zstd or lz4 (told by
magic bytes, never by name; decompressed as a stream, never whole; see
``_compression``). A buffer (``bytes``, ``mmap``) is framed in place; a
file object is read in chunks into a rolling buffer, so ``tcpdump -w - |
portwatch analyze -`` works and memory stays bounded by the batch size.

A batch is bounded twice: at most ``batch_size`` records and at most
``batch_bytes`` bytes of the file (64 MiB by default), except that a batch
always holds at least one record. Without the byte bound, 65,536 records of
64 KiB would be copied at once (4 GiB per batch).

Damage is reported after the good data: the iterator yields every packet
before the first bad record, then raises :class:`CaptureTruncatedError` with
the byte offset of that record. Input that is no capture at all raises
:class:`CaptureFormatError` at offset 0 when opened.

``read_capture_path`` is the edge that touches the file system: it mmaps
regular files, streams anything else, and reads standard input for ``-``.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import sys
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import BinaryIO, Protocol

from portwatch._engines import ENGINES, use_compiled
from portwatch.capture.batch import PacketBatch
from portwatch.capture.files._compression import MAGICS as COMPRESSED_MAGICS
from portwatch.capture.files._compression import open_decompressor
from portwatch.capture.files._framing import DEFAULT_BATCH_BYTES, Framed, Interface, Stop
from portwatch.capture.files.pcap import FILE_HEADER_LEN, MAGICS, PcapFramer, parse_header
from portwatch.capture.files.pcapng import MAGIC as PCAPNG_MAGIC
from portwatch.capture.files.pcapng import PcapngFramer
from portwatch.errors import CaptureFormatError, CaptureTruncatedError

__all__ = [
    "COMPILED",
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_BATCH_SIZE",
    "FRAMINGS",
    "CaptureReader",
    "decompressed_stream",
    "looks_like_capture",
    "open_capture",
    "read_capture_path",
]

DEFAULT_BATCH_SIZE = 65536
#: Bytes asked of a stream per read.
CHUNK = 1 << 20
#: gzip's magic (``_compression.MAGICS`` lists every compressed format read).
GZIP_MAGIC = b"\x1f\x8b"

Buffer = bytes | bytearray | memoryview | mmap.mmap

try:
    from portwatch.capture.files._compiled import CompiledPcapFramer, CompiledPcapngFramer
except ImportError as _exc:  # the extension was not built (no compiler): numpy frames
    COMPILED = False
    _WHY_NOT = f"the compiled framing is not built ({_exc})"
else:
    COMPILED = True
    _WHY_NOT = ""

#: ``open_capture(framing=...)``: ``"auto"`` is compiled when built, else numpy.
FRAMINGS = ENGINES
_said: set[str] = set()  # what PORTWATCH_VERBOSE=1 has said already


def _choose(framing: str | None) -> bool:
    """Whether to frame with the compiled walk; says which once under PORTWATCH_VERBOSE=1.

    ``framing=None`` reads ``PORTWATCH_FRAMING`` (``numpy`` forces the
    reference framers, for comparisons and benchmarks).
    """
    return use_compiled(framing, variable="PORTWATCH_FRAMING", noun="framing",
                        stage="capture framing", label="compiled (_core)", built=COMPILED,
                        why_not=_WHY_NOT, said=_said)


class _Framer(Protocol):
    format: str
    interfaces: list[Interface]

    def frame(
        self, buf: bytes | bytearray | memoryview, pos: int, end: int, limit: int, max_bytes: int
    ) -> Framed: ...

    def build(
        self, buf: bytes | bytearray | memoryview, start: int, framed: Framed, base: int
    ) -> PacketBatch: ...


class _Feed:
    """Unread bytes are ``buf[pos:end]``; ``buf[0]`` is at stream offset ``base``.

    The plain feed is one whole buffer (bytes or mmap) and never grows.
    """

    def __init__(self, buf: Buffer) -> None:
        self.buf: bytes | bytearray | memoryview = buf  # type: ignore[assignment]
        self.pos = 0
        self.end = len(buf)
        self.base = 0
        self.error: str | None = None
        self._released = 0

    def fill(self) -> bool:
        """Make more bytes available; False at the end of input."""
        return False

    def release(self) -> None:
        """Let the kernel drop mmap pages already framed, so RSS stays at a batch or so."""
        buf = self.buf
        if isinstance(buf, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            done = self.pos - self.pos % mmap.PAGESIZE
            if done - self._released >= 1 << 24:
                buf.madvise(mmap.MADV_DONTNEED, self._released, done - self._released)
                self._released = done


class _StreamFeed(_Feed):
    """A rolling buffer over ``read(n)``: consumed bytes are dropped before each read."""

    def __init__(self, read: Callable[[int], bytes], error: Callable[[], str | None]) -> None:
        super().__init__(b"")
        self._buf = bytearray()
        self.buf = self._buf
        self._read = read
        self._error = error

    def fill(self) -> bool:
        chunk = self._read(CHUNK)
        if not chunk:
            self.error = self._error()
            return False
        if self.pos:
            del self._buf[: self.pos]
            self.base += self.pos
            self.end -= self.pos
            self.pos = 0
        self._buf += chunk
        self.end = len(self._buf)
        return True


def _no_error() -> str | None:
    return None


class CaptureReader:
    """An opened capture: iterate it once for :class:`PacketBatch`es.

    ``interfaces`` grows while a pcapng file is read (interfaces may be
    declared late, and every section adds its own); batch ``interfaces``
    values index into it.
    """

    def __init__(
        self,
        feed: _Feed,
        framer: _Framer,
        name: str,
        batch_size: int,
        *,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        compressed: bool = False,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, not {batch_size}")
        if batch_bytes < 1:
            raise ValueError(f"batch_bytes must be positive, not {batch_bytes}")
        self.name = name
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.compressed = compressed
        self._feed = feed
        self._framer = framer
        self._on_close = on_close
        self._started = False
        #: ``"compiled"`` or ``"numpy"``: which walk frames this capture.
        self.framing = "numpy"

    @property
    def format(self) -> str:
        """``"pcap"`` or ``"pcapng"`` (of the decompressed data for gzip)."""
        return self._framer.format

    @property
    def interfaces(self) -> list[Interface]:
        return self._framer.interfaces

    @property
    def link_types(self) -> tuple[int, ...]:
        """Distinct link types of the interfaces known so far, in order of appearance."""
        return tuple(dict.fromkeys(i.link_type for i in self._framer.interfaces))

    def __iter__(self) -> Iterator[PacketBatch]:
        if self._started:
            raise RuntimeError(f"{self.name}: a capture can be iterated only once")
        self._started = True
        return self._batches()

    def _damage(self, message: str, offset: int) -> CaptureTruncatedError:
        if self.compressed:
            message += " (offset in the decompressed data)"
        return CaptureTruncatedError(message, path=self.name, offset=offset)

    def _batches(self) -> Iterator[PacketBatch]:
        feed, framer = self._feed, self._framer
        while True:
            start = feed.pos
            framed = framer.frame(feed.buf, start, feed.end, self.batch_size, self.batch_bytes)
            if len(framed.positions):
                batch = framer.build(feed.buf, start, framed, feed.base)
                feed.pos = framed.end
                feed.release()  # the batch owns a copy: drop the mapped pages before it is used
                if len(batch):  # empty when its first record was refused on building
                    yield batch
            feed.pos = framed.end
            feed.release()
            if framed.stop is Stop.LIMIT:
                continue
            if framed.stop is Stop.CORRUPT:
                raise self._damage(framed.message, feed.base + framed.end)
            if feed.fill():
                continue
            at = feed.base + feed.pos
            if framed.stop is Stop.PARTIAL:
                left = feed.end - feed.pos
                why = f"; {feed.error}" if feed.error else ""
                raise self._damage(f"capture ends inside a record ({left} bytes of it){why}", at)
            if feed.error:
                raise self._damage(feed.error, at)
            return

    def close(self) -> None:
        """Release the mmap or file opened by :func:`read_capture_path`."""
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            self._feed = _Feed(b"")
            on_close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _need(feed: _Feed, count: int) -> bool:
    """Fill until ``count`` unread bytes are available; False if input ends first."""
    while feed.end - feed.pos < count:
        if not feed.fill():
            return False
    return True


class _ViewReader:
    """``read(n)`` over an in-memory buffer, for gzip inside bytes or an mmap."""

    def __init__(self, buf: Buffer) -> None:
        self._view = memoryview(buf)
        self._pos = 0

    def read(self, n: int) -> bytes:
        out = bytes(self._view[self._pos : self._pos + n])
        self._pos += len(out)
        return out


def _sniff(
    feed: _Feed, name: str, batch_size: int, batch_bytes: int, *, compressed: bool, compiled: bool
) -> CaptureReader:
    have = _need(feed, 4)
    head = bytes(feed.buf[feed.pos : feed.pos + 4])
    if not have:
        what = "empty" if not head else f"only {len(head)} bytes long"
        if compressed and feed.error:
            what += f" after decompression ({feed.error})"
        raise CaptureFormatError(f"not a capture: the input is {what}", path=name, offset=0)
    framer: _Framer
    if head in MAGICS:
        if not _need(feed, FILE_HEADER_LEN):
            raise CaptureFormatError("pcap file header is cut short", path=name, offset=0)
        header = parse_header(feed.buf[feed.pos : feed.pos + FILE_HEADER_LEN], name)
        framer = CompiledPcapFramer(header) if compiled else PcapFramer(header)
        feed.pos += FILE_HEADER_LEN
    elif head == PCAPNG_MAGIC:
        ng = CompiledPcapngFramer() if compiled else PcapngFramer()
        while (taken := ng.start(feed.buf, feed.pos, feed.end, name)) is None:
            if not feed.fill():
                raise CaptureFormatError("pcapng section header is cut short", path=name, offset=0)
        feed.pos += taken
        framer = ng
    else:
        raise CaptureFormatError(
            f"not a capture: first bytes {head.hex()!r} are not pcap, pcapng or gzip "
            "(nor zstd or lz4)",
            path=name,
            offset=0,
        )
    reader = CaptureReader(
        feed, framer, name, batch_size, batch_bytes=batch_bytes, compressed=compressed
    )
    reader.framing = "compiled" if compiled else "numpy"
    return reader


def open_capture(
    source: BinaryIO | Buffer,
    name: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    framing: str | None = None,
) -> CaptureReader:
    """Sniff ``source`` and return a reader; ``name`` is what errors call it.

    Reads (and for gzip, decompresses) only the file header here; packets are
    read while iterating. Raises :class:`CaptureFormatError` for non-captures.
    ``framing`` picks the walk (:data:`FRAMINGS`); both give the same batches.
    """
    compiled = _choose(framing)
    feed: _Feed
    if isinstance(source, bytes | bytearray | memoryview | mmap.mmap):
        feed = _Feed(source)
        raw: Callable[[int], bytes] = _ViewReader(source).read
    else:
        read = getattr(source, "read1", source.read)
        feed = _StreamFeed(read, _no_error)
        raw = read
    _need(feed, 4)
    inflate = open_decompressor(bytes(feed.buf[feed.pos : feed.pos + 4]), raw, name)
    if inflate is None:
        return _sniff(feed, name, batch_size, batch_bytes, compressed=False, compiled=compiled)
    if isinstance(feed, _StreamFeed):
        # The sniffed bytes were already taken from the stream: hand them back first.
        prefix = bytes(feed.buf[feed.pos : feed.end])
        inflate = open_decompressor(prefix, _Prefixed(prefix, raw).read, name)
        assert inflate is not None
    return _sniff(
        _StreamFeed(inflate.read, inflate.error),
        name,
        batch_size,
        batch_bytes,
        compressed=True,
        compiled=compiled,
    )


def looks_like_capture(head: bytes) -> bool:
    """Whether ``head`` (the first four bytes) starts a capture :func:`open_capture` reads.

    pcap, pcapng, or any compressed format read (gzip, zstd, lz4), by magic bytes.
    """
    return (
        head[:4] in MAGICS
        or head[:4] == PCAPNG_MAGIC
        or any(head.startswith(magic) for magic in COMPRESSED_MAGICS)
    )


class _Prefixed:
    """``read(n)`` that first returns ``prefix``, then reads on from ``read``."""

    def __init__(self, prefix: bytes, read: Callable[[int], bytes]) -> None:
        self._prefix = prefix
        self._read = read

    def read(self, n: int) -> bytes:
        if self._prefix:
            out, self._prefix = self._prefix[:n], self._prefix[n:]
            return out
        return self._read(n)


def read_capture_path(
    path: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    framing: str | None = None,
) -> CaptureReader:
    """Open a capture by path: mmap a regular file, stream anything else; ``-`` is stdin.

    The returned reader owns what it opened: use it as a context manager or
    call ``close()``. An empty regular file is read as empty bytes (mmap
    refuses zero-length maps) and so reports a format error.
    """
    if path == "-":
        return open_capture(
            sys.stdin.buffer, "-", batch_size, batch_bytes=batch_bytes, framing=framing
        )
    fileobj = open(path, "rb")  # noqa: SIM115 - owned by the reader, closed by it
    try:
        info = os.fstat(fileobj.fileno())
        if not stat.S_ISREG(info.st_mode):
            reader = open_capture(
                fileobj, path, batch_size, batch_bytes=batch_bytes, framing=framing
            )
            reader._on_close = fileobj.close
            return reader
        if info.st_size == 0:
            fileobj.close()
            return open_capture(b"", path, batch_size, batch_bytes=batch_bytes, framing=framing)
        mapped = mmap.mmap(fileobj.fileno(), 0, access=mmap.ACCESS_READ)
    except BaseException:
        fileobj.close()
        raise

    def release() -> None:
        # A view of the map may still be alive (held by an exception's traceback
        # or a caller's last batch); the map then closes when it is collected.
        with contextlib.suppress(BufferError):
            mapped.close()
        fileobj.close()

    try:
        reader = open_capture(mapped, path, batch_size, batch_bytes=batch_bytes, framing=framing)
    except BaseException:
        release()
        raise
    reader._on_close = release
    return reader


@contextlib.contextmanager
def decompressed_stream(path: str) -> Iterator[Callable[[int], bytes]]:
    """``read(n)`` over the bytes of a capture file, inflated when it is compressed.

    For walks that need the stored blocks themselves (``pcapng.iter_raw_blocks``),
    beside a :class:`CaptureReader` over the same file. Damage in the gzip
    stream ends it early; the reader reports it.
    """
    with open(path, "rb") as fileobj:
        head = fileobj.read(4)
        read = getattr(fileobj, "read1", fileobj.read)
        stream = _Prefixed(head, read).read
        inflater = open_decompressor(head, stream, path)  # gzip, zstd, lz4 alike
        yield inflater.read if inflater is not None else stream
