/* image.c - images, chains, generic I/O through a chain. */
#include "common.h"
#include "vdisk-format.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <limits.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>

static const struct vdisk_format *const formats[] = {
	&vdisk_format_vmdk,
	&vdisk_format_vhd,
	&vdisk_format_qcow2,
	&vdisk_format_raw,     /* last: accepts anything */
};


int vdisk_pread_full(int fd, void *buf, size_t len, uint64_t off, const char *what)
{
	char *p = buf;
	while (len > 0) {
		ssize_t n = pread(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return vela_error(VELA_E_READ, "read %s at %llu: %s", what, (unsigned long long)off, strerror(errno));
		}
		if (n == 0) {
			/* Past the end of a sparse file: zeros. */
			memset(p, 0, len);
			return 0;
		}
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

/* Counting happens only while armed, so the unarmed check on every data
 * write is one atomic load, not a lock all writers share. */
static struct {
	atomic_bool armed;
	long left;      /* writes still allowed */
	long count;
	pthread_mutex_t lock;
} fault = { false, -1, 0, PTHREAD_MUTEX_INITIALIZER };

void vdisk_test_fail_writes_after(long n)
{
	pthread_mutex_lock(&fault.lock);
	fault.left = n;
	fault.count = 0;
	atomic_store(&fault.armed, n >= 0);
	pthread_mutex_unlock(&fault.lock);
}

long vdisk_test_write_count(void)
{
	pthread_mutex_lock(&fault.lock);
	long n = fault.count;
	pthread_mutex_unlock(&fault.lock);
	return n;
}

uint64_t vdisk_test_write_behind_pushed(const struct vdisk *d)
{
	return d->top->write_behind_pushed;
}

static bool fault_injected(void)
{
	if (!atomic_load_explicit(&fault.armed, memory_order_relaxed))
		return false;
	bool fail = false;
	pthread_mutex_lock(&fault.lock);
	fault.count++;
	if (fault.left == 0)
		fail = true;
	else if (fault.left > 0)
		fault.left--;
	pthread_mutex_unlock(&fault.lock);
	return fail;
}

static int write_loop(int fd, const void *buf, size_t len, uint64_t off, const char *what)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			int code = errno == ENOSPC ? VELA_E_DISKFULL : VELA_E_WRITE;
			return vela_error(code, "write %s at %llu: %s", what, (unsigned long long)off, strerror(errno));
		}
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

int vdisk_pwrite_full(int fd, const void *buf, size_t len, uint64_t off, const char *what)
{
	if (fault_injected())
		return vela_error(VELA_E_WRITE, "write %s at %llu: injected fault", what, (unsigned long long)off);
	return write_loop(fd, buf, len, off, what);
}

int vdisk_finish_create(int fd, const char *path, int r)
{
	if (r == 0 && fsync(fd) < 0)
		r = vela_error_errno(errno, "create %s: sync", path);
	close(fd);
	if (r < 0)
		unlink(path);
	return r;
}

void vdisk_punch_hole(int fd, uint64_t off, uint64_t len)
{
	/* Not every file system can; the data is dropped from the tables anyway. */
	(void)fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len);
}

bool vdisk_buf_is_zero(const void *buf, size_t len)
{
	const unsigned char *p = buf;
	if (len == 0)
		return true;
	if (p[0] != 0)
		return false;
	/* Compare the buffer with itself shifted by one byte. */
	return memcmp(p, p + 1, len - 1) == 0;
}

static int probe(const char *path, const struct vdisk_format **out)
{
	uint8_t head[4096];
	struct stat st;
	CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return vela_error_errno(errno, "open %s", path);
	if (fstat(fd, &st) < 0)
		return vela_error_errno(errno, "stat %s", path);
	if (S_ISDIR(st.st_mode))
		return vela_error(VELA_E_INVAL, "%s is a folder, not a disk image", path);
	ssize_t n = pread(fd, head, sizeof head, 0);
	if (n < 0)
		return vela_error_errno(errno, "read %s", path);
	int best = 0;
	for (size_t i = 0; i < ARRAY_SIZE(formats); i++) {
		int score = formats[i]->probe(head, (size_t)n, (uint64_t)st.st_size);
		if (score > best) {
			best = score;
			*out = formats[i];
		}
	}
	for (size_t i = 0; best <= 1 && i < ARRAY_SIZE(formats); i++) {
		const struct vdisk_format *f = formats[i];
		if (f->struct_size >= offsetof(struct vdisk_format, probe_tail) + sizeof f->probe_tail && f->probe_tail &&
		    f->probe_tail(fd, (uint64_t)st.st_size) > best) {
			best = f->probe_tail(fd, (uint64_t)st.st_size);
			*out = f;
		}
	}
	if (!best)
		return vela_error(VELA_E_FORMAT, "%s: unknown disk image format", path);
	return 0;
}

