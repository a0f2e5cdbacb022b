/*
 * snapshot.c - disk snapshots of a VM (`vela vm snapshot`, velad's
 * /vms/ID/snapshots) with a tree, kept in the VM's .vmsd (key = "value" lines, as the classic
 * systems kept them).
 *
 * A snapshot records, per disk, the image that holds the disk's state at
 * that moment ("snapshotN.diskM.fileName"); taking it puts a redo log on
 * top of every disk (live through the supervisor when the VM runs, O(1)
 * either way).  Reverting starts a new redo log on the snapshot's images
 * and drops images nothing needs any more; deleting a snapshot merges its
 * image with the one image built on it (live when that is in the running
 * chain), so the chain does not grow without bound.
 */
#include "common.h"
#include "vdisk.h"
#include "vmx.h"
#include "vmx-sup.h"
#include "snapshot.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_SNAPSHOTS 1024
#define MAX_SNAP_DISKS 64

struct snap_disk {
	char node[16];       /* "scsi0:0" */
	char *file;          /* absolute */
};

struct snap {
	unsigned uid, parent;   /* parent 0 = a root */
	char *name, *description, *created;
	char *vmstate;          /* memory snapshot: the saved state (absolute), or NULL */
	struct snap_disk disks[MAX_SNAP_DISKS];
	size_t ndisks;
};

struct snaps {
	struct snap *v;
	size_t n;
	unsigned current, last_uid;
	char *path, *vm_dir;
};

static void snaps_free(struct snaps *t)
{
	for (size_t i = 0; i < t->n; i++) {
		free(t->v[i].name);
		free(t->v[i].description);
		free(t->v[i].created);
		free(t->v[i].vmstate);
		for (size_t k = 0; k < t->v[i].ndisks; k++)
			free(t->v[i].disks[k].file);
	}
	free(t->v);
	free(t->path);
	free(t->vm_dir);
}

static int get_uint(const struct vmx_file *f, const char *key, unsigned max, unsigned *out)
{
	const char *v = vmx_get(f, key);
	uint64_t u = 0;
	if (v && parse_u64(v, max, &u) < 0)
		return vela_error(VELA_E_CORRUPT, "%s: %s = \"%s\": expected a number up to %u", vmx_file_name(f), key, v,
				  max);
	*out = (unsigned)u;
	return 0;
}

