/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Every map of the L4 dataplane. All entry files include this header, so all
 * objects agree on the definitions; the loader creates each map once, pins it
 * under the bpffs pin directory and hands it to every object.
 *
 * Update protocol (ARCHITECTURE.md): km_svc_gen and km_endpoint entries are
 * immutable while reachable; a service changes by writing a new
 * generation and switching km_svc_active[svc] with one atomic store (the
 * km_flip syscall program). Superseded generations are deleted only after an
 * RCU grace period, so a running connect() never sees a half-written or
 * recycled slot. */
#ifndef KMESH_BPF_MAPS_H
#define KMESH_BPF_MAPS_H

#include "structs.h"
#include "events.h"

/* (VIP, port) -> service. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KM_MAX_FRONTENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct km_fe_key);
	__type(value, struct km_fe_val);
} km_frontend SEC(".maps");

/* service id -> active generation (0 = none: connects pass through). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, KM_MAX_SERVICES);
	__type(key, __u32);
	__type(value, __u32);
} km_svc_active SEC(".maps");

/* (service, generation) -> policy, slot counts and, for services of at most
 * KM_INLINE_SLOTS slots, the slots themselves (KM_REC_INLINE). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KM_MAX_SVC_GENS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct km_svc_key);
	__type(value, struct km_svc_rec);
} km_svc_gen SEC(".maps");

/* (service, generation, family, tier, idx) -> endpoint slot, for generations
 * whose record is not KM_REC_INLINE. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KM_MAX_SLOTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct km_slot_key);
	__type(value, struct km_slot);
} km_endpoint SEC(".maps");

/* service id -> round-robin counter (one shared atomic per service). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, KM_MAX_SERVICES);
	__type(key, __u32);
	__type(value, __u32);
} km_rr SEC(".maps");

/* Enrolment: cgroup id (the cgroup or any ancestor of the calling process). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KM_MAX_ENROL);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct km_enrol);
} km_enrol_cg SEC(".maps");

/* Enrolment: network namespace cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KM_MAX_ENROL);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct km_enrol);
} km_enrol_ns SEC(".maps");

/* Listening ports of enrolled workloads (maintained by sockops). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KM_MAX_ENROL);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct km_listen_key);
	__type(value, struct km_listen_val);
} km_listen SEC(".maps");

/* Waypoints: (service, port) or a workload's address -> what a connect()
 * to it does (lib/waypoint.h). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KM_MAX_WAYPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct km_wp_key);
	__type(value, struct km_wp_val);
} km_waypoint SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct km_cfg);
} km_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KM_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} km_stats SEC(".maps");

/* Socket-local state (BPF_F_CLONE: where the kernel clones it into accepted
 * sockets, a listener's mark carries over; km_listen covers the rest). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct km_sock_state);
} km_sock SEC(".maps");

/* Sockets sk_msg runs for: same-node acceleration (enrolled local sockets,
 * for sk_msg redirect) and waypoint-bound sockets until their header is
 * written (sk_msg runs only for sockets in the map it is attached to). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, KM_MAX_SOCKHASH);
	__type(key, struct km_sock_key);
	__type(value, __u64);
} km_sockhash SEC(".maps");

/* Bytes received by an accelerated socket through sk_msg redirect, keyed
 * like km_sockhash: the sender's sk_msg program adds, sockops reads. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KM_MAX_SOCKHASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct km_sock_key);
	__type(value, __u64);
} km_accel_rx SEC(".maps");

/* Connection records for telemetry (struct km_conn_event). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, KM_EVENTS_BYTES);
} km_events SEC(".maps");

/* Set by the loader: 0 when bpf_set_retval is unavailable (then a refused
 * connect() fails with EPERM instead of ECONNREFUSED). */
volatile const __u32 km_has_set_retval = 1;

/* Set by the loader: 1 when sock_ops programs may read the current task's
 * cgroup (bpf_get_current_ancestor_cgroup_id), so listen() by an enrolled
 * process is recognised without socket storage (MPTCP listeners). */
volatile const __u32 km_sockops_has_cgroup = 1;

static __always_inline void km_stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&km_stats, &idx);

	if (v)
		*v += 1; /* per-CPU: no atomic needed */
}

static __always_inline struct km_cfg *km_cfg(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&km_config, &zero);
}

/* A zeroed connection record in km_events, or NULL (counted as dropped). */
static __always_inline struct km_conn_event *km_event_reserve(void)
{
	struct km_conn_event *ev = bpf_ringbuf_reserve(&km_events, sizeof(*ev), 0);

	if (!ev) {
		km_stat_inc(KM_STAT_EVENTS_DROPPED);
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	return ev;
}

/* Submits a record without waking the reader (a wakeup per record cost more
 * than the rest of the telemetry path): the reader polls the ring
 * (pkg/dataplane EventPollInterval) and is woken only once a backlog of
 * KM_EVENTS_WAKEUP_BYTES builds up. */
static __always_inline void km_event_submit(struct km_conn_event *ev)
{
	__u64 flags = BPF_RB_NO_WAKEUP;

	if (bpf_ringbuf_query(&km_events, BPF_RB_AVAIL_DATA) >= KM_EVENTS_WAKEUP_BYTES)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(ev, flags);
}

#endif
