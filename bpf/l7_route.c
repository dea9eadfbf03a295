// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* struct_ops kmesh_l7_ops: the routing decision of a deferred connect, made
 * on the first request bytes with kmesh.ko's parser kfuncs, without copying
 * headers out. The route table is l7_rules, an ordered list evaluated first
 * match wins:
 *   - each rule has one condition (host, path, header, "is HTTP", "is not
 *     HTTP", always) and applies to one listener tag (0: any);
 *   - L7_RULE_AND chains a rule with the next one (all conditions must hold;
 *     the last rule of the chain carries the action);
 *   - the action is a KMESH_L7_* verdict and, for REDIRECT, a destination.
 * No match: KMESH_L7_PASS (the destination connect() was given). */
#include "common.h"
#include "kfuncs.h"
#include <bpf/bpf_tracing.h>

#define L7_COND_END      0 /* end of the table */
#define L7_COND_HOST     1
#define L7_COND_PATH     2
#define L7_COND_HEADER   3
#define L7_COND_HTTP     4 /* the head parsed (status >= 0) */
#define L7_COND_NOT_HTTP 5 /* the bytes are not a well-formed HTTP/1.x request */
#define L7_COND_ALWAYS   6

#define L7_RULE_AND   1 /* rule flag: also require the next rule */
#define L7_MAX_RULES  32

struct l7_rule {
	__u64 tag;       /* listener tag, 0 = any */
	__u32 cond;      /* L7_COND_* */
	__u32 match;     /* KMESH_MATCH_* flags */
	__u32 rule_flags;
	__u32 verdict;   /* KMESH_L7_* */
	__u32 name_len;  /* HEADER: value starts with the name */
	__u32 value_len; /* bytes of value used */
	char value[192];
	__u32 family;    /* destination family for REDIRECT */
	__u32 addr[4];   /* network order */
	__u16 port;      /* network order */
	__u16 pad;
	__u32 pad2;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, L7_MAX_RULES);
	__type(key, __u32);
	__type(value, struct l7_rule);
} l7_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, L7_MAX_RULES);
	__type(key, __u32);
	__type(value, __u64);
} l7_rule_hits SEC(".maps");

/* The last decision, for tests and debugging. */
struct l7_decision {
	__u64 tag;
	__s32 status;    /* parse status */
	__u32 verdict;
	__s32 rule;      /* matching rule, -1 none */
	__u32 len;       /* bytes seen */
	__u32 orig_ip4;
	__u16 orig_port;
	__u8 method;
	__u8 version;
	__u32 decisions; /* route calls so far */
	char path[64];   /* copy of the path (truncated) */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct l7_decision);
} l7_last SEC(".maps");

static __always_inline int cond_holds(struct l7_rule *r, struct kmesh_http_req *req, int status)
{
	__u32 nlen = r->name_len, vlen = r->value_len;

	if (nlen > vlen || vlen > sizeof(r->value))
		return 0;
	switch (r->cond) {
	case L7_COND_HOST:
		return bpf_kmesh_http_match_host(req, r->value, vlen, r->match) == 1;
	case L7_COND_PATH:
		return bpf_kmesh_http_match_path(req, r->value, vlen, r->match) == 1;
	case L7_COND_HEADER:
		return bpf_kmesh_http_match_header(req, r->value, vlen, nlen, r->match) == 1;
	case L7_COND_HTTP:
		return status >= 0;
	case L7_COND_NOT_HTTP:
		return status < 0;
	case L7_COND_ALWAYS:
		return 1;
	}
	return 0;
}

SEC("struct_ops/kmesh_route")
int BPF_PROG(kmesh_route, struct kmesh_l7_ctx *lctx, struct kmesh_http_req *req)
{
	struct kmesh_http_info info = {};
	struct l7_decision *last;
	struct l7_rule *r;
	__u32 i, k = 0, verdict = KMESH_L7_PASS;
	__u64 tag = lctx->tag, *hits;
	int matched = -1, ok = 1;

	bpf_kmesh_http_info(req, &info, sizeof(info));
	for (i = 0; i < L7_MAX_RULES; i++) {
		__u32 idx = i;

		r = bpf_map_lookup_elem(&l7_rules, &idx);
		if (!r || r->cond == L7_COND_END)
			break;
		if (r->tag && r->tag != tag) {
			ok = 1;
			continue;
		}
		ok = ok && cond_holds(r, req, info.status);
		if (r->rule_flags & L7_RULE_AND)
			continue;
		if (ok) {
			matched = i;
			verdict = r->verdict;
			if (verdict == KMESH_L7_REDIRECT)
				bpf_kmesh_l7_set_dest(lctx, r->addr, r->family == AF_INET6 ? 16 : 4, r->port);
			hits = bpf_map_lookup_elem(&l7_rule_hits, &idx);
			if (hits)
				__sync_fetch_and_add(hits, 1);
			break;
		}
		ok = 1;
	}

	last = bpf_map_lookup_elem(&l7_last, &k);
	if (last) {
		last->tag = tag;
		last->status = info.status;
		last->verdict = verdict;
		last->rule = matched;
		last->len = lctx->len;
		last->orig_ip4 = lctx->orig_ip4;
		last->orig_port = lctx->orig_port;
		last->method = info.method;
		last->version = info.version;
		last->decisions++;
		__builtin_memset(last->path, 0, sizeof(last->path));
		if (info.flags & KMESH_HTTP_F_REQLINE)
			bpf_kmesh_http_copy(req, KMESH_HTTP_FIELD_PATH, last->path, sizeof(last->path));
	}
	return verdict;
}

SEC(".struct_ops.link")
struct kmesh_l7_ops kmesh_router = {
	.route = (void *)kmesh_route,
	.name = "kmesh_router",
};

char LICENSE[] SEC("license") = "Dual BSD/GPL";
