/* access.c - roles, grants and API tokens. */
#include "common.h"
#include "internal.h"

#include <string.h>


static const char *const role_names[] = { "none", "readonly", "operator", "admin" };

const char *host_role_name(enum host_role r)
{
	return (unsigned)r < ARRAY_SIZE(role_names) ? role_names[r] : "none";
}

int host_role_parse(const char *s, enum host_role *out)
{
	int i = host_name_index(role_names, ARRAY_SIZE(role_names), 1, s);   /* "none" is no role to grant */
	if (i < 0)
		return vela_error(VELA_E_INVAL, "unknown role \"%.40s\" (readonly, operator, admin)", s ? s : "");
	*out = (enum host_role)i;
	return 0;
}

struct grant {
	enum { SCOPE_HOST, SCOPE_FOLDER, SCOPE_VM } kind;
	char *folder;
	int64_t vm;
	enum host_role role;
};

struct host_access {
	bool superuser;
	struct grant *g;
	size_t n;
};

static int parse_scope(const char *scope, struct grant *g)
{
	memset(g, 0, sizeof *g);
	if (scope && strcmp(scope, "host") == 0) {
		g->kind = SCOPE_HOST;
		return 0;
	}
	if (scope && str_starts_with(scope, "folder:") && host_folder_ok(scope + 7)) {
		g->kind = SCOPE_FOLDER;
		g->folder = xstrdup(scope + 7);
		return 0;
	}
	uint64_t id;
	if (scope && str_starts_with(scope, "vm:") && parse_u64(scope + 3, INT64_MAX, &id) == 0 && id > 0) {
		g->kind = SCOPE_VM;
		g->vm = (int64_t)id;
		return 0;
	}
	return vela_error(VELA_E_INVAL, "bad scope \"%.100s\" (host, folder:/a/b or vm:ID)", scope ? scope : "");
}

