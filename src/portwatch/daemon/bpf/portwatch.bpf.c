// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only)
/*
 * portwatch: count flows by IANA service port in the kernel.
 *
 * A socket filter attached to an AF_PACKET socket (one per watched
 * interface). It parses each frame, finds its flow in an LRU hash, decides
 * the flow's service port with the rules of `portwatch analyze`
 * (handshake, registry, dynamic range, lower port) and adds the packet to
 * per-CPU counters indexed by transport * 65536 + service port. It returns
 * 0: nothing is ever queued to the socket or copied to user space.
 *
 * Self-contained on purpose (no libbpf-dev headers, no vmlinux.h, no CO-RE):
 * a socket filter reads the packet with bpf_skb_load_bytes and the stable
 * __sk_buff fields only, so one object loads on every kernel with BTF-defined
 * maps and bpf_ktime_get_coarse_ns (5.11+), and it builds with any clang that
 * targets BPF.
 *
 * Layout of every map and struct here is mirrored in
 * src/portwatch/daemon/ebpf.py: change both together.
 */

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef long long __s64;

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
#define __always_inline inline __attribute__((always_inline))

/* Helper ids are kernel ABI (include/uapi/linux/bpf.h). */
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value,
                                   __u64 flags) = (void *)2;
/* CLOCK_MONOTONIC at tick resolution (Linux 5.11+): a few ns where
 * bpf_ktime_get_ns (5) costs ~25 ns per packet here, and the flow timeouts
 * are seconds, so one tick (1-10 ms) of error is immaterial. */
static __u64 (*bpf_ktime_get_coarse_ns)(void) = (void *)160;
static long (*bpf_skb_load_bytes)(const void *skb, __u32 offset, void *to, __u32 len) =
    (void *)26;

enum { BPF_MAP_TYPE_HASH = 1, BPF_MAP_TYPE_ARRAY = 2, BPF_MAP_TYPE_PERCPU_HASH = 5,
       BPF_MAP_TYPE_PERCPU_ARRAY = 6, BPF_MAP_TYPE_LRU_HASH = 9 };
enum { BPF_ANY = 0, BPF_NOEXIST = 1 };
#define BPF_F_MMAPABLE (1U << 10)

/* The prefix of struct __sk_buff this program reads (uapi, stable). */
struct __sk_buff {
    __u32 len;
    __u32 pkt_type;
    __u32 mark;
    __u32 queue_mapping;
    __u32 protocol;
    __u32 vlan_present;
    __u32 vlan_tci;
    __u32 vlan_proto;
    __u32 priority;
    __u32 ingress_ifindex;
    __u32 ifindex;
};

/* Transport values: portwatch.ports.Transport. */
#define T_TCP 0
#define T_UDP 1
#define T_SCTP 2
#define T_DCCP 3
#define NPORTS 65536
#define FIRST_DYNAMIC 49152

/* Portless reasons: portwatch.decode.native.DecodeStatus. */
#define S_OK 0
#define S_ICMP 1
#define S_FRAGMENT 2
#define S_OTHER_IP 3
#define S_NON_IP 4
#define S_TRUNCATED 5
#define S_UNSUPPORTED_LINK 6
#define S_MALFORMED 7
#define NSTATUS 8

#define PORT_ASSIGNED 1 /* portwatch.ports.PortStatus.ASSIGNED */
#define MAX_VLAN_TAGS 4 /* decode.native.MAX_VLAN_TAGS */
#define MAX_IPV6_EXT 8  /* decode.native.MAX_IPV6_EXTENSION_HEADERS */

#define SIDE_UNKNOWN 0
#define SIDE_A 1
#define SIDE_B 2

struct flow_key {
    __u32 a[4];
    __u32 b[4];
    __u16 pa;
    __u16 pb;
    __u8 t;
    __u8 pad[3];
};

/* `slot` caches the flow's counter slot (transport * NPORTS + service port)
 * as decided under registry generation `gen` with `side`: a packet of a known
 * flow then reads neither the registry nor `touched`. (`gen` is 16 bits: a
 * flow would miss a refresh only if exactly 65,536 of them happened while it
 * lived.) */
struct flow_val {
    __u64 first_ns;
    __u64 last_ns;
    __u32 slot;
    __u16 gen;
    __u8 side;
    __u8 pad;
};

