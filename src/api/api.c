/* api.c - HTTP/JSON routes of velad over libmicrohttpd. */
#include "common.h"
#include "api.h"
#include "console.h"
#include "web.h"
#include "vmx-sup.h"
#include "ws.h"
#include "auth.h"
#include "host.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <ctype.h>
#include <fcntl.h>
#include <grp.h>
#include <microhttpd.h>
#include <pthread.h>
#include <pwd.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define API_PREFIX "/api/v1/"

/* data/openapi.json, built in (scripts/embed.py). */
extern const char api_openapi_json[];
extern const size_t api_openapi_json_len;

struct api {
	struct host *host;
	struct auth *auth;
	struct MHD_Daemon *unix_daemon, *https_daemon, *http_daemon;
	char *unix_path;
	unsigned https_port;
	size_t max_body;
	gid_t vela_gid;
	bool have_vela_gid;
	char *tls_cert, *tls_key;
	/* GET /vms for administrators (no filtering) as sent, while the host's
	 * generation stays the same: a list of 1,000 VMs costs a copy. */
	pthread_mutex_t list_lock;
	uint64_t list_gen;
	char *list_text;
	atomic_bool stopping;     /* ends live streams, so the daemons can stop */
	struct console_bridges *consoles;
	char *web_root;           /* the UI's files, or NULL */
};

/* Per request: the body as it arrives, and who is asking. */
struct request {
	struct strbuf body;
	bool too_big;
	/* A datastore upload streams to a file instead of the body buffer. */
	struct host_upload *upload;
	int upload_error;      /* refused at the headers */
	char user[65];
};

/* ------------------------------------------------------------ errors */

unsigned api_http_status(int code)
{
	switch (code < 0 ? -code : code) {
	case VELA_E_INVAL:
	case VELA_E_BADNAME:
	case VELA_E_CONFIG:
	case VELA_E_RANGE:
	case VELA_E_PROTOCOL:
	case VELA_E_SYNTAX:
	case VELA_E_FORMAT:
		return MHD_HTTP_BAD_REQUEST;
	case VELA_E_AUTH:
	case VELA_E_SESSION:
		return MHD_HTTP_UNAUTHORIZED;
	case VELA_E_PERM:
		return MHD_HTTP_FORBIDDEN;
	case VELA_E_NOTFOUND:
	case VELA_E_CHAIN:
		return MHD_HTTP_NOT_FOUND;
	case VELA_E_DISKFULL:
	case VELA_E_QUOTA:
		return MHD_HTTP_INSUFFICIENT_STORAGE;
	case VELA_E_EXISTS:
	case VELA_E_BUSY:
	case VELA_E_BADSTATE:
	case VELA_E_NEEDINPUT:
	case VELA_E_LOCKED:
	case VELA_E_NOTRUNNING:
	case VELA_E_NOTEMPTY:
	case VELA_E_CANCELED:
		return MHD_HTTP_CONFLICT;
	case VELA_E_TOOBIG:
		return MHD_HTTP_CONTENT_TOO_LARGE;
	case VELA_E_NOTSUP:
		return MHD_HTTP_NOT_IMPLEMENTED;
	case VELA_E_TIMEOUT:
		return MHD_HTTP_GATEWAY_TIMEOUT;
	case VELA_E_LIMIT:
		return MHD_HTTP_TOO_MANY_REQUESTS;
	default:
		return MHD_HTTP_INTERNAL_SERVER_ERROR;
	}
}

/* Every JSON answer: text (taken), its status, and a cookie to set or NULL. */
static enum MHD_Result send_json_text(struct MHD_Connection *c, unsigned status, char *text, const char *cookie)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer_with_free_callback(strlen(text), text, free);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	if (cookie)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_SET_COOKIE, cookie);
	enum MHD_Result r = MHD_queue_response(c, status, resp);
	MHD_destroy_response(resp);
	return r;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, json_t *j)
{
	char *text = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	return send_json_text(c, status, text, NULL);
}

static enum MHD_Result send_error(struct MHD_Connection *c, int code)
{
	int n = code < 0 ? -code : code;
	json_t *err = json_pack("{s:i, s:s, s:s}", "code", n, "name", vela_errname(n), "message", vela_errmsg());
	return send_json(c, api_http_status(n), json_pack("{s:b, s:o}", "ok", 0, "error", err));
}

/* 200 with {"ok": true, key: value} (value stolen). */
static enum MHD_Result send_ok(struct MHD_Connection *c, const char *key, json_t *value)
{
	json_t *o = json_pack("{s:b}", "ok", 1);
	if (key)
		json_object_set_new(o, key, value);
	return send_json(c, MHD_HTTP_OK, o);
}

/* ------------------------------------------------------- body decoding */

int api_decode_body(const char *body, size_t len, struct api_field *fields, size_t n, json_t **doc)
{
	json_error_t jerr;
	*doc = NULL;
	json_t *j = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES, &jerr);
	if (!j)
		return vela_error(VELA_E_INVAL, "request body: bad JSON at line %d column %d: %s", jerr.line, jerr.column,
				  jerr.text);
	if (!json_is_object(j)) {
		json_decref(j);
		return vela_error(VELA_E_INVAL, "request body: expected a JSON object");
	}
	const char *key;
	json_t *v;
	json_object_foreach(j, key, v) {
		size_t i;
		for (i = 0; i < n && strcmp(fields[i].name, key) != 0; i++)
			;
		if (i == n) {
			int r = vela_error(VELA_E_INVAL, "request body: unknown member \"%.64s\"", key);
			json_decref(j);   /* after the message: key lives in j */
			return r;
		}
		struct api_field *f = &fields[i];
		if (json_is_null(v) && f->optional)
			continue;
		bool ok = (f->type == 's' && json_is_string(v)) || (f->type == 'i' && json_is_integer(v)) ||
			  (f->type == 'b' && json_is_boolean(v)) || (f->type == 'a' && json_is_array(v));
		if (!ok) {
			json_decref(j);
			return vela_error(VELA_E_INVAL, "request body: \"%s\" must be a%s", f->name,
					  f->type == 's' ? " string" : f->type == 'i' ? "n integer" : f->type == 'a' ? " list" : " boolean");
		}
		if (f->type == 's') {
			f->s = json_string_value(v);
			if (strlen(f->s) != json_string_length(v)) {
				json_decref(j);
				return vela_error(VELA_E_INVAL, "request body: \"%s\" contains a NUL character", f->name);
			}
		}
		f->i = f->type == 'i' ? json_integer_value(v) : 0;
		f->b = f->type == 'b' && json_is_true(v);
		f->j = f->type == 'a' ? v : NULL;
		f->present = true;
	}
	for (size_t i = 0; i < n; i++)
		if (!fields[i].optional && !fields[i].present) {
			json_decref(j);
			return vela_error(VELA_E_INVAL, "request body: \"%s\" is required", fields[i].name);
		}
	*doc = j;
	return 0;
}

/* ------------------------------------------------------------- callers */

struct caller {
	char user[65];
	bool authenticated;
	bool superuser;              /* root, velad's user or group vela on the local socket */
	char **groups;
	size_t n_groups;
	struct host_access *access;  /* the caller's grants, loaded once per request */
};

static void caller_clear(struct caller *who)
{
	auth_groups_free(who->groups);
	host_access_free(who->access);
	memset(who, 0, sizeof *who);
}

/* Is user (a name) a member of group vela?  The same group list as grants use. */
static bool in_vela_group(const char *user)
{
	size_t n;
	char **groups = auth_user_groups(user, &n);
	bool member = false;
	for (size_t i = 0; i < n && !member; i++)
		member = strcmp(groups[i], "vela") == 0;
	auth_groups_free(groups);
	return member;
}

/* The local socket: the kernel says who is at the other end. */
static int identify_peer(struct api *a, struct MHD_Connection *c, struct caller *who)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
	struct ucred cred;
	socklen_t len = sizeof cred;
	if (!ci || getsockopt(ci->connect_fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return vela_error(VELA_E_PERM, "the caller of the local socket is unknown");
	struct passwd pw, *pwp = NULL;
	char buf[4096];
	if (getpwuid_r(cred.uid, &pw, buf, sizeof buf, &pwp) == 0 && pwp)
		snprintf(who->user, sizeof who->user, "%s", pw.pw_name);
	else
		snprintf(who->user, sizeof who->user, "uid:%u", (unsigned)cred.uid);
	if (!(cred.uid == 0 || cred.uid == geteuid() || (a->have_vela_gid && pwp && in_vela_group(who->user))))
		return vela_error(VELA_E_PERM, "user %s may not use this socket (root or group vela only)", who->user);
	who->superuser = true;
	who->authenticated = true;
	return 0;
}

/* "Authorization: Bearer SECRET" or the session cookie. */
static const char *presented_secret(struct MHD_Connection *c)
{
	const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
	if (h && str_istarts_with(h, "Bearer "))
		return h + 7;
	return MHD_lookup_connection_value(c, MHD_COOKIE_KIND, "vela_session");
}

/* HTTPS: a session or an API token names the user. */
static int identify_token(struct api *a, struct MHD_Connection *c, struct caller *who)
{
	const char *secret = presented_secret(c);
	if (!secret)
		return vela_error(VELA_E_AUTH, "log in first (POST /api/v1/session) or send an API token");
	CLEANUP_FREE char *user = NULL;
	int r;
	if (auth_is_session_token(secret)) {
		r = auth_session_user(a->auth, secret, &user);
	} else {
		CLEANUP_FREE char *digest = auth_digest(secret);
		r = digest ? host_token_check(a->host, digest, &user) : vela_error(VELA_E_SESSION, "bad API token");
	}
	if (r < 0)
		return r;
	snprintf(who->user, sizeof who->user, "%s", user);
	who->authenticated = true;
	return 0;
}

static int load_access(struct api *a, struct caller *who)
{
	if (!who->superuser)
		who->groups = auth_user_groups(who->user, &who->n_groups);
	struct host_principal p = { .user = who->user, .groups = (const char *const *)who->groups,
				    .n_groups = who->n_groups, .superuser = who->superuser };
	return host_access_load(a->host, &p, &who->access);
}

static void client_address(struct MHD_Connection *c, char *buf, size_t size)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	snprintf(buf, size, "local");
	if (!ci || !ci->client_addr)
		return;
	const struct sockaddr *sa = ci->client_addr;
	if (sa->sa_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, buf, (socklen_t)size);
	else if (sa->sa_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, buf, (socklen_t)size);
}

