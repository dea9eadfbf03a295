// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Kernel-native mode, cgroup/connect4|6: a connect() by an enrolled process to
 * an L7 listener (kn_listeners) is deferred by kmesh.ko to its first send,
 * where kn_route.c picks the backend from the request. The socket cookie is
 * the deferral tag, and kn_conns[cookie] remembers the listener dialed.
 *
 * The destination is also pointed at the listener's TCP route (a backend of
 * its cluster), which is where the connection goes if no routing decision is
 * ever made: the module refuses to defer (safe mode, capacity), the client
 * reads before it writes (server-speaks-first), or the module is unloaded.
 * The application still sees the VIP it dialed (km_sock + getpeername).
 *
 * A listener without HTTP routes (Envoy tcp_proxy only) is not deferred: the
 * connect is decided here, like an L4 service, with the cluster's circuit
 * breaker (EBUSY) and connect timeout (kn_sockops.c).
 *
 * Needs kmesh.ko (kfuncs): loaded only in kernel-native mode, next to the L4
 * programs of sock_connect.c, which never see a listener VIP (listener VIPs
 * are not L4 frontends) nor a backend address, so the two connect programs
 * give the same result in either order. */
#include "common.h"
#include "kfuncs.h"
#include "kn.h"
#include "enrol.h"
#include "sock.h"

#ifndef EBUSY
#define EBUSY 16
#endif

static __always_inline struct kn_listener *kn_listener_lookup(__u32 gen, const __u32 addr[4], __u16 port)
{
	struct kn_listener_key key = { .gen = gen, .port = port };
	struct kn_listener *l;

	km_addr_copy(key.addr, addr);
	l = bpf_map_lookup_elem(&kn_listeners, &key);
	if (l)
		return l;
	/* A listener on the unspecified address takes the port on any address. */
	key.addr[0] = key.addr[1] = key.addr[2] = key.addr[3] = 0;
	return bpf_map_lookup_elem(&kn_listeners, &key);
}

static __always_inline void kn_rewrite(struct bpf_sock_addr *ctx, struct km_sock_state *st, const __u32 addr[4],
				       __u16 port, __u32 svc, struct km_pick *pick, int write_v6)
{
	/* getpeername (sock_connect.c) gives the application the VIP back. */
	if (st) {
		km_addr_copy(st->orig_addr, addr);
		st->orig_port = port;
		st->flags |= KM_SK_REWRITTEN;
		st->direction = KM_DIR_OUTBOUND;
		st->svc_id = svc;
		st->dst_workload = pick->workload_id;
		st->start_ns = bpf_ktime_get_ns();
	}
	if (write_v6) {
		ctx->user_ip6[0] = pick->addr[0];
		ctx->user_ip6[1] = pick->addr[1];
		ctx->user_ip6[2] = pick->addr[2];
		ctx->user_ip6[3] = pick->addr[3];
	} else {
		ctx->user_ip4 = pick->addr[3];
	}
	ctx->user_port = pick->port;
}

static __always_inline int kn_deny(__u32 stat, int err)
{
	kn_stat_inc(stat);
	if (km_has_set_retval)
		bpf_set_retval(-err);
	return SOCK_DENY;
}

/* Remembers the socket in kn_conns (key: its cookie). A socket that
 * connects again after a failed attempt gives its previous slot back. */
static __always_inline struct kn_conn *kn_track(__u64 cookie, const __u32 addr[4], __u16 port, __u32 fam)
{
	struct kn_conn conn = {}, *prev;

	prev = bpf_map_lookup_elem(&kn_conns, &cookie);
	if (prev)
		kn_conn_release(prev);
	km_addr_copy(conn.addr, addr);
	conn.port = port;
	conn.v4 = fam == KM_FAM_V4;
	conn.start_ns = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&kn_conns, &cookie, &conn, BPF_ANY)) {
		kn_stat_inc(KN_STAT_CONN_FULL);
		return 0;
	}
	return bpf_map_lookup_elem(&kn_conns, &cookie);
}

