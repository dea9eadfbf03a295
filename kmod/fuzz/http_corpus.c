// SPDX-License-Identifier: GPL-2.0
/* Unit-test runner for kmod/http_parse.c over a corpus of real request heads.
 *
 *   http_corpus DIR          check every line of DIR/expect.txt; every file
 *                            in DIR must have at least one expectation
 *   http_corpus --dump FILE  print what the parser makes of FILE
 *
 * expect.txt has one check per line, fields separated by tabs:
 *   FILE  status        OK|INCOMPLETE|TOO_LARGE|E_NOT_HTTP|E_REQLINE|E_HEADER|E_HOST|E_VERSION
 *   FILE  method|host|path|target  TEXT         ("-": no such field)
 *   FILE  version|headers|head-len  NUMBER
 *   FILE  form          none|origin|absolute|authority|asterisk
 *   FILE  flags         comma list of reqline,host,folded,trailing ("-": none)
 *   FILE  header        NAME  VALUE           first line named NAME has VALUE
 *   FILE  match-host    MODE  PATTERN  WANT   MODE is exact|prefix|suffix|present
 *   FILE  match-path    MODE  PATTERN  WANT   with ",nocase" / ",noport" modifiers;
 *   FILE  match-header  MODE  NAME  VALUE  WANT   WANT is 1, 0 or -22;
 *                                               "raw=N" gives the flags as a number
 * In TEXT, NAME, VALUE and PATTERN "\s" stands for a space and "-" alone for
 * the empty string. The same file drives the kernel-side check in the VM
 * (pkg/kmod, TestHTTPKfuncsCorpus), so both builds must agree. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../http_parse.h"

struct input {
	char name[256];
	unsigned char *data;
	size_t len;
	int checked;
};

static struct input inputs[512];
static int ninputs;

static unsigned char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	unsigned char *buf;
	long n;

	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc(n > 0 ? (size_t)n : 1);
	if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
		fclose(f);
		free(buf);
		return NULL;
	}
	fclose(f);
	*len = (size_t)n;
	return buf;
}

static const char *status_name(int st)
{
	switch (st) {
	case KMESH_HTTP_OK: return "OK";
	case KMESH_HTTP_INCOMPLETE: return "INCOMPLETE";
	case KMESH_HTTP_TOO_LARGE: return "TOO_LARGE";
	case KMESH_HTTP_E_NOT_HTTP: return "E_NOT_HTTP";
	case KMESH_HTTP_E_REQLINE: return "E_REQLINE";
	case KMESH_HTTP_E_HEADER: return "E_HEADER";
	case KMESH_HTTP_E_HOST: return "E_HOST";
	case KMESH_HTTP_E_VERSION: return "E_VERSION";
	}
	return "?";
}

static const char *form_name(int f)
{
	static const char *names[] = { "none", "origin", "absolute", "authority", "asterisk" };

	return f >= 0 && f <= 4 ? names[f] : "?";
}

static void flags_text(unsigned int f, char *out, size_t n)
{
	static const char *names[] = { "reqline", "host", "folded", "trailing" };
	unsigned int i;

	out[0] = 0;
	for (i = 0; i < 4; i++) {
		if (f & (1u << i)) {
			if (out[0])
				strncat(out, ",", n - strlen(out) - 1);
			strncat(out, names[i], n - strlen(out) - 1);
		}
	}
	if (!out[0])
		snprintf(out, n, "-");
}

/* parse gives every check its own copy: the parser unfolds in place, and
 * ASan sees reads past the exact allocation. */
static unsigned char *parse(const struct input *in, struct kmesh_http_msg *m)
{
	size_t n = in->len > KMESH_HTTP_MAX_HEAD ? KMESH_HTTP_MAX_HEAD : in->len;
	unsigned char *copy = malloc(n ? n : 1);

	memcpy(copy, in->data, n);
	kmesh_http_parse(m, copy, (unsigned int)n, in->len > n);
	return copy;
}

static void unescape(char *s)
{
	char *r = s, *w = s;

	if (strcmp(s, "-") == 0) {
		s[0] = 0;
		return;
	}
	while (*r) {
		if (r[0] == '\\' && r[1] == 's') {
			*w++ = ' ';
			r += 2;
		} else if (r[0] == '\\' && r[1] == 't') {
			*w++ = '\t';
			r += 2;
		} else {
			*w++ = *r++;
		}
	}
	*w = 0;
}

static int parse_mode(const char *s, unsigned int *flags)
{
	char buf[64], *tok, *save;

	snprintf(buf, sizeof(buf), "%s", s);
	*flags = 0;
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (!strcmp(tok, "exact"))
			*flags |= KMESH_MATCH_EXACT;
		else if (!strcmp(tok, "prefix"))
			*flags |= KMESH_MATCH_PREFIX;
		else if (!strcmp(tok, "suffix"))
			*flags |= KMESH_MATCH_SUFFIX;
		else if (!strcmp(tok, "present"))
			*flags |= KMESH_MATCH_PRESENT;
		else if (!strcmp(tok, "nocase"))
			*flags |= KMESH_MATCH_NOCASE;
		else if (!strcmp(tok, "noport"))
			*flags |= KMESH_MATCH_NO_PORT;
		else if (!strncmp(tok, "raw=", 4))
			*flags |= (unsigned int)strtoul(tok + 4, NULL, 0);
		else
			return -1;
	}
	return 0;
}