/* Load the .vmsd next to the .vmx (none yet = no snapshots). */
static int snaps_load(const char *vmx_path, struct snaps *t)
{
	memset(t, 0, sizeof(*t));
	t->vm_dir = path_dirname(vmx_path);
	size_t l = strlen(vmx_path);
	t->path = l > 4 && strcmp(vmx_path + l - 4, ".vmx") == 0 ? xasprintf("%.*s.vmsd", (int)(l - 4), vmx_path)
								 : xasprintf("%s.vmsd", vmx_path);
	struct stat st;
	if (stat(t->path, &st) < 0)
		return 0;
	struct vmx_file *f;
	int r = vmx_file_load(t->path, &f);
	if (r < 0)
		return r;
	unsigned n = 0;
	if ((r = get_uint(f, "snapshot.numSnapshots", MAX_SNAPSHOTS, &n)) < 0 ||
	    (r = get_uint(f, "snapshot.current", UINT32_MAX, &t->current)) < 0 ||
	    (r = get_uint(f, "snapshot.lastUID", UINT32_MAX, &t->last_uid)) < 0)
		goto out;
	t->v = xcalloc(n + 1, sizeof(*t->v));
	for (unsigned i = 0; i < n; i++) {
		struct snap *s = &t->v[t->n++];
		char key[96];
		unsigned nd = 0;
		snprintf(key, sizeof key, "snapshot%u.uid", i);
		if ((r = get_uint(f, key, UINT32_MAX, &s->uid)) < 0)
			goto out;
		snprintf(key, sizeof key, "snapshot%u.parent", i);
		if ((r = get_uint(f, key, UINT32_MAX, &s->parent)) < 0)
			goto out;
		snprintf(key, sizeof key, "snapshot%u.displayName", i);
		s->name = xstrdup(vmx_get(f, key) ? vmx_get(f, key) : "");
		snprintf(key, sizeof key, "snapshot%u.description", i);
		s->description = xstrdup(vmx_get(f, key) ? vmx_get(f, key) : "");
		snprintf(key, sizeof key, "snapshot%u.createTime", i);
		s->created = xstrdup(vmx_get(f, key) ? vmx_get(f, key) : "");
		snprintf(key, sizeof key, "snapshot%u.vmState", i);
		if (vmx_get(f, key) && *vmx_get(f, key)) {
			const char *v = vmx_get(f, key);
			s->vmstate = v[0] == '/' ? xstrdup(v) : path_join(t->vm_dir, v);
		}
		snprintf(key, sizeof key, "snapshot%u.numDisks", i);
		if ((r = get_uint(f, key, MAX_SNAP_DISKS, &nd)) < 0)
			goto out;
		for (unsigned k = 0; k < nd; k++) {
			char fk[96], nk[96];
			snprintf(fk, sizeof fk, "snapshot%u.disk%u.fileName", i, k);
			snprintf(nk, sizeof nk, "snapshot%u.disk%u.node", i, k);
			const char *file = vmx_get(f, fk), *node = vmx_get(f, nk);
			if (!file || !node || strlen(node) >= sizeof s->disks[0].node) {
				r = vela_error(VELA_E_CORRUPT, "%s: snapshot %u disk %u lacks its node or fileName", t->path, i, k);
				goto out;
			}
			struct snap_disk *d = &s->disks[s->ndisks++];
			snprintf(d->node, sizeof d->node, "%s", node);
			d->file = file[0] == '/' ? xstrdup(file) : path_join(t->vm_dir, file);
		}
		if (s->uid == 0 || s->uid > t->last_uid) {
			r = vela_error(VELA_E_CORRUPT, "%s: snapshot %u has uid %u (lastUID %u)", t->path, i, s->uid, t->last_uid);
			goto out;
		}
	}
out:
	vmx_file_free(f);
	return r;
}

/* A file name as stored: relative when it lies in the VM's folder. */
static const char *stored_name(const struct snaps *t, const char *path)
{
	size_t l = strlen(t->vm_dir);
	if (strncmp(path, t->vm_dir, l) == 0 && path[l] == '/' && !strchr(path + l + 1, '/'))
		return path + l + 1;
	return path;
}

static int snaps_save(const struct snaps *t)
{
	struct strbuf sb = { 0 };
	strbuf_puts(&sb, ".encoding = \"UTF-8\"\n");
	strbuf_printf(&sb, "snapshot.lastUID = \"%u\"\n", t->last_uid);
	if (t->current)
		strbuf_printf(&sb, "snapshot.current = \"%u\"\n", t->current);
	strbuf_printf(&sb, "snapshot.numSnapshots = \"%zu\"\n", t->n);
	for (size_t i = 0; i < t->n; i++) {
		const struct snap *s = &t->v[i];
		strbuf_printf(&sb, "snapshot%zu.uid = \"%u\"\n", i, s->uid);
		if (s->parent)
			strbuf_printf(&sb, "snapshot%zu.parent = \"%u\"\n", i, s->parent);
		/* Values keep to one line: the vmx escapes (|22 for a quote) apply. */
		struct vmx_file *tmp = NULL;
		vmx_file_parse("snapshot", "", 0, &tmp);
		vmx_set(tmp, "n", s->name);
		vmx_set(tmp, "d", s->description);
		char *txt = vmx_file_serialize(tmp, NULL);
		char *nl = strchr(txt, '\n'), *dl = nl ? nl + 1 : NULL;
		if (nl)
			*nl = '\0';
		if (dl && strchr(dl, '\n'))
			*strchr(dl, '\n') = '\0';
		strbuf_printf(&sb, "snapshot%zu.displayName%s\n", i, txt + 1);
		strbuf_printf(&sb, "snapshot%zu.description%s\n", i, dl ? dl + 1 : " = \"\"");
		free(txt);
		vmx_file_free(tmp);
		strbuf_printf(&sb, "snapshot%zu.createTime = \"%s\"\n", i, s->created);
		if (s->vmstate)
			strbuf_printf(&sb, "snapshot%zu.vmState = \"%s\"\n", i, stored_name(t, s->vmstate));
		strbuf_printf(&sb, "snapshot%zu.numDisks = \"%zu\"\n", i, s->ndisks);
		for (size_t k = 0; k < s->ndisks; k++) {
			strbuf_printf(&sb, "snapshot%zu.disk%zu.fileName = \"%s\"\n", i, k, stored_name(t, s->disks[k].file));
			strbuf_printf(&sb, "snapshot%zu.disk%zu.node = \"%s\"\n", i, k, s->disks[k].node);
		}
	}
	int r = write_file_atomic(t->path, sb.data, sb.len);
	strbuf_free(&sb);
	return r < 0 ? vela_error_context(r, "write %s", t->path) : 0;
}

