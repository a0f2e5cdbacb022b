/*
 * host.h - velad's core: the host's inventory of virtual machines, power
 * control through their supervisors, the event log and the datastores, kept
 * in one SQLite database ($VELA_HOME/host.db, WAL mode).
 *
 * Every function is safe to call from several threads at once (the API
 * serves requests in a thread pool).  Database work is serialized inside;
 * long power operations run without holding any host-wide lock, and each VM
 * has its own operation lock so two power requests on one VM never race:
 * the second waits, then meets the state the first left (and a refusal from
 * the supervisor's state machine when that state does not allow it).
 *
 * Running VMs belong to their vela-vmx supervisors, not to velad: closing the
 * host (or killing velad) never stops them, and host_open finds them again.
 *
 * "user" arguments name who asked (for the audit trail in the event log).
 */
#ifndef VELA_HOST_H
#define VELA_HOST_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

struct host;
struct host_access;
struct host_task;
struct strbuf;

struct host_opts {
	const char *home;         /* NULL = vela_home() */
	const char *vmx_binary;   /* vela-vmx to start VMs with; NULL = the default search */
	int power_timeout_ms;     /* how long a power operation may take; 0 = 120 s */
	int refresh_ms;           /* how often states are checked for outside changes; 0 = 1 s, < 0 = never */
	int low_space_percent;    /* a datastore with less free space is reported (event); 0 = 10 */
	int stats_interval_ms;    /* performance samples; 0 = every 20 s, < 0 = none */
	int stats_keep_ms;        /* how long samples are kept; 0 = an hour */
};

/* Open (or create) the host database, make the default datastore on first
 * start and reconcile the inventory with the supervisors that are running. */
int host_open(const struct host_opts *opts, struct host **out);
void host_close(struct host *h);

/* ---- inventory */

/*
 * Register an existing .vmx (absolute path, or relative to a datastore as
 * "[name] dir/file.vmx").  name NULL = the file's displayName; folder NULL =
 * "/".  *out gets the new VM object (caller decrefs).
 */
int host_vm_register(struct host *h, const char *user, const char *config, const char *name, const char *folder,
		     json_t **out);
/*
 * Create a new VM: a folder <name>/ in the datastore with <name>.vmx and its
 * disks, registered in folder.  Everything made is removed again if a step
 * fails.  disks: [{size: bytes or "8g", type?: vdisk type name (default
 * monolithicSparse), bus?: scsi|virtio|ide|sata (default scsi)}], at most 4.
 */
struct host_vm_spec {
	const char *name, *datastore, *folder, *guest_os, *cdrom;
	int memsize_mb, vcpus;
	bool nic;
	json_t *disks;
};
int host_vm_create(struct host *h, const char *user, const struct host_vm_spec *spec, struct host_task *t, json_t **out);
/* Forget a VM (files stay).  A VM that is not off is refused. */
int host_vm_unregister(struct host *h, const char *user, int64_t id);
/*
 * Forget a VM and, with files, delete what it owns: the images of its disks'
 * chains that lie in its folder, its .vmx and the files named after it
 * (.vmsd, logs), then the folder when empty.  Disks outside the folder are
 * kept (they may be shared).  *out: {id, removed: [...], kept: [...],
 * folder_removed}.  A VM that is not off is refused.
 */
int host_vm_delete(struct host *h, const char *user, int64_t id, bool files, struct host_task *t, json_t **out);
/*
 * Change settings: {name, folder, memsize, vcpus, guestOS, annotation,
 * cdrom ("" = none), nic (bool), boot_order, disk_modes {addr: mode},
 * add_disks [{size, type?, bus?}] (new files in the VM's folder, on free
 * units; removed again if the change is refused), add_nics [{connection?,
 * network?, device?}], remove_devices ["scsi0:1", "ethernet1", ...]}.  Inventory changes (name, folder) apply
 * at once; the .vmx is edited at once when the VM is off, and through its
 * supervisor when it runs: then the VM keeps running as it was and
 * status.pending_changes lists the edits until the next power cycle.  *out
 * gets the VM as host_vm_get.
 */
int host_vm_reconfigure(struct host *h, const char *user, int64_t id, json_t *changes, json_t **out);
/* Disk snapshots (src/snapshot): the tree, and create / revert / delete
 * under the VM's operation lock (revert needs the VM off).  *out: the
 * operation's result ({name, disks, live, skipped} for create). */
int host_vm_snapshots(struct host *h, int64_t id, json_t **out);

