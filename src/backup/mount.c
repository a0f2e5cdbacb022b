/*
 * mount.c - single-file restore: a backup point's disks as read-only files
 * (FUSE).
 *
 * Each disk of the backup is a raw file, <disk>.raw ("scsi0:0" becomes
 * scsi0-0.raw), and each partition in its MBR or GPT one more,
 * <disk>-part<N>.raw, so an administrator can loop-mount a file system
 * read-only (mount -o ro,loop) and copy files out.  Reads go through
 * libvdisk, so an incremental backup shows the disk as it was at its own
 * instant: its image over the images of the backups it builds on.
 *
 * Nothing can write: the files are 0444, an open for writing is EROFS and
 * the disks are open read-only.  The content never changes while mounted,
 * so the kernel may keep what it read in its cache.
 */
#define FUSE_USE_VERSION 312
#include "common.h"
#include "vdisk.h"
#include "backup.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>

extern char **environ;

struct mount_file {
	char *name;
	struct vdisk *disk;     /* shared by a disk's whole-disk file and its partitions */
	uint64_t offset, size;
};

struct backup_fs {
	struct mount_file *files;
	size_t n_files;
	struct vdisk **disks;
	size_t n_disks;
	struct timespec when;   /* the files' times: the backup's manifest */
};

static void fs_free(struct backup_fs *fs)
{
	for (size_t i = 0; i < fs->n_files; i++)
		free(fs->files[i].name);
	free(fs->files);
	for (size_t i = 0; i < fs->n_disks; i++)
		vdisk_close(fs->disks[i]);
	free(fs->disks);
}

static void add_file(struct backup_fs *fs, char *name, struct vdisk *d, uint64_t off, uint64_t size)
{
	fs->files = xrealloc(fs->files, (fs->n_files + 1) * sizeof *fs->files);
	fs->files[fs->n_files++] = (struct mount_file){ .name = name, .disk = d, .offset = off, .size = size };
}

/* "scsi0:0" -> "scsi0-0": a name that needs no quoting in a mount command. */
static char *disk_file_stem(const char *addr)
{
	char *s = xstrdup(addr);
	for (char *c = s; *c; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '-' ||
		      *c == '_'))
			*c = '-';
	return s;
}

/* Open every disk of the backup and find its partitions; *listing
 * {files: [{name, disk, size, partition?, type?}]} for the caller. */
static int fs_open(const char *backup, struct backup_fs *fs, json_t **listing)
{
	json_t *man = NULL;
	int r = backup_manifest_load(backup, &man);
	if (r < 0)
		return r;
	json_t *files = json_array();
	size_t i;
	json_t *d;
	json_array_foreach(json_object_get(man, "disks"), i, d) {
		const char *file = json_string_value(json_object_get(d, "file"));
		const char *addr = json_string_value(json_object_get(d, "disk"));
		if (!backup_plain_name(file) || !addr || !*addr) {
			r = vela_error(VELA_E_CORRUPT, "%s: disk %zu of the manifest is malformed", backup, i);
			break;
		}
		CLEANUP_FREE char *path = path_join(backup, file);
		struct vdisk *vd = NULL;
		if ((r = vdisk_open(path, VDISK_OPEN_RDONLY, &vd)) < 0) {
			vela_error_context(r, "disk %s", addr);
			break;
		}
		fs->disks = xrealloc(fs->disks, (fs->n_disks + 1) * sizeof *fs->disks);
		fs->disks[fs->n_disks++] = vd;
		CLEANUP_FREE char *stem = disk_file_stem(addr);
		char *name = xasprintf("%s.raw", stem);
		json_array_append_new(files, json_pack("{s:s, s:s, s:I, s:i}", "name", name, "disk", addr, "size",
						       (json_int_t)vdisk_size(vd), "chain", (int)vdisk_depth(vd)));
		add_file(fs, name, vd, 0, vdisk_size(vd));
		struct vdisk_partition parts[VDISK_MAX_PARTITIONS];
		size_t n = 0;
		if ((r = vdisk_partitions(vd, parts, VDISK_MAX_PARTITIONS, &n)) < 0) {
			/* The whole disk is still there to look at. */
			json_object_set_new(json_array_get(files, json_array_size(files) - 1), "partition_error",
					    json_string(vela_errmsg()));
			r = 0;
			continue;
		}
		for (size_t k = 0; k < n; k++) {
			char *pname = xasprintf("%s-part%u.raw", stem, parts[k].number);
			json_array_append_new(files, json_pack("{s:s, s:s, s:i, s:s, s:I, s:I}", "name", pname, "disk", addr,
							       "partition", (int)parts[k].number, "type", parts[k].type,
							       "offset", (json_int_t)parts[k].offset, "size",
							       (json_int_t)parts[k].length));
			add_file(fs, pname, vd, parts[k].offset, parts[k].length);
		}
	}
	struct stat st;
	CLEANUP_FREE char *mp = path_join(backup, "manifest.json");
	if (stat(mp, &st) == 0)
		fs->when = st.st_mtim;
	json_decref(man);
	if (r < 0) {
		json_decref(files);
		return r;
	}
	*listing = json_pack("{s:o}", "files", files);
	return 0;
}