static struct snap *find_snap(struct snaps *t, const char *name)
{
	for (size_t i = 0; i < t->n; i++)
		if (strcmp(t->v[i].name, name) == 0)
			return &t->v[i];
	vela_error(VELA_E_NOTFOUND, "%s: no snapshot named \"%s\"", t->path, name);
	return NULL;
}

/* What every command works on: the .vmsd, the .vmx and its model, and (when
 * a name is given) that snapshot. */
struct snap_job {
	struct snaps t;
	struct vmx_file *f;
	struct vmx_model *m;
	struct snap *s;
};

static int job_open(const char *vmx, const char *name, struct snap_job *j)
{
	memset(j, 0, sizeof(*j));
	int r = snaps_load(vmx, &j->t);
	if (r == 0 && name && !(j->s = find_snap(&j->t, name)))
		r = -VELA_E_NOTFOUND;
	if (r == 0 && (r = vmx_file_load(vmx, &j->f)) == 0)
		r = vmx_model_build(j->f, vmx, NULL, NULL, &j->m);
	return r;
}

static void job_close(struct snap_job *j)
{
	vmx_model_free(j->m);
	vmx_file_free(j->f);
	snaps_free(&j->t);
}

/* The model's hard disk at a .vmx address, or NULL. */
static const struct vmx_disk *model_disk(const struct vmx_model *m, const char *node)
{
	for (size_t i = 0; i < m->n_disks; i++)
		if (str_ieq(m->disks[i].addr, node) && m->disks[i].type == VMX_DEV_DISK)
			return &m->disks[i];
	return NULL;
}

/* ------------------------------------------------------- disk helpers */

static bool snapshot_mode(enum vmx_disk_mode m)
{
	return m == VMX_MODE_PERSISTENT;
}

/* Point the .vmx's disk at file (offline). */
static int set_vmx_disk(const char *vmx, const struct snaps *t, const char *node, const char *file)
{
	struct vmx_file *f;
	int r = vmx_file_load(vmx, &f);
	if (r < 0)
		return r;
	CLEANUP_FREE char *key = xasprintf("%s.fileName", node);
	r = vmx_set(f, key, stored_name(t, file));
	if (r == 0)
		r = vmx_file_save(f, vmx);
	vmx_file_free(f);
	return r;
}

