/* SPDX-License-Identifier: GPL-2.0 */
/* Internal declarations of kmesh.ko. The ABI shared with BPF programs and the
 * daemon lives in kmesh_abi.h. */
#ifndef KMESH_KMOD_H
#define KMESH_KMOD_H

#include <linux/socket.h>
#include <linux/types.h>

#include "kmesh_abi.h"
#include "http_parse.h"

#define KMESH_MODULE_VERSION "0.3.0"

/* ---- stats.c: counters and the safe-mode switch ---------------------------- */
enum kmesh_stat {
	KMESH_STAT_PARSED,
	KMESH_STAT_PARSE_ERRORS,
	KMESH_STAT_DEFERRED,
	KMESH_STAT_DECISIONS,
	KMESH_STAT_REDIRECTS,
	KMESH_STAT_NO_ROUTE,
	KMESH_STAT_FALLBACKS,
	KMESH_STAT_REFUSED,
	__KMESH_STAT_MAX,
};

void kmesh_stat_inc(enum kmesh_stat s);
u64 kmesh_stat_read(enum kmesh_stat s);
bool kmesh_safe_mode(void);
void kmesh_set_safe_mode(bool on);

/* ---- kfuncs.c ---------------------------------------------------------------- */
int kmesh_kfuncs_init(void);
void kmesh_kfuncs_exit(void); /* leak check */

/* The kernel-owned parse result BPF programs get from the parser kfuncs: a
 * copy of the parsed bytes (at most KMESH_HTTP_MAX_HEAD) and the offsets into
 * it. Opaque to BPF. */
struct kmesh_http_req {
	struct kmesh_http_msg msg;
	u32 len;
	u8 data[];
};

struct kmesh_http_req *kmesh_http_req_alloc(u32 len, gfp_t gfp);
/* Parses req->data[0, req->len); truncated: the input was longer. */
void kmesh_http_req_parse(struct kmesh_http_req *req, bool truncated);
void kmesh_http_req_free(struct kmesh_http_req *req);

/* ---- l7_ops.c: the kmesh_l7_ops struct_ops type ------------------------------ */
struct kmesh_l7_ops {
	int (*route)(struct kmesh_l7_ctx *ctx, struct kmesh_http_req *req);
	char name[16];
};

/* What the module hands a route program: the public view plus where the
 * program's bpf_kmesh_l7_set_dest() puts the destination. */
struct kmesh_l7_call {
	struct kmesh_l7_ctx pub;
	struct sockaddr_storage dest;
	int dest_len;
	bool ipv6_only; /* AF_INET6 socket with IPV6_V6ONLY: no v4-mapped destinations */
	int err;        /* errno of a NO_ROUTE verdict (bpf_kmesh_l7_set_error); 0: EHOSTUNREACH */
};

int kmesh_l7_ops_init(void);
/* Calls the registered route program; -ENOENT when none is registered. */
int kmesh_l7_route(struct kmesh_l7_call *call, struct kmesh_http_req *req);
int kmesh_l7_set_dest(struct kmesh_l7_call *call, const u8 *addr, u32 addr_len, __be16 port);
int kmesh_l7_set_error(struct kmesh_l7_call *call, int err);

/* ---- defer_connect.c ----------------------------------------------------------- */
struct sock;
int kmesh_defer_init(void);
void kmesh_defer_exit(void);
int kmesh_defer_mark(struct sock *sk, u64 tag);
u32 kmesh_defer_live(void);
extern unsigned int kmesh_max_deferred;

#endif