static struct backup_fs *fs_of_context(void)
{
	return fuse_get_context()->private_data;
}

static const struct mount_file *find(const char *path)
{
	struct backup_fs *fs = fs_of_context();
	if (path[0] != '/')
		return NULL;
	for (size_t i = 0; i < fs->n_files; i++)
		if (strcmp(fs->files[i].name, path + 1) == 0)
			return &fs->files[i];
	return NULL;
}

static int op_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	(void)fi;
	struct backup_fs *fs = fs_of_context();
	memset(st, 0, sizeof *st);
	st->st_atim = st->st_mtim = st->st_ctim = fs->when;
	if (strcmp(path, "/") == 0) {
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
		return 0;
	}
	const struct mount_file *f = find(path);
	if (!f)
		return -ENOENT;
	st->st_mode = S_IFREG | 0444;
	st->st_nlink = 1;
	st->st_size = (off_t)f->size;
	st->st_blocks = (blkcnt_t)((f->size + 511) / 512);
	return 0;
}

static int op_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off, struct fuse_file_info *fi,
		      enum fuse_readdir_flags flags)
{
	(void)off;
	(void)fi;
	(void)flags;
	if (strcmp(path, "/") != 0)
		return -ENOTDIR;
	struct backup_fs *fs = fs_of_context();
	fill(buf, ".", NULL, 0, 0);
	fill(buf, "..", NULL, 0, 0);
	for (size_t i = 0; i < fs->n_files; i++)
		fill(buf, fs->files[i].name, NULL, 0, 0);
	return 0;
}

static int op_open(const char *path, struct fuse_file_info *fi)
{
	const struct mount_file *f = find(path);
	if (!f)
		return -ENOENT;
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))
		return -EROFS;
	fi->fh = (uint64_t)(f - fs_of_context()->files);
	fi->keep_cache = 1;   /* a backup point never changes */
	return 0;
}

static int op_read(const char *path, char *buf, size_t len, off_t off, struct fuse_file_info *fi)
{
	(void)path;
	struct backup_fs *fs = fs_of_context();
	if (fi->fh >= fs->n_files || off < 0)
		return -EINVAL;
	const struct mount_file *f = &fs->files[fi->fh];
	if ((uint64_t)off >= f->size)
		return 0;
	if (len > f->size - (uint64_t)off)
		len = (size_t)(f->size - (uint64_t)off);
	int r = vdisk_pread(f->disk, buf, len, f->offset + (uint64_t)off);
	if (r < 0) {
		vela_log(VELA_LOG_ERROR, "backup mount: read %s at %lld: %s", f->name, (long long)off, vela_errmsg());
		return -EIO;
	}
	return (int)len;
}