/* New redo log on a disk; *top is its new top. */
static int disk_addredo(const char *vmx, const struct snaps *t, bool live, const char *node, const char *cur, char **top)
{
	if (live) {
		json_t *reply = NULL;
		json_t *req = json_pack("{s:s, s:s}", "cmd", "addredo", "disk", node);
		int r = vmxsup_call(vmx, req, &reply, 60000);
		json_decref(req);
		if (r < 0)
			return r;
		*top = xstrdup(json_string_value(json_object_get(reply, "top")));
		json_decref(reply);
		return 0;
	}
	int r = vdisk_addredo(cur, top);
	if (r == 0 && (r = set_vmx_disk(vmx, t, node, *top)) < 0) {
		unlink(*top);
		free(*top);
		*top = NULL;
	}
	return r;
}

/* The chain below top, realpaths, top first (caller frees with free_list). */
static int chain_of(const char *top, char ***out, size_t *n)
{
	return vdisk_chain_paths(top, out, n);
}

/* Chains and the lists built here: NULL-terminated arrays of strings. */
static void free_list(char **v)
{
	vdisk_chain_free(v);
}

static bool in_list(char *const *v, const char *p)
{
	for (size_t i = 0; v && v[i]; i++)
		if (strcmp(v[i], p) == 0)
			return true;
	return false;
}

static char *real_or_copy(const char *p)
{
	char real[PATH_MAX];
	return xstrdup(realpath(p, real) ? real : p);
}

/* Every image a snapshot of disk `node` needs (its file and all below), except skip. */
static char **protected_images(const struct snaps *t, const char *node, const struct snap *skip)
{
	size_t cap = 16, n = 0;
	char **v = xcalloc(cap, sizeof(char *));
	for (size_t i = 0; i < t->n; i++) {
		if (&t->v[i] == skip)
			continue;
		for (size_t k = 0; k < t->v[i].ndisks; k++) {
			if (strcmp(t->v[i].disks[k].node, node) != 0)
				continue;
			char **chain = NULL;
			size_t cn = 0;
			if (chain_of(t->v[i].disks[k].file, &chain, &cn) < 0)
				continue;   /* a missing image protects nothing more */
			for (size_t c = 0; c < cn; c++) {
				if (in_list(v, chain[c]))
					continue;
				if (n + 2 > cap)
					v = xrealloc(v, (cap *= 2) * sizeof(char *));
				v[n++] = xstrdup(chain[c]);
				v[n] = NULL;
			}
			free_list(chain);
		}
	}
	return v;
}

/* Delete images from top down while nothing else needs them. */
static void drop_unneeded(const char *top, char *const *keep)
{
	char **chain = NULL;
	size_t n = 0;
	if (chain_of(top, &chain, &n) < 0)
		return;
	for (size_t i = 0; i < n && !in_list(keep, chain[i]); i++) {
		if (vdisk_delete(chain[i], true) < 0)
			vela_log(VELA_LOG_WARN, "snapshot: %s", vela_errmsg());
	}
	free_list(chain);
}

/* ---------------------------------------------------------- commands */

/* One request to the running VM's supervisor; reply dropped. */
static int sup_request(const char *vmx, json_t *req, int timeout_ms)
{
	json_t *reply = NULL;
	int r = vmxsup_call(vmx, req, &reply, timeout_ms);
	json_decref(req);
	json_decref(reply);
	return r;
}

static const char *sup_state(const char *vmx)
{
	static __thread char state[32];
	json_t *reply = NULL;
	json_t *req = json_pack("{s:s}", "cmd", "status");
	state[0] = '\0';
	if (vmxsup_call(vmx, req, &reply, 10000) == 0)
		snprintf(state, sizeof state, "%s", json_string_value(json_object_get(reply, "state")) ?: "");
	json_decref(req);
	json_decref(reply);
	return state;
}

/* <stem>-Snapshot<uid>.vmsn next to the .vmx. */
static char *memory_file(const char *vmx, unsigned uid)
{
	size_t l = strlen(vmx);
	int stem = l > 4 && strcmp(vmx + l - 4, ".vmx") == 0 ? (int)(l - 4) : (int)l;
	return xasprintf("%.*s-Snapshot%u.vmsn", stem, vmx, uid);
}

