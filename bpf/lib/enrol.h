/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Enrolment: is the calling process meshed? Programs are attached once (to
 * the cgroup2 root by default); which processes they act on is decided here,
 * by map lookups: the socket's network namespace cookie, or the cgroup of the
 * calling process or any of its ancestors. Only process-context hooks
 * (connect, sock_create, sockops' listen callback) may call
 * km_enrolled_current. */
#ifndef KMESH_BPF_ENROL_H
#define KMESH_BPF_ENROL_H

#include "maps.h"

#define KM_MAX_CGROUP_LEVELS 32

/* The enrolment of the current process, or NULL. */
static __always_inline struct km_enrol *km_enrolment_current(void *ctx)
{
	struct km_cfg *cfg;
	struct km_enrol *e;
	__u64 cookie, levels, id;
	int l;

	cookie = bpf_get_netns_cookie(ctx);
	e = bpf_map_lookup_elem(&km_enrol_ns, &cookie);
	if (e)
		return e;
	cfg = km_cfg();
	if (!cfg)
		return 0;
	levels = cfg->cgroup_levels;
	/* Only levels that hold an enrolled cgroup are looked up, usually one. */
	for (l = 0; l < KM_MAX_CGROUP_LEVELS; l++) {
		if (!(levels >> l))
			break;
		if (!((levels >> l) & 1))
			continue;
		id = bpf_get_current_ancestor_cgroup_id(l);
		if (!id)
			break; /* deeper than the process's cgroup */
		e = bpf_map_lookup_elem(&km_enrol_cg, &id);
		if (e)
			return e;
	}
	return 0;
}

/* Fills *wl and returns 1 when the current process is enrolled. */
static __always_inline int km_enrolled_current(void *ctx, __u32 *wl)
{
	struct km_enrol *e = km_enrolment_current(ctx);

	if (!e)
		return 0;
	*wl = e->workload_id;
	return 1;
}

#endif
