// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* VM-tier self-tests of kmesh.ko's parser kfuncs and of which program types
 * may call them.
 *   kmod_http_run   SEC("syscall"): parse http_case.buf and run one check; the
 *                   test drives the request-head corpus through it (the same
 *                   expectations as the userspace build of the parser).
 *   kmod_sockops    a sock_ops program calling a module kfunc: possible on 6.12
 *                   only through the common kfunc hook (no sock_ops hook).
 *   kmod_skmsg      an sk_msg program parsing the message it sees. */
#include "common.h"
#include "kfuncs.h"

#define HTTP_OP_INFO         0
#define HTTP_OP_MATCH_HOST   1
#define HTTP_OP_MATCH_PATH   2
#define HTTP_OP_MATCH_HEADER 3
#define HTTP_OP_COPY         4

#define HTTP_CASE_BUF (2 * KMESH_HTTP_MAX_HEAD)

struct http_case {
	__u32 len;      /* bytes of buf to parse */
	__u32 op;       /* HTTP_OP_* */
	__u32 flags;    /* match flags, or the field for COPY */
	__u32 name_len; /* MATCH_HEADER: val starts with the name */
	__u32 val_len;  /* pattern (or name + value) */
	__s32 result;   /* out: the kfunc's return value */
	struct kmesh_http_info info; /* out */
	char val[320];
	char out[256];  /* out: COPY */
	char buf[HTTP_CASE_BUF];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct http_case);
} http_cases SEC(".maps");

SEC("syscall")
int kmod_http_run(void *unused)
{
	struct kmesh_http_req *req;
	struct http_case *c;
	__u32 k = 0, len, nlen, vlen;

	c = bpf_map_lookup_elem(&http_cases, &k);
	if (!c)
		return 1;
	len = c->len;
	nlen = c->name_len;
	vlen = c->val_len;
	if (len > sizeof(c->buf) || nlen > sizeof(c->val) || vlen > sizeof(c->val))
		return 2;
	req = bpf_kmesh_http_parse(c->buf, len);
	if (!req) {
		c->result = -12;
		return 0;
	}
	bpf_kmesh_http_info(req, &c->info, sizeof(c->info));
	switch (c->op) {
	case HTTP_OP_MATCH_HOST:
		c->result = bpf_kmesh_http_match_host(req, c->val, vlen, c->flags);
		break;
	case HTTP_OP_MATCH_PATH:
		c->result = bpf_kmesh_http_match_path(req, c->val, vlen, c->flags);
		break;
	case HTTP_OP_MATCH_HEADER:
		c->result = bpf_kmesh_http_match_header(req, c->val, vlen, nlen, c->flags);
		break;
	case HTTP_OP_COPY:
		c->result = bpf_kmesh_http_copy(req, c->flags, c->out, sizeof(c->out));
		break;
	default:
		c->result = 0;
	}
	bpf_kmesh_http_release(req);
	return 0;
}

__u64 sockops_calls;

SEC("sockops")
int kmod_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op == BPF_SOCK_OPS_TCP_CONNECT_CB && bpf_kmesh_abi_version() == KMESH_ABI_VERSION)
		__sync_fetch_and_add(&sockops_calls, 1);
	return 1;
}

__s32 skmsg_last_status;

SEC("sk_msg")
int kmod_skmsg(struct sk_msg_md *msg)
{
	struct kmesh_http_info info = {};
	struct kmesh_http_req *req;
	char head[64] = {};
	void *data, *end;

	if (bpf_msg_pull_data(msg, 0, sizeof(head), 0))
		return SK_PASS;
	data = msg->data;
	end = msg->data_end;
	if (data + sizeof(head) > end)
		return SK_PASS;
	__builtin_memcpy(head, data, sizeof(head));
	req = bpf_kmesh_http_parse(head, sizeof(head));
	if (!req)
		return SK_PASS;
	bpf_kmesh_http_info(req, &info, sizeof(info));
	skmsg_last_status = info.status;
	bpf_kmesh_http_release(req);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
