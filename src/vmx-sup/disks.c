/*
 * disks.c - the VM's disks, served by the supervisor through Vela's disk
 * engine (see disks.h).  One blk_disk per hard disk and one server thread
 * per disk (vhost-user-blk for virtio disks, NBD for disks behind an
 * emulated controller); the disk modes decide which chain top is served.
 */
#include "common.h"
#include "blk.h"
#include "vdisk.h"
#include "disks.h"
#include "vmstate.h"

#include <limits.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SERVER_READY_TIMEOUT_S 10

/* A server thread (vhost-user-blk or NBD) and its start/stop handshake. */
struct server {
	char addr[16];            /* the disk it serves, for messages */
	bool vhost;
	const char *listen;       /* socket path or NBD address */
	struct blk_disk *disk;
	struct blk_export exp;
	unsigned queues;
	pthread_t thread;
	bool running;
	volatile bool stop;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool ready, ended;
	int result;
	char error[512];
};

/* A point-in-time, read-only NBD export of a running disk (backup). */
struct disk_export {
	struct server srv;
	char *listen;
	char *frozen;             /* the image under the export's redo log */
	char *redo;               /* the redo log the guest writes meanwhile */
	struct blk_disk *view;
};

struct sup_disk {
	char id[32];              /* "scsi0-0": socket and NBD export name */
	char addr[16];            /* "scsi0:0" */
	enum vmx_disk_mode mode;
	bool vhost;
	unsigned queues;
	char *base;               /* the file the .vmx names */
	char *redo;               /* the mode's redo log, or NULL */
	char *throwaway;          /* repeatable resume: a log over it all, gone at power-off */
	char *sock;
	struct blk_disk *disk;
	struct blk_cbt *cbt;      /* ctkEnabled: the guest's writes since the last backup */
	struct server srv;
	struct disk_export *export;
};

struct sup_disks {
	struct sup_disk *d;
	size_t n;
	char **sockets;           /* indexed like the model's disks */
	size_t n_model;
	char *vm_dir;
	bool closed;
	bool keep_logs;           /* resuming: the suspended session's logs are not the modes' to drop yet */
	sup_disks_top_fn on_top_changed;
	void *cb_opaque;
};

static bool mode_has_redo(enum vmx_disk_mode m)
{
	return m == VMX_MODE_NONPERSISTENT || m == VMX_MODE_INDEPENDENT_NONPERSISTENT || m == VMX_MODE_UNDOABLE ||
	       m == VMX_MODE_APPEND;
}

static bool mode_is_temporary(enum vmx_disk_mode m)
{
	return m == VMX_MODE_NONPERSISTENT || m == VMX_MODE_INDEPENDENT_NONPERSISTENT;
}

/* Decide the chain top for the disk's mode, creating its redo log.  When
 * resuming, a temporary log is the suspended session's and continues. */
static int prepare_mode(struct sup_disk *d, const char *vm_dir, bool resume, const char **top)
{
	*top = d->base;
	if (!mode_has_redo(d->mode))
		return 0;
	bool temporary = mode_is_temporary(d->mode);
	int r = vdisk_child_name(d->base, vm_dir, temporary ? "TEMP" : "REDO", &d->redo);
	if (r < 0)
		return r;
	struct stat st;
	if (stat(d->redo, &st) == 0) {
		if (!temporary || resume) {
			/* undoable "keep" and append: the log grows on. */
			vela_log(VELA_LOG_INFO, "%s: continuing the redo log %s (%s mode)", d->addr, d->redo,
				 vmx_disk_mode_name(d->mode));
			*top = d->redo;
			return 0;
		}
		/* A temporary log a crash left behind: its writes were never to be kept. */
		vela_log(VELA_LOG_INFO, "%s: removing the stale temporary redo log %s", d->addr, d->redo);
		if (vdisk_delete(d->redo, true) < 0 && unlink(d->redo) < 0)
			return vela_error_errno(errno, "%s: remove the stale redo log %s", d->addr, d->redo);
	}
	struct vdisk_create_opts o = { .type = VDISK_TYPE_VMDK_MONOLITHIC_SPARSE, .parent = d->base };
	r = vdisk_create(d->redo, &o);
	if (r < 0)
		return vela_error_context(r, "%s: redo log for %s mode", d->addr, vmx_disk_mode_name(d->mode));
	vela_log(VELA_LOG_INFO, "%s: writes go to the redo log %s (%s mode)", d->addr, d->redo,
		 vmx_disk_mode_name(d->mode));
	*top = d->redo;
	return 0;
}

