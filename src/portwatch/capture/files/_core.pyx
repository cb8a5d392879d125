# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled record framing for classic pcap and pcapng (see ``_compiled.py``).

Each function walks record headers in ``buf[pos:end]`` with the GIL released
and writes one row per packet into caller-owned arrays: the record's position
and the header words the numpy framers would gather afterwards. No Python
object is made per packet. Every length read from the file is checked
against ``end`` before anything behind it is read; the arrays are never
written past their capacity (``limit`` is checked against it on entry).

The walk answers exactly what the numpy framers answer (``pcap.PcapFramer``,
``pcapng.PcapngFramer``): the same records, the same stop position and the
same reason. pcapng blocks that change framing state (a section header, an
interface description) are handed back to Python, which parses them with the
numpy framer's own code and calls again.
"""

from libc.stdint cimport int64_t, uint8_t, uint32_t

# Stop codes (the numpy framers' ``Stop``), plus the blocks Python must parse.
cdef enum:
    C_LIMIT = 0
    C_END = 1
    C_PARTIAL = 2
    C_CORRUPT = 3
    C_NEED_SHB = 4
    C_NEED_IDB = 5

# Why a pcapng walk stopped on damage (Python words the message from the numbers).
cdef enum:
    R_NONE = 0
    R_LENGTH = 1  # a: type, b: length
    R_TRAILER = 2  # a: type, b: length, c: trailing copy
    R_EPB_SHORT = 3  # b: length
    R_IFACE = 4  # a: interface, b: interfaces in the section
    R_CAPLEN = 5  # a: captured length, b: block length
    R_SPB = 6

cdef enum:
    PCAP_RECORD = 16
    MAX_BLOCK_LEN = 16 * 1024 * 1024

cdef uint32_t BLOCK_SHB = 0x0A0D0D0A
cdef uint32_t BLOCK_IDB = 0x00000001
cdef uint32_t BLOCK_SPB = 0x00000003
cdef uint32_t BLOCK_EPB = 0x00000006

LIMIT = C_LIMIT
END = C_END
PARTIAL = C_PARTIAL
CORRUPT = C_CORRUPT
NEED_SHB = C_NEED_SHB
NEED_IDB = C_NEED_IDB
REASON_LENGTH = R_LENGTH
REASON_TRAILER = R_TRAILER
REASON_EPB_SHORT = R_EPB_SHORT
REASON_IFACE = R_IFACE
REASON_CAPLEN = R_CAPLEN
REASON_SPB = R_SPB


cdef inline uint32_t _u32(const uint8_t* p, bint big) noexcept nogil:
    if big:
        return ((<uint32_t>p[0]) << 24) | ((<uint32_t>p[1]) << 16) | ((<uint32_t>p[2]) << 8) \
            | (<uint32_t>p[3])
    return (<uint32_t>p[0]) | ((<uint32_t>p[1]) << 8) | ((<uint32_t>p[2]) << 16) \
        | ((<uint32_t>p[3]) << 24)


cdef int _check(Py_ssize_t size, Py_ssize_t pos, Py_ssize_t end, Py_ssize_t limit,
                Py_ssize_t rows, Py_ssize_t nwords, Py_ssize_t width) except -1:
    if not 0 <= pos <= end <= size:
        raise ValueError(f"span {pos}:{end} is outside a {size}-byte buffer")
    if limit < 0 or limit > rows or nwords < width * limit:
        raise ValueError(f"limit {limit} exceeds the output arrays ({rows} rows)")
    return 0


def frame_pcap(const uint8_t[::1] buf, Py_ssize_t pos, Py_ssize_t end, Py_ssize_t limit,
               Py_ssize_t max_bytes, uint32_t max_caplen, bint big,
               int64_t[::1] positions, uint32_t[::1] words):
    """Frame up to ``limit`` pcap records; ``(count, end, stop, bad captured length)``.

    ``words`` receives four words per record (seconds, fraction, captured,
    original length): the record header in host order.
    """
    _check(buf.shape[0], pos, end, limit, positions.shape[0], words.shape[0], 4)
    cdef Py_ssize_t n = 0
    cdef Py_ssize_t nxt
    cdef Py_ssize_t budget_end = pos + max_bytes
    cdef uint32_t incl = 0
    cdef int stop = C_LIMIT
    cdef const uint8_t* base = &buf[0] if buf.shape[0] else NULL
    cdef const uint8_t* p
    with nogil:
        while n < limit:
            if end - pos < PCAP_RECORD:
                stop = C_END if pos == end else C_PARTIAL
                break
            p = base + pos
            incl = _u32(p + 8, big)
            if incl > max_caplen:
                stop = C_CORRUPT
                break
            nxt = pos + PCAP_RECORD + incl
            if nxt > end:
                stop = C_PARTIAL
                break
            if n and nxt > budget_end:
                break
            positions[n] = pos
            words[4 * n] = _u32(p, big)
            words[4 * n + 1] = _u32(p + 4, big)
            words[4 * n + 2] = incl
            words[4 * n + 3] = _u32(p + 12, big)
            pos = nxt
            n += 1
    return n, pos, stop, incl


def frame_pcapng(const uint8_t[::1] buf, Py_ssize_t pos, Py_ssize_t end, Py_ssize_t n,
                 Py_ssize_t limit, Py_ssize_t budget_end, Py_ssize_t max_bytes, bint big,
                 uint32_t nif, int64_t[::1] positions, uint8_t[::1] kinds,
                 uint32_t[::1] words):
    """Walk pcapng blocks of one section from packet ``n`` on, up to ``limit`` packets.

    Returns ``(count, pos, stop, budget_end, reason, a, b, c)``. ``words``
    receives seven words per packet (the EPB header after the type: type,
    length, interface, timestamp high, low, captured, original; for an SPB the
    first three, then zeros); ``kinds`` 0 for an EPB, 1 for an SPB.
    ``budget_end`` is ``end`` until the batch's first packet sets it.
    """
    _check(buf.shape[0], pos, end, limit, positions.shape[0], words.shape[0], 7)
    if kinds.shape[0] < limit or n < 0 or n > limit:
        raise ValueError(f"kinds ({kinds.shape[0]} rows) or count {n} does not fit {limit}")
    cdef uint32_t btype = 0, length = 0, trailer = 0, iface = 0, caplen = 0
    cdef int stop = C_LIMIT
    cdef int reason = R_NONE
    cdef int64_t a = 0, b = 0, c = 0
    cdef Py_ssize_t k
    cdef const uint8_t* base = &buf[0] if buf.shape[0] else NULL
    cdef const uint8_t* p
    with nogil:
        while n < limit:
            if end - pos < 8:
                stop = C_END if pos == end else C_PARTIAL
                break
            p = base + pos
            btype = _u32(p, big)
            length = _u32(p + 4, big)
            if btype == BLOCK_SHB:
                stop = C_NEED_SHB
                break
            if length < 12 or length % 4 or length > MAX_BLOCK_LEN:
                stop, reason, a, b = C_CORRUPT, R_LENGTH, btype, length
                break
            if end - pos < length:
                stop = C_PARTIAL
                break
            if n and pos + length > budget_end:
                break
            trailer = _u32(p + length - 4, big)
            if trailer != length:
                stop, reason, a, b, c = C_CORRUPT, R_TRAILER, btype, length, trailer
                break
            if btype == BLOCK_EPB:
                if length < 32:
                    stop, reason, b = C_CORRUPT, R_EPB_SHORT, length
                    break
                iface = _u32(p + 8, big)
                caplen = _u32(p + 20, big)
                if iface >= nif:
                    stop, reason, a, b = C_CORRUPT, R_IFACE, iface, nif
                    break
                if caplen > length - 32:
                    stop, reason, a, b = C_CORRUPT, R_CAPLEN, caplen, length
                    break
                if not n:
                    budget_end = pos + max_bytes
                positions[n] = pos
                kinds[n] = 0
                for k in range(7):
                    words[7 * n + k] = _u32(p + 4 * k, big)
                n += 1
            elif btype == BLOCK_SPB:
                if length < 16 or nif == 0:
                    stop, reason = C_CORRUPT, R_SPB
                    break
                if not n:
                    budget_end = pos + max_bytes
                positions[n] = pos
                kinds[n] = 1
                words[7 * n] = btype
                words[7 * n + 1] = length
                words[7 * n + 2] = _u32(p + 8, big)
                for k in range(3, 7):
                    words[7 * n + k] = 0
                n += 1
            elif btype == BLOCK_IDB:
                stop, a = C_NEED_IDB, length
                break
            pos += length
    return n, pos, stop, budget_end, reason, a, b, c
