/* agent.c - framing and validation of the guest-agent protocol. */
#include "common.h"
#include "agent.h"

#include <string.h>

static void lines_take(struct agent_lines *l, const char *p, size_t n)
{
	if (l->discarding)
		return;
	if (l->len + n > AGENT_LINE_MAX) {
		/* Too long: drop what we have and everything up to the next LF. */
		l->discarding = true;
		l->overlong++;
		l->len = 0;
		return;
	}
	if (!l->buf)
		l->buf = xcalloc(1, AGENT_LINE_MAX + 1);
	memcpy(l->buf + l->len, p, n);
	l->len += n;
}

void agent_lines_feed(struct agent_lines *l, const char *data, size_t n, agent_line_cb line_cb, void *opaque)
{
	while (n > 0) {
		const char *nl = memchr(data, '\n', n);
		size_t part = nl ? (size_t)(nl - data) : n;
		lines_take(l, data, part);
		if (!nl)
			return;
		if (!l->discarding && l->len > 0) {
			l->buf[l->len] = '\0';
			line_cb(l->buf, l->len, opaque);
		}
		l->discarding = false;
		l->len = 0;
		data = nl + 1;
		n -= part + 1;
	}
}

void agent_lines_free(struct agent_lines *l)
{
	free(l->buf);
	*l = (struct agent_lines){ 0 };
}

void agent_msg_clear(struct agent_msg *m)
{
	json_decref(m->json);
	*m = (struct agent_msg){ 0 };
}

static bool cmd_name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > AGENT_CMD_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
			return false;
	return true;
}

static int get_id(json_t *v, const char *what, uint64_t *out)
{
	if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) > AGENT_ID_MAX)
		return vela_error(VELA_E_PROTOCOL, "agent message: \"%s\" is not a number from 0 to 2^53-1", what);
	*out = (uint64_t)json_integer_value(v);
	return 0;
}

int agent_msg_parse(const char *line, size_t len, struct agent_msg *out)
{
	*out = (struct agent_msg){ 0 };
	if (len > AGENT_LINE_MAX)
		return vela_error(VELA_E_PROTOCOL, "agent message longer than %u bytes", AGENT_LINE_MAX);
	json_error_t jerr;
	json_t *j = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!j)
		return vela_error(VELA_E_PROTOCOL, "agent message is not JSON: %s", jerr.text);
	int r = 0;
	struct agent_msg m = { .json = j };
	json_t *re = json_object_get(j, "re");
	json_t *id = json_object_get(j, "id");
	json_t *cmd = json_object_get(j, "cmd");
	if (!json_is_object(j)) {
		r = vela_error(VELA_E_PROTOCOL, "agent message is not a JSON object");
	} else if (re) {
		json_t *ok = json_object_get(j, "ok");
		json_t *err = json_object_get(j, "error");
		m.kind = AGENT_MSG_REPLY;
		if ((r = get_id(re, "re", &m.id)) < 0)
			;
		else if (!json_is_boolean(ok))
			r = vela_error(VELA_E_PROTOCOL, "agent reply: \"ok\" is not true or false");
		else if (json_is_false(ok) && !json_is_string(err))
			r = vela_error(VELA_E_PROTOCOL, "agent reply: a failure without an \"error\" text");
		else {
			m.ok = json_is_true(ok);
			m.error = json_string_value(err);
		}
	} else if (!json_is_string(cmd) || !cmd_name_ok(json_string_value(cmd))) {
		r = vela_error(VELA_E_PROTOCOL, "agent message: no \"re\", and \"cmd\" is not a name of 1-%u [a-z0-9-]",
			       AGENT_CMD_MAX);
	} else {
		m.cmd = json_string_value(cmd);
		m.kind = id ? AGENT_MSG_REQUEST : AGENT_MSG_NOTICE;
		if (id)
			r = get_id(id, "id", &m.id);
	}
	if (r < 0) {
		json_decref(j);
		return r;
	}
	*out = m;
	return 0;
}

char *agent_encode(json_t *j)
{
	char *text = json_dumps(j, JSON_COMPACT);
	if (!text)
		return NULL;
	size_t n = strlen(text);
	if (n > AGENT_LINE_MAX) {
		free(text);
		return NULL;
	}
	char *line = xrealloc(text, n + 2);
	line[n] = '\n';
	line[n + 1] = '\0';
	return line;
}

int agent_guestinfo_key(const char *key, char **out)
{
	static const char prefix[] = "guestinfo.";
	*out = NULL;
	if (!key)
		return vela_error(VELA_E_INVAL, "guestinfo: no key");
	const char *name = str_istarts_with(key, prefix) ? key + strlen(prefix) : key;
	size_t n = strlen(name);
	if (n == 0 || n > AGENT_KEY_MAX - strlen(prefix))
		return vela_error(VELA_E_INVAL, "guestinfo: a key is guestinfo.NAME with a NAME of 1-%zu characters",
				  AGENT_KEY_MAX - strlen(prefix));
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
		      c == '_' || c == '-'))
			return vela_error(VELA_E_INVAL, "guestinfo: key \"%.*s\" may only have letters, digits, '.', '_' and '-'",
					  (int)(n < 64 ? n : 64), name);
	}
	*out = xasprintf("%s%s", prefix, name);
	return 0;
}

