/*
 * disk.c - a served disk: a libvdisk chain behind a read-write lock, so that
 * the chain can be swapped while the guest runs (live redo logs, commit),
 * with per-disk statistics and IOPS/bandwidth limits.
 *
 * Every I/O takes the lock shared; a swap takes it exclusive, which drains
 * the I/O in flight and holds new I/O back for exactly as long as the swap
 * (flush + reopen of the chain metadata) takes - independent of disk size.
 */
#include "common.h"
#include "blk.h"
#include "vdisk.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct throttle {
	pthread_mutex_t lock;
	uint64_t rate;          /* units per second, 0 = unlimited */
	double tokens;          /* may go negative: debt paid by sleeping */
	int64_t last_ns;
};

struct blk_disk {
	pthread_rwlock_t swap_lock;
	struct vdisk *vd;
	char *top;              /* path of the chain's top image */
	bool read_only;
	unsigned open_flags;    /* VDISK_OPEN_* every (re)open of the chain uses */
	struct blk_disk_stats stats;   /* updated with atomics */
	struct throttle iops[2], bps[2];   /* [0] read, [1] write */
	pthread_mutex_t limits_lock;
	struct blk_disk_limits limits;
	struct blk_cbt *cbt;    /* changed-block tracking, or NULL */
};

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void throttle_init(struct throttle *t)
{
	pthread_mutex_init(&t->lock, NULL);
	t->rate = 0;
	t->tokens = 0;
	t->last_ns = now_ns();
}

static void throttle_set(struct throttle *t, uint64_t rate)
{
	pthread_mutex_lock(&t->lock);
	__atomic_store_n(&t->rate, rate, __ATOMIC_RELAXED);
	t->tokens = 0;
	t->last_ns = now_ns();
	pthread_mutex_unlock(&t->lock);
}

/*
 * Take `amount` units; when the bucket runs into debt, sleep until the debt
 * is paid.  The bucket holds at most a tenth of a second of credit, so an
 * idle disk cannot burst far above its limit afterwards.
 */
static void throttle_take(struct throttle *t, uint64_t amount)
{
	/* Unlimited (the common case): no lock on the I/O path. */
	if (__atomic_load_n(&t->rate, __ATOMIC_RELAXED) == 0)
		return;
	pthread_mutex_lock(&t->lock);
	if (t->rate == 0) {
		pthread_mutex_unlock(&t->lock);
		return;
	}
	int64_t now = now_ns();
	double burst = (double)t->rate / 10.0;
	if (burst < 1)
		burst = 1;
	t->tokens += (double)(now - t->last_ns) * (double)t->rate / 1e9;
	if (t->tokens > burst)
		t->tokens = burst;
	t->last_ns = now;
	t->tokens -= (double)amount;
	double wait_s = t->tokens < 0 ? -t->tokens / (double)t->rate : 0;
	pthread_mutex_unlock(&t->lock);
	if (wait_s > 0) {
		struct timespec ts = { (time_t)wait_s, (long)((wait_s - floor(wait_s)) * 1e9) };
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
	}
}

int blk_disk_open(const char *path, bool read_only, struct blk_disk **out)
{
	return blk_disk_open_cache(path, read_only, true, out);
}

int blk_disk_open_cache(const char *path, bool read_only, bool host_cache, struct blk_disk **out)
{
	struct vdisk *vd;
	unsigned flags = (read_only ? VDISK_OPEN_RDONLY : 0) | (host_cache ? 0 : VDISK_OPEN_DIRECT);
	int r = vdisk_open(path, flags, &vd);
	if (r < 0)
		return r;
	struct blk_disk *d = xcalloc(1, sizeof(*d));
	/* Writer preference: a switch (addredo, the end of a commit) must not
	 * wait behind an endless stream of guest I/O. */
	pthread_rwlockattr_t attr;
	pthread_rwlockattr_init(&attr);
	pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&d->swap_lock, &attr);
	pthread_rwlockattr_destroy(&attr);
	pthread_mutex_init(&d->limits_lock, NULL);
	d->vd = vd;
	d->top = xstrdup(path);
	d->read_only = read_only;
	d->open_flags = flags;
	for (int i = 0; i < 2; i++) {
		throttle_init(&d->iops[i]);
		throttle_init(&d->bps[i]);
	}
	*out = d;
	return 0;
}

int blk_disk_close(struct blk_disk *d)
{
	if (!d)
		return 0;
	int r = vdisk_close(d->vd);
	pthread_rwlock_destroy(&d->swap_lock);
	free(d->top);
	free(d);
	return r;
}

uint64_t blk_disk_size(struct blk_disk *d)
{
	pthread_rwlock_rdlock(&d->swap_lock);
	uint64_t size = vdisk_size(d->vd);
	pthread_rwlock_unlock(&d->swap_lock);
	return size;
}

bool blk_disk_read_only(const struct blk_disk *d)
{
	return d->read_only;
}