static void field_text(const struct kmesh_http_msg *m, const unsigned char *buf, unsigned int field,
		       unsigned int need_flag, char *out, size_t n)
{
	const unsigned char *p;
	int len;

	if (!(m->flags & need_flag)) {
		snprintf(out, n, "-");
		return;
	}
	len = kmesh_http_field(m, buf, field, &p);
	if (len < 0 || (size_t)len >= n) {
		snprintf(out, n, "<len %d>", len);
		return;
	}
	memcpy(out, p, (size_t)len);
	out[len] = 0;
}

static void dump(const char *path)
{
	struct input in = { 0 };
	struct kmesh_http_msg m;
	unsigned char *buf;
	char text[KMESH_HTTP_MAX_HEAD + 1], fl[64];
	unsigned int i;

	in.data = read_file(path, &in.len);
	if (!in.data) {
		perror(path);
		exit(2);
	}
	buf = parse(&in, &m);
	flags_text(m.flags, fl, sizeof(fl));
	printf("status %s\nversion %u\nform %s\nflags %s\nheaders %u\nhead-len %u\n", status_name(m.status),
	       m.version, form_name(m.target_form), fl, m.nr_headers, m.head_len);
	field_text(&m, buf, KMESH_HTTP_FIELD_METHOD, KMESH_HTTP_F_REQLINE, text, sizeof(text));
	printf("method %s\n", text);
	field_text(&m, buf, KMESH_HTTP_FIELD_TARGET, KMESH_HTTP_F_REQLINE, text, sizeof(text));
	printf("target %.120s\n", text);
	field_text(&m, buf, KMESH_HTTP_FIELD_PATH, KMESH_HTTP_F_REQLINE, text, sizeof(text));
	printf("path %.120s\n", text);
	field_text(&m, buf, KMESH_HTTP_FIELD_HOST, KMESH_HTTP_F_HOST, text, sizeof(text));
	printf("host %s\n", text);
	for (i = 0; i < m.nr_headers && i < 8; i++)
		printf("  %.*s: %.*s\n", m.hdr[i].name.len, buf + m.hdr[i].name.off,
		       m.hdr[i].value.len > 100 ? 100 : m.hdr[i].value.len, buf + m.hdr[i].value.off);
	free(buf);
	free(in.data);
}

static struct input *find_input(const char *name)
{
	int i;

	for (i = 0; i < ninputs; i++) {
		if (!strcmp(inputs[i].name, name))
			return &inputs[i];
	}
	return NULL;
}