int vdisk_image_open(const char *path, bool read_only, struct vdisk_image **out)
{
	return vdisk_image_open_flags(path, read_only ? VDISK_OPEN_RDONLY : 0, out);
}

int vdisk_open_data_fd(const struct vdisk_image *img, const char *path, bool writable)
{
	if (!img->direct)
		return -1;
	int fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_DIRECT | O_CLOEXEC);
	return fd;   /* -1 (EINVAL on tmpfs, ...): the cached fd serves */
}

static bool direct_ok(int dfd, const void *buf, size_t len, uint64_t off)
{
	return dfd >= 0 && len > 0 && (((uintptr_t)buf | len | off) & (VDISK_SECTOR - 1)) == 0;
}

int vdisk_data_pread(int fd, int dfd, void *buf, size_t len, uint64_t off, const char *what)
{
	if (direct_ok(dfd, buf, len, off)) {
		ssize_t n = pread(dfd, buf, len, (off_t)off);
		if (n == (ssize_t)len)
			return 0;
		/* Short (end of file) or refused (alignment the device wants
		 * larger than 512): the cached path knows how to finish. */
	}
	return vdisk_pread_full(fd, buf, len, off, what);
}

int vdisk_data_pwrite(int fd, int dfd, struct vdisk_writebehind *wb, const void *buf, size_t len, uint64_t off,
		      const char *what)
{
	if (fault_injected())
		return vela_error(VELA_E_WRITE, "write %s at %llu: injected fault", what, (unsigned long long)off);
	if (direct_ok(dfd, buf, len, off)) {
		ssize_t n = pwrite(dfd, buf, len, (off_t)off);
		if (n == (ssize_t)len)
			return 0;
		if (n < 0 && errno != EINVAL)
			return vela_error(errno == ENOSPC ? VELA_E_DISKFULL : VELA_E_WRITE, "write %s at %llu: %s", what,
					  (unsigned long long)off, strerror(errno));
		if (n > 0)   /* short: finish the rest through the cache */
			return write_loop(fd, (const char *)buf + n, len - (size_t)n, off + (uint64_t)n, what);
	}
	int r = write_loop(fd, buf, len, off, what);
	if (r == 0)
		vdisk_writebehind_wrote(wb, off, len);
	return r;
}

int vdisk_image_open_flags(const char *path, unsigned flags, struct vdisk_image **out)
{
	const struct vdisk_format *fmt = NULL;
	int r = probe(path, &fmt);
	if (r < 0)
		return r;
	struct vdisk_image *img = xcalloc(1, sizeof *img);
	img->path = xstrdup(path);
	img->dir = path_dirname(path);
	img->read_only = (flags & VDISK_OPEN_RDONLY) != 0;
	img->direct = (flags & VDISK_OPEN_DIRECT) != 0;
	img->write_behind = !img->read_only && !img->direct && !(flags & VDISK_OPEN_NO_WRITE_BEHIND);
	img->fmt = fmt;
	pthread_mutex_init(&img->lock, NULL);
	r = fmt->open(img);
	if (r < 0) {
		vela_error_context(r, "open %s", path);
		vdisk_image_close(img);   /* backends' close copes with a half-done open */
		return r;
	}
	if (img->size > VDISK_MAX_SIZE) {
		r = vela_error(VELA_E_CORRUPT, "open %s: virtual size %llu is above the %llu-byte limit", path,
			       (unsigned long long)img->size, (unsigned long long)VDISK_MAX_SIZE);
		vdisk_image_close(img);
		return r;
	}
	*out = img;
	return 0;
}

void vdisk_image_close(struct vdisk_image *img)
{
	if (!img)
		return;
	if (img->fmt)
		img->fmt->close(img);
	vdisk_image_close(img->parent);
	pthread_mutex_destroy(&img->lock);
	free(img->parent_path);
	free(img->path);
	free(img->dir);
	free(img);
}

