/* backups.c - hot backups through velad, as tasks, into a datastore; and
 * scheduled backups with retention. */
#include "common.h"
#include "internal.h"
#include "backup.h"

#include <string.h>

#define SCHEDULE_MAX 1000
#define CHECK_EVERY_MS 15000

static bool on_progress(unsigned percent, void *opaque)
{
	host_task_progress(opaque, percent);
	return true;
}

/* The target folder: a folder in a datastore (never a free host path: a
 * VM's administrator is not the host's). */
static int target_dir(struct host *h, const char *ds, const char *folder, char **out)
{
	if (!ds)
		return vela_error(VELA_E_INVAL, "backup: name the datastore to write to");
	return host_ds_path(h, ds, folder ? folder : "backups", out);
}

int host_vm_backup(struct host *h, const char *user, int64_t id, const struct host_backup_spec *b,
		   struct host_task *t, json_t **out)
{
	CLEANUP_FREE char *dir = NULL;
	int r = target_dir(h, b->datastore, b->folder, &dir);
	if (r < 0)
		return r;
	struct vm_row v = { 0 };
	struct vm_oplock *l = NULL;
	if ((r = host_vm_lock(h, id, &v, &l)) < 0)
		return r;
	/* Under the VM's operation lock: no power operation meanwhile. */
	struct backup_opts o = { .quiesce = b->quiesce, .compress = b->compress, .incremental = b->incremental,
				 .progress = t ? on_progress : NULL, .opaque = t };
	r = backup_vm(v.config, dir, &o, out);
	if (r == 0 && b->keep) {
		json_t *removed = NULL;
		/* Folders are named after the VM's displayName, which need not be
		 * its name in the inventory. */
		const char *named = json_string_value(json_object_get(*out, "vm"));
		if (backup_prune(dir, named ? named : v.name, b->keep, &removed) < 0)
			host_event(h, HOST_WARNING, id, user, "vm.backup.retention", "%s", vela_errmsg());
		else if (json_array_size(removed))
			json_object_set(*out, "removed", removed);
		json_decref(removed);
	}
	pthread_mutex_unlock(&l->lock);
	if (r == 0)
		host_event(h, HOST_AUDIT, id, user, "vm.backup", "%s (%s%s)",
			   json_string_value(json_object_get(*out, "folder")),
			   json_is_true(json_object_get(*out, "live")) ? "live" : "offline",
			   json_is_true(json_object_get(*out, "quiesced")) ? ", quiesced" : "");
	else
		host_event(h, HOST_ERROR, id, user, "vm.backup.failed", "%s", vela_errmsg());
	host_vm_row_clear(&v);
	return r;
}

int host_vm_backup_list(struct host *h, int64_t id, const char *datastore, const char *folder, json_t **out)
{
	CLEANUP_FREE char *dir = NULL;
	int r = target_dir(h, datastore, folder, &dir);
	if (r < 0)
		return r;
	struct vm_row v = { 0 };
	if ((r = host_vm_row_get(h, id, &v)) < 0)
		return r;
	/* The folders carry the name backup_vm gives them, not the inventory's. */
	CLEANUP_FREE char *name = NULL;
	if ((r = backup_vm_name(v.config, &name)) == 0)
		r = backup_list(dir, name, out);
	host_vm_row_clear(&v);
	return r;
}

/* ------------------------------------------------------------ schedules */

