/*
 * vhd.c - VHD (Virtual PC / Virtual Server / Hyper-V): fixed, dynamic and
 * differencing disks.
 *
 * Layout: fixed = data + 512-byte footer.  Dynamic/differencing = footer
 * copy, dynamic header (1024 bytes), BAT, blocks (sector bitmap + data),
 * footer.  All numbers big-endian.  Differencing disks name their parent by
 * UUID and by locators (relative "W2ru", absolute "W2ku", UTF-16LE paths).
 *
 * Crash consistency: a new block goes where the footer was; the footer is
 * first rewritten past the new block, then the block is written, and the BAT
 * entry that points to it is written only at flush, after the data is
 * durable.  The file always ends in a valid footer.
 */
#include "common.h"
#include "vdisk-format.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define FOOTER_SIZE 512
#define DYN_HEADER_SIZE 1024
#define VHD_FIXED 2
#define VHD_DYNAMIC 3
#define VHD_DIFF 4
#define BAT_FREE 0xffffffffu
#define VHD_EPOCH 946684800       /* 2000-01-01T00:00:00Z */
#define VHD_MAX_SIZE (2040ull << 30)
#define DEFAULT_BLOCK (2u << 20)
#define MAX_BAT_ENTRIES (1u << 24)
#define LOCATOR_SPACE 512         /* bytes reserved per parent locator */

struct vhd {
	int fd;
	struct vdisk_writebehind *wb;
	uint8_t footer[FOOTER_SIZE];
	uint32_t type;
	uint8_t uuid[16];
	uint64_t size;
	/* dynamic / differencing */
	uint64_t bat_offset;
	uint32_t n_bat, block_size, bitmap_bytes;   /* bitmap padded to a sector */
	uint32_t *bat;
	uint8_t *bat_dirty;                         /* per BAT sector */
	bool any_dirty;
	uint64_t end;                               /* where the footer is (= next block) */
	uint8_t parent_uuid[16];
	uint8_t *bitmap_cache;                      /* one block's bitmap */
	uint32_t bitmap_block;                      /* which, or BAT_FREE */
};

static uint32_t checksum(const uint8_t *p, size_t n, size_t skip_at)
{
	uint32_t sum = 0;
	for (size_t i = 0; i < n; i++)
		if (i < skip_at || i >= skip_at + 4)
			sum += p[i];
	return ~sum;
}

static bool footer_valid(const uint8_t *f)
{
	return memcmp(f, "conectix", 8) == 0 && be32_get(f + 64) == checksum(f, FOOTER_SIZE, 64);
}

static int vhd_probe(const uint8_t *head, size_t len, uint64_t file_size)
{
	(void)file_size;
	if (len >= 8 && memcmp(head, "conectix", 8) == 0)
		return 100;   /* dynamic: footer copy at offset 0 */
	return 0;         /* fixed VHD: found by the tail check in vhd_probe_tail */
}

/* CHS of a size as the VHD specification computes it. */
static void vhd_chs(uint64_t total, uint16_t *c, uint8_t *h, uint8_t *s)
{
	uint32_t spt, heads, cth;
	if (total > 65535ull * 16 * 255)
		total = 65535ull * 16 * 255;
	if (total >= 65535ull * 16 * 63) {
		spt = 255;
		heads = 16;
		cth = (uint32_t)(total / spt);
	} else {
		spt = 17;
		cth = (uint32_t)(total / spt);
		heads = (cth + 1023) / 1024;
		if (heads < 4)
			heads = 4;
		if (cth >= heads * 1024 || heads > 16) {
			spt = 31;
			heads = 16;
			cth = (uint32_t)(total / spt);
		}
		if (cth >= heads * 1024) {
			spt = 63;
			heads = 16;
			cth = (uint32_t)(total / spt);
		}
	}
	*c = (uint16_t)(cth / heads);
	*h = (uint8_t)heads;
	*s = (uint8_t)spt;
}

static void vhd_free(struct vhd *v)
{
	if (!v)
		return;
	vdisk_writebehind_free(v->wb);
	if (v->fd >= 0)
		close(v->fd);
	free(v->bat);
	free(v->bat_dirty);
	free(v->bitmap_cache);
	free(v);
}

/* UTF-16 (le or be) -> UTF-8, ASCII-safe subset plus basic multilingual plane. */
static char *utf16_to_utf8(const uint8_t *p, size_t bytes, bool little)
{
	struct strbuf sb = { 0 };
	for (size_t i = 0; i + 1 < bytes; i += 2) {
		uint32_t c = little ? (uint32_t)(p[i] | p[i + 1] << 8) : (uint32_t)(p[i] << 8 | p[i + 1]);
		if (c == 0)
			break;
		char out[4];
		size_t n;
		if (c < 0x80) {
			out[0] = (char)c;
			n = 1;
		} else if (c < 0x800) {
			out[0] = (char)(0xc0 | c >> 6);
			out[1] = (char)(0x80 | (c & 0x3f));
			n = 2;
		} else {
			out[0] = (char)(0xe0 | c >> 12);
			out[1] = (char)(0x80 | ((c >> 6) & 0x3f));
			out[2] = (char)(0x80 | (c & 0x3f));
			n = 3;
		}
		strbuf_append(&sb, out, n);
	}
	return strbuf_steal(&sb);
}

