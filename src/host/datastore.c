/* datastore.c - datastores: folders that hold VMs and ISO images, their files
 * (browse, streamed upload) and their free space. */
#include "common.h"
#include "internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>


char *host_datastores_dir(struct host *h)
{
	return path_join(h->home, "datastores");
}

static mode_t lst_mode(const char *p)
{
	struct stat st;
	return lstat(p, &st) == 0 ? st.st_mode : 0;
}

static bool ds_name_ok(const char *ds)
{
	if (!ds || !*ds || strlen(ds) > 64 || ds[0] == '.')
		return false;
	for (const char *c = ds; *c; c++)
		if (!(*c == '_' || *c == '-' || *c == '.' || (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
		      (*c >= '0' && *c <= '9')))
			return false;
	return true;
}

int host_datastore_list(struct host *h, json_t **out)
{
	CLEANUP_FREE char *dir = host_datastores_dir(h);
	DIR *d = opendir(dir);
	if (!d)
		return vela_error_errno(errno, "datastores: %s", dir);
	json_t *a = json_array();
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		CLEANUP_FREE char *p = path_join(dir, e->d_name);
		struct statvfs vfs;
		struct stat st;
		if (stat(p, &st) < 0 || !S_ISDIR(st.st_mode) || statvfs(p, &vfs) < 0)
			continue;
		CLEANUP_FREE char *real = realpath(p, NULL);
		uint64_t cap = (uint64_t)vfs.f_blocks * vfs.f_frsize, avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
		json_array_append_new(a, json_pack("{s:s, s:s, s:I, s:I, s:b, s:b, s:b}", "name", e->d_name, "path",
						   real ? real : p, "capacity", (json_int_t)cap, "free", (json_int_t)avail,
						   "low_space", cap && avail * 100 < cap * (uint64_t)h->low_space_percent,
						   "default", strcmp(e->d_name, DEFAULT_DATASTORE) == 0,
						   "linked", S_ISLNK(lst_mode(p))));
	}
	closedir(d);
	*out = a;
	return 0;
}

static bool rel_ok(const char *rel)
{
	if (!rel || strlen(rel) > 1024 || rel[0] == '/')
		return false;
	if (!*rel)
		return true;   /* the datastore's top */
	for (const char *p = rel; *p;) {
		const char *end = strchr(p, '/');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
			return false;
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f)
				return false;
		p += n + (end != NULL);
		if (end && !*p)
			return false;   /* a trailing slash */
	}
	return true;
}

int host_ds_path(struct host *h, const char *ds, const char *rel, char **abs)
{
	if (!ds_name_ok(ds))
		return vela_error(VELA_E_BADNAME, "bad datastore name \"%.64s\"", ds ? ds : "");
	if (!rel_ok(rel))
		return vela_error(VELA_E_BADNAME, "bad path in a datastore: no \"..\", \".\" or empty parts, no control characters");
	CLEANUP_FREE char *dir = host_datastores_dir(h);
	CLEANUP_FREE char *top = path_join(dir, ds);
	CLEANUP_FREE char *root = realpath(top, NULL);
	if (!root)
		return vela_error(VELA_E_NOTFOUND, "no datastore \"%s\"", ds);
	char *p = *rel ? path_join(root, rel) : xstrdup(root);
	/* What exists of the path must stay inside the datastore, links
	 * followed: resolve the longest existing prefix. */
	CLEANUP_FREE char *probe = xstrdup(p);
	for (;;) {
		CLEANUP_FREE char *real = realpath(probe, NULL);
		if (real) {
			size_t n = strlen(root);
			if (strncmp(real, root, n) != 0 || (real[n] != '\0' && real[n] != '/')) {
				free(p);
				return vela_error(VELA_E_PERM, "%s leads out of datastore %s", rel, ds);
			}
			break;
		}
		char *slash = strrchr(probe, '/');
		if (!slash || slash == probe)
			break;
		*slash = '\0';
	}
	*abs = p;
	return 0;
}