/* Refusals: a VM the caller may not even see does not exist for them. */
static int need_vm(struct api *a, const struct caller *who, int64_t id, enum host_role need)
{
	CLEANUP_FREE char *folder = NULL;
	int r = host_vm_folder(a->host, id, &folder);
	if (r < 0)
		return r;
	enum host_role have = host_access_vm(who->access, id, folder);
	if (have < HOST_ROLE_READONLY)
		return vela_error(VELA_E_NOTFOUND, "no VM with id %lld", (long long)id);
	if (have < need)
		return vela_error(VELA_E_PERM, "%s needs the %s role on VM %lld (has %s)", who->user, host_role_name(need),
				  (long long)id, host_role_name(have));
	return 0;
}

static int need_host(const struct caller *who, enum host_role need)
{
	enum host_role have = host_access_host(who->access);
	if (have < need)
		return vela_error(VELA_E_PERM, "%s needs the %s role on the host (has %s)", who->user, host_role_name(need),
				  host_role_name(have));
	return 0;
}

static int need_folder_admin(const struct caller *who, const char *folder, const char *what)
{
	if (host_access_folder(who->access, folder ? folder : "/") >= HOST_ROLE_ADMIN)
		return 0;
	return vela_error(VELA_E_PERM, "%s needs the admin role on folder %s to %s VMs there", who->user,
			  folder ? folder : "/", what);
}

/* --------------------------------------------------------------- routes */

static bool parse_id(const char *s, size_t n, int64_t *out)
{
	if (n == 0 || n > 18)
		return false;
	int64_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (s[i] - '0');
	}
	*out = v;
	return v > 0;
}

static int64_t query_i64(struct MHD_Connection *c, const char *key, int64_t dflt, int *bad)
{
	const char *v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, key);
	if (!v)
		return dflt;
	uint64_t u;
	if (parse_u64(v, INT64_MAX, &u) < 0) {
		vela_error(VELA_E_INVAL, "query parameter %s: \"%.32s\" is not a number", key, v);
		*bad = -VELA_E_INVAL;
		return dflt;
	}
	return (int64_t)u;
}

/* Reply with value under key, or the error r. */
static enum MHD_Result reply(struct MHD_Connection *c, int r, const char *key, json_t *value)
{
	if (r < 0) {
		json_decref(value);
		return send_error(c, r);
	}
	return send_ok(c, key, value);
}

static enum MHD_Result route_events(struct api *a, struct MHD_Connection *c, const struct caller *who)
{
	int bad = 0;
	struct host_event_query q = {
		.vm_id = query_i64(c, "vm", 0, &bad),
		.after_id = query_i64(c, "after", 0, &bad),
		.since_ms = query_i64(c, "since", 0, &bad),
		.severity = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "severity"),
	};
	int64_t limit = query_i64(c, "limit", 100, &bad);
	if (bad)
		return send_error(c, bad);
	if (limit < 1 || limit > 10000)
		return send_error(c, vela_error(VELA_E_RANGE, "query parameter limit: 1 to 10000"));
	q.limit = (unsigned)limit;
	json_t *ev = NULL;
	int r = host_event_list(a->host, &q, who->access, &ev);
	return reply(c, r, "events", ev);
}

/* GET /events/stream: Server-Sent Events, one "data:" line (an event's
 * JSON) per event the caller may read, as they happen. */
struct event_stream {
	struct api *api;
	struct host_access *access;   /* the caller's grants, for the whole stream */
	struct host_event_query q;
	char *severity;
	struct strbuf pending;        /* text not yet taken by MHD */
	size_t sent;
	int64_t last_beat;
};

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	(void)pos;
	struct event_stream *s = cls;
	while (s->sent == s->pending.len) {
		strbuf_reset(&s->pending);
		s->sent = 0;
		if (atomic_load(&s->api->stopping))
			return MHD_CONTENT_READER_END_OF_STREAM;
		if (host_event_wait(s->api->host, s->q.after_id, 1000)) {
			/* Everything up to `upto` is read now (events the caller may
			 * not see included, or the wait would never sleep again);
			 * visible ones newer than it come in the list too. */
			int64_t upto = host_event_last(s->api->host);
			json_t *ev = NULL;
			if (host_event_list(s->api->host, &s->q, s->access, &ev) < 0)
				return MHD_CONTENT_READER_END_WITH_ERROR;
			size_t i;
			json_t *e;
			json_array_foreach(ev, i, e) {
				int64_t id = json_integer_value(json_object_get(e, "id"));
				char *text = json_dumps(e, JSON_COMPACT);
				strbuf_printf(&s->pending, "id: %lld\ndata: %s\n\n", (long long)id, text);
				free(text);
				if (id > upto)
					upto = id;
			}
			json_decref(ev);
			s->q.after_id = upto;
		}
		if (s->pending.len == 0 && time_mono_ms() - s->last_beat > 15000) {
			strbuf_puts(&s->pending, ": keep-alive\n\n");   /* proxies close silent streams */
			s->last_beat = time_mono_ms();
		}
	}
	size_t n = s->pending.len - s->sent < max ? s->pending.len - s->sent : max;
	memcpy(buf, s->pending.data + s->sent, n);
	s->sent += n;
	return (ssize_t)n;
}

static void stream_free(void *cls)
{
	struct event_stream *s = cls;
	host_access_free(s->access);
	strbuf_free(&s->pending);
	free(s->severity);
	free(s);
}

static enum MHD_Result route_event_stream(struct api *a, struct MHD_Connection *c, const struct caller *who)
{
	int bad = 0;
	struct event_stream *s = xcalloc(1, sizeof *s);
	s->api = a;
	s->q.vm_id = query_i64(c, "vm", 0, &bad);
	s->q.after_id = query_i64(c, "after", host_event_last(a->host), &bad);
	s->q.limit = 1000;
	const char *sev = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "severity");
	enum host_severity sv;
	if (!bad && sev && host_severity_parse(sev, &sv) < 0)
		bad = -VELA_E_INVAL;
	struct host_principal p = { .user = who->user, .groups = (const char *const *)who->groups,
				    .n_groups = who->n_groups, .superuser = who->superuser };
	if (!bad)
		bad = host_access_load(a->host, &p, &s->access);
	if (bad) {
		stream_free(s);
		return send_error(c, bad);
	}
	s->severity = sev ? xstrdup(sev) : NULL;
	s->q.severity = s->severity;
	s->last_beat = time_mono_ms();
	struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, s, stream_free);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	enum MHD_Result mr = MHD_queue_response(c, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return mr;
}

/* ---------------------------------------------------------------- tasks */

/* How long a request with wait (the default) waits for its task: beyond,
 * it answers 202 with the task, which goes on. */
#define TASK_WAIT_MS (15 * 60 * 1000)

/* What a task thread needs of the request (the request is gone when the
 * caller did not wait). */
struct job {
	char user[65];
	int64_t vm;
	char op[16], mode[16];
	bool files;
	struct host_vm_spec spec;
	json_t *doc;           /* owns the strings spec points into */
};

static void job_free(void *p)
{
	struct job *j = p;
	json_decref(j->doc);
	free(j);
}

static struct job *job_new(const struct caller *who, int64_t vm)
{
	struct job *j = xcalloc(1, sizeof *j);
	snprintf(j->user, sizeof j->user, "%s", who->user);
	j->vm = vm;
	return j;
}

static int power_job(struct host *h, struct host_task *t, void *arg, json_t **result)
{
	struct job *j = arg;
	return host_vm_power(h, j->user, j->vm, j->op, j->mode[0] ? j->mode : NULL, t, result);
}

static int create_job(struct host *h, struct host_task *t, void *arg, json_t **result)
{
	struct job *j = arg;
	return host_vm_create(h, j->user, &j->spec, t, result);
}

static int delete_job(struct host *h, struct host_task *t, void *arg, json_t **result)
{
	struct job *j = arg;
	return host_vm_delete(h, j->user, j->vm, j->files, t, result);
}

static int snapshot_job(struct host *h, struct host_task *t, void *arg, json_t **result)
{
	(void)t;
	struct job *j = arg;
	const char *name = json_string_value(json_object_get(j->doc, "name"));
	const char *desc = json_string_value(json_object_get(j->doc, "description"));
	return host_vm_snapshot(h, j->user, j->vm, j->op, name, json_is_true(json_object_get(j->doc, "memory")),
				json_is_true(json_object_get(j->doc, "quiesce")), desc, result);
}

