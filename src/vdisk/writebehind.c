/*
 * writebehind.c - start writing a file's sequential streams to the device
 * while the writer is still streaming.
 *
 * Through the host page cache a write only dirties memory.  The kernel's
 * flusher waits until dirty memory passes dirty_background_ratio (gigabytes
 * on a big host) or the pages are 30 s old, so a guest that streams 1 GiB
 * and then flushes pays for copying it and then for the whole device write,
 * one after the other, and meanwhile holds a gigabyte of dirty memory that
 * other VMs' writers get throttled against.  Pushing a stream's finished
 * part with sync_file_range(SYNC_FILE_RANGE_WRITE) overlaps the two: the
 * flush finds little left (1 GiB then fdatasync here: 0.96-1.06 s before,
 * 0.74-0.81 s with it; the device's own speed is the floor).
 *
 * Only streams: runs of large requests that move forward.  Random writes
 * are what the cache is best at (rewrites absorbed, small writes merged),
 * so they are left to the kernel.  The push runs on a thread of its own:
 * sync_file_range blocks while the device queue is full, and a writer that
 * did it inline would be slowed to the device's speed.  Nothing waits for
 * the push and its outcome does not matter for correctness: it only starts
 * writeback the kernel might have started itself; durability still comes
 * from the flush, and an I/O error stays recorded for the flush to report
 * (SYNC_FILE_RANGE_WRITE alone does not consume it).
 */
#include "common.h"
#include "vdisk-format.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>

/* Smaller requests are not taken as a stream (a guest's sequential I/O
 * arrives merged into large requests). */
#define WB_MIN_REQUEST (64u << 10)
/* How far out of order a stream's requests may land: depth x request size
 * of a deep queue (8 x 1 MiB) with room to spare.  The last window of a
 * stream is never pushed: requests may still be landing in it. */
#define WB_WINDOW (16ull << 20)
/* Push in pieces at least this large. */
#define WB_CHUNK (8ull << 20)
/* Streams followed at once (a guest copying several files). */
#define WB_STREAMS 4
/* Ranges waiting for the thread; when full the newest one grows. */
#define WB_QUEUE 16

struct wb_stream {
	uint64_t hi;        /* end of the furthest request seen */
	uint64_t pushed;    /* pushed (or handed to the thread) up to here */
	bool any_pushed;    /* until then pushed is the lowest request seen */
	uint64_t last_use;  /* for replacing the least recently used */
};

struct wb_range {
	uint64_t off, len;
};

struct vdisk_writebehind {
	int fd;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct wb_stream streams[WB_STREAMS];
	uint64_t clock;
	struct wb_range queue[WB_QUEUE];
	unsigned queue_head, queue_len;
	bool thread_started, thread_failed, stopping;
	pthread_t thread;
	_Atomic uint64_t *pushed_bytes;   /* the image's count of bytes pushed */
};

struct vdisk_writebehind *vdisk_writebehind_new(struct vdisk_image *img, int fd)
{
	if (!img->write_behind)
		return NULL;
	struct vdisk_writebehind *wb = xcalloc(1, sizeof *wb);
	wb->fd = fd;
	wb->pushed_bytes = &img->write_behind_pushed;
	pthread_mutex_init(&wb->lock, NULL);
	pthread_cond_init(&wb->wake, NULL);
	return wb;
}

static void *writebehind_thread(void *arg)
{
	struct vdisk_writebehind *wb = arg;
	pthread_mutex_lock(&wb->lock);
	for (;;) {
		while (!wb->stopping && wb->queue_len == 0)
			pthread_cond_wait(&wb->wake, &wb->lock);
		if (wb->stopping)
			break;
		struct wb_range r = wb->queue[wb->queue_head];
		wb->queue_head = (wb->queue_head + 1) % WB_QUEUE;
		wb->queue_len--;
		pthread_mutex_unlock(&wb->lock);
		/* Advisory: see the top of the file for why errors are not ours. */
		(void)sync_file_range(wb->fd, (off_t)r.off, (off_t)r.len, SYNC_FILE_RANGE_WRITE);
		*wb->pushed_bytes += r.len;
		pthread_mutex_lock(&wb->lock);
	}
	pthread_mutex_unlock(&wb->lock);
	return NULL;
}

/* Called with the lock held.  The thread starts on the first push, so
 * images that are only inspected or written randomly never get one; it
 * takes no signals (the daemon's signal handling stays on its own threads).
 * If it cannot start, writes simply go without write-behind. */
static bool start_thread(struct vdisk_writebehind *wb)
{
	if (wb->thread_started || wb->thread_failed)
		return wb->thread_started;
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int e = pthread_create(&wb->thread, NULL, writebehind_thread, wb);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	wb->thread_started = e == 0;
	wb->thread_failed = e != 0;
	return wb->thread_started;
}

static void enqueue(struct vdisk_writebehind *wb, uint64_t off, uint64_t len)
{
	if (!start_thread(wb))
		return;
	if (wb->queue_len == WB_QUEUE) {
		/* The device is behind anyway: widen the newest range (one call
		 * covering both, with whatever lies between them). */
		struct wb_range *last = &wb->queue[(wb->queue_head + WB_QUEUE - 1) % WB_QUEUE];
		uint64_t lo = off < last->off ? off : last->off;
		uint64_t hi = off + len > last->off + last->len ? off + len : last->off + last->len;
		last->off = lo;
		last->len = hi - lo;
	} else {
		wb->queue[(wb->queue_head + wb->queue_len) % WB_QUEUE] = (struct wb_range){ off, len };
		wb->queue_len++;
	}
	pthread_cond_signal(&wb->wake);
}

static struct wb_stream *find_stream(struct vdisk_writebehind *wb, uint64_t off, uint64_t end)
{
	struct wb_stream *lru = &wb->streams[0];
	for (unsigned i = 0; i < WB_STREAMS; i++) {
		struct wb_stream *s = &wb->streams[i];
		if (s->hi && off + WB_WINDOW >= s->hi && off <= s->hi + WB_WINDOW)
			return s;
		if (s->last_use < lru->last_use)
			lru = s;
	}
	/* A new stream begins here: nothing before it is ours to push. */
	*lru = (struct wb_stream){ .hi = end, .pushed = off };
	return lru;
}

void vdisk_writebehind_wrote(struct vdisk_writebehind *wb, uint64_t off, size_t len)
{
	if (!wb || len < WB_MIN_REQUEST)
		return;
	uint64_t end = off + len;
	pthread_mutex_lock(&wb->lock);
	struct wb_stream *s = find_stream(wb, off, end);
	s->last_use = ++wb->clock;
	if (end > s->hi)
		s->hi = end;
	if (!s->any_pushed && off < s->pushed)
		s->pushed = off;   /* the stream's first request landed after its second */
	if (s->hi >= s->pushed + WB_WINDOW + WB_CHUNK) {
		uint64_t to = s->hi - WB_WINDOW;
		enqueue(wb, s->pushed, to - s->pushed);
		s->pushed = to;
		s->any_pushed = true;
	}
	pthread_mutex_unlock(&wb->lock);
}

void vdisk_writebehind_free(struct vdisk_writebehind *wb)
{
	if (!wb)
		return;
	pthread_mutex_lock(&wb->lock);
	wb->stopping = true;   /* queued ranges are dropped: the owner flushes or closes */
	pthread_cond_signal(&wb->wake);
	bool joined = wb->thread_started;
	pthread_mutex_unlock(&wb->lock);
	if (joined)
		pthread_join(wb->thread, NULL);
	pthread_cond_destroy(&wb->wake);
	pthread_mutex_destroy(&wb->lock);
	free(wb);
}