static bool principal_ok(const char *p)
{
	const char *name = str_starts_with(p, "user:") ? p + 5 : str_starts_with(p, "group:") ? p + 6 : NULL;
	if (!name || !*name || strlen(name) > 64)
		return false;
	for (const char *c = name; *c; c++)
		if (!(*c == '_' || *c == '-' || *c == '.' || *c == '@' || (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
		      (*c >= '0' && *c <= '9')))
			return false;
	return true;
}

int host_access_load(struct host *h, const struct host_principal *p, struct host_access **out)
{
	struct host_access *a = xcalloc(1, sizeof *a);
	a->superuser = p->superuser;
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	int r = host_db_prepare(h, "SELECT principal, scope, role FROM grants", &st);
	int rc = SQLITE_DONE;
	while (r == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *who = (const char *)sqlite3_column_text(st, 0);
		bool match = p->user && str_starts_with(who, "user:") && strcmp(who + 5, p->user) == 0;
		for (size_t i = 0; !match && i < p->n_groups; i++)
			match = str_starts_with(who, "group:") && strcmp(who + 6, p->groups[i]) == 0;
		struct grant g;
		enum host_role role;
		if (!match || host_role_parse((const char *)sqlite3_column_text(st, 2), &role) < 0 ||
		    parse_scope((const char *)sqlite3_column_text(st, 1), &g) < 0)
			continue;
		g.role = role;
		a->g = xrealloc(a->g, (a->n + 1) * sizeof *a->g);
		a->g[a->n++] = g;
	}
	if (r == 0 && rc != SQLITE_DONE)
		r = host_db_fail(h, "read grants");
	pthread_mutex_unlock(&h->db_lock);
	vela_error_clear();   /* skipped bad rows leave no message behind */
	if (r < 0) {
		host_access_free(a);
		return r;
	}
	*out = a;
	return 0;
}

void host_access_free(struct host_access *a)
{
	if (!a)
		return;
	for (size_t i = 0; i < a->n; i++)
		free(a->g[i].folder);
	free(a->g);
	free(a);
}

static enum host_role strongest(const struct host_access *a, int64_t vm, const char *folder)
{
	if (a->superuser)
		return HOST_ROLE_ADMIN;
	enum host_role best = HOST_ROLE_NONE;
	for (size_t i = 0; i < a->n; i++) {
		const struct grant *g = &a->g[i];
		bool covers = g->kind == SCOPE_HOST;
		if (g->kind == SCOPE_FOLDER && folder) {
			size_t n = strlen(g->folder);
			covers = strcmp(g->folder, "/") == 0 ||
				 (strncmp(folder, g->folder, n) == 0 && (folder[n] == '\0' || folder[n] == '/'));
		}
		if (g->kind == SCOPE_VM)
			covers = vm > 0 && g->vm == vm;
		if (covers && g->role > best)
			best = g->role;
	}
	return best;
}

enum host_role host_access_host(const struct host_access *a)
{
	return strongest(a, 0, NULL);
}

enum host_role host_access_folder(const struct host_access *a, const char *folder)
{
	return strongest(a, 0, folder);
}

enum host_role host_access_vm(const struct host_access *a, int64_t vm_id, const char *folder)
{
	return strongest(a, vm_id, folder);
}

int host_grant(struct host *h, const char *by, const char *principal, const char *scope, const char *role, json_t **out)
{
	struct grant g;
	enum host_role r_role;
	if (!principal || !principal_ok(principal))
		return vela_error(VELA_E_INVAL, "bad principal \"%.80s\" (user:NAME or group:NAME)", principal ? principal : "");
	int r = parse_scope(scope, &g);
	free(g.folder);
	if (r < 0 || (r = host_role_parse(role, &r_role)) < 0)
		return r;
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	r = host_db_prepare(h, "INSERT INTO grants(principal, scope, role) VALUES(?,?,?)"
		       " ON CONFLICT(principal, scope) DO UPDATE SET role = excluded.role", &st);
	int64_t id = 0;
	if (r == 0) {
		sqlite3_bind_text(st, 1, principal, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, scope, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, role, -1, SQLITE_STATIC);
		if (sqlite3_step(st) != SQLITE_DONE)
			r = host_db_fail(h, "grant");
	}
	if (r == 0) {
		CLEANUP_STMT sqlite3_stmt *q = NULL;
		if ((r = host_db_prepare(h, "SELECT id FROM grants WHERE principal = ? AND scope = ?", &q)) == 0) {
			sqlite3_bind_text(q, 1, principal, -1, SQLITE_STATIC);
			sqlite3_bind_text(q, 2, scope, -1, SQLITE_STATIC);
			id = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int64(q, 0) : 0;
		}
	}
	if (r == 0) {
		CLEANUP_FREE char *msg = xasprintf("%s gets %s on %s", principal, role, scope);
		r = host_event_locked(h, HOST_AUDIT, 0, by, "permission.granted", msg);
	}
	pthread_mutex_unlock(&h->db_lock);
	if (r < 0)
		return r;
	*out = json_pack("{s:I, s:s, s:s, s:s}", "id", (json_int_t)id, "principal", principal, "scope", scope, "role", role);
	return 0;
}

int host_revoke(struct host *h, const char *by, int64_t id)
{
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	int r = host_db_prepare(h, "DELETE FROM grants WHERE id = ?", &st);
	if (r == 0) {
		sqlite3_bind_int64(st, 1, id);
		if (sqlite3_step(st) != SQLITE_DONE)
			r = host_db_fail(h, "revoke");
		else if (sqlite3_changes(h->db) == 0)
			r = vela_error(VELA_E_NOTFOUND, "no grant with id %lld", (long long)id);
	}
	if (r == 0) {
		CLEANUP_FREE char *msg = xasprintf("grant %lld revoked", (long long)id);
		r = host_event_locked(h, HOST_AUDIT, 0, by, "permission.revoked", msg);
	}
	pthread_mutex_unlock(&h->db_lock);
	return r;
}

int host_grant_list(struct host *h, json_t **out)
{
	return host_db_query(h, "SELECT id, principal, scope, role FROM grants ORDER BY id", out);
}

int host_token_create(struct host *h, const char *user, const char *name, int64_t expires_ms, const char *digest,
		      json_t **out)
{
	if (!host_name_ok(name, 100))
		return vela_error(VELA_E_BADNAME, "token name: 1-100 printable characters");
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	int64_t now = time_real_ms(), id = 0;
	int r = host_db_prepare(h, "INSERT INTO tokens(user, name, digest, created, expires) VALUES(?,?,?,?,?)", &st);
	if (r == 0) {
		sqlite3_bind_text(st, 1, user, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, digest, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 4, now);
		sqlite3_bind_int64(st, 5, expires_ms);
		if (sqlite3_step(st) != SQLITE_DONE)
			r = host_db_fail(h, "create token");
		else
			id = sqlite3_last_insert_rowid(h->db);
	}
	if (r == 0)
		r = host_event_locked(h, HOST_AUDIT, 0, user, "token.created", name);
	pthread_mutex_unlock(&h->db_lock);
	if (r < 0)
		return r;
	*out = json_pack("{s:I, s:s, s:s, s:I, s:I}", "id", (json_int_t)id, "user", user, "name", name, "created",
			 (json_int_t)now, "expires", (json_int_t)expires_ms);
	return 0;
}

int host_token_check(struct host *h, const char *digest, char **user)
{
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	int r = host_db_prepare(h, "SELECT user, expires FROM tokens WHERE digest = ?", &st);
	if (r == 0) {
		sqlite3_bind_text(st, 1, digest, -1, SQLITE_STATIC);
		int64_t now = time_real_ms();
		if (sqlite3_step(st) == SQLITE_ROW &&
		    (sqlite3_column_int64(st, 1) == 0 || sqlite3_column_int64(st, 1) > now))
			*user = xstrdup((const char *)sqlite3_column_text(st, 0));
		else
			r = vela_error(VELA_E_SESSION, "unknown or expired API token");
	}
	pthread_mutex_unlock(&h->db_lock);
	return r;
}

int host_token_list(struct host *h, const char *user, json_t **out)
{
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	int r = host_db_prepare(h, "SELECT id, user, name, created, expires FROM tokens WHERE ?1 IS NULL OR user = ?1 ORDER BY id",
			&st);
	if (r == 0) {
		if (user)
			sqlite3_bind_text(st, 1, user, -1, SQLITE_STATIC);
		r = host_db_rows(h, st, out);
	}
	pthread_mutex_unlock(&h->db_lock);
	return r;
}

int host_token_delete(struct host *h, const char *user, int64_t id)
{
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	int r = host_db_prepare(h, "DELETE FROM tokens WHERE id = ?1 AND (?2 IS NULL OR user = ?2)", &st);
	if (r == 0) {
		sqlite3_bind_int64(st, 1, id);
		if (user)
			sqlite3_bind_text(st, 2, user, -1, SQLITE_STATIC);
		if (sqlite3_step(st) != SQLITE_DONE)
			r = host_db_fail(h, "delete token");
		else if (sqlite3_changes(h->db) == 0)
			r = vela_error(VELA_E_NOTFOUND, "no API token %lld%s%s", (long long)id, user ? " of " : "",
				       user ? user : "");
	}
	pthread_mutex_unlock(&h->db_lock);
	return r;
}
