# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled flow table core: a C hash index of canonical 5-tuples and one pass per batch.

``FlowIndex`` maps a canonical key (transport, address A hi/lo, port A,
address B hi/lo, port B) to its ``FlowTable`` row through open addressing
(linear probing, at most half full, deletion by backward shift so no
tombstones pile up in a daemon that retires flows for months).

``FlowIndex.update`` is the whole per-packet work of ``FlowTable`` in one
loop with the GIL released: canonical ordering, lookup or insert, and every
per-flow counter the numpy engine computes with ``np.unique``/``bincount``/
``ufunc.at``, written straight into the table's own arrays. It answers
exactly what the numpy engine answers (``tests/analysis/test_flowcore.py``):
new flows take the last free row first, else the next row, in order of first
appearance in the batch.

The caller (``flows.FlowTable``) grows the arrays before the pass so every
row the batch can add fits; the pass checks every row it writes against the
arrays' lengths all the same and reports a violation instead of writing.
"""

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

cdef extern from *:
    """
    static inline uint64_t pw_mix(uint64_t x) {
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
        return x ^ (x >> 31);
    }
    """
    uint64_t pw_mix(uint64_t x) noexcept nogil

# Byte layout of flows._KEY_DTYPE (packed): t u1, ah u8, al u8, ap u2, bh u8, bl u8, bp u2.
cdef enum:
    KEY_WIDTH = 37
    OFF_T = 0
    OFF_AH = 1
    OFF_AL = 9
    OFF_AP = 17
    OFF_BH = 19
    OFF_BL = 27
    OFF_BP = 35

cdef enum:
    STATUS_OK = 0
    NO_TRANSPORT = 255
    SYN = 0x02
    ACK = 0x10
    SIDE_A = 1
    SIDE_B = 2
    PROTO_TCP = 6
    MIN_SLOTS = 64

KEY_BYTES = KEY_WIDTH

cdef struct Key:
    uint64_t ah
    uint64_t al
    uint64_t bh
    uint64_t bl
    uint16_t ap
    uint16_t bp
    uint8_t t

cdef struct Slot:
    Key key
    uint64_t hash
    int64_t row  # -1: empty


cdef inline uint64_t _hash(const Key* k) noexcept nogil:
    cdef uint64_t h = pw_mix(k.ah ^ pw_mix(k.al + k.t))
    return pw_mix(h ^ k.bh ^ pw_mix(k.bl ^ ((<uint64_t>k.ap) << 16) ^ k.bp
                                   ^ ((<uint64_t>k.t) << 40)))


cdef inline bint _same(const Key* a, const Key* b) noexcept nogil:
    return (a.al == b.al and a.bl == b.bl and a.ah == b.ah and a.bh == b.bh
            and a.ap == b.ap and a.bp == b.bp and a.t == b.t)


cdef inline void _read_key(const uint8_t* p, Key* k) noexcept nogil:
    k.t = p[OFF_T]
    memcpy(&k.ah, p + OFF_AH, 8)
    memcpy(&k.al, p + OFF_AL, 8)
    memcpy(&k.ap, p + OFF_AP, 2)
    memcpy(&k.bh, p + OFF_BH, 8)
    memcpy(&k.bl, p + OFF_BL, 8)
    memcpy(&k.bp, p + OFF_BP, 2)


cdef inline void _write_key(uint8_t* p, const Key* k) noexcept nogil:
    p[OFF_T] = k.t
    memcpy(p + OFF_AH, &k.ah, 8)
    memcpy(p + OFF_AL, &k.al, 8)
    memcpy(p + OFF_AP, &k.ap, 2)
    memcpy(p + OFF_BH, &k.bh, 8)
    memcpy(p + OFF_BL, &k.bl, 8)
    memcpy(p + OFF_BP, &k.bp, 2)


cdef Slot* _new_slots(Py_ssize_t n) noexcept nogil:
    cdef Slot* s = <Slot*>calloc(n, sizeof(Slot))
    cdef Py_ssize_t i
    if s != NULL:
        for i in range(n):
            s[i].row = -1
    return s


cdef Py_ssize_t _key_count(const uint8_t[::1] keys, Py_ssize_t rows) except -1:
    """Keys in a packed key buffer, checked against ``rows`` (-1: not checked)."""
    if keys.shape[0] % KEY_WIDTH:
        raise ValueError(f"key bytes ({keys.shape[0]}) are not a multiple of {KEY_WIDTH}")
    cdef Py_ssize_t n = keys.shape[0] // KEY_WIDTH
    if rows >= 0 and rows != n:
        raise ValueError(f"{n} keys but {rows} rows")
    return n


cdef class FlowIndex:
    """Canonical flow key -> ``FlowTable`` row, in C (see the module docstring)."""

    cdef Slot* slots
    cdef Py_ssize_t nslots  # a power of two
    cdef Py_ssize_t count
    cdef bint busy  # a call is working without the GIL: another must not touch the slots

    def __cinit__(self) -> None:
        self.slots = _new_slots(MIN_SLOTS)
        if self.slots == NULL:
            raise MemoryError("flow index")
        self.nslots = MIN_SLOTS
        self.count = 0

    def __dealloc__(self) -> None:
        free(self.slots)

    def __len__(self) -> int:
        return self.count

    # -- C primitives (no GIL) ------------------------------------------------

    cdef Py_ssize_t _find(self, const Key* k, uint64_t h) noexcept nogil:
        """Slot of ``k``, or -1 - (the empty slot where it would go)."""
        cdef Py_ssize_t mask = self.nslots - 1
        cdef Py_ssize_t i = <Py_ssize_t>(h & <uint64_t>mask)
        while self.slots[i].row >= 0:
            if self.slots[i].hash == h and _same(&self.slots[i].key, k):
                return i
            i = (i + 1) & mask
        return -1 - i

    cdef int _grow(self) noexcept nogil:
        """Double the slots; 0, or -1 when out of memory (the index is unchanged)."""
        cdef Py_ssize_t n = self.nslots * 2
        cdef Py_ssize_t mask = n - 1
        cdef Slot* s = _new_slots(n)
        cdef Py_ssize_t i, j
        if s == NULL:
            return -1
        for i in range(self.nslots):
            if self.slots[i].row >= 0:
                j = <Py_ssize_t>(self.slots[i].hash & <uint64_t>mask)
                while s[j].row >= 0:
                    j = (j + 1) & mask
                s[j] = self.slots[i]
        free(self.slots)
        self.slots = s
        self.nslots = n
        return 0

    cdef int _insert_at(self, Py_ssize_t at, const Key* k, uint64_t h,
                        int64_t row) noexcept nogil:
        """Put absent ``k`` in empty slot ``at`` (from ``_find``), growing first if that
        would leave the slots more than half full; -1 when out of memory (nothing added,
        so the slots never fill and a probe always ends)."""
        if 2 * (self.count + 1) > self.nslots:
            if self._grow() < 0:
                return -1
            at = -1 - self._find(k, h)
        self.slots[at].key = k[0]
        self.slots[at].hash = h
        self.slots[at].row = row
        self.count += 1
        return 0

    cdef void _delete_at(self, Py_ssize_t i) noexcept nogil:
        """Empty slot ``i``, shifting later entries of its probe run back (no tombstones)."""
        cdef Py_ssize_t mask = self.nslots - 1
        cdef Py_ssize_t j = i, home
        while True:
            j = (j + 1) & mask
            if self.slots[j].row < 0:
                break
            home = <Py_ssize_t>(self.slots[j].hash & <uint64_t>mask)
            # slot j may move to i only if its home is not cyclically in (i, j]
            if (i <= j and i < home <= j) or (i > j and (home > i or home <= j)):
                continue
            self.slots[i] = self.slots[j]
            i = j
        self.slots[i].row = -1
        self.count -= 1

    cdef int _enter(self) except -1:
        """Claim the index for one call (under the GIL, so two threads cannot both pass)."""
        if self.busy:
            raise RuntimeError("FlowIndex used from two threads at once (the caller must lock)")
        self.busy = True
        return 0

    # -- Python API -----------------------------------------------------------

    def clear(self) -> None:
        """Forget every key."""
        if self.busy:
            raise RuntimeError("FlowIndex used from two threads at once (the caller must lock)")
        cdef Slot* s = _new_slots(MIN_SLOTS)
        if s == NULL:
            raise MemoryError("flow index")
        free(self.slots)
        self.slots = s
        self.nslots = MIN_SLOTS
        self.count = 0

    def lookup(self, const uint8_t[::1] keys, int64_t[::1] rows) -> None:
        """Write the row of each packed key (``flows._KEY_DTYPE`` bytes) into ``rows`` (-1: none)."""
        cdef Py_ssize_t n = _key_count(keys, rows.shape[0])
        cdef Py_ssize_t i, at
        cdef Key k
        self._enter()
        try:
            with nogil:
                for i in range(n):
                    _read_key(&keys[i * KEY_WIDTH], &k)
                    at = self._find(&k, _hash(&k))
                    rows[i] = self.slots[at].row if at >= 0 else -1
        finally:
            self.busy = False

    def insert(self, const uint8_t[::1] keys, const int64_t[::1] rows) -> None:
        """Map each packed key to its row (a key already present is remapped)."""
        cdef Py_ssize_t n = _key_count(keys, rows.shape[0])
        cdef Py_ssize_t i, at
        cdef uint64_t h
        cdef int err = 0
        cdef Key k
        for i in range(n):
            if rows[i] < 0:
                raise ValueError(f"row {rows[i]} of key {i} is negative")
        self._enter()
        try:
            with nogil:
                for i in range(n):
                    _read_key(&keys[i * KEY_WIDTH], &k)
                    h = _hash(&k)
                    at = self._find(&k, h)
                    if at >= 0:
                        self.slots[at].row = rows[i]
                    elif self._insert_at(-1 - at, &k, h, rows[i]) < 0:
                        err = 1
                        break
        finally:
            self.busy = False
        if err:
            raise MemoryError("flow index")

    def delete(self, const uint8_t[::1] keys) -> int:
        """Forget each packed key; how many were present."""
        cdef Py_ssize_t n = _key_count(keys, -1)
        cdef Py_ssize_t i, at, gone = 0
        cdef Key k
        self._enter()
        try:
            with nogil:
                for i in range(n):
                    _read_key(&keys[i * KEY_WIDTH], &k)
                    at = self._find(&k, _hash(&k))
                    if at >= 0:
                        self._delete_at(at)
                        gone += 1
        finally:
            self.busy = False
        return gone

    def update(self,
               const uint8_t[::1] status, const uint8_t[::1] ip_proto,
               const uint64_t[::1] src_hi, const uint64_t[::1] src_lo,
               const uint64_t[::1] dst_hi, const uint64_t[::1] dst_lo,
               const uint16_t[::1] src_port, const uint16_t[::1] dst_port,
               const uint8_t[::1] tcp_flags, const uint32_t[::1] wirelen,
               const uint16_t[::1] encap_in, const int64_t[::1] ts,
               const uint8_t[::1] transport_of_proto,
               uint8_t[::1] keys,
               uint64_t[::1] packets_ab, uint64_t[::1] packets_ba,
               uint64_t[::1] bytes_ab, uint64_t[::1] bytes_ba,
               int64_t[::1] first_ns, int64_t[::1] last_ns,
               uint8_t[::1] handshake_side, uint8_t[::1] tcp_flags_ab,
               uint8_t[::1] tcp_flags_ba, uint8_t[::1] first_flags,
               uint8_t[::1] first_from_a, uint8_t[::1] alive, uint16_t[::1] encap,
               const int64_t[::1] free_rows, Py_ssize_t size,
               int64_t[::1] flow_of_packet):
        """Count one batch into the table's arrays; ``(new size, free rows used)``.

        ``free_rows`` is the tail of ``FlowTable._free`` (rows are taken from its
        end); ``flow_of_packet`` receives each packet's row, -1 when it is in no
        flow (not ``OK``, or a protocol without ports).
        """
        cdef Py_ssize_t n = status.shape[0]
        if (ip_proto.shape[0] != n or src_hi.shape[0] != n or src_lo.shape[0] != n
                or dst_hi.shape[0] != n or dst_lo.shape[0] != n or src_port.shape[0] != n
                or dst_port.shape[0] != n or tcp_flags.shape[0] != n or wirelen.shape[0] != n
                or encap_in.shape[0] != n or ts.shape[0] != n
                or flow_of_packet.shape[0] != n):
            raise ValueError(f"batch columns differ in length from status ({n} rows)")
        if transport_of_proto.shape[0] != 256:
            raise ValueError("transport_of_proto must have 256 entries")
        cdef Py_ssize_t cap = packets_ab.shape[0]
        if (keys.shape[0] != cap * KEY_WIDTH or packets_ba.shape[0] != cap
                or bytes_ab.shape[0] != cap or bytes_ba.shape[0] != cap
                or first_ns.shape[0] != cap or last_ns.shape[0] != cap
                or handshake_side.shape[0] != cap or tcp_flags_ab.shape[0] != cap
                or tcp_flags_ba.shape[0] != cap or first_flags.shape[0] != cap
                or first_from_a.shape[0] != cap or alive.shape[0] != cap
                or encap.shape[0] != cap):
            raise ValueError(f"flow table columns differ in length from packets_ab ({cap})")
        if not 0 <= size <= cap:
            raise ValueError(f"size {size} is outside the table's {cap} rows")
        cdef Py_ssize_t nfree = free_rows.shape[0], j
        for j in range(nfree):
            if not 0 <= free_rows[j] < size:
                raise ValueError(f"free row {free_rows[j]} is not a row in use")
        cdef Py_ssize_t i, at, used_free = 0
        cdef int err = 0
        cdef uint8_t t, flags, bits
        cdef bint swap, from_a
        cdef uint64_t sh, sl, dh, dl, h
        cdef uint16_t sp, dp
        cdef int64_t row, when
        cdef Key k
        self._enter()
        try:
            with nogil:
                for i in range(n):
                    flow_of_packet[i] = -1
                    if status[i] != STATUS_OK:
                        continue
                    t = transport_of_proto[ip_proto[i]]
                    if t == NO_TRANSPORT:
                        continue
                    sh = src_hi[i]
                    sl = src_lo[i]
                    sp = src_port[i]
                    dh = dst_hi[i]
                    dl = dst_lo[i]
                    dp = dst_port[i]
                    swap = sh > dh or (sh == dh and (sl > dl or (sl == dl and sp > dp)))
                    k.t = t
                    if swap:
                        k.ah, k.al, k.ap, k.bh, k.bl, k.bp = dh, dl, dp, sh, sl, sp
                    else:
                        k.ah, k.al, k.ap, k.bh, k.bl, k.bp = sh, sl, sp, dh, dl, dp
                    h = _hash(&k)
                    at = self._find(&k, h)
                    if at >= 0:
                        row = self.slots[at].row
                        if row >= cap:  # an index filled by ``insert`` for a bigger table
                            err = 3
                            break
                    else:
                        if used_free < nfree:
                            used_free += 1
                            row = free_rows[nfree - used_free]
                        elif size < cap:
                            row = size
                            size += 1
                        else:
                            err = 2  # the caller did not grow the arrays
                            break
                        if self._insert_at(-1 - at, &k, h, row) < 0:
                            err = 1
                            break
                        _write_key(&keys[row * KEY_WIDTH], &k)
                        alive[row] = 1
                    if packets_ab[row] == 0 and packets_ba[row] == 0:
                        encap[row] = encap_in[i]  # the flow's first packet
                    from_a = not swap
                    flags = tcp_flags[i]
                    bits = flags if ip_proto[i] == PROTO_TCP else 0
                    if from_a:
                        packets_ab[row] += 1
                        bytes_ab[row] += wirelen[i]
                        tcp_flags_ab[row] |= bits
                    else:
                        packets_ba[row] += 1
                        bytes_ba[row] += wirelen[i]
                        tcp_flags_ba[row] |= bits
                    when = ts[i]
                    if when < first_ns[row]:  # strictly: the first of equal earliest packets
                        first_ns[row] = when
                        first_flags[row] = bits
                        first_from_a[row] = from_a
                    if when > last_ns[row]:
                        last_ns[row] = when
                    if bits & SYN:  # SYN goes to the server, SYN-ACK comes from it
                        if bits & ACK:
                            handshake_side[row] = SIDE_A if from_a else SIDE_B
                        else:
                            handshake_side[row] = SIDE_B if from_a else SIDE_A
                    flow_of_packet[i] = row
        finally:
            self.busy = False
        if err == 1:
            raise MemoryError("flow index")
        if err == 2:
            raise ValueError(f"the batch needs more than the table's {cap} rows")
        if err == 3:
            raise ValueError(f"the index maps a key to row {row}, outside the table's {cap} rows")
        return size, used_free