static __always_inline int kn_connect(struct bpf_sock_addr *ctx, const __u32 addr[4], __u32 fam, int write_v6)
{
	__u16 port = (__u16)ctx->user_port;
	struct km_sock_state *st;
	struct kn_listener *l;
	struct kn_cluster cl;
	struct kn_conn *c;
	struct km_pick pick = {};
	__u32 gen, wl = 0, cid = 0, old, *live;
	__u64 cookie;
	int v = -1, tcp_only;

	gen = kn_gen();
	if (!gen)
		return SOCK_ALLOW;
	l = kn_listener_lookup(gen, addr, port);
	if (!l)
		return SOCK_ALLOW;

	st = bpf_sk_storage_get(&km_sock, ctx->sk, 0, 0);
	if (!(st && (st->flags & KM_SK_ENROLLED)) && !km_enrolled_current(ctx, &wl))
		return SOCK_ALLOW;
	if (!st)
		st = km_sock_enrol(ctx->sk, wl);
	kn_stat_inc(KN_STAT_CONNECTS);
	tcp_only = l->rc == 0;
	cookie = bpf_get_socket_cookie(ctx);
	c = kn_track(cookie, addr, port, fam);

	if (!tcp_only && c) {
		if (kmesh_defer_connect(ctx, cookie)) {
			kn_stat_inc(KN_STAT_DEFER_REFUSED);
			bpf_map_delete_elem(&kn_conns, &cookie);
			c = 0;
		} else {
			c->flags |= KN_CONN_DEFERRED;
			kn_stat_inc(KN_STAT_DEFERRED);
		}
	}

	/* The TCP route: the decision of a TCP-only listener (made now, like an
	 * L4 service, with the cluster's circuit breaker and connect timeout),
	 * or where an HTTP listener's connection goes without a decision. */
	if (l->tcp_action)
		cid = kn_action_cluster(gen, l->tcp_action, bpf_get_prandom_u32());
	if (cid)
		v = kn_cluster_pick(gen, cid, fam | (write_v6 ? KN_PICK_V4_OK : 0), &cl, &pick);
	if (v == KN_PICK_V4)
		v = KM_OK; /* pick.addr is v4-mapped: fine for a dual-stack socket */
	if (!tcp_only) {
		if (v != KM_OK)
			return SOCK_ALLOW;
		kn_stat_inc(KN_STAT_FALLBACK_PICK);
		kn_rewrite(ctx, st, addr, port, cl.svc_id, &pick, write_v6);
		return SOCK_ALLOW;
	}
	if (v < 0)
		return kn_deny(KN_STAT_NO_CLUSTER, ECONNREFUSED);
	if (v != KM_OK)
		return kn_deny(KN_STAT_NO_ENDPOINT, ECONNREFUSED);
	live = bpf_map_lookup_elem(&kn_cl_active, &cid);
	if (!live)
		return kn_deny(KN_STAT_NO_CLUSTER, ECONNREFUSED);
	old = __sync_fetch_and_add(live, 1);
	if (cl.max_conn && old >= cl.max_conn) {
		__sync_fetch_and_sub(live, 1);
		return kn_deny(KN_STAT_OVERFLOW, EBUSY);
	}
	if (c) {
		c->cid = cid;
		c->timeout_ms = cl.timeout_ms;
		c->workload_id = pick.workload_id;
		c->flags |= KN_CONN_ROUTED;
	} else {
		/* Untracked (kn_conns full): the slot could never be given back. */
		__sync_fetch_and_sub(live, 1);
	}
	kn_stat_inc(KN_STAT_ROUTED_TCP);
	kn_rewrite(ctx, st, addr, port, cl.svc_id, &pick, write_v6);
	return SOCK_ALLOW;
}

SEC("cgroup/connect4")
int kn_connect4(struct bpf_sock_addr *ctx)
{
	__u32 addr[4];

	if (ctx->type != SOCK_STREAM)
		return SOCK_ALLOW;
	km_addr_from_v4(addr, ctx->user_ip4);
	return kn_connect(ctx, addr, KM_FAM_V4, 0);
}

SEC("cgroup/connect6")
int kn_connect6(struct bpf_sock_addr *ctx)
{
	__u32 addr[4];

	if (ctx->type != SOCK_STREAM)
		return SOCK_ALLOW;
	addr[0] = ctx->user_ip6[0];
	addr[1] = ctx->user_ip6[1];
	addr[2] = ctx->user_ip6[2];
	addr[3] = ctx->user_ip6[3];
	/* A dual-stack socket dialing ::ffff:a.b.c.d is an IPv4 connection. */
	return kn_connect(ctx, addr, km_addr_is_v4mapped(addr) ? KM_FAM_V4 : KM_FAM_V6, 1);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
