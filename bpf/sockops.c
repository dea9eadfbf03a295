// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* sockops: connection tracking for enrolled sockets. At establishment it
 * emits an OPEN record and asks for state callbacks; at close a CLOSE record
 * (bytes each way, retransmits, srtt, duration); with a report interval set,
 * PERIODIC records for long-lived connections from the RTT callback. When
 * same-node acceleration is on, both ends of a connection between enrolled
 * local sockets go into km_sockhash, where sk_msg redirects between them;
 * waypoint-bound sockets go there too, for sk_msg to write their header. */
#include "common.h"
#include "maps.h"
#include "addr.h"
#include "sock.h"
#include "sockkey.h"
#include "enrol.h"

#define KM_RCV_SHUTDOWN  1
#define KM_SEND_SHUTDOWN 2

/* TCP's byte counters count sequence space: the SYN of an active opener is
 * in bytes_acked, FINs are in bytes_acked (ours, once acked) and
 * bytes_received (the peer's). Records carry application bytes, so those
 * are taken out. Our FIN: the shutdown bits (read before tcp_done() sets
 * them all). The peer's FIN: SOCK_DONE, which only tcp_fin() sets; the
 * shutdown bits cannot tell, since close() sets RCV_SHUTDOWN too and an
 * orphaned socket in FIN_WAIT2 reaches TCP_CLOSE before the peer's FIN. */
static __always_inline void km_app_bytes(struct bpf_sock_ops *skops, struct km_sock_state *st,
					 __u64 *sent, __u64 *rcvd)
{
	__u64 acked = skops->bytes_acked, recv = skops->bytes_received;
	struct bpf_sock *sk = skops->sk;
	struct tcp_sock *tp = 0;
	__u64 sk_flags = 0;
	__u8 shut = 0;

	if (st->direction == KM_DIR_OUTBOUND && acked)
		acked--; /* SYN */
	if (sk)
		tp = bpf_skc_to_tcp_sock(sk);
	if (tp) {
		shut = BPF_CORE_READ_BITFIELD(&tp->inet_conn.icsk_inet.sk, sk_shutdown);
		sk_flags = tp->inet_conn.icsk_inet.sk.__sk_common.skc_flags;
	}
	if ((shut & KM_SEND_SHUTDOWN) && acked && skops->snd_una == skops->snd_nxt &&
	    skops->state != BPF_TCP_ESTABLISHED && skops->state != BPF_TCP_CLOSE_WAIT)
		acked--; /* our FIN, acked */
	if ((sk_flags & (1ULL << bpf_core_enum_value(enum sock_flags, SOCK_DONE))) && recv)
		recv--; /* the peer's FIN */
	*sent = acked;
	*rcvd = recv;
}

/* A real subprogram (not inlined): besides keeping the callers small, its
 * signature puts struct km_conn_event into BTF for bpf2go's Go type. */
static __noinline void km_fill_event(struct km_conn_event *ev, struct bpf_sock_ops *skops,
				     struct km_sock_state *st)
{
	__u64 sent, rcvd;

	ev->start_ns = st->start_ns;
	ev->sock_cookie = bpf_get_socket_cookie(skops);
	ev->netns_cookie = bpf_get_netns_cookie(skops);
	ev->cgroup_id = st->cgroup_id;
	km_app_bytes(skops, st, &sent, &rcvd);
	ev->bytes_sent = sent + st->accel_tx;
	ev->bytes_received = rcvd;
	if (st->flags & KM_SK_ACCEL) {
		struct km_sock_key key = {};
		__u64 *rx;

		KM_SOCK_KEY(skops, &key, 0);
		rx = bpf_map_lookup_elem(&km_accel_rx, &key);
		if (rx)
			ev->bytes_received += *rx;
	}
	ev->total_retrans = skops->total_retrans;
	ev->srtt_us = skops->srtt_us >> 3; /* the kernel keeps srtt << 3 */
	ev->svc_id = st->svc_id;
	ev->src_workload = st->src_workload;
	ev->dst_workload = st->dst_workload;
	if (skops->family == AF_INET) {
		km_addr_from_v4(ev->local_addr, skops->local_ip4);
		km_addr_from_v4(ev->remote_addr, skops->remote_ip4);
	} else {
		ev->local_addr[0] = skops->local_ip6[0];
		ev->local_addr[1] = skops->local_ip6[1];
		ev->local_addr[2] = skops->local_ip6[2];
		ev->local_addr[3] = skops->local_ip6[3];
		ev->remote_addr[0] = skops->remote_ip6[0];
		ev->remote_addr[1] = skops->remote_ip6[1];
		ev->remote_addr[2] = skops->remote_ip6[2];
		ev->remote_addr[3] = skops->remote_ip6[3];
	}
	ev->local_port = skops->local_port;
	ev->remote_port = bpf_ntohl(skops->remote_port);
	if (st->flags & KM_SK_REWRITTEN) {
		km_addr_copy(ev->orig_addr, st->orig_addr);
		ev->orig_port = bpf_ntohs(st->orig_port);
	}
	ev->direction = st->direction;
	ev->family = skops->family;
	ev->flags = st->flags;
}

