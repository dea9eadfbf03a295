/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Kernel-native mode: the in-kernel HTTP route tables (lowered by pkg/l7 from
 * Envoy Listener / RouteConfiguration / Cluster / ClusterLoadAssignment) and
 * the per-connection state shared by the kernel-native programs:
 *
 *   kn_connect.c   cgroup/connect4|6   defers connects to an L7 listener
 *   kn_route.c     struct_ops          kmesh_l7_ops.route: first request -> backend
 *   kn_sockops.c   sockops             per-cluster connect timeout, close accounting
 *   kn_release.c   cgroup/sock_release forgets a socket (and its circuit-breaker slot)
 *
 * Update protocol (ARCHITECTURE.md, docs/kernel-native.md): every config table
 * is keyed by a generation. The daemon writes a complete new generation, flips
 * kn_active[0] with one store, waits for an RCU grace period (no program still
 * reads the old one) and deletes the old generation. A program reads
 * kn_active once per decision, so a decision never mixes two configs.
 *
 * Clusters are VIP-less services of the L4 dataplane (km_* maps): endpoint
 * selection is km_lb_pick() from lb.h, the same inline code the L4 connect
 * programs use. Layout changes: bump KN_LAYOUT_VERSION. */
#ifndef KMESH_BPF_KN_H
#define KMESH_BPF_KN_H

#include "maps.h"
#include "addr.h"
#include "lb.h"

#define KN_LAYOUT_VERSION 1

/* Open-coded iterators (6.4+): the verifier checks a loop body until its
 * states converge instead of unrolling every iteration, which keeps the
 * route program's nested loops cheap to load. (libbpf 1.1's headers predate
 * bpf_for, hence this copy.) */
extern int bpf_iter_num_new(struct bpf_iter_num *it, int start, int end) __ksym;
extern int *bpf_iter_num_next(struct bpf_iter_num *it) __ksym;
extern void bpf_iter_num_destroy(struct bpf_iter_num *it) __ksym;

#define kn_for(i, start, end)                                                                       \
	for (struct bpf_iter_num ___it __attribute__((aligned(8), cleanup(bpf_iter_num_destroy))),   \
	     *___p __attribute__((unused)) =                                                        \
		     (bpf_iter_num_new(&___it, (start), (end)), (void)bpf_iter_num_destroy, (void *)0); \
	     ({                                                                                     \
		     int *___t = bpf_iter_num_next(&___it);                                         \
		     (___t && ((i) = *___t, (i) >= (start) && (i) < (end)));                        \
	     });)

#define KN_HOST_MAX  256 /* bytes of a domain / Host compared by the exact-domain table */
#define KN_PATH_MAX  256 /* bytes of a path pattern */
#define KN_HDR_MAX   256 /* bytes of a header name + value pattern */
#define KN_MAX_WILD  64  /* wildcard domains per route configuration */
#define KN_MAX_ROUTES 128 /* routes per virtual host */
#define KN_MAX_HDRS  8   /* header matches per route */
#define KN_MAX_SPLIT 16  /* clusters of a weighted split */

/* Map sizes. Two generations coexist during an update, so a configuration
 * may use half of each. */
#define KN_MAX_LISTENERS 16384
#define KN_MAX_RCS       8192
#define KN_MAX_HOSTS     131072
#define KN_MAX_WILDS     16384
#define KN_MAX_VHOSTS    65536
#define KN_MAX_ROUTE_ENT 131072
#define KN_MAX_HDR_ENT   65536
#define KN_MAX_ACTIONS   131072
#define KN_MAX_CLUSTERS  16384 /* cluster ids: [1, KN_MAX_CLUSTERS) */
#define KN_MAX_CONNS     262144

/* A table entry of generation gen: route configuration, virtual host,
 * action or cluster id (idx unused), or the idx-th wildcard domain of a route
 * configuration, route of a virtual host, header match of a route. */
struct kn_key {
	__u32 gen;
	__u32 id;
	__u32 idx;
	__u32 pad;
};

/* kn_listener key: an L7 listener's VIP and port (addr v4-mapped; all zero:
 * any address). */
struct kn_listener_key {
	__u32 gen;
	__u16 port; /* network order */
	__u16 pad;
	__u32 addr[4];
};

struct kn_listener {
	__u32 rc;         /* route configuration id; 0 = TCP only */
	__u32 tcp_action; /* action for non-HTTP first bytes; 0 = none (refused) */
	__u32 flags;
	__u32 pad;
};

/* kn_rc value: the wildcard domains (kn_wild idx < nwild, in Envoy's order:
 * longest suffix first, then longest prefix) and the "*" virtual host. */
struct kn_rc {
	__u32 nwild;
	__u32 any_vh; /* 0 = none */
};

