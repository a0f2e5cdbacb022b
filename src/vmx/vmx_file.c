/* vmx_file.c - byte-exact .vmx key/value store: parse, edit, serialize. */
#include "common.h"
#include "vmx.h"

#include <ctype.h>
#include <string.h>

enum line_kind { LINE_BLANK, LINE_COMMENT, LINE_ENTRY };

struct vmx_line {
	enum line_kind kind;
	char *raw;      /* the bytes of the line including its terminator */
	char *key;      /* LINE_ENTRY: key as spelled in the file */
	char *value;    /* LINE_ENTRY: decoded value */
	unsigned lineno;
};

struct vmx_file {
	char *name;
	struct vmx_line *lines;
	size_t n, cap;
	bool dirty;
	bool crlf;      /* dominant line ending of the file */
};

static void line_clear(struct vmx_line *l)
{
	free(l->raw);
	free(l->key);
	free(l->value);
}

void vmx_file_free(struct vmx_file *f)
{
	if (!f)
		return;
	for (size_t i = 0; i < f->n; i++)
		line_clear(&f->lines[i]);
	free(f->lines);
	free(f->name);
	free(f);
}

const char *vmx_file_name(const struct vmx_file *f)
{
	return f->name;
}

static struct vmx_line *push_line(struct vmx_file *f)
{
	if (f->n == f->cap) {
		f->cap = f->cap ? f->cap * 2 : 64;
		f->lines = xrealloc(f->lines, f->cap * sizeof *f->lines);
	}
	struct vmx_line *l = &f->lines[f->n++];
	memset(l, 0, sizeof *l);
	return l;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* The classic format escapes bytes inside quoted values as |XX (hex). */
static char *decode_value(const char *s, size_t n)
{
	char *out = xcalloc(1, n + 1);
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '|' && i + 2 < n && hexval((unsigned char)s[i + 1]) >= 0 && hexval((unsigned char)s[i + 2]) >= 0) {
			int v = hexval((unsigned char)s[i + 1]) * 16 + hexval((unsigned char)s[i + 2]);
			if (v != 0) {
				out[o++] = (char)v;
				i += 2;
				continue;
			}
		}
		out[o++] = s[i];
	}
	out[o] = '\0';
	return out;
}

static void encode_value(struct strbuf *sb, const char *v)
{
	for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
		if (*p == '"' || *p == '|' || *p < 0x20 || *p == 0x7f)
			strbuf_printf(sb, "|%02X", *p);
		else
			strbuf_append(sb, (const char *)p, 1);
	}
}

static bool key_char(int c)
{
	return c > ' ' && c != '=' && c != '"' && c != '#' && c < 0x7f;
}

static int find_index_before(const struct vmx_file *f, const char *key, size_t end)
{
	for (size_t i = 0; i < end && i < f->n; i++)
		if (f->lines[i].kind == LINE_ENTRY && str_ieq(f->lines[i].key, key))
			return (int)i;
	return -1;
}

static int find_index(const struct vmx_file *f, const char *key)
{
	for (size_t i = 0; i < f->n; i++)
		if (f->lines[i].kind == LINE_ENTRY && str_ieq(f->lines[i].key, key))
			return (int)i;
	return -1;
}

