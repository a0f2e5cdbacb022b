/*
 * vmconfig.c - a VM's settings: reading them, changing them (at once when
 * the VM is off; for the next power cycle, shown as pending, when it runs),
 * and deleting a VM with its files.
 */
#include "common.h"
#include "internal.h"
#include "vdisk.h"
#include "vmx.h"
#include "vmx-sup.h"

#include <dirent.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CDROM_KEY "ide1:0"

json_t *host_vm_settings(const char *config)
{
	struct vmx_file *f = NULL;
	struct vmx_model *m = NULL;
	struct vmx_model_opts mo = { .check_files = false };
	if (vmx_file_load(config, &f) < 0 || vmx_model_build(f, config, &mo, NULL, &m) < 0) {
		json_t *o = json_pack("{s:s}", "error", vela_errmsg());
		vmx_file_free(f);
		return o;
	}
	json_t *disks = json_array(), *cdroms = json_array();
	for (size_t i = 0; i < m->n_disks; i++) {
		const struct vmx_disk *d = &m->disks[i];
		json_t *o = json_pack("{s:s, s:s?}", "addr", d->addr, "file", d->path);
		if (d->type == VMX_DEV_DISK) {
			json_object_set_new(o, "mode", json_string(vmx_disk_mode_name(d->mode)));
			json_array_append_new(disks, o);
		} else {
			json_array_append_new(cdroms, o);
		}
	}
	size_t nics = 0;
	for (size_t i = 0; i < VMX_MAX_NICS; i++)
		nics += m->nics[i].present;
	json_t *o = json_pack("{s:I, s:i, s:s, s:s, s:o, s:o, s:I}", "memsize", (json_int_t)m->memsize_mb, "vcpus",
			      (int)m->vcpus, "guestOS", m->guest_os ? m->guest_os : "", "annotation",
			      m->annotation ? m->annotation : "", "disks", disks, "cdroms", cdroms, "nics", (json_int_t)nics);
	vmx_model_free(m);
	vmx_file_free(f);
	return o;
}

int host_vm_log(struct host *h, int64_t id, size_t max, json_t **out)
{
	struct vm_row v = { 0 };
	int r = host_vm_row_get(h, id, &v);
	if (r < 0)
		return r;
	CLEANUP_FREE char *dir = path_dirname(v.config);
	CLEANUP_FREE char *path = path_join(dir, "vela.log");
	host_vm_row_clear(&v);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno != ENOENT)
			return vela_error_errno(errno, "VM %lld: %s", (long long)id, path);
		*out = json_pack("{s:s, s:I, s:b}", "text", "", "size", (json_int_t)0, "truncated", 0);   /* never ran */
		return 0;
	}
	struct stat st;
	r = fstat(fd, &st) < 0 ? vela_error_errno(errno, "%s", path) : 0;
	/* The end of the log is what an administrator looks for. */
	size_t size = r == 0 ? (size_t)st.st_size : 0, want = size < max ? size : max;
	char *buf = xcalloc(1, want + 1);
	ssize_t n = r == 0 ? pread(fd, buf, want, (off_t)(size - want)) : 0;
	close(fd);
	if (r == 0 && n < 0)
		r = vela_error_errno(errno, "%s", path);
	if (r == 0) {
		/* Start at a line, and keep only text JSON can carry. */
		char *start = buf;
		if (size > want && (start = memchr(buf, '\n', (size_t)n)))
			start++;
		else
			start = buf;
		for (char *c = start; c < buf + n; c++)
			if ((unsigned char)*c < 0x20 && *c != '\n' && *c != '\t')
				*c = '?';
		*out = json_pack("{s:s%, s:I, s:b}", "text", start, (size_t)(buf + n - start), "size", (json_int_t)size,
				 "truncated", size > want);
		if (!*out)   /* not UTF-8 */
			*out = json_pack("{s:s, s:I, s:b}", "text", "(the log is not UTF-8 text)", "size", (json_int_t)size,
					 "truncated", 1);
	}
	free(buf);
	return r;
}

/* ------------------------------------------------------- reconfigure */

struct edit {
	const char *keys[16];
	const char *values[16];
	char buf[4][32];
	size_t n;
};

static void edit_add(struct edit *e, const char *key, const char *value)
{
	e->keys[e->n] = key;
	e->values[e->n++] = value;
}

