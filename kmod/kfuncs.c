// SPDX-License-Identifier: GPL-2.0
/* kfuncs exported to BPF programs.
 *
 * Registration (see ARCHITECTURE.md, "Kernel module"): all kfuncs are
 * registered ONCE, in the common hook (BPF_PROG_TYPE_UNSPEC), with a filter
 * that admits each kfunc only for the program types where it is safe. One
 * registration means the pitfall "a failed register_btf_kfunc_id_set() drops
 * the module's earlier registrations" cannot bite, and the common hook is the
 * only way a module kfunc reaches sock_ops and sk_msg programs on 6.12 (their
 * per-type hooks do not exist: -EINVAL). */
#include <linux/bpf.h>
#include <linux/bpf_verifier.h>
#include <linux/btf.h>
#include <linux/btf_ids.h>
#include <linux/filter.h>
#include <linux/module.h>
#include <linux/overflow.h>
#include <linux/slab.h>

#include "kmesh.h"

/* Parse objects alive (BPF programs must release theirs; the verifier makes
 * sure they do). Checked at unload. */
static atomic_long_t kmesh_http_reqs = ATOMIC_LONG_INIT(0);

struct kmesh_http_req *kmesh_http_req_alloc(u32 len, gfp_t gfp)
{
	struct kmesh_http_req *req;

	if (len > KMESH_HTTP_MAX_HEAD)
		return NULL;
	req = kmalloc(struct_size(req, data, len), gfp | __GFP_NOWARN);
	if (req) {
		req->len = len;
		atomic_long_inc(&kmesh_http_reqs);
	}
	return req;
}

void kmesh_http_req_parse(struct kmesh_http_req *req, bool truncated)
{
	int st = kmesh_http_parse(&req->msg, req->data, req->len, truncated);

	kmesh_stat_inc(KMESH_STAT_PARSED);
	if (st < 0)
		kmesh_stat_inc(KMESH_STAT_PARSE_ERRORS);
}

void kmesh_http_req_free(struct kmesh_http_req *req)
{
	if (req)
		atomic_long_dec(&kmesh_http_reqs);
	kfree(req);
}

void kmesh_kfuncs_exit(void)
{
	long n = atomic_long_read(&kmesh_http_reqs);

	WARN(n, "kmesh: %ld HTTP parse objects leaked\n", n);
}

__bpf_kfunc_start_defs();

/* bpf_kmesh_abi_version - the module's ABI version (kmesh_abi.h). */
__bpf_kfunc u32 bpf_kmesh_abi_version(void)
{
	return KMESH_ABI_VERSION;
}

/* bpf_kmesh_defer_connect - from cgroup/connect4|6 (ctx from
 * bpf_cast_to_kern_ctx()): make this connect() return
 * at once without a SYN; the real connect happens at the first send, to the
 * destination kmesh_l7_ops.route decides. tag is handed to route. Returns 0,
 * or a negative errno when the socket stays plain TCP (-EPERM safe mode,
 * -ENOSPC capacity, -EOPNOTSUPP not a plain TCP socket, -EBUSY wrong state). */
__bpf_kfunc int bpf_kmesh_defer_connect(struct bpf_sock_addr_kern *ctx, u64 tag)
{
	if (!ctx->sk)
		return -EINVAL;
	return kmesh_defer_mark(ctx->sk, tag);
}

/* bpf_kmesh_http_parse - parse the HTTP/1.x request head at the start of buf.
 * The module keeps a copy of at most KMESH_HTTP_MAX_HEAD bytes, so buf may
 * change or go away afterwards. Returns NULL only when out of memory; check
 * bpf_kmesh_http_info().status for the outcome. Release the result with
 * bpf_kmesh_http_release(). */
__bpf_kfunc struct kmesh_http_req *bpf_kmesh_http_parse(const void *buf, u32 buf__sz)
{
	u32 n = min_t(u32, buf__sz, KMESH_HTTP_MAX_HEAD);
	struct kmesh_http_req *req;

	req = kmesh_http_req_alloc(n, GFP_ATOMIC);
	if (!req)
		return NULL;
	memcpy(req->data, buf, n);
	kmesh_http_req_parse(req, buf__sz > n);
	return req;
}