/* Parse one entry line (without terminator). */
static int parse_entry(struct vmx_file *f, struct vmx_line *l, const char *s, size_t n)
{
	size_t i = 0;
	while (i < n && (s[i] == ' ' || s[i] == '\t'))
		i++;
	size_t k0 = i;
	while (i < n && key_char((unsigned char)s[i]))
		i++;
	if (i == k0)
		return vela_error(VELA_E_SYNTAX, "%s:%u: expected a key at the start of the line", f->name, l->lineno);
	l->key = xstrndup(s + k0, i - k0);
	while (i < n && (s[i] == ' ' || s[i] == '\t'))
		i++;
	if (i >= n || s[i] != '=')
		return vela_error(VELA_E_SYNTAX, "%s:%u: key \"%s\": expected '=' after the key", f->name, l->lineno, l->key);
	i++;
	while (i < n && (s[i] == ' ' || s[i] == '\t'))
		i++;
	if (i < n && s[i] == '"') {
		size_t v0 = ++i;
		while (i < n && s[i] != '"')
			i++;
		if (i >= n)
			return vela_error(VELA_E_SYNTAX, "%s:%u: key \"%s\": missing closing '\"' in the value", f->name, l->lineno, l->key);
		l->value = decode_value(s + v0, i - v0);
		i++;
		while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r'))
			i++;
		if (i < n && s[i] != '#')
			return vela_error(VELA_E_SYNTAX, "%s:%u: key \"%s\": unexpected text after the closing '\"'", f->name, l->lineno, l->key);
	} else {
		/* Unquoted values are accepted on read: the rest of the line, trimmed. */
		size_t e = n;
		while (e > i && (s[e - 1] == ' ' || s[e - 1] == '\t'))
			e--;
		if (memchr(s + i, '"', e - i))
			return vela_error(VELA_E_SYNTAX, "%s:%u: key \"%s\": stray '\"' in an unquoted value", f->name, l->lineno, l->key);
		l->value = decode_value(s + i, e - i);
	}
	int dup = find_index_before(f, l->key, (size_t)(l - f->lines));
	if (dup >= 0)
		return vela_error(VELA_E_SYNTAX, "%s:%u: key \"%s\" is set twice (first at line %u)", f->name, l->lineno, l->key, f->lines[dup].lineno);
	return 0;
}

int vmx_file_parse(const char *name, const char *text, size_t len, struct vmx_file **out)
{
	struct vmx_file *f = xcalloc(1, sizeof *f);
	size_t pos = 0, crlf = 0, lf = 0;
	unsigned lineno = 0;
	int r = 0;

	f->name = xstrdup(name);
	if (len > VMX_MAX_FILE_SIZE) {
		r = vela_error(VELA_E_TOOBIG, "%s: file is %zu bytes, the limit is %u", name, len, VMX_MAX_FILE_SIZE);
		goto err;
	}
	if (memchr(text, '\0', len)) {
		r = vela_error(VELA_E_SYNTAX, "%s: file contains a NUL byte: not a text configuration file", name);
		goto err;
	}
	while (pos < len) {
		const char *s = text + pos;
		const char *nl = memchr(s, '\n', len - pos);
		size_t rawlen = nl ? (size_t)(nl - s) + 1 : len - pos;
		size_t n = nl ? (size_t)(nl - s) : len - pos;
		if (n > 0 && s[n - 1] == '\r') {
			n--;
			crlf++;
		} else if (nl) {
			lf++;
		}
		struct vmx_line *l = push_line(f);
		l->lineno = ++lineno;
		l->raw = xstrndup(s, rawlen);
		size_t i = 0;
		while (i < n && (s[i] == ' ' || s[i] == '\t'))
			i++;
		if (i == n)
			l->kind = LINE_BLANK;
		else if (s[i] == '#')
			l->kind = LINE_COMMENT;   /* includes the optional "#!" first line */
		else {
			l->kind = LINE_ENTRY;
			r = parse_entry(f, l, s, n);
			if (r < 0)
				goto err;
		}
		pos += rawlen;
	}
	f->crlf = crlf > lf;
	*out = f;
	return 0;
err:
	vmx_file_free(f);
	return r;
}

int vmx_file_load(const char *path, struct vmx_file **out)
{
	CLEANUP_FREE char *text = NULL;
	size_t len;
	int r = read_file(path, VMX_MAX_FILE_SIZE, &text, &len);
	if (r < 0)
		return vela_error_context(r, "vmx_file_load");
	return vmx_file_parse(path, text, len, out);
}

const char *vmx_get(const struct vmx_file *f, const char *key)
{
	int i = find_index(f, key);
	return i < 0 ? NULL : f->lines[i].value;
}

