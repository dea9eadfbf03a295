/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The ABI of kmesh.ko: everything a BPF program, the daemon (pkg/kmod mirrors
 * these numbers, checked by a unit test) or the userspace parser build shares
 * with the module. Bump KMESH_ABI_VERSION on any incompatible change here, in a
 * kfunc signature or in a genetlink attribute; the daemon refuses a module of
 * another ABI version.
 *
 * Included from kernel code, from BPF programs (after vmlinux.h) and from
 * userspace (kmod/fuzz); it only needs the __u8..__u64 types. */
#ifndef KMESH_ABI_H
#define KMESH_ABI_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define KMESH_ABI_VERSION 3

/* ---- HTTP/1.x parser limits ------------------------------------------------
 * The head (request line + header lines + the empty line) is parsed from at
 * most KMESH_HTTP_MAX_HEAD bytes; a longer head is reported as TOO_LARGE and
 * what fits is still usable for matching. No single line may exceed the head
 * limit. At most KMESH_HTTP_MAX_HEADERS header lines are indexed. */
#define KMESH_HTTP_MAX_HEAD    8192
#define KMESH_HTTP_MAX_HEADERS 100
#define KMESH_HTTP_MAX_METHOD  32

/* Parse status (struct kmesh_http_info.status). >= 0: the request line (if
 * complete) and every complete header line are usable; < 0: malformed, every
 * match kfunc returns -EINVAL. */
#define KMESH_HTTP_OK          0  /* a complete head */
#define KMESH_HTTP_INCOMPLETE  1  /* no end of head in the bytes given */
#define KMESH_HTTP_TOO_LARGE   2  /* head longer than MAX_HEAD, or more than MAX_HEADERS lines */
#define KMESH_HTTP_E_NOT_HTTP  (-1) /* first bytes are not an HTTP request line */
#define KMESH_HTTP_E_REQLINE   (-2) /* malformed request line */
#define KMESH_HTTP_E_HEADER    (-3) /* malformed header line */
#define KMESH_HTTP_E_HOST      (-4) /* HTTP/1.1 without Host, repeated Host, bad authority */
#define KMESH_HTTP_E_VERSION   (-5) /* HTTP version other than 1.0 and 1.1 */

/* Methods (struct kmesh_http_info.method). */
#define KMESH_HTTP_METHOD_UNKNOWN 0 /* request line not parsed yet */
#define KMESH_HTTP_METHOD_GET     1
#define KMESH_HTTP_METHOD_HEAD    2
#define KMESH_HTTP_METHOD_POST    3
#define KMESH_HTTP_METHOD_PUT     4
#define KMESH_HTTP_METHOD_DELETE  5
#define KMESH_HTTP_METHOD_CONNECT 6
#define KMESH_HTTP_METHOD_OPTIONS 7
#define KMESH_HTTP_METHOD_TRACE   8
#define KMESH_HTTP_METHOD_PATCH   9
#define KMESH_HTTP_METHOD_OTHER   10 /* any other token */

/* Request-target forms (RFC 9112 section 3.2). */
#define KMESH_HTTP_TARGET_NONE      0
#define KMESH_HTTP_TARGET_ORIGIN    1 /* /path?query */
#define KMESH_HTTP_TARGET_ABSOLUTE  2 /* http://authority/path?query */
#define KMESH_HTTP_TARGET_AUTHORITY 3 /* host:port (CONNECT) */
#define KMESH_HTTP_TARGET_ASTERISK  4 /* * (OPTIONS) */

/* struct kmesh_http_info.flags */
#define KMESH_HTTP_F_REQLINE  (1u << 0) /* the request line is complete */
#define KMESH_HTTP_F_HOST     (1u << 1) /* an authority is known (Host or absolute-form) */
#define KMESH_HTTP_F_FOLDED   (1u << 2) /* obsolete line folding was unfolded */
#define KMESH_HTTP_F_TRAILING (1u << 3) /* bytes follow the head (body or pipelined request) */

/* Match flags: the low byte is the mode, the rest are modifiers. */
#define KMESH_MATCH_EXACT     0
#define KMESH_MATCH_PREFIX    1
#define KMESH_MATCH_SUFFIX    2
#define KMESH_MATCH_PRESENT   3 /* headers only: the value is ignored */
#define KMESH_MATCH_MODE_MASK 0xff
#define KMESH_MATCH_NOCASE    (1u << 8) /* ASCII case-insensitive value (host is always) */
#define KMESH_MATCH_NO_PORT   (1u << 9) /* host: compare without ":port" */
#define KMESH_MATCH_FLAGS_ALL (KMESH_MATCH_MODE_MASK | KMESH_MATCH_NOCASE | KMESH_MATCH_NO_PORT)

