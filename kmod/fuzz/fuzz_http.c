// SPDX-License-Identifier: GPL-2.0
/* libFuzzer target for kmod/http_parse.c, built with
 * -fsanitize=fuzzer,address,undefined (make fuzz-smoke, make fuzz).
 *
 * Besides "no crash, no out-of-bounds access, no UB" it checks invariants that
 * would reveal logic errors:
 *   - the status is one of the documented values, every span lies inside the
 *     bytes the parser was allowed to look at, head_len <= input;
 *   - a complete head is INCOMPLETE for every strict prefix (the parser never
 *     decides on bytes it has not seen, and never fails on a valid prefix);
 *   - each field matches itself: exact(host) == 1, prefix(path) == 1,
 *     exact(header i name, header i value) == 1;
 *   - matchers with input-derived patterns and flags never misbehave. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../http_parse.h"

static void fail(const char *why)
{
	(void)why;
	__builtin_trap();
}

static void check_span(struct kmesh_http_span s, unsigned int n)
{
	if ((unsigned int)s.off + s.len > n)
		fail("span outside the input");
}

static unsigned char *parse_copy(const uint8_t *data, size_t size, struct kmesh_http_msg *m, unsigned int *np)
{
	unsigned int n = size > KMESH_HTTP_MAX_HEAD ? KMESH_HTTP_MAX_HEAD : (unsigned int)size;
	/* exact-size copy: ASan reports a read one byte past it */
	unsigned char *buf = malloc(n ? n : 1);

	if (n)
		memcpy(buf, data, n);
	kmesh_http_parse(m, buf, n, size > n);
	*np = n;
	return buf;
}

static void check_msg(const struct kmesh_http_msg *m, unsigned int n)
{
	unsigned int i;

	switch (m->status) {
	case KMESH_HTTP_OK: case KMESH_HTTP_INCOMPLETE: case KMESH_HTTP_TOO_LARGE:
	case KMESH_HTTP_E_NOT_HTTP: case KMESH_HTTP_E_REQLINE: case KMESH_HTTP_E_HEADER:
	case KMESH_HTTP_E_HOST: case KMESH_HTTP_E_VERSION:
		break;
	default:
		fail("unknown status");
	}
	if (m->nr_headers > KMESH_HTTP_MAX_HEADERS)
		fail("too many headers");
	if (m->head_len > n || (m->status == KMESH_HTTP_OK && m->head_len == 0))
		fail("head_len");
	if (m->status != KMESH_HTTP_OK && m->status != KMESH_HTTP_E_HOST && m->head_len)
		fail("head_len without a complete head");
	check_span(m->method_s, n);
	check_span(m->target, n);
	check_span(m->path, n);
	check_span(m->authority, n);
	for (i = 0; i < m->nr_headers; i++) {
		check_span(m->hdr[i].name, n);
		check_span(m->hdr[i].value, n);
		if (m->hdr[i].name.len == 0)
			fail("empty header name");
	}
	if (m->status >= 0 && (m->flags & KMESH_HTTP_F_REQLINE) && (m->version != 10 && m->version != 11))
		fail("version");
}

static void check_self_matches(const struct kmesh_http_msg *m, const unsigned char *buf)
{
	const unsigned char *p;
	unsigned int i;
	int len;

	if (m->status < 0)
		return;
	if (m->flags & KMESH_HTTP_F_HOST) {
		len = kmesh_http_field(m, buf, KMESH_HTTP_FIELD_HOST, &p);
		if (len < 0 || kmesh_http_match_host(m, buf, p, (unsigned int)len, KMESH_MATCH_EXACT) != 1)
			fail("host does not match itself");
		if (kmesh_http_match_host(m, buf, p, (unsigned int)len, KMESH_MATCH_SUFFIX | KMESH_MATCH_NOCASE) != 1)
			fail("host suffix");
	}
	if (m->flags & KMESH_HTTP_F_REQLINE) {
		len = kmesh_http_field(m, buf, KMESH_HTTP_FIELD_PATH, &p);
		if (len < 0 || kmesh_http_match_path(m, buf, p, (unsigned int)len, KMESH_MATCH_PREFIX) != 1)
			fail("path does not match itself");
		len = kmesh_http_field(m, buf, KMESH_HTTP_FIELD_METHOD, &p);
		if (len <= 0 || kmesh_http_match_header(m, buf, (const unsigned char *)":method", 7, p,
							(unsigned int)len, KMESH_MATCH_EXACT) != 1)
			fail(":method");
	}
	for (i = 0; i < m->nr_headers; i++) {
		const struct kmesh_http_hdr *h = &m->hdr[i];

		if (kmesh_http_match_header(m, buf, buf + h->name.off, h->name.len, buf + h->value.off,
					    h->value.len, KMESH_MATCH_EXACT) != 1)
			fail("header does not match itself");
		if (kmesh_http_match_header(m, buf, buf + h->name.off, h->name.len, NULL, 0,
					    KMESH_MATCH_PRESENT) != 1)
			fail("header not present");
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kmesh_http_msg m, pm;
	unsigned char *buf, *pbuf;
	unsigned int n, pn, k, flags;
	size_t cut;

	buf = parse_copy(data, size, &m, &n);
	check_msg(&m, n);
	check_self_matches(&m, buf);

	/* Input-derived patterns and flags: the last bytes pick them. */
	if (size >= 4) {
		unsigned int plen = data[size - 1] % 64;
		const unsigned char *pat = data + (size - 1 - (plen < size - 1 ? plen : size - 1));

		if (plen > size - 1)
			plen = (unsigned int)size - 1;
		flags = (unsigned int)data[size - 2] | ((unsigned int)(data[size - 3] & 3) << 8);
		(void)kmesh_http_match_host(&m, buf, pat, plen, flags);
		(void)kmesh_http_match_path(&m, buf, pat, plen, flags);
		(void)kmesh_http_match_header(&m, buf, pat, plen > 8 ? 8 : plen, pat, plen, flags);
		(void)kmesh_http_match_header(&m, buf, (const unsigned char *)":authority", 10, pat, plen, flags);
	}

	/* Every strict prefix of a complete head is INCOMPLETE. A few cuts per
	 * input keep the exec rate high. */
	if (m.status == KMESH_HTTP_OK) {
		for (k = 0; k < 4; k++) {
			cut = k == 0 ? m.head_len - 1 : (size_t)(data[k] * 131u + k * 977u) % m.head_len;
			pbuf = parse_copy(data, cut, &pm, &pn);
			check_msg(&pm, pn);
			if (pm.status != KMESH_HTTP_INCOMPLETE)
				fail("prefix of a complete head is not INCOMPLETE");
			free(pbuf);
		}
	}
	free(buf);
	return 0;
}