static __always_inline void km_emit(struct bpf_sock_ops *skops, struct km_sock_state *st, struct km_cfg *cfg,
				    __u8 type, __u64 now)
{
	struct km_conn_event *ev;

	/* Monitoring off: the telemetry path costs nothing, not even a reserve. */
	if (cfg && (cfg->flags & KM_CFG_NO_EVENTS))
		return;
	ev = km_event_reserve();
	if (!ev)
		return;
	km_fill_event(ev, skops, st);
	ev->ts_ns = now;
	ev->type = type;
	km_event_submit(ev);
}

static __always_inline void km_accel_insert(struct bpf_sock_ops *skops, struct km_sock_state *st)
{
	struct km_sock_key key = {};
	__u64 zero = 0;

	KM_SOCK_KEY(skops, &key, 0);
	bpf_map_update_elem(&km_accel_rx, &key, &zero, BPF_ANY);
	if (bpf_sock_hash_update(skops, &km_sockhash, &key, BPF_ANY) == 0) {
		st->flags |= KM_SK_ACCEL;
		km_stat_inc(KM_STAT_ACCEL_INSERT);
	} else {
		bpf_map_delete_elem(&km_accel_rx, &key);
	}
}

/* A waypoint-bound socket joins the sockhash so that sk_msg runs on its
 * first send and writes the waypoint header (lib/waypoint.h). sockops runs
 * before connect() returns (or the socket turns writable), so the header
 * precedes the first byte. If the map is full the waypoint gets no header
 * and rejects the connection. */
static __always_inline void km_wp_insert(struct bpf_sock_ops *skops)
{
	struct km_sock_key key = {};

	KM_SOCK_KEY(skops, &key, 0);
	if (bpf_sock_hash_update(skops, &km_sockhash, &key, BPF_ANY))
		km_stat_inc(KM_STAT_WP_HEADER_ERR);
}

static __always_inline void km_established(struct bpf_sock_ops *skops, struct km_sock_state *st,
					   struct km_cfg *cfg, int accel, __u64 now)
{
	__u32 cb = BPF_SOCK_OPS_STATE_CB_FLAG;

	if (cfg && cfg->report_interval_ns)
		cb |= BPF_SOCK_OPS_RTT_CB_FLAG;
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | cb);
	st->flags |= KM_SK_TRACKED;
	st->last_report_ns = now;
	if (accel && cfg && (cfg->flags & KM_CFG_ACCEL))
		km_accel_insert(skops, st);
	if ((st->flags & KM_SK_WP_HDR) && !(st->flags & KM_SK_ACCEL))
		km_wp_insert(skops);
	km_emit(skops, st, cfg, KM_EV_OPEN, now);
}

