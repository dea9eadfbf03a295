// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Kernel-native mode, sockops: the per-cluster connect timeout and the end of
 * a routed connection.
 *
 * kmesh.ko makes the real connect of a deferred socket in the sending task,
 * after kn_route.c chose the cluster; tcp_connect() then calls this program
 * (TCP_CONNECT_CB) before the SYN leaves. For a cluster with a connect
 * timeout it sets TCP_USER_TIMEOUT, which bounds the SYN retransmissions
 * (the kernel honours it in SYN_SENT: the connect fails with ETIMEDOUT), and
 * clears it again once the connection is established (it would otherwise
 * bound data retransmissions too). It also asks for state callbacks, so the
 * connection's circuit-breaker slot is given back as soon as TCP closes it
 * (kn_release.c does it at the latest when the socket is released). */
#include "common.h"
#include "kn.h"

#ifndef SOL_TCP
#define SOL_TCP 6
#endif
#ifndef TCP_USER_TIMEOUT
#define TCP_USER_TIMEOUT 18
#endif

SEC("sockops")
int kn_sockops(struct bpf_sock_ops *skops)
{
	struct kn_conn *c;
	__u64 cookie;
	int t;

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_STATE_CB:
		break;
	default:
		return 1;
	}
	cookie = bpf_get_socket_cookie(skops);
	c = bpf_map_lookup_elem(&kn_conns, &cookie);
	if (!c || !(c->flags & KN_CONN_ROUTED))
		return 1;

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		if (c->timeout_ms) {
			t = c->timeout_ms;
			if (bpf_setsockopt(skops, SOL_TCP, TCP_USER_TIMEOUT, &t, sizeof(t)) == 0) {
				c->flags |= KN_CONN_UTO;
				kn_stat_inc(KN_STAT_TIMEOUT_SET);
			}
		}
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		if (c->flags & KN_CONN_UTO) {
			t = 0;
			bpf_setsockopt(skops, SOL_TCP, TCP_USER_TIMEOUT, &t, sizeof(t));
			c->flags &= ~KN_CONN_UTO;
		}
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE)
			kn_conn_release(c);
		break;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
