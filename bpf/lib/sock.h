/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Socket-local state helpers (km_sock) and connection records. */
#ifndef KMESH_BPF_SOCK_H
#define KMESH_BPF_SOCK_H

#include "maps.h"
#include "addr.h"
#include "events.h"

/* Records the enrolment of a socket created or connected by the current
 * process. Returns the state, or NULL when storage cannot be allocated. */
static __always_inline struct km_sock_state *km_sock_enrol(struct bpf_sock *sk, __u32 wl)
{
	struct km_sock_state *st;

	st = bpf_sk_storage_get(&km_sock, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return 0;
	if (!(st->flags & KM_SK_ENROLLED)) {
		st->flags |= KM_SK_ENROLLED;
		st->src_workload = wl;
		st->cgroup_id = bpf_get_current_cgroup_id();
	}
	return st;
}

#endif
