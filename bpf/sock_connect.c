// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Socket load balancing at connect() time: cgroup/connect4 and connect6
 * rewrite a service VIP:port dialed by an enrolled process to a backend's
 * address and target port; getpeername4/6 give the application back the VIP
 * it dialed. No proxy sits on the data path and no packet is ever sent to the
 * VIP. A destination that is not a mesh frontend passes untouched; a mesh
 * service without a usable backend fails the connect() at once with
 * ECONNREFUSED (EPERM on kernels without bpf_set_retval).
 *
 * A service (or a workload's address) with a waypoint is rewritten to an
 * instance of the waypoint's service instead, and the socket is marked so
 * that sk_msg writes the waypoint header on its first send (lib/waypoint.h).
 * Waypoint instances themselves are never redirected. */
#include "common.h"
#include "maps.h"
#include "addr.h"
#include "lb.h"
#include "enrol.h"
#include "sock.h"
#include "waypoint.h"

/* Endpoint selection as global functions: the verifier checks each once, on
 * its own, instead of once per path through km_connect (the waypoint
 * decision multiplies those paths). One per family: the family indexes
 * arrays and must be a constant for older verifiers. */
__noinline int km_pick4(__u32 svc, __u32 port, __u32 rnd, struct km_pick *out)
{
	if (!out)
		return KM_REFUSE;
	return km_lb_pick(svc, (__u16)port, KM_FAM_V4, rnd, out);
}

__noinline int km_pick6(__u32 svc, __u32 port, __u32 rnd, struct km_pick *out)
{
	if (!out)
		return KM_REFUSE;
	return km_lb_pick(svc, (__u16)port, KM_FAM_V6, rnd, out);
}

static __always_inline int km_connect(struct bpf_sock_addr *ctx, const __u32 addr[4], __u32 fam, int write_v6)
{
	__u16 port = (__u16)ctx->user_port, lb_port = port;
	struct km_sock_state *st;
	struct km_pick pick = {};
	struct km_wp_val wp;
	__u32 svc, lb_svc, wl = 0;
	int v, act;

	svc = km_frontend_lookup(addr, port);
	act = km_wp_lookup(svc, addr, port, &wp);
	if (!svc && act == KM_WP_NONE)
		return SOCK_ALLOW;

	st = bpf_sk_storage_get(&km_sock, ctx->sk, 0, 0);
	if (st && (st->flags & KM_SK_ENROLLED)) {
		wl = st->src_workload;
	} else if (!km_enrolled_current(ctx, &wl)) {
		if (svc)
			km_stat_inc(KM_STAT_CONNECT_UNENROLLED);
		return SOCK_ALLOW;
	}

	lb_svc = svc;
	if (act == KM_WP_REDIRECT || act == KM_WP_REFUSE) {
		if (km_wp_exempt(ctx)) {
			km_stat_inc(KM_STAT_WP_EXEMPT);
			act = KM_WP_NONE;
		}
	} else if (act == KM_WP_BYPASS) {
		km_stat_inc(KM_STAT_WP_BYPASS);
	}
	if (act == KM_WP_REDIRECT) {
		lb_svc = wp.wp_svc;
		lb_port = wp.wp_port;
	} else if (!svc) {
		return SOCK_ALLOW; /* a workload address: only its waypoint acts */
	}

	v = KM_REFUSE;
	if (act != KM_WP_REFUSE) {
		if (fam == KM_FAM_V6)
			v = km_pick6(lb_svc, lb_port, bpf_get_prandom_u32(), &pick);
		else
			v = km_pick4(lb_svc, lb_port, bpf_get_prandom_u32(), &pick);
	}
	if (act == KM_WP_REDIRECT && v == KM_PASS)
		v = KM_REFUSE; /* the waypoint service is gone or lacks the port */
	if (v == KM_PASS)
		return SOCK_ALLOW;
	if (v == KM_REFUSE) {
		km_stat_inc(act == KM_WP_NONE || act == KM_WP_BYPASS ? KM_STAT_CONNECT_REFUSED : KM_STAT_WP_REFUSED);
		if (km_has_set_retval)
			bpf_set_retval(-ECONNREFUSED);
		return SOCK_DENY;
	}

	if (!st)
		st = km_sock_enrol(ctx->sk, wl);
	if (!st && act == KM_WP_REDIRECT) {
		/* Without socket state no header would be written. */
		km_stat_inc(KM_STAT_WP_REFUSED);
		if (km_has_set_retval)
			bpf_set_retval(-ENOMEM);
		return SOCK_DENY;
	}
	if (st) {
		km_addr_copy(st->orig_addr, addr);
		st->orig_port = port;
		st->flags |= KM_SK_REWRITTEN;
		if (act == KM_WP_REDIRECT)
			st->flags |= KM_SK_WAYPOINT | KM_SK_WP_HDR;
		if (pick.flags & KM_EP_LOCAL)
			st->flags |= KM_SK_LOCAL_DST;
		st->direction = KM_DIR_OUTBOUND;
		st->svc_id = svc;
		st->dst_workload = pick.workload_id;
	}

	if (write_v6) {
		ctx->user_ip6[0] = pick.addr[0];
		ctx->user_ip6[1] = pick.addr[1];
		ctx->user_ip6[2] = pick.addr[2];
		ctx->user_ip6[3] = pick.addr[3];
	} else {
		ctx->user_ip4 = pick.addr[3];
	}
	ctx->user_port = pick.port;
	km_stat_inc(act == KM_WP_REDIRECT ? KM_STAT_WP_REDIRECT : KM_STAT_CONNECT_LB);
	return SOCK_ALLOW;
}

SEC("cgroup/connect4")
int km_connect4(struct bpf_sock_addr *ctx)
{
	__u32 addr[4];

	if (ctx->type != SOCK_STREAM)
		return SOCK_ALLOW;
	km_addr_from_v4(addr, ctx->user_ip4);
	return km_connect(ctx, addr, KM_FAM_V4, 0);
}

SEC("cgroup/connect6")
int km_connect6(struct bpf_sock_addr *ctx)
{
	__u32 addr[4];

	if (ctx->type != SOCK_STREAM)
		return SOCK_ALLOW;
	addr[0] = ctx->user_ip6[0];
	addr[1] = ctx->user_ip6[1];
	addr[2] = ctx->user_ip6[2];
	addr[3] = ctx->user_ip6[3];
	/* A dual-stack socket dialing ::ffff:a.b.c.d is an IPv4 connection:
	 * look it up as IPv4 and write the backend back IPv4-mapped. */
	if (km_addr_is_v4mapped(addr))
		return km_connect(ctx, addr, KM_FAM_V4, 1);
	return km_connect(ctx, addr, KM_FAM_V6, 1);
}

static __always_inline struct km_sock_state *km_rewritten(struct bpf_sock_addr *ctx)
{
	struct km_sock_state *st = bpf_sk_storage_get(&km_sock, ctx->sk, 0, 0);

	if (!st || !(st->flags & KM_SK_REWRITTEN))
		return 0;
	return st;
}

SEC("cgroup/getpeername4")
int km_getpeername4(struct bpf_sock_addr *ctx)
{
	struct km_sock_state *st = km_rewritten(ctx);

	if (st) {
		ctx->user_ip4 = st->orig_addr[3];
		ctx->user_port = st->orig_port;
	}
	return SOCK_ALLOW;
}

SEC("cgroup/getpeername6")
int km_getpeername6(struct bpf_sock_addr *ctx)
{
	struct km_sock_state *st = km_rewritten(ctx);

	if (st) {
		ctx->user_ip6[0] = st->orig_addr[0];
		ctx->user_ip6[1] = st->orig_addr[1];
		ctx->user_ip6[2] = st->orig_addr[2];
		ctx->user_ip6[3] = st->orig_addr[3];
		ctx->user_port = st->orig_port;
	}
	return SOCK_ALLOW;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