int vdisk_open(const char *path, unsigned flags, struct vdisk **out)
{
	struct vdisk_image *top = NULL, *cur;
	/* Real paths of the chain so far, for loop detection (heap: deep chains). */
	CLEANUP_FREE char (*seen)[PATH_MAX] = NULL;
	unsigned depth = 0;
	int r = vdisk_image_open_flags(path, flags & (VDISK_OPEN_RDONLY | VDISK_OPEN_DIRECT | VDISK_OPEN_NO_WRITE_BEHIND),
				       &top);
	if (r < 0)
		return r;
	seen = xcalloc(VDISK_MAX_CHAIN, PATH_MAX);
	if (!realpath(path, seen[depth++]))
		snprintf(seen[0], PATH_MAX, "%s", path);
	cur = top;
	while (!(flags & VDISK_OPEN_NO_PARENT) && cur->parent_path) {
		char real[PATH_MAX];
		if (depth >= VDISK_MAX_CHAIN) {
			r = vela_error(VELA_E_LIMIT, "open %s: chain deeper than %u images", path, VDISK_MAX_CHAIN);
			goto err;
		}
		if (!realpath(cur->parent_path, real)) {
			r = vela_error(VELA_E_CHAIN, "open %s: parent %s of %s is missing: %s", path, cur->parent_path,
				       cur->path, strerror(errno));
			goto err;
		}
		for (unsigned i = 0; i < depth; i++) {
			if (strcmp(seen[i], real) == 0) {
				r = vela_error(VELA_E_LOOP, "open %s: %s names %s as its parent, which is already in the chain",
					       path, cur->path, cur->parent_path);
				goto err;
			}
		}
		snprintf(seen[depth++], PATH_MAX, "%s", real);
		/* Parents are never written through a child. */
		r = vdisk_image_open_flags(cur->parent_path, VDISK_OPEN_RDONLY | (flags & VDISK_OPEN_DIRECT), &cur->parent);
		if (r < 0) {
			vela_error_context(r, "open %s: parent of %s", path, cur->path);
			goto err;
		}
		if (cur->fmt->check_parent && (r = cur->fmt->check_parent(cur, cur->parent)) < 0)
			goto err;
		/* A child may be larger than its parent (extended): the parent reads
		 * as zeros beyond its end (vdisk_image_read). */
		cur = cur->parent;
	}
	struct vdisk *d = xcalloc(1, sizeof *d);
	d->top = top;
	d->depth = depth;
	*out = d;
	return 0;
err:
	vdisk_image_close(top);
	return r;
}

int vdisk_close(struct vdisk *d)
{
	if (!d)
		return 0;
	int r = d->top->read_only ? 0 : vdisk_flush(d);
	vdisk_image_close(d->top);
	free(d);
	return r;
}

uint64_t vdisk_size(const struct vdisk *d) { return d->top->size; }
uint32_t vdisk_granularity(const struct vdisk *d) { return d->top->granularity; }
unsigned vdisk_depth(const struct vdisk *d) { return d->depth; }

static int check_range(const struct vdisk_image *img, size_t len, uint64_t off)
{
	uint64_t end;
	if (__builtin_add_overflow(off, (uint64_t)len, &end) || end > img->size)
		return vela_error(VELA_E_RANGE, "%s: range %llu+%zu is outside the disk (%llu bytes)", img->path,
				  (unsigned long long)off, len, (unsigned long long)img->size);
	return 0;
}

int vdisk_image_read(struct vdisk_image *img, void *buf, size_t len, uint64_t off)
{
	char *p = buf;
	if (!img) {
		memset(buf, 0, len);
		return 0;
	}
	if (!img->parent && off + len <= img->size &&
	    img->fmt->struct_size >= offsetof(struct vdisk_format, flags) + sizeof img->fmt->flags &&
	    (img->fmt->flags & VDISK_FMT_READ_ANY))
		return img->fmt->pread(img, buf, len, off);
	while (len > 0) {
		if (off >= img->size) {
			/* A parent smaller than its child reads as zeros beyond its end. */
			memset(p, 0, len);
			return 0;
		}
		uint64_t span = len;
		if (off + span > img->size)
			span = img->size - off;
		enum img_status st;
		uint64_t pnum;
		int r = img->fmt->block_status(img, off, span, &st, &pnum);
		if (r < 0)
			return r;
		if (pnum == 0 || pnum > span)
			return vela_error(VELA_E_INTERNAL, "%s: block status returned %llu bytes", img->path, (unsigned long long)pnum);
		size_t n = (size_t)pnum;
		if (st == IMG_DATA)
			r = img->fmt->pread(img, p, n, off);
		else if (st == IMG_ZERO)
			memset(p, 0, n);
		else
			r = vdisk_image_read(img->parent, p, n, off);
		if (r < 0)
			return r;
		p += n;
		off += n;
		len -= n;
	}
	return 0;
}

