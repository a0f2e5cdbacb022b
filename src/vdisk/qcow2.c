/*
 * qcow2.c - QEMU copy-on-write v2 and v3: L1/L2 tables, refcounts, backing
 * files, compressed clusters (read), zero clusters (v3).
 *
 * Writes allocate whole clusters at the end of the file.  Metadata follows
 * the data at flush time, in the order that keeps the image valid after a
 * crash at any point: data -> (sync) -> refcounts -> (sync) -> L2 -> L1 ->
 * (sync).  A crash therefore leaves at most clusters whose refcount says
 * "used" that no table points to: leaks, which check --repair gives back.
 * Internal snapshots are kept but make the image read-only here.
 */
#include "common.h"
#include "vdisk-format.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#define QCOW_MAGIC 0x514649fbu
#define L1E_OFFSET_MASK 0x00fffffffffffe00ull
#define L2E_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW_OFLAG_COPIED (1ull << 63)
#define QCOW_OFLAG_COMPRESSED (1ull << 62)
#define QCOW_OFLAG_ZERO 1ull
#define INCOMPAT_DIRTY 1ull
#define INCOMPAT_CORRUPT 2ull
#define INCOMPAT_KNOWN (INCOMPAT_DIRTY | INCOMPAT_CORRUPT)
#define EXT_END 0
#define EXT_BACKING_FORMAT 0xe2792acau
#define EXT_FEATURE_TABLE 0x6803f857u
#define MAX_L1_ENTRIES (32u << 20)
#define MAX_REFTABLE_ENTRIES (8u << 20)
#define MAX_DIRTY_L2 512

struct l2 {
	uint64_t *e;           /* entries, host order */
	bool dirty;
};

struct refblock {
	uint8_t *raw;          /* on-disk bytes (big-endian entries) */
	bool dirty;
};

struct qcow2 {
	int fd;
	int dfd;                     /* O_DIRECT descriptor for cluster data, or -1 */
	struct vdisk_writebehind *wb;
	uint32_t version, cluster_bits, refcount_order;
	uint64_t cluster, size, file_end;
	uint64_t l1_offset, rt_offset;
	uint32_t l1_size, rt_clusters, nb_snapshots, header_len;
	uint64_t incompat;
	uint64_t *l1;
	bool l1_dirty;
	struct l2 **l2;        /* per L1 index, loaded on demand */
	unsigned n_dirty_l2;
	uint64_t *rt;          /* refcount table */
	uint32_t rt_entries;
	struct refblock **rb;  /* per refcount-table index */
	bool rt_dirty;
	uint32_t l2_entries, rb_entries;
	char *backing, *backing_fmt;
	bool read_only_snapshots;
};

static int qcow2_probe(const uint8_t *head, size_t len, uint64_t file_size)
{
	(void)file_size;
	return len >= 4 && be32_get(head) == QCOW_MAGIC ? 100 : 0;
}

static void qcow2_free(struct qcow2 *q)
{
	if (!q)
		return;
	if (q->l2)
		for (uint32_t i = 0; i < q->l1_size; i++)
			if (q->l2[i]) {
				free(q->l2[i]->e);
				free(q->l2[i]);
			}
	if (q->rb)
		for (uint32_t i = 0; i < q->rt_entries; i++)
			if (q->rb[i]) {
				free(q->rb[i]->raw);
				free(q->rb[i]);
			}
	vdisk_writebehind_free(q->wb);
	if (q->fd >= 0)
		close(q->fd);
	if (q->dfd >= 0)
		close(q->dfd);
	free(q->l1);
	free(q->l2);
	free(q->rt);
	free(q->rb);
	free(q->backing);
	free(q->backing_fmt);
	free(q);
}

static bool in_file(const struct qcow2 *q, uint64_t off, uint64_t len)
{
	return off <= q->file_end && len <= q->file_end - off;
}

