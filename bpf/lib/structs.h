/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Key and value layouts of the L4 dataplane maps, shared with Go through
 * bpf2go (-type). Changing any of them changes the map layout: bump
 * KM_LAYOUT_VERSION (the loader then migrates pinned maps field by field, see
 * ARCHITECTURE.md "Map layout and update protocol").
 *
 * Conventions: addresses are 16 bytes as four network-order words, IPv4 stored
 * IPv4-mapped (::ffff:a.b.c.d) so one key shape serves both families; ports in
 * map keys and slots are network order (as in bpf_sock_addr.user_port). */
#ifndef KMESH_BPF_STRUCTS_H
#define KMESH_BPF_STRUCTS_H

#ifdef KMESH_LAYOUT_NEXT
/* A test build (go build -tags kmesh_layout_next) with a different layout, used
 * by the upgrade test to prove migration of pinned maps. */
#define KM_LAYOUT_VERSION 3
#else
/* 2: km_svc_rec carries small services' slots inline (KM_REC_INLINE). */
#define KM_LAYOUT_VERSION 2
#endif

#define KM_MAX_PORTS    10 /* service ports per service */
#define KM_MAX_TIERS    8  /* locality priority tiers (0 = best) */
#define KM_FAMILIES     2  /* slot sets per family: 0 = IPv4, 1 = IPv6 */
#define KM_FAM_V4       0
#define KM_FAM_V6       1
/* Slots a generation record holds inline (all families and tiers together);
 * a power of two, so an index is bounded by a mask. 16 keeps the record at
 * 920 bytes, inside the 1 KiB allocation class of a hash map element. */
#define KM_INLINE_SLOTS 16

/* Map sizes (see ARCHITECTURE.md): >= 100k endpoints, double-buffered. */
#define KM_MAX_SERVICES  65536
#define KM_MAX_FRONTENDS 131072
#define KM_MAX_SVC_GENS  131072
#define KM_MAX_SLOTS     262144
#define KM_MAX_ENROL     16384
#define KM_MAX_SOCKHASH  65536
#define KM_MAX_WAYPOINTS 131072
#define KM_EVENTS_BYTES  (1 << 20)
#define KM_EVENTS_WAKEUP_BYTES (KM_EVENTS_BYTES / 4) /* wake the reader at this backlog; else it polls */

/* Load-balancing algorithms and locality modes (km_svc_rec). */
enum km_lb_algorithm {
	KM_LB_RANDOM = 0,
	KM_LB_ROUND_ROBIN = 1,
	KM_LB_WEIGHTED = 2,
};

enum km_locality_mode {
	KM_LOC_NONE = 0,     /* one tier holds every endpoint */
	KM_LOC_STRICT = 1,   /* only tier 0; refuse when it is empty */
	KM_LOC_FAILOVER = 2, /* first non-empty tier */
};

/* km_frontend key: a service VIP and port. */
struct km_fe_key {
	__u32 addr[4];
	__u16 port; /* network order */
	__u8 proto; /* IPPROTO_TCP */
	__u8 pad;
};

/* km_frontend value. The key is repeated so a reader can tell when the hash
 * element it holds was recycled for another key under it (the kernel reuses
 * freed hash elements immediately). */
struct km_fe_val {
	__u32 svc_id;
	__u32 addr[4];
	__u16 port;
	__u16 pad;
};

/* km_svc_gen key: one immutable generation of a service. */
struct km_svc_key {
	__u32 svc_id;
	__u32 gen;
};

/* km_endpoint key: slot idx (0-based, < count) of a tier's slot array. */
struct km_slot_key {
	__u32 svc_id;
	__u32 gen;
	__u8 family;
	__u8 tier;
	__u16 pad;
	__u32 idx;
};

/* km_endpoint value: one endpoint, self-contained so a connect() needs no
 * further lookup. cum_weight is the inclusive prefix sum of weights over the
 * tier's slots 0..idx (strictly increasing), for weighted selection. */
