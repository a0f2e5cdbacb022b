/* ops.c - format-independent operations: create, convert, addredo, commit, check. */
#include "common.h"
#include "vdisk-format.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>

static const char *const type_names[VDISK_TYPE__COUNT] = {
	[VDISK_TYPE_RAW] = "raw",
	[VDISK_TYPE_VMDK_MONOLITHIC_SPARSE] = "monolithicSparse",
	[VDISK_TYPE_VMDK_MONOLITHIC_FLAT] = "monolithicFlat",
	[VDISK_TYPE_VMDK_2GB_SPARSE] = "twoGbMaxExtentSparse",
	[VDISK_TYPE_VMDK_2GB_FLAT] = "twoGbMaxExtentFlat",
	[VDISK_TYPE_VHD_DYNAMIC] = "vhd-dynamic",
	[VDISK_TYPE_VHD_FIXED] = "vhd-fixed",
	[VDISK_TYPE_QCOW2] = "qcow2",
	[VDISK_TYPE_VMDK_STREAM] = "streamOptimized",
};

int vdisk_type_parse(const char *name, enum vdisk_type *out)
{
	for (int i = 0; i < VDISK_TYPE__COUNT; i++) {
		if (str_ieq(name, type_names[i])) {
			*out = (enum vdisk_type)i;
			return 0;
		}
	}
	if (str_ieq(name, "vmdk")) {
		*out = VDISK_TYPE_VMDK_MONOLITHIC_SPARSE;
		return 0;
	}
	if (str_ieq(name, "vhd") || str_ieq(name, "vpc")) {
		*out = VDISK_TYPE_VHD_DYNAMIC;
		return 0;
	}
	return vela_error(VELA_E_INVAL, "unknown disk type \"%s\" (raw, monolithicSparse, monolithicFlat, "
			  "twoGbMaxExtentSparse, twoGbMaxExtentFlat, vhd-dynamic, vhd-fixed, qcow2, streamOptimized)", name);
}

const char *vdisk_type_name(enum vdisk_type t)
{
	return (unsigned)t < VDISK_TYPE__COUNT ? type_names[t] : "unknown";
}

int vdisk_adapter_parse(const char *name, enum vdisk_adapter *out)
{
	static const char *const names[] = { "ide", "lsilogic", "buslogic", "virtio" };
	for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
		if (str_ieq(name, names[i])) {
			*out = (enum vdisk_adapter)i;
			return 0;
		}
	}
	return vela_error(VELA_E_INVAL, "unknown adapter type \"%s\" (ide, lsilogic, buslogic, virtio)", name);
}

void vdisk_geometry(uint64_t sectors, enum vdisk_adapter a, uint32_t *c, uint32_t *h, uint32_t *s)
{
	if (a == VDISK_ADAPTER_IDE) {
		*h = 16;
		*s = 63;
	} else if (sectors <= (1ull << 30) / VDISK_SECTOR) {
		*h = 64;
		*s = 32;
	} else if (sectors <= (2ull << 30) / VDISK_SECTOR) {
		*h = 128;
		*s = 32;
	} else {
		*h = 255;
		*s = 63;
	}
	uint64_t cyl = sectors / (*h * *s);
	if (a == VDISK_ADAPTER_IDE && cyl > 16383)
		cyl = 16383;
	if (cyl > 65535)
		cyl = 65535;
	*c = (uint32_t)cyl;
}

static const struct vdisk_format *format_of(enum vdisk_type t)
{
	switch (t) {
	case VDISK_TYPE_RAW: return &vdisk_format_raw;
	case VDISK_TYPE_VHD_DYNAMIC:
	case VDISK_TYPE_VHD_FIXED: return &vdisk_format_vhd;
	case VDISK_TYPE_QCOW2: return &vdisk_format_qcow2;
	default: return &vdisk_format_vmdk;
	}
}

/* How a child names its parent: relative when both share a folder, or lie
 * in sibling folders (a chain of backups, ../<folder>/<file>), so the set
 * can move as a whole; absolute otherwise. */
