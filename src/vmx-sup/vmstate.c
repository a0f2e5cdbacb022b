/* vmstate.c - the suspended-state file's trailer and its checks. */
#include "common.h"
#include "vmstate.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

static const char magic[16] = "VELA-VMSTATE-1\n";   /* with its NUL: 16 bytes */

int vmstate_finish(const char *path, json_t *meta)
{
	char *text = json_dumps(meta, JSON_COMPACT);
	if (!text)
		return vela_error(VELA_E_NOMEM, "%s: encode the metadata", path);
	size_t len = strlen(text);
	CLEANUP_CLOSE int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
	int r = 0;
	uint8_t tail[24];
	memcpy(tail, magic, 16);
	le64_put(tail + 16, len);
	if (fd < 0)
		r = vela_error_errno(errno, "open %s", path);
	else if (len > VMSTATE_META_MAX)
		r = vela_error(VELA_E_TOOBIG, "%s: metadata of %zu bytes", path, len);
	else if ((r = write_all(fd, text, len)) < 0 || (r = write_all(fd, tail, sizeof tail)) < 0)
		r = vela_error_context(r, "write the trailer of %s", path);
	else if (fsync(fd) < 0)
		r = vela_error_errno(errno, "fsync %s", path);
	free(text);
	if (r < 0)
		return r;
	CLEANUP_FREE char *dir = path_dirname(path);
	CLEANUP_CLOSE int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0)
		fsync(dfd);
	return 0;
}

int vmstate_read(const char *path, json_t **meta, uint64_t *stream_len)
{
	*meta = NULL;
	CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return vela_error_errno(errno, "open the suspended state %s", path);
	struct stat st;
	if (fstat(fd, &st) < 0)
		return vela_error_errno(errno, "%s", path);
	uint8_t tail[24];
	if (st.st_size < (off_t)sizeof tail || pread(fd, tail, sizeof tail, st.st_size - (off_t)sizeof tail) != sizeof tail ||
	    memcmp(tail, magic, 16) != 0)
		return vela_error(VELA_E_CORRUPT, "%s is not a complete suspended state (no trailer: an interrupted suspend?)",
				  path);
	uint64_t len = le64_get(tail + 16);
	if (len == 0 || len > VMSTATE_META_MAX || len > (uint64_t)st.st_size - sizeof tail)
		return vela_error(VELA_E_CORRUPT, "%s: the trailer's length %" PRIu64 " is impossible", path, len);
	uint64_t start = (uint64_t)st.st_size - sizeof tail - len;
	CLEANUP_FREE char *text = xcalloc(1, len + 1);
	if (pread(fd, text, len, (off_t)start) != (ssize_t)len)
		return vela_error(VELA_E_IO, "%s: read the metadata", path);
	json_error_t jerr;
	json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!json_is_object(j) || !json_is_array(json_object_get(j, "fingerprint")) ||
	    !json_is_array(json_object_get(j, "disks"))) {
		json_decref(j);
		return vela_error(VELA_E_CORRUPT, "%s: the metadata is not what Vela writes", path);
	}
	*meta = j;
	*stream_len = start;
	return 0;
}

static json_t *file_stamp(const char *path)
{
	struct stat st;
	if (stat(path, &st) < 0)
		return json_pack("{s:s, s:b}", "path", path, "missing", 1);
	return json_pack("{s:s, s:I, s:I}", "path", path, "size", (json_int_t)st.st_size, "mtime_ns",
			 (json_int_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec);
}

json_t *vmstate_disk_stamp(const char *addr, const char *base, const char *top)
{
	json_t *files = json_array();
	json_array_append_new(files, file_stamp(top));
	if (strcmp(base, top) != 0)
		json_array_append_new(files, file_stamp(base));
	return json_pack("{s:s, s:s, s:s, s:o}", "addr", addr, "base", base, "top", top, "files", files);
}

int vmstate_check(json_t *meta, json_t *fingerprint, const struct vmx_model *m)
{
	json_t *was = json_object_get(meta, "fingerprint");
	if (!json_equal(was, fingerprint)) {
		/* Say which option differs: the first one. */
		size_t n = json_array_size(was) > json_array_size(fingerprint) ? json_array_size(was)
										 : json_array_size(fingerprint);
		for (size_t i = 0; i < n; i++) {
			const char *a = json_string_value(json_array_get(was, i));
			const char *b = json_string_value(json_array_get(fingerprint, i));
			if (a && b && strcmp(a, b) == 0)
				continue;
			/* The option's name goes with its value: "-m 256". */
			const char *flag = i > 0 ? json_string_value(json_array_get(was, i - 1)) : NULL;
			if (!flag || flag[0] != '-' || (a && a[0] == '-'))
				flag = "";
			return vela_error(VELA_E_BADSTATE,
					  "the virtual hardware changed since the suspend (was \"%s%s%.200s\", now \"%s%s%.200s\"); "
					  "restore the configuration, or power off to discard the suspended state",
					  flag, *flag ? " " : "", a ? a : "(nothing)", flag, *flag ? " " : "", b ? b : "(nothing)");
		}
	}
	size_t i;
	json_t *d;
	json_array_foreach(json_object_get(meta, "disks"), i, d) {
		const char *addr = json_string_value(json_object_get(d, "addr"));
		const char *base = json_string_value(json_object_get(d, "base"));
		const struct vmx_disk *md = NULL;
		for (size_t k = 0; addr && k < m->n_disks && !md; k++)
			if (strcmp(m->disks[k].addr, addr) == 0)
				md = &m->disks[k];
		if (!md || !md->path || !base)
			return vela_error(VELA_E_BADSTATE, "disk %s of the suspended VM is no longer in the configuration",
					  addr ? addr : "?");
		if (strcmp(md->path, base) != 0)
			return vela_error(VELA_E_BADSTATE, "disk %s was %s at the suspend and is now %s", addr, base, md->path);
		size_t k;
		json_t *f;
		json_array_foreach(json_object_get(d, "files"), k, f) {
			const char *path = json_string_value(json_object_get(f, "path"));
			json_t *now = file_stamp(path ? path : "");
			bool same = json_equal(now, f);
			bool missing = json_object_get(now, "missing") != NULL;
			json_decref(now);
			if (missing)
				return vela_error(VELA_E_BADSTATE, "disk %s: %s is missing", addr, path ? path : "?");
			if (!same)
				return vela_error(VELA_E_BADSTATE,
						  "disk %s: %s changed since the suspend (size or modification time); "
						  "the saved state no longer matches the disk", addr, path);
		}
	}
	return 0;
}