/* Fields for bpf_kmesh_http_copy(). */
#define KMESH_HTTP_FIELD_METHOD 0
#define KMESH_HTTP_FIELD_TARGET 1
#define KMESH_HTTP_FIELD_PATH   2 /* path and query; "/" for an absolute-form target without path */
#define KMESH_HTTP_FIELD_HOST   3 /* authority: absolute-form target, else Host */

/* Filled by bpf_kmesh_http_info(). */
struct kmesh_http_info {
	__s32 status;      /* KMESH_HTTP_OK, ... */
	__u32 head_len;    /* bytes of the head incl. the empty line; 0 unless OK */
	__u32 nr_headers;  /* header lines indexed */
	__u32 flags;       /* KMESH_HTTP_F_* */
	__u8 method;       /* KMESH_HTTP_METHOD_* */
	__u8 version;      /* 10 or 11; 0 before the request line is complete */
	__u8 target_form;  /* KMESH_HTTP_TARGET_* */
	__u8 pad;
};

/* ---- deferred connect and the kmesh_l7_ops struct_ops ----------------------
 * A cgroup/connect4|6 program calls bpf_kmesh_defer_connect(); connect() then
 * returns at once and no SYN is sent. At the first send the module parses the
 * first bytes and calls kmesh_l7_ops.route(), which returns a verdict. */
#define KMESH_L7_PASS     0 /* connect to the destination connect() was given (after BPF rewrites) */
#define KMESH_L7_REDIRECT 1 /* connect to the destination set with bpf_kmesh_l7_set_dest() */
#define KMESH_L7_NO_ROUTE 2 /* fail the first send with EHOSTUNREACH, or the errno set with
                            * bpf_kmesh_l7_set_error() (ABI 3) */

/* The read-only view a kmesh_l7_ops.route program gets (BTF pointer). */
struct kmesh_l7_ctx {
	__u64 tag;          /* the tag given to bpf_kmesh_defer_connect() */
	__u32 family;       /* AF_INET or AF_INET6 (the socket's) */
	__u32 len;          /* bytes of the first write the parser saw (<= MAX_HEAD) */
	__u32 orig_ip4;     /* network order, AF_INET sockets */
	__u32 orig_ip6[4];  /* network order, AF_INET6 sockets */
	__u16 orig_port;    /* network order */
	__u16 pad;
};

/* ---- generic netlink family "kmesh" ---------------------------------------- */
#define KMESH_GENL_NAME    "kmesh"
#define KMESH_GENL_VERSION 1

enum kmesh_genl_cmd {
	KMESH_CMD_UNSPEC,
	KMESH_CMD_HELLO,         /* -> ABI_VERSION, FEATURES, MODULE_VERSION, SAFE_MODE, limits */
	KMESH_CMD_GET_STATS,     /* -> one attribute per counter */
	KMESH_CMD_SET_SAFE_MODE, /* SAFE_MODE (u8) -> SAFE_MODE; needs CAP_NET_ADMIN */
	__KMESH_CMD_MAX,
};

enum kmesh_genl_attr {
	KMESH_ATTR_UNSPEC,
	KMESH_ATTR_ABI_VERSION,      /* u32 */
	KMESH_ATTR_FEATURES,         /* u64, KMESH_FEAT_* */
	KMESH_ATTR_MODULE_VERSION,   /* string */
	KMESH_ATTR_SAFE_MODE,        /* u8 */
	KMESH_ATTR_MAX_HEAD,         /* u32 */
	KMESH_ATTR_MAX_HEADERS,      /* u32 */
	KMESH_ATTR_MAX_DEFERRED,     /* u32 */
	KMESH_ATTR_STAT_PARSED,      /* u64: HTTP heads parsed (kfunc and first sends) */
	KMESH_ATTR_STAT_PARSE_ERRORS,/* u64: of those, malformed (status < 0) */
	KMESH_ATTR_STAT_DEFERRED,    /* u64: connects deferred */
	KMESH_ATTR_STAT_DECISIONS,   /* u64: kmesh_l7_ops.route calls */
	KMESH_ATTR_STAT_REDIRECTS,   /* u64: decisions that redirected */
	KMESH_ATTR_STAT_NO_ROUTE,    /* u64: decisions that said no route */
	KMESH_ATTR_STAT_FALLBACKS,   /* u64: plain TCP to the original destination without a decision */
	KMESH_ATTR_STAT_REFUSED,     /* u64: deferral refused (safe mode, capacity, socket not eligible) */
	KMESH_ATTR_STAT_LIVE,        /* u64 gauge: sockets currently marked or deferred */
	KMESH_ATTR_PAD,
	__KMESH_ATTR_MAX,
};

#define KMESH_FEAT_HTTP_PARSER   (1ull << 0)
#define KMESH_FEAT_DEFER_CONNECT (1ull << 1)
#define KMESH_FEAT_L7_OPS        (1ull << 2)
#define KMESH_FEAT_SAFE_MODE     (1ull << 3)

#endif