static int backup_job(struct host *h, struct host_task *t, void *arg, json_t **result)
{
	struct job *j = arg;
	json_t *d = j->doc;
	struct host_backup_spec b = {
		.datastore = json_string_value(json_object_get(d, "datastore")),
		.folder = json_string_value(json_object_get(d, "folder")),
		.quiesce = json_is_true(json_object_get(d, "quiesce")),
		.compress = json_is_true(json_object_get(d, "compress")),
		.incremental = json_is_true(json_object_get(d, "incremental")),
		.keep = (unsigned)json_integer_value(json_object_get(d, "keep")),
	};
	return host_vm_backup(h, j->user, j->vm, &b, t, result);
}

static int autostop_job(struct host *h, struct host_task *t, void *arg, json_t **result)
{
	struct job *j = arg;
	int r = host_autostop_run(h, j->user, t);
	if (r == 0)
		*result = json_object();
	return r;
}

/*
 * Run a job as a task.  With ?wait=0 the answer is 202 {task} at once;
 * otherwise the request waits for the end and answers as the operation
 * does (its result under key, or its error), with the task's id.
 */
static enum MHD_Result run_task(struct api *a, struct MHD_Connection *c, const char *type, const char *target,
				bool cancelable, host_task_fn fn, struct job *j, const char *key)
{
	const char *w = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "wait");
	bool wait = !w || strcmp(w, "0") != 0;
	struct host_task *t = NULL;
	int r = host_task_begin(a->host, j->user, j->vm, type, target, cancelable, &t);
	if (r < 0) {
		job_free(j);
		return send_error(c, r);
	}
	int64_t id = host_task_id(t);
	if ((r = host_task_spawn(a->host, t, fn, j, job_free)) < 0)
		return send_error(c, r);
	json_t *task = NULL;
	r = wait ? host_task_wait(a->host, id, TASK_WAIT_MS, &task) : host_task_get(a->host, id, &task);
	if (r < 0)
		return send_error(c, r);
	const char *state = json_string_value(json_object_get(task, "state"));
	if (!wait)   /* 202 whatever it did meanwhile: the caller asked for the task */
		return send_json(c, MHD_HTTP_ACCEPTED, json_pack("{s:b, s:o}", "ok", 1, "task", task));
	if (strcmp(state, "success") == 0) {
		json_t *answer = json_pack("{s:b, s:O, s:I}", "ok", 1, key, json_object_get(task, "result"), "task",
					   (json_int_t)id);
		json_decref(task);
		return send_json(c, MHD_HTTP_OK, answer);
	}
	if (strcmp(state, "running") == 0)
		return send_json(c, MHD_HTTP_ACCEPTED, json_pack("{s:b, s:o}", "ok", 1, "task", task));
	json_t *err = json_object_get(task, "error");
	r = vela_error((int)json_integer_value(json_object_get(err, "code")), "%s",
		       json_string_value(json_object_get(err, "message")));
	json_decref(task);
	return send_error(c, r ? r : -VELA_E_INTERNAL);
}

/* Tasks of a VM need its role; host tasks the host's; one's own are one's own. */
static int need_task(struct api *a, const struct caller *who, int64_t id, enum host_role need, json_t **task)
{
	int r = host_task_get(a->host, id, task);
	if (r < 0)
		return r;
	const char *owner = json_string_value(json_object_get(*task, "user"));
	int64_t vm = json_integer_value(json_object_get(*task, "vm"));
	if (owner && strcmp(owner, who->user) == 0)
		return 0;
	if (vm)
		r = need_vm(a, who, vm, need);
	else if (host_access_host(who->access) < HOST_ROLE_READONLY)
		r = vela_error(VELA_E_NOTFOUND, "no task %lld", (long long)id);
	else
		r = need_host(who, need);
	if (r == -VELA_E_NOTFOUND)
		r = vela_error(VELA_E_NOTFOUND, "no task %lld", (long long)id);
	if (r < 0) {
		json_decref(*task);
		*task = NULL;
	}
	return r;
}

static enum MHD_Result route_tasks(struct api *a, struct MHD_Connection *c, const struct caller *who,
				   const char *method, const char *rest)
{
	json_t *out = NULL;
	int r = 0, bad = 0;
	if (!*rest && strcmp(method, "GET") == 0) {
		struct host_task_query q = {
			.vm = query_i64(c, "vm", 0, &bad),
			.after_id = query_i64(c, "after", 0, &bad),
			.limit = (unsigned)query_i64(c, "limit", 100, &bad),
			.state = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "state"),
		};
		if (bad)
			return send_error(c, bad);
		if (q.limit > 10000)
			return send_error(c, vela_error(VELA_E_RANGE, "limit: at most 10000"));
		r = host_task_list(a->host, &q, who->access, who->user, &out);
		return reply(c, r, "tasks", out);
	}
	const char *slash = strchr(rest, '/');
	size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
	int64_t id;
	if (!parse_id(rest, n, &id))
		return send_error(c, vela_error(VELA_E_NOTFOUND, "no such task: \"%.40s\"", rest));
	if (!slash && strcmp(method, "GET") == 0) {
		/* ?wait=SECONDS: answer when the task has ended (or then). */
		int64_t wait_s = query_i64(c, "wait", 0, &bad);
		if (bad)
			return send_error(c, bad);
		if (wait_s > 600)
			return send_error(c, vela_error(VELA_E_RANGE, "wait: at most 600 seconds"));
		if ((r = need_task(a, who, id, HOST_ROLE_READONLY, &out)) == 0 && wait_s > 0) {
			json_decref(out);
			out = NULL;
			r = host_task_wait(a->host, id, (int)wait_s * 1000, &out);
		}
		return reply(c, r, "task", out);
	}
	if (slash && strcmp(slash, "/cancel") == 0 && strcmp(method, "POST") == 0) {
		if ((r = need_task(a, who, id, HOST_ROLE_OPERATOR, &out)) == 0) {
			json_int_t vm = json_integer_value(json_object_get(out, "vm"));
			const char *type = json_string_value(json_object_get(out, "type"));
			/* Host tasks (autostart, autostop, uploads) are the
			 * administrator's to stop, unless one's own. */
			if (!vm && strcmp(json_string_value(json_object_get(out, "user")), who->user) != 0)
				r = need_host(who, HOST_ROLE_ADMIN);
			if (r == 0)
				r = host_task_cancel(a->host, who->user, id);
			if (r < 0 && r != -VELA_E_BADSTATE && r != -VELA_E_NOTSUP)
				vela_error_context(r, "cancel %s", type);
			json_decref(out);
			out = NULL;
		}
		if (r == 0)
			r = host_task_get(a->host, id, &out);
		return reply(c, r, "task", out);
	}
	return send_error(c, vela_error(VELA_E_NOTFOUND, "no such resource: tasks/%.40s", rest));
}

/* Questions of the VMs the caller may see: [{vm, name, question}]. */
static enum MHD_Result route_questions(struct api *a, struct MHD_Connection *c, const struct caller *who)
{
	json_t *vms = NULL, *out = json_array();
	int r = host_vm_list(a->host, &vms);
	size_t i;
	json_t *vm;
	json_array_foreach(vms, i, vm) {
		if (strcmp(json_string_value(json_object_get(vm, "state")), "stuck") != 0)
			continue;
		int64_t id = json_integer_value(json_object_get(vm, "id"));
		if (host_access_vm(who->access, id, json_string_value(json_object_get(vm, "folder"))) < HOST_ROLE_READONLY)
			continue;
		json_t *full = NULL;
		if (host_vm_get(a->host, id, &full) < 0)
			continue;   /* unregistered meanwhile */
		json_t *q = json_object_get(json_object_get(full, "status"), "question");
		if (q)
			json_array_append_new(out, json_pack("{s:I, s:O, s:O}", "vm", (json_int_t)id, "name",
							     json_object_get(vm, "name"), "question", q));
		json_decref(full);
	}
	json_decref(vms);
	return reply(c, r, "questions", out);
}

/* A request body that is one JSON object of at most max_body bytes. */
static int decode_object(const struct request *rq, json_t **out)
{
	json_error_t jerr;
	json_t *doc = rq->body.len ? json_loadb(rq->body.data, rq->body.len, JSON_REJECT_DUPLICATES, &jerr) : NULL;
	if (!json_is_object(doc)) {
		json_decref(doc);
		return vela_error(VELA_E_INVAL, "request body: a JSON object is needed%s%s", rq->body.len ? ": " : "",
				  rq->body.len ? jerr.text : "");
	}
	*out = doc;
	return 0;
}

/* ------------------------------------------------------------- consoles */

/* Whether a header holds token in its comma-separated list (any case). */
static bool header_has(struct MHD_Connection *c, const char *name, const char *token)
{
	const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
	size_t n = strlen(token);
	while (v && *v) {
		v += strspn(v, " \t,");
		size_t len = strcspn(v, ",");
		size_t end = len;
		while (end && (v[end - 1] == ' ' || v[end - 1] == '\t'))
			end--;
		if (end == n && strncasecmp(v, token, n) == 0)
			return true;
		v += len;
	}
	return false;
}

/*
 * A browser sends its cookie with a WebSocket handshake started by any
 * page: only the UI's own pages may open consoles (an Origin, when given,
 * must name the host the request went to).
 */
static int check_origin(struct MHD_Connection *c)
{
	const char *origin = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
	const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
	if (!origin)
		return 0;   /* not a browser: the credentials alone decide */
	const char *p = strstr(origin, "://");
	if (p && host && strcasecmp(p + 3, host) == 0)
		return 0;
	return vela_error(VELA_E_PERM, "console: a page of %.100s may not open consoles of this host", origin);
}

