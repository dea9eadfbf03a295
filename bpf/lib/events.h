/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection records written to the km_events ring buffer by sockops and read
 * by pkg/dataplane's EventReader (telemetry, issue #8). One record at
 * establishment, one at close, and periodic ones for long-lived connections
 * when km_config.report_interval_ns is set. */
#ifndef KMESH_BPF_EVENTS_H
#define KMESH_BPF_EVENTS_H

enum km_event_type {
	KM_EV_OPEN = 1,
	KM_EV_CLOSE = 2,
	KM_EV_PERIODIC = 3,
};

struct km_conn_event {
	__u64 ts_ns;          /* bpf_ktime_get_ns() at emission */
	__u64 start_ns;       /* connect() (outbound) or accept (inbound) */
	__u64 sock_cookie;
	__u64 netns_cookie;
	__u64 cgroup_id;      /* cgroup of the process that owns the socket */
	__u64 bytes_sent;     /* bytes acked by the peer */
	__u64 bytes_received;
	__u32 total_retrans;
	__u32 srtt_us;
	__u32 svc_id;         /* 0 when the connection did not go through a VIP */
	__u32 src_workload;   /* this socket's enrolled workload */
	__u32 dst_workload;   /* backend workload (outbound via a VIP) */
	__u32 local_addr[4];  /* v4 mapped, network order */
	__u32 remote_addr[4]; /* the actual peer: the backend for outbound */
	__u32 orig_addr[4];   /* the VIP as dialed (outbound via a VIP) */
	__u16 local_port;     /* host order */
	__u16 remote_port;    /* host order */
	__u16 orig_port;      /* host order */
	__u8 type;            /* enum km_event_type */
	__u8 direction;       /* enum km_direction */
	__u8 family;          /* AF_INET or AF_INET6 of the socket */
	__u8 flags;           /* KM_SK_* of the socket */
	__u8 pad[2];
};

#endif