static void server_ready(const char *where, void *opaque)
{
	(void)where;
	struct server *v = opaque;
	pthread_mutex_lock(&v->lock);
	v->ready = true;
	pthread_cond_broadcast(&v->cond);
	pthread_mutex_unlock(&v->lock);
}

static void *server_thread(void *opaque)
{
	struct server *v = opaque;
	int r;
	if (v->vhost) {
		struct blk_vhost_opts o = { .num_queues = v->queues, .serial = v->exp.name };
		r = blk_vhost_listen(v->listen, v->disk, &o, &v->stop, server_ready, v);
	} else {
		r = blk_nbd_listen(v->listen, &v->exp, &v->stop, server_ready, v);
	}
	pthread_mutex_lock(&v->lock);
	v->result = r;
	if (r < 0)
		snprintf(v->error, sizeof v->error, "%s", vela_errmsg());
	v->ended = true;
	pthread_cond_broadcast(&v->cond);
	pthread_mutex_unlock(&v->lock);
	return NULL;
}

static int start_server(struct server *v)
{
	pthread_mutex_init(&v->lock, NULL);
	pthread_cond_init(&v->cond, NULL);
	/* The supervisor blocks its signals for its signalfd: the thread
	 * inherits the mask, so signals keep going to the loop. */
	int e = pthread_create(&v->thread, NULL, server_thread, v);
	if (e)
		return vela_error_errno(e, "%s: start the disk server", v->addr);
	v->running = true;
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += SERVER_READY_TIMEOUT_S;
	pthread_mutex_lock(&v->lock);
	while (!v->ready && !v->ended)
		if (pthread_cond_timedwait(&v->cond, &v->lock, &until) != 0)
			break;
	bool ok = v->ready && !v->ended;
	int res = v->result;
	pthread_mutex_unlock(&v->lock);
	if (!ok)
		return vela_error(res < 0 ? res : -VELA_E_TIMEOUT, "%s: the disk server on %s did not start: %s", v->addr,
				  v->listen, v->error[0] ? v->error : "no answer");
	return 0;
}

static void stop_server(struct server *v)
{
	if (!v->running)
		return;
	v->stop = true;
	pthread_join(v->thread, NULL);
	v->running = false;
	pthread_mutex_destroy(&v->lock);
	pthread_cond_destroy(&v->cond);
}

/* Changed-block tracking keyed by the chain's base image: the same map
 * whatever redo logs come and go above it. */
static int start_cbt(struct sup_disk *d, const char *top, const struct blk_cbt_stamp *top_now)
{
	char **chain = NULL;
	size_t n = 0;
	int r = vdisk_chain_paths(top, &chain, &n);
	if (r < 0)
		return vela_error_context(r, "%s: changed-block tracking", d->addr);
	CLEANUP_FREE char *path = xasprintf("%s.ctk", chain[n - 1]);
	vdisk_chain_free(chain);
	if ((r = blk_cbt_open(path, blk_disk_size(d->disk), top_now, &d->cbt)) < 0)
		return vela_error_context(r, "%s", d->addr);
	blk_disk_set_cbt(d->disk, d->cbt);
	return 0;
}

