"""A thin ctypes binding to Debian's ``libbpf1``: what the eBPF backend uses, nothing more.

Opening an object file, sizing a map before load, loading (with the
verifier's message kept for the error), and map reads and writes by file
descriptor, including ``bpf_map_lookup_batch`` so that a whole per-CPU array
comes over in one system call per chunk. libbpf 1.x returns ``NULL`` or
``-errno`` and sets ``errno``; every failure here becomes ``LibbpfError``
with the call and ``strerror``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt

__all__ = ["LibbpfError", "Map", "Object", "libbpf", "possible_cpus"]

_LIBRARY_NAMES = ("libbpf.so.1", "libbpf.so")
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class LibbpfError(OSError):
    """A libbpf call failed; ``log`` holds what libbpf printed (the verifier's message)."""

    def __init__(self, errno_: int, what: str, log: str = "") -> None:
        super().__init__(errno_, f"{what}: {os.strerror(errno_)}")
        self.what = what
        self.log = log

    def verifier_line(self) -> str:
        """The most telling line of libbpf's output, for a one-line error.

        A refused program: the verifier's last line before its statistics (its
        reason). Anything else: libbpf's first line that names an error.
        """
        lines = [ln.strip() for ln in self.log.splitlines() if ln.strip()]
        begin = next((i for i, ln in enumerate(lines) if "-- BEGIN PROG LOAD LOG --" in ln),
                     None)
        if begin is not None:
            verifier = []
            for ln in lines[begin + 1:]:
                if "-- END PROG LOAD LOG --" in ln:
                    break
                if not ln.startswith(("processed ", "verification time", "stack depth")):
                    verifier.append(ln)
            if verifier:
                return verifier[-1]
        errors = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
        return (errors or lines or [""])[0]


class _BatchOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("elem_flags", ctypes.c_uint64),
                ("flags", ctypes.c_uint64)]


_loaded: dict[str, ctypes.CDLL] = {}
_log_lock = threading.Lock()
_log: list[str] = []


def _print_line(level: int, fmt: bytes | None, args: int | None) -> int:
    """libbpf's print callback: format with vsnprintf (the va_list is a pointer on x86-64)."""
    buf = ctypes.create_string_buffer(2048)
    _LIBC.vsnprintf(buf, ctypes.c_size_t(len(buf)), fmt, ctypes.c_void_p(args))
    _log.append(buf.value.decode("utf-8", "replace"))
    return 0


_print = _PRINT_FN(_print_line)  # kept referenced: libbpf calls it for the process's life