struct frag_key {
    __u32 src[4];
    __u32 dst[4];
    __u32 id;
    __u8 proto;
    __u8 pad[3];
};

struct frag_val {
    struct flow_key flow;
    __u8 from_a;
    __u8 pad[7];
};

struct counts {
    __u64 packets;
    __u64 bytes;
    __u64 flows;
};

struct registry {
    __u8 status[4][NPORTS]; /* PortStatus per (transport, port) */
};

struct config {
    __u64 idle_ns[4]; /* per Transport; a flow idle longer is new again */
    __u64 active_ns;  /* a flow older than this is new again */
    __u64 gen;        /* bumped by user space with each registry refresh */
};

/* Stats slots (the `stats` per-CPU array). */
#define ST_UNUSED 0 /* was: frames received; see `received` */
#define ST_NEW_FLOWS 1      /* inserts into `flows`: minus its size = LRU evictions */
#define ST_FRAG_ATTRIBUTED 2
#define ST_NO_REGISTRY 3    /* packets seen before user space filled `registry` */
#define NSTATS 4

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 100000); /* set from [flows] max_flows before load */
    __type(key, struct flow_key);
    __type(value, struct flow_val);
} flows SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536); /* analysis.analyzer.MAX_PENDING_FRAGMENTS */
    __type(key, struct frag_key);
    __type(value, struct frag_val);
} fragments SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 4 * NPORTS);
    __type(key, __u32);
    __type(value, struct counts);
} traffic SEC(".maps");

/* 1 once a `traffic` slot was first used: user space maps it and reads only the
 * blocks of `traffic` that hold used slots (a full read costs ~25 ms). */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 4 * NPORTS);
    __uint(map_flags, BPF_F_MMAPABLE);
    __type(key, __u32);
    __type(value, __u8);
} touched SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, NSTATUS);
    __type(key, __u32);
    __type(value, struct counts);
} portless SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, NSTATS);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

/* Frames per interface, by ifindex modulo IFSLOTS: an array lookup is inlined by
 * the verifier, a hash lookup is a call (user space refuses two watched
 * interfaces that share a slot). */
#define IFSLOTS 4096
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, IFSLOTS);
    __type(key, __u32);
    __type(value, __u64);
} received SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct registry);
} registry SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct config);
} config SEC(".maps");

struct parsed {
    struct flow_key key; /* src in a, dst in b until canonical() */
    struct frag_key frag;
    __u8 status;
    __u8 tcp_flags;
    __u8 first_fragment;
};

static __always_inline __u16 be16(const __u8 *p) { return ((__u16)p[0] << 8) | p[1]; }

static __always_inline void bump(void *map, __u32 slot, __u64 n)
{
    __u64 *v = bpf_map_lookup_elem(map, &slot);
    if (v)
        *v += n;
}

static __always_inline void add(void *map, __u32 slot, __u64 packets, __u64 bytes, __u64 flows_)
{
    struct counts *c = bpf_map_lookup_elem(map, &slot);
    if (c) {
        c->packets += packets;
        c->bytes += bytes;
        c->flows += flows_;
    }
}

static __always_inline void mark_touched(__u32 slot)
{
    __u8 *seen = bpf_map_lookup_elem(&touched, &slot);
    if (seen && !*seen)
        *seen = 1;
}

static __always_inline void count(__u32 slot, __u64 bytes, __u64 is_new)
{
    mark_touched(slot);
    add(&traffic, slot, 1, bytes, is_new);
}

static __always_inline int transport_of(__u8 proto)
{
    switch (proto) {
    case 6: return T_TCP;
    case 17: return T_UDP;
    case 132: return T_SCTP;
    case 33: return T_DCCP;
    }
    return -1;
}

/* Upper layer at `l4` (end of packet `end`, IP's declared end `dend`). */
static __always_inline void parse_l4(struct __sk_buff *skb, struct parsed *p, __u8 proto,
                                     __u32 l4, __u32 end, __u32 dend)
{
    __u8 h[14];
    int t = transport_of(proto);
    if (proto == 1 || proto == 58) {
        p->status = S_ICMP;
        return;
    }
    if (t < 0) {
        p->status = S_OTHER_IP;
        return;
    }
    __u32 need = t == T_TCP ? 14 : 4;
    if (l4 + need > dend) {
        p->status = S_MALFORMED;
        return;
    }
    if (l4 + need > end || bpf_skb_load_bytes(skb, l4, h, t == T_TCP ? 14 : 4) < 0) {
        p->status = S_TRUNCATED;
        return;
    }
    p->key.t = t;
    p->key.pa = be16(h);
    p->key.pb = be16(h + 2);
    p->tcp_flags = t == T_TCP ? h[13] : 0;
    p->status = S_OK;
}