int sup_disks_open(const struct vmx_model *m, const char *vm_dir, const char *run_dir, unsigned flags,
		   struct sup_disks **out)
{
	struct sup_disks *ds = xcalloc(1, sizeof(*ds));
	ds->keep_logs = flags & SUP_DISKS_RESUME;
	ds->d = xcalloc(m->n_disks ? m->n_disks : 1, sizeof(*ds->d));
	ds->sockets = xcalloc(m->n_disks + 1, sizeof(char *));
	ds->n_model = m->n_disks;
	ds->vm_dir = xstrdup(vm_dir);
	int r = 0;
	for (size_t i = 0; i < m->n_disks; i++) {
		const struct vmx_disk *md = &m->disks[i];
		if (md->type != VMX_DEV_DISK || !md->path)
			continue;
		struct sup_disk *d = &ds->d[ds->n++];
		snprintf(d->id, sizeof d->id, "%s%u-%u", vmx_bus_name(md->bus), md->ctrl, md->unit);
		snprintf(d->addr, sizeof d->addr, "%s", md->addr);
		d->mode = md->mode;
		d->vhost = md->bus == VMX_BUS_VIRTIO;
		d->base = xstrdup(md->path);
		d->sock = xasprintf("%s/disk-%s.sock", run_dir, d->id);
		unlink(d->sock);
		const char *top;
		if ((r = prepare_mode(d, vm_dir, flags & SUP_DISKS_RESUME, &top)) < 0)
			break;
		if (flags & SUP_DISKS_THROWAWAY) {
			/* Every resume from the same state must find the disks as they
			 * were at the suspend: this session writes to a log of its own. */
			if ((r = vdisk_child_name(d->base, vm_dir, "REPEAT", &d->throwaway)) < 0)
				break;
			if (access(d->throwaway, F_OK) == 0 && vdisk_delete(d->throwaway, true) < 0 && unlink(d->throwaway) < 0) {
				r = vela_error_errno(errno, "%s: remove the stale log %s", d->addr, d->throwaway);
				break;
			}
			struct vdisk_create_opts o = { .type = VDISK_TYPE_VMDK_MONOLITHIC_SPARSE, .parent = top };
			if ((r = vdisk_create(d->throwaway, &o)) < 0) {
				vela_error_context(r, "%s: the repeatable resume's log", d->addr);
				break;
			}
			top = d->throwaway;
		}
		struct blk_cbt_stamp top_now;
		blk_cbt_stamp_of(top, &top_now);   /* before the open, which may write */
		if ((r = blk_disk_open(top, false, &d->disk)) < 0) {
			vela_error_context(r, "%s", d->addr);
			break;
		}
		if (m->ctk_enabled && d->mode == VMX_MODE_PERSISTENT && (r = start_cbt(d, top, &top_now)) < 0)
			break;
		d->srv = (struct server){ .vhost = d->vhost, .listen = d->sock, .disk = d->disk,
					  .queues = m->vcpus == 0 ? 1 : m->vcpus < BLK_VHOST_MAX_QUEUES ? m->vcpus : BLK_VHOST_MAX_QUEUES,
					  .exp = { .disk = d->disk, .name = d->id, .description = d->addr } };
		snprintf(d->srv.addr, sizeof d->srv.addr, "%s", d->addr);
		if ((r = start_server(&d->srv)) < 0)
			break;
		ds->sockets[i] = d->sock;
		vela_log(VELA_LOG_INFO, "%s: %s served over %s on %s", d->addr, top, d->vhost ? "vhost-user-blk" : "NBD",
			 d->sock);
	}
	if (r < 0) {
		char *msg = xstrdup(vela_errmsg());
		char *q = NULL;
		sup_disks_power_off(ds, &q);   /* undo what was opened; temporary logs go */
		free(q);
		sup_disks_free(ds);
		vela_error(r, "%s", msg);
		free(msg);
		return r;
	}
	*out = ds;
	return 0;
}

void sup_disks_on_top_changed(struct sup_disks *ds, sup_disks_top_fn fn, void *opaque)
{
	ds->on_top_changed = fn;
	ds->cb_opaque = opaque;
}

char *const *sup_disks_sockets(struct sup_disks *ds)
{
	return ds->sockets;
}