__bpf_kfunc void bpf_kmesh_http_release(struct kmesh_http_req *req)
{
	kmesh_http_req_free(req);
}

/* bpf_kmesh_http_info - fill a struct kmesh_http_info (info__sz must be its size). */
__bpf_kfunc int bpf_kmesh_http_info(struct kmesh_http_req *req, void *info, u32 info__sz)
{
	if (info__sz != sizeof(struct kmesh_http_info))
		return -EINVAL;
	kmesh_http_fill_info(&req->msg, info);
	return 0;
}

/* Matchers: 1 match, 0 no match, -EINVAL for a malformed request or bad flags.
 * Patterns are pat__sz bytes (no NUL needed) in writable BPF memory (stack or
 * map value: the 6.12 verifier checks kfunc memory arguments for writes, so
 * .rodata strings are rejected). Flags: KMESH_MATCH_* (kmesh_abi.h). */
__bpf_kfunc int bpf_kmesh_http_match_host(struct kmesh_http_req *req, const char *pat, u32 pat__sz, u32 flags)
{
	return kmesh_http_match_host(&req->msg, req->data, (const u8 *)pat, pat__sz, flags);
}

__bpf_kfunc int bpf_kmesh_http_match_path(struct kmesh_http_req *req, const char *pat, u32 pat__sz, u32 flags)
{
	return kmesh_http_match_path(&req->msg, req->data, (const u8 *)pat, pat__sz, flags);
}

/* BPF calls take at most five arguments, so the header name and the value
 * pattern come in one buffer: nv[0, name_len) is the name, the rest the value. */
__bpf_kfunc int bpf_kmesh_http_match_header(struct kmesh_http_req *req, const char *nv, u32 nv__sz,
					    u32 name_len, u32 flags)
{
	if (name_len > nv__sz)
		return -EINVAL;
	return kmesh_http_match_header(&req->msg, req->data, (const u8 *)nv, name_len, (const u8 *)nv + name_len,
				       nv__sz - name_len, flags);
}

/* bpf_kmesh_http_copy - copy a KMESH_HTTP_FIELD_* value into dst (not NUL
 * terminated). Returns the field's full length, which may exceed dst__sz. */
__bpf_kfunc int bpf_kmesh_http_copy(struct kmesh_http_req *req, u32 field, void *dst, u32 dst__sz)
{
	const unsigned char *p;
	int len;

	if (req->msg.status < 0)
		return -EINVAL;
	len = kmesh_http_field(&req->msg, req->data, field, &p);
	if (len < 0)
		return len;
	memcpy(dst, p, min_t(u32, len, dst__sz));
	return len;
}

/* bpf_kmesh_l7_set_dest - from kmesh_l7_ops.route: where KMESH_L7_REDIRECT
 * connects. addr is 4 (IPv4) or 16 (IPv6) bytes in network order, port in
 * network order. An IPv4 address on an AF_INET6 socket becomes v4-mapped. */
__bpf_kfunc int bpf_kmesh_l7_set_dest(struct kmesh_l7_ctx *ctx, const void *addr, u32 addr__sz, u16 port)
{
	return kmesh_l7_set_dest(container_of(ctx, struct kmesh_l7_call, pub), addr, addr__sz,
				 (__force __be16)port);
}

/* bpf_kmesh_l7_set_error - from kmesh_l7_ops.route: the errno the first send
 * fails with when the verdict is KMESH_L7_NO_ROUTE (default EHOSTUNREACH).
 * One of EHOSTUNREACH, ENETUNREACH, ECONNREFUSED, ECONNRESET, ETIMEDOUT,
 * EBUSY (positive); -EINVAL for anything else. */
__bpf_kfunc int bpf_kmesh_l7_set_error(struct kmesh_l7_ctx *ctx, int err)
{
	return kmesh_l7_set_error(container_of(ctx, struct kmesh_l7_call, pub), err);
}