/* GET vms/ID/console/serial|vnc as a WebSocket (operator). */
static enum MHD_Result route_console(struct api *a, struct MHD_Connection *c, const struct caller *who, int64_t id,
				     const char *kind)
{
	int r = need_vm(a, who, id, HOST_ROLE_OPERATOR);
	if (r == 0 && strcmp(kind, "serial") != 0 && strcmp(kind, "vnc") != 0)
		r = vela_error(VELA_E_NOTFOUND, "no console \"%.20s\" (serial, vnc)", kind);
	if (r == 0 && (!header_has(c, MHD_HTTP_HEADER_UPGRADE, "websocket") ||
		       !header_has(c, MHD_HTTP_HEADER_CONNECTION, "upgrade")))
		r = vela_error(VELA_E_INVAL, "console: a WebSocket handshake is needed (Upgrade: websocket)");
	const char *version = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Sec-WebSocket-Version");
	if (r == 0 && (!version || strcmp(version, "13") != 0))
		r = vela_error(VELA_E_INVAL, "console: WebSocket version 13 is needed");
	char accept[WS_ACCEPT_LEN];
	if (r == 0)
		r = ws_accept_key(MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Sec-WebSocket-Key"), accept);
	if (r == -VELA_E_PROTOCOL)
		r = vela_error(VELA_E_INVAL, "%s", vela_errmsg());
	if (r == 0)
		r = check_origin(c);
	CLEANUP_FREE char *config = NULL, *run = NULL;
	json_t *vm = NULL;
	if (r == 0 && (r = host_vm_get(a->host, id, &vm)) == 0) {
		config = xstrdup(json_string_value(json_object_get(vm, "config")));
		const char *state = json_string_value(json_object_get(vm, "state"));
		if (strcmp(state, "off") == 0 || strcmp(state, "unknown") == 0)
			r = vela_error(VELA_E_BADSTATE, "VM %lld is %s: no console", (long long)id, state);
	}
	json_decref(vm);
	if (r == 0)
		r = vmxsup_run_dir(config, &run);
	int fd = -1;
	if (r == 0) {
		CLEANUP_FREE char *sock = xasprintf("%s/%s.sock", run, kind[0] == 's' ? "console" : "vnc");
		fd = unix_connect(sock);
		if (fd < 0)
			r = vela_error(VELA_E_BADSTATE, "VM %lld: its %s console is not available", (long long)id, kind);
	}
	if (r < 0)
		return send_error(c, r);
	/* noVNC asks for the "binary" subprotocol; the bytes are the same. */
	const char *proto = header_has(c, "Sec-WebSocket-Protocol", "binary") ? "binary" : NULL;
	host_event(a->host, HOST_AUDIT, id, who->user, "vm.console", "%s console opened", kind);
	return console_upgrade(a->consoles, c, fd, accept, proto);
}

static enum MHD_Result route_vm(struct api *a, struct MHD_Connection *c, const struct caller *who, const char *method,
				int64_t id, const char *action, struct request *rq)
{
	json_t *out = NULL, *doc = NULL;
	int r;
	if (!*action) {
		if (strcmp(method, "GET") == 0) {
			if ((r = need_vm(a, who, id, HOST_ROLE_READONLY)) == 0)
				r = host_vm_get(a->host, id, &out);
			return reply(c, r, "vm", out);
		}
		if (strcmp(method, "DELETE") == 0) {
			/* ?files=1 deletes the VM's files too (a task); without,
			 * the VM is only forgotten. */
			const char *files = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "files");
			if ((r = need_vm(a, who, id, HOST_ROLE_ADMIN)) < 0)
				return send_error(c, r);
			if (!files || strcmp(files, "0") == 0) {
				r = host_vm_unregister(a->host, who->user, id);
				return reply(c, r, NULL, NULL);
			}
			struct job *j = job_new(who, id);
			j->files = true;
			return run_task(a, c, "vm.delete", "with files", false, delete_job, j, "deleted");
		}
		if (strcmp(method, "PATCH") == 0) {
			if ((r = decode_object(rq, &doc)) == 0 && (r = need_vm(a, who, id, HOST_ROLE_ADMIN)) == 0) {
				const char *folder = json_string_value(json_object_get(doc, "folder"));
				if (folder)
					r = need_folder_admin(who, folder, "move");
			}
			if (r == 0)
				r = host_vm_reconfigure(a->host, who->user, id, doc, &out);
			json_decref(doc);
			return reply(c, r, "vm", out);
		}
	} else if (strcmp(action, "power") == 0 && strcmp(method, "POST") == 0) {
		static const char *const ops[] = { "start", "stop", "reset", "pause", "unpause", "suspend", "resume" };
		struct api_field f[] = { { .name = "op", .type = 's' }, { .name = "mode", .type = 's', .optional = true } };
		r = api_decode_body(rq->body.data, rq->body.len, f, ARRAY_SIZE(f), &doc);
		size_t k = 0;
		while (r == 0 && k < ARRAY_SIZE(ops) && strcmp(f[0].s, ops[k]) != 0)
			k++;
		if (r == 0 && k == ARRAY_SIZE(ops))
			r = vela_error(VELA_E_INVAL, "unknown power operation \"%.20s\" (start, stop, reset, pause, unpause)",
				       f[0].s);
		if (r == 0 && f[1].s && strcmp(f[1].s, "hard") != 0 && strcmp(f[1].s, "soft") != 0 &&
		    strcmp(f[1].s, "trysoft") != 0)
			r = vela_error(VELA_E_INVAL, "mode: hard, soft or trysoft");
		if (r == 0)
			r = need_vm(a, who, id, HOST_ROLE_OPERATOR);
		if (r < 0) {
			json_decref(doc);
			return send_error(c, r);
		}
		struct job *j = job_new(who, id);
		snprintf(j->op, sizeof j->op, "%s", ops[k]);
		snprintf(j->mode, sizeof j->mode, "%s", f[1].s ? f[1].s : "");
		json_decref(doc);
		CLEANUP_FREE char *type = xasprintf("vm.power.%s", j->op);
		/* Cancelable while it waits behind another operation on the VM. */
		return run_task(a, c, type, j->mode, true, power_job, j, "status");
	} else if (strcmp(action, "autostart") == 0 && strcmp(method, "PUT") == 0) {
		struct api_field f[] = { { .name = "enabled", .type = 'b' },
					 { .name = "order", .type = 'i', .optional = true },
					 { .name = "delay", .type = 'i', .optional = true },
					 { .name = "stop", .type = 's', .optional = true } };
		r = api_decode_body(rq->body.data, rq->body.len, f, ARRAY_SIZE(f), &doc);
		if (r == 0)
			r = need_vm(a, who, id, HOST_ROLE_ADMIN);
		if (r == 0 && (f[1].i < 0 || f[1].i > 9999 || f[2].i < 0 || f[2].i > 3600))
			r = vela_error(VELA_E_RANGE, "autostart: order 0-9999, delay 0-3600 seconds");
		if (r == 0) {
			struct host_autostart as = { .enabled = f[0].b, .order = (int)f[1].i, .delay_s = (int)f[2].i,
						     .stop = f[3].s };
			r = host_autostart_set(a->host, who->user, id, &as, &out);
		}
		json_decref(doc);
		return reply(c, r, "autostart", out);
	} else if (strcmp(action, "snapshots") == 0 && strcmp(method, "GET") == 0) {
		if ((r = need_vm(a, who, id, HOST_ROLE_READONLY)) == 0)
			r = host_vm_snapshots(a->host, id, &out);
		return reply(c, r, "snapshots", out);
	} else if ((strcmp(action, "snapshots") == 0 || strcmp(action, "snapshots/revert") == 0 ||
		    strcmp(action, "snapshots/delete") == 0) && strcmp(method, "POST") == 0) {
		/* Taking one is an operator's; going back or dropping one
		 * changes what the disks hold: an administrator's. */
		const char *op = strcmp(action, "snapshots") == 0 ? "create" : action + strlen("snapshots/");
		struct api_field f[] = { { .name = "name", .type = 's' }, { .name = "description", .type = 's', .optional = true },
					 { .name = "memory", .type = 'b', .optional = true },
					 { .name = "quiesce", .type = 'b', .optional = true } };
		r = api_decode_body(rq->body.data, rq->body.len, f, ARRAY_SIZE(f), &doc);
		if (r == 0 && strcmp(op, "create") != 0 && (f[2].present || f[3].present))
			r = vela_error(VELA_E_INVAL, "snapshot %s: memory and quiesce are for taking a snapshot", op);
		if (r == 0)
			r = need_vm(a, who, id, strcmp(op, "create") == 0 ? HOST_ROLE_OPERATOR : HOST_ROLE_ADMIN);
		if (r < 0) {
			json_decref(doc);
			return send_error(c, r);
		}
		struct job *j = job_new(who, id);
		snprintf(j->op, sizeof j->op, "%s", op);
		j->doc = doc;
		CLEANUP_FREE char *type = xasprintf("vm.snapshot.%s", op);
		return run_task(a, c, type, f[0].s, false, snapshot_job, j, "snapshot");
	} else if (strcmp(action, "guest") == 0 && strcmp(method, "GET") == 0) {
		if ((r = need_vm(a, who, id, HOST_ROLE_READONLY)) == 0)
			r = host_vm_guest(a->host, who->user, id, false, NULL, NULL, &out);
		return reply(c, r, "guest", out);
	} else if (strcmp(action, "guestinfo") == 0 && strcmp(method, "GET") == 0) {
		/* guestinfo carries what scripts in the guest read: the VM's admin. */
		const char *key = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "key");
		if ((r = need_vm(a, who, id, HOST_ROLE_ADMIN)) == 0)
			r = host_vm_guest(a->host, who->user, id, true, key, NULL, &out);
		return reply(c, r, "guestinfo", out);
	} else if (strcmp(action, "guestinfo") == 0 && strcmp(method, "PUT") == 0) {
		struct api_field f[] = { { .name = "key", .type = 's' }, { .name = "value", .type = 's', .optional = true } };
		r = api_decode_body(rq->body.data, rq->body.len, f, ARRAY_SIZE(f), &doc);
		if (r == 0 && (r = need_vm(a, who, id, HOST_ROLE_ADMIN)) == 0) {
			json_t *v = f[1].present ? json_string(f[1].s) : json_null();
			r = host_vm_guest(a->host, who->user, id, true, f[0].s, v, &out);
			json_decref(v);
		}
		json_decref(doc);
		return reply(c, r, "guestinfo", out);
	} else if (strcmp(action, "backup") == 0 && strcmp(method, "POST") == 0) {
		/* A backup reads every byte of the disks: an administrator's. */
		struct api_field f[] = { { .name = "datastore", .type = 's' }, { .name = "folder", .type = 's', .optional = true },
					 { .name = "quiesce", .type = 'b', .optional = true },
					 { .name = "compress", .type = 'b', .optional = true },
					 { .name = "keep", .type = 'i', .optional = true },
					 { .name = "incremental", .type = 'b', .optional = true } };
		r = api_decode_body(rq->body.data, rq->body.len, f, ARRAY_SIZE(f), &doc);
		if (r == 0 && f[4].present && (f[4].i < 1 || f[4].i > 1000))
			r = vela_error(VELA_E_RANGE, "backup: keep 1 to 1000 backups");
		if (r == 0)
			r = need_vm(a, who, id, HOST_ROLE_ADMIN);
		if (r < 0) {
			json_decref(doc);
			return send_error(c, r);
		}
		struct job *j = job_new(who, id);
		j->doc = doc;
		return run_task(a, c, "vm.backup", f[0].s, false, backup_job, j, "backup");
	} else if (strcmp(action, "backups") == 0 && strcmp(method, "GET") == 0) {
		const char *ds = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "datastore");
		const char *folder = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "folder");
		if ((r = need_vm(a, who, id, HOST_ROLE_READONLY)) == 0)
			r = host_vm_backup_list(a->host, id, ds, folder, &out);
		return reply(c, r, "backups", out);
	} else if (strcmp(action, "backup-schedule") == 0 && strcmp(method, "GET") == 0) {
		if ((r = need_vm(a, who, id, HOST_ROLE_READONLY)) == 0)
			r = host_backup_schedule_list(a->host, id, &out);
		return reply(c, r, "schedules", out);
	} else if (strcmp(action, "backup-schedule") == 0 && strcmp(method, "PUT") == 0) {
		struct api_field f[] = { { .name = "datastore", .type = 's' }, { .name = "folder", .type = 's', .optional = true },
					 { .name = "every", .type = 'i' }, { .name = "keep", .type = 'i' },
					 { .name = "quiesce", .type = 'b', .optional = true },
					 { .name = "compress", .type = 'b', .optional = true },
					 { .name = "now", .type = 'b', .optional = true },
					 { .name = "incremental", .type = 'b', .optional = true } };
		r = api_decode_body(rq->body.data, rq->body.len, f, ARRAY_SIZE(f), &doc);
		if (r == 0 && (r = need_vm(a, who, id, HOST_ROLE_ADMIN)) == 0) {
			struct host_backup_spec b = { .datastore = f[0].s, .folder = f[1].s, .every_s = f[2].i,
						      .keep = f[3].i < 0 || f[3].i > 100000 ? 0 : (unsigned)f[3].i,
						      .quiesce = f[4].b, .compress = f[5].b, .now = f[6].b, .incremental = f[7].b };
			r = host_backup_schedule_set(a->host, who->user, id, &b, &out);
		}
		json_decref(doc);
		return reply(c, r, "schedules", out);
	} else if (strcmp(action, "backup-schedule") == 0 && strcmp(method, "DELETE") == 0) {
		if ((r = need_vm(a, who, id, HOST_ROLE_ADMIN)) == 0)
			r = host_backup_schedule_remove(a->host, who->user, id);
		return reply(c, r, NULL, NULL);
	} else if (strcmp(action, "screenshot") == 0 && strcmp(method, "GET") == 0) {
		/* What the screen shows is a console's worth: operator. */
		char *png = NULL;
		size_t len = 0;
		if ((r = need_vm(a, who, id, HOST_ROLE_OPERATOR)) == 0)
			r = host_vm_screenshot(a->host, id, &png, &len);
		if (r < 0)
			return send_error(c, r);
		struct MHD_Response *resp = MHD_create_response_from_buffer(len, png, MHD_RESPMEM_MUST_FREE);
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "image/png");
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
		enum MHD_Result mr = MHD_queue_response(c, MHD_HTTP_OK, resp);
		MHD_destroy_response(resp);
		return mr;
	} else if (strcmp(action, "log") == 0 && strcmp(method, "GET") == 0) {
		if ((r = need_vm(a, who, id, HOST_ROLE_READONLY)) == 0)
			r = host_vm_log(a->host, id, 256 * 1024, &out);
		return reply(c, r, "log", out);
	} else if (strcmp(action, "stats") == 0 && strcmp(method, "GET") == 0) {
		int bad = 0;
		int64_t since = query_i64(c, "since", 0, &bad);
		if ((r = bad) == 0 && (r = need_vm(a, who, id, HOST_ROLE_READONLY)) == 0)
			r = host_stats(a->host, id, since, &out);
		return reply(c, r, "stats", out);
	} else if (str_starts_with(action, "console/") && strcmp(method, "GET") == 0) {
		return route_console(a, c, who, id, action + strlen("console/"));
	} else if (strcmp(action, "answer") == 0 && strcmp(method, "POST") == 0) {
		struct api_field f[] = { { .name = "choice", .type = 's' } };
		r = api_decode_body(rq->body.data, rq->body.len, f, ARRAY_SIZE(f), &doc);
		if (r == 0)
			r = need_vm(a, who, id, HOST_ROLE_OPERATOR);
		if (r == 0)
			r = host_vm_answer(a->host, who->user, id, f[0].s, &out);
		json_decref(doc);
		return reply(c, r, "status", out);
	} else {
		if ((r = need_vm(a, who, id, HOST_ROLE_READONLY)) < 0)
			return send_error(c, r);
		return send_error(c, vela_error(VELA_E_NOTFOUND, "no such resource: VM %lld/%.40s", (long long)id, action));
	}
	return send_error(c, vela_error(VELA_E_NOTSUP, "%s is not allowed here", method));
}

