/*
 * task.c - long operations as tasks.
 *
 * A task's record lives in the database from its start (so a list shows it
 * at once and a restarted velad knows it was cut off); what changes while it
 * runs (progress, a cancel request) lives in memory, in the struct the
 * operation holds, and is merged into every answer about a running task.
 */
#include "common.h"
#include "internal.h"

#include <string.h>

#define TASKS_KEPT 10000

struct host_task {
	int64_t id;
	int64_t vm;
	bool cancelable;
	atomic_int progress;
	atomic_bool cancel;
	struct host_task *next;
	/* A task run by host_task_spawn. */
	struct host *h;
	host_task_fn fn;
	void *arg;
	void (*free_arg)(void *);
};

int64_t host_task_id(const struct host_task *t)
{
	return t->id;
}

void host_task_progress(struct host_task *t, unsigned percent)
{
	if (t)
		atomic_store(&t->progress, percent > 100 ? 100 : (int)percent);
}

bool host_task_cancelled(const struct host_task *t)
{
	return t && atomic_load(&t->cancel);
}

int host_task_begin(struct host *h, const char *user, int64_t vm, const char *type, const char *target,
		    bool cancelable, struct host_task **out)
{
	pthread_mutex_lock(&h->task_lock);
	if (h->tasks_closing) {
		pthread_mutex_unlock(&h->task_lock);
		return vela_error(VELA_E_BADSTATE, "velad is stopping: no new tasks");
	}
	pthread_mutex_unlock(&h->task_lock);
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	int r = host_db_prepare(h,
				"INSERT INTO tasks(type, vm, user, target, state, progress, cancelable, created)"
				" VALUES(?,?,?,?,'running',0,?,?)",
				&st);
	if (r == 0) {
		sqlite3_bind_text(st, 1, type, -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(st, 2, vm);
		sqlite3_bind_text(st, 3, user ? user : "velad", -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(st, 4, target ? target : "", -1, SQLITE_TRANSIENT);
		sqlite3_bind_int(st, 5, cancelable);
		sqlite3_bind_int64(st, 6, time_real_ms());
		if (sqlite3_step(st) != SQLITE_DONE)
			r = host_db_fail(h, "record task");
	}
	struct host_task *t = NULL;
	if (r == 0) {
		t = xcalloc(1, sizeof *t);
		t->id = sqlite3_last_insert_rowid(h->db);
		t->vm = vm;
		t->cancelable = cancelable;
	}
	pthread_mutex_unlock(&h->db_lock);
	if (r < 0)
		return r;
	pthread_mutex_lock(&h->task_lock);
	t->next = h->tasks;
	h->tasks = t;
	pthread_mutex_unlock(&h->task_lock);
	*out = t;
	return 0;
}

void host_task_end(struct host *h, struct host_task *t, int r, json_t *result)
{
	const char *state = r == 0 ? "success" : r == -VELA_E_CANCELED ? "cancelled" : "error";
	CLEANUP_FREE char *text = result ? json_dumps(result, JSON_COMPACT) : NULL;
	json_decref(result);
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	if (host_db_prepare(h,
			    "UPDATE tasks SET state = ?, progress = ?, ended = ?, result = ?, error_code = ?, error = ?"
			    " WHERE id = ?",
			    &st) == 0) {
		sqlite3_bind_text(st, 1, state, -1, SQLITE_STATIC);
		sqlite3_bind_int(st, 2, r == 0 ? 100 : atomic_load(&t->progress));
		sqlite3_bind_int64(st, 3, time_real_ms());
		if (text)
			sqlite3_bind_text(st, 4, text, -1, SQLITE_STATIC);
		if (r < 0) {
			sqlite3_bind_int(st, 5, -r);
			sqlite3_bind_text(st, 6, vela_errmsg(), -1, SQLITE_TRANSIENT);
		}
		sqlite3_bind_int64(st, 7, t->id);
		if (sqlite3_step(st) != SQLITE_DONE)
			vela_log(VELA_LOG_ERROR, "task %lld: %s", (long long)t->id, sqlite3_errmsg(h->db));
	}
	pthread_mutex_unlock(&h->db_lock);
	pthread_mutex_lock(&h->task_lock);
	for (struct host_task **p = &h->tasks; *p; p = &(*p)->next)
		if (*p == t) {
			*p = t->next;
			break;
		}
	pthread_cond_broadcast(&h->task_cond);
	pthread_mutex_unlock(&h->task_lock);
	free(t);
}

static void *task_thread(void *arg)
{
	struct host_task *t = arg;
	struct host *h = t->h;
	json_t *result = NULL;
	void *fn_arg = t->arg;
	void (*free_arg)(void *) = t->free_arg;
	int r = t->fn(h, t, fn_arg, &result);
	if (r < 0)
		json_decref(result), result = NULL;
	host_task_end(h, t, r, result);
	if (free_arg)
		free_arg(fn_arg);
	pthread_mutex_lock(&h->task_lock);
	h->task_threads--;
	pthread_cond_broadcast(&h->task_cond);
	pthread_mutex_unlock(&h->task_lock);
	return NULL;
}

int host_task_spawn(struct host *h, struct host_task *t, host_task_fn fn, void *arg, void (*free_arg)(void *))
{
	t->h = h;
	t->fn = fn;
	t->arg = arg;
	t->free_arg = free_arg;
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_t tid;
	pthread_mutex_lock(&h->task_lock);
	h->task_threads++;
	pthread_mutex_unlock(&h->task_lock);
	int e = pthread_create(&tid, &attr, task_thread, t);
	pthread_attr_destroy(&attr);
	if (e != 0) {
		pthread_mutex_lock(&h->task_lock);
		h->task_threads--;
		pthread_mutex_unlock(&h->task_lock);
		int r = vela_error(VELA_E_NORES, "task %lld: no thread: %s", (long long)t->id, strerror(e));
		host_task_end(h, t, r, NULL);
		if (free_arg)
			free_arg(arg);
		return r;
	}
	return 0;
}

/* Live fields of the running tasks into rows read from the database. */
static void merge_live(struct host *h, json_t *rows)
{
	size_t i;
	json_t *row;
	pthread_mutex_lock(&h->task_lock);
	json_array_foreach(rows, i, row) {
		json_t *state = json_object_get(row, "state");
		if (!json_is_string(state) || strcmp(json_string_value(state), "running") != 0)
			continue;
		int64_t id = json_integer_value(json_object_get(row, "id"));
		for (struct host_task *t = h->tasks; t; t = t->next)
			if (t->id == id) {
				json_object_set_new(row, "progress", json_integer(atomic_load(&t->progress)));
				json_object_set_new(row, "cancel_requested", json_boolean(atomic_load(&t->cancel)));
				break;
			}
	}
	pthread_mutex_unlock(&h->task_lock);
}

/* Rows as the API shows them: result parsed, error as {code, name, message}. */
static void shape_rows(json_t *rows)
{
	size_t i;
	json_t *row;
	json_array_foreach(rows, i, row) {
		const char *text = json_string_value(json_object_get(row, "result"));
		json_object_set_new(row, "result", text ? json_loads(text, 0, NULL) : json_null());
		if (!json_object_get(row, "result"))
			json_object_set_new(row, "result", json_null());
		json_int_t code = json_integer_value(json_object_get(row, "error_code"));
		if (code)
			json_object_set_new(row, "error", json_pack("{s:I, s:s, s:O}", "code", code, "name",
								    vela_errname((int)code), "message",
								    json_object_get(row, "error")));
		json_object_del(row, "error_code");
		json_object_set_new(row, "cancelable", json_boolean(json_integer_value(json_object_get(row, "cancelable"))));
	}
}

#define TASK_COLUMNS                                                                                               \
	"t.id, t.type, t.vm, t.user, t.target, t.state, t.progress, t.cancelable, t.created, t.ended, t.result,"   \
	" t.error_code, t.error"

int host_task_get(struct host *h, int64_t id, json_t **out)
{
	json_t *rows = NULL;
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	int r = host_db_prepare(h, "SELECT " TASK_COLUMNS " FROM tasks t WHERE t.id = ?", &st);
	if (r == 0) {
		sqlite3_bind_int64(st, 1, id);
		r = host_db_rows(h, st, &rows);
	}
	pthread_mutex_unlock(&h->db_lock);
	if (r < 0)
		return r;
	if (json_array_size(rows) == 0) {
		json_decref(rows);
		return vela_error(VELA_E_NOTFOUND, "no task %lld", (long long)id);
	}
	merge_live(h, rows);
	shape_rows(rows);
	*out = json_incref(json_array_get(rows, 0));
	json_decref(rows);
	return 0;
}

int host_task_wait(struct host *h, int64_t id, int timeout_ms, json_t **out)
{
	struct timespec until = host_deadline_in(timeout_ms);
	pthread_mutex_lock(&h->task_lock);
	for (;;) {
		bool running = false;
		for (struct host_task *t = h->tasks; t && !running; t = t->next)
			running = t->id == id;
		if (!running)
			break;
		if (pthread_cond_timedwait(&h->task_cond, &h->task_lock, &until) != 0)
			break;
	}
	pthread_mutex_unlock(&h->task_lock);
	return host_task_get(h, id, out);
}

/* Columns of the list's query: TASK_COLUMNS, then the VM's folder. */
enum { TASK_NCOLS = 13, COL_VM = 2, COL_USER = 3, COL_FOLDER = 13 };

static bool task_visible(const struct host_access *a, const char *user, sqlite3_stmt *st)
{
	if (!a)
		return true;
	const char *owner = (const char *)sqlite3_column_text(st, COL_USER);
	if (user && owner && strcmp(user, owner) == 0)
		return true;
	int64_t vm = sqlite3_column_int64(st, COL_VM);
	const char *folder = (const char *)sqlite3_column_text(st, COL_FOLDER);
	if (vm == 0 || !folder)
		return host_access_host(a) >= HOST_ROLE_READONLY;
	return host_access_vm(a, vm, folder) >= HOST_ROLE_READONLY;
}

int host_task_list(struct host *h, const struct host_task_query *q, const struct host_access *access, const char *user,
		   json_t **out)
{
	unsigned limit = q->limit ? (q->limit > 10000 ? 10000 : q->limit) : 100;
	json_t *a = json_array();
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	/* Newest first, stopping at `limit` visible ones (a short list of
	 * 10,000 kept tasks reads a few rows); returned oldest first. */
	int r = host_db_prepare(h,
				"SELECT " TASK_COLUMNS ", v.folder FROM tasks t LEFT JOIN vms v ON v.id = t.vm"
				" WHERE (?1 = 0 OR t.vm = ?1) AND (?2 IS NULL OR t.state = ?2) AND t.id > ?3"
				" ORDER BY t.id DESC",
				&st);
	if (r == 0) {
		sqlite3_bind_int64(st, 1, q->vm);
		if (q->state)
			sqlite3_bind_text(st, 2, q->state, -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(st, 3, q->after_id);
		int rc = SQLITE_DONE;
		while (json_array_size(a) < limit && (rc = sqlite3_step(st)) == SQLITE_ROW)
			if (task_visible(access, user, st))
				json_array_insert_new(a, 0, host_db_row(st, TASK_NCOLS));
		if (json_array_size(a) < limit && rc != SQLITE_DONE)
			r = host_db_fail(h, "list tasks");
	}
	pthread_mutex_unlock(&h->db_lock);
	if (r < 0) {
		json_decref(a);
		return r;
	}
	merge_live(h, a);
	shape_rows(a);
	*out = a;
	return 0;
}

int host_task_cancel(struct host *h, const char *user, int64_t id)
{
	int r = -VELA_E_NOTFOUND;
	int64_t vm = 0;
	pthread_mutex_lock(&h->task_lock);
	for (struct host_task *t = h->tasks; t; t = t->next)
		if (t->id == id) {
			vm = t->vm;
			if (!t->cancelable)
				r = vela_error(VELA_E_NOTSUP, "task %lld cannot be cancelled", (long long)id);
			else
				atomic_store(&t->cancel, true), r = 0;
			break;
		}
	pthread_mutex_unlock(&h->task_lock);
	if (r == -VELA_E_NOTFOUND) {
		/* Known but ended, or unknown. */
		json_t *t = NULL;
		r = host_task_get(h, id, &t);
		if (r == 0)
			r = vela_error(VELA_E_BADSTATE, "task %lld has ended (%s)", (long long)id,
				       json_string_value(json_object_get(t, "state")));
		json_decref(t);
		return r;
	}
	if (r == 0)
		host_event(h, HOST_AUDIT, vm, user, "task.cancel", "cancel requested for task %lld", (long long)id);
	return r;
}

int host_tasks_recover(struct host *h)
{
	pthread_mutex_lock(&h->db_lock);
	char *err = NULL;
	CLEANUP_FREE char *sql = xasprintf(
		"UPDATE tasks SET state = 'error', ended = %lld, error_code = %d,"
		" error = 'velad stopped while the task ran' WHERE state = 'running';"
		"DELETE FROM tasks WHERE id <= (SELECT MAX(id) FROM tasks) - %d;",
		(long long)time_real_ms(), VELA_E_CANCELED, TASKS_KEPT);
	int r = 0;
	if (sqlite3_exec(h->db, sql, NULL, NULL, &err) != SQLITE_OK)
		r = vela_error(VELA_E_IO, "host database: tasks: %s", err ? err : "?");
	sqlite3_free(err);
	pthread_mutex_unlock(&h->db_lock);
	return r;
}

void host_tasks_shutdown(struct host *h)
{
	pthread_mutex_lock(&h->task_lock);
	h->tasks_closing = true;
	for (struct host_task *t = h->tasks; t; t = t->next)
		atomic_store(&t->cancel, true);
	/* Tasks of threads of ours end by themselves once cancelled (or when
	 * their operation is done); those driven from outside (uploads) are
	 * the API's, which stops first. */
	while (h->task_threads > 0)
		pthread_cond_wait(&h->task_cond, &h->task_lock);
	pthread_mutex_unlock(&h->task_lock);
}