static int qcow2_open(struct vdisk_image *img)
{
	struct qcow2 *q = xcalloc(1, sizeof *q);
	uint8_t h[4096];
	struct stat st;
	img->priv = q;
	q->dfd = -1;
	q->fd = open(img->path, (img->read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (q->fd < 0)
		return vela_error_errno(errno, "open %s", img->path);
	q->dfd = vdisk_open_data_fd(img, img->path, !img->read_only);
	q->wb = vdisk_writebehind_new(img, q->fd);
	if (fstat(q->fd, &st) < 0)
		return vela_error_errno(errno, "stat %s", img->path);
	q->file_end = (uint64_t)st.st_size;
	memset(h, 0, sizeof h);
	int r = vdisk_pread_full(q->fd, h, sizeof h, 0, img->path);
	if (r < 0)
		return r;
	q->version = be32_get(h + 4);
	if (q->version != 2 && q->version != 3)
		return vela_error(VELA_E_VERSION, "%s: qcow2 version %u is not supported", img->path, q->version);
	uint64_t bf_off = be64_get(h + 8);
	uint32_t bf_len = be32_get(h + 16);
	q->cluster_bits = be32_get(h + 20);
	q->size = be64_get(h + 24);
	uint32_t crypt = be32_get(h + 32);
	q->l1_size = be32_get(h + 36);
	q->l1_offset = be64_get(h + 40);
	q->rt_offset = be64_get(h + 48);
	q->rt_clusters = be32_get(h + 56);
	q->nb_snapshots = be32_get(h + 60);
	q->refcount_order = 4;
	q->header_len = 72;
	if (q->version == 3) {
		q->incompat = be64_get(h + 72);
		q->refcount_order = be32_get(h + 96);
		q->header_len = be32_get(h + 100);
		if (q->header_len < 104 || q->header_len > 4096)
			return vela_error(VELA_E_CORRUPT, "%s: header length %u is out of range", img->path, q->header_len);
	}
	if (q->cluster_bits < 9 || q->cluster_bits > 21)
		return vela_error(VELA_E_CORRUPT, "%s: cluster_bits %u is out of range (9-21)", img->path, q->cluster_bits);
	q->cluster = 1ull << q->cluster_bits;
	if (crypt)
		return vela_error(VELA_E_NOTSUP, "%s: encrypted qcow2 images are not supported", img->path);
	if (q->incompat & ~INCOMPAT_KNOWN)
		return vela_error(VELA_E_NOTSUP, "%s: qcow2 incompatible features 0x%llx are not supported", img->path,
				  (unsigned long long)(q->incompat & ~INCOMPAT_KNOWN));
	if ((q->incompat & INCOMPAT_CORRUPT) && !img->read_only)
		return vela_error(VELA_E_CORRUPT, "%s: the image is marked corrupt; open it read-only or repair it", img->path);
	if (q->refcount_order > 6)
		return vela_error(VELA_E_CORRUPT, "%s: refcount order %u is out of range", img->path, q->refcount_order);
	if (q->refcount_order != 4)
		return vela_error(VELA_E_NOTSUP, "%s: refcounts of %u bits are not supported (16 only)", img->path,
				  1u << q->refcount_order);
	if (q->size == 0 || q->size > VDISK_MAX_SIZE)
		return vela_error(VELA_E_CORRUPT, "%s: virtual size %llu is out of range", img->path, (unsigned long long)q->size);
	q->l2_entries = (uint32_t)(q->cluster / 8);
	q->rb_entries = (uint32_t)(q->cluster / 2);
	uint64_t need_l1 = (q->size + q->cluster * q->l2_entries - 1) / (q->cluster * q->l2_entries);
	if (q->l1_size < need_l1 || q->l1_size > MAX_L1_ENTRIES)
		return vela_error(VELA_E_CORRUPT, "%s: L1 table of %u entries for %llu needed", img->path, q->l1_size,
				  (unsigned long long)need_l1);
	if ((q->l1_offset & (q->cluster - 1)) || !in_file(q, q->l1_offset, (uint64_t)q->l1_size * 8))
		return vela_error(VELA_E_CORRUPT, "%s: L1 table lies outside the file", img->path);
	if (q->rt_clusters == 0 || (q->rt_offset & (q->cluster - 1)) ||
	    (uint64_t)q->rt_clusters * q->cluster / 8 > MAX_REFTABLE_ENTRIES ||
	    !in_file(q, q->rt_offset, (uint64_t)q->rt_clusters * q->cluster))
		return vela_error(VELA_E_CORRUPT, "%s: refcount table lies outside the file", img->path);
	if (q->nb_snapshots && !img->read_only)
		return vela_error(VELA_E_NOTSUP, "%s: images with internal snapshots can only be opened read-only", img->path);

	/* Header extensions: the backing file's format. */
	for (uint64_t off = q->header_len; off + 8 <= sizeof h; ) {
		uint32_t type = be32_get(h + off), len = be32_get(h + off + 4);
		if (type == EXT_END)
			break;
		if (len > sizeof h - off - 8)
			return vela_error(VELA_E_CORRUPT, "%s: header extension runs past the first 4 KiB", img->path);
		if (type == EXT_BACKING_FORMAT)
			q->backing_fmt = xstrndup((const char *)h + off + 8, len);
		off += 8 + ((len + 7) & ~7u);
	}
	if (bf_off) {
		if (bf_len == 0 || bf_len > 1023 || bf_off > sizeof h - bf_len)
			return vela_error(VELA_E_CORRUPT, "%s: backing file name out of range", img->path);
		q->backing = xstrndup((const char *)h + bf_off, bf_len);
		if (strlen(q->backing) != bf_len)
			return vela_error(VELA_E_CORRUPT, "%s: backing file name contains a NUL", img->path);
		img->parent_path = path_join(img->dir, q->backing);
	}

	uint8_t *raw = xcalloc(q->l1_size ? q->l1_size : 1, 8);
	r = vdisk_pread_full(q->fd, raw, (size_t)q->l1_size * 8, q->l1_offset, img->path);
	q->l1 = xcalloc(q->l1_size ? q->l1_size : 1, 8);
	for (uint32_t i = 0; r == 0 && i < q->l1_size; i++) {
		q->l1[i] = be64_get(raw + 8 * (size_t)i);
		uint64_t l2off = q->l1[i] & L1E_OFFSET_MASK;
		if (l2off && ((l2off & (q->cluster - 1)) || !in_file(q, l2off, q->cluster)))
			r = vela_error(VELA_E_CORRUPT, "%s: L2 table %u at %llu lies outside the file", img->path, i,
				       (unsigned long long)l2off);
	}
	free(raw);
	if (r < 0)
		return r;
	q->l2 = xcalloc(q->l1_size ? q->l1_size : 1, sizeof *q->l2);
	q->rt_entries = (uint32_t)((uint64_t)q->rt_clusters * q->cluster / 8);
	raw = xcalloc(q->rt_entries, 8);
	r = vdisk_pread_full(q->fd, raw, (size_t)q->rt_entries * 8, q->rt_offset, img->path);
	q->rt = xcalloc(q->rt_entries, 8);
	for (uint32_t i = 0; r == 0 && i < q->rt_entries; i++) {
		q->rt[i] = be64_get(raw + 8 * (size_t)i) & ~(q->cluster - 1);
		if (q->rt[i] && !in_file(q, q->rt[i], q->cluster))
			r = vela_error(VELA_E_CORRUPT, "%s: refcount block %u lies outside the file", img->path, i);
	}
	free(raw);
	if (r < 0)
		return r;
	q->rb = xcalloc(q->rt_entries, sizeof *q->rb);
	q->file_end = (q->file_end + q->cluster - 1) & ~(q->cluster - 1);
	img->size = q->size;
	img->granularity = (uint32_t)q->cluster;
	return 0;
}

static void qcow2_close(struct vdisk_image *img)
{
	qcow2_free(img->priv);
	img->priv = NULL;
}

static int load_l2(struct vdisk_image *img, struct qcow2 *q, uint32_t i, struct l2 **out)
{
	if (!q->l2[i]) {
		struct l2 *t = xcalloc(1, sizeof *t);
		t->e = xcalloc(q->l2_entries, 8);
		uint64_t off = q->l1[i] & L1E_OFFSET_MASK;
		if (off) {
			uint8_t *raw = xcalloc(q->l2_entries, 8);
			int r = vdisk_pread_full(q->fd, raw, q->cluster, off, img->path);
			if (r < 0) {
				free(raw);
				free(t->e);
				free(t);
				return r;
			}
			for (uint32_t k = 0; k < q->l2_entries; k++)
				t->e[k] = be64_get(raw + 8 * (size_t)k);
			free(raw);
		}
		q->l2[i] = t;
	}
	*out = q->l2[i];
	return 0;
}

/* L2 entry of virtual cluster c, validated.  *slot gets its address. */
static int get_l2e(struct vdisk_image *img, struct qcow2 *q, uint64_t c, uint64_t *e, uint64_t **slot)
{
	uint32_t i = (uint32_t)(c / q->l2_entries);
	struct l2 *t;
	if (i >= q->l1_size)
		return vela_error(VELA_E_INTERNAL, "%s: cluster %llu beyond L1", img->path, (unsigned long long)c);
	if (!(q->l1[i] & L1E_OFFSET_MASK) && !q->l2[i]) {
		*e = 0;
		if (slot)
			*slot = NULL;
		return 0;
	}
	int r = load_l2(img, q, i, &t);
	if (r < 0)
		return r;
	uint64_t v = t->e[c % q->l2_entries];
	if (!(v & QCOW_OFLAG_COMPRESSED)) {
		uint64_t off = v & L2E_OFFSET_MASK;
		if (off && ((off & (q->cluster - 1)) || off < q->cluster || !in_file(q, off, q->cluster)))
			return vela_error(VELA_E_CORRUPT, "%s: cluster %llu points to %llu, outside the file or into the header",
					  img->path, (unsigned long long)c, (unsigned long long)off);
		if ((v & QCOW_OFLAG_ZERO) && q->version < 3)
			return vela_error(VELA_E_CORRUPT, "%s: zero flag in a version 2 image", img->path);
	}
	*e = v;
	if (slot)
		*slot = &t->e[c % q->l2_entries];
	return 0;
}

static enum img_status status_of(uint64_t e)
{
	if (e & QCOW_OFLAG_COMPRESSED)
		return IMG_DATA;
	if (e & QCOW_OFLAG_ZERO)
		return IMG_ZERO;
	return (e & L2E_OFFSET_MASK) ? IMG_DATA : IMG_UNALLOC;
}

static int qcow2_block_status(struct vdisk_image *img, uint64_t off, uint64_t len, enum img_status *st, uint64_t *pnum)
{
	struct qcow2 *q = img->priv;
	uint64_t done = 0;
	int first = -1, r = 0;
	pthread_mutex_lock(&img->lock);
	while (done < len) {
		uint64_t e;
		if ((r = get_l2e(img, q, (off + done) >> q->cluster_bits, &e, NULL)) < 0)
			break;
		int s = status_of(e);
		if (first < 0)
			first = s;
		else if (s != first)
			break;
		done += q->cluster - ((off + done) & (q->cluster - 1));
	}
	pthread_mutex_unlock(&img->lock);
	if (r < 0)
		return r;
	*st = (enum img_status)first;
	*pnum = done < len ? done : len;
	return 0;
}

/* Inflate the compressed cluster of entry e into out (one cluster). */
static int read_compressed(struct vdisk_image *img, struct qcow2 *q, uint64_t e, uint8_t *out)
{
	unsigned x = 62 - (q->cluster_bits - 8);
	uint64_t off = e & ((1ull << x) - 1);
	uint64_t sectors = ((e & ~QCOW_OFLAG_COPIED & ~QCOW_OFLAG_COMPRESSED) >> x) + 1;
	uint64_t len = sectors * 512 - (off & 511);
	if (len > 2 * q->cluster || !in_file(q, off, 1))
		return vela_error(VELA_E_CORRUPT, "%s: compressed cluster at %llu out of range", img->path, (unsigned long long)off);
	if (off + len > q->file_end)
		len = q->file_end - off;
	uint8_t *in = xcalloc(1, len);
	int r = vdisk_pread_full(q->fd, in, len, off, img->path);
	if (r == 0) {
		z_stream z = { 0 };
		inflateInit2(&z, -12);
		z.next_in = in;
		z.avail_in = (uInt)len;
		z.next_out = out;
		z.avail_out = (uInt)q->cluster;
		int zr = inflate(&z, Z_FINISH);
		if ((zr != Z_STREAM_END && zr != Z_BUF_ERROR) || z.avail_out != 0)
			r = vela_error(VELA_E_CORRUPT, "%s: compressed cluster at %llu does not inflate to a cluster",
				       img->path, (unsigned long long)off);
		inflateEnd(&z);
	}
	free(in);
	return r;
}

static int qcow2_pread(struct vdisk_image *img, void *buf, size_t len, uint64_t off)
{
	struct qcow2 *q = img->priv;
	char *p = buf;
	while (len > 0) {
		uint64_t in = off & (q->cluster - 1);
		size_t n = len < q->cluster - in ? len : (size_t)(q->cluster - in);
		uint64_t e;
		pthread_mutex_lock(&img->lock);
		int r = get_l2e(img, q, off >> q->cluster_bits, &e, NULL);
		/* Data clusters that follow each other in the file too are read
		 * in one request (up to 256 clusters, one lock hold). */
		for (int more = 0; r == 0 && more < 256 && n < len && status_of(e) == IMG_DATA &&
				   !(e & QCOW_OFLAG_COMPRESSED); more++) {
			uint64_t next;
			if (get_l2e(img, q, (off + n) >> q->cluster_bits, &next, NULL) < 0 || status_of(next) != IMG_DATA ||
			    (next & QCOW_OFLAG_COMPRESSED) ||
			    (next & L2E_OFFSET_MASK) != (e & L2E_OFFSET_MASK) + in + n)
				break;
			n += len - n < q->cluster ? len - n : (size_t)q->cluster;
		}
		pthread_mutex_unlock(&img->lock);
		if (r < 0)
			return r;
		if (e & QCOW_OFLAG_COMPRESSED) {
			uint8_t *c = xcalloc(1, q->cluster);
			r = read_compressed(img, q, e, c);
			if (r == 0)
				memcpy(p, c + in, n);
			free(c);
		} else if (status_of(e) == IMG_DATA) {
			r = vdisk_data_pread(q->fd, q->dfd, p, n, (e & L2E_OFFSET_MASK) + in, img->path);
		} else {
			memset(p, 0, n);
		}
		if (r < 0)
			return r;
		p += n;
		off += n;
		len -= n;
	}
	return 0;
}

/* ---------------------------------------------------------- refcounts */

static int load_rb(struct vdisk_image *img, struct qcow2 *q, uint32_t i, struct refblock **out)
{
	if (!q->rb[i]) {
		struct refblock *b = xcalloc(1, sizeof *b);
		b->raw = xcalloc(1, q->cluster);
		if (q->rt[i]) {
			int r = vdisk_pread_full(q->fd, b->raw, q->cluster, q->rt[i], img->path);
			if (r < 0) {
				free(b->raw);
				free(b);
				return r;
			}
		}
		q->rb[i] = b;
	}
	*out = q->rb[i];
	return 0;
}

static uint64_t alloc_raw(struct qcow2 *q)
{
	uint64_t at = q->file_end;
	q->file_end += q->cluster;
	return at;
}

/* Add delta to the refcount of the host cluster at `host`; new refcount
 * blocks are allocated (and counted) as needed. */
static int refcount_add(struct vdisk_image *img, struct qcow2 *q, uint64_t host, int delta)
{
	uint64_t c = host >> q->cluster_bits;
	uint64_t i = c / q->rb_entries;
	if (i >= q->rt_entries)
		return vela_error(VELA_E_LIMIT, "%s: the refcount table is full (file larger than it can describe)", img->path);
	struct refblock *b;
	bool fresh = q->rt[i] == 0;
	int r = load_rb(img, q, (uint32_t)i, &b);
	if (r < 0)
		return r;
	if (fresh) {
		/* A new refcount block, placed at the end; it counts itself if it
		 * falls in its own range, else its own block counts it. */
		q->rt[i] = alloc_raw(q);
		q->rt_dirty = true;
		b->dirty = true;
		if ((r = refcount_add(img, q, q->rt[i], 1)) < 0)
			return r;
	}
	uint32_t k = (uint32_t)(c % q->rb_entries);
	uint32_t v = (uint32_t)(b->raw[2 * k] << 8 | b->raw[2 * k + 1]);
	int64_t nv = (int64_t)v + delta;
	if (nv < 0 || nv > 0xffff)
		return vela_error(VELA_E_CORRUPT, "%s: refcount of cluster %llu would become %lld", img->path,
				  (unsigned long long)c, (long long)nv);
	b->raw[2 * k] = (uint8_t)(nv >> 8);
	b->raw[2 * k + 1] = (uint8_t)nv;
	b->dirty = true;
	return 0;
}

static int refcount_get(struct vdisk_image *img, struct qcow2 *q, uint64_t host, uint32_t *out)
{
	uint64_t c = host >> q->cluster_bits, i = c / q->rb_entries;
	struct refblock *b;
	if (i >= q->rt_entries || !q->rt[i]) {
		*out = 0;
		return 0;
	}
	int r = load_rb(img, q, (uint32_t)i, &b);
	if (r < 0)
		return r;
	uint32_t k = (uint32_t)(c % q->rb_entries);
	*out = (uint32_t)(b->raw[2 * k] << 8 | b->raw[2 * k + 1]);
	return 0;
}

static int alloc_cluster(struct vdisk_image *img, struct qcow2 *q, uint64_t *out)
{
	uint64_t at = alloc_raw(q);
	int r = refcount_add(img, q, at, 1);
	if (r == 0)
		*out = at;
	return r;
}

/* ---------------------------------------------------------- writes */

static int qcow2_flush_locked(struct vdisk_image *img);

static int write_cluster(struct vdisk_image *img, struct qcow2 *q, const char *src, size_t n, uint64_t off)
{
	uint64_t c = off >> q->cluster_bits, in = off & (q->cluster - 1);
	uint32_t i = (uint32_t)(c / q->l2_entries);
	uint64_t e, *slot;
	int r = get_l2e(img, q, c, &e, &slot);
	if (r < 0)
		return r;
	uint64_t host = e & L2E_OFFSET_MASK;
	if (!(e & QCOW_OFLAG_COMPRESSED) && host && (e & QCOW_OFLAG_COPIED))
		return vdisk_data_pwrite(q->fd, q->dfd, q->wb, src, n, host + in, img->path);   /* ours alone: in place */

	/* A new cluster: keep what the write does not cover. */
	char *buf = xcalloc(1, q->cluster);
	uint64_t vstart = c << q->cluster_bits;
	if (n < q->cluster) {
		if (e & QCOW_OFLAG_COMPRESSED)
			r = read_compressed(img, q, e, (uint8_t *)buf);
		else if (host && !(e & QCOW_OFLAG_ZERO))
			r = vdisk_data_pread(q->fd, q->dfd, buf, q->cluster, host, img->path);
		else if (!(e & QCOW_OFLAG_ZERO) && vstart < img->size) {
			uint64_t span = img->size - vstart < q->cluster ? img->size - vstart : q->cluster;
			r = vdisk_image_read_below(img, buf, (size_t)span, vstart);
		}
	}
	uint64_t at = 0;
	if (r == 0) {
		memcpy(buf + in, src, n);
		r = alloc_cluster(img, q, &at);
	}
	if (r == 0)
		r = vdisk_data_pwrite(q->fd, q->dfd, q->wb, buf, q->cluster, at, img->path);
	free(buf);
	if (r < 0)
		return r;
	/* The old cluster (shared or compressed) loses this reference. */
	if (e & QCOW_OFLAG_COMPRESSED) {
		unsigned x = 62 - (q->cluster_bits - 8);
		uint64_t coff = e & ((1ull << x) - 1);
		uint64_t sectors = ((e & ~QCOW_OFLAG_COPIED & ~QCOW_OFLAG_COMPRESSED) >> x) + 1;
		uint64_t first = coff & ~(q->cluster - 1), last = (coff + sectors * 512 - 1) & ~(q->cluster - 1);
		for (uint64_t hc = first; hc <= last && r == 0; hc += q->cluster)
			r = refcount_add(img, q, hc, -1);
	} else if (host) {
		r = refcount_add(img, q, host, -1);
	}
	if (r < 0)
		return r;
	if (!slot) {
		/* No L2 table yet for this range. */
		uint64_t l2off = 0;
		if ((r = alloc_cluster(img, q, &l2off)) < 0)
			return r;
		struct l2 *t;
		q->l1[i] = l2off | QCOW_OFLAG_COPIED;
		q->l1_dirty = true;
		if ((r = load_l2(img, q, i, &t)) < 0)
			return r;
		memset(t->e, 0, q->cluster);   /* fresh table: nothing read from disk */
		slot = &t->e[c % q->l2_entries];
	}
	*slot = at | QCOW_OFLAG_COPIED;
	if (!q->l2[i]->dirty) {
		q->l2[i]->dirty = true;
		q->n_dirty_l2++;
	}
	return 0;
}

static int qcow2_pwrite(struct vdisk_image *img, const void *buf, size_t len, uint64_t off)
{
	struct qcow2 *q = img->priv;
	const char *p = buf;
	int r = 0;
	/* Clusters that are ours alone: look them up under the lock, write
	 * outside it, host-contiguous runs in one request. */
	{
		uint64_t first = off >> q->cluster_bits, last = (off + len - 1) >> q->cluster_bits;
		uint64_t run_host = 0, run_off = off;
		size_t run_len = 0;
		bool fast = last - first < 256;
		uint64_t hosts[256];
		pthread_mutex_lock(&img->lock);
		for (uint64_t c = first; fast && c <= last; c++) {
			uint64_t e;
			if (get_l2e(img, q, c, &e, NULL) < 0 || (e & QCOW_OFLAG_COMPRESSED) || !(e & L2E_OFFSET_MASK) ||
			    !(e & QCOW_OFLAG_COPIED) || (e & QCOW_OFLAG_ZERO))
				fast = false;
			else
				hosts[c - first] = e & L2E_OFFSET_MASK;
		}
		pthread_mutex_unlock(&img->lock);
		if (fast) {
			for (uint64_t c = first; c <= last && r == 0; c++) {
				uint64_t in = c == first ? (off & (q->cluster - 1)) : 0;
				size_t n = (size_t)(q->cluster - in);
				if (n > len - (size_t)(run_off + run_len - off))
					n = len - (size_t)(run_off + run_len - off);
				uint64_t h = hosts[c - first] + in;
				if (run_len && run_host + run_len == h) {
					run_len += n;
					continue;
				}
				if (run_len)
					r = vdisk_data_pwrite(q->fd, q->dfd, q->wb, p + (run_off - off), run_len, run_host, img->path);
				run_off += run_len;
				run_host = h;
				run_len = n;
			}
			if (r == 0 && run_len)
				r = vdisk_data_pwrite(q->fd, q->dfd, q->wb, p + (run_off - off), run_len, run_host, img->path);
			return r;
		}
	}
	pthread_mutex_lock(&img->lock);
	while (len > 0 && r == 0) {
		uint64_t in = off & (q->cluster - 1);
		size_t n = len < q->cluster - in ? len : (size_t)(q->cluster - in);
		r = write_cluster(img, q, p, n, off);
		if (r == 0 && q->n_dirty_l2 > MAX_DIRTY_L2)
			r = qcow2_flush_locked(img);
		p += n;
		off += n;
		len -= n;
	}
	pthread_mutex_unlock(&img->lock);
	return r;
}

static int write_be64_table(int fd, const uint64_t *t, size_t n, uint64_t off, const char *path)
{
	uint8_t *raw = xcalloc(n ? n : 1, 8);
	for (size_t k = 0; k < n; k++)
		be64_put(raw + 8 * k, t[k]);
	int r = vdisk_pwrite_full(fd, raw, n * 8, off, path);
	free(raw);
	return r;
}

static int qcow2_flush_locked(struct vdisk_image *img)
{
	struct qcow2 *q = img->priv;
	int r = 0;
	if (fdatasync(q->fd) < 0)
		return vela_error_errno(errno, "flush %s", img->path);
	/* 1. refcounts (so a crash leaves leaks, never a cluster used twice) */
	bool any = false;
	for (uint32_t i = 0; i < q->rt_entries && r == 0; i++) {
		if (q->rb[i] && q->rb[i]->dirty) {
			r = vdisk_pwrite_full(q->fd, q->rb[i]->raw, q->cluster, q->rt[i], img->path);
			q->rb[i]->dirty = false;
			any = true;
		}
	}
	if (r == 0 && q->rt_dirty) {
		if (fdatasync(q->fd) < 0)
			return vela_error_errno(errno, "flush %s", img->path);
		r = write_be64_table(q->fd, q->rt, q->rt_entries, q->rt_offset, img->path);
		q->rt_dirty = false;
		any = true;
	}
	if (r == 0 && any && fdatasync(q->fd) < 0)
		return vela_error_errno(errno, "flush %s", img->path);
	/* 2. L2 tables, then L1 */
	any = false;
	for (uint32_t i = 0; i < q->l1_size && r == 0; i++) {
		if (q->l2[i] && q->l2[i]->dirty) {
			r = write_be64_table(q->fd, q->l2[i]->e, q->l2_entries, q->l1[i] & L1E_OFFSET_MASK, img->path);
			q->l2[i]->dirty = false;
			any = true;
		}
	}
	q->n_dirty_l2 = 0;
	if (r == 0 && q->l1_dirty) {
		if (fdatasync(q->fd) < 0)
			return vela_error_errno(errno, "flush %s", img->path);
		r = write_be64_table(q->fd, q->l1, q->l1_size, q->l1_offset, img->path);
		q->l1_dirty = false;
		any = true;
	}
	if (r == 0 && any && fdatasync(q->fd) < 0)
		r = vela_error_errno(errno, "flush %s", img->path);
	return r;
}

static int qcow2_flush(struct vdisk_image *img)
{
	pthread_mutex_lock(&img->lock);
	int r = qcow2_flush_locked(img);
	pthread_mutex_unlock(&img->lock);
	return r;
}

/* ---------------------------------------------------------- create */

static int qcow2_create(const char *path, const struct vdisk_create_opts *o, struct vdisk_image *parent,
			const char *parent_name)
{
	const uint64_t cluster = 65536;
	uint64_t size = parent ? parent->size : o->size;
	uint64_t l1_entries = (size + cluster * (cluster / 8) - 1) / (cluster * (cluster / 8));
	uint64_t l1_clusters = (l1_entries * 8 + cluster - 1) / cluster;
	if (!l1_clusters)
		l1_clusters = 1;
	/* A refcount table that can describe a file up to twice the disk plus
	 * metadata: no table growth in normal use. */
	uint64_t max_file = 2 * size + (64ull << 20);
	uint64_t rbs = (max_file / cluster + cluster / 2 - 1) / (cluster / 2);
	uint64_t rt_clusters = (rbs * 8 + cluster - 1) / cluster;
	uint64_t rt_off = cluster, rb_off = rt_off + rt_clusters * cluster, l1_off = rb_off + cluster;
	uint64_t end = l1_off + l1_clusters * cluster;
	if (end / cluster > cluster / 2)
		return vela_error(VELA_E_LIMIT, "create %s: too large for one refcount block of metadata", path);

	uint8_t *h = xcalloc(1, cluster);
	be32_put(h, QCOW_MAGIC);
	be32_put(h + 4, 3);
	be32_put(h + 20, 16);
	be64_put(h + 24, size);
	be32_put(h + 36, (uint32_t)l1_entries);
	be64_put(h + 40, l1_off);
	be64_put(h + 48, rt_off);
	be32_put(h + 56, (uint32_t)rt_clusters);
	be32_put(h + 96, 4);
	be32_put(h + 100, 104);
	uint64_t ext = 104;
	if (parent) {
		const char *fmt = parent->fmt->name;
		be32_put(h + ext, EXT_BACKING_FORMAT);
		be32_put(h + ext + 4, (uint32_t)strlen(fmt));
		memcpy(h + ext + 8, fmt, strlen(fmt));
		ext += 8 + ((strlen(fmt) + 7) & ~7u);
	}
	be32_put(h + ext, EXT_END);
	ext += 8;
	if (parent) {
		size_t n = strlen(parent_name);
		if (ext + n > cluster)
			n = 0;
		memcpy(h + ext, parent_name, n);
		be64_put(h + 8, ext);
		be32_put(h + 16, (uint32_t)n);
	}
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		free(h);
		return vela_error_errno(errno, "create %s", path);
	}
	int r = ftruncate(fd, (off_t)end) < 0 ? vela_error_errno(errno, "create %s", path) : 0;
	if (r == 0)
		r = vdisk_pwrite_full(fd, h, cluster, 0, path);
	/* Refcount table -> one block; the block counts every metadata cluster. */
	if (r == 0) {
		uint8_t e[8];
		be64_put(e, rb_off);
		r = vdisk_pwrite_full(fd, e, 8, rt_off, path);
	}
	if (r == 0) {
		uint8_t *rb = xcalloc(1, cluster);
		for (uint64_t c = 0; c < end / cluster; c++)
			rb[2 * c + 1] = 1;
		r = vdisk_pwrite_full(fd, rb, cluster, rb_off, path);
		free(rb);
	}
	free(h);
	return vdisk_finish_create(fd, path, r);
}

static int qcow2_info(struct vdisk_image *img, struct vdisk_info *info)
{
	struct qcow2 *q = img->priv;
	struct stat st;
	info->subformat = xasprintf("v%u", q->version);
	if (fstat(q->fd, &st) == 0)
		info->allocated = (uint64_t)st.st_blocks * 512;
	return 0;
}

/* Recount every reference and compare with the stored refcounts. */
static int qcow2_check(struct vdisk_image *img, bool repair, struct vdisk_check_report *rep)
{
	struct qcow2 *q = img->priv;
	memset(rep, 0, sizeof *rep);
	uint64_t n_clusters = q->file_end >> q->cluster_bits;
	uint16_t *want = xcalloc(n_clusters ? n_clusters : 1, 2);
	int r = 0;
#define REF(off) do { uint64_t _c = (off) >> q->cluster_bits; \
		if (_c < n_clusters) want[_c]++; \
		else if (!rep->errors++) rep->first_problem = xasprintf("%s: reference to %llu beyond the end", img->path, (unsigned long long)(off)); } while (0)
	if (n_clusters)
		want[0] = 1;   /* the header and its extensions live in cluster 0 */
	for (uint64_t k = 0; k < ((uint64_t)q->l1_size * 8 + q->cluster - 1) / q->cluster; k++)
		REF(q->l1_offset + k * q->cluster);
	for (uint32_t k = 0; k < q->rt_clusters; k++)
		REF(q->rt_offset + (uint64_t)k * q->cluster);
	for (uint32_t k = 0; k < q->rt_entries; k++)
		if (q->rt[k])
			REF(q->rt[k]);
	for (uint32_t i = 0; i < q->l1_size && r == 0; i++) {
		if (!(q->l1[i] & L1E_OFFSET_MASK))
			continue;
		REF(q->l1[i] & L1E_OFFSET_MASK);
		struct l2 *t;
		if ((r = load_l2(img, q, i, &t)) < 0)
			break;
		for (uint32_t k = 0; k < q->l2_entries; k++) {
			uint64_t e = t->e[k];
			if (e & QCOW_OFLAG_COMPRESSED) {
				unsigned x = 62 - (q->cluster_bits - 8);
				uint64_t coff = e & ((1ull << x) - 1);
				uint64_t sectors = ((e & ~QCOW_OFLAG_COPIED & ~QCOW_OFLAG_COMPRESSED) >> x) + 1;
				for (uint64_t hc = coff & ~(q->cluster - 1); hc <= ((coff + sectors * 512 - 1) & ~(q->cluster - 1)); hc += q->cluster)
					REF(hc);
			} else if (e & L2E_OFFSET_MASK) {
				REF(e & L2E_OFFSET_MASK);
			}
		}
	}
#undef REF
	if (q->nb_snapshots && !rep->first_problem)
		rep->first_problem = xasprintf("%s: internal snapshots are not counted by this check", img->path);
	for (uint64_t c = 0; c < n_clusters && r == 0 && !q->nb_snapshots; c++) {
		uint32_t have;
		if ((r = refcount_get(img, q, c << q->cluster_bits, &have)) < 0)
			break;
		if (have < want[c]) {
			if (!rep->errors++)
				rep->first_problem = xasprintf("%s: cluster %llu is used %u time%s but its refcount is %u", img->path,
							       (unsigned long long)c, want[c], want[c] == 1 ? "" : "s", have);
		} else if (have > want[c]) {
			rep->leaks++;
			if (!rep->first_problem)
				rep->first_problem = xasprintf("%s: cluster %llu has refcount %u but %u reference%s", img->path,
							       (unsigned long long)c, have, want[c], want[c] == 1 ? "" : "s");
			if (repair && !img->read_only && (r = refcount_add(img, q, c << q->cluster_bits, (int)want[c] - (int)have)) == 0)
				rep->repaired++;
		}
	}
	free(want);
	if (r == 0 && rep->repaired)
		r = qcow2_flush(img);
	return r;
}

