// SPDX-License-Identifier: GPL-2.0
/* HTTP/1.x request-head parser (RFC 9112), shared by kmesh.ko and the
 * userspace fuzzer: this file includes nothing but http_parse.h.
 *
 * Safety rules, checked by the fuzzer with ASan/UBSan: every read is preceded
 * by an index check against n (the clamped length); offsets are stored as
 * unsigned short, which KMESH_HTTP_MAX_HEAD < 65536 makes lossless; loops only
 * move forward; nothing is allocated.
 *
 * Strictness: the request line must be "METHOD SP target SP HTTP/1.x" with
 * single spaces (a lenient router and a strict backend disagreeing about the
 * target or Host is a request-smuggling vector; a request we reject simply
 * gets no L7 route). Bare LF line ends and leading empty lines are accepted
 * (RFC 9112 section 2.2), obsolete line folding is replaced by one SP
 * (section 5.2), repeated Host or a missing one in HTTP/1.1 is an error
 * (section 3.2). */
#include "http_parse.h"

_Static_assert(KMESH_HTTP_MAX_HEAD < 65536, "offsets are unsigned short");

static const unsigned char slash[] = "/";

/* tchar (RFC 9110 section 5.6.2). */
static int is_tchar(unsigned char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return 1;
	switch (c) {
	case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
	case '-': case '.': case '^': case '_': case '`': case '|': case '~':
		return 1;
	}
	return 0;
}

/* Characters allowed in an authority (RFC 3986 reg-name, IP-literal, port). */
static int is_authority_char(unsigned char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return 1;
	switch (c) {
	case '-': case '.': case '_': case '~': case '!': case '$': case '&': case '\'':
	case '(': case ')': case '*': case '+': case ',': case ';': case '=': case '%':
	case ':': case '[': case ']':
		return 1;
	}
	return 0;
}

static unsigned char lower(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + ('a' - 'A')) : c;
}

static int bytes_eq(const unsigned char *a, const unsigned char *b, unsigned int n, int nocase)
{
	unsigned int i;

	for (i = 0; i < n; i++) {
		if (nocase ? lower(a[i]) != lower(b[i]) : a[i] != b[i])
			return 0;
	}
	return 1;
}

static struct kmesh_http_span span(unsigned int off, unsigned int len)
{
	struct kmesh_http_span s = { (unsigned short)off, (unsigned short)len };

	return s;
}

static const struct {
	const char *name;
	unsigned char len;
	unsigned char id;
} methods[] = {
	{ "GET", 3, KMESH_HTTP_METHOD_GET },         { "HEAD", 4, KMESH_HTTP_METHOD_HEAD },
	{ "POST", 4, KMESH_HTTP_METHOD_POST },       { "PUT", 3, KMESH_HTTP_METHOD_PUT },
	{ "DELETE", 6, KMESH_HTTP_METHOD_DELETE },   { "CONNECT", 7, KMESH_HTTP_METHOD_CONNECT },
	{ "OPTIONS", 7, KMESH_HTTP_METHOD_OPTIONS }, { "TRACE", 5, KMESH_HTTP_METHOD_TRACE },
	{ "PATCH", 5, KMESH_HTTP_METHOD_PATCH },
};

static unsigned char method_id(const unsigned char *p, unsigned int n)
{
	unsigned int i;

	for (i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
		if (methods[i].len == n && bytes_eq(p, (const unsigned char *)methods[i].name, n, 0))
			return methods[i].id;
	}
	return KMESH_HTTP_METHOD_OTHER;
}

/* Out of bytes: the head may continue (INCOMPLETE) unless the limit was hit. */
static int out_of_bytes(struct kmesh_http_msg *m, unsigned int n, int truncated)
{
	m->status = (truncated && n >= KMESH_HTTP_MAX_HEAD) ? KMESH_HTTP_TOO_LARGE : KMESH_HTTP_INCOMPLETE;
	return m->status;
}