static size_t utf8_to_utf16(const char *s, uint8_t *out, size_t cap, bool little)
{
	size_t o = 0;
	for (const unsigned char *p = (const unsigned char *)s; *p && o + 2 <= cap; ) {
		uint32_t c;
		if (*p < 0x80) {
			c = *p++;
		} else if ((*p & 0xe0) == 0xc0 && p[1]) {
			c = (uint32_t)(*p & 0x1f) << 6 | (p[1] & 0x3f);
			p += 2;
		} else if ((*p & 0xf0) == 0xe0 && p[1] && p[2]) {
			c = (uint32_t)(*p & 0x0f) << 12 | (uint32_t)(p[1] & 0x3f) << 6 | (p[2] & 0x3f);
			p += 3;
		} else {
			c = '?';
			p++;
		}
		out[o + (little ? 0 : 1)] = (uint8_t)c;
		out[o + (little ? 1 : 0)] = (uint8_t)(c >> 8);
		o += 2;
	}
	return o;
}

static int read_parent_locators(struct vdisk_image *img, struct vhd *v, const uint8_t *dh)
{
	uint64_t file_size = v->end + FOOTER_SIZE;
	CLEANUP_FREE char *rel = NULL;
	CLEANUP_FREE char *abs = NULL;
	for (int i = 0; i < 8; i++) {
		const uint8_t *e = dh + 576 + 24 * i;
		uint32_t code = be32_get(e), len = be32_get(e + 8);
		uint64_t off = be64_get(e + 16);
		if (code == 0)
			continue;
		bool is_rel = memcmp(e, "W2ru", 4) == 0, is_abs = memcmp(e, "W2ku", 4) == 0;
		if (!is_rel && !is_abs)
			continue;   /* Mac locators and others: not for this host */
		if (len == 0 || len > 65536 || off > file_size || len > file_size - off)
			return vela_error(VELA_E_CORRUPT, "%s: parent locator %d lies outside the file", img->path, i);
		uint8_t *buf = xcalloc(1, len);
		int r = vdisk_pread_full(v->fd, buf, len, off, img->path);
		if (r < 0) {
			free(buf);
			return r;
		}
		char *path = utf16_to_utf8(buf, len, true);
		free(buf);
		if (is_rel && !rel)
			rel = path;
		else if (is_abs && !abs)
			abs = path;
		else
			free(path);
	}
	/* Prefer the relative locator (the pair may have moved together). */
	struct stat st;
	if (rel) {
		char *cand = path_join(img->dir, rel[0] == '.' && rel[1] == '\\' ? rel + 2 : rel);
		for (char *c = cand; *c; c++)
			if (*c == '\\')
				*c = '/';
		if (stat(cand, &st) == 0 || !abs) {
			img->parent_path = cand;
			return 0;
		}
		free(cand);
	}
	if (abs) {
		img->parent_path = xstrdup(abs);
		return 0;
	}
	return vela_error(VELA_E_CHAIN, "%s: differencing disk without a usable parent locator", img->path);
}

