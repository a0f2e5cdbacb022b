/*
 * remote.c - the vela commands that go through velad's API: locally over
 * its UNIX socket, or with --host over HTTPS as --user (PAM login) or with
 * an API token ($VELA_TOKEN).
 */
#include "common.h"
#include "cli.h"

#define CURL_DISABLE_TYPECHECK   /* calls go through the table below */
#include <curl/curl.h>
#include <dlfcn.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

/*
 * libcurl, loaded when a command first talks to velad.  Linked, it and the
 * TLS and Kerberos libraries behind it took 7 ms to load on every vela
 * command, local disk commands included (an addredo's whole run was 10 ms
 * instead of 3).  The one table, filled once by curl_load().
 */
static struct {
	CURLcode (*global_init)(long flags);
	void (*global_cleanup)(void);
	CURL *(*easy_init)(void);
	CURLcode (*easy_setopt)(CURL *k, CURLoption opt, ...);
	CURLcode (*easy_perform)(CURL *k);
	void (*easy_cleanup)(CURL *k);
	void (*easy_reset)(CURL *k);
	CURLcode (*easy_getinfo)(CURL *k, CURLINFO info, ...);
	const char *(*easy_strerror)(CURLcode rc);
	char *(*easy_escape)(CURL *k, const char *s, int len);
	void (*free)(void *p);
	struct curl_slist *(*slist_append)(struct curl_slist *l, const char *s);
	void (*slist_free_all)(struct curl_slist *l);
} lc;

static int curl_load(void)
{
	static const char *const libs[] = { "libcurl-gnutls.so.4", "libcurl.so.4" };
	if (lc.easy_init)
		return 0;
	void *dl = NULL;
	for (size_t i = 0; i < ARRAY_SIZE(libs) && !dl; i++)
		dl = dlopen(libs[i], RTLD_NOW | RTLD_LOCAL);
	if (!dl)
		return vela_error(VELA_E_NOTSUP, "talking to velad needs libcurl (package libcurl3-gnutls): %s", dlerror());
	struct {
		const char *name;
		void **slot;
	} syms[] = {
#define SYM(f) { "curl_" #f, (void **)&lc.f }
		SYM(global_init), SYM(global_cleanup), SYM(easy_init), SYM(easy_setopt), SYM(easy_perform),
		SYM(easy_cleanup), SYM(easy_reset), SYM(easy_getinfo), SYM(easy_strerror), SYM(easy_escape),
		SYM(free), SYM(slist_append), SYM(slist_free_all),
#undef SYM
	};
	for (size_t i = 0; i < ARRAY_SIZE(syms); i++) {
		if (!(*syms[i].slot = dlsym(dl, syms[i].name))) {
			memset(&lc, 0, sizeof lc);
			dlclose(dl);
			return vela_error(VELA_E_NOTSUP, "libcurl has no %s", syms[i].name);
		}
	}
	return 0;   /* stays loaded until exit */
}

struct client {
	CURL *curl;
	char *base;           /* "http://velad" (socket) or "https://host:port" */
	char *socket;         /* the UNIX socket, or NULL */
	char *token;          /* bearer secret, or NULL */
	bool logged_in;       /* token is a session of ours: log out at the end */
	const struct cli *c;
};

static size_t collect(char *p, size_t size, size_t n, void *sb)
{
	if (strbuf_append(sb, p, size * n) < 0)
		return 0;
	return size * n;
}

/* One request; the reply's error object becomes our error.  A file to
 * send (PUT) or to receive into replaces the JSON body; progress shows on
 * a terminal. */
static int client_request(struct client *cl, const char *method, const char *path, json_t *body, FILE *send,
			  FILE *receive, json_t **reply);

static int client_call(struct client *cl, const char *method, const char *path, json_t *body, json_t **reply)
{
	return client_request(cl, method, path, body, NULL, NULL, reply);
}

/* Where and how to connect: the local socket, or TLS as configured. */
static void client_transport(struct client *cl, CURL *k)
{
	lc.easy_setopt(k, CURLOPT_NOSIGNAL, 1L);
	if (cl->socket)
		lc.easy_setopt(k, CURLOPT_UNIX_SOCKET_PATH, cl->socket);
	if (cl->c->insecure) {
		lc.easy_setopt(k, CURLOPT_SSL_VERIFYPEER, 0L);
		lc.easy_setopt(k, CURLOPT_SSL_VERIFYHOST, 0L);
	} else if (cl->c->ca) {
		lc.easy_setopt(k, CURLOPT_CAINFO, cl->c->ca);
	}
}

static int client_request(struct client *cl, const char *method, const char *path, json_t *body, FILE *send,
			  FILE *receive, json_t **reply)
{
	CLEANUP_FREE char *url = xasprintf("%s/api/v1/%s", cl->base, path);
	CLEANUP_FREE char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	json_decref(body);
	struct strbuf out = { 0 };
	struct curl_slist *h = lc.slist_append(NULL, "Content-Type: application/json");
	CLEANUP_FREE char *auth = cl->token ? xasprintf("Authorization: Bearer %s", cl->token) : NULL;
	if (auth)
		h = lc.slist_append(h, auth);
	CURL *k = cl->curl;
	lc.easy_reset(k);
	lc.easy_setopt(k, CURLOPT_URL, url);
	lc.easy_setopt(k, CURLOPT_CUSTOMREQUEST, method);
	lc.easy_setopt(k, CURLOPT_HTTPHEADER, h);
	lc.easy_setopt(k, CURLOPT_WRITEFUNCTION, collect);
	lc.easy_setopt(k, CURLOPT_WRITEDATA, &out);
	if (send) {
		struct stat st;
		lc.easy_setopt(k, CURLOPT_UPLOAD, 1L);
		lc.easy_setopt(k, CURLOPT_READDATA, send);
		if (fstat(fileno(send), &st) == 0)
			lc.easy_setopt(k, CURLOPT_INFILESIZE_LARGE, (curl_off_t)st.st_size);
	}
	if (receive) {
		lc.easy_setopt(k, CURLOPT_WRITEFUNCTION, NULL);   /* fwrite */
		lc.easy_setopt(k, CURLOPT_WRITEDATA, receive);
		lc.easy_setopt(k, CURLOPT_FAILONERROR, 1L);
	}
	if ((send || receive) && isatty(2))
		lc.easy_setopt(k, CURLOPT_NOPROGRESS, 0L);
	/* Tasks answer when done (or 202 after 15 minutes); uploads of big
	 * ISOs take what they take. */
	lc.easy_setopt(k, CURLOPT_TIMEOUT, send || receive ? 0L : 1000L);
	if (text)
		lc.easy_setopt(k, CURLOPT_POSTFIELDS, text);
	client_transport(cl, k);
	CURLcode rc = lc.easy_perform(k);
	lc.slist_free_all(h);
	if (receive && rc == CURLE_HTTP_RETURNED_ERROR) {
		long status = 0;
		lc.easy_getinfo(k, CURLINFO_RESPONSE_CODE, &status);
		return vela_error(status == 404 ? VELA_E_NOTFOUND : status == 403 ? VELA_E_PERM : VELA_E_IO,
				  "%s: HTTP %ld", url, status);
	}
	if (receive && rc == CURLE_OK)
		return 0;
	if (rc != CURLE_OK) {
		strbuf_free(&out);
		if (cl->socket && (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST))
			return vela_error(VELA_E_CONNREFUSED, "velad is not running (no answer on %s)", cl->socket);
		return vela_error(rc == CURLE_PEER_FAILED_VERIFICATION ? VELA_E_AUTH : VELA_E_NOTCONN,
				  "%s: %s%s", cl->base, lc.easy_strerror(rc),
				  rc == CURLE_PEER_FAILED_VERIFICATION ? " (--ca FILE, or --insecure)" : "");
	}
	json_error_t jerr;
	json_t *j = json_loadb(out.data ? out.data : "", out.len, 0, &jerr);
	strbuf_free(&out);
	if (!j || !json_is_object(j)) {
		json_decref(j);
		return vela_error(VELA_E_PROTOCOL, "%s: the reply is not a JSON object", url);
	}
	if (!json_is_true(json_object_get(j, "ok"))) {
		json_t *e = json_object_get(j, "error");
		int code = (int)json_integer_value(json_object_get(e, "code"));
		const char *msg = json_string_value(json_object_get(e, "message"));
		int r = vela_error(code > 0 ? code : VELA_E_PROTOCOL, "%s", msg ? msg : "request refused");
		json_decref(j);
		return r;
	}
	if (reply)
		*reply = j;
	else
		json_decref(j);
	return 0;
}