static char *parent_name_for(const char *child, const char *parent)
{
	CLEANUP_FREE char *cd = path_dirname(child);
	CLEANUP_FREE char *pd = path_dirname(parent);
	char rc[PATH_MAX], rp[PATH_MAX];
	if (realpath(cd, rc) && realpath(pd, rp) && strcmp(rc, rp) == 0)
		return path_basename(parent);
	if (realpath(cd, rc) && realpath(pd, rp)) {
		CLEANUP_FREE char *gc = path_dirname(rc);
		CLEANUP_FREE char *gp = path_dirname(rp);
		CLEANUP_FREE char *sib = path_basename(rp);
		CLEANUP_FREE char *file = path_basename(parent);
		if (strcmp(gc, gp) == 0 && strcmp(gc, "/") != 0)
			return xasprintf("../%s/%s", sib, file);
	}
	if (parent[0] == '/')
		return xstrdup(parent);
	return realpath(parent, rp) ? xstrdup(rp) : xstrdup(parent);
}

int vdisk_create(const char *path, const struct vdisk_create_opts *o)
{
	struct vdisk_create_opts opts = *o;
	struct vdisk_image *parent = NULL;
	CLEANUP_FREE char *pname = NULL;
	struct stat st;
	if ((unsigned)o->type >= VDISK_TYPE__COUNT)
		return vela_error(VELA_E_INVAL, "create %s: unknown type", path);
	if (stat(path, &st) == 0)
		return vela_error(VELA_E_EXISTS, "create %s: the file already exists", path);
	if (o->parent) {
		int r = vdisk_image_open(o->parent, true, &parent);
		if (r < 0)
			return vela_error_context(r, "create %s", path);
		opts.size = parent->size;
		pname = parent_name_for(path, o->parent);
		/* A redo log is written in its parent's format (VMDK under VMDK,
		 * VHD under VHD: what the classic tools expect); a qcow2 child can sit
		 * on any parent, and is what a raw disk gets. */
		if (o->type == VDISK_TYPE_QCOW2 || parent->fmt == &vdisk_format_qcow2 || parent->fmt == &vdisk_format_raw)
			opts.type = VDISK_TYPE_QCOW2;
		else if (parent->fmt == &vdisk_format_vhd)
			opts.type = VDISK_TYPE_VHD_DYNAMIC;
		else
			opts.type = VDISK_TYPE_VMDK_MONOLITHIC_SPARSE;
	} else {
		if (o->size == 0)
			return vela_error(VELA_E_INVAL, "create %s: the size must be above 0", path);
		if (o->size > VDISK_MAX_SIZE)
			return vela_error(VELA_E_LIMIT, "create %s: %llu bytes is above the %llu-byte limit", path,
					  (unsigned long long)o->size, (unsigned long long)VDISK_MAX_SIZE);
		opts.size = (o->size + VDISK_SECTOR - 1) / VDISK_SECTOR * VDISK_SECTOR;
	}
	int r = format_of(opts.type)->create(path, &opts, parent, pname);
	vdisk_image_close(parent);
	return r;
}

/*
 * convert reads and writes at the same time: a reader thread fills the
 * next chunks (block status, then data) while the caller's thread writes
 * the current one.  Cold reads and writes then overlap instead of taking
 * turns.
 */
#define CONVERT_CHUNK (4u << 20)
#define CONVERT_SLOTS 3

struct convert_slot {
	char *buf;
	uint64_t off, len;
	bool data;             /* false: a hole or zeros, nothing to write */
	bool full;
};

struct convert_pipe {
	struct vdisk *in;
	uint64_t size;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct convert_slot slot[CONVERT_SLOTS];
	bool stop;             /* the writer failed: the reader ends */
	bool done;             /* the reader reached the end or failed */
	int r;
	char err[512];
};