int snapshot_create(const char *vmx, const char *name, const struct snapshot_opts *o, json_t **out)
{
	static const struct snapshot_opts defaults = { 0 };
	if (!o)
		o = &defaults;
	const char *description = o->description;
	bool unpause = false, thaw = false;
	if (!name || !*name || strlen(name) > 200 || strpbrk(name, "\"\n\r"))
		return vela_error(VELA_E_BADNAME, "snapshot: a name of 1-200 characters without quotes or line breaks");
	struct snap_job j;
	int r = job_open(vmx, NULL, &j);
	struct snaps *t = &j.t;
	struct vmx_model *m = j.m;
	if (r < 0)
		goto out;
	for (size_t i = 0; i < t->n; i++)
		if (strcmp(t->v[i].name, name) == 0) {
			r = vela_error(VELA_E_EXISTS, "%s: a snapshot named \"%s\" exists", t->path, name);
			goto out;
		}
	if (t->n >= MAX_SNAPSHOTS) {
		r = vela_error(VELA_E_LIMIT, "%s: %u snapshots is the limit", t->path, MAX_SNAPSHOTS);
		goto out;
	}
	bool live = vmxsup_is_running(vmx);
	if (o->memory && !live) {
		r = vela_error(VELA_E_BADSTATE, "snapshot %s: a snapshot with memory needs a running VM", name);
		goto out;
	}
	if (o->memory) {
		/* Disks and memory from the same instant: the guest stops while
		 * the logs go on, and until its state is saved. */
		const char *st = sup_state(vmx);
		if (strcmp(st, "on") == 0) {
			if ((r = sup_request(vmx, json_pack("{s:s}", "cmd", "pause"), 60000)) < 0) {
				vela_error_context(r, "snapshot %s: pause", name);
				goto out;
			}
			unpause = true;
		} else if (strcmp(st, "paused") != 0) {
			r = vela_error(VELA_E_BADSTATE, "snapshot %s: the VM is %s", name, st[0] ? st : "not answering");
			goto out;
		}
	} else if (o->quiesce && live) {
		json_t *reply = NULL, *req = json_pack("{s:s, s:s}", "cmd", "guest-op", "op", "freeze");
		r = vmxsup_call(vmx, req, &reply, 120000);
		json_decref(req);
		json_decref(reply);
		if (r < 0) {
			vela_error_context(r, "snapshot %s: quiesce", name);
			goto out;
		}
		thaw = true;
	}
	struct snap s = { .uid = t->last_uid + 1, .parent = t->current, .name = xstrdup(name),
			  .description = xstrdup(description ? description : "") };
	json_t *skipped = json_array();
	char when[64];
	time_format_iso(time_real_ms(), when, sizeof when);
	s.created = xstrdup(when);
	for (size_t i = 0; i < m->n_disks && r == 0; i++) {
		const struct vmx_disk *d = &m->disks[i];
		if (d->type != VMX_DEV_DISK || !d->path)
			continue;
		if (!snapshot_mode(d->mode)) {
			json_array_append_new(skipped, json_pack("{s:s, s:s}", "disk", d->addr, "mode", vmx_disk_mode_name(d->mode)));
			continue;
		}
		if (s.ndisks >= MAX_SNAP_DISKS) {
			r = vela_error(VELA_E_LIMIT, "snapshot: more than %u disks", MAX_SNAP_DISKS);
			break;
		}
		char *top = NULL;
		if ((r = disk_addredo(vmx, t, live, d->addr, d->path, &top)) < 0) {
			vela_error_context(r, "snapshot %s: %s", name, d->addr);
			break;
		}
		free(top);
		struct snap_disk *sd = &s.disks[s.ndisks++];
		snprintf(sd->node, sizeof sd->node, "%s", d->addr);
		sd->file = real_or_copy(d->path);
	}
	if (thaw) {
		int e = sup_request(vmx, json_pack("{s:s, s:s}", "cmd", "guest-op", "op", "thaw"), 60000);
		if (e < 0 && r == 0)
			r = vela_error_context(e, "snapshot %s: thaw", name);
	}
	if (r == 0 && o->memory) {
		s.vmstate = memory_file(vmx, s.uid);
		json_t *req = json_pack("{s:s, s:s}", "cmd", "save-state", "file", s.vmstate);
		if ((r = sup_request(vmx, req, 3600 * 1000)) < 0)
			vela_error_context(r, "snapshot %s: memory", name);
	}
	if (unpause) {
		int e = sup_request(vmx, json_pack("{s:s}", "cmd", "unpause"), 60000);
		if (e < 0 && r == 0)
			r = vela_error_context(e, "snapshot %s: unpause", name);
		unpause = false;
	}
	t->v = xrealloc(t->v, (t->n + 1) * sizeof(*t->v));
	t->v[t->n++] = s;
	if (r == 0) {
		t->last_uid = s.uid;
		t->current = s.uid;
		r = snaps_save(t);
	}
	if (r == 0)
		*out = json_pack("{s:s, s:I, s:b, s:b, s:b, s:O}", "name", name, "disks", (json_int_t)s.ndisks, "live", live,
				 "memory", s.vmstate != NULL, "quiesced", thaw, "skipped", skipped);
	else if (s.vmstate)
		unlink(s.vmstate);
	json_decref(skipped);
out:
	if (r < 0 && unpause)
		sup_request(vmx, json_pack("{s:s}", "cmd", "unpause"), 60000);
	job_close(&j);
	return r;
}