struct km_slot {
	__u32 workload_id;
	__u32 cum_weight;
#ifdef KMESH_LAYOUT_NEXT
	__u32 next_marker; /* only in the layout-next test build */
#endif
	__u32 addr[4]; /* the endpoint's address in the slot's family, v4 mapped */
	__u32 flags;   /* KM_EP_* */
	__u16 target[KM_MAX_PORTS]; /* target port per service port index, network order */
};

#define KM_EP_LOCAL (1u << 0) /* an enrolled workload on this node */

/* km_svc_gen value: a service's policy and slot counts in one generation.
 * A generation of at most KM_INLINE_SLOTS slots in all keeps them in slots[]
 * and sets KM_REC_INLINE: a connect() then needs no km_endpoint lookup. The
 * inline order is family-major, tier-minor, each tier's slots in idx order,
 * so tier t of family f starts at the sum of count[] over the (family, tier)
 * pairs before it. Without the flag (larger services, and records written by
 * layout 1, which the loader migrates with flags 0) slots[] is unused and the
 * slots are in km_endpoint. */
struct km_svc_rec {
	__u8 algorithm; /* enum km_lb_algorithm */
	__u8 locality;  /* enum km_locality_mode */
	__u8 nports;
	__u8 flags;     /* KM_REC_* */
	__u16 port[KM_MAX_PORTS];                 /* service ports, network order */
	__u32 count[KM_FAMILIES][KM_MAX_TIERS];  /* slots per family and tier */
	__u32 wsum[KM_FAMILIES][KM_MAX_TIERS];   /* total weight per family and tier */
	struct km_slot slots[KM_INLINE_SLOTS];   /* KM_REC_INLINE: every slot */
};

#define KM_REC_INLINE (1u << 0) /* slots[] holds the generation's slots */

/* Enrolment maps (cgroup id / netns cookie -> workload). */
struct km_enrol {
	__u32 workload_id;
	__u32 flags; /* KM_ENROL_* */
};

/* The workload is an instance of a waypoint: its own connects (to the
 * original destinations) are load-balanced but never sent to a waypoint. */
#define KM_ENROL_WAYPOINT (1u << 0)

/* km_waypoint key. A service's port: svc_id and port set, addr zero. A
 * workload's address (traffic addressed to the pod): addr set, svc_id zero,
 * port zero for every port or a port with its own action (server-first). */
struct km_wp_key {
	__u32 addr[4];
	__u32 svc_id;
	__u16 port; /* network order */
	__u16 pad;
};

enum km_wp_action {
	KM_WP_NONE = 0,     /* no entry: not waypoint traffic */
	KM_WP_REDIRECT = 1, /* connect to an instance of wp_svc:wp_port, header on first send */
	KM_WP_BYPASS = 2,   /* server-first port: load-balanced directly, no waypoint */
	KM_WP_REFUSE = 3,   /* waypoint required but unusable (unknown, or server-first refused) */
};

/* km_waypoint value. The key is repeated so a reader can tell when the hash
 * element it holds was recycled for another key (as in km_fe_val). */
struct km_wp_val {
	__u32 wp_svc;   /* the waypoint's own service */
	__u16 wp_port;  /* its port, network order */
	__u8 action;    /* enum km_wp_action */
	__u8 pad;
	struct km_wp_key key;
};

/* km_listen key: a listening port of an enrolled workload in a network
 * namespace. Accepted sockets are matched to it in sockops (a listener's
 * socket storage is not reliably cloned into accepted sockets). */
struct km_listen_key {
	__u64 netns_cookie;
	__u32 port; /* host order */
	__u32 pad;
};

struct km_listen_val {
	__u32 workload_id;
	__u32 listeners; /* SO_REUSEPORT: listening sockets sharing the port */
	__u64 cgroup_id;
};

/* km_config[0]: runtime switches written by the daemon. */
struct km_cfg {
	__u64 cgroup_levels;     /* bit L set: some enrolled cgroup sits at level L */
	__u64 report_interval_ns; /* periodic connection records; 0 = off */
	__u32 flags;             /* KM_CFG_* */
	__u32 pad;
};