static __always_inline void parse_ipv4(struct __sk_buff *skb, struct parsed *p, __u32 l3,
                                       __u32 end)
{
    __u8 h[20];
    if (l3 + 20 > end || bpf_skb_load_bytes(skb, l3, h, 20) < 0) {
        p->status = S_TRUNCATED;
        return;
    }
    __u32 ihl = (h[0] & 0x0f) * 4;
    __u32 total = be16(h + 2);
    if ((h[0] >> 4) != 4 || ihl < 20 || total < ihl) {
        p->status = S_MALFORMED;
        return;
    }
    __u32 dend = l3 + total;
    if (l3 + ihl > end) {
        p->status = S_TRUNCATED;
        return;
    }
    p->key.a[2] = p->key.b[2] = 0xffff0000; /* ::ffff:a.b.c.d, network order in memory */
    __builtin_memcpy(&p->key.a[3], h + 12, 4);
    __builtin_memcpy(&p->key.b[3], h + 16, 4);
    __u16 frag = be16(h + 6);
    __u16 offset = frag & 0x1fff;
    __u8 proto = h[9];
    __builtin_memcpy(p->frag.src, p->key.a, 16);
    __builtin_memcpy(p->frag.dst, p->key.b, 16);
    p->frag.id = be16(h + 4);
    p->frag.proto = proto;
    if (offset) {
        p->status = S_FRAGMENT;
        return;
    }
    p->first_fragment = (frag & 0x2000) != 0;
    parse_l4(skb, p, proto, l3 + ihl, end, dend);
}

static __always_inline int is_ext(__u8 nh)
{
    return nh == 0 || nh == 43 || nh == 44 || nh == 60 || nh == 51 || nh == 135 ||
           nh == 139 || nh == 140;
}

static __always_inline void parse_ipv6(struct __sk_buff *skb, struct parsed *p, __u32 l3,
                                       __u32 end)
{
    __u8 h[40];
    if (l3 + 40 > end || bpf_skb_load_bytes(skb, l3, h, 40) < 0) {
        p->status = S_TRUNCATED;
        return;
    }
    if ((h[0] >> 4) != 6) {
        p->status = S_MALFORMED;
        return;
    }
    __u32 plen = be16(h + 4);
    __u32 dend = plen ? l3 + 40 + plen : 0xffffffff;
    __u8 nh = h[6];
    __builtin_memcpy(p->key.a, h + 8, 16);
    __builtin_memcpy(p->key.b, h + 24, 16);
    __builtin_memcpy(p->frag.src, h + 8, 16);
    __builtin_memcpy(p->frag.dst, h + 24, 16);
    __u32 pos = l3 + 40;
    int i;
    for (i = 0; i < MAX_IPV6_EXT; i++) {
        __u8 e[8];
        if (!is_ext(nh))
            break;
        __u32 need = nh == 44 ? 8 : 2;
        if (pos + need > dend) {
            p->status = S_MALFORMED;
            return;
        }
        if (pos + need > end || bpf_skb_load_bytes(skb, pos, e, 8 > end - pos ? 2 : 8) < 0) {
            p->status = S_TRUNCATED;
            return;
        }
        __u32 size;
        if (nh == 44) {
            __u16 word = be16(e + 2);
            p->frag.id = ((__u32)e[4] << 24) | ((__u32)e[5] << 16) | ((__u32)e[6] << 8) | e[7];
            p->frag.proto = e[0];
            size = 8;
            if (word >> 3) {
                p->status = S_FRAGMENT;
                return;
            }
            p->first_fragment = word & 1;
        } else if (nh == 51) {
            size = ((__u32)e[1] + 2) * 4;
        } else {
            size = ((__u32)e[1] + 1) * 8;
        }
        nh = e[0];
        pos += size;
    }
    if (i == MAX_IPV6_EXT && is_ext(nh)) {
        p->status = S_MALFORMED;
        return;
    }
    p->frag.proto = nh;
    parse_l4(skb, p, nh, pos, end, dend);
}

