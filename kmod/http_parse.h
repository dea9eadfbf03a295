/* SPDX-License-Identifier: GPL-2.0 */
/* HTTP/1.x request-head parser of kmesh.ko. Pure C with no kernel or libc
 * dependencies, so the same http_parse.c is built into the module and into the
 * userspace fuzzer and unit tests (kmod/fuzz).
 *
 * The parser never allocates and never reads outside buf[0, min(len,
 * KMESH_HTTP_MAX_HEAD)). The result refers to the buffer by offsets; obsolete
 * line folding is unfolded in place, so the buffer must be writable and must
 * outlive the result. */
#ifndef KMESH_HTTP_PARSE_H
#define KMESH_HTTP_PARSE_H

#include "kmesh_abi.h"

/* A byte range of the parsed buffer. KMESH_HTTP_MAX_HEAD < 65536. */
struct kmesh_http_span {
	unsigned short off;
	unsigned short len;
};

struct kmesh_http_hdr {
	struct kmesh_http_span name;
	struct kmesh_http_span value; /* without surrounding whitespace, unfolded */
};

struct kmesh_http_msg {
	int status;                /* KMESH_HTTP_OK, ... (kmesh_abi.h) */
	unsigned int head_len;     /* bytes of the head incl. the empty line, when OK */
	unsigned int flags;        /* KMESH_HTTP_F_* */
	unsigned char method;      /* KMESH_HTTP_METHOD_* */
	unsigned char version;     /* 10, 11 */
	unsigned char target_form; /* KMESH_HTTP_TARGET_* */
	struct kmesh_http_span method_s;
	struct kmesh_http_span target;
	struct kmesh_http_span path;      /* path+query; len 0 with ABSOLUTE means "/" */
	struct kmesh_http_span authority; /* absolute-form authority, else the Host value */
	unsigned int nr_headers;
	struct kmesh_http_hdr hdr[KMESH_HTTP_MAX_HEADERS];
};

/* kmesh_http_parse parses the request head at the start of buf. len is the
 * number of bytes available; more than KMESH_HTTP_MAX_HEAD are never looked at.
 * truncated says the input continues beyond len (the caller copied a prefix),
 * so running out of bytes means TOO_LARGE instead of INCOMPLETE when len has
 * reached the limit. Returns m->status. */
int kmesh_http_parse(struct kmesh_http_msg *m, unsigned char *buf, unsigned int len, int truncated);

/* Matchers return 1 (match), 0 (no match) or -KMESH_EINVAL (malformed request
 * or bad flags). Patterns are byte strings of plen bytes (no NUL needed). */
#define KMESH_EINVAL 22
int kmesh_http_match_host(const struct kmesh_http_msg *m, const unsigned char *buf,
			  const unsigned char *pat, unsigned int plen, unsigned int flags);
int kmesh_http_match_path(const struct kmesh_http_msg *m, const unsigned char *buf,
			  const unsigned char *pat, unsigned int plen, unsigned int flags);
/* name is case-insensitive; the pseudo-headers ":method", ":path" and
 * ":authority" match the request line and authority. A header that appears
 * more than once matches if any of its lines does. */
int kmesh_http_match_header(const struct kmesh_http_msg *m, const unsigned char *buf,
			    const unsigned char *name, unsigned int nlen,
			    const unsigned char *val, unsigned int vlen, unsigned int flags);

/* kmesh_http_field points *p at a KMESH_HTTP_FIELD_* value and returns its
 * length, or -KMESH_EINVAL. The pointer is into buf or to static storage. */
int kmesh_http_field(const struct kmesh_http_msg *m, const unsigned char *buf, unsigned int field,
		     const unsigned char **p);

void kmesh_http_fill_info(const struct kmesh_http_msg *m, struct kmesh_http_info *info);

#endif