/* Rewrite the header's extensions and backing file name in cluster 0. */
static int qcow2_set_parent(struct vdisk_image *img, struct vdisk_image *parent, const char *parent_name)
{
	struct qcow2 *q = img->priv;
	uint8_t h[4096];
	size_t n = strlen(parent_name), fl = strlen(parent->fmt->name);
	int r = vdisk_pread_full(q->fd, h, sizeof h, 0, img->path);
	if (r < 0)
		return r;
	uint64_t ext = q->header_len;
	uint8_t keep[4096];
	size_t kept = 0;
	/* Keep every extension but the backing format. */
	for (uint64_t off = q->header_len; off + 8 <= sizeof h; ) {
		uint32_t type = be32_get(h + off), len = be32_get(h + off + 4);
		if (type == EXT_END || len > sizeof h - off - 8)
			break;
		size_t total = 8 + ((len + 7) & ~7u);
		if (type != EXT_BACKING_FORMAT && kept + total <= sizeof keep) {
			memcpy(keep + kept, h + off, total);
			kept += total;
		}
		off += total;
	}
	size_t need = ext + kept + 8 + ((fl + 7) & ~7u) + 8 + n;
	if (need > sizeof h || need > q->cluster)
		return vela_error(VELA_E_TOOBIG, "%s: the parent's name does not fit in the header", img->path);
	memset(h + ext, 0, sizeof h - ext);
	memcpy(h + ext, keep, kept);
	ext += kept;
	be32_put(h + ext, EXT_BACKING_FORMAT);
	be32_put(h + ext + 4, (uint32_t)fl);
	memcpy(h + ext + 8, parent->fmt->name, fl);
	ext += 8 + ((fl + 7) & ~7u);
	be32_put(h + ext, EXT_END);
	be32_put(h + ext + 4, 0);
	ext += 8;
	memcpy(h + ext, parent_name, n);
	be64_put(h + 8, ext);
	be32_put(h + 16, (uint32_t)n);
	r = vdisk_pwrite_full(q->fd, h, sizeof h, 0, img->path);
	if (r == 0 && fdatasync(q->fd) < 0)
		r = vela_error_errno(errno, "%s: sync", img->path);
	if (r == 0) {
		free(q->backing);
		q->backing = xstrdup(parent_name);
	}
	return r;
}

