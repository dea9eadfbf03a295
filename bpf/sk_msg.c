// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* sk_msg on km_sockhash: same-node acceleration. Data sent on an enrolled
 * local socket whose peer socket is also in the sockhash is put straight into
 * the peer's receive queue, skipping the TCP/IP stack. Anything else passes.
 * Note for userspace relays: data delivered this way is not visible to
 * splice(2), so Go code must not io.Copy between such TCP sockets.
 *
 * Redirected bytes never touch TCP's counters (and no ACK ever triggers the
 * sockops RTT callback), so this program also keeps the byte counts and emits
 * the PERIODIC records of accelerated connections.
 *
 * Waypoint-bound sockets are in the sockhash too: their first message gets
 * the waypoint header in front (lib/waypoint.h). */
#include "common.h"
#include "maps.h"
#include "sockkey.h"
#include "waypoint.h"

/* PERIODIC record of an accelerated connection; self is this socket's key. */
static __noinline void km_msg_report(struct sk_msg_md *msg, struct km_sock_state *st,
				     const struct km_sock_key *self, __u64 now)
{
	struct km_conn_event *ev;
	__u64 *rx;

	ev = km_event_reserve();
	if (!ev)
		return;
	ev->ts_ns = now;
	ev->start_ns = st->start_ns;
	ev->netns_cookie = bpf_get_netns_cookie(msg);
	ev->cgroup_id = st->cgroup_id;
	ev->bytes_sent = st->accel_tx;
	rx = bpf_map_lookup_elem(&km_accel_rx, self);
	if (rx)
		ev->bytes_received = *rx;
	ev->svc_id = st->svc_id;
	ev->src_workload = st->src_workload;
	ev->dst_workload = st->dst_workload;
	km_addr_copy(ev->local_addr, self->local);
	km_addr_copy(ev->remote_addr, self->remote);
	ev->local_port = self->local_port;
	ev->remote_port = self->remote_port;
	if (st->flags & KM_SK_REWRITTEN) {
		km_addr_copy(ev->orig_addr, st->orig_addr);
		ev->orig_port = bpf_ntohs(st->orig_port);
	}
	ev->type = KM_EV_PERIODIC;
	ev->direction = st->direction;
	ev->family = msg->family;
	ev->flags = st->flags;
	km_event_submit(ev);
}

SEC("sk_msg")
int km_sk_msg(struct sk_msg_md *msg)
{
	struct km_sock_key peer = {}, self = {};
	struct km_sock_state *st = 0;
	struct km_cfg *cfg;
	__u64 size = msg->size, *rx, now;

	if (msg->sk) {
		st = bpf_sk_storage_get(&km_sock, msg->sk, 0, 0);
		if (st && (st->flags & KM_SK_WP_HDR)) {
			cfg = km_cfg();
			if (km_wp_write(msg, st, cfg && (cfg->flags & KM_CFG_WP_TLV)) < 0) {
				km_stat_inc(KM_STAT_WP_HEADER_ERR);
				return SK_DROP;
			}
			/* Serialized by the socket lock: exactly one header. */
			st->flags &= ~KM_SK_WP_HDR;
			km_stat_inc(KM_STAT_WP_HEADER);
		}
	}

	KM_SOCK_KEY(msg, &peer, 1);
	/* On a miss the helper sets no redirect and SK_PASS sends normally. */
	if (bpf_msg_redirect_hash(msg, &km_sockhash, &peer, BPF_F_INGRESS) != SK_PASS)
		return SK_PASS;
	km_stat_inc(KM_STAT_ACCEL_REDIRECT);

	/* Count what TCP will not: bytes sent here, received by the peer. */
	if (st)
		__sync_fetch_and_add(&st->accel_tx, size);
	rx = bpf_map_lookup_elem(&km_accel_rx, &peer);
	if (rx)
		__sync_fetch_and_add(rx, size);

	cfg = km_cfg();
	if (!st || !cfg || !cfg->report_interval_ns || (cfg->flags & KM_CFG_NO_EVENTS) || !(st->flags & KM_SK_TRACKED))
		return SK_PASS;
	now = bpf_ktime_get_ns();
	if (now - st->last_report_ns < cfg->report_interval_ns)
		return SK_PASS;
	st->last_report_ns = now;
	km_addr_copy(self.local, peer.remote);
	km_addr_copy(self.remote, peer.local);
	self.local_port = peer.remote_port;
	self.remote_port = peer.local_port;
	self.scope = peer.scope;
	km_msg_report(msg, st, &self, now);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
