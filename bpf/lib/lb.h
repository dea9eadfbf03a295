/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Endpoint selection: frontend lookup, then tier and slot choice within the
 * service's active generation. Used by the connect programs and, unchanged,
 * by the BPF_PROG_RUN shims in bpf/selftest. */
#ifndef KMESH_BPF_LB_H
#define KMESH_BPF_LB_H

#include "maps.h"
#include "addr.h"

enum km_verdict {
	KM_PASS = 0,   /* not a mesh service: leave the connect() alone */
	KM_OK = 1,     /* backend chosen */
	KM_REFUSE = 2, /* mesh service without a usable backend */
};

/* The choice made for one connect(). */
struct km_pick {
	__u32 svc_id;
	__u32 workload_id;
	__u32 flags; /* KM_EP_* */
	__u32 addr[4]; /* chosen backend, v4 mapped for family v4 */
	__u16 port;    /* target port, network order */
	__u8 tier;
	__u8 pad;
};

/* Returns the service id of (addr, port), 0 if it is not a mesh frontend. */
static __always_inline __u32 km_frontend_lookup(const __u32 addr[4], __u16 port)
{
	struct km_fe_key key = {};
	struct km_fe_val val;
	struct km_fe_val *fe;

	km_addr_copy(key.addr, addr);
	key.port = port;
	key.proto = IPPROTO_TCP;
	fe = bpf_map_lookup_elem(&km_frontend, &key);
	if (!fe)
		return 0;
	__builtin_memcpy(&val, fe, sizeof(val));
	/* A deleted hash element can be recycled for another key while we hold
	 * it; the repeated key tells. */
	if (val.port != port || !km_addr_eq(val.addr, addr)) {
		km_stat_inc(KM_STAT_FE_RECYCLED);
		return 0;
	}
	return val.svc_id;
}

/* Slot index for weight w in [0, wsum): the first slot whose inclusive
 * cumulative weight exceeds w. Binary search, at most 32 probes. */
static __always_inline int km_weighted_idx(struct km_slot_key *key, __u32 n, __u32 w, __u32 *idx)
{
	__u32 lo = 0, hi = n - 1;
	struct km_slot *s;
	int i;

	for (i = 0; i < 32 && lo < hi; i++) {
		__u32 mid = lo + (hi - lo) / 2;

		key->idx = mid;
		s = bpf_map_lookup_elem(&km_endpoint, key);
		if (!s)
			return -1;
		if (s->cum_weight > w)
			hi = mid;
		else
			lo = mid + 1;
	}
	*idx = lo;
	return 0;
}

/* The same search over inline slots off..off+n-1 of rec (off + n <=
 * KM_INLINE_SLOTS, checked by the caller): at most log2(KM_INLINE_SLOTS)
 * probes, no lookups. */
static __always_inline __u32 km_weighted_idx_inline(const struct km_svc_rec *rec, __u32 off, __u32 n, __u32 w)
{
	__u32 lo = 0, hi = n - 1;
	int i;

	for (i = 0; i < 8 && lo < hi; i++) {
		__u32 mid = lo + (hi - lo) / 2;

		if (rec->slots[(off + mid) & (KM_INLINE_SLOTS - 1)].cum_weight > w)
			hi = mid;
		else
			lo = mid + 1;
	}
	return lo;
}

/* Where tier tier of family fam starts in an inline record: the slot count
 * of every (family, tier) before it. */
static __always_inline __u32 km_inline_off(const struct km_svc_rec *rec, __u32 fam, __u32 tier)
{
	__u32 off = 0;
	int t;

	for (t = 0; t < KM_MAX_TIERS; t++) {
		if (fam == KM_FAM_V6)
			off += rec->count[KM_FAM_V4][t];
		if (t < tier)
			off += rec->count[fam][t];
	}
	return off;
}