__bpf_kfunc_end_defs();

BTF_KFUNCS_START(kmesh_kfunc_ids)
BTF_ID_FLAGS(func, bpf_kmesh_abi_version)
BTF_ID_FLAGS(func, bpf_kmesh_defer_connect, KF_TRUSTED_ARGS)
BTF_ID_FLAGS(func, bpf_kmesh_http_parse, KF_ACQUIRE | KF_RET_NULL)
BTF_ID_FLAGS(func, bpf_kmesh_http_release, KF_RELEASE)
BTF_ID_FLAGS(func, bpf_kmesh_http_info, KF_TRUSTED_ARGS)
BTF_ID_FLAGS(func, bpf_kmesh_http_match_host, KF_TRUSTED_ARGS)
BTF_ID_FLAGS(func, bpf_kmesh_http_match_path, KF_TRUSTED_ARGS)
BTF_ID_FLAGS(func, bpf_kmesh_http_match_header, KF_TRUSTED_ARGS)
BTF_ID_FLAGS(func, bpf_kmesh_http_copy, KF_TRUSTED_ARGS)
BTF_ID_FLAGS(func, bpf_kmesh_l7_set_dest, KF_TRUSTED_ARGS)
BTF_ID_FLAGS(func, bpf_kmesh_l7_set_error, KF_TRUSTED_ARGS)
BTF_KFUNCS_END(kmesh_kfunc_ids)

/* kfuncs with a narrower audience than the rest. */
BTF_ID_LIST(kmesh_narrow_ids)
BTF_ID(func, bpf_kmesh_defer_connect)
BTF_ID(func, bpf_kmesh_l7_set_dest)
BTF_ID(func, bpf_kmesh_l7_set_error)

/* kmesh_kfunc_filter admits a kfunc for a program (0) or hides it (-EACCES).
 * The parser allocates with GFP_ATOMIC, so it is kept away from program types
 * that can run in NMI context (tracing, perf, kprobes). */
static int kmesh_kfunc_filter(const struct bpf_prog *prog, u32 kfunc_id)
{
	enum bpf_prog_type type = resolve_prog_type(prog);

	if (kfunc_id == kmesh_narrow_ids[0])
		return type == BPF_PROG_TYPE_CGROUP_SOCK_ADDR &&
		       (prog->expected_attach_type == BPF_CGROUP_INET4_CONNECT ||
			prog->expected_attach_type == BPF_CGROUP_INET6_CONNECT) ? 0 : -EACCES;
	if (kfunc_id == kmesh_narrow_ids[1] || kfunc_id == kmesh_narrow_ids[2])
		return type == BPF_PROG_TYPE_STRUCT_OPS ? 0 : -EACCES;

	switch (type) {
	case BPF_PROG_TYPE_CGROUP_SOCK_ADDR:
	case BPF_PROG_TYPE_CGROUP_SKB:
	case BPF_PROG_TYPE_SOCK_OPS:
	case BPF_PROG_TYPE_SK_MSG:
	case BPF_PROG_TYPE_SK_SKB:
	case BPF_PROG_TYPE_SYSCALL:
	case BPF_PROG_TYPE_XDP:
	case BPF_PROG_TYPE_SCHED_CLS:
	case BPF_PROG_TYPE_SCHED_ACT:
	case BPF_PROG_TYPE_STRUCT_OPS:
		return 0;
	default:
		return -EACCES;
	}
}

static const struct btf_kfunc_id_set kmesh_kfunc_set = {
	.owner = THIS_MODULE,
	.set = &kmesh_kfunc_ids,
	.filter = kmesh_kfunc_filter,
};

int kmesh_kfuncs_init(void)
{
	int err = register_btf_kfunc_id_set(BPF_PROG_TYPE_UNSPEC, &kmesh_kfunc_set);

	if (err)
		pr_err("kmesh: registering kfuncs: %d\n", err);
	return err;
}