/* Stop an export's server and close its view (the redo log stays). */
static void end_export(struct sup_disk *d)
{
	struct disk_export *e = d->export;
	if (!e)
		return;
	stop_server(&e->srv);
	blk_disk_close(e->view);
	vela_log(VELA_LOG_INFO, "%s: export of %s on %s ended", d->addr, e->frozen, e->listen);
	free(e->listen);
	free(e->frozen);
	free(e->redo);
	free(e);
	d->export = NULL;
}

/* Delete the images from top down to (and with) stop_at. */
static int delete_down_to(const char *top, const char *stop_at)
{
	char real_stop[PATH_MAX];
	if (!realpath(stop_at, real_stop))
		return vela_error_errno(errno, "%s", stop_at);
	char **chain = NULL;
	size_t n = 0;
	if (vdisk_chain_paths(top, &chain, &n) < 0) {
		/* A chain that no longer opens (a parent gone): the log itself
		 * still goes, and what the top was if it was not the log. */
		int r = strcmp(top, stop_at) != 0 ? vdisk_delete(top, true) : 0;
		return r < 0 ? r : vdisk_delete(stop_at, true);
	}
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		r = vdisk_delete(chain[i], true);
		if (strcmp(chain[i], real_stop) == 0)
			break;
	}
	vdisk_chain_free(chain);
	return r;
}

/* Stop serving a disk and close it; *top gets what its top was (NULL when
 * it was not open). */
static int close_disk(struct sup_disk *d, char **top)
{
	end_export(d);
	stop_server(&d->srv);
	if (d->sock)
		unlink(d->sock);
	*top = d->disk ? blk_disk_top(d->disk) : NULL;
	if (!d->disk)
		return 0;
	int r = blk_disk_close(d->disk);
	d->disk = NULL;
	/* A clean map only after a clean close: else the next backup is full. */
	if (r == 0 && d->cbt)
		r = blk_cbt_close(d->cbt, *top);
	else
		blk_cbt_free(d->cbt);
	d->cbt = NULL;
	return r < 0 ? vela_error_context(r, "%s: closing the disk", d->addr) : 0;
}

int sup_disks_power_off(struct sup_disks *ds, char **question)
{
	*question = NULL;
	int err = 0;
	struct strbuf q = { 0 };
	for (size_t i = 0; i < ds->n; i++) {
		struct sup_disk *d = &ds->d[i];
		CLEANUP_FREE char *top = NULL;
		int r = close_disk(d, &top);
		if (r < 0) {
			vela_log(VELA_LOG_ERROR, "%s", vela_errmsg());
			err = err ? err : r;
		}
		if (d->throwaway && !ds->closed) {
			/* Repeatable resume: only this session's own log goes. */
			int r = delete_down_to(top ? top : d->throwaway, d->throwaway);
			if (r < 0) {
				vela_log(VELA_LOG_ERROR, "%s: discard the repeatable resume's log: %s", d->addr, vela_errmsg());
				err = err ? err : r;
			}
			continue;
		}
		if (!d->redo || ds->closed || ds->keep_logs)
			continue;
		if (mode_is_temporary(d->mode)) {
			struct stat st;
			if (stat(d->redo, &st) < 0)
				continue;
			int r = delete_down_to(top ? top : d->redo, d->redo);
			if (r < 0) {
				vela_log(VELA_LOG_ERROR, "%s: discard the temporary redo log: %s", d->addr, vela_errmsg());
				err = err ? err : r;
			} else {
				vela_log(VELA_LOG_INFO, "%s: nonpersistent: the session's writes were discarded", d->addr);
			}
		} else if (d->mode == VMX_MODE_APPEND) {
			vela_log(VELA_LOG_INFO, "%s: append: the redo log %s is kept", d->addr, d->redo);
		} else if (d->mode == VMX_MODE_UNDOABLE) {
			if (!q.len)
				strbuf_puts(&q, "The VM used undoable disks:");
			strbuf_printf(&q, " %s (%s)", d->addr, d->redo);
		}
	}
	ds->closed = true;
	if (q.len) {
		strbuf_puts(&q, ". Commit the changes to the disks, discard them, or keep them in the redo log?");
		*question = strbuf_steal(&q);
	}
	strbuf_free(&q);
	return err;
}

