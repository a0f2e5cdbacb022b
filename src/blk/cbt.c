/*
 * cbt.c - changed-block tracking: which parts of a disk the guest wrote
 * since an epoch began (the last backup).  One bit per 64 KiB granule, in
 * memory while the disk is served, persisted next to the disk's base
 * image (<base>.ctk): written "unclean" when tracking starts and "clean"
 * at a clean close, so after a crash nobody trusts an incomplete map and
 * the next backup is a full one.
 *
 * File: "VELACTK2" | u64 disk size | u64 granule | u32 clean | 32-char
 * epoch | 4 bytes zero | u64 top size | u64 top mtime (ns) | 16 bytes zero |
 * bitmap (little-endian bit order).
 */
#include "common.h"
#include "blk.h"

#include <fcntl.h>
#include <pthread.h>
#include <string.h>

#define CTK_MAGIC "VELACTK2"
#define CTK_HEADER 96u

#include <sys/stat.h>

struct blk_cbt {
	pthread_mutex_t lock;
	char *path;
	uint64_t size;
	uint8_t *bits;
	size_t nbytes;
	char epoch[BLK_CBT_EPOCH_LEN + 1];
};

static size_t map_bytes(uint64_t size)
{
	uint64_t granules = (size + BLK_CBT_GRANULE - 1) / BLK_CBT_GRANULE;
	return (size_t)((granules + 7) / 8);
}

static void new_epoch(char out[BLK_CBT_EPOCH_LEN + 1])
{
	uint8_t r[16];
	if (random_bytes(r, sizeof r) < 0)
		memset(r, 0, sizeof r);
	for (int i = 0; i < 16; i++)
		snprintf(out + 2 * i, 3, "%02x", r[i]);
}

void blk_cbt_stamp_of(const char *top, struct blk_cbt_stamp *out)
{
	struct stat st;
	*out = (struct blk_cbt_stamp){ 0 };
	if (top && stat(top, &st) == 0) {
		out->size = (uint64_t)st.st_size;
		out->mtime_ns = (uint64_t)st.st_mtim.tv_sec * 1000000000ull + (uint64_t)st.st_mtim.tv_nsec;
	}
}

static int save(const char *path, uint64_t size, const char *epoch, bool clean, const uint8_t *bits, size_t nbytes,
		const struct blk_cbt_stamp *stamp)
{
	size_t len = CTK_HEADER + nbytes;
	CLEANUP_FREE uint8_t *buf = xcalloc(1, len);
	memcpy(buf, CTK_MAGIC, 8);
	le64_put(buf + 8, size);
	le64_put(buf + 16, BLK_CBT_GRANULE);
	le32_put(buf + 24, clean ? 1 : 0);
	memcpy(buf + 28, epoch, BLK_CBT_EPOCH_LEN);
	if (stamp) {
		le64_put(buf + 64, stamp->size);
		le64_put(buf + 72, stamp->mtime_ns);
	}
	if (bits)
		memcpy(buf + CTK_HEADER, bits, nbytes);
	int r = write_file_atomic(path, buf, len);
	return r < 0 ? vela_error_context(r, "changed-block map %s", path) : 0;
}

/* A clean map of this size whose top image is untouched since, or false
 * (missing, unclean, damaged, or the disk written by something else). */
static bool load(const char *path, uint64_t size, const struct blk_cbt_stamp *top_now,
		 char epoch[BLK_CBT_EPOCH_LEN + 1], uint8_t **bits)
{
	char *data = NULL;
	size_t len = 0;
	size_t nbytes = map_bytes(size);
	if (read_file(path, CTK_HEADER + nbytes + 1, &data, &len) < 0)
		return false;
	const uint8_t *p = (const uint8_t *)data;
	bool ok = len == CTK_HEADER + nbytes && memcmp(p, CTK_MAGIC, 8) == 0 && le64_get(p + 8) == size &&
		  le64_get(p + 16) == BLK_CBT_GRANULE && le32_get(p + 24) == 1 && top_now &&
		  le64_get(p + 64) == top_now->size && le64_get(p + 72) == top_now->mtime_ns && top_now->mtime_ns;
	for (int i = 0; ok && i < BLK_CBT_EPOCH_LEN; i++) {
		char c = (char)p[28 + i];
		ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
	}
	if (ok) {
		memcpy(epoch, p + 28, BLK_CBT_EPOCH_LEN);
		epoch[BLK_CBT_EPOCH_LEN] = '\0';
		*bits = xcalloc(1, nbytes ? nbytes : 1);
		memcpy(*bits, p + CTK_HEADER, nbytes);
	}
	free(data);
	return ok;
}