char *blk_disk_top(struct blk_disk *d)
{
	pthread_rwlock_rdlock(&d->swap_lock);
	char *p = xstrdup(d->top);
	pthread_rwlock_unlock(&d->swap_lock);
	return p;
}

unsigned blk_disk_depth(struct blk_disk *d)
{
	pthread_rwlock_rdlock(&d->swap_lock);
	unsigned n = vdisk_depth(d->vd);
	pthread_rwlock_unlock(&d->swap_lock);
	return n;
}

static void stat_add(uint64_t *v, uint64_t n)
{
	__atomic_fetch_add(v, n, __ATOMIC_RELAXED);
}

static void account(struct blk_disk *d, int dir, uint64_t bytes, int64_t start_ns, int r)
{
	uint64_t us = (uint64_t)(now_ns() - start_ns) / 1000;
	unsigned bucket = 0;
	while (bucket + 1 < BLK_LAT_BUCKETS && us >= (1ull << bucket))
		bucket++;
	stat_add(&d->stats.lat_hist[bucket], 1);
	if (r < 0)
		stat_add(&d->stats.errors, 1);
	switch (dir) {
	case 0:
		stat_add(&d->stats.rd_ops, 1);
		stat_add(&d->stats.rd_bytes, bytes);
		stat_add(&d->stats.rd_lat_us, us);
		break;
	case 1:
		stat_add(&d->stats.wr_ops, 1);
		stat_add(&d->stats.wr_bytes, bytes);
		stat_add(&d->stats.wr_lat_us, us);
		break;
	case 2:
		stat_add(&d->stats.flush_ops, 1);
		break;
	default:
		stat_add(&d->stats.discard_ops, 1);
		break;
	}
}

static void throttle(struct blk_disk *d, int dir, uint64_t bytes)
{
	throttle_take(&d->iops[dir], 1);
	throttle_take(&d->bps[dir], bytes);
}

static int check_range(struct blk_disk *d, uint64_t off, uint64_t len)
{
	uint64_t size = vdisk_size(d->vd);
	if (off > size || len > size - off)
		return vela_error(VELA_E_RANGE, "%s: %" PRIu64 " bytes at %" PRIu64 " lie beyond the disk's end (%" PRIu64 ")",
				  d->top, len, off, size);
	return 0;
}

int blk_disk_pread(struct blk_disk *d, void *buf, size_t len, uint64_t off)
{
	throttle(d, 0, len);
	int64_t start = now_ns();
	pthread_rwlock_rdlock(&d->swap_lock);
	int r = check_range(d, off, len);
	if (r == 0)
		r = vdisk_pread(d->vd, buf, len, off);
	pthread_rwlock_unlock(&d->swap_lock);
	account(d, 0, len, start, r);
	return r;
}

static int refuse_read_only(struct blk_disk *d)
{
	return vela_error(VELA_E_READONLY, "%s: the disk is served read-only", d->top);
}

int blk_disk_pwrite(struct blk_disk *d, const void *buf, size_t len, uint64_t off)
{
	if (d->read_only)
		return refuse_read_only(d);
	throttle(d, 1, len);
	int64_t start = now_ns();
	pthread_rwlock_rdlock(&d->swap_lock);
	int r = check_range(d, off, len);
	if (r == 0)
		r = vdisk_pwrite(d->vd, buf, len, off);
	if (r == 0)
		blk_cbt_mark(d->cbt, off, len);
	pthread_rwlock_unlock(&d->swap_lock);
	account(d, 1, len, start, r);
	return r;
}

int blk_disk_write_zeroes(struct blk_disk *d, uint64_t off, uint64_t len)
{
	if (d->read_only)
		return refuse_read_only(d);
	throttle(d, 1, 0);
	int64_t start = now_ns();
	pthread_rwlock_rdlock(&d->swap_lock);
	int r = check_range(d, off, len);
	if (r == 0)
		r = vdisk_write_zeroes(d->vd, off, len);
	if (r == 0)
		blk_cbt_mark(d->cbt, off, len);
	pthread_rwlock_unlock(&d->swap_lock);
	account(d, 3, 0, start, r);
	return r;
}

int blk_disk_flush(struct blk_disk *d)
{
	if (d->read_only)
		return 0;
	int64_t start = now_ns();
	pthread_rwlock_rdlock(&d->swap_lock);
	int r = vdisk_flush(d->vd);
	pthread_rwlock_unlock(&d->swap_lock);
	account(d, 2, 0, start, r);
	return r;
}

int blk_disk_block_status(struct blk_disk *d, uint64_t off, uint64_t len, struct vdisk_extent_status *out)
{
	pthread_rwlock_rdlock(&d->swap_lock);
	int r = check_range(d, off, len);
	if (r == 0)
		r = vdisk_block_status(d->vd, off, len, out);
	pthread_rwlock_unlock(&d->swap_lock);
	return r;
}

