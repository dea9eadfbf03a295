// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* sk_msg on km_sockhash: same-node acceleration. Data sent on an enrolled
 * local socket whose peer socket is also in the sockhash is put straight into
 * the peer's receive queue, skipping the TCP/IP stack. Anything else passes.
 * Note for userspace relays: data delivered this way is not visible to
 * splice(2), so Go code must not io.Copy between such TCP sockets. */
#include "common.h"
#include "maps.h"
#include "sockkey.h"

SEC("sk_msg")
int km_sk_msg(struct sk_msg_md *msg)
{
	struct km_sock_key peer = {};

	KM_SOCK_KEY(msg, &peer, 1);
	/* On a miss the helper sets no redirect and SK_PASS sends normally. */
	if (bpf_msg_redirect_hash(msg, &km_sockhash, &peer, BPF_F_INGRESS) == SK_PASS)
		km_stat_inc(KM_STAT_ACCEL_REDIRECT);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