int host_ds_browse(struct host *h, const char *ds, const char *rel, json_t **out)
{
	CLEANUP_FREE char *path = NULL;
	int r = host_ds_path(h, ds, rel ? rel : "", &path);
	if (r < 0)
		return r;
	DIR *d = opendir(path);
	if (!d)
		return vela_error_errno(errno, "[%s] %s", ds, rel ? rel : "");
	json_t *a = json_array();
	struct dirent *e;
	while ((e = readdir(d))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 || str_starts_with(e->d_name, ".vela-upload-"))
			continue;
		struct stat st;
		if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		const char *type = S_ISREG(st.st_mode) ? "file" : S_ISDIR(st.st_mode) ? "folder" : "other";
		json_array_append_new(a, json_pack("{s:s, s:s, s:I, s:I}", "name", e->d_name, "type", type, "size",
						   (json_int_t)st.st_size, "mtime", (json_int_t)st.st_mtime * 1000));
	}
	closedir(d);
	*out = a;
	return 0;
}

struct host_upload {
	int fd;
	char *tmp, *final, *ds, *rel;
	uint64_t bytes, expected;
	int error;                 /* the first write failure, answered at the end */
	char *errmsg;
	struct host_task *task;
};

static void upload_free(struct host_upload *u)
{
	if (u->fd >= 0)
		close(u->fd);
	free(u->tmp);
	free(u->final);
	free(u->ds);
	free(u->rel);
	free(u->errmsg);
	free(u);
}

int host_ds_upload_begin(struct host *h, const char *user, const char *ds, const char *rel, uint64_t expected,
			 struct host_upload **up)
{
	CLEANUP_FREE char *path = NULL;
	int r = host_ds_path(h, ds, rel, &path);
	if (r < 0)
		return r;
	if (!*rel)
		return vela_error(VELA_E_BADNAME, "upload: name a file in datastore %s", ds);
	struct stat st;
	if (lstat(path, &st) == 0)
		return vela_error(VELA_E_EXISTS, "[%s] %s already exists", ds, rel);
	CLEANUP_FREE char *dir = path_dirname(path);
	if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
		return vela_error(VELA_E_NOTFOUND, "upload: no folder for [%s] %s", ds, rel);
	struct statvfs vfs;
	if (expected && statvfs(dir, &vfs) == 0 && (uint64_t)vfs.f_bavail * vfs.f_frsize < expected)
		return vela_error(VELA_E_DISKFULL, "upload of %llu MiB: datastore %s has %llu MiB free",
				  (unsigned long long)(expected >> 20), ds,
				  (unsigned long long)(((uint64_t)vfs.f_bavail * vfs.f_frsize) >> 20));
	struct host_upload *u = xcalloc(1, sizeof *u);
	u->tmp = xasprintf("%s/.vela-upload-XXXXXX", dir);
	u->fd = mkostemp(u->tmp, O_CLOEXEC);
	if (u->fd < 0) {
		r = vela_error_errno(errno, "upload to [%s] %s", ds, rel);
		upload_free(u);
		return r;
	}
	fchmod(u->fd, 0644);   /* an ISO others may read, as any datastore file */
	u->final = xstrdup(path);
	u->ds = xstrdup(ds);
	u->rel = xstrdup(rel);
	u->expected = expected;
	CLEANUP_FREE char *target = xasprintf("[%s] %s", ds, rel);
	if ((r = host_task_begin(h, user, 0, "datastore.upload", target, true, &u->task)) < 0) {
		unlink(u->tmp);
		upload_free(u);
		return r;
	}
	*up = u;
	return 0;
}

int64_t host_ds_upload_task(const struct host_upload *up)
{
	return host_task_id(up->task);
}

int host_ds_upload_write(struct host_upload *u, const void *data, size_t n)
{
	if (u->error)
		return u->error;
	if (host_task_cancelled(u->task))
		u->error = vela_error(VELA_E_CANCELED, "upload of [%s] %s cancelled", u->ds, u->rel);
	else if (write_all(u->fd, data, n) < 0)
		u->error = errno == ENOSPC ? vela_error(VELA_E_DISKFULL, "upload: datastore %s is full", u->ds)
					   : vela_error_errno(errno, "upload [%s] %s", u->ds, u->rel);
	if (u->error) {
		u->errmsg = xstrdup(vela_errmsg());
		return u->error;
	}
	u->bytes += n;
	if (u->expected)
		host_task_progress(u->task, (unsigned)(u->bytes * 100 / u->expected));
	return 0;
}