def libbpf() -> ctypes.CDLL:
    """The loaded library; raises ``LibbpfError`` (ENOENT) when it is not installed."""
    if "lib" in _loaded:
        return _loaded["lib"]
    problem = ""
    for name in _LIBRARY_NAMES:
        try:
            lib = ctypes.CDLL(name, use_errno=True)
            break
        except OSError as exc:
            problem = str(exc)
    else:
        raise LibbpfError(2, f"libbpf is not installed ({problem}; Debian: apt-get install "
                             "libbpf1)")
    vp, ci, cs = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    sigs: dict[str, tuple[object, list[object]]] = {
        "bpf_object__open_file": (vp, [cs, vp]),
        "bpf_object__load": (ci, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_map_by_name": (vp, [vp, cs]),
        "bpf_object__find_program_by_name": (vp, [vp, cs]),
        "bpf_program__fd": (ci, [vp]),
        "bpf_map__fd": (ci, [vp]),
        "bpf_map__set_max_entries": (ci, [vp, ctypes.c_uint32]),
        "bpf_map__max_entries": (ctypes.c_uint32, [vp]),
        "bpf_map__key_size": (ctypes.c_uint32, [vp]),
        "bpf_map__value_size": (ctypes.c_uint32, [vp]),
        "bpf_map__type": (ci, [vp]),
        "bpf_map_update_elem": (ci, [ci, vp, vp, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (ci, [ci, vp, vp]),
        "bpf_map_lookup_batch": (ci, [ci, vp, vp, vp, vp, ctypes.POINTER(ctypes.c_uint32),
                                      ctypes.POINTER(_BatchOpts)]),
        "bpf_map_get_next_key": (ci, [ci, vp, vp]),
        "libbpf_num_possible_cpus": (ci, []),
        "libbpf_set_print": (vp, [_PRINT_FN]),
        "libbpf_set_strict_mode": (ci, [ci]),
    }
    for fn, (res, args) in sigs.items():
        f = getattr(lib, fn)
        f.restype = res
        f.argtypes = args
    lib.libbpf_set_print(_print)
    _loaded["lib"] = lib
    return lib


@contextmanager
def _captured() -> Iterator[list[str]]:
    """libbpf's messages printed during the block (one block at a time)."""
    with _log_lock:
        del _log[:]
        lines: list[str] = []
        try:
            yield lines
        finally:
            lines.extend(_log)
            del _log[:]


def _check(rc: int, what: str, log: str = "") -> int:
    if rc < 0:
        raise LibbpfError(-rc if rc != -1 else (ctypes.get_errno() or 1), what, log)
    return rc


def possible_cpus() -> int:
    """CPUs a per-CPU map holds a value for (``/sys/devices/system/cpu/possible``)."""
    return _check(libbpf().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


class Map:
    """One map of a loaded object, by file descriptor."""

    def __init__(self, name: str, fd: int, *, key_size: int, value_size: int,
                 max_entries: int, percpu: bool) -> None:
        self.name = name
        self.fd = fd
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.percpu = percpu

    def update(self, key: bytes, value: bytes | npt.NDArray[np.uint8]) -> None:
        kb = ctypes.create_string_buffer(key, len(key))
        data = np.ascontiguousarray(value, dtype=np.uint8) if not isinstance(value, bytes) \
            else np.frombuffer(value, dtype=np.uint8)
        _check(libbpf().bpf_map_update_elem(self.fd, kb, data.ctypes.data, 0),
               f"updating map {self.name}")

    def lookup_batch(self, chunk: int = 65536) -> tuple[npt.NDArray[np.uint8],
                                                        npt.NDArray[np.uint8]]:
        """Every (key, value) of the map: ``(n, key_size)`` and ``(n, [cpus,] value_size)`` bytes.

        Values of a per-CPU map are padded to 8 bytes per CPU by the kernel.
        """
        lib = libbpf()
        per_value = self._value_bytes()
        chunk = max(1, min(chunk, self.max_entries))
        keys = np.empty((self.max_entries, self.key_size), dtype=np.uint8)
        values = np.empty((self.max_entries, per_value), dtype=np.uint8)
        opts = _BatchOpts(ctypes.sizeof(_BatchOpts), 0, 0)
        token = ctypes.create_string_buffer(max(8, self.key_size))
        got = 0
        first = True
        while got < self.max_entries:
            count = ctypes.c_uint32(min(chunk, self.max_entries - got))
            rc = lib.bpf_map_lookup_batch(
                self.fd, None if first else token, token,
                keys[got:].ctypes.data, values[got:].ctypes.data, ctypes.byref(count),
                ctypes.byref(opts))
            err = ctypes.get_errno() if rc < 0 else 0
            got += count.value
            first = False
            if rc < 0:
                if err == 2 or rc == -2:  # ENOENT: the end of the map
                    break
                _check(rc, f"reading map {self.name}")
        return keys[:got], values[:got]

    def _value_bytes(self) -> int:
        return ((self.value_size + 7) // 8 * 8) * possible_cpus() if self.percpu \
            else self.value_size

    def lookup_range(self, start: int, n: int) -> tuple[npt.NDArray[np.uint8],
                                                       npt.NDArray[np.uint8]]:
        """Entries ``start`` .. ``start + n - 1`` of an array map, in one batched lookup."""
        n = max(0, min(n, self.max_entries - start))
        keys = np.empty((n, self.key_size), dtype=np.uint8)
        values = np.empty((n, self._value_bytes()), dtype=np.uint8)
        if n == 0:
            return keys, values
        opts = _BatchOpts(ctypes.sizeof(_BatchOpts), 0, 0)
        # The batch token of an array is the index *before* the first one read.
        before = ctypes.c_uint32(start - 1) if start else None
        out = ctypes.c_uint32(0)
        count = ctypes.c_uint32(n)
        rc = libbpf().bpf_map_lookup_batch(
            self.fd, ctypes.byref(before) if before is not None else None, ctypes.byref(out),
            keys.ctypes.data, values.ctypes.data, ctypes.byref(count), ctypes.byref(opts))
        if rc < 0 and -rc != 2 and ctypes.get_errno() != 2:
            _check(rc, f"reading map {self.name}")
        return keys[: count.value], values[: count.value]

    def count(self, chunk: int = 4096) -> int:
        """Entries in a hash map: a batched walk in chunks, buffers reused."""
        lib = libbpf()
        chunk = max(1, min(chunk, self.max_entries))
        keys = np.empty((chunk, self.key_size), dtype=np.uint8)
        values = np.empty((chunk, self._value_bytes()), dtype=np.uint8)
        opts = _BatchOpts(ctypes.sizeof(_BatchOpts), 0, 0)
        token = ctypes.create_string_buffer(max(8, self.key_size))
        total, first = 0, True
        while True:
            count = ctypes.c_uint32(chunk)
            rc = lib.bpf_map_lookup_batch(
                self.fd, None if first else token, token, keys.ctypes.data,
                values.ctypes.data, ctypes.byref(count), ctypes.byref(opts))
            err = ctypes.get_errno() if rc < 0 else 0
            total += count.value
            first = False
            if rc < 0:
                if -rc == 2 or err == 2:  # ENOENT: the walk reached the end
                    return total
                _check(rc, f"counting map {self.name}")


class Object:
    """An opened, then loaded, BPF object file; ``close()`` releases every fd it holds."""

    _PERCPU_TYPES = frozenset({5, 6, 10})  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH

    def __init__(self, path: str) -> None:
        lib = libbpf()
        with _captured() as log:
            ptr = lib.bpf_object__open_file(path.encode(), None)
            err = ctypes.get_errno()
        if not ptr:
            raise LibbpfError(err or 22, f"opening {path}", "\n".join(log))
        self._ptr: int | None = ptr
        self.path = path
        self.loaded = False

    def _map_ptr(self, name: str) -> int:
        ptr = libbpf().bpf_object__find_map_by_name(self._obj, name.encode())
        if not ptr:
            raise LibbpfError(2, f"map {name} not in {self.path}")
        return int(ptr)

    @property
    def _obj(self) -> int:
        if self._ptr is None:
            raise LibbpfError(9, f"{self.path} is closed")
        return self._ptr

    def set_max_entries(self, name: str, n: int) -> None:
        _check(libbpf().bpf_map__set_max_entries(self._map_ptr(name), n),
               f"sizing map {name} to {n}")

    def load(self) -> None:
        with _captured() as log:
            rc = libbpf().bpf_object__load(self._obj)
        if rc < 0:
            raise LibbpfError(-rc, f"loading {os.path.basename(self.path)}", "\n".join(log))
        self.loaded = True

    def program_fd(self, name: str) -> int:
        prog = libbpf().bpf_object__find_program_by_name(self._obj, name.encode())
        if not prog:
            raise LibbpfError(2, f"program {name} not in {self.path}")
        return _check(libbpf().bpf_program__fd(prog), f"program {name} fd")

    def map(self, name: str) -> Map:
        lib = libbpf()
        ptr = self._map_ptr(name)
        return Map(name, _check(lib.bpf_map__fd(ptr), f"map {name} fd"),
                   key_size=lib.bpf_map__key_size(ptr), value_size=lib.bpf_map__value_size(ptr),
                   max_entries=lib.bpf_map__max_entries(ptr),
                   percpu=lib.bpf_map__type(ptr) in self._PERCPU_TYPES)

    def close(self) -> None:
        if self._ptr is not None:
            libbpf().bpf_object__close(self._ptr)
            self._ptr = None