int snapshot_list(const char *vmx, json_t **out)
{
	struct snaps t;
	int r = snaps_load(vmx, &t);
	if (r < 0) {
		snaps_free(&t);
		return r;
	}
	json_t *arr = json_array();
	for (size_t i = 0; i < t.n; i++) {
		json_t *disks = json_object();
		for (size_t k = 0; k < t.v[i].ndisks; k++)
			json_object_set_new(disks, t.v[i].disks[k].node, json_string(t.v[i].disks[k].file));
		json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:i, s:i, s:b, s:b, s:o}", "name", t.v[i].name,
			"description", t.v[i].description, "created", t.v[i].created, "uid", (int)t.v[i].uid,
			"parent", (int)t.v[i].parent, "current", t.v[i].uid == t.current, "memory", t.v[i].vmstate != NULL,
			"disks", disks));
	}
	snaps_free(&t);
	*out = arr;
	return 0;
}

int snapshot_revert(const char *vmx, const char *name, bool *resume)
{
	struct snap_job j;
	if (resume)
		*resume = false;
	int r = job_open(vmx, name, &j);
	struct snaps *t = &j.t;
	struct vmx_model *m = j.m;
	struct snap *s = j.s;
	if (r < 0)
		goto out;
	if (s->vmstate && access(s->vmstate, F_OK) < 0) {
		r = vela_error_errno(errno, "revert to %s: its memory state %s", name, s->vmstate);
		goto out;
	}
	if (vmxsup_is_running(vmx) && !s->vmstate) {
		r = vela_error(VELA_E_BADSTATE, "revert: power the VM off first (disk snapshots hold no memory state)");
		goto out;
	}
	if (vmxsup_is_running(vmx)) {
		/* The running state is replaced by the snapshot's. */
		r = sup_request(vmx, json_pack("{s:s, s:s}", "cmd", "stop", "mode", "hard"), 120000);
		for (int i = 0; r == 0 && i < 200 && vmxsup_is_running(vmx); i++)
			usleep(50000);
		if (r < 0 || vmxsup_is_running(vmx)) {
			r = vela_error_context(r < 0 ? r : -VELA_E_TIMEOUT, "revert to %s: power off", name);
			goto out;
		}
	}
	if (vmxsup_is_suspended(vmx, NULL) && (r = vmxsup_discard_suspended(vmx)) < 0)
		goto out;   /* a suspended state of later than the snapshot goes */
	for (size_t k = 0; k < s->ndisks && r == 0; k++) {
		struct snap_disk *sd = &s->disks[k];
		const struct vmx_disk *d = model_disk(m, sd->node);
		CLEANUP_FREE char *child = NULL;
		if ((r = vdisk_addredo(sd->file, &child)) < 0 || (r = set_vmx_disk(vmx, t, sd->node, child)) < 0) {
			vela_error_context(r, "revert to %s: %s", name, sd->node);
			break;
		}
		if (d && d->path) {
			/* What the disk was running on since the snapshot goes,
			 * unless another snapshot still needs it. */
			char **keep = protected_images(t, sd->node, NULL);
			drop_unneeded(d->path, keep);
			free_list(keep);
		}
	}
	if (r == 0) {
		t->current = s->uid;
		r = snaps_save(t);
	}
	if (r == 0 && s->vmstate) {
		/* The VM resumes from the snapshot's memory at its next power-on;
		 * the file stays the snapshot's (readOnly). */
		const char *keys[2] = { "checkpoint.vmState", "checkpoint.vmState.readOnly" };
		const char *values[2] = { stored_name(t, s->vmstate), "TRUE" };
		r = vmx_file_edit(vmx, keys, values, 2);
		if (r == 0 && resume)
			*resume = true;
	}
out:
	job_close(&j);
	return r;
}