int host_ds_upload_end(struct host *h, const char *user, struct host_upload *u, int why, json_t **out)
{
	int r = u->error ? u->error : why;
	if (u->error)
		vela_error(-r, "%s", u->errmsg);
	else if (r < 0)
		vela_error(-r, "upload of [%s] %s did not complete", u->ds, u->rel);
	if (r == 0 && fsync(u->fd) < 0)
		r = vela_error_errno(errno, "upload [%s] %s: sync", u->ds, u->rel);
	close(u->fd);
	u->fd = -1;
	/* link() never replaces: a file that appeared meanwhile wins. */
	if (r == 0 && link(u->tmp, u->final) < 0)
		r = errno == EEXIST ? vela_error(VELA_E_EXISTS, "[%s] %s already exists", u->ds, u->rel)
				    : vela_error_errno(errno, "upload [%s] %s", u->ds, u->rel);
	unlink(u->tmp);
	json_t *result = NULL;
	if (r == 0) {
		host_event(h, HOST_AUDIT, 0, user, "datastore.upload", "[%s] %s (%llu bytes)", u->ds, u->rel,
			   (unsigned long long)u->bytes);
		result = json_pack("{s:s, s:s, s:I}", "datastore", u->ds, "path", u->rel, "size", (json_int_t)u->bytes);
		*out = json_incref(result);
	}
	CLEANUP_FREE char *msg = r < 0 ? xstrdup(vela_errmsg()) : NULL;
	host_task_end(h, u->task, r, result);
	if (msg)
		vela_error(-r, "%s", msg);
	upload_free(u);
	return r;
}

/* ------------------------------------------------- add, remove, space */

int host_datastore_add(struct host *h, const char *user, const char *name, const char *path, json_t **out)
{
	if (!ds_name_ok(name))
		return vela_error(VELA_E_BADNAME, "datastore name: 1-64 letters, digits, '.', '_' or '-', not starting with '.'");
	if (!path || path[0] != '/' || !host_name_ok(path, 1024))
		return vela_error(VELA_E_INVAL, "datastore %s: give the absolute path of a folder", name);
	CLEANUP_FREE char *real = realpath(path, NULL);
	struct stat st;
	if (!real || stat(real, &st) < 0 || !S_ISDIR(st.st_mode))
		return vela_error(VELA_E_NOTFOUND, "datastore %s: %s is not a folder", name, path);
	if (access(real, R_OK | W_OK | X_OK) < 0)
		return vela_error(VELA_E_PERM, "datastore %s: velad cannot write to %s", name, real);
	CLEANUP_FREE char *dir = host_datastores_dir(h);
	CLEANUP_FREE char *link_path = path_join(dir, name);
	json_t *list = NULL;
	int r = host_datastore_list(h, &list);
	if (r < 0)
		return r;
	size_t i;
	json_t *d;
	json_array_foreach(list, i, d) {
		const char *p = json_string_value(json_object_get(d, "path"));
		size_t n = strlen(p), m = strlen(real);
		/* One folder, one datastore: nested ones would show the same
		 * files twice and defeat the space accounting. */
		if ((strncmp(real, p, n) == 0 && (real[n] == '/' || real[n] == '\0')) ||
		    (strncmp(p, real, m) == 0 && p[m] == '/')) {
			r = vela_error(VELA_E_EXISTS, "datastore %s: %s overlaps datastore %s (%s)", name, real,
				       json_string_value(json_object_get(d, "name")), p);
			break;
		}
	}
	json_decref(list);
	if (r < 0)
		return r;
	if (symlink(real, link_path) < 0)
		return errno == EEXIST ? vela_error(VELA_E_EXISTS, "datastore %s exists already", name)
				       : vela_error_errno(errno, "datastore %s: %s", name, link_path);
	host_event(h, HOST_AUDIT, 0, user, "datastore.added", "%s: %s", name, real);
	if (host_datastore_list(h, &list) == 0) {
		json_array_foreach(list, i, d)
			if (strcmp(json_string_value(json_object_get(d, "name")), name) == 0)
				*out = json_incref(d);
		json_decref(list);
	}
	if (!*out)
		*out = json_pack("{s:s, s:s}", "name", name, "path", real);
	return 0;
}