static int op_statfs(const char *path, struct statvfs *sv)
{
	(void)path;
	memset(sv, 0, sizeof *sv);
	sv->f_bsize = sv->f_frsize = 4096;
	sv->f_files = fs_of_context()->n_files + 1;
	sv->f_namemax = 255;
	sv->f_flag = ST_RDONLY;
	return 0;
}

static void *op_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	(void)conn;
	/* The content is fixed: let the kernel cache names, attributes and data. */
	cfg->entry_timeout = cfg->attr_timeout = 3600;
	cfg->kernel_cache = 1;
	return fuse_get_context()->private_data;
}

static const struct fuse_operations backup_fs_ops = {
	.getattr = op_getattr,
	.readdir = op_readdir,
	.open = op_open,
	.read = op_read,
	.statfs = op_statfs,
	.init = op_init,
};

int backup_mount(const char *backup, const char *mountpoint, const struct backup_mount_opts *o)
{
	struct stat st;
	if (stat(mountpoint, &st) < 0)
		return vela_error_errno(errno, "mount point %s", mountpoint);
	if (!S_ISDIR(st.st_mode))
		return vela_error(VELA_E_INVAL, "mount point %s is not a folder", mountpoint);
	struct backup_fs fs = { 0 };
	json_t *listing = NULL;
	int r = fs_open(backup, &fs, &listing);
	if (r < 0) {
		fs_free(&fs);
		return vela_error_context(r, "mount %s", backup);
	}
	CLEANUP_FREE char *fsname = xasprintf("fsname=vela-backup,subtype=vela,ro,default_permissions");
	char *argv[] = { "vela", "-o", fsname, NULL };
	struct fuse_args args = FUSE_ARGS_INIT(3, argv);
	struct fuse *f = fuse_new(&args, &backup_fs_ops, sizeof backup_fs_ops, &fs);
	if (!f) {
		r = vela_error(VELA_E_SYSTEM, "mount %s: FUSE would not start (is /dev/fuse there?)", backup);
		goto out;
	}
	if (fuse_mount(f, mountpoint) != 0) {
		r = vela_error(VELA_E_SYSTEM, "mount %s on %s: FUSE refused (fuse3 installed? already mounted?)", backup,
			       mountpoint);
		fuse_destroy(f);
		goto out;
	}
	fuse_set_signal_handlers(fuse_get_session(f));
	if (o && o->ready)
		o->ready(listing, o->opaque);
	struct fuse_loop_config *cfg = fuse_loop_cfg_create();
	fuse_loop_cfg_set_max_threads(cfg, 8);
	int lr = fuse_loop_mt(f, cfg);
	fuse_loop_cfg_destroy(cfg);
	fuse_remove_signal_handlers(fuse_get_session(f));
	fuse_unmount(f);
	fuse_destroy(f);
	if (lr < 0)
		r = vela_error(VELA_E_SYSTEM, "mount %s: the FUSE session failed", backup);
out:
	fuse_opt_free_args(&args);
	json_decref(listing);
	fs_free(&fs);
	return r;
}

int backup_unmount(const char *mountpoint)
{
	if (umount2(mountpoint, 0) == 0)
		return 0;
	int e = errno;
	if (e == EPERM) {
		/* Not root: the FUSE helper unmounts what this user mounted. */
		char *const argv[] = { "fusermount3", "-u", "--", (char *)mountpoint, NULL };
		pid_t pid;
		int status;
		if (posix_spawnp(&pid, argv[0], NULL, NULL, argv, environ) == 0 && waitpid(pid, &status, 0) == pid &&
		    WIFEXITED(status) && WEXITSTATUS(status) == 0)
			return 0;
	}
	return vela_error_errno(e, "unmount %s", mountpoint);
}