static int qcow2_resize(struct vdisk_image *img, uint64_t new_size)
{
	struct qcow2 *q = img->priv;
	pthread_mutex_lock(&img->lock);
	int r = qcow2_flush_locked(img);
	uint64_t need = (new_size + q->cluster * q->l2_entries - 1) / (q->cluster * q->l2_entries);
	uint64_t cap = ((uint64_t)q->l1_size * 8 + q->cluster - 1) / q->cluster * q->cluster / 8;
	uint64_t new_l1_off = q->l1_offset;
	if (r == 0 && need > MAX_L1_ENTRIES)
		r = vela_error(VELA_E_LIMIT, "extend %s: too large", img->path);
	if (r == 0 && need > cap) {
		/* A new, larger L1 at the end; the old one is given back after. */
		uint64_t n = (need * 8 + q->cluster - 1) / q->cluster, first = 0;
		for (uint64_t k = 0; k < n && r == 0; k++) {
			uint64_t at;
			r = alloc_cluster(img, q, &at);
			if (k == 0)
				first = at;
		}
		uint64_t *l1 = xcalloc(need, 8);
		memcpy(l1, q->l1, (size_t)q->l1_size * 8);
		if (r == 0)
			r = write_be64_table(q->fd, l1, need, first, img->path);
		if (r == 0)
			r = qcow2_flush_locked(img);   /* refcounts of the new table */
		if (r == 0) {
			for (uint64_t k = 0; k < cap * 8 / q->cluster && r == 0; k++)
				r = refcount_add(img, q, q->l1_offset + k * q->cluster, -1);
			free(q->l1);
			q->l1 = l1;
			new_l1_off = first;
		} else {
			free(l1);
		}
	}
	if (r == 0 && need > q->l1_size) {
		q->l2 = xrealloc(q->l2, need * sizeof *q->l2);
		for (uint64_t i = q->l1_size; i < need; i++)
			q->l2[i] = NULL;
		if (new_l1_off == q->l1_offset) {
			uint64_t *l1 = xcalloc(need, 8);
			memcpy(l1, q->l1, (size_t)q->l1_size * 8);
			free(q->l1);
			q->l1 = l1;
		}
	}
	if (r == 0) {
		uint8_t h[48];
		if ((r = vdisk_pread_full(q->fd, h, sizeof h, 0, img->path)) == 0) {
			be64_put(h + 24, new_size);
			if (need > q->l1_size)
				be32_put(h + 36, (uint32_t)need);
			be64_put(h + 40, new_l1_off);
			r = vdisk_pwrite_full(q->fd, h, sizeof h, 0, img->path);
		}
		if (r == 0 && fdatasync(q->fd) < 0)
			r = vela_error_errno(errno, "extend %s", img->path);
	}
	if (r == 0) {
		if (need > q->l1_size)
			q->l1_size = (uint32_t)need;
		q->l1_offset = new_l1_off;
		q->size = new_size;
		img->size = new_size;
		r = qcow2_flush_locked(img);   /* the old L1's refcounts */
	}
	pthread_mutex_unlock(&img->lock);
	return r;
}