void sup_disks_resumed(struct sup_disks *ds)
{
	ds->keep_logs = false;
}

int sup_disks_suspend(struct sup_disks *ds, json_t **stamps)
{
	int err = 0;
	*stamps = json_array();
	for (size_t i = 0; i < ds->n; i++) {
		struct sup_disk *d = &ds->d[i];
		CLEANUP_FREE char *top = NULL;
		int r = close_disk(d, &top);
		if (r < 0)
			err = err ? err : r;
		json_array_append_new(*stamps, vmstate_disk_stamp(d->addr, d->base, top ? top : d->base));
	}
	/* Every log stays as it is: the saved state goes with them. */
	ds->closed = true;
	return err;
}

int sup_disks_answer(struct sup_disks *ds, const char *choice)
{
	bool commit = str_ieq(choice, "commit"), discard = str_ieq(choice, "discard"), keep = str_ieq(choice, "keep");
	if (!commit && !discard && !keep)
		return vela_error(VELA_E_INVAL, "the choices are commit, discard and keep, not \"%s\"", choice);
	int err = 0;
	for (size_t i = 0; i < ds->n; i++) {
		struct sup_disk *d = &ds->d[i];
		if (d->mode != VMX_MODE_UNDOABLE || !d->redo)
			continue;
		int r = 0;
		if (commit)
			r = vdisk_commit(d->redo, true, NULL, NULL);
		else if (discard)
			r = vdisk_delete(d->redo, true);
		if (r < 0) {
			vela_log(VELA_LOG_ERROR, "%s: %s the redo log: %s", d->addr, choice, vela_errmsg());
			err = err ? err : r;
		} else {
			vela_log(VELA_LOG_INFO, "%s: undoable: %s %s", d->addr,
				 commit ? "committed" : discard ? "discarded" : "kept", d->redo);
		}
	}
	return err;
}

static struct sup_disk *find(struct sup_disks *ds, const char *addr)
{
	for (size_t i = 0; ds && i < ds->n; i++)
		if (str_ieq(ds->d[i].addr, addr) && ds->d[i].disk)
			return &ds->d[i];
	vela_error(VELA_E_NOTFOUND, "the VM has no hard disk %s being served", addr);
	return NULL;
}

/* The disk's top changed: tell the supervisor before anything else happens,
 * so that the .vmx never names a chain without the guest's latest writes. */
static int top_changed(struct sup_disks *ds, struct sup_disk *d)
{
	if (!ds->on_top_changed)
		return 0;
	CLEANUP_FREE char *top = blk_disk_top(d->disk);
	return ds->on_top_changed(d->addr, top, ds->cb_opaque);
}

/* After a merge and the switch away from it: record the new top, then drop
 * the merged file. */
static int drop_merged(struct sup_disks *ds, struct sup_disk *d, const char *merged)
{
	int r = top_changed(ds, d);
	if (r < 0)
		return r;
	if (vdisk_delete(merged, true) < 0 && unlink(merged) < 0)
		vela_log(VELA_LOG_WARN, "%s: remove the merged %s: %s", d->addr, merged, strerror(errno));
	return 0;
}

static int refuse_mode(struct sup_disk *d, const char *what)
{
	return vela_error(VELA_E_NOTSUP, "%s: %s is for persistent disks; a %s disk keeps its own redo log", d->addr,
			  what, vmx_disk_mode_name(d->mode));
}

int sup_disks_addredo_rotate(struct sup_disks *ds, const char *addr, char **new_top, struct blk_cbt_epoch *epoch)
{
	struct sup_disk *d = find(ds, addr);
	if (!d)
		return -VELA_E_NOTFOUND;
	if (mode_has_redo(d->mode))
		return refuse_mode(d, "addredo");
	int r = blk_disk_addredo_rotate(d->disk, new_top, epoch);
	if (r == 0)
		r = top_changed(ds, d);
	return r < 0 ? vela_error_context(r, "%s: addredo", d->addr) : 0;
}