static char *read_password(const char *user, const char *host)
{
	const char *env = getenv("VELA_PASSWORD");
	if (env)
		return xstrdup(env);
	FILE *tty = fopen("/dev/tty", "r+");
	if (!tty)
		return NULL;
	fprintf(tty, "Password for %s@%s: ", user, host);
	fflush(tty);
	struct termios old, quiet;
	bool restore = tcgetattr(fileno(tty), &old) == 0;
	if (restore) {
		quiet = old;
		quiet.c_lflag &= ~(tcflag_t)ECHO;
		tcsetattr(fileno(tty), TCSAFLUSH, &quiet);
	}
	char buf[1024];
	char *p = fgets(buf, sizeof buf, tty);
	if (restore)
		tcsetattr(fileno(tty), TCSAFLUSH, &old);
	fprintf(tty, "\n");
	fclose(tty);
	if (!p)
		return NULL;
	buf[strcspn(buf, "\r\n")] = '\0';
	return xstrdup(buf);
}

static void client_close(struct client *cl)
{
	if (!cl)
		return;
	if (cl->logged_in)
		client_call(cl, "DELETE", "session", NULL, NULL);
	if (cl->curl)
		lc.easy_cleanup(cl->curl);
	free(cl->base);
	free(cl->socket);
	free(cl->token);
	free(cl);
}

static int client_open(const struct cli *c, struct client **out)
{
	struct client *cl = xcalloc(1, sizeof *cl);
	cl->c = c;
	cl->curl = lc.easy_init();
	if (!cl->curl) {
		free(cl);
		return vela_error(VELA_E_NOMEM, "libcurl did not start");
	}
	int r = 0;
	if (!c->host) {
		cl->socket = c->socket ? xstrdup(c->socket) : path_join(vela_run_root(), "velad.sock");
		cl->base = xstrdup("http://velad");
	} else {
		/* HOST, HOST:PORT or [V6]:PORT; 8333 unless named. */
		bool has_port = strrchr(c->host, ':') && (c->host[0] != '[' || strstr(c->host, "]:"));
		cl->base = xasprintf("https://%s%s", c->host, has_port ? "" : ":8333");
		const char *token = getenv("VELA_TOKEN");
		if (c->user) {
			CLEANUP_FREE char *pw = read_password(c->user, c->host);
			if (!pw) {
				r = vela_error(VELA_E_AUTH, "no password for %s (a terminal or $VELA_PASSWORD)", c->user);
			} else {
				json_t *reply = NULL;
				r = client_call(cl, "POST", "session", json_pack("{s:s, s:s}", "user", c->user, "password", pw),
						&reply);
				if (r == 0) {
					cl->token = xstrdup(json_string_value(
						json_object_get(json_object_get(reply, "session"), "token")));
					cl->logged_in = true;
				}
				json_decref(reply);
			}
		} else if (token) {
			cl->token = xstrdup(token);
		} else {
			r = vela_error(VELA_E_AUTH, "--host needs --user USER or an API token in $VELA_TOKEN");
		}
	}
	if (r < 0) {
		client_close(cl);
		return r;
	}
	*out = cl;
	return 0;
}

/* ------------------------------------------------------------- output */

static const char *str_of(json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s ? s : "";
}

static void print_table(const struct cli *c, json_t *rows, const char *const *cols, const char *const *heads)
{
	if (c->json) {
		cli_print_json(rows);
		return;
	}
	size_t ncol = 0;
	while (cols[ncol])
		ncol++;
	size_t width[16] = { 0 };
	for (size_t k = 0; k < ncol; k++)
		width[k] = strlen(heads[k]);
	size_t i;
	json_t *row;
	char cell[512];
	/* Two passes: widths, then the lines. */
	for (int pass = 0; pass < 2; pass++) {
		if (pass == 1) {
			for (size_t k = 0; k < ncol; k++)
				printf("%-*s%s", k + 1 < ncol ? (int)width[k] : 0, heads[k], k + 1 < ncol ? "  " : "\n");
		}
		json_array_foreach(rows, i, row) {
			for (size_t k = 0; k < ncol; k++) {
				json_t *v = json_object_get(row, cols[k]);
				if (json_is_string(v))
					snprintf(cell, sizeof cell, "%s", json_string_value(v));
				else if (json_is_integer(v))
					snprintf(cell, sizeof cell, "%lld", (long long)json_integer_value(v));
				else
					snprintf(cell, sizeof cell, "-");
				if (pass == 0 && strlen(cell) > width[k])
					width[k] = strlen(cell);
				if (pass == 1)   /* the last column unpadded: no trailing blanks */
					printf("%-*s%s", k + 1 < ncol ? (int)width[k] : 0, cell, k + 1 < ncol ? "  " : "\n");
			}
		}
	}
}

/* ---------------------------------------------------------- commands */

/* A VM named by id or by its inventory name (which must be unique). */
static int resolve_vm(struct client *cl, const char *which, long long *id)
{
	char *end;
	long long n = strtoll(which, &end, 10);
	if (*which && !*end && n > 0) {
		*id = n;
		return 0;
	}
	json_t *reply = NULL;
	int r = client_call(cl, "GET", "vms", NULL, &reply);
	if (r < 0)
		return r;
	size_t i, found = 0;
	json_t *vm;
	json_array_foreach(json_object_get(reply, "vms"), i, vm)
		if (strcmp(str_of(vm, "name"), which) == 0) {
			*id = json_integer_value(json_object_get(vm, "id"));
			found++;
		}
	json_decref(reply);
	if (found == 0)
		return vela_error(VELA_E_NOTFOUND, "no VM named \"%s\"", which);
	if (found > 1)
		return vela_error(VELA_E_INVAL, "%zu VMs are named \"%s\": use the id", found, which);
	return 0;
}

static int print_reply_member(const struct cli *c, json_t *reply, const char *key)
{
	json_t *v = json_object_get(reply, key);
	if (c->json)
		cli_print_json(v ? v : reply);
	return 0;
}

/* POST body; print the new object (under key): as JSON, or its fields on
 * one line for scripts ("3", "3 /path/x.vmx", the token's secret). */
static int post_and_print(struct client *cl, const char *path, json_t *body, const char *key, const char *const *fields)
{
	json_t *reply = NULL;
	int r = client_call(cl, "POST", path, body, &reply);
	if (r < 0)
		return r;
	json_t *obj = json_object_get(reply, key);
	if (!cl->c->json) {
		for (size_t i = 0; fields[i]; i++) {
			json_t *v = json_object_get(obj, fields[i]);
			if (json_is_integer(v))
				printf("%s%lld", i ? " " : "", (long long)json_integer_value(v));
			else
				printf("%s%s", i ? " " : "", str_of(obj, fields[i]));
		}
		printf("\n");
	}
	print_reply_member(cl->c, reply, key);
	json_decref(reply);
	return 0;
}

/* Performance samples: a table (time, CPU, memory, disk rates), or the
 * JSON object. */