/* The .vmx keys a change set makes; validates the values. */
static int edits_of(json_t *ch, struct edit *e)
{
	json_t *v;
	if ((v = json_object_get(ch, "memsize"))) {
		if (!json_is_integer(v) || json_integer_value(v) < 16 || json_integer_value(v) > 1048576)
			return vela_error(VELA_E_RANGE, "reconfigure: memsize is 16 to 1048576 (MiB)");
		snprintf(e->buf[0], sizeof e->buf[0], "%lld", (long long)json_integer_value(v));
		edit_add(e, "memsize", e->buf[0]);
	}
	if ((v = json_object_get(ch, "vcpus"))) {
		if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 64)
			return vela_error(VELA_E_RANGE, "reconfigure: vcpus is 1 to 64");
		snprintf(e->buf[1], sizeof e->buf[1], "%lld", (long long)json_integer_value(v));
		edit_add(e, "numvcpus", e->buf[1]);
	}
	if ((v = json_object_get(ch, "guestOS"))) {
		if (!host_name_ok(json_string_value(v), 64))
			return vela_error(VELA_E_INVAL, "reconfigure: bad guestOS");
		edit_add(e, "guestOS", json_string_value(v));
	}
	if ((v = json_object_get(ch, "annotation"))) {
		const char *s = json_string_value(v);
		if (!s || strlen(s) > 4096 || strpbrk(s, "\n\r"))
			return vela_error(VELA_E_INVAL, "reconfigure: annotation is one line of at most 4096 bytes");
		edit_add(e, "annotation", *s ? s : NULL);
	}
	if ((v = json_object_get(ch, "name"))) {
		if (!host_name_ok(json_string_value(v), 255))
			return vela_error(VELA_E_BADNAME, "reconfigure: bad name");
		edit_add(e, "displayName", json_string_value(v));
	}
	if ((v = json_object_get(ch, "cdrom"))) {
		/* An ISO file (absolute, or relative to the VM's folder), or ""
		 * for no CD-ROM drive. */
		const char *s = json_string_value(v);
		if (!s || strlen(s) > 1024 || (*s && !host_name_ok(s, 1024)))
			return vela_error(VELA_E_INVAL, "reconfigure: cdrom is a file name, or \"\" for none");
		edit_add(e, CDROM_KEY ".present", *s ? "TRUE" : NULL);
		edit_add(e, CDROM_KEY ".deviceType", *s ? "cdrom-image" : NULL);
		edit_add(e, CDROM_KEY ".fileName", *s ? s : NULL);
	}
	if ((v = json_object_get(ch, "nic"))) {
		if (!json_is_boolean(v))
			return vela_error(VELA_E_INVAL, "reconfigure: nic is true or false");
		edit_add(e, "ethernet0.present", json_is_true(v) ? "TRUE" : NULL);
		edit_add(e, "ethernet0.connectionType", json_is_true(v) ? "nat" : NULL);
	}
	static const char *const known[] = { "memsize", "vcpus", "guestOS", "annotation", "name", "cdrom", "nic", "folder" };
	const char *k;
	json_object_foreach(ch, k, v) {
		size_t i = 0;
		while (i < ARRAY_SIZE(known) && strcmp(k, known[i]) != 0)
			i++;
		if (i == ARRAY_SIZE(known))
			return vela_error(VELA_E_INVAL, "reconfigure: unknown setting \"%.64s\" (memsize, vcpus, guestOS,"
							" annotation, name, folder, cdrom, nic)", k);
	}
	return 0;
}