/* Images whose parent is `image`, among the chains of tops. */
static size_t children_of(const char *image, char *const *tops, char **only_child)
{
	size_t n = 0;
	char **seen = xcalloc(1, sizeof(char *));
	size_t ns = 0;
	for (size_t i = 0; tops[i]; i++) {
		char **chain = NULL;
		size_t cn = 0;
		if (chain_of(tops[i], &chain, &cn) < 0)
			continue;
		for (size_t k = 0; k + 1 < cn; k++) {
			if (strcmp(chain[k + 1], image) != 0 || in_list(seen, chain[k]))
				continue;
			seen = xrealloc(seen, (ns + 2) * sizeof(char *));
			seen[ns++] = xstrdup(chain[k]);
			seen[ns] = NULL;
			n++;
		}
		free_list(chain);
	}
	if (n == 1 && only_child)
		*only_child = xstrdup(seen[0]);
	free_list(seen);
	return n;
}

/* Merge `child` (at `level` in the chain of the disk's current top) into its parent. */
static int merge_into_parent(const char *vmx, const struct snaps *t, bool live, const char *node, const char *cur_top,
			     unsigned level)
{
	if (live) {
		json_t *reply = NULL;
		json_t *req = json_pack("{s:s, s:s, s:i}", "cmd", "commit", "disk", node, "level", (int)level);
		int r = vmxsup_call(vmx, req, &reply, 24 * 3600 * 1000);
		json_decref(req);
		json_decref(reply);
		return r;
	}
	char **chain = NULL;
	size_t n = 0;
	int r = chain_of(cur_top, &chain, &n);
	if (r < 0)
		return r;
	if (level + 1 >= n) {
		free_list(chain);
		return vela_error(VELA_E_INTERNAL, "merge level %u of a chain of %zu", level, n);
	}
	r = vdisk_commit_level(cur_top, level, true, NULL, NULL);
	if (r == 0 && level == 0)
		r = set_vmx_disk(vmx, t, node, chain[1]);
	free_list(chain);
	return r;
}