int blk_cbt_open(const char *path, uint64_t disk_size, const struct blk_cbt_stamp *top_now, struct blk_cbt **out)
{
	struct blk_cbt *c = xcalloc(1, sizeof *c);
	pthread_mutex_init(&c->lock, NULL);
	c->path = xstrdup(path);
	c->size = disk_size;
	c->nbytes = map_bytes(disk_size);
	if (!load(path, disk_size, top_now, c->epoch, &c->bits)) {
		/* No trustworthy map: a new epoch no backup knows, so the next
		 * backup is full. */
		new_epoch(c->epoch);
		c->bits = xcalloc(1, c->nbytes ? c->nbytes : 1);
		vela_log(VELA_LOG_INFO, "%s: changed-block tracking starts a new epoch (no clean map)", path);
	}
	/* From now on the file says "unclean" until a clean close. */
	int r = save(path, disk_size, c->epoch, false, NULL, 0, NULL);
	if (r < 0) {
		blk_cbt_free(c);
		return r;
	}
	*out = c;
	return 0;
}

void blk_cbt_mark(struct blk_cbt *c, uint64_t off, uint64_t len)
{
	if (!c || !len || off >= c->size)
		return;
	uint64_t first = off / BLK_CBT_GRANULE, last = (off + len - 1) / BLK_CBT_GRANULE;
	pthread_mutex_lock(&c->lock);
	for (uint64_t g = first; g <= last && g / 8 < c->nbytes; g++)
		c->bits[g / 8] |= (uint8_t)(1u << (g % 8));
	pthread_mutex_unlock(&c->lock);
}

int blk_cbt_rotate(struct blk_cbt *c, struct blk_cbt_epoch *out)
{
	memset(out, 0, sizeof *out);
	pthread_mutex_lock(&c->lock);
	memcpy(out->prev, c->epoch, sizeof out->prev);
	out->bits = c->bits;
	out->nbytes = c->nbytes;
	out->disk_size = c->size;
	c->bits = xcalloc(1, c->nbytes ? c->nbytes : 1);
	new_epoch(c->epoch);
	memcpy(out->next, c->epoch, sizeof out->next);
	pthread_mutex_unlock(&c->lock);
	return 0;
}

int blk_cbt_close(struct blk_cbt *c, const char *top)
{
	if (!c)
		return 0;
	struct blk_cbt_stamp st;
	blk_cbt_stamp_of(top, &st);
	pthread_mutex_lock(&c->lock);
	int r = save(c->path, c->size, c->epoch, true, c->bits, c->nbytes, &st);
	pthread_mutex_unlock(&c->lock);
	blk_cbt_free(c);
	return r;
}

void blk_cbt_free(struct blk_cbt *c)
{
	if (!c)
		return;
	pthread_mutex_destroy(&c->lock);
	free(c->bits);
	free(c->path);
	free(c);
}

int blk_cbt_rotate_offline(const char *path, uint64_t disk_size, const char *top, struct blk_cbt_epoch *out)
{
	struct blk_cbt *c = NULL;
	struct blk_cbt_stamp st;
	blk_cbt_stamp_of(top, &st);
	int r = blk_cbt_open(path, disk_size, &st, &c);
	if (r < 0)
		return r;
	blk_cbt_rotate(c, out);
	return blk_cbt_close(c, top);
}

void blk_cbt_epoch_clear(struct blk_cbt_epoch *e)
{
	free(e->bits);
	memset(e, 0, sizeof *e);
}

uint64_t blk_cbt_count(const struct blk_cbt_epoch *e)
{
	uint64_t n = 0;
	for (size_t i = 0; i < e->nbytes; i++)
		n += (uint64_t)__builtin_popcount(e->bits[i]);
	return n;
}
