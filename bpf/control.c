// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Programs the daemon runs with BPF_PROG_RUN (never attached). km_flip is the
 * commit point of the update protocol: it switches a service to a new, fully
 * written generation with one atomic exchange, which a concurrent connect()
 * reads with a single load. (A map update from userspace copies the value with
 * memcpy, which gives no such guarantee.) */
#include "common.h"
#include "maps.h"

SEC("syscall")
int km_flip(struct km_flip_args *args)
{
	__u32 svc = args->svc_id;
	__u32 *active = bpf_map_lookup_elem(&km_svc_active, &svc);

	if (!active)
		return -1;
	args->old_gen = __sync_lock_test_and_set(active, args->gen);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