int snapshot_delete(const char *vmx, const char *name, bool *was_live)
{
	struct snap_job j;
	int r = job_open(vmx, name, &j);
	struct snaps *t = &j.t;
	struct vmx_model *m = j.m;
	struct snap *s = j.s;
	if (r < 0)
		goto out;
	bool live = vmxsup_is_running(vmx);
	for (size_t k = 0; k < s->ndisks && r == 0; k++) {
		struct snap_disk *sd = &s->disks[k];
		const struct vmx_disk *md = model_disk(m, sd->node);
		const char *cur = md ? md->path : NULL;
		CLEANUP_FREE char *image = real_or_copy(sd->file);
		/* Every top that may build on the image: the running disk and
		 * the other snapshots of this disk. */
		size_t nt = 0;
		char **tops = xcalloc(t->n + 2, sizeof(char *));
		if (cur)
			tops[nt++] = real_or_copy(cur);
		for (size_t i = 0; i < t->n; i++)
			for (size_t d = 0; d < t->v[i].ndisks; d++)
				if (&t->v[i] != s && strcmp(t->v[i].disks[d].node, sd->node) == 0)
					tops[nt++] = real_or_copy(t->v[i].disks[d].file);
		char **keep = protected_images(t, sd->node, s);
		bool needed = in_list(keep, image);
		CLEANUP_FREE char *child = NULL;
		size_t nchild = children_of(image, tops, &child);
		char **cur_chain = NULL;
		size_t cn = 0;
		if (cur && chain_of(cur, &cur_chain, &cn) < 0)
			cur_chain = NULL;
		if (nchild == 1) {
			/* The one image built on the snapshot's image merges into it:
			 * everything built on the image was built through that child,
			 * so every view (the running disk, other snapshots) reads the
			 * same after; snapshots that named the child name the image. */
			unsigned level = 0;
			bool in_cur = false;
			for (size_t i = 0; cur_chain && i < cn; i++)
				if (strcmp(cur_chain[i], child) == 0) {
					level = (unsigned)i;
					in_cur = true;
				}
			if (in_cur) {
				r = merge_into_parent(vmx, t, live, sd->node, cur, level);
			} else {
				/* On another branch: nothing runs on it. */
				char **grand = NULL;
				r = vdisk_commit(child, false, NULL, NULL);
				for (size_t i = 0; r == 0 && tops[i]; i++) {
					size_t gn = 0;
					if (chain_of(tops[i], &grand, &gn) < 0)
						continue;
					for (size_t g = 0; g + 1 < gn && r == 0; g++)
						if (strcmp(grand[g + 1], child) == 0)
							r = vdisk_relink(grand[g], image, true);
					free_list(grand);
				}
				if (r == 0)
					r = vdisk_delete(child, true);
			}
			for (size_t i = 0; r == 0 && i < t->n; i++)
				for (size_t d = 0; d < t->v[i].ndisks; d++) {
					CLEANUP_FREE char *real = real_or_copy(t->v[i].disks[d].file);
					if (strcmp(real, child) == 0 && strcmp(t->v[i].disks[d].node, sd->node) == 0) {
						free(t->v[i].disks[d].file);
						t->v[i].disks[d].file = xstrdup(image);
					}
				}
		} else if (!needed && nchild == 0 && !in_list(cur_chain, image)) {
			r = vdisk_delete(image, true);
		}
		if (r < 0)
			vela_error_context(r, "delete snapshot %s: %s", name, sd->node);
		free_list(cur_chain);
		free_list(keep);
		free_list(tops);
	}
	if (r == 0) {
		/* Out of the tree: its children hang on its parent. */
		unsigned uid = s->uid, parent = s->parent;
		for (size_t i = 0; i < t->n; i++)
			if (t->v[i].parent == uid)
				t->v[i].parent = parent;
		if (t->current == uid)
			t->current = parent;
		size_t idx = (size_t)(s - t->v);
		free(s->name);
		free(s->description);
		free(s->created);
		for (size_t k = 0; k < s->ndisks; k++)
			free(s->disks[k].file);
		if (s->vmstate) {
			unlink(s->vmstate);
			free(s->vmstate);
		}
		memmove(&t->v[idx], &t->v[idx + 1], (t->n - idx - 1) * sizeof(*t->v));
		t->n--;
		r = snaps_save(t);
	}
	if (r == 0 && was_live)
		*was_live = live;
out:
	job_close(&j);
	return r;
}
