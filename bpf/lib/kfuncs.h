/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* kfuncs and types of kmesh.ko (kmod/). Objects that include this header load
 * only where the module is loaded; the daemon checks the module's ABI version
 * over genetlink (pkg/kmod) before it loads them.
 *
 * Which program types may call what (the module's kfunc filter):
 *   bpf_kmesh_defer_connect   cgroup/connect4, cgroup/connect6
 *   bpf_kmesh_l7_set_dest     struct_ops kmesh_l7_ops
 *   bpf_kmesh_l7_set_error    struct_ops kmesh_l7_ops
 *   all others                cgroup sock_addr/skb, sock_ops, sk_msg, sk_skb,
 *                             syscall, xdp, tc, struct_ops
 * Strings passed as (ptr, ptr__sz) must be in writable memory (stack or map
 * value, including .data/.bss globals): the verifier rejects .rodata. */
#ifndef KMESH_BPF_KFUNCS_H
#define KMESH_BPF_KFUNCS_H

#include "../../kmod/kmesh_abi.h"

/* Kernel-owned parse result; opaque. (A body instead of a forward
 * declaration: cilium/ebpf's kfunc type check treats a FWD as incompatible
 * with the module's STRUCT.) */
struct kmesh_http_req {
	int opaque;
};

/* The struct_ops type a router implements (module BTF: struct kmesh_l7_ops). */
struct kmesh_l7_ops {
	int (*route)(struct kmesh_l7_ctx *ctx, struct kmesh_http_req *req);
	char name[16];
};

extern __u32 bpf_kmesh_abi_version(void) __ksym;

/* From cgroup/connect4|6: defer this connect to the first send. 0 or -errno
 * (the socket then stays plain TCP). The kfunc takes the kernel's context
 * (6.12 only maps __sk_buff and xdp_md to kernel types for kfunc arguments),
 * so call it as kmesh_defer_connect(ctx, tag). */
extern int bpf_kmesh_defer_connect(struct bpf_sock_addr_kern *ctx, __u64 tag) __ksym;
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;
#define kmesh_defer_connect(ctx, tag) \
	bpf_kmesh_defer_connect((struct bpf_sock_addr_kern *)bpf_cast_to_kern_ctx(ctx), (tag))

/* Parser: parse returns NULL only when out of memory; always release. */
extern struct kmesh_http_req *bpf_kmesh_http_parse(const void *buf, __u32 buf__sz) __ksym;
extern void bpf_kmesh_http_release(struct kmesh_http_req *req) __ksym;
extern int bpf_kmesh_http_info(struct kmesh_http_req *req, void *info, __u32 info__sz) __ksym;
/* 1 match, 0 no match, -EINVAL (-22) malformed request or bad flags. */
extern int bpf_kmesh_http_match_host(struct kmesh_http_req *req, const char *pat, __u32 pat__sz,
				     __u32 flags) __ksym;
extern int bpf_kmesh_http_match_path(struct kmesh_http_req *req, const char *pat, __u32 pat__sz,
				     __u32 flags) __ksym;
/* nv holds the header name (name_len bytes) followed by the value pattern:
 * BPF calls take at most five arguments. Names are case-insensitive;
 * ":method", ":path" and ":authority" address the request line. */
extern int bpf_kmesh_http_match_header(struct kmesh_http_req *req, const char *nv, __u32 nv__sz,
				       __u32 name_len, __u32 flags) __ksym;
/* Copies a KMESH_HTTP_FIELD_* value; returns its full length. */
extern int bpf_kmesh_http_copy(struct kmesh_http_req *req, __u32 field, void *dst, __u32 dst__sz) __ksym;

/* From kmesh_l7_ops.route: the destination of KMESH_L7_REDIRECT; addr is 4
 * or 16 bytes, addr and port in network order. */
extern int bpf_kmesh_l7_set_dest(struct kmesh_l7_ctx *ctx, const void *addr, __u32 addr__sz,
				 __u16 port) __ksym;

/* From kmesh_l7_ops.route (ABI 3): the errno a KMESH_L7_NO_ROUTE verdict fails
 * the first send with (default EHOSTUNREACH): EHOSTUNREACH, ENETUNREACH,
 * ECONNREFUSED, ECONNRESET, ETIMEDOUT or EBUSY (positive); else -EINVAL. */
extern int bpf_kmesh_l7_set_error(struct kmesh_l7_ctx *ctx, int err) __ksym;

#endif