int host_backup_schedule_set(struct host *h, const char *user, int64_t id, const struct host_backup_spec *b,
			     json_t **out)
{
	if (b->every_s < 60 || b->every_s > 366 * 86400)
		return vela_error(VELA_E_RANGE, "backup schedule: every 1 minute to 1 year");
	if (b->keep < 1 || b->keep > 1000)
		return vela_error(VELA_E_RANGE, "backup schedule: keep 1 to 1000 backups");
	CLEANUP_FREE char *dir = NULL;
	int r = target_dir(h, b->datastore, b->folder, &dir);
	if (r < 0)
		return r;
	struct vm_row v = { 0 };
	if ((r = host_vm_row_get(h, id, &v)) < 0)
		return r;
	host_vm_row_clear(&v);
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	r = host_db_prepare(h,
			    "INSERT OR REPLACE INTO backup_schedules(vm, datastore, folder, every_s, keep, quiesce, compress,"
			    " next_run, incremental) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
			    &st);
	if (r == 0) {
		sqlite3_bind_int64(st, 1, id);
		sqlite3_bind_text(st, 2, b->datastore, -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(st, 3, b->folder ? b->folder : "backups", -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(st, 4, b->every_s);
		sqlite3_bind_int64(st, 5, b->keep);
		sqlite3_bind_int(st, 6, b->quiesce);
		sqlite3_bind_int(st, 7, b->compress);
		/* The first run after one interval (or at once when asked). */
		sqlite3_bind_int64(st, 8, time_real_ms() + (b->now ? 0 : b->every_s * 1000));
		sqlite3_bind_int(st, 9, b->incremental);
		if (sqlite3_step(st) != SQLITE_DONE)
			r = host_db_fail(h, "save the backup schedule");
	}
	pthread_mutex_unlock(&h->db_lock);
	if (r < 0)
		return r;
	host_event(h, HOST_AUDIT, id, user, "vm.backup.schedule", "every %lld s into [%s] %s, keep %u",
		   (long long)b->every_s, b->datastore, b->folder ? b->folder : "backups", b->keep);
	return host_backup_schedule_list(h, id, out);
}

int host_backup_schedule_list(struct host *h, int64_t vm, json_t **out)
{
	if (vm == 0)
		return host_db_query(h,
				     "SELECT s.vm, v.name, s.datastore, s.folder, s.every_s, s.keep, s.quiesce, s.compress, s.incremental,"
				     " s.next_run, s.last_task FROM backup_schedules s JOIN vms v ON v.id = s.vm ORDER BY s.vm",
				     out);
	json_t *all = NULL;
	int r = host_backup_schedule_list(h, 0, &all);
	if (r < 0)
		return r;
	json_t *mine = json_array();
	size_t i;
	json_t *s;
	json_array_foreach(all, i, s)
		if (json_integer_value(json_object_get(s, "vm")) == vm)
			json_array_append(mine, s);
	json_decref(all);
	*out = mine;
	return 0;
}

int host_backup_schedule_remove(struct host *h, const char *user, int64_t id)
{
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	int r = host_db_prepare(h, "DELETE FROM backup_schedules WHERE vm = ?", &st);
	if (r == 0) {
		sqlite3_bind_int64(st, 1, id);
		if (sqlite3_step(st) != SQLITE_DONE)
			r = host_db_fail(h, "remove the backup schedule");
		else if (sqlite3_changes(h->db) == 0)
			r = vela_error(VELA_E_NOTFOUND, "VM %lld has no backup schedule", (long long)id);
	}
	pthread_mutex_unlock(&h->db_lock);
	if (r == 0)
		host_event(h, HOST_AUDIT, id, user, "vm.backup.schedule", "removed");
	return r;
}

struct scheduled {
	int64_t vm;
	struct host_backup_spec b;
	char ds[128], folder[512];
};

static int scheduled_task(struct host *h, struct host_task *t, void *arg, json_t **result)
{
	struct scheduled *s = arg;
	s->b.datastore = s->ds;
	s->b.folder = s->folder;
	return host_vm_backup(h, "velad", s->vm, &s->b, t, result);
}

/* Start the backups that are due (from the refresher).  One at a time per
 * VM: a schedule whose last task still runs waits. */
void host_backup_run_due(struct host *h)
{
	int64_t now = time_real_ms();
	if (now - h->backup_checked_ms < CHECK_EVERY_MS)
		return;
	h->backup_checked_ms = now;
	json_t *due = NULL;
	if (host_db_query(h, "SELECT vm, datastore, folder, every_s, keep, quiesce, compress, incremental, last_task"
			     " FROM backup_schedules WHERE next_run <= strftime('%s', 'now') * 1000",
			  &due) < 0)
		return;
	size_t i;
	json_t *row;
	json_array_foreach(due, i, row) {
		int64_t vm = json_integer_value(json_object_get(row, "vm"));
		int64_t last = json_integer_value(json_object_get(row, "last_task"));
		json_t *lt = NULL;
		bool running = last && host_task_get(h, last, &lt) == 0 &&
			       strcmp(json_string_value(json_object_get(lt, "state")) ?: "", "running") == 0;
		json_decref(lt);
		if (running)
			continue;
		struct scheduled *s = xcalloc(1, sizeof *s);
		s->vm = vm;
		snprintf(s->ds, sizeof s->ds, "%s", json_string_value(json_object_get(row, "datastore")) ?: "");
		snprintf(s->folder, sizeof s->folder, "%s", json_string_value(json_object_get(row, "folder")) ?: "backups");
		s->b.keep = (unsigned)json_integer_value(json_object_get(row, "keep"));
		s->b.quiesce = json_integer_value(json_object_get(row, "quiesce")) != 0;
		s->b.compress = json_integer_value(json_object_get(row, "compress")) != 0;
		s->b.incremental = json_integer_value(json_object_get(row, "incremental")) != 0;
		int64_t every = json_integer_value(json_object_get(row, "every_s"));
		struct host_task *t = NULL;
		if (host_task_begin(h, "velad", vm, "vm.backup.scheduled", s->ds, false, &t) < 0) {
			vela_log(VELA_LOG_ERROR, "scheduled backup of VM %lld: %s", (long long)vm, vela_errmsg());
			free(s);
			continue;
		}
		int64_t task_id = host_task_id(t);   /* t is the thread's once it runs */
		if (host_task_spawn(h, t, scheduled_task, s, free) < 0)
			vela_log(VELA_LOG_ERROR, "scheduled backup of VM %lld: %s", (long long)vm, vela_errmsg());
		pthread_mutex_lock(&h->db_lock);
		CLEANUP_STMT sqlite3_stmt *st = NULL;
		if (host_db_prepare(h, "UPDATE backup_schedules SET next_run = ?, last_task = ? WHERE vm = ?", &st) == 0) {
			sqlite3_bind_int64(st, 1, now + every * 1000);
			sqlite3_bind_int64(st, 2, task_id);
			sqlite3_bind_int64(st, 3, vm);
			sqlite3_step(st);
		}
		pthread_mutex_unlock(&h->db_lock);
	}
	json_decref(due);
}