void blk_disk_get_stats(struct blk_disk *d, struct blk_disk_stats *out)
{
	uint64_t *dst = (uint64_t *)out;
	uint64_t *src = (uint64_t *)&d->stats;
	for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++)
		dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

void blk_disk_set_limits(struct blk_disk *d, const struct blk_disk_limits *l)
{
	pthread_mutex_lock(&d->limits_lock);
	d->limits = *l;
	throttle_set(&d->iops[0], l->iops_rd);
	throttle_set(&d->iops[1], l->iops_wr);
	throttle_set(&d->bps[0], l->bps_rd);
	throttle_set(&d->bps[1], l->bps_wr);
	pthread_mutex_unlock(&d->limits_lock);
}

void blk_disk_get_limits(struct blk_disk *d, struct blk_disk_limits *out)
{
	pthread_mutex_lock(&d->limits_lock);
	*out = d->limits;
	pthread_mutex_unlock(&d->limits_lock);
}

/* Reopen the chain at d->top after a failed switch, keeping the error. */
static int reopen_after_failure(struct blk_disk *d, int err)
{
	char *msg = xstrdup(vela_errmsg());
	if (vdisk_open(d->top, d->open_flags, &d->vd) < 0) {
		vela_log(VELA_LOG_ERROR, "%s: cannot reopen the disk after a failed switch: %s", d->top, vela_errmsg());
		d->vd = NULL;
	}
	vela_error(err, "%s", msg);
	free(msg);
	return err;
}

/*
 * Under the exclusive lock: flush and close the open chain (its top may
 * become the new chain's parent and must not stay open for writing), run
 * `between` on the closed files (it may name the new top itself, e.g. a redo
 * log it created), open the chain whose top is new_top.  On failure the old
 * chain is reopened, so the guest keeps its disk.
 */
static int switch_locked(struct blk_disk *d, const char *new_top, blk_disk_between_fn between, void *opaque)
{
	if (!d->vd)
		return vela_error(VELA_E_IO, "%s: the disk is not open (an earlier switch failed)", d->top);
	int r = vdisk_close(d->vd);
	d->vd = NULL;
	if (r < 0) {
		vela_error_context(r, "%s: flush before the switch", d->top);
		return reopen_after_failure(d, r);
	}
	CLEANUP_FREE char *named = NULL;
	if (between && (r = between(opaque, &named)) < 0)
		return reopen_after_failure(d, r);
	if (named)
		new_top = named;
	struct vdisk *nvd;
	r = vdisk_open(new_top, d->open_flags, &nvd);
	if (r < 0) {
		if (named)   /* a file `between` created for this switch only */
			unlink(named);
		return reopen_after_failure(d, r);
	}
	d->vd = nvd;
	free(d->top);
	d->top = xstrdup(new_top);
	return 0;
}

static int addredo_between(void *opaque, char **new_top)
{
	return vdisk_addredo(opaque, new_top);
}

int blk_disk_addredo(struct blk_disk *d, char **new_top)
{
	if (d->read_only)
		return refuse_read_only(d);
	pthread_rwlock_wrlock(&d->swap_lock);
	CLEANUP_FREE char *old_top = xstrdup(d->top);
	int r = switch_locked(d, old_top, addredo_between, old_top);
	if (r == 0 && new_top)
		*new_top = xstrdup(d->top);
	pthread_rwlock_unlock(&d->swap_lock);
	return r;
}

void blk_disk_set_cbt(struct blk_disk *d, struct blk_cbt *c)
{
	pthread_rwlock_wrlock(&d->swap_lock);
	d->cbt = c;
	pthread_rwlock_unlock(&d->swap_lock);
}

int blk_disk_addredo_rotate(struct blk_disk *d, char **new_top, struct blk_cbt_epoch *out)
{
	if (d->read_only)
		return refuse_read_only(d);
	if (!d->cbt)
		return vela_error(VELA_E_NOTSUP, "%s: changed-block tracking is off (ctkEnabled)", d->top);
	pthread_rwlock_wrlock(&d->swap_lock);
	CLEANUP_FREE char *old_top = xstrdup(d->top);
	int r = switch_locked(d, old_top, addredo_between, old_top);
	if (r == 0) {
		/* No write can pass while we hold the lock: every write before is
		 * in the images under the new log, every write after is not. */
		blk_cbt_rotate(d->cbt, out);
		if (new_top)
			*new_top = xstrdup(d->top);
	}
	pthread_rwlock_unlock(&d->swap_lock);
	return r;
}

int blk_disk_switch(struct blk_disk *d, const char *new_top, blk_disk_between_fn between, void *opaque)
{
	pthread_rwlock_wrlock(&d->swap_lock);
	int r = switch_locked(d, new_top, between, opaque);
	pthread_rwlock_unlock(&d->swap_lock);
	return r;
}