static int check(struct input *in, char **f, int nf, int lineno)
{
	struct kmesh_http_msg m;
	unsigned char *buf = parse(in, &m);
	static char got[KMESH_HTTP_MAX_HEAD + 64];
	char want[512] = "";
	const char *what = f[1];
	unsigned int flags;
	int ok = 0, r, wantr;

#define ARGS(n) do { if (nf != (n)) goto bad_line; } while (0)
	if (!strcmp(what, "status")) {
		ARGS(3);
		snprintf(got, sizeof(got), "%s", status_name(m.status));
		snprintf(want, sizeof(want), "%s", f[2]);
	} else if (!strcmp(what, "method") || !strcmp(what, "path") || !strcmp(what, "target") ||
		   !strcmp(what, "host")) {
		unsigned int field = !strcmp(what, "method") ? KMESH_HTTP_FIELD_METHOD :
				     !strcmp(what, "path")   ? KMESH_HTTP_FIELD_PATH :
				     !strcmp(what, "target") ? KMESH_HTTP_FIELD_TARGET : KMESH_HTTP_FIELD_HOST;

		ARGS(3);
		field_text(&m, buf, field, field == KMESH_HTTP_FIELD_HOST ? KMESH_HTTP_F_HOST : KMESH_HTTP_F_REQLINE,
			   got, sizeof(got));
		snprintf(want, sizeof(want), "%s", f[2]);
		if (strcmp(want, "-")) {
			unescape(want);
		}
	} else if (!strcmp(what, "version") || !strcmp(what, "headers") || !strcmp(what, "head-len")) {
		unsigned int v = !strcmp(what, "version") ? m.version : !strcmp(what, "headers") ? m.nr_headers : m.head_len;

		ARGS(3);
		snprintf(got, sizeof(got), "%u", v);
		snprintf(want, sizeof(want), "%s", f[2]);
	} else if (!strcmp(what, "form")) {
		ARGS(3);
		snprintf(got, sizeof(got), "%s", form_name(m.target_form));
		snprintf(want, sizeof(want), "%s", f[2]);
	} else if (!strcmp(what, "flags")) {
		ARGS(3);
		flags_text(m.flags, got, sizeof(got));
		snprintf(want, sizeof(want), "%s", f[2]);
	} else if (!strcmp(what, "header")) {
		unsigned int i, nlen;

		ARGS(4);
		unescape(f[2]);
		nlen = (unsigned int)strlen(f[2]);
		snprintf(got, sizeof(got), "<absent>");
		for (i = 0; i < m.nr_headers; i++) {
			if (m.hdr[i].name.len == nlen && !strncasecmp((char *)buf + m.hdr[i].name.off, f[2], nlen)) {
				snprintf(got, sizeof(got), "%.*s", m.hdr[i].value.len, buf + m.hdr[i].value.off);
				break;
			}
		}
		snprintf(want, sizeof(want), "%s", f[3]);
		unescape(want);
	} else if (!strcmp(what, "match-host") || !strcmp(what, "match-path")) {
		ARGS(5);
		if (parse_mode(f[2], &flags))
			goto bad_line;
		unescape(f[3]);
		if (!strcmp(what, "match-host"))
			r = kmesh_http_match_host(&m, buf, (unsigned char *)f[3], (unsigned int)strlen(f[3]), flags);
		else
			r = kmesh_http_match_path(&m, buf, (unsigned char *)f[3], (unsigned int)strlen(f[3]), flags);
		wantr = atoi(f[4]);
		snprintf(got, sizeof(got), "%d", r);
		snprintf(want, sizeof(want), "%d", wantr);
	} else if (!strcmp(what, "match-header")) {
		ARGS(6);
		if (parse_mode(f[2], &flags))
			goto bad_line;
		unescape(f[3]);
		unescape(f[4]);
		r = kmesh_http_match_header(&m, buf, (unsigned char *)f[3], (unsigned int)strlen(f[3]),
					    (unsigned char *)f[4], (unsigned int)strlen(f[4]), flags);
		snprintf(got, sizeof(got), "%d", r);
		snprintf(want, sizeof(want), "%d", atoi(f[5]));
	} else {
		goto bad_line;
	}
	ok = !strcmp(got, want);
	if (!ok)
		fprintf(stderr, "expect.txt:%d: %s %s: got %.200s, want %s\n", lineno, in->name, what, got, want);
	free(buf);
	return ok;
bad_line:
	fprintf(stderr, "expect.txt:%d: malformed check\n", lineno);
	free(buf);
	return 0;
}

int main(int argc, char **argv)
{
	char path[1024], line[4096];
	int lineno = 0, checks = 0, failed = 0, i;
	struct dirent *de;
	FILE *ef;
	DIR *d;

	if (argc == 3 && !strcmp(argv[1], "--dump")) {
		dump(argv[2]);
		return 0;
	}
	if (argc != 2) {
		fprintf(stderr, "usage: %s DIR | --dump FILE\n", argv[0]);
		return 2;
	}
	d = opendir(argv[1]);
	if (!d) {
		perror(argv[1]);
		return 2;
	}
	while ((de = readdir(d))) {
		size_t l = strlen(de->d_name);

		if (l < 6 || strcmp(de->d_name + l - 5, ".http"))
			continue;
		if (ninputs == (int)(sizeof(inputs) / sizeof(inputs[0])))
			break;
		snprintf(inputs[ninputs].name, sizeof(inputs[0].name), "%s", de->d_name);
		snprintf(path, sizeof(path), "%s/%s", argv[1], de->d_name);
		inputs[ninputs].data = read_file(path, &inputs[ninputs].len);
		if (!inputs[ninputs].data) {
			perror(path);
			return 2;
		}
		ninputs++;
	}
	closedir(d);

	snprintf(path, sizeof(path), "%s/expect.txt", argv[1]);
	ef = fopen(path, "r");
	if (!ef) {
		perror(path);
		return 2;
	}
	while (fgets(line, sizeof(line), ef)) {
		char *f[8], *save, *tok;
		struct input *in;
		int nf = 0;

		lineno++;
		line[strcspn(line, "\r\n")] = 0;
		if (!line[0] || line[0] == '#')
			continue;
		for (tok = strtok_r(line, "\t", &save); tok && nf < 8; tok = strtok_r(NULL, "\t", &save))
			f[nf++] = tok;
		if (nf < 3) {
			fprintf(stderr, "expect.txt:%d: malformed line\n", lineno);
			failed++;
			continue;
		}
		in = find_input(f[0]);
		if (!in) {
			fprintf(stderr, "expect.txt:%d: no corpus file %s\n", lineno, f[0]);
			failed++;
			continue;
		}
		in->checked = 1;
		checks++;
		if (!check(in, f, nf, lineno))
			failed++;
	}
	fclose(ef);
	for (i = 0; i < ninputs; i++) {
		if (!inputs[i].checked) {
			fprintf(stderr, "%s has no expectation in expect.txt\n", inputs[i].name);
			failed++;
		}
		free(inputs[i].data);
	}
	printf("http_corpus: %d files, %d checks, %d failed\n", ninputs, checks, failed);
	return failed ? 1 : 0;
}