/* Chooses a backend of service svc for a connect() to port (network order)
 * in family fam. rnd is the random input (bpf_get_prandom_u32() in the
 * datapath, chosen by the caller in unit tests). A record with KM_REC_INLINE
 * holds its slots: one hash lookup (the generation record) in all; otherwise
 * the slot is a km_endpoint lookup (and a binary search for weighted). */
static __always_inline int km_lb_pick(__u32 svc, __u16 port, __u32 fam, __u32 rnd, struct km_pick *out)
{
	struct km_svc_key skey = { .svc_id = svc };
	struct km_slot_key key = {};
	struct km_svc_rec *rec;
	struct km_slot *slot;
	__u32 *active, gen, n = 0, idx = 0, pidx = KM_MAX_PORTS, tier = 0, off = 0, inl;
	int i;

	if (fam >= KM_FAMILIES)
		return KM_PASS;
	active = bpf_map_lookup_elem(&km_svc_active, &svc);
	if (!active)
		return KM_PASS;
	gen = *(volatile __u32 *)active;
	if (gen == 0)
		return KM_PASS; /* deleted or not yet configured */
	skey.gen = gen;
	rec = bpf_map_lookup_elem(&km_svc_gen, &skey);
	if (!rec) {
		km_stat_inc(KM_STAT_LOOKUP_MISS);
		return KM_REFUSE;
	}

	for (i = 0; i < KM_MAX_PORTS; i++) {
		if (i >= rec->nports)
			break;
		if (rec->port[i] == port) {
			pidx = i;
			break;
		}
	}
	if (pidx >= KM_MAX_PORTS)
		return KM_PASS; /* the frontend is being removed with its port */

	if (rec->locality == KM_LOC_FAILOVER) {
		for (i = 0; i < KM_MAX_TIERS; i++) {
			n = rec->count[fam][i];
			if (n) {
				tier = i;
				break;
			}
		}
	} else {
		/* strict uses only tier 0; without locality tier 0 holds all */
		n = rec->count[fam][0];
	}
	if (n == 0 || tier >= KM_MAX_TIERS)
		return KM_REFUSE;

	inl = rec->flags & KM_REC_INLINE;
	if (inl) {
		off = km_inline_off(rec, fam, tier);
		if (off >= KM_INLINE_SLOTS || n > KM_INLINE_SLOTS - off) {
			km_stat_inc(KM_STAT_LOOKUP_MISS);
			return KM_REFUSE;
		}
	}
	key.svc_id = svc;
	key.gen = gen;
	key.family = fam;
	key.tier = tier;
	switch (rec->algorithm) {
	case KM_LB_ROUND_ROBIN: {
		__u32 *ctr = bpf_map_lookup_elem(&km_rr, &svc);

		idx = ctr ? __sync_fetch_and_add(ctr, 1) % n : rnd % n;
		break;
	}
	case KM_LB_WEIGHTED: {
		__u32 wsum = rec->wsum[fam][tier];

		if (wsum == 0) {
			km_stat_inc(KM_STAT_LOOKUP_MISS);
			return KM_REFUSE;
		}
		if (inl) {
			idx = km_weighted_idx_inline(rec, off, n, rnd % wsum);
		} else if (km_weighted_idx(&key, n, rnd % wsum, &idx) < 0) {
			km_stat_inc(KM_STAT_LOOKUP_MISS);
			return KM_REFUSE;
		}
		break;
	}
	default:
		idx = rnd % n;
	}

	if (inl) {
		slot = &rec->slots[(off + idx) & (KM_INLINE_SLOTS - 1)];
	} else {
		key.idx = idx;
		slot = bpf_map_lookup_elem(&km_endpoint, &key);
		if (!slot) {
			km_stat_inc(KM_STAT_LOOKUP_MISS);
			return KM_REFUSE;
		}
	}
	if (pidx < KM_MAX_PORTS)
		out->port = slot->target[pidx];
	km_addr_copy(out->addr, slot->addr);
	out->svc_id = svc;
	out->workload_id = slot->workload_id;
	out->flags = slot->flags;
	out->tier = tier;
	return KM_OK;
}

#endif