int agent_guestinfo_value_check(const char *value)
{
	if (!value)
		return vela_error(VELA_E_INVAL, "guestinfo: no value");
	if (strlen(value) > AGENT_VALUE_MAX)
		return vela_error(VELA_E_TOOBIG, "guestinfo: a value is at most %u bytes", AGENT_VALUE_MAX);
	return 0;
}

int agent_net_counters(json_t *net, uint64_t *rx, uint64_t *tx)
{
	*rx = *tx = 0;
	if (!json_is_object(net) || json_object_size(net) > AGENT_MAX_NICS)
		return vela_error(VELA_E_PROTOCOL, "net: an object of at most %u interfaces", AGENT_MAX_NICS);
	const char *name;
	json_t *v;
	json_object_foreach(net, name, v) {
		json_t *r = json_array_get(v, 0), *t = json_array_get(v, 1);
		size_t n = strlen(name);
		if (n == 0 || n > 15 || json_array_size(v) != 2 || !json_is_integer(r) || !json_is_integer(t) ||
		    json_integer_value(r) < 0 || json_integer_value(t) < 0 ||
		    (uint64_t)json_integer_value(r) > AGENT_ID_MAX || (uint64_t)json_integer_value(t) > AGENT_ID_MAX)
			return vela_error(VELA_E_PROTOCOL, "net: \"%.16s\" is not [rx_bytes, tx_bytes]", name);
		*rx += (uint64_t)json_integer_value(r);
		*tx += (uint64_t)json_integer_value(t);
	}
	return 0;
}

/* ------------------------------------------------------------ settings */

void agent_conf_free(struct agent_conf *c)
{
	free(c->pre_halt);
	free(c->pre_reboot);
	free(c->pre_freeze);
	free(c->post_thaw);
	free(c->post_resume);
	free(c->halt_command);
	free(c->reboot_command);
	*c = (struct agent_conf){ 0 };
}

static char *trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
		s[--n] = '\0';
	return s;
}

int agent_conf_parse(const char *text, size_t len, const char *name, struct agent_conf *out)
{
	struct agent_conf c = { .heartbeat_interval_s = 1, .freeze_timeout_s = 60, .command_timeout_s = 60 };
	struct { const char *key; char **value; } strings[] = {
		{ "pre-halt", &c.pre_halt }, { "pre-reboot", &c.pre_reboot },
		{ "pre-freeze", &c.pre_freeze }, { "post-thaw", &c.post_thaw },
		{ "post-resume", &c.post_resume }, { "halt-command", &c.halt_command },
		{ "reboot-command", &c.reboot_command },
	};
	struct { const char *key; unsigned *value; unsigned min, max; } numbers[] = {
		{ "heartbeat-interval", &c.heartbeat_interval_s, 1, 60 },
		{ "freeze-timeout", &c.freeze_timeout_s, 1, 600 },
		{ "command-timeout", &c.command_timeout_s, 1, 3600 },
	};
	if (len > 65536)
		return vela_error(VELA_E_TOOBIG, "%s: longer than 64 KiB", name);
	CLEANUP_FREE char *copy = xstrndup(text, len);
	if (strlen(copy) != len)
		return vela_error(VELA_E_CONFIG, "%s: contains a NUL byte", name);
	unsigned lineno = 0;
	int r = 0;
	for (char *line = copy, *next; line && r == 0; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		lineno++;
		char *t = trim(line);
		if (!*t || *t == '#')
			continue;
		char *eq = strchr(t, '=');
		if (!eq) {
			r = vela_error(VELA_E_CONFIG, "%s: line %u: expected key = value", name, lineno);
			break;
		}
		*eq = '\0';
		char *key = trim(t), *value = trim(eq + 1);
		bool known = false;
		for (size_t i = 0; i < ARRAY_SIZE(strings) && !known; i++) {
			if (strcmp(key, strings[i].key) != 0)
				continue;
			known = true;
			free(*strings[i].value);
			*strings[i].value = *value ? xstrdup(value) : NULL;
		}
		for (size_t i = 0; i < ARRAY_SIZE(numbers) && !known; i++) {
			if (strcmp(key, numbers[i].key) != 0)
				continue;
			known = true;
			uint64_t v;
			if (parse_u64(value, numbers[i].max, &v) < 0 || v < numbers[i].min)
				r = vela_error(VELA_E_CONFIG, "%s: line %u: %s is a number from %u to %u", name, lineno, key,
					       numbers[i].min, numbers[i].max);
			else
				*numbers[i].value = (unsigned)v;
		}
		if (!known && r == 0)
			r = vela_error(VELA_E_CONFIG, "%s: line %u: unknown key \"%.64s\"", name, lineno, key);
	}
	if (r < 0) {
		agent_conf_free(&c);
		return r;
	}
	*out = c;
	return 0;
}