static int qcow2_unmap(struct vdisk_image *img, uint64_t off, uint64_t len)
{
	struct qcow2 *q = img->priv;
	int r = 0;
	pthread_mutex_lock(&img->lock);
	for (uint64_t c = (off + q->cluster - 1) >> q->cluster_bits; ((c + 1) << q->cluster_bits) <= off + len && r == 0; c++) {
		uint64_t e, *slot;
		if ((r = get_l2e(img, q, c, &e, &slot)) < 0 || !slot || !e)
			continue;
		if (e & QCOW_OFLAG_COMPRESSED) {
			unsigned x = 62 - (q->cluster_bits - 8);
			uint64_t coff = e & ((1ull << x) - 1);
			uint64_t sectors = ((e & ~QCOW_OFLAG_COPIED & ~QCOW_OFLAG_COMPRESSED) >> x) + 1;
			for (uint64_t hc = coff & ~(q->cluster - 1); hc <= ((coff + sectors * 512 - 1) & ~(q->cluster - 1)) && r == 0; hc += q->cluster)
				r = refcount_add(img, q, hc, -1);
		} else if (e & L2E_OFFSET_MASK) {
			uint64_t host = e & L2E_OFFSET_MASK;
			uint32_t rc = 0;
			if ((r = refcount_add(img, q, host, -1)) == 0 && (r = refcount_get(img, q, host, &rc)) == 0 && rc == 0)
				vdisk_punch_hole(q->fd, host, q->cluster);
		}
		if (r < 0)
			break;
		*slot = 0;
		uint32_t i = (uint32_t)(c / q->l2_entries);
		if (!q->l2[i]->dirty) {
			q->l2[i]->dirty = true;
			q->n_dirty_l2++;
		}
	}
	pthread_mutex_unlock(&img->lock);
	return r;
}

const struct vdisk_format vdisk_format_qcow2 = {
	.struct_size = sizeof(struct vdisk_format),
	.name = "qcow2",
	.probe = qcow2_probe,
	.open = qcow2_open,
	.close = qcow2_close,
	.block_status = qcow2_block_status,
	.pread = qcow2_pread,
	.pwrite = qcow2_pwrite,
	.flush = qcow2_flush,
	.create = qcow2_create,
	.info = qcow2_info,
	.check = qcow2_check,
	.set_parent = qcow2_set_parent,
	.resize = qcow2_resize,
	.unmap = qcow2_unmap,
};