static int print_stats(struct client *cl, const char *path, bool host)
{
	json_t *reply = NULL;
	int r = client_call(cl, "GET", path, NULL, &reply);
	if (r < 0)
		return r;
	json_t *stats = json_object_get(reply, "stats");
	if (cl->c->json) {
		cli_print_json(stats);
		json_decref(reply);
		return 0;
	}
	if (host)
		printf("%-24s %6s %10s %10s\n", "TIME", "CPU", "MEM_MIB", "TOTAL_MIB");
	else
		printf("%-24s %6s %10s %12s %12s %12s %12s\n", "TIME", "CPU", "MEM_MIB", "DISK_RD_B/S", "DISK_WR_B/S",
		       "NET_RX_B/S", "NET_TX_B/S");
	size_t i;
	json_t *sm;
	json_array_foreach(json_object_get(stats, "samples"), i, sm) {
		char when[40];
		time_format_iso(json_integer_value(json_object_get(sm, "time")), when, sizeof when);
		double cpu = json_number_value(json_object_get(sm, "cpu"));
		long long mem = (long long)(json_integer_value(json_object_get(sm, "mem")) >> 20);
		if (host)
			printf("%-24s %6.2f %10lld %10lld\n", when, cpu, mem,
			       (long long)(json_integer_value(json_object_get(sm, "mem_total")) >> 20));
		else
			printf("%-24s %6.2f %10lld %12lld %12lld %12lld %12lld\n", when, cpu, mem,
			       (long long)json_integer_value(json_object_get(sm, "disk_rd")),
			       (long long)json_integer_value(json_object_get(sm, "disk_wr")),
			       (long long)json_integer_value(json_object_get(sm, "net_rx")),
			       (long long)json_integer_value(json_object_get(sm, "net_tx")));
	}
	json_decref(reply);
	return 0;
}

/* With --no-wait: the request answers 202 with its task; print the id. */
static int start_task(struct client *cl, const char *method, const char *path, json_t *body)
{
	json_t *reply = NULL;
	int r = client_call(cl, method, path, body, &reply);
	if (r < 0)
		return r;
	json_t *t = json_object_get(reply, "task");
	if (cl->c->json)
		cli_print_json(json_is_object(t) ? t : reply);
	else if (json_is_object(t))
		printf("%lld\n", (long long)json_integer_value(json_object_get(t, "id")));
	else   /* it ended before the answer: its id is a number */
		printf("%lld\n", (long long)json_integer_value(t));
	json_decref(reply);
	return 0;
}

/* KEY=VALUE words of `vm set` as the PATCH body. */
static int settings_body(const char *const *words, size_t n, json_t **out)
{
	json_t *body = json_object();
	for (size_t i = 0; i < n; i++) {
		const char *eq = strchr(words[i], '=');
		if (!eq || eq == words[i]) {
			json_decref(body);
			return vela_error(VELA_E_INVAL, "vm set: \"%s\" is not KEY=VALUE", words[i]);
		}
		CLEANUP_FREE char *key = xstrndup(words[i], (size_t)(eq - words[i]));
		const char *v = eq + 1;
		json_t *val;
		if (strcmp(key, "memsize") == 0 || strcmp(key, "vcpus") == 0) {
			uint64_t u;
			if (parse_u64(v, 1u << 21, &u) < 0) {
				json_decref(body);
				return vela_error(VELA_E_INVAL, "vm set: %s must be a number", key);
			}
			val = json_integer((json_int_t)u);
		} else if (strcmp(key, "add-disk") == 0 || strcmp(key, "add-nic") == 0 || strcmp(key, "remove") == 0) {
			/* add-disk=SIZE[:TYPE[:BUS]], add-nic=CONNECTION[:NETWORK],
			 * remove=DEVICE; each may come more than once. */
			const char *list = key[4] == 'd' ? "add_disks" : key[4] == 'n' ? "add_nics" : "remove_devices";
			json_t *arr = json_object_get(body, list);
			if (!arr)
				json_object_set_new(body, list, arr = json_array());
			CLEANUP_FREE char *copy = xstrdup(v);
			char *p2 = strchr(copy, ':'), *p3 = NULL;
			if (p2 && (*p2++ = '\0', (p3 = strchr(p2, ':'))))
				*p3++ = '\0';
			if (list[0] == 'r')
				json_array_append_new(arr, json_string(v));
			else if (list[4] == 'd')
				json_array_append_new(arr, json_pack("{s:s, s:s?, s:s?}", "size", copy, "type", p2 && *p2 ? p2 : NULL,
								     "bus", p3 && *p3 ? p3 : NULL));
			else
				json_array_append_new(arr, json_pack("{s:s, s:s?}", "connection", copy, "network",
								     p2 && *p2 ? p2 : NULL));
			continue;
		} else if (strcmp(key, "disk-mode") == 0) {
			/* disk-mode=ADDR:MODE */
			const char *colon = strrchr(v, ':');
			if (!colon || colon == v) {
				json_decref(body);
				return vela_error(VELA_E_INVAL, "vm set: disk-mode=ADDR:MODE, e.g. scsi0:0:independent-persistent");
			}
			json_t *modes = json_object_get(body, "disk_modes");
			if (!modes)
				json_object_set_new(body, "disk_modes", modes = json_object());
			CLEANUP_FREE char *addr = xstrndup(v, (size_t)(colon - v));
			json_object_set_new(modes, addr, json_string(colon + 1));
			continue;
		} else if (strcmp(key, "boot") == 0) {
			json_object_set_new(body, "boot_order", json_string(v));
			continue;
		} else if (strcmp(key, "nic") == 0) {
			bool b;
			if (parse_bool(v, &b) < 0) {
				json_decref(body);
				return vela_error(VELA_E_INVAL, "vm set: nic is on or off");
			}
			val = json_boolean(b);
		} else {
			val = json_string(v);
		}
		json_object_set_new(body, key, val);
	}
	*out = body;
	return 0;
}

/* vela vm snapshot create|list|revert|delete VM [NAME] through velad. */
static int snapshot_command(struct client *cl, const char *const *args, size_t n)
{
	const struct cli *c = cl->c;
	long long id;
	int r;
	if (n < 2)
		return vela_error(VELA_E_INVAL, "vm snapshot create|list|revert|delete VM [NAME]");
	const char *sub = args[0];
	if ((r = resolve_vm(cl, args[1], &id)) < 0)
		return r;
	json_t *reply = NULL;
	if (strcmp(sub, "list") == 0 && n == 2) {
		CLEANUP_FREE char *p = xasprintf("vms/%lld/snapshots", id);
		if ((r = client_call(cl, "GET", p, NULL, &reply)) < 0)
			return r;
		json_t *snaps = json_object_get(reply, "snapshots");
		if (c->json) {
			cli_print_json(snaps);
		} else if (json_array_size(snaps) == 0) {
			printf("no snapshots\n");
		} else {
			size_t i;
			json_t *sn;
			json_array_foreach(snaps, i, sn)
				printf("%s%s  %s  (parent %lld)\n", str_of(sn, "name"),
				       json_is_true(json_object_get(sn, "current")) ? " (current)" : "", str_of(sn, "created"),
				       (long long)json_integer_value(json_object_get(sn, "parent")));
		}
		json_decref(reply);
		return 0;
	}
	if (n != 3 || (strcmp(sub, "create") != 0 && strcmp(sub, "revert") != 0 && strcmp(sub, "delete") != 0))
		return vela_error(VELA_E_INVAL, "vm snapshot create|revert|delete VM NAME");
	CLEANUP_FREE char *p = strcmp(sub, "create") == 0 ? xasprintf("vms/%lld/snapshots", id)
							  : xasprintf("vms/%lld/snapshots/%s", id, sub);
	json_t *body = json_pack("{s:s}", "name", args[2]);
	if (c->description && strcmp(sub, "create") == 0)
		json_object_set_new(body, "description", json_string(c->description));
	if (c->memory && strcmp(sub, "create") == 0)
		json_object_set_new(body, "memory", json_true());
	if (c->quiesce && strcmp(sub, "create") == 0)
		json_object_set_new(body, "quiesce", json_true());
	if ((r = client_call(cl, "POST", p, body, &reply)) < 0)
		return r;
	json_t *res = json_object_get(reply, "snapshot");
	if (c->json)
		cli_print_json(res);
	else if (strcmp(sub, "create") == 0)
		printf("snapshot \"%s\" taken (%lld disks%s)\n", args[2], (long long)json_integer_value(json_object_get(res, "disks")),
		       json_is_true(json_object_get(res, "live")) ? ", live" : "");
	else
		printf("%s \"%s\": done%s\n", sub, args[2], json_is_true(json_object_get(res, "live")) ? " (live)" : "");
	json_decref(reply);
	return 0;
}