static void *convert_reader(void *opaque)
{
	struct convert_pipe *p = opaque;
	uint64_t off = 0;
	unsigned i = 0;
	int r = 0;
	while (off < p->size && r == 0) {
		struct convert_slot *sl = &p->slot[i];
		pthread_mutex_lock(&p->lock);
		while (sl->full && !p->stop)
			pthread_cond_wait(&p->cond, &p->lock);
		bool stop = p->stop;
		pthread_mutex_unlock(&p->lock);
		if (stop)
			break;
		struct vdisk_extent_status es;
		uint64_t want = p->size - off < CONVERT_CHUNK ? p->size - off : CONVERT_CHUNK;
		if ((r = vdisk_block_status(p->in, off, want, &es)) < 0)
			break;
		sl->off = off;
		sl->len = es.len;
		sl->data = es.status == VDISK_DATA;
		if (sl->data && (r = vdisk_pread(p->in, sl->buf, (size_t)es.len, off)) < 0)
			break;
		off += es.len;
		pthread_mutex_lock(&p->lock);
		sl->full = true;
		pthread_cond_broadcast(&p->cond);
		pthread_mutex_unlock(&p->lock);
		i = (i + 1) % CONVERT_SLOTS;
	}
	pthread_mutex_lock(&p->lock);
	p->r = r;
	if (r < 0)
		snprintf(p->err, sizeof p->err, "%s", vela_errmsg());
	p->done = true;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

/* Write one chunk's non-zero runs: the new image stays sparse, and runs of
 * non-zero grains go in one write (one allocation for several grains). */
static int convert_write(struct vdisk *out, const char *buf, uint64_t off, uint64_t n, vdisk_data_cb data,
			 void *data_opaque)
{
	uint32_t step = vdisk_granularity(out) > 4096 ? vdisk_granularity(out) : 4096;
	uint64_t run = 0, run_len = 0;
	int r = 0;
	for (uint64_t k = 0; k < n && r == 0;) {
		uint64_t piece = step - ((off + k) % step);
		if (piece > n - k)
			piece = n - k;
		if (vdisk_buf_is_zero(buf + k, (size_t)piece)) {
			if (run_len)
				r = vdisk_pwrite(out, buf + run, (size_t)run_len, off + run);
			run_len = 0;
		} else {
			if (!run_len)
				run = k;
			run_len += piece;
			if (data)
				data(off + k, buf + k, (size_t)piece, data_opaque);
		}
		k += piece;
	}
	if (r == 0 && run_len)
		r = vdisk_pwrite(out, buf + run, (size_t)run_len, off + run);
	return r;
}

int vdisk_convert(const char *src, const char *dst, const struct vdisk_create_opts *o,
		  vdisk_progress_cb progress, void *opaque)
{
	return vdisk_convert_data(src, dst, o, progress, opaque, NULL, NULL);
}

int vdisk_convert_data(const char *src, const char *dst, const struct vdisk_create_opts *o,
		       vdisk_progress_cb progress, void *opaque, vdisk_data_cb data, void *data_opaque)
{
	struct vdisk *in = NULL, *out = NULL;
	int r = vdisk_open(src, VDISK_OPEN_RDONLY, &in);
	if (r < 0)
		return vela_error_context(r, "convert");
	struct vdisk_create_opts opts = *o;
	opts.size = vdisk_size(in);
	opts.parent = NULL;
	if ((r = vdisk_create(dst, &opts)) < 0)
		goto out;
	if ((r = vdisk_open(dst, 0, &out)) < 0)
		goto out;
	struct convert_pipe p = { .in = in, .size = vdisk_size(in) };
	pthread_mutex_init(&p.lock, NULL);
	pthread_cond_init(&p.cond, NULL);
	for (unsigned i = 0; i < CONVERT_SLOTS; i++)
		p.slot[i].buf = xcalloc(1, CONVERT_CHUNK);
	pthread_t reader;
	if (pthread_create(&reader, NULL, convert_reader, &p) != 0) {
		r = vela_error(VELA_E_NORES, "convert: no reader thread");
	} else {
		for (unsigned i = 0;; i = (i + 1) % CONVERT_SLOTS) {
			struct convert_slot *sl = &p.slot[i];
			pthread_mutex_lock(&p.lock);
			while (!sl->full && !p.done)
				pthread_cond_wait(&p.cond, &p.lock);
			bool have = sl->full;
			pthread_mutex_unlock(&p.lock);
			if (!have)
				break;   /* the end, or the reader failed */
			if (sl->data)
				r = convert_write(out, sl->buf, sl->off, sl->len, data, data_opaque);
			if (progress && r == 0)
				progress(sl->off + sl->len, p.size, opaque);
			pthread_mutex_lock(&p.lock);
			sl->full = false;
			if (r < 0)
				p.stop = true;
			pthread_cond_broadcast(&p.cond);
			pthread_mutex_unlock(&p.lock);
			if (r < 0)
				break;
		}
		pthread_join(reader, NULL);
		if (r == 0 && p.r < 0)
			r = vela_error(p.r, "%s", p.err);
	}
	for (unsigned i = 0; i < CONVERT_SLOTS; i++)
		free(p.slot[i].buf);
	pthread_cond_destroy(&p.cond);
	pthread_mutex_destroy(&p.lock);
	if (r == 0)
		r = vdisk_flush(out);
out:
	if (out) {
		int cr = vdisk_close(out);
		if (r == 0)
			r = cr;
	}
	vdisk_close(in);
	if (r < 0)
		return vela_error_context(r, "convert %s to %s", src, dst);
	return 0;
}

/* "<dir>/<stem>-<tag><ext>" for a child of parent: the extension follows
 * the parent's format (a child has its parent's format, see vdisk_create),
 * an earlier "-00000N" is dropped from the stem so names stay stem-00000N. */
static int child_name(const char *parent, const char *dir, const char *tag, char **out)
{
	struct vdisk_image *pimg = NULL;
	int r = vdisk_image_open(parent, true, &pimg);
	if (r < 0)
		return r;
	const char *ext = pimg->fmt == &vdisk_format_vmdk ? ".vmdk" : pimg->fmt == &vdisk_format_vhd ? ".vhd" : ".qcow2";
	vdisk_image_close(pimg);
	CLEANUP_FREE char *base = path_basename(parent);
	const char *dot = strrchr(base, '.');
	CLEANUP_FREE char *stem = xstrndup(base, dot && dot != base ? (size_t)(dot - base) : strlen(base));
	size_t sl = strlen(stem);
	if (sl > 7 && stem[sl - 7] == '-' && strspn(stem + sl - 6, "0123456789") == 6)
		stem[sl - 7] = '\0';
	*out = dir ? xasprintf("%s/%s-%s%s", dir, stem, tag, ext) : xasprintf("%s-%s%s", stem, tag, ext);
	return 0;
}

int vdisk_child_name(const char *parent, const char *dir, const char *tag, char **out)
{
	int r = child_name(parent, dir, tag, out);
	return r < 0 ? vela_error_context(r, "name a child of %s", parent) : 0;
}

int vdisk_addredo(const char *path, char **child)
{
	CLEANUP_FREE char *dir = strchr(path, '/') ? path_dirname(path) : NULL;
	struct stat st;
	for (unsigned n = 1; n < 1000000; n++) {
		char tag[16];
		snprintf(tag, sizeof tag, "%06u", n);
		/* Name the child as the parent was named: bare when it had no folder. */
		char *cand;
		int r = child_name(path, dir, tag, &cand);
		if (r < 0)
			return vela_error_context(r, "addredo");
		if (stat(cand, &st) == 0) {
			free(cand);
			continue;
		}
		struct vdisk_create_opts o = { .type = VDISK_TYPE_VMDK_MONOLITHIC_SPARSE, .parent = path };
		r = vdisk_create(cand, &o);
		if (r < 0) {
			free(cand);
			return vela_error_context(r, "addredo %s", path);
		}
		*child = cand;
		return 0;
	}
	return vela_error(VELA_E_LIMIT, "addredo %s: no free child file name", path);
}

int vdisk_commit(const char *path, bool remove_child, vdisk_progress_cb progress, void *opaque)
{
	struct vdisk *child = NULL, *parent = NULL;
	int r = vdisk_open(path, VDISK_OPEN_RDONLY, &child);
	if (r < 0)
		return vela_error_context(r, "commit");
	if (!child->top->parent_path) {
		vdisk_close(child);
		return vela_error(VELA_E_INVAL, "commit %s: the disk has no parent to commit into", path);
	}
	CLEANUP_FREE char *ppath = xstrdup(child->top->parent_path);
	/* The parent opens writable with its own chain below (reads for
	 * partial units during the merge come from there). */
	if ((r = vdisk_open(ppath, 0, &parent)) < 0) {
		vdisk_close(child);
		return vela_error_context(r, "commit %s into %s", path, ppath);
	}
	if (child->top->fmt->prepare_merge) {
		/* The child's own metadata announces the merge (crash safety). */
		struct vdisk_image *cw = NULL;
		if ((r = vdisk_image_open(path, false, &cw)) == 0) {
			r = cw->fmt->prepare_merge(cw, parent->top);
			vdisk_image_close(cw);
		}
		if (r < 0) {
			vdisk_close(parent);
			vdisk_close(child);
			return vela_error_context(r, "commit %s into %s", path, ppath);
		}
	}
	const size_t chunk = 1u << 20;
	char *buf = xcalloc(1, chunk);
	uint64_t size = vdisk_size(child), off = 0;
	/* Idempotent: a commit interrupted by a crash is simply run again; the
	 * child stays until the parent is flushed. */
	while (off < size && r == 0) {
		struct vdisk_extent_status es;
		/* Ask about the whole rest: unallocated runs are skipped in one
		 * step, however large; data is copied a chunk at a time. */
		if ((r = vdisk_block_status(child, off, size - off, &es)) < 0)
			break;
		if (es.depth == 0 && es.len > chunk)
			es.len = chunk;
		if (es.depth == 0 && off < vdisk_size(parent)) {
			uint64_t n = es.len;
			if (off + n > vdisk_size(parent))
				n = vdisk_size(parent) - off;
			if (es.status == VDISK_DATA)
				r = vdisk_pread(child, buf, (size_t)n, off);
			else
				memset(buf, 0, (size_t)n);
			if (r == 0)
				r = vdisk_pwrite(parent, buf, (size_t)n, off);
		}
		off += es.len;
		if (progress)
			progress(off, size, opaque);
	}
	free(buf);
	if (r == 0)
		r = vdisk_flush(parent);
	int cr = vdisk_close(parent);
	if (r == 0)
		r = cr;
	vdisk_close(child);
	if (r < 0)
		return vela_error_context(r, "commit %s into %s", path, ppath);
	/* Every file of the child goes (a vmfsSparse or split child has several). */
	if (remove_child && vdisk_delete(path, true) < 0 && unlink(path) < 0)
		return vela_error_errno(errno, "commit %s: remove the merged child", path);
	return 0;
}

int vdisk_check(const char *path, bool repair, struct vdisk_check_report *report)
{
	struct vdisk_image *img = NULL;
	memset(report, 0, sizeof *report);
	int r = vdisk_image_open(path, !repair, &img);
	if (r < 0)
		return vela_error_context(r, "check");
	r = img->fmt->check(img, repair, report);
	vdisk_image_close(img);
	if (r < 0)
		return vela_error_context(r, "check %s", path);
	return 0;
}

int vdisk_relink(const char *child, const char *parent, bool force)
{
	struct vdisk_image *c = NULL, *p = NULL;
	int r = vdisk_image_open(child, false, &c);
	if (r < 0)
		return vela_error_context(r, "relink");
	if ((r = vdisk_image_open(parent, true, &p)) < 0) {
		vdisk_image_close(c);
		return vela_error_context(r, "relink %s", child);
	}
	if (!c->fmt->set_parent) {
		r = vela_error(VELA_E_NOTSUP, "relink %s: %s images have no parent", child, c->fmt->name);
	} else if (!c->parent_path && !force) {
		r = vela_error(VELA_E_INVAL, "relink %s: the disk has no parent (use --force to give it one)", child);
	} else {
		if (c->fmt->check_parent && !force && (r = c->fmt->check_parent(c, p)) < 0)
			vela_error_context(r, "relink %s (use --force if %s really holds the parent's content)", child, parent);
		if (r == 0) {
			CLEANUP_FREE char *name = parent_name_for(child, parent);
			r = c->fmt->set_parent(c, p, name);
		}
	}
	vdisk_image_close(p);
	vdisk_image_close(c);
	return r;
}

int vdisk_commit_level(const char *path, unsigned level, bool remove_child, vdisk_progress_cb progress, void *opaque)
{
	if (level == 0)
		return vdisk_commit(path, remove_child, progress, opaque);
	struct vdisk *d = NULL;
	int r = vdisk_open(path, VDISK_OPEN_RDONLY, &d);
	if (r < 0)
		return vela_error_context(r, "commit");
	struct vdisk_image *above = d->top;
	for (unsigned i = 1; i < level && above; i++)
		above = above->parent;
	if (!above || !above->parent || !above->parent->parent_path) {
		vdisk_close(d);
		return vela_error(VELA_E_RANGE, "commit %s --level %u: the chain has no level %u with a parent below it",
				  path, level, level);
	}
	CLEANUP_FREE char *child = xstrdup(above->path);
	CLEANUP_FREE char *target = xstrdup(above->parent->path);
	CLEANUP_FREE char *grand = xstrdup(above->parent->parent_path);
	vdisk_close(d);
	/* Merge, re-point the child (the grandparent now holds what the target
	 * held, under a new content ID), then drop the target. */
	if ((r = vdisk_commit(target, false, progress, opaque)) < 0)
		return r;
	if ((r = vdisk_relink(child, grand, true)) < 0)
		return vela_error_context(r, "commit %s --level %u: re-point %s", path, level, child);
	if (remove_child && vdisk_delete(target, true) < 0 && unlink(target) < 0)
		return vela_error_errno(errno, "commit %s: remove the merged %s", path, target);
	return 0;
}

int vdisk_extend(const char *path, uint64_t new_size)
{
	struct vdisk_image *img = NULL;
	int r = vdisk_image_open(path, false, &img);
	if (r < 0)
		return vela_error_context(r, "extend");
	uint64_t want = (new_size + VDISK_SECTOR - 1) / VDISK_SECTOR * VDISK_SECTOR;
	if (want < img->size)
		r = vela_error(VELA_E_INVAL, "extend %s: %llu bytes is smaller than the disk (%llu); disks only grow", path,
			       (unsigned long long)want, (unsigned long long)img->size);
	else if (want > VDISK_MAX_SIZE)
		r = vela_error(VELA_E_LIMIT, "extend %s: above the %llu-byte limit", path, (unsigned long long)VDISK_MAX_SIZE);
	else if (want > img->size && !img->fmt->resize)
		r = vela_error(VELA_E_NOTSUP, "extend %s: %s images cannot be extended", path, img->fmt->name);
	else if (want > img->size)
		r = img->fmt->resize(img, want);
	if (r == 0)
		r = img->fmt->flush(img);
	vdisk_image_close(img);
	return r;
}

/* Does the chain below img read zeros in [off, off+len)? */
static int below_is_zero(struct vdisk_image *img, char *buf, uint64_t off, uint64_t len, bool *zero)
{
	if (!img->parent) {
		*zero = true;
		return 0;
	}
	int r = vdisk_image_read_below(img, buf, (size_t)len, off);
	if (r == 0)
		*zero = vdisk_buf_is_zero(buf, (size_t)len);
	return r;
}

int vdisk_write_zeroes(struct vdisk *d, uint64_t off, uint64_t len)
{
	struct vdisk_image *img = d->top;
	uint64_t end;
	if (__builtin_add_overflow(off, len, &end) || end > img->size)
		return vela_error(VELA_E_RANGE, "%s: range outside the disk", img->path);
	if (img->read_only)
		return vela_error(VELA_E_READONLY, "%s is open read-only", img->path);
	uint64_t g = img->granularity;
	char *buf = xcalloc(1, g);
	int r = 0;
	while (off < end && r == 0) {
		uint64_t unit_end = (off / g + 1) * g;
		uint64_t n = (unit_end < end ? unit_end : end) - off;
		bool zero = false;
		if (n == g && img->fmt->unmap && (r = below_is_zero(img, buf, off, g, &zero)) == 0 && zero) {
			r = img->fmt->unmap(img, off, g);
		} else if (r == 0) {
			memset(buf, 0, (size_t)n);
			r = img->fmt->pwrite(img, buf, (size_t)n, off);
		}
		off += n;
	}
	free(buf);
	return r;
}

int vdisk_compact(const char *path, uint64_t *reclaimed)
{
	struct vdisk *d = NULL;
	*reclaimed = 0;
	int r = vdisk_open(path, 0, &d);
	if (r < 0)
		return vela_error_context(r, "compact");
	struct vdisk_image *img = d->top;
	if (!img->fmt->unmap) {
		vdisk_close(d);
		return vela_error(VELA_E_NOTSUP, "compact %s: %s images cannot be compacted", path, img->fmt->name);
	}
	uint64_t g = img->granularity < 4096 ? 65536 : img->granularity;
	char *buf = xcalloc(1, g), *below = xcalloc(1, g);
	for (uint64_t off = 0; off + g <= img->size && r == 0; off += g) {
		struct vdisk_extent_status es;
		if ((r = vdisk_block_status(d, off, g, &es)) < 0)
			break;
		if (es.status != VDISK_DATA || es.depth != 0 || es.len < g)
			continue;
		if ((r = vdisk_pread(d, buf, (size_t)g, off)) < 0)
			break;
		bool zero = false;
		if (!vdisk_buf_is_zero(buf, (size_t)g) || (r = below_is_zero(img, below, off, g, &zero)) < 0 || !zero)
			continue;
		if ((r = img->fmt->unmap(img, off, g)) < 0)
			break;
		/* Count what the map shows as gone, not what was asked for. */
		if ((r = vdisk_block_status(d, off, g, &es)) == 0 && !(es.status == VDISK_DATA && es.depth == 0))
			*reclaimed += g;
	}
	free(buf);
	free(below);
	int cr = vdisk_close(d);
	if (r == 0)
		r = cr;
	return r < 0 ? vela_error_context(r, "compact %s", path) : 0;
}

static int image_files(struct vdisk_image *img, char ***files, size_t *n)
{
	if (img->fmt->struct_size >= offsetof(struct vdisk_format, list_files) + sizeof img->fmt->list_files &&
	    img->fmt->list_files)
		return img->fmt->list_files(img, files, n);
	*files = xcalloc(1, sizeof **files);
	(*files)[0] = xstrdup(img->path);
	*n = 1;
	return 0;
}

static void free_files(char **files, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(files[i]);
	free(files);
}

/* Disks in path's folder whose parent is path (newline-separated names). */
static int children_in_folder(const char *path, struct strbuf *out)
{
	char real[PATH_MAX], cand[PATH_MAX];
	if (!realpath(path, real))
		return vela_error_errno(errno, "%s", path);
	CLEANUP_FREE char *dir = path_dirname(real);
	DIR *dp = opendir(dir);
	if (!dp)
		return vela_error_errno(errno, "open folder %s", dir);
	struct dirent *de;
	while ((de = readdir(dp))) {
		if (de->d_name[0] == '.')
			continue;
		CLEANUP_FREE char *p = path_join(dir, de->d_name);
		struct stat st;
		if (stat(p, &st) < 0 || !S_ISREG(st.st_mode) || strcmp(p, real) == 0)
			continue;
		struct vdisk_image *img = NULL;
		if (vdisk_image_open(p, true, &img) < 0)
			continue;   /* not a disk, or not one we can read: not a child we know */
		if (img->parent_path && realpath(img->parent_path, cand) && strcmp(cand, real) == 0)
			strbuf_printf(out, "%s%s", out->len ? ", " : "", de->d_name);
		vdisk_image_close(img);
	}
	closedir(dp);
	vela_error_clear();
	return 0;
}

int vdisk_delete(const char *path, bool force)
{
	struct vdisk_image *img = NULL;
	struct strbuf kids = { 0 };
	int r = vdisk_image_open(path, true, &img);
	if (r < 0)
		return vela_error_context(r, "delete");
	if (!force && (r = children_in_folder(path, &kids)) == 0 && kids.len)
		r = vela_error(VELA_E_BUSY, "delete %s: it is the parent of %s (delete or commit them first, or --force)",
			       path, kids.data);
	char **files = NULL;
	size_t n = 0;
	if (r == 0)
		r = image_files(img, &files, &n);
	vdisk_image_close(img);
	strbuf_free(&kids);
	for (size_t i = n; r == 0 && i > 0; i--)   /* extents first, the named file last */
		if (unlink(files[i - 1]) < 0 && errno != ENOENT)
			r = vela_error_errno(errno, "delete %s", files[i - 1]);
	free_files(files, n);
	return r;
}

int vdisk_rename(const char *from, const char *to)
{
	struct stat st;
	if (stat(to, &st) == 0)
		return vela_error(VELA_E_EXISTS, "rename %s: %s already exists", from, to);
	struct vdisk_image *img = NULL;
	int r = vdisk_image_open(from, true, &img);
	if (r < 0)
		return vela_error_context(r, "rename");
	struct strbuf kids = { 0 };
	char **files = NULL;
	size_t n = 0;
	r = children_in_folder(from, &kids);
	if (r == 0)
		r = image_files(img, &files, &n);
	vdisk_image_close(img);
	if (r < 0) {
		strbuf_free(&kids);
		return r;
	}
	CLEANUP_FREE char *text = NULL;
	CLEANUP_FREE char *new_text = NULL;
	char **new_names = xcalloc(n, sizeof *new_names);
	if (n > 1) {
		/* Separate extent files: new names from the new stem, the descriptor
		 * rewritten to name them.  Hard links first, so that a crash leaves
		 * one complete set of names at every point. */
		CLEANUP_FREE char *ob = path_basename(from);
		CLEANUP_FREE char *nb = path_basename(to);
		CLEANUP_FREE char *ndir = path_dirname(to);
		size_t obl = strlen(ob), nbl = strlen(nb);
		CLEANUP_FREE char *ostem = xstrndup(ob, obl > 5 && str_ieq(ob + obl - 5, ".vmdk") ? obl - 5 : obl);
		CLEANUP_FREE char *nstem = xstrndup(nb, nbl > 5 && str_ieq(nb + nbl - 5, ".vmdk") ? nbl - 5 : nbl);
		size_t len;
		if ((r = read_file(from, 1u << 20, &text, &len)) < 0)
			goto out;
		new_text = xstrdup(text);
		for (size_t i = 1; i < n && r == 0; i++) {
			CLEANUP_FREE char *eb = path_basename(files[i]);
			char *suffix = str_starts_with(eb, ostem) ? eb + strlen(ostem) : NULL;
			if (!suffix) {
				r = vela_error(VELA_E_NOTSUP, "rename %s: extent %s is not named after the disk", from, eb);
				break;
			}
			new_names[i] = xasprintf("%s%s", nstem, suffix);
			CLEANUP_FREE char *np = path_join(ndir, new_names[i]);
			if (link(files[i], np) < 0)
				r = vela_error_errno(errno, "rename %s: link %s", from, np);
			/* Rewrite "eb" to the new name inside quotes. */
			CLEANUP_FREE char *oq = xasprintf("\"%s\"", eb);
			CLEANUP_FREE char *nq = xasprintf("\"%s\"", new_names[i]);
			char *at = strstr(new_text, oq);
			if (r == 0 && at) {
				char *t2 = xasprintf("%.*s%s%s", (int)(at - new_text), new_text, nq, at + strlen(oq));
				free(new_text);
				new_text = t2;
			}
		}
		if (r == 0)
			r = write_file_atomic(to, new_text, strlen(new_text));
	} else if (rename(from, to) < 0) {
		r = vela_error_errno(errno, "rename %s to %s", from, to);
	}
	/* Children in the folder follow the new name. */
	if (r == 0 && kids.len) {
		CLEANUP_FREE char *dir = path_dirname(from);
		CLEANUP_FREE char *list = xstrdup(kids.data);
		char *save = NULL;
		for (char *k = strtok_r(list, ", ", &save); k && r == 0; k = strtok_r(NULL, ", ", &save)) {
			CLEANUP_FREE char *kp = path_join(dir, k);
			r = vdisk_relink(kp, to, false);
		}
	}
	if (r == 0 && n > 1) {
		for (size_t i = 1; i < n; i++)
			unlink(files[i]);
		unlink(from);
	}
out:
	for (size_t i = 0; i < n; i++)
		free(new_names[i]);
	free(new_names);
	free_files(files, n);
	strbuf_free(&kids);
	return r < 0 ? vela_error_context(r, "rename %s", from) : 0;
}
