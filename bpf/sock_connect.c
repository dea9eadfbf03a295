// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Socket load balancing at connect() time: cgroup/connect4 and connect6
 * rewrite a service VIP:port dialed by an enrolled process to a backend's
 * address and target port; getpeername4/6 give the application back the VIP
 * it dialed. No proxy sits on the data path and no packet is ever sent to the
 * VIP. A destination that is not a mesh frontend passes untouched; a mesh
 * service without a usable backend fails the connect() at once with
 * ECONNREFUSED (EPERM on kernels without bpf_set_retval). */
#include "common.h"
#include "maps.h"
#include "addr.h"
#include "lb.h"
#include "enrol.h"
#include "sock.h"

static __always_inline int km_connect(struct bpf_sock_addr *ctx, const __u32 addr[4], __u32 fam, int write_v6)
{
	__u16 port = (__u16)ctx->user_port;
	struct km_sock_state *st;
	struct km_pick pick = {};
	__u32 svc, wl = 0;
	int v;

	svc = km_frontend_lookup(addr, port);
	if (!svc)
		return SOCK_ALLOW;

	st = bpf_sk_storage_get(&km_sock, ctx->sk, 0, 0);
	if (st && (st->flags & KM_SK_ENROLLED)) {
		wl = st->src_workload;
	} else if (!km_enrolled_current(ctx, &wl)) {
		km_stat_inc(KM_STAT_CONNECT_UNENROLLED);
		return SOCK_ALLOW;
	}

	v = km_lb_pick(svc, port, fam, bpf_get_prandom_u32(), &pick);
	if (v == KM_PASS)
		return SOCK_ALLOW;
	if (v == KM_REFUSE) {
		km_stat_inc(KM_STAT_CONNECT_REFUSED);
		if (km_has_set_retval)
			bpf_set_retval(-ECONNREFUSED);
		return SOCK_DENY;
	}

	if (!st)
		st = km_sock_enrol(ctx->sk, wl);
	if (st) {
		km_addr_copy(st->orig_addr, addr);
		st->orig_port = port;
		st->flags |= KM_SK_REWRITTEN;
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
	km_stat_inc(KM_STAT_CONNECT_LB);
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
