/* api.c - HTTP/JSON routes of velad over libmicrohttpd. */
#include "common.h"
#include "api.h"
#include "host.h"

#include <grp.h>
#include <microhttpd.h>
#include <pwd.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define API_PREFIX "/api/v1/"

struct api {
	struct host *host;
	struct MHD_Daemon *unix_daemon;
	char *unix_path;
	size_t max_body;
	gid_t vela_gid;
	bool have_vela_gid;
};

/* Per request: the body as it arrives, and who is asking. */
struct request {
	struct strbuf body;
	bool too_big;
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
		return MHD_HTTP_CONFLICT;
	case VELA_E_TOOBIG:
		return MHD_HTTP_CONTENT_TOO_LARGE;
	case VELA_E_NOTSUP:
		return MHD_HTTP_NOT_IMPLEMENTED;
	case VELA_E_TIMEOUT:
		return MHD_HTTP_GATEWAY_TIMEOUT;
	default:
		return MHD_HTTP_INTERNAL_SERVER_ERROR;
	}
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, json_t *j)
{
	char *text = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	size_t len = strlen(text);
	struct MHD_Response *resp = MHD_create_response_from_buffer_with_free_callback(len, text, free);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	enum MHD_Result r = MHD_queue_response(c, status, resp);
	MHD_destroy_response(resp);
	return r;
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
			  (f->type == 'b' && json_is_boolean(v));
		if (!ok) {
			json_decref(j);
			return vela_error(VELA_E_INVAL, "request body: \"%s\" must be a %s", f->name,
					  f->type == 's' ? "string" : f->type == 'i' ? "integer" : "boolean");
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
	char user[64];
	bool trusted;
};

static bool in_group(uid_t uid, gid_t gid)
{
	struct passwd pw, *pwp = NULL;
	char buf[4096];
	if (getpwuid_r(uid, &pw, buf, sizeof buf, &pwp) != 0 || !pwp)
		return false;
	if (pw.pw_gid == gid)
		return true;
	gid_t groups[256];
	int ng = ARRAY_SIZE(groups);
	if (getgrouplist(pw.pw_name, pw.pw_gid, groups, &ng) < 0)
		return false;
	for (int i = 0; i < ng; i++)
		if (groups[i] == gid)
			return true;
	return false;
}

static void identify(struct api *a, struct MHD_Connection *c, struct caller *who)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
	struct ucred cred;
	socklen_t len = sizeof cred;
	snprintf(who->user, sizeof who->user, "unknown");
	who->trusted = false;
	if (!ci || getsockopt(ci->connect_fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return;
	struct passwd pw, *pwp = NULL;
	char buf[4096];
	if (getpwuid_r(cred.uid, &pw, buf, sizeof buf, &pwp) == 0 && pwp)
		snprintf(who->user, sizeof who->user, "%s", pw.pw_name);
	else
		snprintf(who->user, sizeof who->user, "uid:%u", (unsigned)cred.uid);
	who->trusted = cred.uid == 0 || cred.uid == geteuid() || (a->have_vela_gid && in_group(cred.uid, a->vela_gid));
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

static enum MHD_Result route_events(struct api *a, struct MHD_Connection *c)
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
	int r = host_event_list(a->host, &q, &ev);
	return r < 0 ? send_error(c, r) : send_ok(c, "events", ev);
}

static enum MHD_Result route_vm(struct api *a, struct MHD_Connection *c, const struct caller *who, const char *method,
				int64_t id, const char *action, struct request *rq)
{
	json_t *out = NULL, *doc = NULL;
	int r;
	if (!*action) {
		if (strcmp(method, "GET") == 0) {
			r = host_vm_get(a->host, id, &out);
			return r < 0 ? send_error(c, r) : send_ok(c, "vm", out);
		}
		if (strcmp(method, "DELETE") == 0) {
			r = host_vm_unregister(a->host, who->user, id);
			return r < 0 ? send_error(c, r) : send_ok(c, NULL, NULL);
		}
	} else if (strcmp(action, "power") == 0 && strcmp(method, "POST") == 0) {
		struct api_field f[] = { { .name = "op", .type = 's' }, { .name = "mode", .type = 's', .optional = true } };
		r = api_decode_body(rq->body.data, rq->body.len, f, ARRAY_SIZE(f), &doc);
		if (r == 0)
			r = host_vm_power(a->host, who->user, id, f[0].s, f[1].s, &out);
		json_decref(doc);
		return r < 0 ? send_error(c, r) : send_ok(c, "status", out);
	} else if (strcmp(action, "answer") == 0 && strcmp(method, "POST") == 0) {
		struct api_field f[] = { { .name = "choice", .type = 's' } };
		r = api_decode_body(rq->body.data, rq->body.len, f, ARRAY_SIZE(f), &doc);
		if (r == 0)
			r = host_vm_answer(a->host, who->user, id, f[0].s, &out);
		json_decref(doc);
		return r < 0 ? send_error(c, r) : send_ok(c, "status", out);
	} else {
		return send_error(c, vela_error(VELA_E_NOTFOUND, "no such resource: VM %lld/%s", (long long)id, action));
	}
	return send_error(c, vela_error(VELA_E_NOTSUP, "%s is not allowed here", method));
}

static enum MHD_Result route(struct api *a, struct MHD_Connection *c, const struct caller *who, const char *url,
			     const char *method, struct request *rq)
{
	if (!str_starts_with(url, API_PREFIX))
		return send_error(c, vela_error(VELA_E_NOTFOUND, "no such resource: %.200s", url));
	const char *path = url + strlen(API_PREFIX);
	json_t *out = NULL, *doc = NULL;
	int r;
	bool get = strcmp(method, "GET") == 0;
	if (strcmp(path, "host") == 0 && get) {
		r = host_info(a->host, &out);
		return r < 0 ? send_error(c, r) : send_ok(c, "host", out);
	}
	if (strcmp(path, "datastores") == 0 && get) {
		r = host_datastore_list(a->host, &out);
		return r < 0 ? send_error(c, r) : send_ok(c, "datastores", out);
	}
	if (strcmp(path, "events") == 0 && get)
		return route_events(a, c);
	if (strcmp(path, "vms") == 0) {
		if (get) {
			r = host_vm_list(a->host, &out);
			return r < 0 ? send_error(c, r) : send_ok(c, "vms", out);
		}
		if (strcmp(method, "POST") == 0) {
			struct api_field f[] = { { .name = "config", .type = 's' },
						 { .name = "name", .type = 's', .optional = true },
						 { .name = "folder", .type = 's', .optional = true } };
			r = api_decode_body(rq->body.data, rq->body.len, f, ARRAY_SIZE(f), &doc);
			if (r == 0)
				r = host_vm_register(a->host, who->user, f[0].s, f[1].s, f[2].s, &out);
			json_decref(doc);
			return r < 0 ? send_error(c, r) : send_ok(c, "vm", out);
		}
	}
	if (str_starts_with(path, "vms/")) {
		const char *idp = path + 4, *slash = strchr(idp, '/');
		size_t n = slash ? (size_t)(slash - idp) : strlen(idp);
		int64_t id;
		if (!parse_id(idp, n, &id))
			return send_error(c, vela_error(VELA_E_NOTFOUND, "no such VM: \"%.40s\"", idp));
		return route_vm(a, c, who, method, id, slash ? slash + 1 : "", rq);
	}
	if (strcmp(path, "host") == 0 || strcmp(path, "datastores") == 0 || strcmp(path, "events") == 0 ||
	    strcmp(path, "vms") == 0)
		return send_error(c, vela_error(VELA_E_NOTSUP, "%s is not allowed on %s", method, url));
	return send_error(c, vela_error(VELA_E_NOTFOUND, "no such resource: %.200s", url));
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
				  const char *version, const char *upload_data, size_t *upload_size, void **con_cls)
{
	(void)version;
	struct api *a = cls;
	struct request *rq = *con_cls;
	if (!rq) {
		/* First call: headers only. */
		*con_cls = xcalloc(1, sizeof *rq);
		return MHD_YES;
	}
	if (*upload_size) {
		if (rq->body.len + *upload_size > a->max_body)
			rq->too_big = true;
		else
			strbuf_append(&rq->body, upload_data, *upload_size);
		*upload_size = 0;
		return MHD_YES;
	}
	vela_error_clear();
	if (rq->too_big)
		return send_error(c, vela_error(VELA_E_TOOBIG, "request body is larger than %zu bytes", a->max_body));
	struct caller who;
	identify(a, c, &who);
	if (!who.trusted)
		return send_error(c, vela_error(VELA_E_PERM, "user %s may not use this socket (root or group vela only)",
						who.user));
	return route(a, c, &who, url, method, rq);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
	(void)cls;
	(void)c;
	(void)toe;
	struct request *rq = *con_cls;
	if (rq) {
		strbuf_free(&rq->body);
		free(rq);
		*con_cls = NULL;
	}
}

/* ----------------------------------------------------------- start, stop */

int api_start(struct host *h, const struct api_opts *opts, struct api **out)
{
	struct api *a = xcalloc(1, sizeof *a);
	a->host = h;
	a->max_body = opts->max_body ? opts->max_body : 1u << 20;
	a->unix_path = opts->unix_path ? xstrdup(opts->unix_path) : path_join(vela_run_root(), "velad.sock");
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
						  MHD_USE_ERROR_LOG,
					  0, NULL, NULL, on_request, a, MHD_OPTION_LISTEN_SOCKET, fd,
					  MHD_OPTION_NOTIFY_COMPLETED, on_completed, a, MHD_OPTION_CONNECTION_LIMIT,
					  (unsigned)512, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600, MHD_OPTION_END);
	if (!a->unix_daemon) {
		close(fd);
		api_stop(a);
		return vela_error(VELA_E_IO, "API: the HTTP server did not start on %s", opts->unix_path);
	}
	*out = a;
	return 0;
}

void api_stop(struct api *a)
{
	if (!a)
		return;
	if (a->unix_daemon) {
		MHD_stop_daemon(a->unix_daemon);
		unlink(a->unix_path);
	}
	free(a->unix_path);
	free(a);
}