int sup_disks_addredo(struct sup_disks *ds, const char *addr, char **new_top)
{
	struct sup_disk *d = find(ds, addr);
	if (!d)
		return -VELA_E_NOTFOUND;
	if (mode_has_redo(d->mode))
		return refuse_mode(d, "addredo");
	int r = blk_disk_addredo(d->disk, new_top);
	if (r == 0)
		r = top_changed(ds, d);
	return r < 0 ? vela_error_context(r, "%s: addredo", d->addr) : 0;
}

/* The chain of the served disk, top first: paths[0] = top. */
static int chain_paths(struct sup_disk *d, char ***paths, size_t *n)
{
	CLEANUP_FREE char *top = blk_disk_top(d->disk);
	return vdisk_chain_paths(top, paths, n);
}

struct relink_step {
	const char *child, *grand, *target;
};

/* With I/O held: the child above the merged image points at the grandparent. */
static int relink_between(void *opaque, char **new_top)
{
	(void)new_top;
	struct relink_step *st = opaque;
	int r = vdisk_relink(st->child, st->grand, true);
	if (r < 0)
		return r;
	if (vdisk_delete(st->target, true) < 0 && unlink(st->target) < 0)
		vela_log(VELA_LOG_WARN, "remove the merged %s: %s", st->target, strerror(errno));
	return 0;
}

/* With I/O held: merge the (small) top into its parent, which becomes the
 * top.  The merged file stays until the .vmx names the parent: a crash in
 * between leaves the .vmx naming a chain that still reads right. */
static int final_merge_between(void *opaque, char **new_top)
{
	(void)new_top;
	return vdisk_commit(opaque, false, NULL, NULL);
}

/*
 * Merge the image `level` below the top (0 = the top) into its parent while
 * the guest runs.  Level >= 1: the target is read-only under the guest, so
 * it merges live; only re-pointing the image above it holds I/O.  Level 0:
 * a helper redo log takes the guest's writes first, the former top merges
 * live, and at the end only the helper (what the guest wrote meanwhile)
 * merges with I/O held.
 */
int sup_disks_commit(struct sup_disks *ds, const char *addr, unsigned level, bool freeze, char **new_top)
{
	struct sup_disk *d = find(ds, addr);
	if (!d)
		return -VELA_E_NOTFOUND;
	if (mode_has_redo(d->mode))
		return refuse_mode(d, "commit");
	char **paths = NULL;
	size_t n = 0;
	int r = chain_paths(d, &paths, &n);
	if (r < 0)
		return vela_error_context(r, "%s: commit", d->addr);
	CLEANUP_FREE char *helper = NULL;
	if (level + 1 >= n) {
		r = vela_error(VELA_E_RANGE, "%s: commit --level %u: the chain has %zu image(s), no parent below level %u",
			       d->addr, level, n, level);
		goto out;
	}
	if (level == 0 && freeze) {
		/* The classic frozen commit: guest I/O waits for the whole merge. */
		r = blk_disk_switch(d->disk, paths[1], final_merge_between, paths[0]);
		if (r == 0)
			r = drop_merged(ds, d, paths[0]);
		goto out;
	}
	if (level == 0) {
		if ((r = blk_disk_addredo(d->disk, &helper)) < 0 || (r = top_changed(ds, d)) < 0)
			goto out;
		vdisk_chain_free(paths);
		paths = NULL;
		if ((r = chain_paths(d, &paths, &n)) < 0)
			goto out;
		level = 1;
	}
	/* paths[level] merges into paths[level + 1]; paths[level - 1] is above. */
	vela_log(VELA_LOG_INFO, "%s: live commit of %s into %s", d->addr, paths[level], paths[level + 1]);
	if ((r = vdisk_commit(paths[level], false, NULL, NULL)) < 0)
		goto out;
	struct relink_step st = { paths[level - 1], paths[level + 1], paths[level] };
	if ((r = blk_disk_switch(d->disk, paths[0], relink_between, &st)) < 0)
		goto out;
	if (helper) {
		r = blk_disk_switch(d->disk, paths[2], final_merge_between, helper);
		if (r == 0)
			r = drop_merged(ds, d, helper);
	}
out:
	if (r < 0)
		vela_error_context(r, "%s: commit", d->addr);
	else if (new_top)
		*new_top = blk_disk_top(d->disk);
	vdisk_chain_free(paths);
	return r;
}

