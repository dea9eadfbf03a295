// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* cgroup/connect4|6: defer the connect of sockets whose destination is an L7
 * listener (l7_listeners, filled by the daemon) to their first send, where
 * kmesh_l7_ops (l7_route.c) picks the backend from the request. Needs
 * kmesh.ko. A refused deferral leaves the socket plain TCP, and the connect
 * proceeds to the address as given (or as an earlier L4 program rewrote it). */
#include "common.h"
#include "kfuncs.h"

struct l7_listener_key {
	__u32 family;
	__u16 port;   /* network order */
	__u16 pad;
	__u32 addr[4]; /* network order; IPv4 in addr[0]; all zero: any address */
};

struct l7_listener {
	__u64 tag; /* handed to kmesh_l7_ops.route; selects the rules */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct l7_listener_key);
	__type(value, struct l7_listener);
} l7_listeners SEC(".maps");

#define L7_DEFER_SEEN     0 /* connects to a listener */
#define L7_DEFER_OK       1 /* deferred */
#define L7_DEFER_REFUSED  2 /* kfunc said no: plain TCP */
#define L7_DEFER_LASTERR  3 /* -errno of the last refusal */
#define L7_DEFER_NSTATS   4

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, L7_DEFER_NSTATS);
	__type(key, __u32);
	__type(value, __u64);
} l7_defer_stats SEC(".maps");

static __always_inline void stat_add(__u32 idx, __u64 v, int set)
{
	__u64 *c = bpf_map_lookup_elem(&l7_defer_stats, &idx);

	if (!c)
		return;
	if (set)
		*c = v;
	else
		__sync_fetch_and_add(c, v);
}

static __always_inline int defer(struct bpf_sock_addr *ctx, struct l7_listener_key *key)
{
	struct l7_listener *l;
	int err;

	l = bpf_map_lookup_elem(&l7_listeners, key);
	if (!l) {
		__builtin_memset(key->addr, 0, sizeof(key->addr));
		l = bpf_map_lookup_elem(&l7_listeners, key);
		if (!l)
			return SOCK_ALLOW;
	}
	stat_add(L7_DEFER_SEEN, 1, 0);
	err = kmesh_defer_connect(ctx, l->tag);
	if (err) {
		stat_add(L7_DEFER_REFUSED, 1, 0);
		stat_add(L7_DEFER_LASTERR, (__u64)-err, 1);
	} else {
		stat_add(L7_DEFER_OK, 1, 0);
	}
	return SOCK_ALLOW;
}

SEC("cgroup/connect4")
int l7_defer_connect4(struct bpf_sock_addr *ctx)
{
	struct l7_listener_key key = {};

	if (ctx->type != 1 /* SOCK_STREAM */)
		return SOCK_ALLOW;
	key.family = AF_INET;
	key.port = (__u16)ctx->user_port;
	key.addr[0] = ctx->user_ip4;
	return defer(ctx, &key);
}

SEC("cgroup/connect6")
int l7_defer_connect6(struct bpf_sock_addr *ctx)
{
	struct l7_listener_key key = {};

	if (ctx->type != 1 /* SOCK_STREAM */)
		return SOCK_ALLOW;
	key.family = AF_INET6;
	key.port = (__u16)ctx->user_port;
	key.addr[0] = ctx->user_ip6[0];
	key.addr[1] = ctx->user_ip6[1];
	key.addr[2] = ctx->user_ip6[2];
	key.addr[3] = ctx->user_ip6[3];
	return defer(ctx, &key);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