/* vela vm guest VM, vela vm guestinfo list|get|set|unset VM [KEY [VALUE]] */
static int guest_command(struct client *cl, const char *verb, const char *const *args, size_t n)
{
	const struct cli *c = cl->c;
	json_t *reply = NULL;
	long long id;
	int r;
	if (strcmp(verb, "guest") == 0) {
		if (n != 1)
			return vela_error(VELA_E_INVAL, "vm guest VM");
		if ((r = resolve_vm(cl, args[0], &id)) < 0)
			return r;
		CLEANUP_FREE char *p = xasprintf("vms/%lld/guest", id);
		if ((r = client_call(cl, "GET", p, NULL, &reply)) < 0)
			return r;
		json_t *g = json_object_get(reply, "guest");
		json_t *info = json_object_get(g, "info");
		if (c->json)
			cli_print_json(g);
		else
			printf("agent        %s\nheartbeat    %s\nos           %s\nkernel       %s\nhostname     %s\n",
			       str_of(g, "agent"), str_of(g, "heartbeat"), str_of(info, "os"), str_of(info, "kernel"),
			       str_of(info, "hostname"));
		json_decref(reply);
		return 0;
	}
	const char *op = n > 0 ? args[0] : "";
	bool list = strcmp(op, "list") == 0 && n == 2, get = strcmp(op, "get") == 0 && n == 3;
	bool set = strcmp(op, "set") == 0 && n == 4, unset = strcmp(op, "unset") == 0 && n == 3;
	if (!list && !get && !set && !unset)
		return vela_error(VELA_E_INVAL, "vm guestinfo list|get|set|unset VM [KEY [VALUE]]");
	if ((r = resolve_vm(cl, args[1], &id)) < 0)
		return r;
	CLEANUP_FREE char *p = xasprintf("vms/%lld/guestinfo", id);
	if (list || get) {
		char *esc = get ? lc.easy_escape(NULL, args[2], 0) : NULL;
		CLEANUP_FREE char *q = get ? xasprintf("%s?key=%s", p, esc ? esc : "") : xstrdup(p);
		lc.free(esc);
		if ((r = client_call(cl, "GET", q, NULL, &reply)) < 0)
			return r;
	} else {
		json_t *body = set ? json_pack("{s:s, s:s}", "key", args[2], "value", args[3]) : json_pack("{s:s}", "key", args[2]);
		if (!body)
			return vela_error(VELA_E_INVAL, "guestinfo: the key and value must be valid UTF-8");
		if ((r = client_call(cl, "PUT", p, body, &reply)) < 0)
			return r;
	}
	json_t *gi = json_object_get(reply, "guestinfo");
	if (c->json) {
		cli_print_json(gi);
	} else if (get) {
		printf("%s\n", str_of(gi, "value"));
	} else if (list) {
		const char *k;
		json_t *v;
		json_object_foreach(json_object_get(gi, "values"), k, v)
			printf("%s = %s\n", k, json_string_value(v));
	}
	json_decref(reply);
	return 0;
}

static int vm_command(struct client *cl, const char *verb, const char *const *args, size_t n)
{
	const struct cli *c = cl->c;
	json_t *reply = NULL;
	int r;
	long long id;
	if (strcmp(verb, "guest") == 0 || strcmp(verb, "guestinfo") == 0)
		return guest_command(cl, verb, args, n);
	if (strcmp(verb, "list") == 0 && n == 0) {
		if ((r = client_call(cl, "GET", "vms", NULL, &reply)) < 0)
			return r;
		static const char *const cols[] = { "id", "name", "state", "folder", "config", NULL };
		static const char *const heads[] = { "ID", "NAME", "STATE", "FOLDER", "CONFIG", NULL };
		print_table(c, json_object_get(reply, "vms"), cols, heads);
		json_decref(reply);
		return 0;
	}
	if (strcmp(verb, "register") == 0 && n == 1) {
		CLEANUP_FREE char *abs = args[0][0] == '[' || args[0][0] == '/' ? xstrdup(args[0]) : realpath(args[0], NULL);
		if (!abs)
			return vela_error_errno(errno, "%s", args[0]);
		json_t *body = json_pack("{s:s}", "config", abs);
		if (c->name)
			json_object_set_new(body, "name", json_string(c->name));
		if (c->folder)
			json_object_set_new(body, "folder", json_string(c->folder));
		static const char *const fields[] = { "id", NULL };
		return post_and_print(cl, "vms", body, "vm", fields);
	}
	if (strcmp(verb, "create") == 0 && n == 1) {
		json_t *body = json_pack("{s:s}", "name", args[0]);
		static const struct { const char *key; size_t off; bool num; } opts[] = {
			{ "datastore", offsetof(struct cli, datastore), false }, { "folder", offsetof(struct cli, folder), false },
			{ "guestOS", offsetof(struct cli, guest_os), false }, { "cdrom", offsetof(struct cli, cdrom), false },
			{ "memsize", offsetof(struct cli, memsize), true }, { "vcpus", offsetof(struct cli, vcpus), true } };
		for (size_t k = 0; k < ARRAY_SIZE(opts); k++) {
			const char *v = *(const char *const *)((const char *)c + opts[k].off);
			uint64_t u;
			if (!v)
				continue;
			if (opts[k].num && parse_u64(v, 1u << 20, &u) < 0) {
				json_decref(body);
				return vela_error_context(-VELA_E_RANGE, "--%s", opts[k].key);
			}
			json_object_set_new(body, opts[k].key, opts[k].num ? json_integer((json_int_t)u) : json_string(v));
		}
		json_t *disks = json_array();
		for (unsigned k = 0; k < c->n_disks; k++) {
			/* SIZE[:TYPE[:BUS]] */
			CLEANUP_FREE char *spec = xstrdup(c->disks[k]);
			char *type = strchr(spec, ':'), *bus = NULL;
			if (type) {
				*type++ = '\0';
				if ((bus = strchr(type, ':')))
					*bus++ = '\0';
			}
			json_t *d = json_pack("{s:s}", "size", spec);
			if (type && *type)
				json_object_set_new(d, "type", json_string(type));
			if (bus && *bus)
				json_object_set_new(d, "bus", json_string(bus));
			json_array_append_new(disks, d);
		}
		json_object_set_new(body, "disks", disks);
		static const char *const fields[] = { "id", "config", NULL };
		if (c->no_wait)
			return start_task(cl, "POST", "vms/create?wait=0", body);
		return post_and_print(cl, "vms/create", body, "vm", fields);
	}
	if (strcmp(verb, "snapshot") == 0)
		return snapshot_command(cl, args, n);
	if (n < 1)
		return vela_error(VELA_E_INVAL, "vm %s needs a VM (id or name)", verb);
	if ((r = resolve_vm(cl, args[0], &id)) < 0)
		return r;
	CLEANUP_FREE char *path = xasprintf("vms/%lld", id);
	CLEANUP_FREE char *power = xasprintf("vms/%lld/power%s", id, c->no_wait ? "?wait=0" : "");
	if (strcmp(verb, "unregister") == 0 && n == 1) {
		return client_call(cl, "DELETE", path, NULL, NULL);
	} else if (strcmp(verb, "delete") == 0 && n == 1) {
		if (!c->files)
			return client_call(cl, "DELETE", path, NULL, NULL);
		CLEANUP_FREE char *p = xasprintf("%s?files=1%s", path, c->no_wait ? "&wait=0" : "");
		if (c->no_wait)
			return start_task(cl, "DELETE", p, NULL);
		r = client_call(cl, "DELETE", p, NULL, &reply);
		if (r == 0 && !c->json) {
			json_t *d = json_object_get(reply, "deleted");
			printf("removed %zu files", json_array_size(json_object_get(d, "removed")));
			size_t i;
			json_t *k;
			json_array_foreach(json_object_get(d, "kept"), i, k)
				printf("%s%s", i ? ", " : "; kept (outside the VM's folder, or undeletable): ",
				       json_string_value(k));
			printf("\n");
		}
		if (r == 0)
			print_reply_member(c, reply, "deleted");
		json_decref(reply);
		return r;
	} else if (strcmp(verb, "stats") == 0 && n == 1) {
		CLEANUP_FREE char *p = xasprintf("vms/%lld/stats", id);
		return print_stats(cl, p, false);
	} else if (strcmp(verb, "set") == 0 && n >= 2) {
		json_t *body = NULL;
		if ((r = settings_body(args + 1, n - 1, &body)) < 0)
			return r;
		r = client_call(cl, "PATCH", path, body, &reply);
		if (r == 0 && !c->json) {
			json_t *pend = json_object_get(json_object_get(json_object_get(reply, "vm"), "status"), "pending_changes");
			size_t i;
			json_t *p;
			json_array_foreach(pend, i, p)
				printf("%s%s", i ? " " : "pending until the next power cycle: ", str_of(p, "key"));
			if (json_array_size(pend))
				printf("\n");
		}
		if (r == 0)
			print_reply_member(c, reply, "vm");
		json_decref(reply);
		return r;
	} else if (strcmp(verb, "autostart") == 0 && n == 1) {
		json_t *body = json_pack("{s:b}", "enabled", !c->off);
		static const struct { const char *key; size_t off; } nums[] = {
			{ "order", offsetof(struct cli, order) }, { "delay", offsetof(struct cli, delay) } };
		for (size_t k = 0; k < ARRAY_SIZE(nums); k++) {
			const char *v = *(const char *const *)((const char *)c + nums[k].off);
			uint64_t u;
			if (!v)
				continue;
			if (parse_u64(v, 9999, &u) < 0) {
				json_decref(body);
				return vela_error_context(-VELA_E_RANGE, "--%s", nums[k].key);
			}
			json_object_set_new(body, nums[k].key, json_integer((json_int_t)u));
		}
		if (c->stop_action)
			json_object_set_new(body, "stop", json_string(c->stop_action));
		CLEANUP_FREE char *p = xasprintf("vms/%lld/autostart", id);
		r = client_call(cl, "PUT", p, body, &reply);
		if (r == 0)
			print_reply_member(c, reply, "autostart");
		json_decref(reply);
		return r;
	} else if ((strcmp(verb, "get") == 0 || strcmp(verb, "getstate") == 0 || strcmp(verb, "status") == 0) && n == 1) {
		r = client_call(cl, "GET", path, NULL, &reply);
		if (r == 0 && !c->json)
			printf("%s\n", str_of(json_object_get(reply, "vm"), "state"));
		if (r == 0)
			print_reply_member(c, reply, "vm");
	} else if (strcmp(verb, "answer") == 0 && n == 2) {
		CLEANUP_FREE char *p = xasprintf("vms/%lld/answer", id);
		r = client_call(cl, "POST", p, json_pack("{s:s}", "choice", args[1]), &reply);
	} else if ((strcmp(verb, "start") == 0 || strcmp(verb, "pause") == 0 || strcmp(verb, "unpause") == 0 ||
		    strcmp(verb, "suspend") == 0 || strcmp(verb, "resume") == 0) && n == 1) {
		json_t *body = json_pack("{s:s}", "op", verb);
		if (c->no_wait)
			return start_task(cl, "POST", power, body);
		r = client_call(cl, "POST", power, body, &reply);
	} else if ((strcmp(verb, "stop") == 0 || strcmp(verb, "reset") == 0) && n <= 2) {
		json_t *body = json_pack("{s:s, s:s}", "op", verb, "mode", n == 2 ? args[1] : "trysoft");
		if (c->no_wait)
			return start_task(cl, "POST", power, body);
		r = client_call(cl, "POST", power, body, &reply);
	} else {
		return vela_error(VELA_E_INVAL, "unknown or malformed vm command \"%s\" for velad", verb);
	}
	if (r == 0 && json_object_get(reply, "status")) {
		if (c->json)
			cli_print_json(json_object_get(reply, "status"));
		else
			printf("%s\n", str_of(json_object_get(reply, "status"), "state"));
	}
	json_decref(reply);
	return r;
}