int host_datastore_remove(struct host *h, const char *user, const char *name)
{
	if (!ds_name_ok(name))
		return vela_error(VELA_E_BADNAME, "bad datastore name");
	CLEANUP_FREE char *dir = host_datastores_dir(h);
	CLEANUP_FREE char *link_path = path_join(dir, name);
	mode_t mode = lst_mode(link_path);
	if (!mode)
		return vela_error(VELA_E_NOTFOUND, "no datastore \"%s\"", name);
	if (strcmp(name, DEFAULT_DATASTORE) == 0)
		return vela_error(VELA_E_BADSTATE, "%s is the default datastore: it cannot be removed", name);
	if (!S_ISLNK(mode))
		return vela_error(VELA_E_NOTSUP, "datastore %s is a folder inside %s, not one added by path: move its"
						 " files out and remove the folder instead", name, dir);
	CLEANUP_FREE char *root = realpath(link_path, NULL);
	json_t *vms = NULL;
	int r = host_vm_list(h, &vms);
	if (r < 0)
		return r;
	size_t i, used = 0;
	json_t *vm;
	json_array_foreach(vms, i, vm) {
		const char *config = json_string_value(json_object_get(vm, "config"));
		CLEANUP_FREE char *real = realpath(config, NULL);
		const char *c = real ? real : config;
		size_t n = root ? strlen(root) : 0;
		used += root && strncmp(c, root, n) == 0 && c[n] == '/';
	}
	json_decref(vms);
	if (used)
		return vela_error(VELA_E_BUSY, "datastore %s holds %zu registered VM%s: unregister or delete them first", name,
				  used, used == 1 ? "" : "s");
	if (unlink(link_path) < 0)
		return vela_error_errno(errno, "remove datastore %s", name);
	host_event(h, HOST_AUDIT, 0, user, "datastore.removed", "%s (%s); its files stay", name, root ? root : "?");
	return 0;
}

/* A datastore reported short of space, until it recovers. */
struct ds_space {
	char name[72];
	struct ds_space *next;
};

void host_ds_check_space(struct host *h)
{
	json_t *list = NULL;
	if (host_datastore_list(h, &list) < 0)
		return;
	/* Recovered means clearly above the line (2 points), so a datastore
	 * hovering at it does not flood the log. */
	unsigned low_at = (unsigned)h->low_space_percent, ok_at = low_at + 2;
	size_t i;
	json_t *d;
	json_array_foreach(list, i, d) {
		const char *name = json_string_value(json_object_get(d, "name"));
		uint64_t cap = (uint64_t)json_integer_value(json_object_get(d, "capacity"));
		uint64_t avail = (uint64_t)json_integer_value(json_object_get(d, "free"));
		if (!cap)
			continue;
		struct ds_space **pp = &h->low_space;
		while (*pp && strcmp((*pp)->name, name) != 0)
			pp = &(*pp)->next;
		unsigned pct = (unsigned)(avail * 100 / cap);
		if (!*pp && avail * 100 < cap * low_at) {
			struct ds_space *s = xcalloc(1, sizeof *s);
			snprintf(s->name, sizeof s->name, "%s", name);
			s->next = h->low_space;
			h->low_space = s;
			host_event(h, HOST_WARNING, 0, NULL, "datastore.space.low",
				   "datastore %s: %llu MiB free of %llu MiB (%u%%, below %u%%)", name,
				   (unsigned long long)(avail >> 20), (unsigned long long)(cap >> 20), pct, low_at);
		} else if (*pp && pct >= ok_at) {
			struct ds_space *s = *pp;
			*pp = s->next;
			free(s);
			host_event(h, HOST_INFO, 0, NULL, "datastore.space.ok", "datastore %s: %llu MiB free (%u%%)", name,
				   (unsigned long long)(avail >> 20), pct);
		}
	}
	json_decref(list);
}

void host_ds_state_free(struct host *h)
{
	while (h->low_space) {
		struct ds_space *s = h->low_space;
		h->low_space = s->next;
		free(s);
	}
}
