// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* VM-tier self-test: a cgroup/connect4 program that asks kmesh.ko to defer a
 * connect and then denies it. That leaves a socket marked (on the module's
 * proto) but never connected, the state the module must unwind on bind,
 * listen, close and unload. Only connects to deny_port are touched. */
#include "common.h"
#include "kfuncs.h"

__u16 deny_port; /* host order */
__s32 deny_kfunc_ret;

SEC("cgroup/connect4")
int defer_then_deny4(struct bpf_sock_addr *ctx)
{
	if (bpf_ntohs((__u16)ctx->user_port) != deny_port)
		return SOCK_ALLOW;
	deny_kfunc_ret = kmesh_defer_connect(ctx, 7);
	return SOCK_DENY;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