unsigned vmx_get_line(const struct vmx_file *f, const char *key)
{
	int i = find_index(f, key);
	return i < 0 ? 0 : f->lines[i].lineno;
}

bool vmx_entry_at(const struct vmx_file *f, size_t idx, const char **key, const char **value, unsigned *line)
{
	size_t seen = 0;
	for (size_t i = 0; i < f->n; i++) {
		if (f->lines[i].kind != LINE_ENTRY)
			continue;
		if (seen++ == idx) {
			*key = f->lines[i].key;
			*value = f->lines[i].value;
			if (line)
				*line = f->lines[i].lineno;
			return true;
		}
	}
	return false;
}

static char *format_entry(const char *key, const char *value, const char *eol)
{
	struct strbuf sb = { 0 };
	strbuf_printf(&sb, "%s = \"", key);
	encode_value(&sb, value);
	strbuf_printf(&sb, "\"%s", eol);
	return strbuf_steal(&sb);
}

static bool valid_key(const char *key)
{
	if (!*key)
		return false;
	for (const char *p = key; *p; p++)
		if (!key_char((unsigned char)*p))
			return false;
	return true;
}

int vmx_set(struct vmx_file *f, const char *key, const char *value)
{
	if (!valid_key(key))
		return vela_error(VELA_E_INVAL, "vmx_set: invalid key \"%s\"", key);
	int i = find_index(f, key);
	if (i >= 0) {
		struct vmx_line *l = &f->lines[i];
		if (strcmp(l->value, value) == 0)
			return 0;
		size_t rl = strlen(l->raw);
		const char *eol = "";
		if (rl >= 2 && l->raw[rl - 2] == '\r' && l->raw[rl - 1] == '\n')
			eol = "\r\n";
		else if (rl >= 1 && l->raw[rl - 1] == '\n')
			eol = "\n";
		free(l->raw);
		free(l->value);
		l->raw = format_entry(l->key, value, eol);
		l->value = xstrdup(value);
		f->dirty = true;
		return 0;
	}
	const char *eol = f->crlf ? "\r\n" : "\n";
	/* A last line without terminator gets one before we append after it. */
	if (f->n > 0) {
		struct vmx_line *last = &f->lines[f->n - 1];
		size_t rl = strlen(last->raw);
		if (rl == 0 || last->raw[rl - 1] != '\n') {
			/* A last line ending in a lone CR only needs its LF. */
			char *nr = xasprintf("%s%s", last->raw, rl > 0 && last->raw[rl - 1] == '\r' ? "\n" : eol);
			free(last->raw);
			last->raw = nr;
		}
	}
	unsigned lineno = f->n ? f->lines[f->n - 1].lineno + 1 : 1;
	struct vmx_line *l = push_line(f);
	l->kind = LINE_ENTRY;
	l->lineno = lineno;
	l->key = xstrdup(key);
	l->value = xstrdup(value);
	l->raw = format_entry(key, value, eol);
	f->dirty = true;
	return 0;
}

void vmx_unset(struct vmx_file *f, const char *key)
{
	int i = find_index(f, key);
	if (i < 0)
		return;
	line_clear(&f->lines[i]);
	memmove(&f->lines[i], &f->lines[i + 1], (f->n - (size_t)i - 1) * sizeof *f->lines);
	f->n--;
	f->dirty = true;
}

bool vmx_file_dirty(const struct vmx_file *f)
{
	return f->dirty;
}

char *vmx_file_serialize(const struct vmx_file *f, size_t *len)
{
	struct strbuf sb = { 0 };
	for (size_t i = 0; i < f->n; i++)
		strbuf_puts(&sb, f->lines[i].raw);
	if (len)
		*len = sb.len;
	return strbuf_steal(&sb);
}

int vmx_file_save(const struct vmx_file *f, const char *path)
{
	size_t len;
	CLEANUP_FREE char *data = vmx_file_serialize(f, &len);
	int r = write_file_atomic(path, data, len);
	if (r < 0)
		return vela_error_context(r, "vmx_file_save");
	return 0;
}