static enum MHD_Result route_list(struct api *a, struct MHD_Connection *c, const struct caller *who)
{
	bool everything = host_access_host(who->access) >= HOST_ROLE_ADMIN;
	uint64_t gen = host_generation(a->host);
	if (everything) {
		pthread_mutex_lock(&a->list_lock);
		char *copy = a->list_text && a->list_gen == gen ? xstrdup(a->list_text) : NULL;
		pthread_mutex_unlock(&a->list_lock);
		if (copy)
			return send_json_text(c, MHD_HTTP_OK, copy, NULL);
	}
	struct strbuf text = { 0 };
	int r = host_vm_list_text(a->host, everything ? NULL : who->access, &text);
	if (r < 0) {
		strbuf_free(&text);
		return send_error(c, r);
	}
	if (everything) {
		/* Made from the generation read before the query: if something
		 * changed meanwhile, the next request sees a newer one. */
		pthread_mutex_lock(&a->list_lock);
		free(a->list_text);
		a->list_text = xstrdup(text.data);
		a->list_gen = gen;
		pthread_mutex_unlock(&a->list_lock);
	}
	return send_json_text(c, MHD_HTTP_OK, strbuf_steal(&text), NULL);
}


static enum MHD_Result route_create(struct api *a, struct MHD_Connection *c, const struct caller *who,
				    struct request *rq)
{
	struct api_field f[] = { { .name = "name", .type = 's' },
				 { .name = "datastore", .type = 's', .optional = true },
				 { .name = "folder", .type = 's', .optional = true },
				 { .name = "memsize", .type = 'i', .optional = true },
				 { .name = "vcpus", .type = 'i', .optional = true },
				 { .name = "guestOS", .type = 's', .optional = true },
				 { .name = "disks", .type = 'a', .optional = true },
				 { .name = "cdrom", .type = 's', .optional = true },
				 { .name = "nic", .type = 'b', .optional = true } };
	json_t *doc = NULL;
	int r = api_decode_body(rq->body.data, rq->body.len, f, ARRAY_SIZE(f), &doc);
	if (r == 0)
		r = need_folder_admin(who, f[2].s, "create");
	if (r == 0 && ((f[3].present && (f[3].i < 16 || f[3].i > 1048576)) || (f[4].present && (f[4].i < 1 || f[4].i > 64))))
		r = vela_error(VELA_E_RANGE, "create: memsize 16 MiB to 1 TiB, vcpus 1 to 64");
	if (r < 0) {
		json_decref(doc);
		return send_error(c, r);
	}
	struct job *j = job_new(who, 0);
	j->spec = (struct host_vm_spec){ .name = f[0].s, .datastore = f[1].s, .folder = f[2].s,
					 .memsize_mb = f[3].present ? (int)f[3].i : 512, .vcpus = f[4].present ? (int)f[4].i : 1,
					 .guest_os = f[5].s, .disks = f[6].j, .cdrom = f[7].s, .nic = f[8].present ? f[8].b : true };
	j->doc = doc;   /* the spec's strings live in it */
	return run_task(a, c, "vm.create", f[0].s, true, create_job, j, "vm");
}

