/*
 * internal.h - what the files of the host module share: the host object,
 * database helpers and VM rows.  Not part of the module's interface (that is
 * host.h); nothing outside src/host includes it.
 */
#ifndef VELA_HOST_INTERNAL_H
#define VELA_HOST_INTERNAL_H

#include "host.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <time.h>

struct vmx_file;
struct host_task;

#define DEFAULT_DATASTORE "local"
#define STATUS_TIMEOUT_MS 5000

/* One per registered VM that was ever operated on: serializes its power
 * operations (never held across two VMs, never with h->db_lock). */
struct vm_oplock {
	int64_t id;
	pthread_mutex_t lock;
	struct vm_oplock *next;
};

/* A thread that runs work every interval_ms until the host closes. */
struct host_periodic {
	struct host *h;
	int interval_ms;
	void (*work)(struct host *h);
	pthread_t tid;
	pthread_cond_t cond;
	bool running;
};

struct host {
	char *home;
	char *vmx_binary;
	int power_timeout_ms;
	sqlite3 *db;
	pthread_mutex_t db_lock;        /* the connection is used by one thread at a time */
	pthread_mutex_t oplocks_lock;
	struct vm_oplock *oplocks;
	atomic_ullong generation;       /* bumped by every change a VM list shows */
	/* The newest event's id, for live streams waiting on event_cond. */
	pthread_mutex_t event_lock;
	pthread_cond_t event_cond;
	int64_t last_event;
	/* Background work every so often, until close (under refresh_lock):
	 * the refresher keeps vm_state current for changes made outside velad
	 * and watches datastore space; the sampler records statistics. */
	int refresh_ms;
	bool stopping;
	pthread_mutex_t refresh_lock;
	struct host_periodic refresher, sampler;
	/* Running tasks (task.c). */
	pthread_mutex_t task_lock;
	pthread_cond_t task_cond;       /* a task ended, or a task thread exited */
	struct host_task *tasks;
	int task_threads;
	bool tasks_closing;
	int64_t autostart_task;         /* the running autostart's task, or 0 */
	/* Datastores short of space (datastore.c), under refresh_lock. */
	struct ds_space *low_space;
	int low_space_percent;
	int64_t backup_checked_ms;      /* backups.c: the last look for due schedules */
	/* Statistics (stats.c). */
	int stats_interval_ms, stats_keep_ms;
	struct stats_prev *stats_prev;   /* the sampler's own */
};

/* A VM's row of the inventory. */
struct vm_row {
	int64_t id;
	char *name, *folder, *config;
};

/* Condition variables wait with deadlines on the monotonic clock. */
void host_cond_init(pthread_cond_t *c);
struct timespec host_deadline_in(int ms);
/* Index of s in names[first..n), or -1: the enums' parse functions. */
int host_name_index(const char *const *names, size_t n, size_t first, const char *s);

/* ---- database: the connection is used under h->db_lock */
int host_db_fail(struct host *h, const char *what);
int host_db_prepare(struct host *h, const char *sql, sqlite3_stmt **st);
void host_db_finalize(sqlite3_stmt **st);
#define CLEANUP_STMT __attribute__((cleanup(host_db_finalize)))
/* The current row's first ncols columns as an object keyed by column name. */
json_t *host_db_row(sqlite3_stmt *st, int ncols);
/* Every row of a stepped statement as an object keyed by column name. */
int host_db_rows(struct host *h, sqlite3_stmt *st, json_t **out);
/* Every row of a query without parameters (takes db_lock). */
int host_db_query(struct host *h, const char *sql, json_t **out);
/* Record an event; caller holds db_lock. */
int host_event_locked(struct host *h, enum host_severity sev, int64_t vm_id, const char *user, const char *type,
		      const char *msg);

/* ---- VMs */
void host_vm_row_clear(struct vm_row *v);
int host_vm_row_get(struct host *h, int64_t id, struct vm_row *v);
/* The power state as the supervisor reports it ({state: off} when none runs). */
json_t *host_vm_status(const char *config);
struct vm_oplock *host_oplock_of(struct host *h, int64_t id);
/* Take the VM's operation lock, then read its row (VELA_E_NOTFOUND, and no
 * lock held, when it is gone). */
int host_vm_lock(struct host *h, int64_t id, struct vm_row *v, struct vm_oplock **l);
void host_remember_state_locked(struct host *h, int64_t id, const char *state);
void host_remember_state(struct host *h, int64_t id, json_t *status);
bool host_name_ok(const char *s, size_t max);
bool host_folder_ok(const char *s);
/* Disk specs into .vmx keys (on the first free units) and new image files in
 * dir (named after name, never over an existing file); their paths are
 * appended to created (may be NULL); progress and cancel through t (may be
 * NULL). */
int host_create_disks(struct vmx_file *f, const char *dir, const char *name, json_t *disks, struct host_task *t,
		      json_t *created);

/* Drop a VM's rows (inventory, state, autostart, its grants); db_lock held. */
int host_vm_forget_locked(struct host *h, int64_t id);

/* ---- datastores */
char *host_datastores_dir(struct host *h);
/* Compare free space with the threshold; events on crossing it. */
void host_ds_check_space(struct host *h);
void host_ds_state_free(struct host *h);

/* ---- statistics */
void host_stats_sample(struct host *h);
void host_stats_free(struct host *h);

/* ---- tasks */
/* At open: tasks a previous velad left running ended with it. */
int host_tasks_recover(struct host *h);
/* At close: cancel what runs and wait for it. */
void host_tasks_shutdown(struct host *h);

/* backups.c: start the scheduled backups that are due (the refresher). */
void host_backup_run_due(struct host *h);

#endif /* VELA_HOST_INTERNAL_H */