int vdisk_image_read_below(struct vdisk_image *img, void *buf, size_t len, uint64_t off)
{
	return vdisk_image_read(img->parent, buf, len, off);
}

int vdisk_pread(struct vdisk *d, void *buf, size_t len, uint64_t off)
{
	int r = check_range(d->top, len, off);
	if (r < 0)
		return r;
	return vdisk_image_read(d->top, buf, len, off);
}

int vdisk_pwrite(struct vdisk *d, const void *buf, size_t len, uint64_t off)
{
	int r = check_range(d->top, len, off);
	if (r < 0)
		return r;
	if (d->top->read_only)
		return vela_error(VELA_E_READONLY, "%s is open read-only", d->top->path);
	if (len == 0)
		return 0;
	return d->top->fmt->pwrite(d->top, buf, len, off);
}

int vdisk_flush(struct vdisk *d)
{
	if (d->top->read_only)
		return 0;
	return d->top->fmt->flush(d->top);
}

int vdisk_block_status(struct vdisk *d, uint64_t off, uint64_t len, struct vdisk_extent_status *out)
{
	int r = check_range(d->top, (size_t)len, off);
	if (r < 0)
		return r;
	if (len == 0)
		return vela_error(VELA_E_INVAL, "vdisk_block_status: empty range");
	struct vdisk_image *img = d->top;
	unsigned depth = 0;
	uint64_t span = len;
	while (img) {
		if (off >= img->size) {
			img = NULL;
			break;
		}
		if (off + span > img->size)
			span = img->size - off;
		enum img_status st;
		uint64_t pnum;
		if ((r = img->fmt->block_status(img, off, span, &st, &pnum)) < 0)
			return r;
		span = pnum;
		if (st != IMG_UNALLOC) {
			out->status = st == IMG_DATA ? VDISK_DATA : VDISK_ZERO;
			out->depth = depth;
			out->len = span;
			return 0;
		}
		img = img->parent;
		depth++;
	}
	out->status = VDISK_ZERO;
	out->depth = depth;
	out->len = span;
	return 0;
}

static int info_one(struct vdisk_image *img, struct vdisk_info **out)
{
	struct vdisk_info *i = xcalloc(1, sizeof *i);
	i->path = xstrdup(img->path);
	i->format = xstrdup(img->fmt->name);
	i->size = img->size;
	i->granularity = img->granularity;
	i->read_only = img->read_only;
	if (img->parent_path)
		i->parent = xstrdup(img->parent_path);
	int r = img->fmt->info ? img->fmt->info(img, i) : 0;
	if (!i->subformat)
		i->subformat = xstrdup("");
	if (r == 0 && img->parent)
		r = info_one(img->parent, &i->backing);
	if (r < 0) {
		vdisk_info_free(i);
		return r;
	}
	*out = i;
	return 0;
}

int vdisk_get_info(struct vdisk *d, struct vdisk_info **out)
{
	return info_one(d->top, out);
}

void vdisk_info_free(struct vdisk_info *i)
{
	while (i) {
		struct vdisk_info *next = i->backing;
		free(i->path);
		free(i->format);
		free(i->subformat);
		free(i->parent);
		free(i->adapter);
		free(i);
		i = next;
	}
}

int vdisk_chain_paths(const char *path, char ***paths, size_t *n)
{
	struct vdisk *d;
	int r = vdisk_open(path, VDISK_OPEN_RDONLY, &d);
	if (r < 0)
		return r;
	size_t k = 0;
	for (struct vdisk_image *i = d->top; i; i = i->parent)
		k++;
	char **v = xcalloc(k + 1, sizeof(char *));
	k = 0;
	for (struct vdisk_image *i = d->top; i; i = i->parent) {
		char real[PATH_MAX];
		v[k++] = xstrdup(realpath(i->path, real) ? real : i->path);
	}
	vdisk_close(d);
	*paths = v;
	*n = k;
	return 0;
}

void vdisk_chain_free(char **paths)
{
	for (size_t i = 0; paths && paths[i]; i++)
		free(paths[i]);
	free(paths);
}