static enum MHD_Result route_register(struct api *a, struct MHD_Connection *c, const struct caller *who,
				      struct request *rq)
{
	struct api_field f[] = { { .name = "config", .type = 's' },
				 { .name = "name", .type = 's', .optional = true },
				 { .name = "folder", .type = 's', .optional = true } };
	json_t *doc = NULL, *out = NULL;
	int r = api_decode_body(rq->body.data, rq->body.len, f, ARRAY_SIZE(f), &doc);
	if (r == 0)
		r = need_folder_admin(who, f[2].s, "register");
	if (r == 0)
		r = host_vm_register(a->host, who->user, f[0].s, f[1].s, f[2].s, &out);
	json_decref(doc);
	return reply(c, r, "vm", out);
}

static enum MHD_Result route_permissions(struct api *a, struct MHD_Connection *c, const struct caller *who,
					 const char *method, const char *rest, struct request *rq)
{
	json_t *out = NULL, *doc = NULL;
	int r = need_host(who, HOST_ROLE_ADMIN);
	if (r < 0)
		return send_error(c, r);
	int64_t id;
	if (!*rest && strcmp(method, "GET") == 0) {
		r = host_grant_list(a->host, &out);
		return reply(c, r, "permissions", out);
	}
	if (!*rest && strcmp(method, "POST") == 0) {
		struct api_field f[] = { { .name = "principal", .type = 's' },
					 { .name = "scope", .type = 's' },
					 { .name = "role", .type = 's' } };
		r = api_decode_body(rq->body.data, rq->body.len, f, ARRAY_SIZE(f), &doc);
		if (r == 0)
			r = host_grant(a->host, who->user, f[0].s, f[1].s, f[2].s, &out);
		json_decref(doc);
		return reply(c, r, "permission", out);
	}
	if (parse_id(rest, strlen(rest), &id) && strcmp(method, "DELETE") == 0)
		return reply(c, host_revoke(a->host, who->user, id), NULL, NULL);
	return send_error(c, vela_error(VELA_E_NOTFOUND, "no such resource: permissions/%.40s (%s)", rest, method));
}

static enum MHD_Result route_tokens(struct api *a, struct MHD_Connection *c, const struct caller *who,
				    const char *method, const char *rest, struct request *rq)
{
	json_t *out = NULL, *doc = NULL;
	int r;
	int64_t id;
	/* Everybody manages their own tokens; host admins see everyone's. */
	const char *owner = need_host(who, HOST_ROLE_ADMIN) == 0 ? NULL : who->user;
	vela_error_clear();
	if (!*rest && strcmp(method, "GET") == 0) {
		r = host_token_list(a->host, owner, &out);
		return reply(c, r, "tokens", out);
	}
	if (!*rest && strcmp(method, "POST") == 0) {
		struct api_field f[] = { { .name = "name", .type = 's' }, { .name = "expires", .type = 'i', .optional = true } };
		r = api_decode_body(rq->body.data, rq->body.len, f, ARRAY_SIZE(f), &doc);
		CLEANUP_FREE char *secret = r == 0 ? auth_new_api_secret() : NULL;
		CLEANUP_FREE char *digest = secret ? auth_digest(secret) : NULL;
		if (r == 0 && !digest)
			r = vela_error(VELA_E_SYSTEM, "token: no random bytes");
		if (r == 0 && f[1].present && f[1].i <= time_real_ms())
			r = vela_error(VELA_E_INVAL, "token: \"expires\" (ms since 1970) must be in the future");
		if (r == 0)
			r = host_token_create(a->host, who->user, f[0].s, f[1].present ? f[1].i : 0, digest, &out);
		if (r == 0)
			json_object_set_new(out, "secret", json_string(secret));   /* shown once */
		json_decref(doc);
		return reply(c, r, "token", out);
	}
	if (parse_id(rest, strlen(rest), &id) && strcmp(method, "DELETE") == 0)
		return reply(c, host_token_delete(a->host, owner, id), NULL, NULL);
	return send_error(c, vela_error(VELA_E_NOTFOUND, "no such resource: tokens/%.40s (%s)", rest, method));
}

/* "NAME/WHAT/REST" of a datastore URL; false when it does not have that shape. */
static bool split_ds_url(const char *p, char *name, size_t size, const char **what, const char **rest)
{
	const char *slash = strchr(p, '/');
	if (!slash || (size_t)(slash - p) >= size)
		return false;
	memcpy(name, p, (size_t)(slash - p));
	name[slash - p] = '\0';
	*what = slash + 1;
	const char *s2 = strchr(*what, '/');
	*rest = s2 ? s2 + 1 : "";
	return true;
}

static enum MHD_Result route_ds_get(struct api *a, struct MHD_Connection *c, const struct caller *who, const char *p)
{
	char name[80];
	const char *what, *rest;
	int r = need_host(who, HOST_ROLE_READONLY);
	if (r < 0)
		return send_error(c, r);
	if (!split_ds_url(p, name, sizeof name, &what, &rest))
		return send_error(c, vela_error(VELA_E_NOTFOUND, "no such resource: datastores/%.80s", p));
	if (strcmp(what, "browse") == 0) {
		json_t *out = NULL;
		const char *rel = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "path");
		r = host_ds_browse(a->host, name, rel ? rel : "", &out);
		return reply(c, r, "entries", out);
	}
	if (!str_starts_with(what, "files/"))
		return send_error(c, vela_error(VELA_E_NOTFOUND, "no such resource: datastores/%.80s", p));
	CLEANUP_FREE char *path = NULL;
	if ((r = host_ds_path(a->host, name, rest, &path)) < 0)
		return send_error(c, r);
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		r = fd < 0 ? vela_error_errno(errno, "[%s] %s", name, rest)
			   : vela_error(VELA_E_INVAL, "[%s] %s is not a file", name, rest);
		if (fd >= 0)
			close(fd);
		return send_error(c, r);
	}
	/* MHD sends it with sendfile and closes fd when done. */
	struct MHD_Response *resp = MHD_create_response_from_fd64((uint64_t)st.st_size, fd);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/octet-stream");
	enum MHD_Result mr = MHD_queue_response(c, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return mr;
}

static enum MHD_Result route(struct api *a, struct MHD_Connection *c, const struct caller *who, const char *url,
			     const char *method, struct request *rq)
{
	const char *path = url + strlen(API_PREFIX);
	json_t *out = NULL;
	int r;
	bool get = strcmp(method, "GET") == 0;
	if (strcmp(path, "session") == 0 && get) {
		json_t *s = json_pack("{s:s, s:s, s:b}", "user", who->user, "host_role",
				      host_role_name(host_access_host(who->access)), "superuser", who->superuser);
		return send_ok(c, "session", s);
	}
	if (strcmp(path, "host/stats") == 0 && get) {
		int bad = 0;
		int64_t since = query_i64(c, "since", 0, &bad);
		if ((r = bad) == 0 && (r = need_host(who, HOST_ROLE_READONLY)) == 0)
			r = host_stats(a->host, 0, since, &out);
		return reply(c, r, "stats", out);
	}
	if (strcmp(path, "host") == 0 && get) {
		r = host_info(a->host, &out);
		return reply(c, r, "host", out);
	}
	if (strcmp(path, "datastores") == 0 && get) {
		if ((r = need_host(who, HOST_ROLE_READONLY)) == 0)
			r = host_datastore_list(a->host, &out);
		return reply(c, r, "datastores", out);
	}
	if (strcmp(path, "events") == 0 && get)
		return route_events(a, c, who);
	if (strcmp(path, "events/stream") == 0 && get)
		return route_event_stream(a, c, who);
	if (strcmp(path, "autostart") == 0 && get) {
		if ((r = need_host(who, HOST_ROLE_READONLY)) == 0)
			r = host_autostart_list(a->host, &out);
		return reply(c, r, "autostart", out);
	}
	if (strcmp(path, "host/autostop") == 0 && strcmp(method, "POST") == 0) {
		if ((r = need_host(who, HOST_ROLE_ADMIN)) < 0)
			return send_error(c, r);
		return run_task(a, c, "host.autostop", "", false, autostop_job, job_new(who, 0), "autostop");
	}
	if (strcmp(path, "tasks") == 0 || str_starts_with(path, "tasks/"))
		return route_tasks(a, c, who, method, path[5] ? path + 6 : "");
	if (strcmp(path, "questions") == 0 && get)
		return route_questions(a, c, who);
	if (strcmp(path, "backup-schedules") == 0 && get) {
		/* Those of the VMs the caller may see. */
		json_t *all = NULL, *out = json_array();
		r = host_backup_schedule_list(a->host, 0, &all);
		size_t i;
		json_t *sch;
		json_array_foreach(all, i, sch) {
			int64_t vm = json_integer_value(json_object_get(sch, "vm"));
			if (need_vm(a, who, vm, HOST_ROLE_READONLY) == 0)
				json_array_append(out, sch);
		}
		json_decref(all);
		return reply(c, r, "schedules", out);
	}
	if (strcmp(path, "datastores") == 0 && strcmp(method, "POST") == 0) {
		struct api_field f[] = { { .name = "name", .type = 's' }, { .name = "path", .type = 's' } };
		json_t *doc = NULL;
		r = api_decode_body(rq->body.data, rq->body.len, f, ARRAY_SIZE(f), &doc);
		if (r == 0)
			r = need_host(who, HOST_ROLE_ADMIN);
		if (r == 0)
			r = host_datastore_add(a->host, who->user, f[0].s, f[1].s, &out);
		json_decref(doc);
		return reply(c, r, "datastore", out);
	}
	if (str_starts_with(path, "datastores/") && strcmp(method, "DELETE") == 0 && !strchr(path + 11, '/')) {
		if ((r = need_host(who, HOST_ROLE_ADMIN)) == 0)
			r = host_datastore_remove(a->host, who->user, path + 11);
		return reply(c, r, NULL, NULL);
	}
	if (strcmp(path, "vms") == 0 && get)
		return route_list(a, c, who);
	if (strcmp(path, "vms") == 0 && strcmp(method, "POST") == 0)
		return route_register(a, c, who, rq);
	if (strcmp(path, "vms/create") == 0 && strcmp(method, "POST") == 0)
		return route_create(a, c, who, rq);
	if (str_starts_with(path, "vms/")) {
		const char *idp = path + 4, *slash = strchr(idp, '/');
		size_t n = slash ? (size_t)(slash - idp) : strlen(idp);
		int64_t id;
		if (!parse_id(idp, n, &id))
			return send_error(c, vela_error(VELA_E_NOTFOUND, "no such VM: \"%.40s\"", idp));
		return route_vm(a, c, who, method, id, slash ? slash + 1 : "", rq);
	}
	if (str_starts_with(path, "datastores/") && get)
		return route_ds_get(a, c, who, path + strlen("datastores/"));
	if (strcmp(path, "permissions") == 0 || str_starts_with(path, "permissions/"))
		return route_permissions(a, c, who, method, path[11] ? path + 12 : "", rq);
	if (strcmp(path, "tokens") == 0 || str_starts_with(path, "tokens/"))
		return route_tokens(a, c, who, method, path[6] ? path + 7 : "", rq);
	if (strcmp(path, "host") == 0 || strcmp(path, "datastores") == 0 || strcmp(path, "events") == 0 ||
	    strcmp(path, "vms") == 0 || strcmp(path, "session") == 0)
		return send_error(c, vela_error(VELA_E_NOTSUP, "%s is not allowed on %s", method, url));
	return send_error(c, vela_error(VELA_E_NOTFOUND, "no such resource: %.200s", url));
}