static int fail(struct kmesh_http_msg *m, int status)
{
	m->status = status;
	return status;
}

/* Splits the target into path and authority. */
static int classify_target(struct kmesh_http_msg *m, const unsigned char *buf)
{
	unsigned int off = m->target.off, len = m->target.len, i, a;

	if (buf[off] == '/') {
		m->target_form = KMESH_HTTP_TARGET_ORIGIN;
		m->path = m->target;
		return 0;
	}
	if (len == 1 && buf[off] == '*') {
		m->target_form = KMESH_HTTP_TARGET_ASTERISK;
		m->path = m->target;
		return 0;
	}
	/* absolute-form: scheme "://" authority [path-abempty] [?query] */
	for (i = 0; i < len; i++) {
		unsigned char c = buf[off + i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (i > 0 && ((c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.'))))
			break;
	}
	if (i > 0 && i + 3 <= len && buf[off + i] == ':' && buf[off + i + 1] == '/' && buf[off + i + 2] == '/') {
		a = i + 3;
		for (i = a; i < len; i++) {
			unsigned char c = buf[off + i];

			if (c == '/' || c == '?' || c == '#')
				break;
			if (!is_authority_char(c))
				return KMESH_HTTP_E_REQLINE; /* userinfo ('@') and junk are rejected */
		}
		if (i == a)
			return KMESH_HTTP_E_REQLINE;
		m->target_form = KMESH_HTTP_TARGET_ABSOLUTE;
		m->authority = span(off + a, i - a);
		m->path = span(off + i, len - i); /* len 0: "/" */
		m->flags |= KMESH_HTTP_F_HOST;
		return 0;
	}
	if (m->method == KMESH_HTTP_METHOD_CONNECT) {
		for (i = 0; i < len; i++) {
			if (!is_authority_char(buf[off + i]))
				return KMESH_HTTP_E_REQLINE;
		}
		m->target_form = KMESH_HTTP_TARGET_AUTHORITY;
		m->authority = m->target;
		m->flags |= KMESH_HTTP_F_HOST;
		return 0;
	}
	return KMESH_HTTP_E_REQLINE;
}

static int parse_request_line(struct kmesh_http_msg *m, const unsigned char *buf, unsigned int n,
			      int truncated, unsigned int *posp)
{
	unsigned int pos = *posp, start;
	static const unsigned char http[] = "HTTP/";
	unsigned int i;
	int err;

	/* Leading empty lines. */
	while (pos < n && (buf[pos] == '\r' || buf[pos] == '\n')) {
		if (buf[pos] == '\r') {
			if (pos + 1 >= n)
				return out_of_bytes(m, n, truncated);
			if (buf[pos + 1] != '\n')
				return fail(m, KMESH_HTTP_E_NOT_HTTP);
			pos++;
		}
		pos++;
	}

	start = pos;
	while (pos < n && is_tchar(buf[pos])) {
		if (pos - start >= KMESH_HTTP_MAX_METHOD)
			return fail(m, KMESH_HTTP_E_NOT_HTTP);
		pos++;
	}
	if (pos >= n)
		return out_of_bytes(m, n, truncated);
	if (pos == start || buf[pos] != ' ')
		return fail(m, KMESH_HTTP_E_NOT_HTTP);
	m->method_s = span(start, pos - start);
	m->method = method_id(buf + start, pos - start);
	pos++;

	start = pos;
	while (pos < n && buf[pos] > 0x20 && buf[pos] != 0x7f)
		pos++;
	if (pos >= n)
		return out_of_bytes(m, n, truncated);
	if (pos == start || buf[pos] != ' ')
		return fail(m, KMESH_HTTP_E_REQLINE);
	m->target = span(start, pos - start);
	pos++;

	for (i = 0; i < 5; i++, pos++) {
		if (pos >= n)
			return out_of_bytes(m, n, truncated);
		if (buf[pos] != http[i])
			return fail(m, KMESH_HTTP_E_REQLINE);
	}
	/* DIGIT "." DIGIT */
	if (pos + 3 > n)
		return out_of_bytes(m, n, truncated);
	if (buf[pos] < '0' || buf[pos] > '9' || buf[pos + 1] != '.' || buf[pos + 2] < '0' || buf[pos + 2] > '9')
		return fail(m, KMESH_HTTP_E_REQLINE);
	if (buf[pos] != '1' || (buf[pos + 2] != '0' && buf[pos + 2] != '1'))
		return fail(m, KMESH_HTTP_E_VERSION);
	m->version = (unsigned char)(10 + (buf[pos + 2] - '0'));
	pos += 3;

	if (pos >= n)
		return out_of_bytes(m, n, truncated);
	if (buf[pos] == '\r') {
		if (pos + 1 >= n)
			return out_of_bytes(m, n, truncated);
		if (buf[pos + 1] != '\n')
			return fail(m, KMESH_HTTP_E_REQLINE);
		pos++;
	} else if (buf[pos] != '\n') {
		return fail(m, KMESH_HTTP_E_REQLINE);
	}
	pos++;

	err = classify_target(m, buf);
	if (err)
		return fail(m, err);
	m->flags |= KMESH_HTTP_F_REQLINE;
	*posp = pos;
	return KMESH_HTTP_OK;
}

/* Scans field-value bytes up to the line end. Returns the position of the CR
 * or LF, or n when the line is incomplete, or -1 on an invalid byte. */
static int scan_value(const unsigned char *buf, unsigned int pos, unsigned int n)
{
	for (; pos < n; pos++) {
		unsigned char c = buf[pos];

		if (c == '\r' || c == '\n')
			return (int)pos;
		if ((c < 0x20 && c != '\t') || c == 0x7f)
			return -1;
	}
	return (int)n;
}

/* Consumes a CRLF or LF at pos. Returns the next position, 0 when more bytes
 * are needed, or -1 for a bare CR. pos > 0 always holds here. */
static int eol(const unsigned char *buf, unsigned int pos, unsigned int n)
{
	if (buf[pos] == '\n')
		return (int)pos + 1;
	if (pos + 1 >= n)
		return 0;
	return buf[pos + 1] == '\n' ? (int)pos + 2 : -1;
}

static unsigned int trim_right(const unsigned char *buf, unsigned int start, unsigned int end)
{
	while (end > start && (buf[end - 1] == ' ' || buf[end - 1] == '\t'))
		end--;
	return end;
}

/* Replaces each "OWS (CR)LF 1*(SP/HT)" inside a folded value by one SP, in
 * place, and shrinks the span. */
static void unfold(unsigned char *buf, struct kmesh_http_span *v)
{
	unsigned int r = v->off, w = v->off, end = v->off + v->len;

	while (r < end) {
		unsigned char c = buf[r];

		if (c == '\r' || c == '\n') {
			w = trim_right(buf, v->off, w);
			r++;
			if (c == '\r' && r < end && buf[r] == '\n')
				r++;
			while (r < end && (buf[r] == ' ' || buf[r] == '\t'))
				r++;
			buf[w++] = ' ';
			continue;
		}
		buf[w++] = c;
		r++;
	}
	w = trim_right(buf, v->off, w);
	v->len = (unsigned short)(w - v->off);
}

static int name_is(const unsigned char *buf, struct kmesh_http_span s, const char *name, unsigned int len)
{
	return s.len == len && bytes_eq(buf + s.off, (const unsigned char *)name, len, 1);
}

/* Picks the authority: an absolute-form target wins over Host (RFC 9112
 * section 3.2.2). final: the head is complete, so a missing Host in HTTP/1.1
 * is an error too. */
static int resolve_host(struct kmesh_http_msg *m, const unsigned char *buf, int final)
{
	unsigned int i, hosts = 0, h = 0;
	struct kmesh_http_span v;

	for (i = 0; i < m->nr_headers; i++) {
		if (name_is(buf, m->hdr[i].name, "host", 4)) {
			hosts++;
			h = i;
		}
	}
	if (hosts > 1)
		return KMESH_HTTP_E_HOST;
	if (hosts == 0) {
		if (final && m->version == 11 && !(m->flags & KMESH_HTTP_F_HOST))
			return KMESH_HTTP_E_HOST;
		return 0;
	}
	v = m->hdr[h].value;
	for (i = 0; i < v.len; i++) {
		if (!is_authority_char(buf[v.off + i]))
			return KMESH_HTTP_E_HOST;
	}
	if (v.len == 0 && m->version == 11 && final)
		return KMESH_HTTP_E_HOST; /* before the end, an obs-fold may still give it a value */
	if (!(m->flags & KMESH_HTTP_F_HOST) && v.len > 0) {
		m->authority = v;
		m->flags |= KMESH_HTTP_F_HOST;
	}
	return 0;
}

/* Ends a parse that got at least the request line: unfolds folded values and
 * resolves the authority. */
static int finish(struct kmesh_http_msg *m, unsigned char *buf, int folded, int status)
{
	unsigned int i;
	int err;

	if (folded) {
		for (i = 0; i < m->nr_headers; i++)
			unfold(buf, &m->hdr[i].value);
		m->flags |= KMESH_HTTP_F_FOLDED;
	}
	err = resolve_host(m, buf, status == KMESH_HTTP_OK);
	if (err)
		return fail(m, err);
	m->status = status;
	return status;
}

int kmesh_http_parse(struct kmesh_http_msg *m, unsigned char *buf, unsigned int len, int truncated)
{
	unsigned int n = len, pos = 0, i;
	int folded = 0, st;

	for (i = 0; i < sizeof(*m); i++)
		((unsigned char *)m)[i] = 0;
	if (n > KMESH_HTTP_MAX_HEAD) {
		n = KMESH_HTTP_MAX_HEAD;
		truncated = 1;
	}

	st = parse_request_line(m, buf, n, truncated, &pos);
	if (st != KMESH_HTTP_OK)
		return st;

	for (;;) {
		unsigned int start, nend, vstart, fs, fe;
		int end, next;

		if (pos >= n)
			break;
		if (buf[pos] == '\r' || buf[pos] == '\n') {
			next = eol(buf, pos, n);
			if (next == 0)
				break;
			if (next < 0)
				return fail(m, KMESH_HTTP_E_HEADER);
			m->head_len = (unsigned int)next;
			if ((unsigned int)next < n || truncated)
				m->flags |= KMESH_HTTP_F_TRAILING;
			return finish(m, buf, folded, KMESH_HTTP_OK);
		}
		if (buf[pos] == ' ' || buf[pos] == '\t') {
			/* obs-fold: continues the previous header's value. */
			struct kmesh_http_hdr *h;

			if (m->nr_headers == 0)
				return fail(m, KMESH_HTTP_E_HEADER);
			h = &m->hdr[m->nr_headers - 1];
			end = scan_value(buf, pos, n);
			if (end < 0)
				return fail(m, KMESH_HTTP_E_HEADER);
			if ((unsigned int)end >= n)
				break;
			next = eol(buf, (unsigned int)end, n);
			if (next == 0)
				break;
			if (next < 0)
				return fail(m, KMESH_HTTP_E_HEADER);
			fs = pos;
			while (fs < (unsigned int)end && (buf[fs] == ' ' || buf[fs] == '\t'))
				fs++;
			fe = trim_right(buf, fs, (unsigned int)end);
			if (fe > fs) {
				if (h->value.len == 0) {
					/* "X:" CRLF SP "v": the value starts on the fold line. */
					h->value = span(fs, fe - fs);
				} else {
					h->value.len = (unsigned short)(fe - h->value.off);
					folded = 1;
				}
			}
			pos = (unsigned int)next;
			continue;
		}

		start = pos;
		while (pos < n && is_tchar(buf[pos]))
			pos++;
		if (pos >= n)
			break;
		if (pos == start || buf[pos] != ':')
			return fail(m, KMESH_HTTP_E_HEADER);
		if (m->nr_headers >= KMESH_HTTP_MAX_HEADERS)
			return finish(m, buf, folded, KMESH_HTTP_TOO_LARGE);
		nend = pos;
		pos++;
		while (pos < n && (buf[pos] == ' ' || buf[pos] == '\t'))
			pos++;
		vstart = pos;
		end = scan_value(buf, pos, n);
		if (end < 0)
			return fail(m, KMESH_HTTP_E_HEADER);
		if ((unsigned int)end >= n)
			break;
		next = eol(buf, (unsigned int)end, n);
		if (next == 0)
			break;
		if (next < 0)
			return fail(m, KMESH_HTTP_E_HEADER);
		m->hdr[m->nr_headers].name = span(start, nend - start);
		m->hdr[m->nr_headers].value = span(vstart, trim_right(buf, vstart, (unsigned int)end) - vstart);
		m->nr_headers++;
		pos = (unsigned int)next;
	}
	return finish(m, buf, folded, (truncated && n >= KMESH_HTTP_MAX_HEAD) ? KMESH_HTTP_TOO_LARGE
									   : KMESH_HTTP_INCOMPLETE);
}

/* ---- matching ---------------------------------------------------------------- */

static int match_bytes(const unsigned char *s, unsigned int slen, const unsigned char *pat,
		       unsigned int plen, unsigned int mode, int nocase)
{
	switch (mode) {
	case KMESH_MATCH_EXACT:
		return slen == plen && bytes_eq(s, pat, plen, nocase);
	case KMESH_MATCH_PREFIX:
		return slen >= plen && bytes_eq(s, pat, plen, nocase);
	case KMESH_MATCH_SUFFIX:
		return slen >= plen && bytes_eq(s + (slen - plen), pat, plen, nocase);
	case KMESH_MATCH_PRESENT:
		return 1;
	}
	return -KMESH_EINVAL;
}

static int bad_flags(unsigned int flags)
{
	return (flags & ~(unsigned int)KMESH_MATCH_FLAGS_ALL) || (flags & KMESH_MATCH_MODE_MASK) > KMESH_MATCH_PRESENT;
}

/* Authority without ":port" ("[v6]:port" keeps the brackets). */
static unsigned int strip_port(const unsigned char *a, unsigned int len)
{
	unsigned int i = len;

	while (i > 0 && a[i - 1] >= '0' && a[i - 1] <= '9')
		i--;
	if (i > 0 && a[i - 1] == ':') {
		if (a[0] == '[')
			return (i >= 2 && a[i - 2] == ']') ? i - 1 : len;
		return i - 1;
	}
	return len;
}

int kmesh_http_match_host(const struct kmesh_http_msg *m, const unsigned char *buf,
			  const unsigned char *pat, unsigned int plen, unsigned int flags)
{
	const unsigned char *a;
	unsigned int alen;

	if (m->status < 0 || bad_flags(flags))
		return -KMESH_EINVAL;
	if (!(m->flags & KMESH_HTTP_F_HOST))
		return 0;
	a = buf + m->authority.off;
	alen = m->authority.len;
	if (flags & KMESH_MATCH_NO_PORT)
		alen = strip_port(a, alen);
	return match_bytes(a, alen, pat, plen, flags & KMESH_MATCH_MODE_MASK, 1);
}

int kmesh_http_match_path(const struct kmesh_http_msg *m, const unsigned char *buf,
			  const unsigned char *pat, unsigned int plen, unsigned int flags)
{
	const unsigned char *p;
	unsigned int mode = flags & KMESH_MATCH_MODE_MASK;
	int len, i;

	if (m->status < 0 || bad_flags(flags) || (flags & KMESH_MATCH_NO_PORT))
		return -KMESH_EINVAL;
	if (!(m->flags & KMESH_HTTP_F_REQLINE))
		return 0;
	len = kmesh_http_field(m, buf, KMESH_HTTP_FIELD_PATH, &p);
	if (len < 0)
		return len;
	if (mode == KMESH_MATCH_EXACT || mode == KMESH_MATCH_SUFFIX) {
		/* Exact and suffix path rules ignore the query string. */
		for (i = 0; i < len; i++) {
			if (p[i] == '?')
				break;
		}
		len = i;
	}
	return match_bytes(p, (unsigned int)len, pat, plen, mode, !!(flags & KMESH_MATCH_NOCASE));
}

int kmesh_http_match_header(const struct kmesh_http_msg *m, const unsigned char *buf,
			    const unsigned char *name, unsigned int nlen,
			    const unsigned char *val, unsigned int vlen, unsigned int flags)
{
	unsigned int mode = flags & KMESH_MATCH_MODE_MASK, i;
	int nocase = !!(flags & KMESH_MATCH_NOCASE);
	const unsigned char *p;
	int r, len;

	if (m->status < 0 || bad_flags(flags) || (flags & KMESH_MATCH_NO_PORT))
		return -KMESH_EINVAL;
	if (nlen > 0 && name[0] == ':') {
		unsigned int field;

		if (nlen == 7 && bytes_eq(name, (const unsigned char *)":method", 7, 1))
			field = KMESH_HTTP_FIELD_METHOD;
		else if (nlen == 5 && bytes_eq(name, (const unsigned char *)":path", 5, 1))
			field = KMESH_HTTP_FIELD_PATH;
		else if (nlen == 10 && bytes_eq(name, (const unsigned char *)":authority", 10, 1))
			field = KMESH_HTTP_FIELD_HOST;
		else
			return 0;
		if (field == KMESH_HTTP_FIELD_HOST ? !(m->flags & KMESH_HTTP_F_HOST) : !(m->flags & KMESH_HTTP_F_REQLINE))
			return 0;
		len = kmesh_http_field(m, buf, field, &p);
		if (len < 0)
			return len;
		return match_bytes(p, (unsigned int)len, val, vlen, mode, nocase || field == KMESH_HTTP_FIELD_HOST);
	}
	for (i = 0; i < m->nr_headers; i++) {
		const struct kmesh_http_hdr *h = &m->hdr[i];

		if (h->name.len != nlen || !bytes_eq(buf + h->name.off, name, nlen, 1))
			continue;
		r = match_bytes(buf + h->value.off, h->value.len, val, vlen, mode, nocase);
		if (r != 0)
			return r;
	}
	return 0;
}

int kmesh_http_field(const struct kmesh_http_msg *m, const unsigned char *buf, unsigned int field,
		     const unsigned char **p)
{
	struct kmesh_http_span s;

	switch (field) {
	case KMESH_HTTP_FIELD_METHOD:
		s = m->method_s;
		break;
	case KMESH_HTTP_FIELD_TARGET:
		s = m->target;
		break;
	case KMESH_HTTP_FIELD_PATH:
		if (m->target_form == KMESH_HTTP_TARGET_ABSOLUTE && m->path.len == 0) {
			*p = slash;
			return 1;
		}
		s = m->path;
		break;
	case KMESH_HTTP_FIELD_HOST:
		s = m->authority;
		break;
	default:
		return -KMESH_EINVAL;
	}
	*p = buf + s.off;
	return s.len;
}

void kmesh_http_fill_info(const struct kmesh_http_msg *m, struct kmesh_http_info *info)
{
	info->status = m->status;
	info->head_len = m->status == KMESH_HTTP_OK ? m->head_len : 0;
	info->nr_headers = m->nr_headers;
	info->flags = m->flags;
	info->method = m->method;
	info->version = m->version;
	info->target_form = m->target_form;
	info->pad = 0;
}