/* kn_host key: an exact domain of a route configuration, lower case. */
struct kn_host_key {
	__u32 gen;
	__u32 rc;
	__u32 len;
	__u32 pad;
	char host[KN_HOST_MAX];
};

struct kn_vh_ref {
	__u32 vh;
	__u32 pad;
};

#define KN_WILD_PORT (1u << 0) /* the pattern includes ":port": compare the whole Host */

struct kn_wild {
	__u32 vh;
	__u32 match; /* KMESH_MATCH_SUFFIX or _PREFIX, with _NO_PORT unless KN_WILD_PORT */
	__u32 len;
	__u32 flags;
	char pat[KN_HOST_MAX];
};

struct kn_vhost {
	__u32 nroutes; /* kn_route idx < nroutes, first match wins */
	__u32 pad;
};

#define KN_PATH_PREFIX 1 /* KMESH_MATCH_PREFIX */
#define KN_PATH_EXACT  0 /* KMESH_MATCH_EXACT */

struct kn_route {
	__u32 path_match; /* KMESH_MATCH_EXACT or _PREFIX */
	__u32 path_len;
	__u32 nhdrs;      /* kn_hdr {gen, rid, idx < nhdrs}, all must match */
	__u32 rid;        /* this route's id in its generation */
	__u32 action;
	__u32 pad;
	char path[KN_PATH_MAX];
};

struct kn_hdr {
	__u32 match;    /* KMESH_MATCH_EXACT, _PREFIX or _PRESENT */
	__u32 name_len; /* nv = name (lower case) followed by the value pattern */
	__u32 len;
	__u32 pad;
	char nv[KN_HDR_MAX];
};

/* An action: one cluster, or a weighted split (cum: inclusive prefix sums). */
struct kn_action {
	__u32 n;
	__u32 total;
	__u32 cluster[KN_MAX_SPLIT];
	__u32 cum[KN_MAX_SPLIT];
};

struct kn_cluster {
	__u32 svc_id;     /* the cluster's VIP-less service in the L4 maps */
	__u16 lb_port;    /* its service port, network order */
	__u16 pad;
	__u32 max_conn;   /* circuit breaker: 0 = unlimited */
	__u32 timeout_ms; /* connect timeout: 0 = the kernel's SYN retries */
};

/* kn_conn (key: socket cookie): a socket connected to an L7 listener, from
 * connect() to its release. */
struct kn_conn {
	__u32 addr[4]; /* the listener address dialed, v4-mapped for IPv4 */
	__u16 port;    /* network order */
	__u8 v4;       /* IPv4 destination (also on a dual-stack socket) */
	__u8 flags;    /* KN_CONN_* */
	__u32 cid;     /* cluster holding a circuit-breaker slot; 0 = none */
	__u32 timeout_ms;
	__u32 workload_id; /* chosen endpoint's workload (diagnostics) */
	__u64 start_ns;
};

#define KN_CONN_DEFERRED (1u << 0) /* the module deferred the connect */
#define KN_CONN_ROUTED   (1u << 1) /* the router decided */
#define KN_CONN_UTO      (1u << 2) /* TCP_USER_TIMEOUT set for the handshake */

/* Counters (kn_stats, per CPU). */
enum kn_stat {
	KN_STAT_CONNECTS = 0,   /* enrolled connects to an L7 listener */
	KN_STAT_DEFERRED,       /* deferred by the module */
	KN_STAT_DEFER_REFUSED,  /* the module refused (safe mode, capacity): plain TCP */
	KN_STAT_CONN_FULL,      /* kn_conn full: plain TCP */
	KN_STAT_ROUTED_HTTP,    /* decided by an HTTP route */
	KN_STAT_ROUTED_TCP,     /* non-HTTP first bytes, decided by the TCP route */
	KN_STAT_NO_ROUTE,       /* no listener, virtual host, route or TCP route: EHOSTUNREACH */
	KN_STAT_NO_CLUSTER,     /* route to a cluster that does not exist: ECONNREFUSED */
	KN_STAT_NO_ENDPOINT,    /* cluster without a usable endpoint: ECONNREFUSED */
	KN_STAT_OVERFLOW,       /* circuit breaker open: EBUSY */
	KN_STAT_UNKNOWN_SOCKET, /* decision for a socket not in kn_conn: original destination */
	KN_STAT_FALLBACK_PICK,  /* connect() pointed at the TCP route (used if no decision is made) */
	KN_STAT_TIMEOUT_SET,    /* connect timeout armed */
	KN_STAT_RELEASED,       /* circuit-breaker slots given back */
	KN_STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} kn_active SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KN_MAX_LISTENERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct kn_listener_key);
	__type(value, struct kn_listener);
} kn_listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KN_MAX_RCS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct kn_key);
	__type(value, struct kn_rc);
} kn_rcs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KN_MAX_HOSTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct kn_host_key);
	__type(value, struct kn_vh_ref);
} kn_hosts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KN_MAX_WILDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct kn_key);
	__type(value, struct kn_wild);
} kn_wilds SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KN_MAX_VHOSTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct kn_key);
	__type(value, struct kn_vhost);
} kn_vhosts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KN_MAX_ROUTE_ENT);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct kn_key);
	__type(value, struct kn_route);
} kn_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KN_MAX_HDR_ENT);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct kn_key);
	__type(value, struct kn_hdr);
} kn_hdrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KN_MAX_ACTIONS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct kn_key);
	__type(value, struct kn_action);
} kn_actions SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KN_MAX_CLUSTERS * 2);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct kn_key);
	__type(value, struct kn_cluster);
} kn_clusters SEC(".maps");