int sup_disks_export(struct sup_disks *ds, const char *addr, const char *listen, char **frozen, char **new_top)
{
	struct sup_disk *d = find(ds, addr);
	if (!d)
		return -VELA_E_NOTFOUND;
	if (d->export)
		return vela_error(VELA_E_BUSY, "%s is already exported (%s on %s); end that export first", d->addr,
				  d->export->frozen, d->export->listen);
	if (mode_is_temporary(d->mode))
		return refuse_mode(d, "export");
	/* The current top becomes static under a fresh redo log: that is the
	 * point in time the export shows, while the guest writes on. */
	CLEANUP_FREE char *old_top = blk_disk_top(d->disk);
	char *top = NULL;
	int r = blk_disk_addredo(d->disk, &top);
	if (r == 0)
		r = top_changed(ds, d);   /* the guest writes to the redo log from now on */
	if (r < 0) {
		free(top);
		return vela_error_context(r, "%s: export", d->addr);
	}
	struct disk_export *e = xcalloc(1, sizeof(*e));
	e->frozen = xstrdup(old_top);
	e->redo = top;
	e->listen = xstrdup(listen);
	r = blk_disk_open(e->frozen, true, &e->view);
	if (r == 0) {
		e->srv = (struct server){ .listen = e->listen, .disk = e->view,
					  .exp = { .disk = e->view, .name = d->id, .read_only = true, .description = d->addr } };
		snprintf(e->srv.addr, sizeof e->srv.addr, "%s", d->addr);
		r = start_server(&e->srv);
	}
	d->export = e;
	if (r < 0) {
		char *msg = xstrdup(vela_errmsg());
		end_export(d);
		vela_error(r, "%s: export: %s", addr, msg);
		free(msg);
		/* The redo log stays: the guest already writes to it. */
		*new_top = blk_disk_top(d->disk);
		return r;
	}
	vela_log(VELA_LOG_INFO, "%s: exporting %s read-only over NBD on %s (export name %s)", d->addr, e->frozen,
		 e->listen, d->id);
	*frozen = xstrdup(e->frozen);
	*new_top = xstrdup(top);
	return 0;
}

int sup_disks_export_end(struct sup_disks *ds, const char *addr, bool consolidate, char **new_top)
{
	struct sup_disk *d = find(ds, addr);
	if (!d)
		return -VELA_E_NOTFOUND;
	if (!d->export)
		return vela_error(VELA_E_NOTFOUND, "%s is not exported", d->addr);
	CLEANUP_FREE char *redo = xstrdup(d->export->redo);
	end_export(d);
	CLEANUP_FREE char *top = blk_disk_top(d->disk);
	/* Fold the export's redo log back, unless somebody stacked more on it. */
	if (consolidate && strcmp(top, redo) == 0) {
		int r = sup_disks_commit(ds, addr, 0, false, new_top);
		if (r < 0)
			return r;
	} else {
		*new_top = xstrdup(top);
	}
	return 0;
}

static int limit_of(json_t *l, const char *key, uint64_t *out)
{
	json_t *v = json_object_get(l, key);
	if (!v)
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return vela_error(VELA_E_INVAL, "limit %s: expected a number >= 0 (0 = unlimited)", key);
	*out = (uint64_t)json_integer_value(v);
	return 0;
}