SEC("sockops")
int km_sockops(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct km_cfg *cfg = km_cfg();
	struct km_listen_key lkey = {};
	struct km_listen_val lval = {}, *lv;
	struct km_sock_state *st;
	struct km_enrol *e;
	__u64 now, cookie;

	if (!sk)
		return 1;

	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		st = bpf_sk_storage_get(&km_sock, sk, 0, 0);
		if (!st || !(st->flags & KM_SK_ENROLLED))
			return 1;
		now = bpf_ktime_get_ns();
		st->direction = KM_DIR_OUTBOUND;
		if (!st->start_ns)
			st->start_ns = now;
		km_established(skops, st, cfg, st->flags & KM_SK_LOCAL_DST, now);
		break;

	case BPF_SOCK_OPS_TCP_LISTEN_CB: {
		/* listen() by an enrolled process: remember the port, so the
		 * connections it accepts are recognised (neither a listener's
		 * socket storage nor the process behind an MPTCP listener's
		 * kernel-created TCP subflow reach them otherwise), and watch
		 * for the listener's close. Runs in the listen() syscall. */
		__u32 wl = 0;
		__u64 cg = 0;

		st = bpf_sk_storage_get(&km_sock, sk, 0, 0);
		if (st && (st->flags & KM_SK_LISTENER))
			return 1;
		if (st && (st->flags & KM_SK_ENROLLED)) {
			wl = st->src_workload;
			cg = st->cgroup_id;
		} else if (km_sockops_has_cgroup && km_enrolled_current(skops, &wl)) {
			cg = bpf_get_current_cgroup_id();
		} else {
			return 1;
		}
		st = bpf_sk_storage_get(&km_sock, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!st)
			return 1;
		lkey.netns_cookie = bpf_get_netns_cookie(skops);
		lkey.port = skops->local_port;
		lval.workload_id = wl;
		lval.cgroup_id = cg;
		bpf_map_update_elem(&km_listen, &lkey, &lval, BPF_NOEXIST);
		lv = bpf_map_lookup_elem(&km_listen, &lkey);
		if (!lv)
			return 1;
		__sync_fetch_and_add(&lv->listeners, 1);
		st->flags |= KM_SK_ENROLLED | KM_SK_LISTENER;
		st->src_workload = wl;
		st->cgroup_id = cg;
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	}

	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		/* Enrolled if the storage was cloned from an enrolled listener,
		 * if the namespace is enrolled, or if an enrolled process
		 * listens on the port. */
		st = bpf_sk_storage_get(&km_sock, sk, 0, 0);
		if (!st || !(st->flags & KM_SK_ENROLLED)) {
			__u32 wl;
			__u64 cg = 0;

			cookie = bpf_get_netns_cookie(skops);
			e = bpf_map_lookup_elem(&km_enrol_ns, &cookie);
			if (e) {
				wl = e->workload_id;
			} else {
				lkey.netns_cookie = cookie;
				lkey.port = skops->local_port;
				lv = bpf_map_lookup_elem(&km_listen, &lkey);
				if (!lv)
					return 1;
				wl = lv->workload_id;
				cg = lv->cgroup_id;
			}
			st = bpf_sk_storage_get(&km_sock, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
			if (!st)
				return 1;
			st->src_workload = wl;
			st->cgroup_id = cg;
		}
		now = bpf_ktime_get_ns();
		st->flags = KM_SK_ENROLLED;
		st->direction = KM_DIR_INBOUND;
		st->svc_id = 0;
		st->dst_workload = 0;
		st->start_ns = now;
		km_established(skops, st, cfg, 1, now);
		break;

	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != BPF_TCP_CLOSE)
			return 1;
		st = bpf_sk_storage_get(&km_sock, sk, 0, 0);
		if (st && (st->flags & KM_SK_LISTENER) && skops->args[0] == BPF_TCP_LISTEN) {
			st->flags &= ~KM_SK_LISTENER;
			lkey.netns_cookie = bpf_get_netns_cookie(skops);
			lkey.port = skops->local_port;
			lv = bpf_map_lookup_elem(&km_listen, &lkey);
			if (lv && __sync_fetch_and_add(&lv->listeners, -1) <= 1)
				bpf_map_delete_elem(&km_listen, &lkey);
			return 1;
		}
		if (!st || !(st->flags & KM_SK_TRACKED))
			return 1;
		st->flags &= ~KM_SK_TRACKED; /* exactly one CLOSE per connection */
		km_emit(skops, st, cfg, KM_EV_CLOSE, bpf_ktime_get_ns());
		if (st->flags & KM_SK_ACCEL) {
			struct km_sock_key key = {};

			KM_SOCK_KEY(skops, &key, 0);
			bpf_map_delete_elem(&km_accel_rx, &key);
		}
		break;

	case BPF_SOCK_OPS_RTT_CB:
		if (!cfg || !cfg->report_interval_ns)
			return 1;
		st = bpf_sk_storage_get(&km_sock, sk, 0, 0);
		if (!st || !(st->flags & KM_SK_TRACKED))
			return 1;
		now = bpf_ktime_get_ns();
		if (now - st->last_report_ns < cfg->report_interval_ns)
			return 1;
		st->last_report_ns = now;
		km_emit(skops, st, cfg, KM_EV_PERIODIC, now);
		break;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