static volatile sig_atomic_t follow_stop;
static void on_follow_signal(int sig)
{
	(void)sig;
	follow_stop = 1;
}

static void print_event(const struct cli *c, json_t *e)
{
	if (c->json) {
		char *s = json_dumps(e, JSON_COMPACT);
		printf("%s\n", s);
		free(s);
		return;
	}
	char when[40], where[32];
	time_format_iso(json_integer_value(json_object_get(e, "time")), when, sizeof when);
	long long vm = json_integer_value(json_object_get(e, "vm"));
	if (vm)
		snprintf(where, sizeof where, "vm %lld", vm);
	else
		snprintf(where, sizeof where, "host");
	printf("%s %-7s %-8s %-20s %-10s %s\n", when, str_of(e, "severity"), where, str_of(e, "type"),
	       json_is_string(json_object_get(e, "user")) ? str_of(e, "user") : "-", str_of(e, "message"));
	fflush(stdout);
}

struct follow {
	const struct cli *c;
	struct strbuf line;
	unsigned shown;
};

/* SSE: "data: {event}" lines; comments (": keep-alive") and ids skipped. */
static size_t on_stream_data(char *p, size_t size, size_t n, void *arg)
{
	struct follow *f = arg;
	for (size_t i = 0; i < size * n; i++) {
		if (p[i] != '\n') {
			strbuf_append(&f->line, p + i, 1);
			continue;
		}
		if (f->line.len > 6 && strncmp(f->line.data, "data: ", 6) == 0) {
			json_t *e = json_loads(f->line.data + 6, 0, NULL);
			if (e) {
				print_event(f->c, e);
				f->shown++;
			}
			json_decref(e);
		}
		strbuf_reset(&f->line);
		if (f->c->count && f->shown >= f->c->count)
			return 0;   /* enough: end the transfer */
	}
	return size * n;
}

static int on_stream_progress(void *arg, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
	(void)arg, (void)a, (void)b, (void)c, (void)d;
	return follow_stop ? 1 : 0;
}

static int follow_stream(struct client *cl, const char *path)
{
	struct follow f = { .c = cl->c };
	signal(SIGINT, on_follow_signal);
	signal(SIGTERM, on_follow_signal);
	CLEANUP_FREE char *url = xasprintf("%s/api/v1/%s", cl->base, path);
	CLEANUP_FREE char *auth = cl->token ? xasprintf("Authorization: Bearer %s", cl->token) : NULL;
	struct curl_slist *h = auth ? lc.slist_append(NULL, auth) : NULL;
	CURL *k = cl->curl;
	lc.easy_reset(k);
	client_transport(cl, k);
	lc.easy_setopt(k, CURLOPT_URL, url);
	lc.easy_setopt(k, CURLOPT_HTTPHEADER, h);
	lc.easy_setopt(k, CURLOPT_WRITEFUNCTION, on_stream_data);
	lc.easy_setopt(k, CURLOPT_WRITEDATA, &f);
	lc.easy_setopt(k, CURLOPT_XFERINFOFUNCTION, on_stream_progress);
	lc.easy_setopt(k, CURLOPT_NOPROGRESS, 0L);
	lc.easy_setopt(k, CURLOPT_FAILONERROR, 1L);
	if (cl->c->timeout_s)
		lc.easy_setopt(k, CURLOPT_TIMEOUT, (long)cl->c->timeout_s);
	CURLcode rc = lc.easy_perform(k);
	lc.slist_free_all(h);
	strbuf_free(&f.line);
	/* Ends by --count (write aborted), --timeout, ^C or velad stopping. */
	if (rc == CURLE_OK || rc == CURLE_WRITE_ERROR || rc == CURLE_OPERATION_TIMEDOUT || rc == CURLE_ABORTED_BY_CALLBACK)
		return 0;
	long status = 0;
	lc.easy_getinfo(k, CURLINFO_RESPONSE_CODE, &status);
	return vela_error(status == 403 ? VELA_E_PERM : status == 401 ? VELA_E_SESSION : VELA_E_NOTCONN,
			  "event stream: %s%s", lc.easy_strerror(rc), status ? "" : "");
}