/* POST /api/v1/session {user, password} and DELETE /api/v1/session: before
 * anybody is known. */
static enum MHD_Result route_login(struct api *a, struct MHD_Connection *c, const char *method, struct request *rq)
{
	if (strcmp(method, "DELETE") == 0) {
		const char *secret = presented_secret(c);
		if (secret && auth_is_session_token(secret))
			auth_logout(a->auth, secret);
		return send_ok(c, NULL, NULL);
	}
	struct api_field f[] = { { .name = "user", .type = 's' }, { .name = "password", .type = 's' } };
	json_t *doc = NULL;
	int r = api_decode_body(rq->body.data, rq->body.len, f, ARRAY_SIZE(f), &doc);
	if (r < 0)
		return send_error(c, r);
	char addr[INET6_ADDRSTRLEN + 1];
	client_address(c, addr, sizeof addr);
	CLEANUP_FREE char *token = NULL;
	int64_t expires = 0;
	r = auth_login(a->auth, f[0].s, f[1].s, addr, &token, &expires);
	/* The user name is the caller's claim: keep it printable in the log. */
	char user[65];
	snprintf(user, sizeof user, "%s", f[0].s);
	for (char *p = user; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	if (r < 0) {
		CLEANUP_FREE char *msg = xstrdup(vela_errmsg());
		host_event(a->host, HOST_WARNING, 0, user, "user.login.failed", "from %s: %s", addr, msg);
		vela_error(-r, "%s", msg);
		json_decref(doc);
		return send_error(c, r);
	}
	host_event(a->host, HOST_AUDIT, 0, user, "user.login", "from %s", addr);
	json_decref(doc);
	json_t *s = json_pack("{s:s, s:s, s:I}", "user", user, "token", token, "expires", (json_int_t)expires);
	json_t *answer = json_pack("{s:b, s:o}", "ok", 1, "session", s);
	char *text = json_dumps(answer, JSON_COMPACT);
	json_decref(answer);
	CLEANUP_FREE char *cookie = xasprintf("vela_session=%s; Path=/; Secure; HttpOnly; SameSite=Strict", token);
	return send_json_text(c, MHD_HTTP_OK, text, cookie);
}

struct listener {
	struct api *api;
	bool local;     /* the UNIX socket: peer credentials, no login */
};

static int identify(struct listener *l, struct MHD_Connection *c, struct caller *who)
{
	int r = l->local ? identify_peer(l->api, c, who) : identify_token(l->api, c, who);
	if (r == 0)
		r = load_access(l->api, who);
	return r;
}

/* PUT datastores/NAME/files/REL: checked at the headers, so a refused
 * upload never touches the disk. */
static void begin_upload(struct listener *l, struct MHD_Connection *c, const char *p, struct request *rq)
{
	char name[80];
	const char *what, *rest;
	struct caller who = { 0 };
	int r = identify(l, c, &who);
	if (r == 0)
		r = need_host(&who, HOST_ROLE_ADMIN);
	if (r == 0 && (!split_ds_url(p, name, sizeof name, &what, &rest) || !str_starts_with(what, "files/")))
		r = vela_error(VELA_E_NOTFOUND, "no such resource: datastores/%.80s", p);
	if (r == 0) {
		const char *len = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
		uint64_t expected = 0;
		if (len && parse_u64(len, UINT64_MAX, &expected) < 0)
			expected = 0;
		r = host_ds_upload_begin(l->api->host, who.user, name, rest, expected, &rq->upload);
	}
	snprintf(rq->user, sizeof rq->user, "%s", who.user);
	caller_clear(&who);
	if (r < 0) {
		rq->upload_error = r;
		strbuf_puts(&rq->body, vela_errmsg());   /* the message, for the answer at the end */
	}
}

static enum MHD_Result end_upload(struct api *a, struct MHD_Connection *c, struct request *rq)
{
	json_t *out = NULL;
	int r = rq->upload_error;
	if (rq->upload) {
		r = host_ds_upload_end(a->host, rq->user, rq->upload, 0, &out);
		rq->upload = NULL;
	} else {
		vela_error(-r, "%s", rq->body.data ? rq->body.data : "upload refused");
	}
	return reply(c, r, "file", out);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
				  const char *version, const char *upload_data, size_t *upload_size, void **con_cls)
{
	(void)version;
	struct listener *l = cls;
	struct api *a = l->api;
	struct request *rq = *con_cls;
	if (!rq) {
		/* First call: headers only. */
		*con_cls = rq = xcalloc(1, sizeof *rq);
		if (strcmp(method, "PUT") == 0 && str_starts_with(url, API_PREFIX "datastores/"))
			begin_upload(l, c, url + strlen(API_PREFIX "datastores/"), rq);
		return MHD_YES;
	}
	if (*upload_size) {
		if (rq->upload) {
			/* Streamed to the file.  A failure (a cancel, a full
			 * datastore) is answered at once: MHD sends the answer
			 * and closes the connection, so the sender stops. */
			if (host_ds_upload_write(rq->upload, upload_data, *upload_size) < 0) {
				*upload_size = 0;
				return end_upload(a, c, rq);
			}
		} else if (rq->upload_error) {
			;   /* refused at the headers: the body is dropped */
		} else if (rq->body.len + *upload_size > a->max_body) {
			rq->too_big = true;
		} else {
			strbuf_append(&rq->body, upload_data, *upload_size);
		}
		*upload_size = 0;
		return MHD_YES;
	}
	vela_error_clear();
	if (rq->upload || rq->upload_error)
		return end_upload(a, c, rq);
	if (rq->too_big)
		return send_error(c, vela_error(VELA_E_TOOBIG, "request body is larger than %zu bytes", a->max_body));
	if (!str_starts_with(url, API_PREFIX) && a->web_root && !l->local &&
	    (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0))
		return web_serve(c, a->web_root, url);
	if (!str_starts_with(url, API_PREFIX))
		return send_error(c, vela_error(VELA_E_NOTFOUND, "no such resource: %.200s", url));
	if (strcmp(url, API_PREFIX "openapi.json") == 0 && strcmp(method, "GET") == 0) {
		/* Public, like any API description. */
		struct MHD_Response *resp = MHD_create_response_from_buffer(api_openapi_json_len, (void *)api_openapi_json,
									    MHD_RESPMEM_PERSISTENT);
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
		enum MHD_Result mr = MHD_queue_response(c, MHD_HTTP_OK, resp);
		MHD_destroy_response(resp);
		return mr;
	}
	if (!l->local && strcmp(url, API_PREFIX "session") == 0 &&
	    (strcmp(method, "POST") == 0 || strcmp(method, "DELETE") == 0))
		return route_login(a, c, method, rq);
	struct caller who = { 0 };
	int r = identify(l, c, &who);
	enum MHD_Result mr = r < 0 ? send_error(c, r) : route(a, c, &who, url, method, rq);
	caller_clear(&who);
	return mr;
}

/* Plain HTTP only sends people to HTTPS, with the same path and query. */
struct http_request {
	bool started;
	struct strbuf query;
};

static enum MHD_Result add_query_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
	(void)kind;
	struct strbuf *q = cls;
	static const char hex[] = "0123456789ABCDEF";
	strbuf_puts(q, q->len ? "&" : "?");
	for (int part = 0; part < 2; part++) {
		const char *s = part ? value : key;
		if (part && !s)
			break;
		if (part)
			strbuf_puts(q, "=");
		for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
			if (isalnum(*p) || strchr("-._~", *p)) {
				strbuf_append(q, (const char *)p, 1);
			} else {
				char esc[3] = { '%', hex[*p >> 4], hex[*p & 15] };
				strbuf_append(q, esc, 3);
			}
		}
	}
	return MHD_YES;
}