/* The common case in one helper call: untagged Ethernet, IPv4 without options,
 * not a fragment, a transport with ports, all inside the first 54 bytes. 1 if
 * it applied; otherwise parse() walks the frame field by field. */
static __always_inline int parse_fast(struct __sk_buff *skb, struct parsed *p, __u32 end)
{
    __u8 h[54];
    if (end < 54 || bpf_skb_load_bytes(skb, 0, h, 54) < 0)
        return 0;
    if (h[12] != 0x08 || h[13] != 0x00 || h[14] != 0x45 || (h[20] & 0x3f) || h[21])
        return 0; /* not IPv4, options, or MF / a fragment offset */
    int t = transport_of(h[23]);
    __u32 need = t == T_TCP ? 34 : 24; /* IP header + what parse_l4 reads */
    if (t < 0 || be16(h + 16) < need)
        return 0;
    p->key.a[2] = p->key.b[2] = 0xffff0000;
    __builtin_memcpy(&p->key.a[3], h + 26, 4);
    __builtin_memcpy(&p->key.b[3], h + 30, 4);
    p->key.t = t;
    p->key.pa = be16(h + 34);
    p->key.pb = be16(h + 36);
    p->tcp_flags = t == T_TCP ? h[47] : 0;
    p->status = S_OK;
    return 1;
}

static __always_inline void parse(struct __sk_buff *skb, struct parsed *p, __u32 *extra)
{
    __u8 eth[4];
    __u32 end = skb->len;
    *extra = skb->vlan_present ? 4 : 0;
    if (parse_fast(skb, p, end))
        return;
    if (end < 14 || bpf_skb_load_bytes(skb, 12, eth, 2) < 0) {
        p->status = S_TRUNCATED;
        return;
    }
    __u16 type = be16(eth);
    __u32 l3 = 14;
    int i;
    /* The kernel may have moved the outer tag out of the frame (skb->vlan_tci):
     * it was on the wire, so it counts in the bytes (*extra above). */
    for (i = 0; i < MAX_VLAN_TAGS; i++) {
        if (type != 0x8100 && type != 0x88a8 && type != 0x9100)
            break;
        if (l3 + 4 > end || bpf_skb_load_bytes(skb, l3 + 2, eth, 2) < 0) {
            p->status = S_TRUNCATED;
            return;
        }
        type = be16(eth);
        l3 += 4;
    }
    if (type == 0x8100 || type == 0x88a8 || type == 0x9100) {
        p->status = S_MALFORMED;
        return;
    }
    if (type == 0x0800)
        parse_ipv4(skb, p, l3, end);
    else if (type == 0x86dd)
        parse_ipv6(skb, p, l3, end);
    else
        p->status = S_NON_IP;
}

/* Order the endpoints so that both directions meet in one key; 1 if src is A. */
static __always_inline int canonical(struct flow_key *k)
{
    int swap = 0, i;
    for (i = 0; i < 4; i++) {
        __u32 x = __builtin_bswap32(k->a[i]), y = __builtin_bswap32(k->b[i]);
        if (x != y) {
            swap = x > y;
            goto decided;
        }
    }
    swap = k->pa > k->pb;
decided:
    if (swap) {
        __u32 tmp[4];
        __u16 port = k->pa;
        __builtin_memcpy(tmp, k->a, 16);
        __builtin_memcpy(k->a, k->b, 16);
        __builtin_memcpy(k->b, tmp, 16);
        k->pa = k->pb;
        k->pb = port;
    }
    return !swap;
}

static __always_inline __u16 service_port(const struct flow_key *k, __u8 side)
{
    if (side == SIDE_A)
        return k->pa;
    if (side == SIDE_B)
        return k->pb;
    __u32 zero = 0;
    struct registry *reg = bpf_map_lookup_elem(&registry, &zero);
    if (reg) {
        int aa = reg->status[k->t & 3][k->pa] == PORT_ASSIGNED;
        int ab = reg->status[k->t & 3][k->pb] == PORT_ASSIGNED;
        if (aa != ab)
            return aa ? k->pa : k->pb;
    }
    int da = k->pa >= FIRST_DYNAMIC, db = k->pb >= FIRST_DYNAMIC;
    if (da != db)
        return da ? k->pb : k->pa;
    return k->pa <= k->pb ? k->pa : k->pb;
}