static int event_command(struct client *cl, const char *verb, size_t n)
{
	const struct cli *c = cl->c;
	long long vm = 0;
	int r;
	if (n > 0)
		return vela_error(VELA_E_INVAL, "event %s takes options only (--vm, --severity, --limit)", verb);
	if (c->vm && (r = resolve_vm(cl, c->vm, &vm)) < 0)
		return r;
	struct strbuf q = { 0 }, filters = { 0 };
	strbuf_puts(&filters, "");
	if (vm)
		strbuf_printf(&filters, "&vm=%lld", vm);
	if (c->severity) {
		for (const char *p = c->severity; *p; p++)
			if (!(*p >= 'a' && *p <= 'z')) {
				strbuf_free(&filters);
				return vela_error(VELA_E_INVAL, "--severity: info, warning, error or audit");
			}
		strbuf_printf(&filters, "&severity=%s", c->severity);
	}
	strbuf_printf(&q, "events?limit=%u%s", c->limit ? c->limit : 100, filters.data);
	json_t *reply = NULL;
	r = client_call(cl, "GET", q.data, NULL, &reply);
	if (r < 0) {
		strbuf_free(&q);
		strbuf_free(&filters);
		return r;
	}
	json_t *ev = json_object_get(reply, "events");
	long long after = 0;
	size_t i;
	json_t *e;
	if (strcmp(verb, "list") == 0) {
		if (c->json)
			cli_print_json(ev);
		else
			json_array_foreach(ev, i, e)
				print_event(c, e);
		json_decref(reply);
		strbuf_free(&q);
		strbuf_free(&filters);
		return 0;
	}
	if (strcmp(verb, "follow") != 0) {
		json_decref(reply);
		strbuf_free(&q);
		strbuf_free(&filters);
		return vela_error(VELA_E_INVAL, "unknown event command \"%s\" (list, follow)", verb);
	}
	/* follow: the recent ones, then new ones as they come (the server's
	 * event stream), until ^C or --count N new events or --timeout S. */
	json_array_foreach(ev, i, e) {
		print_event(c, e);
		after = json_integer_value(json_object_get(e, "id"));
	}
	json_decref(reply);
	CLEANUP_FREE char *stream = xasprintf("events/stream?after=%lld%s", after, filters.data);
	strbuf_free(&q);
	strbuf_free(&filters);
	return follow_stream(cl, stream);
}

static int simple_list(struct client *cl, const char *path, const char *key, const char *const *cols,
		       const char *const *heads)
{
	json_t *reply = NULL;
	int r = client_call(cl, "GET", path, NULL, &reply);
	if (r == 0)
		print_table(cl->c, json_object_get(reply, key), cols, heads);
	json_decref(reply);
	return r;
}

static void print_task(const struct cli *c, json_t *t)
{
	if (c->json) {
		cli_print_json(t);
		return;
	}
	printf("%lld %s %s %lld%%", (long long)json_integer_value(json_object_get(t, "id")), str_of(t, "type"),
	       str_of(t, "state"), (long long)json_integer_value(json_object_get(t, "progress")));
	json_t *err = json_object_get(t, "error");
	if (json_is_object(err))
		printf(": %s", str_of(err, "message"));
	printf("\n");
}

/* A task's error as ours: `vela task wait` fails as the task did. */
static int task_outcome(json_t *t)
{
	json_t *err = json_object_get(t, "error");
	if (!json_is_object(err))
		return 0;
	int code = (int)json_integer_value(json_object_get(err, "code"));
	return vela_error(code > 0 ? code : VELA_E_INTERNAL, "task %lld: %s",
			  (long long)json_integer_value(json_object_get(t, "id")), str_of(err, "message"));
}

static int task_command(struct client *cl, const char *verb, const char *const *args, size_t n)
{
	const struct cli *c = cl->c;
	json_t *reply = NULL;
	int r;
	if (strcmp(verb, "list") == 0 && n == 0) {
		long long vm = 0;
		if (c->vm && (r = resolve_vm(cl, c->vm, &vm)) < 0)
			return r;
		if (c->state && strcmp(c->state, "running") != 0 && strcmp(c->state, "success") != 0 &&
		    strcmp(c->state, "error") != 0 && strcmp(c->state, "cancelled") != 0)
			return vela_error(VELA_E_INVAL, "--state: running, success, error or cancelled");
		CLEANUP_FREE char *p = xasprintf("tasks?limit=%u&vm=%lld%s%s", c->limit ? c->limit : 100, vm,
						 c->state ? "&state=" : "", c->state ? c->state : "");
		static const char *const cols[] = { "id", "type", "vm", "user", "state", "progress", "target", NULL };
		static const char *const heads[] = { "ID", "TYPE", "VM", "USER", "STATE", "PROGRESS", "TARGET", NULL };
		return simple_list(cl, p, "tasks", cols, heads);
	}
	uint64_t id;
	if (n != 1 || parse_u64(args[0], INT64_MAX, &id) < 0 || id == 0)
		return vela_error(VELA_E_INVAL, "task %s needs a task id", verb);
	if (strcmp(verb, "get") == 0 || strcmp(verb, "wait") == 0) {
		bool wait = strcmp(verb, "wait") == 0;
		int64_t deadline = time_mono_ms() + (c->timeout_s ? c->timeout_s : 86400) * 1000ll;
		for (;;) {
			int64_t left = (deadline - time_mono_ms()) / 1000;
			CLEANUP_FREE char *p = xasprintf("tasks/%llu?wait=%lld", (unsigned long long)id,
							 (long long)(wait ? (left > 600 ? 600 : left < 1 ? 0 : left) : 0));
			if ((r = client_call(cl, "GET", p, NULL, &reply)) < 0)
				return r;
			json_t *t = json_object_get(reply, "task");
			if (!wait || strcmp(str_of(t, "state"), "running") != 0 || time_mono_ms() >= deadline) {
				print_task(c, t);
				r = wait && strcmp(str_of(t, "state"), "running") == 0
					    ? vela_error(VELA_E_TIMEOUT, "task %llu still runs", (unsigned long long)id)
				    : wait ? task_outcome(t) : 0;
				json_decref(reply);
				return r;
			}
			json_decref(reply);
		}
	}
	if (strcmp(verb, "cancel") == 0) {
		CLEANUP_FREE char *p = xasprintf("tasks/%llu/cancel", (unsigned long long)id);
		r = client_call(cl, "POST", p, NULL, &reply);
		if (r == 0)
			print_task(c, json_object_get(reply, "task"));
		json_decref(reply);
		return r;
	}
	return vela_error(VELA_E_INVAL, "unknown task command \"%s\" (list, get, wait, cancel)", verb);
}

/*
 * velad ends an upload it cannot finish (cancelled, datastore full) by
 * closing the connection at once, so the sender stops sending; the reason
 * is in the upload's task.  r: the connection error, kept when no task
 * tells more.
 */
