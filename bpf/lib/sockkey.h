/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Sockhash keys for same-node acceleration, built the same way from sockops
 * (inserting a socket) and sk_msg (looking up its peer). */
#ifndef KMESH_BPF_SOCKKEY_H
#define KMESH_BPF_SOCKKEY_H

#include "addr.h"

/* Keeps the compiler from merging the per-family context loads into one load
 * through a computed context pointer, which the verifier rejects. */
#define km_barrier() asm volatile("" ::: "memory")

/* ctx is a bpf_sock_ops or sk_msg_md; both carry these fields with the same
 * conventions (remote_port network order in the upper half, local_port host
 * order). The key describes the local end, or with peer set the other end. */
#define KM_SOCK_KEY(ctx, k, peer)                                                  \
	do {                                                                       \
		__u32 *__l = (peer) ? (k)->remote : (k)->local;                    \
		__u32 *__r = (peer) ? (k)->local : (k)->remote;                    \
		__u32 __lp = (ctx)->local_port;                                    \
		__u32 __rp = bpf_ntohl((ctx)->remote_port);                        \
		if ((ctx)->family == AF_INET) {                                    \
			__u32 __l4 = (ctx)->local_ip4;                             \
			km_barrier();                                              \
			__u32 __r4 = (ctx)->remote_ip4;                            \
			km_barrier();                                              \
			km_addr_from_v4(__l, __l4);                                \
			km_addr_from_v4(__r, __r4);                                \
		} else {                                                           \
			__l[0] = (ctx)->local_ip6[0];                              \
			km_barrier();                                              \
			__l[1] = (ctx)->local_ip6[1];                              \
			km_barrier();                                              \
			__l[2] = (ctx)->local_ip6[2];                              \
			km_barrier();                                              \
			__l[3] = (ctx)->local_ip6[3];                              \
			km_barrier();                                              \
			__r[0] = (ctx)->remote_ip6[0];                             \
			km_barrier();                                              \
			__r[1] = (ctx)->remote_ip6[1];                             \
			km_barrier();                                              \
			__r[2] = (ctx)->remote_ip6[2];                             \
			km_barrier();                                              \
			__r[3] = (ctx)->remote_ip6[3];                             \
			km_barrier();                                              \
		}                                                                  \
		(k)->local_port = (peer) ? __rp : __lp;                            \
		(k)->remote_port = (peer) ? __lp : __rp;                           \
		(k)->scope = km_addr_is_loopback((peer) ? (k)->local : (k)->remote) \
				     ? bpf_get_netns_cookie(ctx) : 0;              \
	} while (0)

#endif
