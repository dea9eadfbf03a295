/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Dual-engine waypoints. A connect() to a service (or workload) that has a
 * waypoint is sent to an instance of the waypoint's own service instead
 * (load-balanced like any service, lib/lb.h), and the first message on the
 * socket is prefixed with a header telling the waypoint the original
 * destination and the true client:
 *
 *   PROXY protocol v2 (default; HAProxy, nginx and Envoy accept it):
 *     12-byte signature, 0x21 (v2, PROXY), 0x11 TCP/IPv4 or 0x21 TCP/IPv6,
 *     length (12 or 36, big endian), source address, destination address,
 *     source port, destination port: 28 bytes (IPv4) or 52 (IPv6);
 *   Kmesh TLV (--waypoint-protocol=kmesh-tlv, upstream Kmesh's waypoint):
 *     0x01, 4-byte big-endian length (6 or 18), destination address and
 *     port, then 0xfe with length 0: 16 bytes (IPv4) or 28 (IPv6).
 *
 * Addresses and ports are in network order. An IPv4 connection made from a
 * dual-stack IPv6 socket (v4-mapped destination) gets the IPv4 form.
 *
 * The builder (km_wp_header) is plain code over a stack buffer, so the
 * BPF_PROG_RUN shim in bpf/selftest/waypoint.c runs it unchanged. */
#ifndef KMESH_BPF_WAYPOINT_H
#define KMESH_BPF_WAYPOINT_H

#include "maps.h"
#include "addr.h"
#include "enrol.h"
#include "sockkey.h"

#define KM_WP_HDR_MAX 52

/* PROXY protocol v2 signature, as three network-order words. */
#define KM_PP2_SIG0 0x0D0A0D0A
#define KM_PP2_SIG1 0x000D0A51
#define KM_PP2_SIG2 0x5549540A
#define KM_PP2_VER_PROXY 0x21 /* version 2, command PROXY */
#define KM_PP2_TCP4 0x11      /* AF_INET, STREAM */
#define KM_PP2_TCP6 0x21      /* AF_INET6, STREAM */

struct km_pp2 {
	__be32 sig[3];
	__u8 ver_cmd;
	__u8 fam;
	__be16 len; /* bytes after this field */
	union {
		struct {
			__be32 src, dst;
			__be16 sport, dport;
		} v4;
		struct {
			__u32 src[4], dst[4];
			__be16 sport, dport;
		} v6;
	};
} __attribute__((packed, aligned(4)));

#define KM_TLV_ORG_DST 0x01
#define KM_TLV_END     0xfe

struct km_tlv4 {
	__u8 type;
	__be32 len;
	__be32 ip;
	__be16 port;
	__u8 end;
	__be32 end_len;
} __attribute__((packed));

struct km_tlv6 {
	__u8 type;
	__be32 len;
	__u32 ip[4];
	__be16 port;
	__u8 end;
	__be32 end_len;
} __attribute__((packed));

_Static_assert(sizeof(struct km_pp2) == KM_WP_HDR_MAX, "PROXY v2 IPv6 header is 52 bytes");
_Static_assert(sizeof(struct km_tlv4) == 16, "Kmesh TLV IPv4 overhead is 16 bytes");
_Static_assert(sizeof(struct km_tlv6) == 28, "Kmesh TLV IPv6 overhead is 28 bytes");

/* Writes the header for a connection from src:sport to the original
 * destination dst:dport into buf (KM_WP_HDR_MAX bytes, 8-aligned) and
 * returns its length: 28 or 52 (PROXY v2), 16 or 28 (tlv set). */
static __always_inline __u32 km_wp_header(__u8 *buf, const __u32 src[4], __u16 sport, const __u32 dst[4],
					  __u16 dport, int tlv)
{
	int v4 = km_addr_is_v4mapped(dst);

	if (tlv) {
		if (v4) {
			struct km_tlv4 *h = (void *)buf;

			h->type = KM_TLV_ORG_DST;
			h->len = bpf_htonl(6);
			h->ip = dst[3];
			h->port = dport;
			h->end = KM_TLV_END;
			h->end_len = 0;
			return sizeof(*h);
		} else {
			struct km_tlv6 *h = (void *)buf;

			h->type = KM_TLV_ORG_DST;
			h->len = bpf_htonl(18);
			h->ip[0] = dst[0];
			h->ip[1] = dst[1];
			h->ip[2] = dst[2];
			h->ip[3] = dst[3];
			h->port = dport;
			h->end = KM_TLV_END;
			h->end_len = 0;
			return sizeof(*h);
		}
	}

	struct km_pp2 *h = (void *)buf;

	h->sig[0] = bpf_htonl(KM_PP2_SIG0);
	h->sig[1] = bpf_htonl(KM_PP2_SIG1);
	h->sig[2] = bpf_htonl(KM_PP2_SIG2);
	h->ver_cmd = KM_PP2_VER_PROXY;
	if (v4) {
		h->fam = KM_PP2_TCP4;
		h->len = bpf_htons(12);
		h->v4.src = src[3];
		h->v4.dst = dst[3];
		h->v4.sport = sport;
		h->v4.dport = dport;
		return 16 + 12;
	}
	h->fam = KM_PP2_TCP6;
	h->len = bpf_htons(36);
	h->v6.src[0] = src[0];
	h->v6.src[1] = src[1];
	h->v6.src[2] = src[2];
	h->v6.src[3] = src[3];
	h->v6.dst[0] = dst[0];
	h->v6.dst[1] = dst[1];
	h->v6.dst[2] = dst[2];
	h->v6.dst[3] = dst[3];
	h->v6.sport = sport;
	h->v6.dport = dport;
	return 16 + 36;
}

/* ---- connect() side ------------------------------------------------------ */

static __always_inline int km_wp_get(const struct km_wp_key *key, struct km_wp_val *out)
{
	struct km_wp_val *v = bpf_map_lookup_elem(&km_waypoint, key);

	if (!v)
		return KM_WP_NONE;
	__builtin_memcpy(out, v, sizeof(*out));
	/* A recycled element (see km_frontend_lookup) belongs to another key. */
	if (out->key.svc_id != key->svc_id || out->key.port != key->port || !km_addr_eq(out->key.addr, key->addr)) {
		km_stat_inc(KM_STAT_FE_RECYCLED);
		return KM_WP_NONE;
	}
	return out->action;
}

/* What a connect() to addr:port (service svc, 0 if addr is not a service
 * VIP) does about waypoints: enum km_wp_action, with *out filled. Service
 * and workload entries are looked up only while the daemon says some exist,
 * so connects in a mesh without waypoints cost one read of km_config (hot:
 * sock_create read it for the same socket) instead of a hash lookup. */
static __always_inline int km_wp_lookup(__u32 svc, const __u32 addr[4], __u16 port, struct km_wp_val *out)
{
	struct km_wp_key key = {};
	struct km_cfg *cfg = km_cfg();
	int act;

	if (svc) {
		if (cfg && (cfg->flags & KM_CFG_NO_SVC_WAYPOINTS))
			return KM_WP_NONE;
		key.svc_id = svc;
		key.port = port;
		return km_wp_get(&key, out);
	}
	if (!cfg || !(cfg->flags & KM_CFG_WL_WAYPOINTS))
		return KM_WP_NONE;
	km_addr_copy(key.addr, addr);
	key.port = port;
	act = km_wp_get(&key, out);
	if (act != KM_WP_NONE)
		return act;
	key.port = 0;
	return km_wp_get(&key, out);
}

/* Is the calling process a waypoint instance? Its own connects go where
 * they were addressed (load-balanced), never to a waypoint: no loops. */
static __always_inline int km_wp_exempt(void *ctx)
{
	struct km_enrol *e = km_enrolment_current(ctx);

	return e && (e->flags & KM_ENROL_WAYPOINT);
}

/* ---- sk_msg side ---------------------------------------------------------- */

/* Puts the header in front of the first message of a waypoint-bound socket.
 * Returns 0, or -1 when the message must be dropped (the send fails): the
 * header could not be allocated, or bytes already went out without it (a
 * send that raced the connect's completion, TCP Fast Open), which the
 * waypoint could only misread. */
static __always_inline int km_wp_write(struct sk_msg_md *msg, struct km_sock_state *st, int tlv)
{
	__u8 buf[KM_WP_HDR_MAX] __attribute__((aligned(8)));
	struct bpf_sock *sk = msg->sk;
	struct tcp_sock *tp;
	__u32 src[4], len;
	__u16 sport;
	void *data, *end;

	if (!sk)
		return -1;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp || tp->bytes_sent != 0 || tp->write_seq != tp->snd_una)
		return -1;

	if (msg->family == AF_INET) {
		km_addr_from_v4(src, msg->local_ip4);
	} else {
		src[0] = msg->local_ip6[0];
		km_barrier();
		src[1] = msg->local_ip6[1];
		km_barrier();
		src[2] = msg->local_ip6[2];
		km_barrier();
		src[3] = msg->local_ip6[3];
		km_barrier();
	}
	sport = bpf_htons((__u16)msg->local_port);
	len = km_wp_header(buf, src, sport, st->orig_addr, st->orig_port, tlv);

	if (bpf_msg_push_data(msg, 0, len, 0))
		return -1;
	if (bpf_msg_pull_data(msg, 0, len, 0))
		return -1;
	data = (void *)(long)msg->data;
	end = (void *)(long)msg->data_end;
	/* Constant sizes for the verifier. */
	switch (len) {
	case 16:
		if (data + 16 > end)
			return -1;
		__builtin_memcpy(data, buf, 16);
		break;
	case 28:
		if (data + 28 > end)
			return -1;
		__builtin_memcpy(data, buf, 28);
		break;
	case 52:
		if (data + 52 > end)
			return -1;
		__builtin_memcpy(data, buf, 52);
		break;
	default:
		return -1;
	}
	return 0;
}

#endif