static int upload_outcome(struct client *cl, const char *ds, const char *rel, int r)
{
	CLEANUP_FREE char *msg = xstrdup(vela_errmsg());
	CLEANUP_FREE char *target = xasprintf("[%s] %s", ds, rel);
	json_t *reply = NULL;
	if (client_call(cl, "GET", "tasks?limit=50", NULL, &reply) == 0) {
		json_t *tasks = json_object_get(reply, "tasks"), *t;
		for (size_t i = json_array_size(tasks); i-- > 0;) {
			t = json_array_get(tasks, i);
			if (strcmp(str_of(t, "type"), "datastore.upload") == 0 && strcmp(str_of(t, "target"), target) == 0) {
				if (json_is_object(json_object_get(t, "error"))) {
					r = task_outcome(t);
					json_decref(reply);
					return r;
				}
				break;
			}
		}
	}
	json_decref(reply);
	return vela_error(-r, "%s", msg);
}

/* "90", "90s", "30m", "24h", "7d" in seconds. */
static int parse_duration(const char *s, int64_t *out)
{
	char *end = NULL;
	long long v = s ? strtoll(s, &end, 10) : -1;
	int64_t mult = !end || !*end || strcmp(end, "s") == 0 ? 1 : strcmp(end, "m") == 0 ? 60 : strcmp(end, "h") == 0 ? 3600
		       : strcmp(end, "d") == 0 ? 86400 : 0;
	if (!s || v <= 0 || !mult || v > 366LL * 86400)
		return vela_error(VELA_E_INVAL, "--every: a duration like 3600, 30m, 24h or 7d, not \"%s\"", s ? s : "");
	*out = v * mult;
	return 0;
}

/* vela backup VM ..., vela backup list VM, vela backup schedule VM|list|remove [VM] */
static int backup_command(struct client *cl, const char *verb, const char *const *args, size_t n)
{
	const struct cli *c = cl->c;
	json_t *reply = NULL;
	long long id = 0;
	int r;
	if (strcmp(verb, "schedule") == 0 && n == 1 && strcmp(args[0], "list") == 0) {
		if ((r = client_call(cl, "GET", "backup-schedules", NULL, &reply)) < 0)
			return r;
		static const char *const cols[] = { "vm", "name", "datastore", "folder", "every_s", "keep", NULL };
		static const char *const heads[] = { "VM", "NAME", "DATASTORE", "FOLDER", "EVERY-S", "KEEP", NULL };
		print_table(c, json_object_get(reply, "schedules"), cols, heads);
		json_decref(reply);
		return 0;
	}
	if (strcmp(verb, "list") == 0 && n == 1) {
		if (!c->datastore)
			return vela_error(VELA_E_INVAL, "backup list VM --datastore D [--folder F]");
		if ((r = resolve_vm(cl, args[0], &id)) < 0)
			return r;
		char *ds = lc.easy_escape(NULL, c->datastore, 0);
		char *folder = lc.easy_escape(NULL, c->folder ? c->folder : "backups", 0);
		CLEANUP_FREE char *p = xasprintf("vms/%lld/backups?datastore=%s&folder=%s", id, ds ? ds : "", folder ? folder : "");
		lc.free(ds);
		lc.free(folder);
		if ((r = client_call(cl, "GET", p, NULL, &reply)) < 0)
			return r;
		static const char *const cols[] = { "folder", "created", "incremental", "builds_on", "bytes", NULL };
		static const char *const heads[] = { "BACKUP", "CREATED", "INCREMENTAL", "BUILDS-ON", "BYTES", NULL };
		print_table(c, json_object_get(reply, "backups"), cols, heads);
		json_decref(reply);
		return 0;
	}
	if (strcmp(verb, "schedule") == 0 && n == 2 && strcmp(args[0], "remove") == 0) {
		if ((r = resolve_vm(cl, args[1], &id)) < 0)
			return r;
		CLEANUP_FREE char *p = xasprintf("vms/%lld/backup-schedule", id);
		if ((r = client_call(cl, "DELETE", p, NULL, &reply)) == 0 && !c->json)
			printf("no more scheduled backups of %s\n", args[1]);
		json_decref(reply);
		return r;
	}
	if (strcmp(verb, "schedule") == 0 && n == 1) {
		int64_t every = 0;
		uint64_t keep = 0;
		if (!c->datastore || !c->retain)
			return vela_error(VELA_E_INVAL, "backup schedule: --datastore, --every and --retain are needed");
		if ((r = parse_duration(c->every, &every)) < 0)
			return r;
		if ((r = parse_u64(c->retain, 1000, &keep)) < 0)
			return vela_error_context(r, "--retain");
		if ((r = resolve_vm(cl, args[0], &id)) < 0)
			return r;
		json_t *body = json_pack("{s:s, s:I, s:I, s:b, s:b, s:b, s:b}", "datastore", c->datastore, "every",
					 (json_int_t)every, "keep", (json_int_t)keep, "quiesce", c->quiesce, "compress", c->compress,
					 "now", c->now, "incremental", c->incremental);
		if (c->folder)
			json_object_set_new(body, "folder", json_string(c->folder));
		CLEANUP_FREE char *p = xasprintf("vms/%lld/backup-schedule", id);
		if ((r = client_call(cl, "PUT", p, body, &reply)) == 0) {
			if (c->json)
				cli_print_json(json_object_get(reply, "schedules"));
			else
				printf("%s: a backup every %lld s into [%s] %s, the newest %llu kept\n", args[0], (long long)every,
				       c->datastore, c->folder ? c->folder : "backups", (unsigned long long)keep);
		}
		json_decref(reply);
		return r;
	}
	if (n != 0)
		return vela_error(VELA_E_INVAL, "backup VM --datastore D | backup schedule VM|list|remove [VM]");
	if (!c->datastore)
		return vela_error(VELA_E_INVAL, "backup through velad: --datastore names where the backup goes");
	if ((r = resolve_vm(cl, verb, &id)) < 0)
		return r;
	json_t *body = json_pack("{s:s, s:b, s:b, s:b}", "datastore", c->datastore, "quiesce", c->quiesce, "compress",
				 c->compress, "incremental", c->incremental);
	if (c->folder)
		json_object_set_new(body, "folder", json_string(c->folder));
	if (c->retain) {
		uint64_t keep = 0;
		if ((r = parse_u64(c->retain, 1000, &keep)) < 0 || keep == 0) {
			json_decref(body);
			return vela_error(VELA_E_INVAL, "--retain: 1 to 1000");
		}
		json_object_set_new(body, "keep", json_integer((json_int_t)keep));
	}
	CLEANUP_FREE char *p = xasprintf("vms/%lld/backup", id);
	if (c->no_wait)
		return start_task(cl, "POST", p, body);
	if ((r = client_call(cl, "POST", p, body, &reply)) < 0)
		return r;
	json_t *b = json_object_get(reply, "backup");
	if (c->json)
		cli_print_json(b);
	else
		printf("%s (%lld bytes, %s%s)\n", str_of(b, "folder"), (long long)json_integer_value(json_object_get(b, "bytes")),
		       json_is_true(json_object_get(b, "live")) ? "live" : "offline",
		       json_is_true(json_object_get(b, "quiesced")) ? ", quiesced" : "");
	json_decref(reply);
	return 0;
}