static int update_inventory(struct host *h, int64_t id, const char *name, const char *folder)
{
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	int r = host_db_prepare(h, "UPDATE vms SET name = COALESCE(?, name), folder = COALESCE(?, folder) WHERE id = ?",
				&st);
	if (r == 0) {
		if (name)
			sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
		if (folder)
			sqlite3_bind_text(st, 2, folder, -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(st, 3, id);
		if (sqlite3_step(st) != SQLITE_DONE)
			r = host_db_fail(h, "reconfigure");
		atomic_fetch_add(&h->generation, 1);
	}
	pthread_mutex_unlock(&h->db_lock);
	return r;
}

/* Send the edits to the VM's supervisor (it owns the file while the VM runs). */
static int edit_running(const char *config, const struct edit *e)
{
	json_t *keys = json_object();
	for (size_t i = 0; i < e->n; i++)
		json_object_set_new(keys, e->keys[i], e->values[i] ? json_string(e->values[i]) : json_null());
	json_t *reply = NULL, *req = json_pack("{s:s, s:o}", "cmd", "edit", "keys", keys);
	int r = vmxsup_call(config, req, &reply, STATUS_TIMEOUT_MS);
	json_decref(req);
	json_decref(reply);
	return r;
}

int host_vm_reconfigure(struct host *h, const char *user, int64_t id, json_t *changes, json_t **out)
{
	if (!json_is_object(changes) || json_object_size(changes) == 0)
		return vela_error(VELA_E_INVAL, "reconfigure: give the settings to change");
	struct edit e = { .n = 0 };
	int r = edits_of(changes, &e);
	if (r < 0)
		return r;
	const char *name = json_string_value(json_object_get(changes, "name"));
	const char *folder = json_string_value(json_object_get(changes, "folder"));
	if (json_object_get(changes, "folder") && !host_folder_ok(folder))
		return vela_error(VELA_E_BADNAME, "reconfigure: bad inventory folder");
	struct vm_row v = { 0 };
	struct vm_oplock *l = NULL;
	if ((r = host_vm_lock(h, id, &v, &l)) < 0)
		return r;
	bool running = vmxsup_is_running(v.config);
	if (e.n > 0)
		r = running ? edit_running(v.config, &e) : vmx_file_edit(v.config, e.keys, e.values, e.n);
	if (r == 0)
		r = update_inventory(h, id, name, folder);
	pthread_mutex_unlock(&l->lock);
	if (r == 0) {
		CLEANUP_FREE char *keys = NULL;
		json_t *jk = json_array();
		const char *k;
		json_t *val;
		json_object_foreach(changes, k, val)
			json_array_append_new(jk, json_string(k));
		keys = json_dumps(jk, JSON_COMPACT);
		json_decref(jk);
		host_event(h, HOST_AUDIT, id, user, "vm.reconfigured", "%s%s", keys,
			   running && e.n ? " (VM on: pending until the next power cycle)" : "");
		r = host_vm_get(h, id, out);
	} else {
		vela_error_context(r, "reconfigure VM %lld (%s)", (long long)id, v.name);
	}
	host_vm_row_clear(&v);
	return r;
}

/* ------------------------------------------------------------ delete */

/* Remove a VM's inventory record and what hangs on it. */
int host_vm_forget_locked(struct host *h, int64_t id)
{
	static const char *const sql[] = {
		"DELETE FROM vms WHERE id = ?", "DELETE FROM vm_state WHERE vm = ?", "DELETE FROM autostart WHERE vm = ?",
		"DELETE FROM grants WHERE scope = 'vm:' || ?",
	};
	for (size_t i = 0; i < ARRAY_SIZE(sql); i++) {
		CLEANUP_STMT sqlite3_stmt *st = NULL;
		int r = host_db_prepare(h, sql[i], &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, id);
		if (sqlite3_step(st) != SQLITE_DONE)
			return host_db_fail(h, "unregister");
	}
	atomic_fetch_add(&h->generation, 1);
	return 0;
}

static bool in_dir(const char *path, const char *dir)
{
	size_t n = strlen(dir);
	return strncmp(path, dir, n) == 0 && path[n] == '/' && !strchr(path + n + 1, '/');
}

static void add_unique(json_t *list, const char *path)
{
	size_t i;
	json_t *p;
	json_array_foreach(list, i, p)
		if (strcmp(json_string_value(p), path) == 0)
			return;
	json_array_append_new(list, json_string(path));
}

/* The supervisor's log in the VM's folder: vela.log and its rotated
 * vela-N.log. */
static bool supervisor_log(const char *name)
{
	if (strcmp(name, "vela.log") == 0)
		return true;
	if (strncmp(name, "vela-", 5) != 0)
		return false;
	const char *p = name + 5;
	size_t digits = strspn(p, "0123456789");
	return digits > 0 && strcmp(p + digits, ".log") == 0;
}

/*
 * The files a VM owns, in the order to delete them: every image of each
 * disk's chain (top first) that lies in the VM's folder, then the files of
 * the folder named after the .vmx (its .vmsd, logs, nvram), the .vmx last.
 * Disks outside the folder may be shared (a base disk of several VMs): they
 * are kept and named in *kept.
 */
static int vm_files(const char *config, json_t **files, json_t **kept)
{
	CLEANUP_FREE char *dir = path_dirname(config);
	CLEANUP_FREE char *base = path_basename(config);
	size_t stem = strlen(base) > 4 && strcmp(base + strlen(base) - 4, ".vmx") == 0 ? strlen(base) - 4 : strlen(base);
	struct vmx_file *f = NULL;
	struct vmx_model *m = NULL;
	struct vmx_model_opts mo = { .check_files = false };
	int r = vmx_file_load(config, &f);
	if (r == 0)
		r = vmx_model_build(f, config, &mo, NULL, &m);
	vmx_file_free(f);
	if (r < 0)
		return r;
	*files = json_array();
	*kept = json_array();
	for (size_t i = 0; i < m->n_disks; i++) {
		const struct vmx_disk *d = &m->disks[i];
		if (d->type != VMX_DEV_DISK || !d->path)
			continue;
		struct vdisk *vd = NULL;
		struct vdisk_info *info = NULL;
		if (vdisk_open(d->path, VDISK_OPEN_RDONLY, &vd) == 0 && vdisk_get_info(vd, &info) == 0) {
			for (struct vdisk_info *p = info; p; p = p->backing) {
				CLEANUP_FREE char *real = realpath(p->path, NULL);
				const char *q = real ? real : p->path;
				if (in_dir(q, dir))
					add_unique(*files, q);
				else
					add_unique(*kept, q);
			}
		} else if (in_dir(d->path, dir)) {
			add_unique(*files, d->path);   /* unreadable: its file still goes */
		}
		vdisk_info_free(info);
		vdisk_close(vd);
	}
	vmx_model_free(m);
	/* Another VM in the same folder ("web.vmx" next to "web-2.vmx"):
	 * then only "<stem>.*" is this one's. */
	bool shared = false;
	DIR *dd = opendir(dir);
	struct dirent *e;
	while (dd && (e = readdir(dd))) {
		size_t n = strlen(e->d_name);
		shared |= n > 4 && strcmp(e->d_name + n - 4, ".vmx") == 0 && strcmp(e->d_name, base) != 0;
	}
	if (dd)
		rewinddir(dd);
	while (dd && (e = readdir(dd))) {
		if (!shared && supervisor_log(e->d_name)) {
			CLEANUP_FREE char *p = path_join(dir, e->d_name);
			add_unique(*files, p);
			continue;
		}
		if (strncmp(e->d_name, base, stem) != 0 || strcmp(e->d_name, base) == 0)
			continue;
		char c = e->d_name[stem];
		if (c != '.' && (shared || (c != '-' && c != '_')))
			continue;
		CLEANUP_FREE char *p = path_join(dir, e->d_name);
		struct stat st;
		if (lstat(p, &st) == 0 && S_ISREG(st.st_mode))
			add_unique(*files, p);
	}
	if (dd)
		closedir(dd);
	add_unique(*files, config);
	return 0;
}

int host_vm_delete(struct host *h, const char *user, int64_t id, bool files, struct host_task *t, json_t **out)
{
	struct vm_row v = { 0 };
	struct vm_oplock *l = NULL;
	int r = host_vm_lock(h, id, &v, &l);
	if (r < 0)
		return r;
	json_t *list = NULL, *kept = NULL, *removed = json_array();
	if (vmxsup_is_running(v.config)) {
		r = vela_error(VELA_E_BADSTATE, "VM %lld (%s) is powered on: power it off first", (long long)id, v.name);
	} else if (files && (r = vm_files(v.config, &list, &kept)) < 0) {
		vela_error_context(r, "delete VM %lld: its configuration cannot be read, so its files are unknown"
				      " (unregister it instead)", (long long)id);
	} else {
		/* The record goes first: a VM whose files are half gone must not
		 * stay in the inventory. */
		pthread_mutex_lock(&h->db_lock);
		r = host_vm_forget_locked(h, id);
		if (r == 0)
			r = host_event_locked(h, HOST_AUDIT, id, user, files ? "vm.deleted" : "vm.unregistered", v.config);
		pthread_mutex_unlock(&h->db_lock);
	}
	size_t i, failed = 0;
	json_t *p;
	if (r == 0 && files) {
		json_array_foreach(list, i, p) {
			host_task_progress(t, (unsigned)(i * 100 / json_array_size(list)));
			const char *path = json_string_value(p);
			struct stat st;
			if (lstat(path, &st) < 0)
				continue;   /* an extent vdisk_delete took with its disk */
			const char *ext = strrchr(path, '.');
			bool image = ext && (strcmp(ext, ".vmdk") == 0 || strcmp(ext, ".vhd") == 0 ||
					     strcmp(ext, ".qcow2") == 0);
			int e = image ? vdisk_delete(path, true) : (unlink(path) < 0 ? -errno : 0);
			if (e < 0 && image)
				e = unlink(path) < 0 ? -errno : 0;   /* a damaged image is still a file */
			if (e < 0) {
				failed++;
				json_array_append(kept, p);
				vela_log(VELA_LOG_WARN, "delete VM %lld: %s: %s", (long long)id, path, strerror(-e));
			} else {
				json_array_append(removed, p);
			}
		}
		CLEANUP_FREE char *dir = path_dirname(v.config);
		bool dir_gone = rmdir(dir) == 0;
		if (failed)
			host_event(h, HOST_WARNING, id, user, "vm.delete.incomplete", "%zu files could not be removed", failed);
		*out = json_pack("{s:I, s:O, s:O, s:b}", "id", (json_int_t)id, "removed", removed, "kept", kept,
				 "folder_removed", dir_gone);
	} else if (r == 0) {
		*out = json_pack("{s:I, s:[], s:[], s:b}", "id", (json_int_t)id, "removed", "kept", "folder_removed", 0);
	}
	pthread_mutex_unlock(&l->lock);
	json_decref(list);
	json_decref(kept);
	json_decref(removed);
	host_vm_row_clear(&v);
	return r;
}
