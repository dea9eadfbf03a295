// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Kernel-native mode, cgroup/sock_release: a socket that dialed an L7
 * listener is gone (the application closed it or exited). Its kn_conn entry
 * is removed and, if TCP did not already close it (kn_sockops.c), its
 * circuit-breaker slot is given back. This is the one place every such
 * socket passes, whatever happened to it: never sent, refused by the router,
 * failed to connect, or connected. */
#include "common.h"
#include "kn.h"

SEC("cgroup/sock_release")
int kn_sock_release(struct bpf_sock *sk)
{
	__u64 cookie;
	struct kn_conn *c;

	if (sk->type != SOCK_STREAM)
		return 1;
	cookie = bpf_get_socket_cookie(sk);
	c = bpf_map_lookup_elem(&kn_conns, &cookie);
	if (!c)
		return 1;
	kn_conn_release(c);
	bpf_map_delete_elem(&kn_conns, &cookie);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