static int other_command(struct client *cl, const char *noun, const char *verb, const char *const *args, size_t n)
{
	const struct cli *c = cl->c;
	json_t *reply = NULL;
	int r;
	if (strcmp(noun, "backup") == 0)
		return backup_command(cl, verb, args, n);
	if (strcmp(noun, "host") == 0 && strcmp(verb, "info") == 0 && n == 0) {
		if ((r = client_call(cl, "GET", "host", NULL, &reply)) < 0)
			return r;
		json_t *h = json_object_get(reply, "host");
		if (c->json)
			cli_print_json(h);
		else
			printf("name: %s\nversion: %s\nhome: %s\nvms: %lld (%lld running)\n", str_of(h, "name"),
			       str_of(h, "version"), str_of(h, "home"), (long long)json_integer_value(json_object_get(h, "vms")),
			       (long long)json_integer_value(json_object_get(h, "running")));
		json_decref(reply);
		return 0;
	}
	if (strcmp(noun, "host") == 0 && strcmp(verb, "autostart") == 0 && n == 0) {
		static const char *const cols[] = { "order", "vm", "name", "enabled", "delay", "stop", NULL };
		static const char *const heads[] = { "ORDER", "VM", "NAME", "ENABLED", "DELAY", "STOP", NULL };
		return simple_list(cl, "autostart", "autostart", cols, heads);
	}
	if (strcmp(noun, "host") == 0 && strcmp(verb, "stats") == 0 && n == 0)
		return print_stats(cl, "host/stats", true);
	if (strcmp(noun, "host") == 0 && strcmp(verb, "autostop") == 0 && n == 0)
		return client_call(cl, "POST", "host/autostop", NULL, NULL);
	if (strcmp(noun, "ds") == 0 && strcmp(verb, "browse") == 0 && (n == 1 || n == 2)) {
		static const char *const cols[] = { "type", "size", "name", NULL };
		static const char *const heads[] = { "TYPE", "SIZE", "NAME", NULL };
		char *e = lc.easy_escape(cl->curl, n == 2 ? args[1] : "", 0);
		CLEANUP_FREE char *p = xasprintf("datastores/%s/browse?path=%s", args[0], e);
		lc.free(e);
		return simple_list(cl, p, "entries", cols, heads);
	}
	if (strcmp(noun, "ds") == 0 && (strcmp(verb, "upload") == 0 || strcmp(verb, "download") == 0) && n == 3) {
		bool up = strcmp(verb, "upload") == 0;
		const char *remote = up ? args[2] : args[1], *local = up ? args[1] : args[2];
		CLEANUP_FREE char *p = xasprintf("datastores/%s/files/%s", args[0], remote);
		if (up) {
			FILE *f = fopen(local, "rb");
			if (!f)
				return vela_error_errno(errno, "%s", local);
			r = client_request(cl, "PUT", p, NULL, f, NULL, &reply);
			fclose(f);
			if (r == -VELA_E_NOTCONN)
				r = upload_outcome(cl, args[0], remote, r);
			if (r == 0)
				print_reply_member(c, reply, "file");
			json_decref(reply);
			return r;
		}
		/* Into a temporary file first: a failed download leaves nothing. */
		CLEANUP_FREE char *tmp = xasprintf("%s.partial", local);
		FILE *f = fopen(tmp, "wbx");
		if (!f)
			return vela_error_errno(errno, "%s", tmp);
		r = client_request(cl, "GET", p, NULL, NULL, f, NULL);
		if (fclose(f) != 0 && r == 0)
			r = vela_error_errno(errno, "%s", tmp);
		if (r == 0 && rename(tmp, local) < 0)
			r = vela_error_errno(errno, "%s", local);
		if (r < 0)
			unlink(tmp);
		return r;
	}
	if (strcmp(noun, "ds") == 0 && strcmp(verb, "add") == 0 && n == 2) {
		CLEANUP_FREE char *abs = args[1][0] == '/' ? xstrdup(args[1]) : realpath(args[1], NULL);
		if (!abs)
			return vela_error_errno(errno, "%s", args[1]);
		static const char *const fields[] = { "name", "path", NULL };
		return post_and_print(cl, "datastores", json_pack("{s:s, s:s}", "name", args[0], "path", abs), "datastore",
				      fields);
	}
	if (strcmp(noun, "ds") == 0 && strcmp(verb, "remove") == 0 && n == 1) {
		char *e = lc.easy_escape(cl->curl, args[0], 0);
		CLEANUP_FREE char *p = xasprintf("datastores/%s", e);
		lc.free(e);
		return client_call(cl, "DELETE", p, NULL, NULL);
	}
	if (strcmp(noun, "task") == 0)
		return task_command(cl, verb, args, n);
	if (strcmp(noun, "question") == 0 && strcmp(verb, "list") == 0 && n == 0) {
		if ((r = client_call(cl, "GET", "questions", NULL, &reply)) < 0)
			return r;
		json_t *rows = json_array(), *qs = json_object_get(reply, "questions");
		size_t i;
		json_t *q;
		json_array_foreach(qs, i, q) {
			json_t *question = json_object_get(q, "question");
			CLEANUP_FREE char *choices = json_dumps(json_object_get(question, "choices"), JSON_COMPACT);
			json_array_append_new(rows, json_pack("{s:O, s:O, s:s, s:O}", "vm", json_object_get(q, "vm"), "name",
							      json_object_get(q, "name"), "choices", choices ? choices : "",
							      "text", json_object_get(question, "text")));
		}
		static const char *const cols[] = { "vm", "name", "choices", "text", NULL };
		static const char *const heads[] = { "VM", "NAME", "CHOICES", "QUESTION", NULL };
		if (c->json)
			cli_print_json(qs);
		else
			print_table(c, rows, cols, heads);
		json_decref(rows);
		json_decref(reply);
		return 0;
	}
	if (strcmp(noun, "ds") == 0 && strcmp(verb, "list") == 0 && n == 0) {
		static const char *const cols[] = { "name", "capacity", "free", "path", NULL };
		static const char *const heads[] = { "NAME", "CAPACITY", "FREE", "PATH", NULL };
		return simple_list(cl, "datastores", "datastores", cols, heads);
	}
	if (strcmp(noun, "perm") == 0) {
		static const char *const cols[] = { "id", "principal", "scope", "role", NULL };
		static const char *const heads[] = { "ID", "PRINCIPAL", "SCOPE", "ROLE", NULL };
		if (strcmp(verb, "list") == 0 && n == 0)
			return simple_list(cl, "permissions", "permissions", cols, heads);
		if (strcmp(verb, "grant") == 0 && n == 3) {
			static const char *const fields[] = { "id", NULL };
			return post_and_print(cl, "permissions",
					      json_pack("{s:s, s:s, s:s}", "principal", args[0], "scope", args[1], "role",
							args[2]),
					      "permission", fields);
		}
		if (strcmp(verb, "revoke") == 0 && n == 1) {
			CLEANUP_FREE char *p = xasprintf("permissions/%s", args[0]);
			return client_call(cl, "DELETE", p, NULL, NULL);
		}
	}
	if (strcmp(noun, "token") == 0) {
		static const char *const cols[] = { "id", "user", "name", "expires", NULL };
		static const char *const heads[] = { "ID", "USER", "NAME", "EXPIRES", NULL };
		if (strcmp(verb, "list") == 0 && n == 0)
			return simple_list(cl, "tokens", "tokens", cols, heads);
		if (strcmp(verb, "create") == 0 && n == 1) {
			static const char *const fields[] = { "secret", NULL };
			return post_and_print(cl, "tokens", json_pack("{s:s}", "name", args[0]), "token", fields);
		}
		if (strcmp(verb, "delete") == 0 && n == 1) {
			CLEANUP_FREE char *p = xasprintf("tokens/%s", args[0]);
			return client_call(cl, "DELETE", p, NULL, NULL);
		}
	}
	return vela_error(VELA_E_INVAL, "unknown or malformed command: %s %s", noun, verb);
}

int cmd_remote(const struct cli *c, const char *const *words, size_t n)
{
	if (n < 2)
		return cli_usage_error("usage: vela %s VERB ...", words[0]);
	int r = curl_load();
	if (r < 0)
		return cli_fail(c, r);
	lc.global_init(CURL_GLOBAL_DEFAULT);
	struct client *cl = NULL;
	r = client_open(c, &cl);
	if (r == 0) {
		if (strcmp(words[0], "vm") == 0)
			r = vm_command(cl, words[1], words + 2, n - 2);
		else if (strcmp(words[0], "event") == 0)
			r = event_command(cl, words[1], n - 2);
		else
			r = other_command(cl, words[0], words[1], words + 2, n - 2);
	}
	if (r < 0) {
		/* Keep the message: logging out on close makes a request too. */
		CLEANUP_FREE char *msg = xstrdup(vela_errmsg());
		client_close(cl);
		vela_error(-r, "%s", msg);
		lc.global_cleanup();
		return cli_fail(c, r);
	}
	client_close(cl);
	lc.global_cleanup();
	return 0;
}
