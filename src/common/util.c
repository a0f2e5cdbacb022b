/* util.c - cleanup helpers, strings, parsing, hashing. */
#include "common.h"

#include <ctype.h>
#include <string.h>
#include <sys/random.h>

void vela_cleanup_free(void *p)
{
	free(*(void **)p);
}

void vela_cleanup_close(int *fd)
{
	if (*fd >= 0) {
		int saved = errno;
		close(*fd);
		errno = saved;
	}
}

void vela_cleanup_fclose(FILE **f)
{
	if (*f)
		fclose(*f);
}

static void oom(void)
{
	fputs("vela: out of memory\n", stderr);
	abort();
}

void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (!p)
		oom();
	return p;
}

void *xrealloc(void *p, size_t size)
{
	p = realloc(p, size ? size : 1);
	if (!p)
		oom();
	return p;
}

char *xstrdup(const char *s)
{
	char *r = strdup(s);
	if (!r)
		oom();
	return r;
}

char *xstrndup(const char *s, size_t n)
{
	char *r = strndup(s, n);
	if (!r)
		oom();
	return r;
}

char *xasprintf(const char *fmt, ...)
{
	char *r;
	va_list ap;
	va_start(ap, fmt);
	int n = vasprintf(&r, fmt, ap);
	va_end(ap);
	if (n < 0)
		oom();
	return r;
}

int strbuf_append(struct strbuf *sb, const char *s, size_t n)
{
	if (sb->len + n + 1 > sb->cap) {
		size_t cap = sb->cap ? sb->cap : 64;
		while (cap < sb->len + n + 1)
			cap *= 2;
		sb->data = xrealloc(sb->data, cap);
		sb->cap = cap;
	}
	memcpy(sb->data + sb->len, s, n);
	sb->len += n;
	sb->data[sb->len] = '\0';
	return 0;
}

int strbuf_puts(struct strbuf *sb, const char *s)
{
	return strbuf_append(sb, s, strlen(s));
}

int strbuf_printf(struct strbuf *sb, const char *fmt, ...)
{
	char *tmp;
	va_list ap;
	va_start(ap, fmt);
	int n = vasprintf(&tmp, fmt, ap);
	va_end(ap);
	if (n < 0)
		oom();
	strbuf_append(sb, tmp, (size_t)n);
	free(tmp);
	return 0;
}

int strbuf_json_string(struct strbuf *sb, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	strbuf_append(sb, "\"", 1);
	const char *run = s;
	for (const char *p = s; *p; p++) {
		unsigned char c = (unsigned char)*p;
		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		strbuf_append(sb, run, (size_t)(p - run));
		char esc[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
		if (c == '"' || c == '\\') {
			esc[1] = (char)c;
			strbuf_append(sb, esc, 2);
		} else {
			strbuf_append(sb, esc, 6);
		}
		run = p + 1;
	}
	strbuf_append(sb, run, strlen(run));
	return strbuf_append(sb, "\"", 1);
}

void strbuf_reset(struct strbuf *sb)
{
	sb->len = 0;
	if (sb->data)
		sb->data[0] = '\0';
}

void strbuf_free(struct strbuf *sb)
{
	free(sb->data);
	sb->data = NULL;
	sb->len = sb->cap = 0;
}

char *strbuf_steal(struct strbuf *sb)
{
	char *r = sb->data ? sb->data : xstrdup("");
	sb->data = NULL;
	sb->len = sb->cap = 0;
	return r;
}

bool str_ieq(const char *a, const char *b)
{
	return strcasecmp(a, b) == 0;
}

bool str_starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

bool str_istarts_with(const char *s, const char *prefix)
{
	return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

int parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = { "true", "yes", "1", "on" };
	static const char *const no[] = { "false", "no", "0", "off" };
	for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
		if (str_ieq(s, yes[i])) {
			*out = true;
			return 0;
		}
		if (str_ieq(s, no[i])) {
			*out = false;
			return 0;
		}
	}
	return vela_error(VELA_E_INVAL, "expected a boolean (TRUE/FALSE, yes/no, 1/0), got \"%s\"", s);
}

int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;
	if (!*s)
		return vela_error(VELA_E_INVAL, "expected a number, got an empty string");
	for (const char *p = s; *p; p++) {
		if (!isdigit((unsigned char)*p))
			return vela_error(VELA_E_INVAL, "expected a number, got \"%s\"", s);
		if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, (uint64_t)(*p - '0'), &v))
			return vela_error(VELA_E_RANGE, "number \"%s\" is too large", s);
	}
	if (v > max)
		return vela_error(VELA_E_RANGE, "number %s is larger than %llu", s, (unsigned long long)max);
	*out = v;
	return 0;
}

int parse_size(const char *s, uint64_t *out)
{
	size_t n = strlen(s);
	uint64_t mult = 1, v;
	if (n > 0 && !isdigit((unsigned char)s[n - 1])) {
		switch (tolower((unsigned char)s[n - 1])) {
		case 'b': mult = 1; break;
		case 'k': mult = 1ULL << 10; break;
		case 'm': mult = 1ULL << 20; break;
		case 'g': mult = 1ULL << 30; break;
		case 't': mult = 1ULL << 40; break;
		case 'p': mult = 1ULL << 50; break;
		default:
			return vela_error(VELA_E_INVAL, "bad size \"%s\": unknown suffix (use k, m, g, t)", s);
		}
		n--;
	}
	CLEANUP_FREE char *digits = xstrndup(s, n);
	int r = parse_u64(digits, UINT64_MAX, &v);
	if (r < 0)
		return vela_error_context(r, "bad size \"%s\"", s);
	if (__builtin_mul_overflow(v, mult, out))
		return vela_error(VELA_E_RANGE, "size \"%s\" is too large", s);
	return 0;
}

uint64_t hash_fnv1a64(const void *data, size_t len)
{
	const unsigned char *p = data;
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

int random_bytes(void *buf, size_t len)
{
	unsigned char *p = buf;
	while (len > 0) {
		ssize_t n = getrandom(p, len, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return vela_error_errno(errno, "getrandom");
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}