static void on_http_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
	(void)cls;
	(void)c;
	(void)toe;
	struct http_request *hr = *con_cls;
	if (hr) {
		strbuf_free(&hr->query);
		free(hr);
	}
	*con_cls = NULL;
}

static enum MHD_Result on_http_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
				       const char *version, const char *upload_data, size_t *upload_size, void **con_cls)
{
	(void)method;
	(void)version;
	(void)upload_data;
	struct api *a = cls;
	struct http_request *hr = *con_cls;
	if (!hr) {
		*con_cls = xcalloc(1, sizeof *hr);
		return MHD_YES;
	}
	if (*upload_size) {
		*upload_size = 0;   /* a body is never read here */
		return MHD_YES;
	}
	const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
	char name[256] = "localhost";
	if (host) {
		/* The host part only ("[::1]:8222" or "name:8222"), of safe characters. */
		size_t n = 0;
		const char *p = host;
		if (*p == '[') {
			while (*p && *p != ']' && n < sizeof name - 2)
				name[n++] = *p++;
			if (*p == ']')
				name[n++] = *p++;
		} else {
			while (*p && *p != ':' && n < sizeof name - 1)
				name[n++] = *p++;
		}
		name[n] = '\0';
		for (char *q = name; *q; q++)
			if (!(isalnum((unsigned char)*q) || strchr(".-_[]:", *q))) {
				snprintf(name, sizeof name, "localhost");
				break;
			}
	}
	char path[2048];
	snprintf(path, sizeof path, "%s", url);
	for (char *q = path; *q; q++)
		if ((unsigned char)*q <= 0x20 || *q == 0x7f)
			*q = '_';
	MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, add_query_arg, &hr->query);
	CLEANUP_FREE char *location =
		xasprintf("https://%s:%u%s%s", name, a->https_port, path, hr->query.data ? hr->query.data : "");
	struct MHD_Response *resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_LOCATION, location);
	enum MHD_Result r = MHD_queue_response(c, MHD_HTTP_MOVED_PERMANENTLY, resp);
	MHD_destroy_response(resp);
	return r;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
	(void)c;
	(void)toe;
	struct request *rq = *con_cls;
	if (rq) {
		if (rq->upload) {   /* the client went away mid-upload: nothing appears */
			json_t *none = NULL;
			vela_error(VELA_E_CONNRESET, "the client went away");
			host_ds_upload_end(((struct api *)cls)->host, rq->user, rq->upload, -VELA_E_CONNRESET, &none);
		}
		strbuf_free(&rq->body);
		free(rq);
		*con_cls = NULL;
	}
}

/* ----------------------------------------------------------- start, stop */

struct api_listeners {
	struct listener local, remote;
};

static struct MHD_Daemon *start_tcp(struct api *a, unsigned port, const char *bind_addr, bool tls, void *cls)
{
	struct sockaddr_in6 sa6 = { .sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port), .sin6_addr = in6addr_any };
	struct sockaddr_in sa4 = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	const struct sockaddr *sa = (const struct sockaddr *)&sa6;
	unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG |
			 MHD_ALLOW_UPGRADE;
	if (bind_addr && inet_pton(AF_INET, bind_addr, &sa4.sin_addr) == 1)
		sa = (const struct sockaddr *)&sa4;
	else if (bind_addr && inet_pton(AF_INET6, bind_addr, &sa6.sin6_addr) != 1)
		return NULL;
	if (sa->sa_family == AF_INET6)
		flags |= MHD_USE_DUAL_STACK;
	if (!tls)
		return MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_http_request, a, MHD_OPTION_SOCK_ADDR, sa,
					MHD_OPTION_NOTIFY_COMPLETED,
					on_http_completed, NULL, MHD_OPTION_CONNECTION_LIMIT, (unsigned)256,
					MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_END);
	return MHD_start_daemon(flags | MHD_USE_TLS, (uint16_t)port, NULL, NULL, on_request, cls, MHD_OPTION_SOCK_ADDR, sa,
				MHD_OPTION_HTTPS_MEM_CERT, a->tls_cert, MHD_OPTION_HTTPS_MEM_KEY, a->tls_key,
				MHD_OPTION_NOTIFY_COMPLETED, on_completed, a, MHD_OPTION_CONNECTION_LIMIT, (unsigned)512,
				MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600, MHD_OPTION_END);
}

int api_start(struct host *h, const struct api_opts *opts, struct api **out)
{
	struct api *a = xcalloc(1, sizeof *a + sizeof(struct api_listeners));
	struct api_listeners *ls = (struct api_listeners *)(a + 1);
	ls->local = (struct listener){ a, true };
	ls->remote = (struct listener){ a, false };
	a->host = h;
	a->consoles = console_bridges_new();
	a->web_root = opts->web_root ? xstrdup(opts->web_root) : NULL;
	pthread_mutex_init(&a->list_lock, NULL);
	a->max_body = opts->max_body ? opts->max_body : 1u << 20;
	a->https_port = opts->https_port;
	a->unix_path = opts->unix_path ? xstrdup(opts->unix_path) : path_join(vela_run_root(), "velad.sock");
	struct auth_opts ao = { .pam_service = opts->pam_service, .session_idle_ms = opts->session_idle_ms };
	a->auth = auth_new(&ao);
	struct group gr, *grp = NULL;
	char buf[4096];
	if (getgrnam_r("vela", &gr, buf, sizeof buf, &grp) == 0 && grp) {
		a->vela_gid = gr.gr_gid;
		a->have_vela_gid = true;
	}
	CLEANUP_FREE char *dir = path_dirname(a->unix_path);
	int r = mkdir_p(dir, 0755);
	if (r < 0) {
		api_stop(a);
		return r;
	}
	unlink(a->unix_path);   /* a stale socket of a killed velad */
	int fd = unix_listen(a->unix_path, 64);
	if (fd < 0) {
		r = fd;
		api_stop(a);
		return vela_error_context(r, "API socket");
	}
	/* Group vela may connect; the peer check decides what it may do. */
	chmod(a->unix_path, 0660);
	if (a->have_vela_gid && chown(a->unix_path, (uid_t)-1, a->vela_gid) < 0)
		vela_log(VELA_LOG_WARN, "chown %s to group vela: %s", a->unix_path, strerror(errno));
	/* A thread per connection: power operations block for as long as a
	 * guest takes to boot or shut down, and must not hold up the rest. */
	a->unix_daemon = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
						  MHD_USE_ERROR_LOG | MHD_ALLOW_UPGRADE,
					  0, NULL, NULL, on_request, &ls->local, MHD_OPTION_LISTEN_SOCKET, fd,
					  MHD_OPTION_NOTIFY_COMPLETED, on_completed, a, MHD_OPTION_CONNECTION_LIMIT,
					  (unsigned)512, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600, MHD_OPTION_END);
	if (!a->unix_daemon) {
		close(fd);
		api_stop(a);
		return vela_error(VELA_E_IO, "API: the HTTP server did not start on %s", a->unix_path);
	}
	if (opts->https_port) {
		CLEANUP_FREE char *tls_dir = opts->tls_dir ? xstrdup(opts->tls_dir) : path_join(vela_home(), "tls");
		if ((r = auth_tls_material(tls_dir, &a->tls_cert, &a->tls_key)) < 0) {
			api_stop(a);
			return vela_error_context(r, "HTTPS");
		}
		if (!(a->https_daemon = start_tcp(a, opts->https_port, opts->bind_addr, true, &ls->remote))) {
			api_stop(a);
			return vela_error(VELA_E_IO, "API: HTTPS did not start on port %u (in use, or a bad address %s?)",
					  opts->https_port, opts->bind_addr ? opts->bind_addr : "");
		}
	}
	if (opts->http_port && opts->https_port && !(a->http_daemon = start_tcp(a, opts->http_port, opts->bind_addr, false, NULL))) {
		api_stop(a);
		return vela_error(VELA_E_IO, "API: HTTP did not start on port %u (in use?)", opts->http_port);
	}
	*out = a;
	return 0;
}

void api_stop(struct api *a)
{
	if (!a)
		return;
	atomic_store(&a->stopping, true);
	console_bridges_free(a->consoles);   /* before the daemons: they wait for upgraded connections */
	if (a->http_daemon)
		MHD_stop_daemon(a->http_daemon);
	if (a->https_daemon)
		MHD_stop_daemon(a->https_daemon);
	if (a->unix_daemon) {
		MHD_stop_daemon(a->unix_daemon);
		unlink(a->unix_path);
	}
	auth_free(a->auth);
	free(a->list_text);
	pthread_mutex_destroy(&a->list_lock);
	free(a->tls_cert);
	free(a->tls_key);
	free(a->web_root);
	free(a->unix_path);
	free(a);
}
