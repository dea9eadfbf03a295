// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Harness self-test: proves the host and VM tiers load, attach and observe a real
 * BPF program. Counts IPv4 connect() calls per destination port. */
#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u16);   /* destination port, host order */
	__type(value, __u64); /* connect() calls seen */
} harness_connects SEC(".maps");

SEC("cgroup/connect4")
int harness_connect4(struct bpf_sock_addr *ctx)
{
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	__u64 one = 1, *cnt;

	cnt = bpf_map_lookup_elem(&harness_connects, &port);
	if (cnt)
		__sync_fetch_and_add(cnt, 1);
	else
		bpf_map_update_elem(&harness_connects, &port, &one, BPF_NOEXIST);
	return SOCK_ALLOW;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
