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
		json_array_append_new(a, json_pack("{s:s, s:s, s:I, s:I}", "name", e->d_name, "path", real ? real : p,
						   "capacity", (json_int_t)((uint64_t)vfs.f_blocks * vfs.f_frsize),
						   "free", (json_int_t)((uint64_t)vfs.f_bavail * vfs.f_frsize)));
	}
	closedir(d);
	*out = a;
	return 0;
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
	uint64_t bytes;
};

int host_ds_upload_begin(struct host *h, const char *ds, const char *rel, struct host_upload **up, int *fd)
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
	struct host_upload *u = xcalloc(1, sizeof *u);
	u->tmp = xasprintf("%s/.vela-upload-XXXXXX", dir);
	u->fd = mkostemp(u->tmp, O_CLOEXEC);
	if (u->fd < 0) {
		r = vela_error_errno(errno, "upload to [%s] %s", ds, rel);
		free(u->tmp);
		free(u);
		return r;
	}
	fchmod(u->fd, 0644);   /* an ISO others may read, as any datastore file */
	u->final = xstrdup(path);
	u->ds = xstrdup(ds);
	u->rel = xstrdup(rel);
	*up = u;
	*fd = u->fd;
	return 0;
}

int host_ds_upload_end(struct host *h, const char *user, struct host_upload *u, bool ok, json_t **out)
{
	int r = 0;
	struct stat st;
	if (ok && fstat(u->fd, &st) == 0)
		u->bytes = (uint64_t)st.st_size;
	if (ok && fsync(u->fd) < 0)
		r = vela_error_errno(errno, "upload [%s] %s: sync", u->ds, u->rel);
	close(u->fd);
	/* link() never replaces: a file that appeared meanwhile wins. */
	if (ok && r == 0 && link(u->tmp, u->final) < 0)
		r = errno == EEXIST ? vela_error(VELA_E_EXISTS, "[%s] %s already exists", u->ds, u->rel)
				    : vela_error_errno(errno, "upload [%s] %s", u->ds, u->rel);
	unlink(u->tmp);
	if (ok && r == 0) {
		host_event(h, HOST_AUDIT, 0, user, "datastore.upload", "[%s] %s (%llu bytes)", u->ds, u->rel,
			   (unsigned long long)u->bytes);
		*out = json_pack("{s:s, s:s, s:I}", "datastore", u->ds, "path", u->rel, "size", (json_int_t)u->bytes);
	}
	free(u->tmp);
	free(u->final);
	free(u->ds);
	free(u->rel);
	free(u);
	return r;
}