static int vhd_open(struct vdisk_image *img)
{
	struct vhd *v = xcalloc(1, sizeof *v);
	struct stat st;
	v->bitmap_block = BAT_FREE;
	img->priv = v;
	v->fd = open(img->path, (img->read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (v->fd < 0)
		return vela_error_errno(errno, "open %s", img->path);
	v->wb = vdisk_writebehind_new(img, v->fd);
	if (fstat(v->fd, &st) < 0)
		return vela_error_errno(errno, "stat %s", img->path);
	if ((uint64_t)st.st_size < FOOTER_SIZE)
		return vela_error(VELA_E_CORRUPT, "%s: too small for a VHD", img->path);
	uint64_t fsize = (uint64_t)st.st_size;
	int r = vdisk_pread_full(v->fd, v->footer, FOOTER_SIZE, fsize - FOOTER_SIZE, img->path);
	if (r < 0)
		return r;
	v->end = fsize - FOOTER_SIZE;
	if (!footer_valid(v->footer)) {
		/* Dynamic disks keep a copy at the start (a crash mid-append, or a
		 * file truncated by a copy tool). */
		uint8_t copy[FOOTER_SIZE];
		if ((r = vdisk_pread_full(v->fd, copy, FOOTER_SIZE, 0, img->path)) < 0)
			return r;
		if (!footer_valid(copy))
			return vela_error(VELA_E_CORRUPT, "%s: no valid VHD footer (bad cookie or checksum)", img->path);
		memcpy(v->footer, copy, FOOTER_SIZE);
		if (be32_get(copy + 60) == VHD_FIXED)
			return vela_error(VELA_E_CORRUPT, "%s: fixed VHD without its footer", img->path);
		/* The real end is found below from the BAT. */
		v->end = 0;
	}
	v->type = be32_get(v->footer + 60);
	v->size = be64_get(v->footer + 48);
	memcpy(v->uuid, v->footer + 68, 16);
	uint16_t cyl = be16_get(v->footer + 56);
	uint8_t heads = v->footer[58], spt = v->footer[59];
	/* Virtual PC and QEMU's classic writer size a disk by its geometry. */
	if ((memcmp(v->footer + 28, "vpc ", 4) == 0 || memcmp(v->footer + 28, "qemu", 4) == 0) &&
	    !(cyl == 65535 && heads == 16 && spt == 255) && (uint64_t)cyl * heads * spt * 512 <= v->size)
		v->size = (uint64_t)cyl * heads * spt * 512;
	if (v->size == 0 || v->size > VHD_MAX_SIZE)
		return vela_error(VELA_E_CORRUPT, "%s: VHD size %llu is out of range", img->path, (unsigned long long)v->size);
	img->size = v->size;
	img->granularity = VDISK_SECTOR;

	if (v->type == VHD_FIXED) {
		if (v->size > v->end)
			return vela_error(VELA_E_CORRUPT, "%s: fixed VHD of %llu bytes holds only %llu", img->path,
					  (unsigned long long)v->size, (unsigned long long)v->end);
		return 0;
	}
	if (v->type != VHD_DYNAMIC && v->type != VHD_DIFF)
		return vela_error(VELA_E_NOTSUP, "%s: VHD disk type %u is not supported", img->path, v->type);
	uint64_t dh_off = be64_get(v->footer + 16);
	uint8_t dh[DYN_HEADER_SIZE];
	if (dh_off > fsize || fsize - dh_off < DYN_HEADER_SIZE)
		return vela_error(VELA_E_CORRUPT, "%s: dynamic header outside the file", img->path);
	if ((r = vdisk_pread_full(v->fd, dh, sizeof dh, dh_off, img->path)) < 0)
		return r;
	if (memcmp(dh, "cxsparse", 8) != 0 || be32_get(dh + 36) != checksum(dh, DYN_HEADER_SIZE, 36))
		return vela_error(VELA_E_CORRUPT, "%s: bad dynamic disk header (cookie or checksum)", img->path);
	v->bat_offset = be64_get(dh + 16);
	v->n_bat = be32_get(dh + 28);
	v->block_size = be32_get(dh + 32);
	if (v->block_size < VDISK_SECTOR || v->block_size > (256u << 20) || (v->block_size & (v->block_size - 1)))
		return vela_error(VELA_E_CORRUPT, "%s: block size %u is not a power of two from 512 to 256 MiB",
				  img->path, v->block_size);
	uint64_t needed = (v->size + v->block_size - 1) / v->block_size;
	if (v->n_bat > MAX_BAT_ENTRIES || v->n_bat < needed)
		return vela_error(VELA_E_CORRUPT, "%s: %u BAT entries for %llu blocks", img->path, v->n_bat,
				  (unsigned long long)needed);
	uint64_t bat_bytes = ((uint64_t)v->n_bat * 4 + 511) / 512 * 512;
	if (v->bat_offset > fsize || fsize - v->bat_offset < bat_bytes)
		return vela_error(VELA_E_CORRUPT, "%s: BAT outside the file", img->path);
	v->bitmap_bytes = ((v->block_size / VDISK_SECTOR + 7) / 8 + 511) / 512 * 512;
	uint8_t *raw = xcalloc(1, bat_bytes);
	r = vdisk_pread_full(v->fd, raw, bat_bytes, v->bat_offset, img->path);
	v->bat = xcalloc(v->n_bat, 4);
	v->bat_dirty = xcalloc(bat_bytes / 512, 1);
	uint64_t max_end = v->bat_offset + bat_bytes;
	for (uint32_t i = 0; r == 0 && i < v->n_bat; i++) {
		v->bat[i] = be32_get(raw + 4 * (size_t)i);
		if (v->bat[i] == BAT_FREE)
			continue;
		uint64_t start = (uint64_t)v->bat[i] * 512, stop = start + v->bitmap_bytes + v->block_size;
		if (start < v->bat_offset + bat_bytes && stop > v->bat_offset)
			r = vela_error(VELA_E_CORRUPT, "%s: block %u overlaps the BAT", img->path, i);
		else if (stop > fsize)
			r = vela_error(VELA_E_CORRUPT, "%s: block %u lies beyond the end of the file", img->path, i);
		else if (start < 3 * 512)
			r = vela_error(VELA_E_CORRUPT, "%s: block %u points into the headers", img->path, i);
		if (stop > max_end)
			max_end = stop;
	}
	free(raw);
	if (r < 0)
		return r;
	if (v->end == 0 || v->end < max_end)
		v->end = max_end;   /* append point: after the last block */
	v->bitmap_cache = xcalloc(1, v->bitmap_bytes);
	img->granularity = v->block_size;
	memcpy(v->parent_uuid, dh + 40, 16);
	if (v->type == VHD_DIFF)
		return read_parent_locators(img, v, dh);
	return 0;
}

static void vhd_close(struct vdisk_image *img)
{
	vhd_free(img->priv);
	img->priv = NULL;
}

static int load_bitmap(struct vdisk_image *img, struct vhd *v, uint32_t block)
{
	if (v->bitmap_block == block)
		return 0;
	int r = vdisk_pread_full(v->fd, v->bitmap_cache, v->bitmap_bytes, (uint64_t)v->bat[block] * 512, img->path);
	if (r == 0)
		v->bitmap_block = block;
	return r;
}

static int vhd_block_status(struct vdisk_image *img, uint64_t off, uint64_t len, enum img_status *st, uint64_t *pnum)
{
	struct vhd *v = img->priv;
	if (v->type == VHD_FIXED) {
		*st = IMG_DATA;
		*pnum = len;
		return 0;
	}
	pthread_mutex_lock(&img->lock);
	uint64_t done = 0;
	int first = -1, r = 0;
	while (done < len) {
		uint64_t at = off + done;
		uint32_t block = (uint32_t)(at / v->block_size);
		uint64_t in = at % v->block_size;
		uint64_t step = v->block_size - in;
		int s;
		if (v->bat[block] == BAT_FREE) {
			s = v->type == VHD_DIFF ? IMG_UNALLOC : IMG_ZERO;
		} else {
			/* Sector by sector from the block's bitmap (absent sectors come
			 * from the parent, or are zeros on a dynamic disk). */
			if ((r = load_bitmap(img, v, block)) < 0)
				break;
			uint64_t sec = in / VDISK_SECTOR;
			bool present = v->bitmap_cache[sec / 8] & (0x80 >> (sec % 8));
			s = present ? IMG_DATA : v->type == VHD_DIFF ? IMG_UNALLOC : IMG_ZERO;
			step = VDISK_SECTOR - in % VDISK_SECTOR;
			for (uint64_t k = sec + 1; k < v->block_size / VDISK_SECTOR; k++) {
				bool p2 = v->bitmap_cache[k / 8] & (0x80 >> (k % 8));
				if (p2 != present)
					break;
				step += VDISK_SECTOR;
			}
		}
		if (first < 0)
			first = s;
		else if (s != first)
			break;
		done += step;
	}
	pthread_mutex_unlock(&img->lock);
	if (r < 0)
		return r;
	*st = (enum img_status)first;
	*pnum = done < len ? done : len;
	return 0;
}

static int vhd_pread(struct vdisk_image *img, void *buf, size_t len, uint64_t off)
{
	struct vhd *v = img->priv;
	if (v->type == VHD_FIXED)
		return vdisk_pread_full(v->fd, buf, len, off, img->path);
	char *p = buf;
	while (len > 0) {
		uint32_t block = (uint32_t)(off / v->block_size);
		uint64_t in = off % v->block_size;
		size_t n = len < v->block_size - in ? len : (size_t)(v->block_size - in);
		uint32_t at = v->bat[block];
		int r = at == BAT_FREE ? (memset(p, 0, n), 0)
				       : vdisk_pread_full(v->fd, p, n, (uint64_t)at * 512 + v->bitmap_bytes + in, img->path);
		if (r < 0)
			return r;
		p += n;
		off += n;
		len -= n;
	}
	return 0;
}

static void refresh_footer(uint8_t *f)
{
	be32_put(f + 64, 0);
	be32_put(f + 64, checksum(f, FOOTER_SIZE, 64));
}

/* Append a block: footer first (past the block), then bitmap + data. */
static int alloc_block(struct vdisk_image *img, struct vhd *v, uint32_t block, const char *data)
{
	uint64_t at = v->end;
	uint64_t new_end = at + v->bitmap_bytes + v->block_size;
	if (at / 512 > UINT32_MAX - 1)
		return vela_error(VELA_E_LIMIT, "%s: the file is full (32-bit sector numbers)", img->path);
	int r = vdisk_pwrite_full(v->fd, v->footer, FOOTER_SIZE, new_end, img->path);
	if (r < 0)
		return r;
	uint8_t *bm = xcalloc(1, v->bitmap_bytes);
	memset(bm, 0xff, (v->block_size / VDISK_SECTOR + 7) / 8);   /* every sector present */
	r = vdisk_pwrite_full(v->fd, bm, v->bitmap_bytes, at, img->path);
	free(bm);
	if (r == 0)
		r = vdisk_data_pwrite(v->fd, -1, v->wb, data, v->block_size, at + v->bitmap_bytes, img->path);
	if (r < 0)
		return r;
	v->end = new_end;
	v->bat[block] = (uint32_t)(at / 512);
	v->bat_dirty[(size_t)block * 4 / 512] = 1;
	v->any_dirty = true;
	if (v->bitmap_block == block)
		v->bitmap_block = BAT_FREE;
	return 0;
}

static int vhd_pwrite(struct vdisk_image *img, const void *buf, size_t len, uint64_t off)
{
	struct vhd *v = img->priv;
	if (v->type == VHD_FIXED)
		return vdisk_data_pwrite(v->fd, -1, v->wb, buf, len, off, img->path);
	const char *p = buf;
	int r = 0;
	pthread_mutex_lock(&img->lock);
	while (len > 0 && r == 0) {
		uint32_t block = (uint32_t)(off / v->block_size);
		uint64_t in = off % v->block_size;
		size_t n = len < v->block_size - in ? len : (size_t)(v->block_size - in);
		if (v->bat[block] != BAT_FREE) {
			if ((r = load_bitmap(img, v, block)) < 0)
				break;
			/* Sectors marked absent in a foreign partial bitmap: fill from
			 * below and mark the whole block present. */
			bool full = true;
			for (uint32_t k = 0; k < v->block_size / VDISK_SECTOR; k++)
				full &= (v->bitmap_cache[k / 8] & (0x80 >> (k % 8))) != 0;
			if (!full) {
				char *blk = xcalloc(1, v->block_size);
				uint64_t bstart = (uint64_t)block * v->block_size;
				for (uint32_t k = 0; k < v->block_size / VDISK_SECTOR && r == 0; k++) {
					bool present = v->bitmap_cache[k / 8] & (0x80 >> (k % 8));
					uint64_t so = bstart + (uint64_t)k * VDISK_SECTOR;
					if (present)
						r = vdisk_pread_full(v->fd, blk + (size_t)k * VDISK_SECTOR, VDISK_SECTOR,
								     (uint64_t)v->bat[block] * 512 + v->bitmap_bytes + (uint64_t)k * VDISK_SECTOR, img->path);
					else if (v->type == VHD_DIFF && so < img->size)
						r = vdisk_image_read_below(img, blk + (size_t)k * VDISK_SECTOR, VDISK_SECTOR, so);
				}
				if (r == 0) {
					memcpy(blk + in, p, n);
					uint8_t *bm = xcalloc(1, v->bitmap_bytes);
					memset(bm, 0xff, (v->block_size / VDISK_SECTOR + 7) / 8);
					r = vdisk_pwrite_full(v->fd, blk, v->block_size, (uint64_t)v->bat[block] * 512 + v->bitmap_bytes, img->path);
					if (r == 0)
						r = vdisk_pwrite_full(v->fd, bm, v->bitmap_bytes, (uint64_t)v->bat[block] * 512, img->path);
					free(bm);
					v->bitmap_block = BAT_FREE;
				}
				free(blk);
			} else {
				r = vdisk_data_pwrite(v->fd, -1, v->wb, p, n, (uint64_t)v->bat[block] * 512 + v->bitmap_bytes + in,
						      img->path);
			}
		} else {
			char *blk = xcalloc(1, v->block_size);
			uint64_t bstart = (uint64_t)block * v->block_size;
			if (n < v->block_size && v->type == VHD_DIFF) {
				uint64_t span = img->size - bstart < v->block_size ? img->size - bstart : v->block_size;
				r = vdisk_image_read_below(img, blk, (size_t)span, bstart);
			}
			if (r == 0) {
				memcpy(blk + in, p, n);
				r = alloc_block(img, v, block, blk);
			}
			free(blk);
		}
		p += n;
		off += n;
		len -= n;
	}
	pthread_mutex_unlock(&img->lock);
	return r;
}

static int vhd_flush(struct vdisk_image *img)
{
	struct vhd *v = img->priv;
	pthread_mutex_lock(&img->lock);
	int r = 0;
	if (fdatasync(v->fd) < 0)
		r = vela_error_errno(errno, "flush %s", img->path);
	if (r == 0 && v->any_dirty) {
		uint8_t sec[512];
		size_t n_secs = ((size_t)v->n_bat * 4 + 511) / 512;
		for (size_t s = 0; s < n_secs && r == 0; s++) {
			if (!v->bat_dirty[s])
				continue;
			memset(sec, 0xff, sizeof sec);
			for (size_t k = 0; k < 128 && s * 128 + k < v->n_bat; k++)
				be32_put(sec + 4 * k, v->bat[s * 128 + k]);
			r = vdisk_pwrite_full(v->fd, sec, sizeof sec, v->bat_offset + s * 512, img->path);
			v->bat_dirty[s] = 0;
		}
		v->any_dirty = false;
		if (r == 0 && fdatasync(v->fd) < 0)
			r = vela_error_errno(errno, "flush %s", img->path);
	}
	pthread_mutex_unlock(&img->lock);
	return r;
}

/* ------------------------------------------------------------ create */

static void make_footer(uint8_t *f, uint32_t type, uint64_t size, const uint8_t uuid[16])
{
	memset(f, 0, FOOTER_SIZE);
	uint16_t c;
	uint8_t h, s;
	vhd_chs(size / VDISK_SECTOR, &c, &h, &s);
	memcpy(f, "conectix", 8);
	be32_put(f + 8, 2);
	be32_put(f + 12, 0x00010000);
	be64_put(f + 16, type == VHD_FIXED ? UINT64_MAX : FOOTER_SIZE);
	be32_put(f + 24, (uint32_t)(time(NULL) - VHD_EPOCH));
	/* "vpc ": readers size the disk by its geometry, and we make the size
	 * match the geometry exactly, so every reader agrees. */
	memcpy(f + 28, "vpc ", 4);
	be32_put(f + 32, 0x00050003);
	memcpy(f + 36, "Wi2k", 4);
	be64_put(f + 40, size);
	be64_put(f + 48, size);
	be16_put(f + 56, c);
	f[58] = h;
	f[59] = s;
	be32_put(f + 60, type);
	memcpy(f + 68, uuid, 16);
	refresh_footer(f);
}

/* Round a size up to what the VHD geometry can express. */
static uint64_t chs_size(uint64_t bytes)
{
	uint64_t want = (bytes + VDISK_SECTOR - 1) / VDISK_SECTOR;
	if (want >= 65535ull * 16 * 255)
		return want * VDISK_SECTOR;
	for (uint64_t t = want; ; t++) {
		uint16_t c;
		uint8_t h, s;
		vhd_chs(t, &c, &h, &s);
		if ((uint64_t)c * h * s >= want)
			return (uint64_t)c * h * s * VDISK_SECTOR;
	}
}

static int vhd_create(const char *path, const struct vdisk_create_opts *o, struct vdisk_image *parent,
		      const char *parent_name)
{
	uint64_t size = parent ? parent->size : chs_size(o->size);
	uint8_t uuid[16], f[FOOTER_SIZE];
	if (size > VHD_MAX_SIZE)
		return vela_error(VELA_E_LIMIT, "create %s: VHD disks hold at most 2040 GiB", path);
	if (parent && parent->fmt != &vdisk_format_vhd)
		return vela_error(VELA_E_NOTSUP, "create %s: a differencing VHD needs a VHD parent, not %s", path,
				  parent->fmt->name);
	int r = random_bytes(uuid, sizeof uuid);
	if (r < 0)
		return r;
	uint32_t type = parent ? VHD_DIFF : o->type == VDISK_TYPE_VHD_FIXED ? VHD_FIXED : VHD_DYNAMIC;
	make_footer(f, type, size, uuid);
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return vela_error_errno(errno, "create %s", path);
	if (type == VHD_FIXED) {
		if (ftruncate(fd, (off_t)size) < 0)
			r = vela_error_errno(errno, "create %s: set size", path);
		if (r == 0)
			r = vdisk_pwrite_full(fd, f, FOOTER_SIZE, size, path);
	} else {
		uint32_t n_bat = (uint32_t)((size + DEFAULT_BLOCK - 1) / DEFAULT_BLOCK);
		uint64_t bat_off = FOOTER_SIZE + DYN_HEADER_SIZE;
		uint64_t bat_bytes = ((uint64_t)n_bat * 4 + 511) / 512 * 512;
		uint64_t loc_off = bat_off + bat_bytes, end = loc_off;
		uint8_t dh[DYN_HEADER_SIZE] = { 0 };
		memcpy(dh, "cxsparse", 8);
		be64_put(dh + 8, UINT64_MAX);
		be64_put(dh + 16, bat_off);
		be32_put(dh + 24, 0x00010000);
		be32_put(dh + 28, n_bat);
		be32_put(dh + 32, DEFAULT_BLOCK);
		uint8_t loc[2][LOCATOR_SPACE];
		size_t loc_len[2] = { 0, 0 };
		if (parent) {
			struct vhd *pv = parent->priv;
			memcpy(dh + 40, pv->uuid, 16);
			be32_put(dh + 56, be32_get(pv->footer + 24));
			CLEANUP_FREE char *pbase = path_basename(parent->path);
			utf8_to_utf16(pbase, dh + 64, 512, false);
			char absbuf[4096];
			const char *absp = realpath(parent->path, absbuf) ? absbuf : parent->path;
			CLEANUP_FREE char *relp = xasprintf("%s%s", parent_name[0] == '/' ? "" : ".\\", parent_name);
			memset(loc, 0, sizeof loc);
			loc_len[0] = utf8_to_utf16(relp, loc[0], LOCATOR_SPACE, true);
			loc_len[1] = utf8_to_utf16(absp, loc[1], LOCATOR_SPACE, true);
			static const char *const codes[2] = { "W2ru", "W2ku" };
			for (int i = 0; i < 2; i++) {
				uint8_t *e = dh + 576 + 24 * i;
				memcpy(e, codes[i], 4);
				be32_put(e + 4, LOCATOR_SPACE / 512);
				be32_put(e + 8, (uint32_t)loc_len[i]);
				be64_put(e + 16, loc_off + (uint64_t)i * LOCATOR_SPACE);
			}
			end = loc_off + 2 * LOCATOR_SPACE;
		}
		be32_put(dh + 36, checksum(dh, DYN_HEADER_SIZE, 36));
		uint8_t *bat = xcalloc(1, bat_bytes);
		memset(bat, 0xff, bat_bytes);
		r = vdisk_pwrite_full(fd, f, FOOTER_SIZE, 0, path);
		if (r == 0)
			r = vdisk_pwrite_full(fd, dh, DYN_HEADER_SIZE, FOOTER_SIZE, path);
		if (r == 0)
			r = vdisk_pwrite_full(fd, bat, bat_bytes, bat_off, path);
		for (int i = 0; parent && i < 2 && r == 0; i++)
			r = vdisk_pwrite_full(fd, loc[i], LOCATOR_SPACE, loc_off + (uint64_t)i * LOCATOR_SPACE, path);
		if (r == 0)
			r = vdisk_pwrite_full(fd, f, FOOTER_SIZE, end, path);
		free(bat);
	}
	return vdisk_finish_create(fd, path, r);
}

static int vhd_info(struct vdisk_image *img, struct vdisk_info *info)
{
	struct vhd *v = img->priv;
	struct stat st;
	info->subformat = xstrdup(v->type == VHD_FIXED ? "fixed" : v->type == VHD_DYNAMIC ? "dynamic" : "differencing");
	uint16_t c = be16_get(v->footer + 56);
	info->cylinders = c;
	info->heads = v->footer[58];
	info->sectors = v->footer[59];
	if (fstat(v->fd, &st) == 0)
		info->allocated = (uint64_t)st.st_blocks * 512;
	if (v->type != VHD_FIXED)
		info->granularity = v->block_size;
	return 0;
}

static int vhd_check(struct vdisk_image *img, bool repair, struct vdisk_check_report *rep)
{
	struct vhd *v = img->priv;
	struct stat st;
	memset(rep, 0, sizeof *rep);
	if (v->type == VHD_FIXED || fstat(v->fd, &st) < 0)
		return 0;
	/* Blocks may not overlap each other (the open already checked the BAT
	 * and the file bounds). */
	uint32_t *starts = xcalloc(v->n_bat ? v->n_bat : 1, 4);
	size_t n = 0;
	for (uint32_t i = 0; i < v->n_bat; i++)
		if (v->bat[i] != BAT_FREE)
			starts[n++] = v->bat[i];
	for (size_t i = 0; i < n; i++)
		for (size_t k = i + 1; k < n && k < i + 64; k++) {
			uint64_t a = starts[i], b = starts[k], span = (v->bitmap_bytes + v->block_size) / 512;
			if ((a < b ? b - a : a - b) < span) {
				if (!rep->errors++)
					rep->first_problem = xasprintf("%s: blocks at sectors %llu and %llu overlap", img->path,
								       (unsigned long long)a, (unsigned long long)b);
			}
		}
	free(starts);
	/* Space between the last block and the footer: a crash mid-append. */
	uint64_t fsize = (uint64_t)st.st_size;
	if (fsize > v->end + FOOTER_SIZE) {
		uint64_t leaked = (fsize - v->end - FOOTER_SIZE + v->block_size - 1) / v->block_size;
		rep->leaks = leaked;
		if (!rep->first_problem)
			rep->first_problem = xasprintf("%s: %llu unused block%s before the footer", img->path,
						       (unsigned long long)leaked, leaked == 1 ? "" : "s");
		if (repair && !rep->errors && !img->read_only) {
			int r = vdisk_pwrite_full(v->fd, v->footer, FOOTER_SIZE, v->end, img->path);
			if (r < 0)
				return r;
			if (ftruncate(v->fd, (off_t)(v->end + FOOTER_SIZE)) < 0)
				return vela_error_errno(errno, "repair %s", img->path);
			rep->repaired = leaked;
		}
	}
	return 0;
}

static int vhd_check_parent(struct vdisk_image *img, struct vdisk_image *parent)
{
	struct vhd *v = img->priv;
	if (parent->fmt != &vdisk_format_vhd)
		return vela_error(VELA_E_CHAIN, "%s: the parent %s of a differencing VHD is not a VHD", img->path, parent->path);
	struct vhd *p = parent->priv;
	if (memcmp(p->uuid, v->parent_uuid, 16) != 0)
		return vela_error(VELA_E_PARENT, "%s: its parent %s is not the disk it was made from (UUID differs)",
				  img->path, parent->path);
	return 0;
}

static int vhd_set_parent(struct vdisk_image *img, struct vdisk_image *parent, const char *parent_name)
{
	struct vhd *v = img->priv;
	if (v->type != VHD_DIFF)
		return vela_error(VELA_E_NOTSUP, "%s: only a differencing VHD has a parent", img->path);
	if (parent->fmt != &vdisk_format_vhd)
		return vela_error(VELA_E_NOTSUP, "%s: the parent of a differencing VHD must be a VHD", img->path);
	struct vhd *pv = parent->priv;
	uint64_t dh_off = be64_get(v->footer + 16);
	uint8_t dh[DYN_HEADER_SIZE];
	int r = vdisk_pread_full(v->fd, dh, sizeof dh, dh_off, img->path);
	if (r < 0)
		return r;
	memcpy(dh + 40, pv->uuid, 16);
	be32_put(dh + 56, be32_get(pv->footer + 24));
	memset(dh + 64, 0, 512);
	CLEANUP_FREE char *pbase = path_basename(parent->path);
	utf8_to_utf16(pbase, dh + 64, 512, false);
	char absbuf[4096];
	const char *absp = realpath(parent->path, absbuf) ? absbuf : parent->path;
	CLEANUP_FREE char *relp = xasprintf("%s%s", parent_name[0] == '/' ? "" : ".\\", parent_name);
	/* Rewrite the two locators in the space they already have. */
	for (int i = 0; i < 8 && r == 0; i++) {
		uint8_t *e = dh + 576 + 24 * i;
		bool is_rel = memcmp(e, "W2ru", 4) == 0, is_abs = memcmp(e, "W2ku", 4) == 0;
		if (!is_rel && !is_abs)
			continue;
		uint32_t space = be32_get(e + 4);
		/* The space field is in sectors by the specification; some writers
		 * put bytes there.  Either way at least one sector is there. */
		uint32_t cap = space >= 512 ? space : space * 512;
		if (cap == 0 || cap > 65536)
			cap = 512;
		uint8_t *buf = xcalloc(1, cap);
		size_t len = utf8_to_utf16(is_rel ? relp : absp, buf, cap, true);
		be32_put(e + 8, (uint32_t)len);
		r = vdisk_pwrite_full(v->fd, buf, cap, be64_get(e + 16), img->path);
		free(buf);
	}
	be32_put(dh + 36, 0);
	be32_put(dh + 36, checksum(dh, DYN_HEADER_SIZE, 36));
	if (r == 0)
		r = vdisk_pwrite_full(v->fd, dh, sizeof dh, dh_off, img->path);
	if (r == 0 && fdatasync(v->fd) < 0)
		r = vela_error_errno(errno, "%s: sync", img->path);
	if (r == 0)
		memcpy(v->parent_uuid, pv->uuid, 16);
	return r;
}

/*
 * The block table is full: write a bigger one where the footer is (the end
 * of the used space), then switch the dynamic header to it with one sector
 * write.  A crash before the switch leaves the old table in force (the new
 * one is unreferenced space); after it, the new one.  New blocks follow the
 * new table.  Called with the image lock held and the BAT flushed.
 */
static int grow_bat(struct vdisk_image *img, struct vhd *v, uint32_t n_new)
{
	uint64_t bytes = ((uint64_t)n_new * 4 + 511) / 512 * 512;
	uint8_t *raw = xcalloc(1, bytes);
	memset(raw, 0xff, bytes);
	for (uint32_t i = 0; i < v->n_bat; i++)
		be32_put(raw + 4 * (size_t)i, v->bat[i]);
	uint64_t at = v->end;
	int r = vdisk_pwrite_full(v->fd, raw, bytes, at, img->path);
	free(raw);
	/* A footer copy behind the new table keeps the file's last sector a footer. */
	if (r == 0)
		r = vdisk_pwrite_full(v->fd, v->footer, FOOTER_SIZE, at + bytes, img->path);
	if (r == 0 && fdatasync(v->fd) < 0)
		r = vela_error_errno(errno, "extend %s", img->path);
	uint64_t dh_off = be64_get(v->footer + 16);
	uint8_t dh[DYN_HEADER_SIZE];
	if (r == 0)
		r = vdisk_pread_full(v->fd, dh, sizeof dh, dh_off, img->path);
	if (r == 0) {
		be64_put(dh + 16, at);
		be32_put(dh + 28, n_new);
		be32_put(dh + 36, checksum(dh, DYN_HEADER_SIZE, 36));
		r = vdisk_pwrite_full(v->fd, dh, sizeof dh, dh_off, img->path);
	}
	if (r == 0 && fdatasync(v->fd) < 0)
		r = vela_error_errno(errno, "extend %s", img->path);
	if (r < 0)
		return vela_error_context(r, "extend %s: move the block table", img->path);
	v->bat = xrealloc(v->bat, (size_t)n_new * 4);
	for (uint32_t i = v->n_bat; i < n_new; i++)
		v->bat[i] = BAT_FREE;
	free(v->bat_dirty);
	v->bat_dirty = xcalloc(bytes / 512, 1);
	v->bat_offset = at;
	v->n_bat = n_new;
	v->end = at + bytes;
	return 0;
}

static int vhd_resize(struct vdisk_image *img, uint64_t new_size)
{
	struct vhd *v = img->priv;
	uint64_t size = chs_size(new_size);
	if (size > VHD_MAX_SIZE)
		return vela_error(VELA_E_LIMIT, "extend %s: VHD disks hold at most 2040 GiB", img->path);
	uint64_t blocks = v->type == VHD_FIXED ? 0 : (size + v->block_size - 1) / v->block_size;
	if (blocks > MAX_BAT_ENTRIES)
		return vela_error(VELA_E_LIMIT, "extend %s: more than %u blocks", img->path, MAX_BAT_ENTRIES);
	if (blocks > v->n_bat) {
		int fr = vhd_flush(img);   /* the table on disk is what moves */
		if (fr < 0)
			return fr;
	}
	pthread_mutex_lock(&img->lock);
	if (blocks > v->n_bat) {
		int gr = grow_bat(img, v, (uint32_t)blocks);
		if (gr < 0) {
			pthread_mutex_unlock(&img->lock);
			return gr;
		}
	}
	uint16_t c;
	uint8_t h, s;
	vhd_chs(size / VDISK_SECTOR, &c, &h, &s);
	be64_put(v->footer + 48, size);
	be16_put(v->footer + 56, c);
	v->footer[58] = h;
	v->footer[59] = s;
	refresh_footer(v->footer);
	int r;
	if (v->type == VHD_FIXED) {
		/* The new footer first, past the grown data; then the old one goes. */
		r = vdisk_pwrite_full(v->fd, v->footer, FOOTER_SIZE, size, img->path);
		if (r == 0 && fdatasync(v->fd) < 0)
			r = vela_error_errno(errno, "extend %s", img->path);
		if (r == 0) {
			uint8_t zero[FOOTER_SIZE] = { 0 };
			r = vdisk_pwrite_full(v->fd, zero, FOOTER_SIZE, v->end, img->path);
		}
		if (r == 0)
			v->end = size;
	} else {
		r = vdisk_pwrite_full(v->fd, v->footer, FOOTER_SIZE, v->end, img->path);
		if (r == 0)
			r = vdisk_pwrite_full(v->fd, v->footer, FOOTER_SIZE, 0, img->path);
	}
	if (r == 0 && fdatasync(v->fd) < 0)
		r = vela_error_errno(errno, "extend %s", img->path);
	if (r == 0) {
		v->size = size;
		img->size = size;
	}
	pthread_mutex_unlock(&img->lock);
	return r;
}

static int vhd_unmap(struct vdisk_image *img, uint64_t off, uint64_t len)
{
	struct vhd *v = img->priv;
	if (v->type == VHD_FIXED) {
		vdisk_punch_hole(v->fd, off, len);
		return 0;
	}
	pthread_mutex_lock(&img->lock);
	for (uint64_t b = (off + v->block_size - 1) / v->block_size; (b + 1) * v->block_size <= off + len && b < v->n_bat; b++) {
		if (v->bat[b] == BAT_FREE)
			continue;
		vdisk_punch_hole(v->fd, (uint64_t)v->bat[b] * 512, v->bitmap_bytes + v->block_size);
		v->bat[b] = BAT_FREE;
		v->bat_dirty[b * 4 / 512] = 1;
		v->any_dirty = true;
		if (v->bitmap_block == b)
			v->bitmap_block = BAT_FREE;
	}
	pthread_mutex_unlock(&img->lock);
	return 0;
}

/* Fixed VHDs have no header at the start: recognise them by the tail. */
static int vhd_probe_tail(int fd, uint64_t file_size)
{
	uint8_t f[FOOTER_SIZE];
	if (file_size < FOOTER_SIZE || pread(fd, f, sizeof f, (off_t)(file_size - FOOTER_SIZE)) != FOOTER_SIZE)
		return 0;
	return footer_valid(f) ? 90 : 0;
}

const struct vdisk_format vdisk_format_vhd = {
	.struct_size = sizeof(struct vdisk_format),
	.name = "vhd",
	.probe = vhd_probe,
	.open = vhd_open,
	.close = vhd_close,
	.block_status = vhd_block_status,
	.pread = vhd_pread,
	.pwrite = vhd_pwrite,
	.flush = vhd_flush,
	.create = vhd_create,
	.info = vhd_info,
	.check = vhd_check,
	.check_parent = vhd_check_parent,
	.probe_tail = vhd_probe_tail,
	.set_parent = vhd_set_parent,
	.resize = vhd_resize,
	.unmap = vhd_unmap,
};