/* Hot backups into a datastore folder (backup.h), as tasks; schedules run
 * them every so often and keep the newest few. */
struct host_backup_spec {
	const char *datastore, *folder;   /* folder default "backups" */
	bool quiesce, compress, incremental;
	unsigned keep;                    /* 0 = keep every backup (one-off) */
	int64_t every_s;                  /* schedules */
	bool now;                         /* schedules: the first run at once */
};
int host_vm_backup(struct host *h, const char *user, int64_t id, const struct host_backup_spec *b,
		   struct host_task *t, json_t **out);
int host_backup_schedule_set(struct host *h, const char *user, int64_t id, const struct host_backup_spec *b,
			     json_t **out);
/* The VM's backups in a datastore folder (default "backups"), newest first. */
int host_vm_backup_list(struct host *h, int64_t id, const char *datastore, const char *folder, json_t **out);
/* vm 0: every schedule. */
int host_backup_schedule_list(struct host *h, int64_t vm, json_t **out);
int host_backup_schedule_remove(struct host *h, const char *user, int64_t id);
int host_vm_snapshot(struct host *h, const char *user, int64_t id, const char *op, const char *name, bool memory,
		     bool quiesce,
		     const char *description, json_t **out);
/* The running VM's screen as PNG bytes (caller frees). */
int host_vm_screenshot(struct host *h, int64_t id, char **png, size_t *len);
/* The guest agent ({agent, heartbeat, info}) or, with guestinfo, its values:
 * all values (key NULL), one (key), set one (value a string) or unset it
 * (value JSON null).  The VM must run. */
int host_vm_guest(struct host *h, const char *user, int64_t id, bool guestinfo, const char *key, json_t *value,
		  json_t **out);
/* The end of the VM's log (its supervisor's vela.log, at most max bytes,
 * from a line start): {text, size, truncated}. */
int host_vm_log(struct host *h, int64_t id, size_t max, json_t **out);
/* The VM's settings as its .vmx says: {memsize, vcpus, guestOS, annotation,
 * disks, cdroms, nics}. */
json_t *host_vm_settings(const char *config);
/* All VMs: [{id, name, folder, config, state}], by id.  States are velad's
 * view: exact after its own operations, at most one refresh old for changes
 * made elsewhere. */
int host_vm_list(struct host *h, json_t **out);
/*
 * The same list as JSON text appended to out ({"ok":true,"vms":[...]}),
 * each VM with "role": the caller's role from access (NULL = admin on all);
 * VMs below readonly are left out.  Straight from the rows to text: a
 * filtered list of 1,000 VMs needs no JSON objects.
 */
int host_vm_list_text(struct host *h, const struct host_access *access, struct strbuf *out);
/* Changes whenever host_vm_list's answer may change (registrations,
 * power states): lets callers cache what they make of a list. */
uint64_t host_generation(struct host *h);
/* Where a VM sits in the folder tree (for access checks; caller frees). */
int host_vm_folder(struct host *h, int64_t id, char **folder);
/* One VM with its supervisor's status when it runs. */
int host_vm_get(struct host *h, int64_t id, json_t **out);

/*
 * Power operations: op = start, stop, reset, pause, unpause; mode (stop,
 * reset) = hard, soft or trysoft (NULL = trysoft).  *out gets the VM's status
 * afterwards.  Refusals of the state machine come back as VELA_E_BADSTATE.
 */
int host_vm_power(struct host *h, const char *user, int64_t id, const char *op, const char *mode, struct host_task *t,
		  json_t **out);
/* Answer the VM's pending question. */
int host_vm_answer(struct host *h, const char *user, int64_t id, const char *choice, json_t **out);

/* ---- tasks
 *
 * A long operation (power, create, delete, upload, autostart, autostop) is
 * a task: it has a state (running, then success, error or cancelled), a
 * progress 0-100, a result or an error {code, name, message}, and may be
 * cancelled while it runs when its kind allows (cancelling is a request:
 * the operation stops at its next safe point, leaving nothing half done).
 * The newest 10,000 tasks are kept; tasks a stopped velad cut off end as
 * errors at the next start.
 */
struct host_task;
int host_task_begin(struct host *h, const char *user, int64_t vm, const char *type, const char *target,
		    bool cancelable, struct host_task **out);
int64_t host_task_id(const struct host_task *t);
void host_task_progress(struct host_task *t, unsigned percent);
/* Whether a cancel was asked for (false for t NULL: operations take an
 * optional task). */
