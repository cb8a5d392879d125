"""Compressed captures, recognised by their magic bytes: gzip, zstd and lz4 frames.

Each decompressor is a ``read(n)`` over a raw ``read(n)`` that returns at most
``n`` bytes per call, so a small file that inflates enormously cannot
exhaust memory, and several concatenated members/frames read as one stream.
Damage ends the stream; its description is kept for ``error()``.

gzip goes through python-isal's igzip (``pip install isal``; 2-4 times zlib)
when installed, zlib otherwise. zstd needs ``zstandard`` and lz4 needs
``lz4``; without them :func:`open_decompressor` raises a one-line
:class:`CaptureFormatError` naming the package.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from types import ModuleType
from typing import Any, Protocol

from portwatch.errors import CaptureFormatError

__all__ = [
    "CHUNK",
    "MAGICS",
    "Decompressor",
    "gzip_backend",
    "open_decompressor",
]

#: Compressed bytes asked of the raw input per read.
CHUNK = 1 << 20
#: Magic bytes -> format name. Two bytes are enough for gzip; zstd and lz4 frames take four.
MAGICS: dict[bytes, str] = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x04\x22\x4d\x18": "lz4",
}
_PACKAGES = {"zstd": "zstandard", "lz4": "lz4"}

Read = Callable[[int], bytes]


class Decompressor(Protocol):
    format: str

    def read(self, n: int) -> bytes: ...

    def error(self) -> str | None: ...


def _isal() -> ModuleType | None:
    try:
        from isal import isal_zlib
    except ImportError:
        return None
    return isal_zlib


def gzip_backend() -> str:
    """``"isal"`` when python-isal inflates gzip here, else ``"zlib"``."""
    return "isal" if _isal() is not None else "zlib"


class _Members:
    """Concatenated members (gzip) or frames (lz4), one decompressor object each.

    The loop is shared; a format says how to make a decompressor, whether one
    still holds input or output, and how to call it.
    """

    format = ""
    _end = "end marker"
    _damage: tuple[type[Exception], ...] = ()  # what the decompressor raises on bad data

    def __init__(self, raw: Read) -> None:
        self._raw = raw
        self._d = self._new()
        self._error: str | None = None

    def _new(self) -> Any:
        raise NotImplementedError

    def _pending(self, d: Any) -> bytes | None:
        """What to feed a decompressor that needs no new input, or None when it does."""
        raise NotImplementedError

    def _decompress(self, d: Any, data: bytes, n: int) -> bytes:
        raise NotImplementedError

    def error(self) -> str | None:
        return self._error

    def read(self, n: int) -> bytes:
        while self._error is None:
            d = self._d
            pending = None if d.eof else self._pending(d)
            if d.eof:
                data = d.unused_data or self._raw(CHUNK)
                if not data:
                    return b""
                self._d = d = self._new()
            elif pending is not None:
                data = pending
            else:
                data = self._raw(CHUNK)
                if not data:
                    self._error = f"{self.format} stream ends before its {self._end}"
                    return b""
            try:
                out = self._decompress(d, data, n)
            except self._damage as exc:
                self._error = f"{self.format} data is damaged ({exc})"
                return b""
            if out:
                return out
        return b""


class _Inflate(_Members):
    """gzip members through a zlib-like ``decompressobj`` (isal's or zlib's)."""

    format = "gzip"

    def __init__(self, raw: Read) -> None:
        self._module = _isal() or zlib
        self._damage = (zlib.error, self._module.error)
        super().__init__(raw)

    def _new(self) -> zlib._Decompress:
        member: zlib._Decompress = self._module.decompressobj(31)
        return member

    def _pending(self, d: Any) -> bytes | None:
        tail: bytes = d.unconsumed_tail
        return tail or None

    def _decompress(self, d: Any, data: bytes, n: int) -> bytes:
        out: bytes = d.decompress(data, n)
        return out


class _Lz4(_Members):
    """lz4 frames (``lz4.frame``), output bounded by ``max_length``."""

    format = "lz4"
    _end = "end mark"
    _damage = (RuntimeError,)

    def __init__(self, raw: Read, module: ModuleType) -> None:
        self._factory = module.LZ4FrameDecompressor
        super().__init__(raw)

    def _new(self) -> Any:
        return self._factory()

    def _pending(self, d: Any) -> bytes | None:
        return None if d.needs_input else b""  # b"": output still buffered inside

    def _decompress(self, d: Any, data: bytes, n: int) -> bytes:
        out: bytes = d.decompress(data, max_length=n)
        return out


class _RawFile:
    """The minimal file object ``zstandard`` reads from."""

    def __init__(self, raw: Read) -> None:
        self._raw = raw

    def read(self, n: int = CHUNK) -> bytes:
        return self._raw(CHUNK if n is None or n < 0 else n)


class _Zstd:
    """zstd frames through ``zstandard``'s stream reader (output bounded per read).

    The reader cannot tell a stream cut between frames or blocks from one that
    ended: such a cut shows as a capture ending inside a record.
    """

    format = "zstd"

    def __init__(self, raw: Read, module: ModuleType) -> None:
        self._reader = module.ZstdDecompressor().stream_reader(
            _RawFile(raw), read_size=CHUNK, read_across_frames=True
        )
        self._damage: type[Exception] = module.ZstdError
        self._error: str | None = None

    def error(self) -> str | None:
        return self._error

    def read(self, n: int) -> bytes:
        if self._error is not None:
            return b""
        try:
            out: bytes = self._reader.read(n)
        except self._damage as exc:
            self._error = f"zstd data is damaged ({exc})"
            return b""
        return out


def _import(kind: str, name: str) -> ModuleType:
    package = _PACKAGES[kind]
    try:
        if kind == "zstd":
            import zstandard

            return zstandard
        import lz4.frame  # type: ignore[import-untyped]

        frame: ModuleType = lz4.frame
        return frame
    except ImportError:
        raise CaptureFormatError(
            f"{kind}-compressed capture: install the Python package {package!r} to read it "
            f"(pip install {package})",
            path=name,
            offset=0,
        ) from None


def open_decompressor(head: bytes, raw: Read, name: str) -> Decompressor | None:
    """A decompressor for the stream starting with ``head``, or None if it is not compressed."""
    kind = next((k for magic, k in MAGICS.items() if head.startswith(magic)), None)
    if kind is None:
        return None
    if kind == "gzip":
        return _Inflate(raw)
    module = _import(kind, name)
    return _Zstd(raw, module) if kind == "zstd" else _Lz4(raw, module)
