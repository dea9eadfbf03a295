// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Kernel-native mode, struct_ops kmesh_l7_ops.route: the routing decision of
 * a connection deferred by kn_connect.c, made by kmesh.ko on its first send
 * with the parsed request (Envoy semantics, see docs/kernel-native.md):
 *
 *   listener (the address dialed) -> route configuration
 *   -> virtual host by Host: exact domain, then the longest "*.suffix", the
 *      longest "prefix.*", then "*"
 *   -> the first route whose path (prefix or exact) and headers (exact,
 *      prefix, present; all of them) match
 *   -> its action: a cluster, or a weighted split of clusters
 *   -> an endpoint of the cluster (km_lb_pick: the L4 policies)
 *   -> circuit breaker (max connections) -> REDIRECT to the endpoint.
 *
 * Non-HTTP first bytes take the listener's TCP route. Failures end the
 * connection at its first send with a specific errno: EHOSTUNREACH (no
 * route), ECONNREFUSED (no cluster or no usable endpoint), EBUSY (the
 * cluster is at its connection limit).
 *
 * The decision is per connection: keep-alive requests that follow on the
 * same connection go to the same backend (per-request routing needs a proxy
 * or a future module feature). */
#include "common.h"
#include "kfuncs.h"
#include "kn.h"
#include <bpf/bpf_tracing.h>

#ifndef EHOSTUNREACH
#define EHOSTUNREACH 113
#endif
#ifndef EBUSY
#define EBUSY 16
#endif

/* Per-CPU scratch for the Host lookup key (too big for the stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kn_host_key);
} kn_scratch SEC(".maps");

static __always_inline int is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static __always_inline int min_int(__u32 a, int b)
{
	return a < (__u32)b ? (int)a : b;
}

/* Length of host without a trailing ":port" ("[v6]:port" keeps brackets). */
static __always_inline __u32 host_without_port(const char *h, int len)
{
	int i, j;

	kn_for(i, 0, len) {
		j = len - 1 - i;
		if (j < 0 || j >= KN_HOST_MAX)
			break;
		if (h[j & (KN_HOST_MAX - 1)] == ':')
			return i > 0 ? j : len; /* "host:" keeps its colon */
		if (!is_digit(h[j & (KN_HOST_MAX - 1)]))
			break;
	}
	return len;
}

/* The virtual host of route configuration rc for the request, 0 if none. */
static __always_inline __u32 find_vhost(__u32 gen, __u32 rc_id, struct kmesh_http_req *req)
{
	struct kn_key rkey = { .gen = gen, .id = rc_id };
	struct kn_key wkey = { .gen = gen, .id = rc_id };
	struct kn_host_key *k;
	struct kn_vh_ref *ref;
	struct kn_wild *w;
	struct kn_rc *rc;
	__u32 zero = 0, full = 0, bare = 0, hl;
	int i, len;

	rc = bpf_map_lookup_elem(&kn_rcs, &rkey);
	if (!rc)
		return 0;
	k = bpf_map_lookup_elem(&kn_scratch, &zero);
	if (!k)
		return 0;
	__builtin_memset(k, 0, sizeof(*k));
	k->gen = gen;
	k->rc = rc_id;
	len = bpf_kmesh_http_copy(req, KMESH_HTTP_FIELD_HOST, k->host, KN_HOST_MAX);
	if (len > 0)
		full = bare = len;
	if (full > 0 && full <= KN_HOST_MAX) {
		kn_for(i, 0, (int)full) {
			char c;

			if (i < 0 || i >= KN_HOST_MAX)
				break;
			/* The mask is a no-op (i < full <= KN_HOST_MAX) that keeps the
			 * verifier's bound when the compiler drops the check above. */
			c = k->host[i & (KN_HOST_MAX - 1)];
			if (c >= 'A' && c <= 'Z')
				k->host[i & (KN_HOST_MAX - 1)] = c + ('a' - 'A');
		}
		/* Exact: the Host as sent, then without its port. */
		k->len = full;
		ref = bpf_map_lookup_elem(&kn_hosts, k);
		if (ref)
			return ref->vh;
		bare = host_without_port(k->host, full);
		if (bare < full) {
			kn_for(i, (int)bare, (int)full) {
				if (i < 0 || i >= KN_HOST_MAX)
					break;
				k->host[i & (KN_HOST_MAX - 1)] = 0;
			}
			k->len = bare;
			ref = bpf_map_lookup_elem(&kn_hosts, k);
			if (ref)
				return ref->vh;
		}
	}
	/* Wildcards, already in Envoy's order; a wildcard never matches the
	 * empty string, so the host must be longer than the pattern. */
	kn_for(i, 0, min_int(rc->nwild, KN_MAX_WILD)) {
		wkey.idx = i;
		w = bpf_map_lookup_elem(&kn_wilds, &wkey);
		if (!w || w->len > KN_HOST_MAX)
			continue;
		hl = (w->flags & KN_WILD_PORT) ? full : bare;
		if (hl <= w->len)
			continue;
		if (bpf_kmesh_http_match_host(req, w->pat, w->len, w->match) == 1)
			return w->vh;
	}
	return rc->any_vh;
}

static __always_inline int headers_match(__u32 gen, __u32 rid, __u32 n, struct kmesh_http_req *req)
{
	struct kn_key hkey = { .gen = gen, .id = rid };
	struct kn_hdr *h;
	int j;

	kn_for(j, 0, min_int(n, KN_MAX_HDRS)) {
		hkey.idx = j;
		h = bpf_map_lookup_elem(&kn_hdrs, &hkey);
		if (!h || h->len > KN_HDR_MAX)
			return 0;
		if (bpf_kmesh_http_match_header(req, h->nv, h->len, h->name_len, h->match) != 1)
			return 0;
	}
	return 1;
}