bool host_task_cancelled(const struct host_task *t);
/* End a task: r = 0 with result (stolen, may be NULL), or r < 0 with the
 * thread's error message.  Frees t. */
void host_task_end(struct host *h, struct host_task *t, int r, json_t *result);
/* Run fn in a thread of its own and end t with what it returns; free_arg
 * (may be NULL) frees arg afterwards. */
typedef int (*host_task_fn)(struct host *h, struct host_task *t, void *arg, json_t **result);
int host_task_spawn(struct host *h, struct host_task *t, host_task_fn fn, void *arg, void (*free_arg)(void *));
/* {id, type, vm, user, target, state, progress, cancelable, created, ended,
 * result, error, cancel_requested (while running)} */
int host_task_get(struct host *h, int64_t id, json_t **out);
/* Wait until the task ended (or timeout_ms passed), then get it. */
int host_task_wait(struct host *h, int64_t id, int timeout_ms, json_t **out);
struct host_task_query {
	int64_t vm;               /* 0 = any */
	const char *state;        /* NULL = any */
	int64_t after_id;
	unsigned limit;           /* 0 = 100 (the newest) */
};
/* Oldest first.  With access, only tasks of VMs the principal may read,
 * host tasks with readonly on the host, and user's own tasks. */
int host_task_list(struct host *h, const struct host_task_query *q, const struct host_access *access, const char *user,
		   json_t **out);
/* Ask a running task to stop: VELA_E_NOTSUP if its kind cannot, VELA_E_BADSTATE
 * if it has ended. */
int host_task_cancel(struct host *h, const char *user, int64_t id);

/* ---- performance statistics
 *
 * Samples every stats_interval_ms, kept for stats_keep_ms.  vm 0 = the
 * host: {time, cpu (cores busy), mem (bytes in use), mem_total}; a VM:
 * {time, cpu (host cores its QEMU used), mem (resident bytes), disk_rd,
 * disk_wr (bytes/s)}.  *out: {interval_ms, keep_ms, samples: [...]} with
 * the samples newer than since_ms, oldest first.
 */
int host_stats(struct host *h, int64_t vm, int64_t since_ms, json_t **out);

/* ---- autostart and autostop
 *
 * Per VM: whether it starts with the host, its place in the order (lower
 * first), the seconds to wait after starting it before the next one, and
 * what host_autostop does to it (soft, hard, none).  VMs are stopped in the
 * reverse order.
 */
struct host_autostart {
	bool enabled;
	int order;                /* 0..9999 */
	int delay_s;              /* 0..3600 */
	const char *stop;         /* "soft", "hard" or "none" */
};
int host_autostart_set(struct host *h, const char *user, int64_t id, const struct host_autostart *a, json_t **out);
/* [{vm, name, enabled, order, delay, stop}] in start order. */
int host_autostart_list(struct host *h, json_t **out);
/* Start the enabled VMs that are off, in order, waiting each one's delay;
 * returns at once, the work runs in a thread of the host's (velad's start). */
void host_autostart_run(struct host *h);
/* Stop the running VMs as their autostop says, in reverse start order; every
 * VM that has no setting gets the default (soft, then hard after the power
 * timeout).  Waits until done. */
int host_autostop_run(struct host *h, const char *user, struct host_task *t);

/* ---- events */

enum host_severity { HOST_INFO, HOST_WARNING, HOST_ERROR, HOST_AUDIT };
const char *host_severity_name(enum host_severity s);
int host_severity_parse(const char *s, enum host_severity *out);

/* Record an event (vm_id 0 = the host itself). */
int host_event(struct host *h, enum host_severity sev, int64_t vm_id, const char *user, const char *type,
	       const char *fmt, ...) __attribute__((format(printf, 6, 7)));

struct host_event_query {
	int64_t vm_id;            /* 0 = any */
	int64_t after_id;         /* only events with a larger id (for following) */
	int64_t since_ms;         /* 0 = any time */
	const char *severity;     /* NULL = any */
	unsigned limit;           /* 0 = 100; at most 10000 */
};
/* Wait up to timeout_ms for an event with an id above after_id; true if
 * there is one.  For live streams. */
bool host_event_wait(struct host *h, int64_t after_id, int timeout_ms);
/* The newest event's id. */
int64_t host_event_last(struct host *h);
/* Newest last: [{id, time, severity, vm, user, type, message}].  With
 * access, only events the principal may read (a VM's need readonly on it,
 * the host's readonly on the host). */