#define KM_CFG_ACCEL (1u << 0) /* same-node sk_msg redirect */
#define KM_CFG_WP_TLV (1u << 1) /* waypoint header: Kmesh's TLV instead of PROXY v2 */
#define KM_CFG_WL_WAYPOINTS (1u << 2) /* km_waypoint has workload (address) entries */
/* km_waypoint has no service entries: connect() to a VIP skips its lookup.
 * Inverted, so a km_config written by an older daemon means "look up". */
#define KM_CFG_NO_SVC_WAYPOINTS (1u << 3)
#define KM_CFG_NO_EVENTS (1u << 4) /* monitoring off: no connection records at all */

/* Per-socket state (km_sock, socket-local storage). */
struct km_sock_state {
	__u32 orig_addr[4]; /* destination as dialed (the VIP), v4 mapped */
	__u16 orig_port;    /* network order */
	__u8 flags;         /* KM_SK_* */
	__u8 direction;     /* enum km_direction */
	__u32 svc_id;
	__u32 src_workload; /* this socket's enrolled workload */
	__u32 dst_workload; /* the chosen backend's workload (outbound via a VIP) */
	__u64 cgroup_id;    /* cgroup of the process that created/connected it */
	__u64 start_ns;
	__u64 last_report_ns;
	/* Bytes sent by sk_msg redirect: TCP's own counters never see them
	 * (the receiving side's count is in km_accel_rx). */
	__u64 accel_tx;
};

#define KM_SK_ENROLLED  (1u << 0)
#define KM_SK_REWRITTEN (1u << 1) /* connect() was load-balanced */
#define KM_SK_TRACKED   (1u << 2) /* established and reported */
#define KM_SK_LOCAL_DST (1u << 3) /* backend is a local enrolled workload */
#define KM_SK_ACCEL     (1u << 4) /* inserted into the sockhash */
#define KM_SK_LISTENER  (1u << 5) /* an enrolled listener, in km_listen */
#define KM_SK_WAYPOINT  (1u << 6) /* connect() was sent to a waypoint */
#define KM_SK_WP_HDR    (1u << 7) /* waypoint header not written yet */

enum km_direction {
	KM_DIR_UNKNOWN = 0,
	KM_DIR_OUTBOUND = 1,
	KM_DIR_INBOUND = 2,
};

/* km_sockhash key: one end of a TCP connection, addresses v4 mapped. scope is
 * the netns cookie for loopback peers (the same 4-tuple can exist in many
 * namespaces) and 0 otherwise. */
struct km_sock_key {
	__u32 local[4];
	__u32 remote[4];
	__u32 local_port;  /* host order */
	__u32 remote_port; /* host order */
	__u64 scope;
};

/* Counters in km_stats (per-CPU array, index = enum km_stat). */
enum km_stat {
	KM_STAT_CONNECT_LB = 0,    /* connect() rewritten to a backend */
	KM_STAT_CONNECT_REFUSED,   /* service with no usable backend */
	KM_STAT_CONNECT_UNENROLLED,/* VIP dialed by an unenrolled process: untouched */
	KM_STAT_LOOKUP_MISS,       /* protocol violation: gen/slot/backend missing */
	KM_STAT_FE_RECYCLED,       /* frontend element recycled under the reader */
	KM_STAT_EVENTS_DROPPED,    /* ring buffer full */
	KM_STAT_ACCEL_INSERT,      /* sockets inserted for same-node redirect */
	KM_STAT_ACCEL_REDIRECT,    /* sk_msg redirects */
	KM_STAT_WP_REDIRECT,       /* connect() sent to a waypoint instance */
	KM_STAT_WP_BYPASS,         /* server-first port: waypoint skipped */
	KM_STAT_WP_EXEMPT,         /* a waypoint's own connect: not redirected */
	KM_STAT_WP_REFUSED,        /* waypoint required but none usable */
	KM_STAT_WP_HEADER,         /* waypoint headers written by sk_msg */
	KM_STAT_WP_HEADER_ERR,     /* header impossible (no memory, data already sent): send failed */
	KM_STAT_MAX,
};

/* Argument of the km_flip syscall program (the atomic generation switch). */
struct km_flip_args {
	__u32 svc_id;
	__u32 gen;
	__u32 old_gen; /* out */
	__u32 pad;
};

#endif