/* Live connections per cluster id (not per generation: a connection keeps
 * its slot across config updates until it closes). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, KN_MAX_CLUSTERS);
	__type(key, __u32);
	__type(value, __u32);
} kn_cl_active SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KN_MAX_CONNS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct kn_conn);
} kn_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KN_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} kn_stats SEC(".maps");

static __always_inline void kn_stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&kn_stats, &idx);

	if (v)
		*v += 1;
}

static __always_inline __u32 kn_gen(void)
{
	__u32 zero = 0, *g = bpf_map_lookup_elem(&kn_active, &zero);

	return g ? *(volatile __u32 *)g : 0;
}

/* The cluster of an action: the only one, or a weighted pick with rnd. */
static __always_inline __u32 kn_action_cluster(__u32 gen, __u32 act, __u32 rnd)
{
	struct kn_key key = { .gen = gen, .id = act };
	struct kn_action *a;
	__u32 w;
	int i;

	a = bpf_map_lookup_elem(&kn_actions, &key);
	if (!a || a->n == 0)
		return 0;
	if (a->n == 1 || a->total == 0)
		return a->cluster[0];
	w = rnd % a->total;
	for (i = 0; i < KN_MAX_SPLIT; i++) {
		if (i >= a->n)
			break;
		if (w < a->cum[i])
			return a->cluster[i];
	}
	return 0;
}

#define KN_PICK_V4 3         /* kn_cluster_pick: an IPv4 endpoint for an IPv6 socket (v4-mapped) */
#define KN_PICK_V4_OK (1u << 8) /* kn_cluster_pick flag: an IPv4 endpoint may serve an IPv6 socket */

/* Picks an endpoint of cluster cid (generation gen) with the L4 selection
 * code. Returns KM_OK, KN_PICK_V4 (fam is IPv6, the cluster has no usable
 * IPv6 endpoint and KN_PICK_V4_OK: an IPv4 one, for a dual-stack socket, as a proxy
 * would connect to it), KM_REFUSE (no usable endpoint) or -1 (no such
 * cluster). fam_flags: the family, | KN_PICK_V4_OK. A global function: the
 * verifier checks the selection code once, not once per call site and caller
 * state (and BPF calls take at most five arguments). */
__noinline int kn_cluster_pick(__u32 gen, __u32 cid, __u32 fam_flags, struct kn_cluster *out, struct km_pick *pick)
{
	__u32 fam = fam_flags & 0xff;
	struct kn_key key = { .gen = gen, .id = cid };
	struct kn_cluster *c;
	int v;

	if (!out || !pick)
		return -1;
	c = bpf_map_lookup_elem(&kn_clusters, &key);
	if (!c)
		return -1;
	__builtin_memcpy(out, c, sizeof(*out));
	v = km_lb_pick(out->svc_id, out->lb_port, fam, bpf_get_prandom_u32(), pick);
	if (v == KM_OK)
		return KM_OK;
	if (fam == KM_FAM_V6 && (fam_flags & KN_PICK_V4_OK) &&
	    km_lb_pick(out->svc_id, out->lb_port, KM_FAM_V4, bpf_get_prandom_u32(), pick) == KM_OK)
		return KN_PICK_V4;
	return KM_REFUSE;
}

/* Gives back a connection's circuit-breaker slot, once (sockops at close and
 * sock_release may both try). */
static __always_inline void kn_conn_release(struct kn_conn *c)
{
	__u32 cid = __sync_lock_test_and_set(&c->cid, 0);
	__u32 *n;

	if (!cid)
		return;
	n = bpf_map_lookup_elem(&kn_cl_active, &cid);
	if (n)
		__sync_fetch_and_sub(n, 1);
	kn_stat_inc(KN_STAT_RELEASED);
}

#endif