/* The action of the first matching route of virtual host vh, 0 if none. */
static __always_inline __u32 find_route(__u32 gen, __u32 vh, struct kmesh_http_req *req)
{
	struct kn_key vkey = { .gen = gen, .id = vh };
	struct kn_key rkey = { .gen = gen, .id = vh };
	struct kn_vhost *v;
	struct kn_route *r;
	int i;

	v = bpf_map_lookup_elem(&kn_vhosts, &vkey);
	if (!v)
		return 0;
	kn_for(i, 0, min_int(v->nroutes, KN_MAX_ROUTES)) {
		rkey.idx = i;
		r = bpf_map_lookup_elem(&kn_routes, &rkey);
		if (!r || r->path_len > KN_PATH_MAX)
			continue;
		if (bpf_kmesh_http_match_path(req, r->path, r->path_len, r->path_match) != 1)
			continue;
		if (headers_match(gen, r->rid, r->nhdrs, req))
			return r->action;
	}
	return 0;
}

static __always_inline int refuse(struct kmesh_l7_ctx *lctx, __u32 stat, int err)
{
	kn_stat_inc(stat);
	bpf_kmesh_l7_set_error(lctx, err);
	return KMESH_L7_NO_ROUTE;
}

SEC("struct_ops/kn_decide")
int BPF_PROG(kn_decide, struct kmesh_l7_ctx *lctx, struct kmesh_http_req *req)
{
	struct kmesh_http_info info = {};
	struct kn_listener_key lkey = {};
	struct km_pick pick = {};
	struct kn_listener *l;
	struct kn_cluster cl;
	struct kn_conn *conn;
	__u64 cookie = lctx->tag;
	__u32 gen, act = 0, vh, cid, fam, old, *live;
	int v;

	conn = bpf_map_lookup_elem(&kn_conns, &cookie);
	if (!conn) {
		kn_stat_inc(KN_STAT_UNKNOWN_SOCKET);
		return KMESH_L7_PASS;
	}
	gen = kn_gen();
	lkey.gen = gen;
	lkey.port = conn->port;
	km_addr_copy(lkey.addr, conn->addr);
	l = bpf_map_lookup_elem(&kn_listeners, &lkey);
	if (!l) {
		lkey.addr[0] = lkey.addr[1] = lkey.addr[2] = lkey.addr[3] = 0;
		l = bpf_map_lookup_elem(&kn_listeners, &lkey);
	}
	if (!l)
		return refuse(lctx, KN_STAT_NO_ROUTE, EHOSTUNREACH);

	bpf_kmesh_http_info(req, &info, sizeof(info));
	if (info.status >= 0 && l->rc) {
		vh = find_vhost(gen, l->rc, req);
		if (vh)
			act = find_route(gen, vh, req);
		if (!act)
			return refuse(lctx, KN_STAT_NO_ROUTE, EHOSTUNREACH);
		kn_stat_inc(KN_STAT_ROUTED_HTTP);
	} else {
		act = l->tcp_action;
		if (!act)
			return refuse(lctx, KN_STAT_NO_ROUTE, EHOSTUNREACH);
		kn_stat_inc(KN_STAT_ROUTED_TCP);
	}

	cid = kn_action_cluster(gen, act, bpf_get_prandom_u32());
	fam = conn->v4 ? KM_FAM_V4 : KM_FAM_V6;
	v = cid ? kn_cluster_pick(gen, cid, fam | (lctx->family == AF_INET6 ? KN_PICK_V4_OK : 0), &cl, &pick) : -1;
	if (v < 0)
		return refuse(lctx, KN_STAT_NO_CLUSTER, ECONNREFUSED);
	if (v == KN_PICK_V4)
		fam = KM_FAM_V4;
	else if (v != KM_OK)
		return refuse(lctx, KN_STAT_NO_ENDPOINT, ECONNREFUSED);

	/* Circuit breaker: take a slot, or give it back and refuse. */
	live = bpf_map_lookup_elem(&kn_cl_active, &cid);
	if (live) {
		old = __sync_fetch_and_add(live, 1);
		if (cl.max_conn && old >= cl.max_conn) {
			__sync_fetch_and_sub(live, 1);
			return refuse(lctx, KN_STAT_OVERFLOW, EBUSY);
		}
		conn->cid = cid;
	}
	conn->timeout_ms = cl.timeout_ms;
	conn->workload_id = pick.workload_id;
	conn->flags |= KN_CONN_ROUTED;

	if (fam == KM_FAM_V4)
		v = bpf_kmesh_l7_set_dest(lctx, &pick.addr[3], 4, pick.port);
	else
		v = bpf_kmesh_l7_set_dest(lctx, pick.addr, 16, pick.port);
	if (v) {
		/* An IPv4 endpoint for an IPV6_V6ONLY socket. */
		kn_conn_release(conn);
		return refuse(lctx, KN_STAT_NO_ENDPOINT, ECONNREFUSED);
	}
	return KMESH_L7_REDIRECT;
}

SEC(".struct_ops.link")
struct kmesh_l7_ops kn_router = {
	.route = (void *)kn_decide,
	.name = "kn_router",
};

char LICENSE[] SEC("license") = "Dual BSD/GPL";