int host_event_list(struct host *h, const struct host_event_query *q, const struct host_access *access,
		    json_t **out);

/* ---- access control
 *
 * Roles, weakest first: readonly (see), operator (power, console, answer
 * questions), admin (everything).  A grant gives a role to a principal
 * ("user:NAME" or "group:NAME") on a scope: "host" (everything), "folder:/a/b"
 * (the folder, its subfolders and their VMs) or "vm:ID".  The effective role
 * is the strongest grant that matches.
 */
enum host_role { HOST_ROLE_NONE, HOST_ROLE_READONLY, HOST_ROLE_OPERATOR, HOST_ROLE_ADMIN };
const char *host_role_name(enum host_role r);
int host_role_parse(const char *s, enum host_role *out);

struct host_principal {
	const char *user;
	const char *const *groups;
	size_t n_groups;
	bool superuser;            /* root / the trusted local socket: admin everywhere */
};

/* The grants that apply to one principal, loaded once per request. */
struct host_access;
int host_access_load(struct host *h, const struct host_principal *p, struct host_access **out);
void host_access_free(struct host_access *a);
enum host_role host_access_host(const struct host_access *a);
enum host_role host_access_folder(const struct host_access *a, const char *folder);
enum host_role host_access_vm(const struct host_access *a, int64_t vm_id, const char *folder);

/* Grants: *out gets {id, principal, scope, role}. */
int host_grant(struct host *h, const char *by, const char *principal, const char *scope, const char *role,
	       json_t **out);
int host_revoke(struct host *h, const char *by, int64_t id);
int host_grant_list(struct host *h, json_t **out);

/* API tokens (long-lived credentials of a user).  The caller makes the
 * secret and shows it once; the host stores only its digest (hex).
 * expires_ms 0 = never. */
int host_token_create(struct host *h, const char *user, const char *name, int64_t expires_ms, const char *digest,
		      json_t **out);
/* Who owns a presented secret's digest: VELA_E_SESSION when unknown or expired. */
int host_token_check(struct host *h, const char *digest, char **user);
int host_token_list(struct host *h, const char *user, json_t **out);
int host_token_delete(struct host *h, const char *user, int64_t id);

/* ---- host and datastores */

/*
 * Files in datastores.  rel is a path inside the datastore ("iso/x.iso"):
 * no "..", "." or empty parts, no control characters, at most 1024 bytes;
 * a symbolic link that leads out of the datastore is refused too.
 */
int host_ds_path(struct host *h, const char *ds, const char *rel, char **abs);
/* The entries of a folder: [{name, type: file|folder|other, size, mtime}]. */
int host_ds_browse(struct host *h, const char *ds, const char *rel, json_t **out);
/*
 * Uploads land in a hidden temporary file next to the target and appear
 * under their name only when complete (an existing file is never
 * replaced).  Each upload is a task (datastore.upload) with progress
 * against expected (bytes; 0 = unknown), which a cancel ends: the next
 * write fails with VELA_E_CANCELED.  An expected size above the free
 * space is refused at once (VELA_E_DISKFULL).
 */
struct host_upload;
int host_ds_upload_begin(struct host *h, const char *user, const char *ds, const char *rel, uint64_t expected,
			 struct host_upload **up);
int64_t host_ds_upload_task(const struct host_upload *up);
/* Append data; the first failure sticks (and is the upload's outcome). */
int host_ds_upload_write(struct host_upload *up, const void *data, size_t n);
/* why = 0: the sender is done, make the file appear (VELA_E_EXISTS if a
 * file took the name meanwhile); why < 0: the upload was cut off, throw it
 * away.  Ends the task, always frees up. */
int host_ds_upload_end(struct host *h, const char *user, struct host_upload *up, int why, json_t **out);

/* {name, version, home, vms, running, datastores:[...]} */
int host_info(struct host *h, json_t **out);
/* [{name, path, capacity, free, low_space, default, linked}] */
int host_datastore_list(struct host *h, json_t **out);
/*
 * Add a folder anywhere on the host (a mounted NFS export, a second disk) as
 * a datastore: a link $VELA_HOME/datastores/<name> to it.  Refused when it
 * overlaps a datastore.  Removing forgets it (its files stay) and is refused
 * while VMs registered from it remain, and for the default datastore.
 */
int host_datastore_add(struct host *h, const char *user, const char *name, const char *path, json_t **out);
int host_datastore_remove(struct host *h, const char *user, const char *name);

#endif /* VELA_HOST_H */