SEC("socket")
int portwatch_count(struct __sk_buff *skb)
{
    struct parsed p = {};
    __u32 extra = 0;
    __u32 zero = 0;
    parse(skb, &p, &extra);
    __u64 wire = (__u64)skb->len + extra;
    bump(&received, skb->ifindex % IFSLOTS, 1);

    if (p.status == S_FRAGMENT) {
        struct frag_val *fv = bpf_map_lookup_elem(&fragments, &p.frag);
        struct flow_val *f = fv ? bpf_map_lookup_elem(&flows, &fv->flow) : 0;
        if (!fv || !f) {
            add(&portless, S_FRAGMENT, 1, wire, 0);
            return 0;
        }
        f->last_ns = bpf_ktime_get_coarse_ns();
        __u16 port = service_port(&fv->flow, f->side);
        count((__u32)(fv->flow.t & 3) * NPORTS + port, wire, 0);
        bump(&stats, ST_FRAG_ATTRIBUTED, 1);
        return 0;
    }
    if (p.status != S_OK) {
        add(&portless, p.status & 7, 1, wire, 0);
        return 0;
    }

    int from_a = canonical(&p.key);
    struct config *cfg = bpf_map_lookup_elem(&config, &zero);
    if (!cfg)
        return 0; /* cannot happen: a one-element array */
    __u64 now = bpf_ktime_get_coarse_ns();
    __u16 gen = (__u16)cfg->gen;
    __u8 side = SIDE_UNKNOWN;
    if (p.key.t == T_TCP && (p.tcp_flags & 0x02)) {
        /* SYN goes to the service, SYN-ACK comes from it. */
        int service_is_a = (p.tcp_flags & 0x10) ? from_a : !from_a;
        side = service_is_a ? SIDE_A : SIDE_B;
    }
    __u64 is_new = 0;
    __u32 slot;
    struct flow_val *f = bpf_map_lookup_elem(&flows, &p.key);
    if (!f) {
        /* The whole value in one update; no second lookup. */
        slot = (__u32)(p.key.t & 3) * NPORTS + service_port(&p.key, side);
        struct flow_val init = {.first_ns = now, .last_ns = now, .slot = slot, .gen = gen,
                                .side = side};
        if (bpf_map_update_elem(&flows, &p.key, &init, BPF_NOEXIST) == 0) {
            mark_touched(slot);
            add(&traffic, slot, 1, wire, 1);
            bump(&stats, ST_NEW_FLOWS, 1);
            goto counted;
        }
        /* Another CPU inserted it first: count with its entry. */
        f = bpf_map_lookup_elem(&flows, &p.key);
        if (!f)
            return 0; /* cannot happen short of a concurrent eviction */
    }
    /* Signed: another CPU may have stored a clock read a moment later than ours. */
    if ((__s64)(now - f->last_ns) > (__s64)cfg->idle_ns[p.key.t & 3] ||
        (__s64)(now - f->first_ns) > (__s64)cfg->active_ns) {
        /* Expired: the user-space engine would have forgotten it; count it again. */
        f->first_ns = now;
        f->side = SIDE_UNKNOWN;
        is_new = 1;
    }
    if ((__s64)(now - f->last_ns) > 0)
        f->last_ns = now; /* once per tick: no store (and no shared line dirtied) else */
    if (side == SIDE_UNKNOWN)
        side = f->side;
    slot = f->slot;
    if (is_new || side != f->side || f->gen != gen) {
        slot = (__u32)(p.key.t & 3) * NPORTS + service_port(&p.key, side);
        f->side = side;
        f->slot = slot;
        f->gen = gen;
        mark_touched(slot);
    }
    add(&traffic, slot, 1, wire, is_new);
counted:
    if (p.first_fragment) {
        struct frag_val fv = {.from_a = from_a};
        __builtin_memcpy(&fv.flow, &p.key, sizeof(fv.flow));
        bpf_map_update_elem(&fragments, &p.frag, &fv, BPF_ANY);
    }
    return 0;
}

char LICENSE[] SEC("license") = "Dual Apache/GPL";
