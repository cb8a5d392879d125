# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled per-packet decoding: ``native.decode_batch`` in one nogil loop.

``decode`` fills the columns of a ``DecodedBatch`` for every packet of a
batch, tunnels included, and answers exactly what the numpy decoder in
``native.py`` answers (``tests/decode/test_compiled_decode.py`` proves it on
every sample, damaged, fuzzed and generated packet). The numpy decoder is the
reference: each function here names the one it mirrors, and follows its
rules for TRUNCATED versus MALFORMED, declared lengths, VLAN stacks, IPv6
extension chains, link types, MPLS/PPPoE shims and tunnels.

Bounds: a packet is ``data[start[i]:end[i]]`` and ``0 <= start <= end <=
len(data)`` is checked for every packet before it is read. A byte at ``p`` is
read only after a check that ``p`` lies below ``end`` (or, inside a tunnel,
below the outer packet's end or its IP header's declared end, whichever is
nearer), so no length read from the capture can move a read outside it.
No Python object is made per packet.
"""

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

cdef extern from *:
    void __builtin_prefetch(const void* p) noexcept nogil

# DecodeStatus
cdef enum:
    S_OK = 0
    S_ICMP = 1
    S_FRAGMENT = 2
    S_OTHER_IP = 3
    S_NON_IP = 4
    S_TRUNCATED = 5
    S_UNSUPPORTED = 6
    S_MALFORMED = 7

# Encapsulation
cdef enum:
    E_VXLAN = 1
    E_GENEVE = 2
    E_GRE = 3
    E_ERSPAN = 4
    E_IPIP = 5
    E_IP6IP = 6
    E_GTPU = 7
    E_MPLS = 8
    E_PPPOE = 9

# LinkType, and the decoding mode of an MPLS label stack (native._MODE_MPLS)
cdef enum:
    L_NULL = 0
    L_ETHERNET = 1
    L_PPP = 9
    L_RAW_DLT12 = 12
    L_RAW_DLT14 = 14
    L_RAW = 101
    L_C_HDLC = 104
    L_IEEE802_11 = 105
    L_LOOP = 108
    L_LINUX_SLL = 113
    L_PPI = 192
    L_IPV4 = 228
    L_IPV6 = 229
    L_LINUX_SLL2 = 276
    MODE_MPLS = 1 << 20

cdef enum:
    SNIFF = 255  # the link layer says "IP, version unknown"
    MAX_VLAN_TAGS = 4
    MAX_IPV6_EXTENSION_HEADERS = 8
    MAX_ENCAPSULATIONS = 4
    MAX_MPLS_LABELS = 8
    MAX_GTP_EXTENSION_HEADERS = 4
    NO_TRANSPORT = 255
    TUNNEL_FIELDS = 11
    # Packets ahead whose first two cache lines are asked for: packets lie hundreds
    # of bytes apart, and waiting for each one's headers was most of the loop's time.
    PREFETCH_AHEAD = 12

cdef int64_t UNKNOWN_LIMIT = 0x7FFFFFFFFFFFFFFF // 4  # declared length 0: no limit
cdef uint64_t IPV4_MAPPED = 0xFFFF00000000

# The columns of TUNNEL_DTYPE, in the order ``decode`` takes their offsets.
COLUMNS = ("status", "ip_version", "ip_proto", "tcp_flags", "src_port", "dst_port", "encap",
           "src_hi", "src_lo", "dst_hi", "dst_lo")


cdef struct Row:
    # the decoded fields (a row of DecodedBatch, less wirelen)
    uint8_t status
    uint8_t ip_version
    uint8_t ip_proto
    uint8_t tcp_flags
    uint8_t first
    uint16_t src_port
    uint16_t dst_port
    uint16_t encap
    uint32_t frag_id
    uint64_t src_hi
    uint64_t src_lo
    uint64_t dst_hi
    uint64_t dst_lo
    # scratch of native._State
    int64_t l4
    int64_t declared_end
    int64_t end
    uint8_t depth


cdef struct Link:
    int64_t l3
    uint8_t version
    uint8_t status
    uint16_t encap
    uint8_t depth


cdef inline uint16_t _be16(const uint8_t* d, int64_t p) noexcept nogil:
    return ((<uint16_t>d[p]) << 8) | d[p + 1]


cdef inline uint32_t _be32(const uint8_t* d, int64_t p) noexcept nogil:
    return ((<uint32_t>d[p]) << 24) | ((<uint32_t>d[p + 1]) << 16) \
        | ((<uint32_t>d[p + 2]) << 8) | (<uint32_t>d[p + 3])


cdef inline uint32_t _le32(const uint8_t* d, int64_t p) noexcept nogil:
    return (<uint32_t>d[p]) | ((<uint32_t>d[p + 1]) << 8) \
        | ((<uint32_t>d[p + 2]) << 16) | ((<uint32_t>d[p + 3]) << 24)


cdef inline uint64_t _be64(const uint8_t* d, int64_t p) noexcept nogil:
    return ((<uint64_t>_be32(d, p)) << 32) | _be32(d, p + 4)


cdef inline uint32_t _bswap32(uint32_t v) noexcept nogil:
    return ((v & 0xFF) << 24) | ((v & 0xFF00) << 8) | ((v >> 8) & 0xFF00) | (v >> 24)


cdef inline bint _is_tpid(uint16_t t) noexcept nogil:
    return t == 0x8100 or t == 0x88A8 or t == 0x9100


cdef inline bint _is_ext(uint8_t h) noexcept nogil:
    """native._IPV6_EXT: headers that continue an IPv6 chain."""
    return h == 0 or h == 43 or h == 44 or h == 60 or h == 51 or h == 135 or h == 139 \
        or h == 140


cdef inline bint _is_tunnel_port(uint16_t p) noexcept nogil:
    return p == 4789 or p == 6081 or p == 2152


cdef inline uint16_t _ppp_to_ethertype(uint32_t proto) noexcept nogil:
    if proto == 0x0021:
        return 0x0800
    if proto == 0x0057:
        return 0x86DD
    if proto == 0x0281:
        return 0x8847
    if proto == 0x0283:
        return 0x8848
    return 0


cdef inline int64_t _gre_mode(uint16_t proto) noexcept nogil:
    """native._GRE_MODE: the decoding mode of a GRE or Geneve payload (0: none)."""
    if proto == 0x6558:
        return L_ETHERNET
    if proto == 0x0800:
        return L_IPV4
    if proto == 0x86DD:
        return L_IPV6
    if proto == 0x8847 or proto == 0x8848:
        return MODE_MPLS
    return 0


cdef inline void _push(Link* lk, uint16_t kind) noexcept nogil:
    lk.encap = lk.encap | <uint16_t>(kind << (4 * lk.depth))
    lk.depth += 1


cdef void _by_ethertype(const uint8_t* d, int64_t l3, uint16_t ethertype, bint ok,
                        int64_t end, Link* lk) noexcept nogil:
    """native._by_ethertype: IP by ethertype, through PPPoE and an MPLS label stack."""
    cdef int64_t p
    cdef int i
    cdef bint done
    cdef uint8_t nibble
    lk.status = S_OK if ok else S_TRUNCATED
    lk.encap = 0
    lk.depth = 0
    if ok and (ethertype == 0x8847 or ethertype == 0x8848 or ethertype == 0x8864):
        if ethertype == 0x8864:  # version/type, code, session id, length, PPP protocol
            if l3 + 8 > end:
                lk.status = S_TRUNCATED
            else:
                ethertype = _ppp_to_ethertype(_be16(d, l3 + 6))
                l3 += 8
                _push(lk, E_PPPOE)
        if lk.status == S_OK and (ethertype == 0x8847 or ethertype == 0x8848):
            # native._mpls: labels to the bottom of stack, then the version nibble
            p = l3
            done = False
            for i in range(MAX_MPLS_LABELS):
                if p + 4 > end:
                    lk.status = S_TRUNCATED
                    done = True
                    break
                if d[p + 2] & 1:
                    p += 4
                    done = True
                    break
                p += 4
            if not done:
                lk.status = S_MALFORMED
            ethertype = 0
            if lk.status == S_OK:
                if p + 1 > end:
                    lk.status = S_TRUNCATED
                else:
                    nibble = d[p] >> 4
                    if nibble == 4:
                        ethertype = 0x0800
                    elif nibble == 6:
                        ethertype = 0x86DD
            l3 = p
            _push(lk, E_MPLS)
    lk.l3 = l3
    lk.version = 4 if ethertype == 0x0800 else (6 if ethertype == 0x86DD else 0)
    if lk.status == S_OK and lk.version == 0:
        lk.status = S_NON_IP
    if lk.status != S_OK:
        lk.version = 0


cdef void _ethernet(const uint8_t* d, int64_t start, int64_t end, Link* lk) noexcept nogil:
    """native._ethernet: FabricPath, up to MAX_VLAN_TAGS tags, then the ethertype."""
    cdef bint ok = start + 14 <= end
    cdef int64_t l3 = start + 14
    cdef uint16_t ethertype = _be16(d, start + 12) if ok else 0
    cdef bint deep = False
    cdef int i
    if ok and (_is_tpid(ethertype) or ethertype == 0x8903):
        if ethertype == 0x8903:  # outer MACs, 0x8903, FTag/TTL, then a whole frame
            if l3 + 16 > end:
                ok = False
            else:
                ethertype = _be16(d, l3 + 14)
                l3 += 16
        i = 0
        while i < MAX_VLAN_TAGS:
            if not (ok and _is_tpid(ethertype)):
                break
            if l3 + 4 > end:
                ok = False
                break
            ethertype = _be16(d, l3 + 2)
            l3 += 4
            i += 1
        deep = ok and _is_tpid(ethertype)
    _by_ethertype(d, l3, ethertype, ok, end, lk)
    if deep:
        lk.status = S_MALFORMED


cdef void _ethertype_link(const uint8_t* d, int64_t start, int64_t end, int proto_at,
                          int header, Link* lk) noexcept nogil:
    """native._ethertype_link: cooked captures and Cisco HDLC."""
    cdef bint ok = start + header <= end
    cdef uint16_t ethertype = _be16(d, start + proto_at) if ok else 0
    _by_ethertype(d, start + header, ethertype, ok, end, lk)


cdef void _ppp(const uint8_t* d, int64_t start, int64_t end, Link* lk) noexcept nogil:
    """native._ppp: optional address/control, a one- or two-byte protocol."""
    cdef bint ok = start + 2 <= end
    cdef int64_t p = start
    cdef uint8_t first = 0
    cdef bint short = False
    cdef uint32_t proto = 0
    if ok and _be16(d, start) == 0xFF03:
        p = start + 2
    ok = ok and p + 1 <= end
    if ok:
        first = d[p]
        short = (first & 1) != 0
        if p + (1 if short else 2) > end:
            ok = False
    if short:
        proto = first
    elif ok:
        proto = _be16(d, p)
    _by_ethertype(d, p + (1 if short else 2), _ppp_to_ethertype(proto), ok, end, lk)


cdef void _dot11(const uint8_t* d, int64_t start, int64_t end, Link* lk) noexcept nogil:
    """native._dot11: data frames with LLC/SNAP; other frames are not IP."""
    cdef bint ok = start + 2 <= end
    cdef uint8_t control, flags, subtype, kind
    cdef bint data, qos, has
    cdef int64_t snap
    cdef uint16_t ethertype = 0
    if not ok:
        _by_ethertype(d, start, 0, False, end, lk)
        return
    control = d[start]
    flags = d[start + 1]
    subtype = control >> 4
    data = ((control >> 2) & 3) == 2 and (subtype & 0x4) == 0 and (flags & 0x40) == 0
    qos = (subtype & 0x8) != 0
    snap = start + 24
    if (flags & 3) == 3:
        snap += 6
    if qos:
        snap += 2
        if flags & 0x80:
            snap += 4
    has = data and snap + 8 <= end
    if has:
        kind = d[snap + 5]
        if _be16(d, snap) == 0xAAAA and d[snap + 2] == 0x03 and _be16(d, snap + 3) == 0 \
                and (kind == 0 or kind == 0xF8):
            ethertype = _be16(d, snap + 6)
    _by_ethertype(d, snap + 8, ethertype, (not data) or has, end, lk)


cdef void _family(int64_t start, uint32_t family, bint ok, Link* lk) noexcept nogil:
    """native._family_link: a 4-byte address family (BSD loopback)."""
    lk.l3 = start + 4
    lk.encap = 0
    lk.depth = 0
    lk.version = 0
    if ok:
        if family == 2:
            lk.version = 4
        elif family == 24 or family == 28 or family == 30:
            lk.version = 6
        lk.status = S_OK if lk.version else S_NON_IP
    else:
        lk.status = S_TRUNCATED


cdef void _link(const uint8_t* d, int64_t mode, int64_t start, int64_t end,
                Link* lk) noexcept nogil:
    """native._link: where IP starts, by link type (or tunnel payload mode)."""
    cdef bint ok
    cdef uint32_t family
    cdef int64_t header_len, inner
    cdef uint32_t dlt
    lk.l3 = start
    lk.encap = 0
    lk.depth = 0
    lk.version = 0
    lk.status = S_OK
    if mode == L_ETHERNET:
        _ethernet(d, start, end, lk)
    elif mode == L_LINUX_SLL:
        _ethertype_link(d, start, end, 14, 16, lk)
    elif mode == L_LINUX_SLL2:
        _ethertype_link(d, start, end, 0, 20, lk)
    elif mode == L_NULL or mode == L_LOOP:
        ok = start + 4 <= end
        family = 0
        if ok:
            if mode == L_NULL:  # the writer's byte order: a family above 0xFFFF was swapped
                family = _le32(d, start)
                if family > 0xFFFF:
                    family = _bswap32(family)
            else:
                family = _be32(d, start)
        _family(start, family, ok, lk)
    elif mode == L_RAW or mode == L_RAW_DLT12 or mode == L_RAW_DLT14:
        lk.version = SNIFF
    elif mode == L_IPV4:
        lk.version = 4
    elif mode == L_IPV6:
        lk.version = 6
    elif mode == L_PPP:
        _ppp(d, start, end, lk)
    elif mode == L_C_HDLC:
        _ethertype_link(d, start, end, 2, 4, lk)
    elif mode == L_IEEE802_11:
        _dot11(d, start, end, lk)
    elif mode == MODE_MPLS:
        _by_ethertype(d, start, 0x8847, True, end, lk)
    elif mode == L_PPI:
        # native._ppi: a little-endian header naming the link type that follows
        if start + 8 > end:
            lk.status = S_TRUNCATED
            return
        header_len = d[start + 2] | ((<int64_t>d[start + 3]) << 8)
        dlt = _le32(d, start + 4)
        inner = start + header_len
        lk.l3 = inner
        if d[start] != 0 or header_len < 8:
            lk.status = S_MALFORMED
        elif inner > end:
            lk.status = S_TRUNCATED
        elif dlt == L_PPI:
            lk.status = S_UNSUPPORTED
        else:
            _link(d, dlt, inner, end, lk)
    else:
        lk.status = S_UNSUPPORTED


cdef inline uint8_t _limit(int64_t need, int64_t declared_end, int64_t end) noexcept nogil:
    """native._limit_status: MALFORMED past the declared length, TRUNCATED past caplen."""
    if need > declared_end:
        return S_MALFORMED
    if need > end:
        return S_TRUNCATED
    return S_OK


cdef void _ipv4(const uint8_t* d, Row* r, int64_t l3) noexcept nogil:
    """native._ipv4 (a failed header's fields are cleared afterwards)."""
    cdef int64_t header_len, total_len
    cdef uint16_t frag, offset
    if l3 + 20 > r.end:
        r.status = S_TRUNCATED
        return
    header_len = (d[l3] & 0x0F) * 4
    total_len = _be16(d, l3 + 2)
    if header_len < 20 or (total_len != 0 and total_len < header_len):
        r.status = S_MALFORMED
        return
    if l3 + header_len > r.end:
        r.status = S_TRUNCATED
        return
    frag = _be16(d, l3 + 6)
    offset = frag & 0x1FFF
    r.status = S_FRAGMENT if offset != 0 else S_OK
    r.ip_version = 4
    r.ip_proto = d[l3 + 9]
    r.src_lo = (<uint64_t>_be32(d, l3 + 12)) | IPV4_MAPPED
    r.dst_lo = (<uint64_t>_be32(d, l3 + 16)) | IPV4_MAPPED
    r.frag_id = _be16(d, l3 + 4)
    r.first = offset == 0 and (frag & 0x2000) != 0
    r.l4 = l3 + header_len
    r.declared_end = UNKNOWN_LIMIT if total_len == 0 else l3 + total_len


cdef void _ipv6(const uint8_t* d, Row* r, int64_t l3) noexcept nogil:
    """native._ipv6 and _ipv6_chain: the header, then up to 8 extension headers."""
    cdef int64_t payload_len, pos, need, size
    cdef uint8_t next_header, current, following, problem
    cdef uint16_t word
    cdef bint active
    cdef int i
    if l3 + 40 > r.end:
        r.status = S_TRUNCATED
        return
    payload_len = _be16(d, l3 + 4)
    r.declared_end = UNKNOWN_LIMIT if payload_len == 0 else l3 + 40 + payload_len
    next_header = d[l3 + 6]
    pos = l3 + 40
    r.status = S_OK
    active = _is_ext(next_header)
    for i in range(MAX_IPV6_EXTENSION_HEADERS):
        if not active:
            break
        current = next_header
        need = pos + (8 if current == 44 else 2)
        problem = _limit(need, r.declared_end, r.end)
        if problem != S_OK:
            r.status = problem
            active = False
            break
        following = d[pos]
        if current == 51:
            size = (d[pos + 1] + 2) * 4
        else:
            size = (d[pos + 1] + 1) * 8
        if current == 44:
            size = 8
            word = _be16(d, pos + 2)
            r.frag_id = _be32(d, pos + 4)
            r.first = (word >> 3) == 0 and (word & 1) != 0
            if (word >> 3) != 0:
                r.status = S_FRAGMENT
                active = False
        next_header = following
        pos += size
        active = active and _is_ext(following)
    if active:  # a longer chain than MAX_IPV6_EXTENSION_HEADERS
        r.status = S_MALFORMED
    r.ip_version = 6
    r.ip_proto = next_header
    r.src_hi = _be64(d, l3 + 8)
    r.src_lo = _be64(d, l3 + 16)
    r.dst_hi = _be64(d, l3 + 24)
    r.dst_lo = _be64(d, l3 + 32)
    r.l4 = pos


cdef void _transport(const uint8_t* d, const uint8_t* carried, Row* r) noexcept nogil:
    """native._transport: ports (and TCP flags) of an OK packet."""
    cdef uint8_t proto = r.ip_proto
    cdef int64_t l4 = r.l4
    cdef uint8_t problem
    cdef bint tcp = proto == 6
    if carried[proto] == NO_TRANSPORT:
        r.status = S_ICMP if (proto == 1 or proto == 58) else S_OTHER_IP
        return
    problem = _limit(l4 + (14 if tcp else 4), r.declared_end, r.end)
    if problem != S_OK:
        r.status = problem
        return
    r.src_port = _be16(d, l4)
    r.dst_port = _be16(d, l4 + 2)
    if tcp:
        r.tcp_flags = d[l4 + 13]


cdef void _decode_level(const uint8_t* d, const uint8_t* carried, int64_t mode,
                        int64_t start, int64_t end, bint whole, Row* r) noexcept nogil:
    """native._decode_level for one packet (or tunnel payload): link, IP, transport."""
    cdef Link lk
    cdef uint8_t nibble, version
    memset(r, 0, sizeof(Row))
    r.end = end
    _link(d, mode, start, end, &lk)
    r.status = lk.status
    r.encap = lk.encap
    r.depth = lk.depth
    if r.status == S_OK:  # native._check_versions
        if lk.l3 + 1 > end:
            r.status = S_TRUNCATED
        else:
            nibble = d[lk.l3] >> 4
            version = nibble if lk.version == SNIFF else lk.version
            if nibble != version or (version != 4 and version != 6):
                r.status = S_MALFORMED
            elif version == 4:
                _ipv4(d, r, lk.l3)
            else:
                _ipv6(d, r, lk.l3)
    if r.status == S_OK:
        _transport(d, carried, r)
    if r.status == S_TRUNCATED and whole:
        r.status = S_MALFORMED
    if r.status > S_OTHER_IP:  # native._clear_failed
        r.ip_version = 0
        r.ip_proto = 0
        r.src_hi = 0
        r.src_lo = 0
        r.dst_hi = 0
        r.dst_lo = 0
        r.frag_id = 0
        r.first = 0
        r.encap = 0


cdef bint _gtpu(const uint8_t* d, int64_t pay, int64_t limit, int64_t* start) noexcept nogil:
    """native._udp_tunnels, GTP-U: a G-PDU header and its extension headers."""
    cdef uint8_t first = d[pay]
    cdef int64_t p = pay + 8
    cdef int64_t size
    cdef uint8_t following = 0
    cdef int i
    if (first >> 5) != 1 or (first & 0x10) == 0 or d[pay + 1] != 255:
        return False
    if first & 0x07:  # sequence, N-PDU, next extension: 4 more bytes
        if p + 4 > limit:
            return False
        p += 4
        if first & 0x04:
            following = d[p - 1]
    for i in range(MAX_GTP_EXTENSION_HEADERS):
        if following == 0:
            break
        if p + 1 > limit:
            return False
        size = d[p] * 4
        if size == 0 or p + size > limit:
            return False
        following = d[p + size - 1]
        p += size
    if following != 0:  # longer chains than MAX_GTP_EXTENSION_HEADERS stay shut
        return False
    start[0] = p
    return True


cdef bint _gre(const uint8_t* d, int64_t p, int64_t limit, int64_t* start, int64_t* mode,
               uint8_t* kind) noexcept nogil:
    """native._gre: GRE version 0 by protocol type; ERSPAN I/II (0x88BE) and III (0x22EB)."""
    cdef uint16_t bits, proto
    cdef int64_t size, header, at
    cdef bint erspan2, erspan3, sequenced, has
    if p + 4 > limit:
        return False
    bits = _be16(d, p)
    proto = _be16(d, p + 2)
    if bits & 0x4007:  # routing (deprecated), or a version other than 0
        return False
    size = 4 + 4 * (((bits >> 15) & 1) + ((bits >> 13) & 1) + ((bits >> 12) & 1))
    mode[0] = _gre_mode(proto)
    kind[0] = E_GRE
    erspan2 = proto == 0x88BE
    erspan3 = proto == 0x22EB
    sequenced = (bits & 0x1000) != 0
    header = 8 if (erspan2 and sequenced) else (12 if erspan3 else 0)
    at = p + size
    has = at + header <= limit
    if erspan2 and sequenced and not (has and (d[at] >> 4) == 1):
        return False
    if erspan3:
        if not (has and (d[at] >> 4) == 2):
            return False
        if d[at + 11] & 1:  # the O flag: an 8-byte platform subheader
            header += 8
    if erspan2 or erspan3:
        mode[0] = L_ETHERNET
        kind[0] = E_ERSPAN
    start[0] = at + header
    return mode[0] != 0 and start[0] <= limit


cdef bint _tunnel(const uint8_t* d, Row* r, int64_t* start, int64_t* mode,
                  uint8_t* kind) noexcept nogil:
    """native._tunnel_entries for one row: whether it is a tunnel we open, and how."""
    cdef int64_t limit = r.end if r.end < r.declared_end else r.declared_end
    cdef int64_t pay, size
    cdef uint16_t port
    cdef uint8_t first
    if r.first:  # only the whole datagram holds the inner packet
        return False
    if r.status == S_OK and r.ip_proto == 17:
        if _is_tunnel_port(r.dst_port):
            port = r.dst_port
        elif _is_tunnel_port(r.src_port):
            port = r.src_port
        else:
            return False
        pay = r.l4 + 8
        if pay + 8 > limit:
            return False
        if port == 4789:  # flags, reserved, VNI, reserved: then Ethernet
            start[0] = pay + 8
            mode[0] = L_ETHERNET
            kind[0] = E_VXLAN
            return True
        if port == 6081:  # version, option length (4-byte words), protocol type
            first = d[pay]
            size = 8 + (first & 0x3F) * 4
            mode[0] = _gre_mode(_be16(d, pay + 2))
            start[0] = pay + size
            kind[0] = E_GENEVE
            return (first >> 6) == 0 and pay + size <= limit and mode[0] != 0
        mode[0] = L_RAW
        kind[0] = E_GTPU
        return _gtpu(d, pay, limit, start)
    if r.status == S_OTHER_IP:
        if r.ip_proto == 47:
            return _gre(d, r.l4, limit, start, mode, kind)
        if r.ip_proto == 4:
            start[0] = r.l4
            mode[0] = L_IPV4
            kind[0] = E_IPIP
            return True
        if r.ip_proto == 41:
            start[0] = r.l4
            mode[0] = L_IPV6
            kind[0] = E_IP6IP
            return True
    return False


cdef inline void _put(uint8_t* at, const int64_t* off, Row* r) noexcept nogil:
    """One TUNNEL_DTYPE record (host byte order), columns as ``COLUMNS``."""
    memcpy(at + off[0], &r.status, 1)
    memcpy(at + off[1], &r.ip_version, 1)
    memcpy(at + off[2], &r.ip_proto, 1)
    memcpy(at + off[3], &r.tcp_flags, 1)
    memcpy(at + off[4], &r.src_port, 2)
    memcpy(at + off[5], &r.dst_port, 2)
    memcpy(at + off[6], &r.encap, 2)
    memcpy(at + off[7], &r.src_hi, 8)
    memcpy(at + off[8], &r.src_lo, 8)
    memcpy(at + off[9], &r.dst_hi, 8)
    memcpy(at + off[10], &r.dst_lo, 8)


def decode(const uint8_t[::1] data, const int64_t[::1] start, const int64_t[::1] end,
           const uint32_t[::1] wirelen, const int64_t[::1] modes, const uint8_t[::1] carried,
           uint8_t[::1] status, uint8_t[::1] ip_version, uint8_t[::1] ip_proto,
           uint64_t[::1] src_hi, uint64_t[::1] src_lo, uint64_t[::1] dst_hi,
           uint64_t[::1] dst_lo, uint16_t[::1] src_port, uint16_t[::1] dst_port,
           uint8_t[::1] tcp_flags, uint32_t[::1] frag_id, uint8_t[::1] first,
           uint16_t[::1] encap, uint8_t[::1] layers, const int64_t[::1] offsets,
           Py_ssize_t itemsize, int64_t[::1] layer_packet, uint8_t[::1] layer_depth):
    """Decode packet ``i`` = ``data[start[i]:end[i]]`` into row ``i`` of the columns.

    ``modes`` is each packet's link type; ``carried`` is ``TRANSPORT_OF_PROTO``.
    The outer layers of opened tunnels go to ``layers`` (raw ``TUNNEL_DTYPE``
    records of ``itemsize`` bytes, columns at ``offsets`` in ``COLUMNS``
    order), one per layer, with their packet and depth (0: outermost) in
    ``layer_packet``/``layer_depth``. Returns how many layers were written.
    """
    cdef Py_ssize_t n = start.shape[0]
    cdef Py_ssize_t size = data.shape[0]
    cdef Py_ssize_t cap = layer_packet.shape[0]
    cdef Py_ssize_t i, m = 0, bad = -1
    cdef int level, k
    cdef bint whole
    cdef int64_t s, e, inner_start, mode
    cdef uint8_t kind
    cdef uint32_t shift, stack
    cdef Row cur, inner
    cdef const uint8_t* d
    cdef uint8_t* out_layers
    cdef const int64_t* off = &offsets[0] if offsets.shape[0] else NULL
    cdef Py_ssize_t rows[16]
    rows[:] = [end.shape[0], wirelen.shape[0], modes.shape[0], status.shape[0],
               ip_version.shape[0], ip_proto.shape[0], src_hi.shape[0], src_lo.shape[0],
               dst_hi.shape[0], dst_lo.shape[0], src_port.shape[0], dst_port.shape[0],
               tcp_flags.shape[0], frag_id.shape[0], first.shape[0], encap.shape[0]]
    for k in range(16):
        if rows[k] != n:
            raise ValueError(f"a column has {rows[k]} rows, start has {n}")
    if carried.shape[0] != 256 or offsets.shape[0] != TUNNEL_FIELDS:
        raise ValueError("carried needs 256 entries and offsets one per column")
    if layer_depth.shape[0] != cap or layers.shape[0] < cap * itemsize or cap < 4 * n:
        raise ValueError(f"room for {cap} layers is less than {MAX_ENCAPSULATIONS} per packet")
    for k in range(TUNNEL_FIELDS):
        if off[k] < 0 or off[k] + 8 > itemsize:
            raise ValueError(f"column offset {off[k]} does not fit a {itemsize}-byte record")
    if n == 0:
        return 0
    if size == 0:
        raise ValueError("packets in an empty buffer")
    d = &data[0]
    out_layers = &layers[0] if layers.shape[0] else NULL
    with nogil:
        for i in range(n):
            s = start[i]
            e = end[i]
            if not (0 <= s <= e <= size):
                bad = i
                break
            if i + PREFETCH_AHEAD < n and 0 <= start[i + PREFETCH_AHEAD] < size - 64:
                __builtin_prefetch(d + start[i + PREFETCH_AHEAD])  # a hint, never a read
                __builtin_prefetch(d + start[i + PREFETCH_AHEAD] + 63)
            whole = (e - s) >= <int64_t>wirelen[i]
            _decode_level(d, &carried[0], modes[i], s, e, whole, &cur)
            # native._decapsulate: open tunnels while the inner packet carries IP
            for level in range(MAX_ENCAPSULATIONS):
                if not _tunnel(d, &cur, &inner_start, &mode, &kind):
                    break
                _decode_level(d, &carried[0], mode, inner_start,
                              cur.end if cur.end < cur.declared_end else cur.declared_end,
                              whole, &inner)
                if inner.status > S_OTHER_IP \
                        or cur.depth + 1 + inner.depth > MAX_ENCAPSULATIONS:
                    break
                _put(out_layers + m * itemsize, off, &cur)
                layer_packet[m] = i
                layer_depth[m] = level
                m += 1
                shift = 4 * cur.depth
                stack = (<uint32_t>cur.encap) | ((<uint32_t>kind) << shift) \
                    | ((<uint32_t>inner.encap) << (shift + 4))
                inner.encap = <uint16_t>stack
                inner.depth = cur.depth + 1 + inner.depth
                cur = inner
            status[i] = cur.status
            ip_version[i] = cur.ip_version
            ip_proto[i] = cur.ip_proto
            src_hi[i] = cur.src_hi
            src_lo[i] = cur.src_lo
            dst_hi[i] = cur.dst_hi
            dst_lo[i] = cur.dst_lo
            src_port[i] = cur.src_port
            dst_port[i] = cur.dst_port
            tcp_flags[i] = cur.tcp_flags
            frag_id[i] = cur.frag_id
            first[i] = cur.first
            encap[i] = cur.encap
    if bad >= 0:
        raise ValueError(f"packet {bad} spans {start[bad]}:{end[bad]}, outside {size} bytes")
    return m