int sup_disks_set_limits(struct sup_disks *ds, const char *addr, json_t *limits)
{
	struct sup_disk *d = find(ds, addr);
	if (!d)
		return -VELA_E_NOTFOUND;
	struct blk_disk_limits l;
	blk_disk_get_limits(d->disk, &l);
	uint64_t iops = UINT64_MAX, bps = UINT64_MAX;
	int r;
	if ((r = limit_of(limits, "iops", &iops)) < 0 || (r = limit_of(limits, "bps", &bps)) < 0 ||
	    (r = limit_of(limits, "iops_rd", &l.iops_rd)) < 0 || (r = limit_of(limits, "iops_wr", &l.iops_wr)) < 0 ||
	    (r = limit_of(limits, "bps_rd", &l.bps_rd)) < 0 || (r = limit_of(limits, "bps_wr", &l.bps_wr)) < 0)
		return r;
	if (iops != UINT64_MAX)
		l.iops_rd = l.iops_wr = iops;
	if (bps != UINT64_MAX)
		l.bps_rd = l.bps_wr = bps;
	blk_disk_set_limits(d->disk, &l);
	vela_log(VELA_LOG_INFO, "%s: limits: read %" PRIu64 " IOPS %" PRIu64 " B/s, write %" PRIu64 " IOPS %" PRIu64
		 " B/s (0 = unlimited)", d->addr, l.iops_rd, l.bps_rd, l.iops_wr, l.bps_wr);
	return 0;
}

json_t *sup_disks_stats(struct sup_disks *ds)
{
	json_t *all = json_object();
	for (size_t i = 0; ds && i < ds->n; i++) {
		struct sup_disk *d = &ds->d[i];
		if (!d->disk)
			continue;
		struct blk_disk_stats st;
		struct blk_disk_limits l;
		blk_disk_get_stats(d->disk, &st);
		blk_disk_get_limits(d->disk, &l);
		CLEANUP_FREE char *top = blk_disk_top(d->disk);
		json_t *hist = json_array();
		for (unsigned b = 0; b < BLK_LAT_BUCKETS; b++)
			json_array_append_new(hist, json_integer((json_int_t)st.lat_hist[b]));
		json_object_set_new(all, d->addr, json_pack(
			"{s:s, s:s, s:i, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:{s:I, s:I, s:I, s:I}}",
			"file", top, "base", d->base, "depth", (int)blk_disk_depth(d->disk),
			"mode", vmx_disk_mode_name(d->mode), "transport", d->vhost ? "vhost-user-blk" : "nbd",
			"rd_ops", (json_int_t)st.rd_ops, "wr_ops", (json_int_t)st.wr_ops,
			"rd_bytes", (json_int_t)st.rd_bytes, "wr_bytes", (json_int_t)st.wr_bytes,
			"flush_ops", (json_int_t)st.flush_ops, "discard_ops", (json_int_t)st.discard_ops,
			"errors", (json_int_t)st.errors,
			"rd_lat_us_avg", (json_int_t)(st.rd_ops ? st.rd_lat_us / st.rd_ops : 0),
			"wr_lat_us_avg", (json_int_t)(st.wr_ops ? st.wr_lat_us / st.wr_ops : 0),
			"lat_hist_pow2_us", hist,
			"limits", "iops_rd", (json_int_t)l.iops_rd, "iops_wr", (json_int_t)l.iops_wr,
			"bps_rd", (json_int_t)l.bps_rd, "bps_wr", (json_int_t)l.bps_wr));
	}
	return all;
}

void sup_disks_free(struct sup_disks *ds)
{
	if (!ds)
		return;
	for (size_t i = 0; i < ds->n; i++) {
		struct sup_disk *d = &ds->d[i];
		end_export(d);
		stop_server(&d->srv);
		if (d->disk)
			blk_disk_close(d->disk);
		blk_cbt_free(d->cbt);
		free(d->base);
		free(d->redo);
		free(d->throwaway);
		free(d->sock);
	}
	free(ds->d);
	free(ds->sockets);
	free(ds->vm_dir);
	free(ds);
}
