/*
 * vhost_blk.c - vhost-user-blk back-end: the front-end (QEMU) shares guest
 * RAM (memfd regions), hands over split virtqueues and their kick/call
 * eventfds, and Vela serves the virtio-blk requests straight from guest
 * memory through a blk_disk.
 *
 * Everything that comes from the front-end or from guest memory is hostile
 * until checked: memory regions must map, ring addresses must lie inside a
 * region, descriptor chains may not loop or leave guest memory, requests
 * may not exceed the disk.  A broken message ends the connection; a broken
 * request fails with VIRTIO_BLK_S_IOERR (or the queue stops if the ring
 * itself is broken) - the server never crashes or hangs on either.
 *
 * One thread per started queue waits on its kick eventfd and serves the
 * queue's requests; the message loop runs in the connection's thread.
 */
#include "common.h"
#include "blk.h"

#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------ protocol constants */

enum {
	VU_GET_FEATURES = 1, VU_SET_FEATURES = 2, VU_SET_OWNER = 3, VU_RESET_OWNER = 4, VU_SET_MEM_TABLE = 5,
	VU_SET_LOG_BASE = 6, VU_SET_LOG_FD = 7, VU_SET_VRING_NUM = 8, VU_SET_VRING_ADDR = 9, VU_SET_VRING_BASE = 10,
	VU_GET_VRING_BASE = 11, VU_SET_VRING_KICK = 12, VU_SET_VRING_CALL = 13, VU_SET_VRING_ERR = 14,
	VU_GET_PROTOCOL_FEATURES = 15, VU_SET_PROTOCOL_FEATURES = 16, VU_GET_QUEUE_NUM = 17,
	VU_SET_VRING_ENABLE = 18, VU_GET_CONFIG = 24, VU_SET_CONFIG = 25,
};
#define VU_VERSION 1u
#define VU_FLAG_REPLY (1u << 2)
#define VU_FLAG_NEED_REPLY (1u << 3)
#define VU_HDR 12u
#define VU_MAX_REGIONS 8u
#define VU_VRING_NOFD (1u << 8)

enum { PF_MQ = 0, PF_LOG_SHMFD = 1, PF_REPLY_ACK = 3, PF_CONFIG = 9 };
#define PF_OURS (1ull << PF_MQ | 1ull << PF_LOG_SHMFD | 1ull << PF_REPLY_ACK | 1ull << PF_CONFIG)
#define LOG_PAGE 4096u          /* the dirty log's granule: one bit per guest page */
#define LOG_MAX (1ull << 40)
#define VRING_F_LOG 1u

/* virtio and virtio-blk feature bits */
enum {
	F_BLK_SIZE_MAX = 1, F_BLK_SEG_MAX = 2, F_BLK_GEOMETRY = 4, F_BLK_RO = 5, F_BLK_BLK_SIZE = 6,
	F_BLK_FLUSH = 9, F_BLK_TOPOLOGY = 10, F_BLK_MQ = 12, F_BLK_DISCARD = 13, F_BLK_WRITE_ZEROES = 14,
	F_LOG_ALL = 26, F_RING_INDIRECT_DESC = 28, F_RING_EVENT_IDX = 29, F_PROTOCOL_FEATURES = 30, F_VERSION_1 = 32,
};
enum { T_IN = 0, T_OUT = 1, T_FLUSH = 4, T_GET_ID = 8, T_DISCARD = 11, T_WRITE_ZEROES = 13 };
enum { S_OK = 0, S_IOERR = 1, S_UNSUPP = 2 };
enum { DESC_F_NEXT = 1, DESC_F_WRITE = 2, DESC_F_INDIRECT = 4 };
#define AVAIL_F_NO_INTERRUPT 1u

#define VQ_MAX_SIZE 32768u
#define SEG_MAX 254u            /* data segments per request the guest may use */
#define MAX_CHAIN 1024u         /* descriptors per request, indirect included */
#define MAX_REQUEST (32u << 20)
#define MAX_DISCARD_SEGS 16u
#define BLK_SECTOR 512u
#define CONFIG_SIZE 60u

/* ------------------------------------------------------------ state */

struct region {
	uint64_t gpa, size, uva;
	uint8_t *host;        /* gpa maps here */
	void *map;
	size_t map_len;
};

struct seg {
	uint8_t *p;
	uint32_t len;
	bool writable;
	uint64_t gpa;             /* for the dirty log */
};

struct vq {
	struct blk_vhost_session *s;
	unsigned index;
	pthread_mutex_t lock;     /* serves the ring: thread or poll_queue */
	uint32_t num;
	uint64_t desc_uva, avail_uva, used_uva;
	uint64_t used_gpa;        /* the used ring's guest address, for the dirty log */
	bool log_used;
	uint8_t *desc, *avail, *used;   /* NULL until translated */
	uint16_t last_avail, used_idx;
	bool enabled, started, broken;
	int kick_fd, call_fd, err_fd;
	int stop_fd;
	pthread_t thread;
	bool thread_running;
	uint8_t *bounce;
	size_t bounce_len;
	struct seg segs[MAX_CHAIN];
};

struct blk_vhost_session {
	struct blk_disk *disk;
	struct blk_vhost_opts opts;
	char serial[21];
	uint64_t features, protocol_features;
	bool features_set;
	pthread_rwlock_t mem_lock;  /* regions change only with every queue stopped */
	struct region regions[VU_MAX_REGIONS];
	unsigned nregions;
	/* Migration (suspend): the front-end's dirty-page bitmap, one bit per
	 * 4 KiB of guest memory we write, while F_LOG_ALL is negotiated. */
	uint8_t *log;
	uint64_t log_len;
	void *log_map;
	size_t log_map_len;
	struct vq vqs[BLK_VHOST_MAX_QUEUES];
};

/* ------------------------------------------------- memory translation */

/* Host pointer for [gpa, gpa+len) when it lies inside one region. */
static uint8_t *gpa_to_host(struct blk_vhost_session *s, uint64_t gpa, uint64_t len)
{
	for (unsigned i = 0; i < s->nregions; i++) {
		struct region *r = &s->regions[i];
		if (gpa >= r->gpa && gpa - r->gpa <= r->size && len <= r->size - (gpa - r->gpa))
			return r->host + (gpa - r->gpa);
	}
	return NULL;
}

static uint8_t *uva_to_host(struct blk_vhost_session *s, uint64_t uva, uint64_t len)
{
	for (unsigned i = 0; i < s->nregions; i++) {
		struct region *r = &s->regions[i];
		if (uva >= r->uva && uva - r->uva <= r->size && len <= r->size - (uva - r->uva))
			return r->host + (uva - r->uva);
	}
	return NULL;
}

static void unmap_log(struct blk_vhost_session *s)
{
	if (s->log_map)
		munmap(s->log_map, s->log_map_len);
	s->log_map = NULL;
	s->log = NULL;
	s->log_len = 0;
}

static void unmap_regions(struct blk_vhost_session *s)
{
	for (unsigned i = 0; i < s->nregions; i++)
		if (s->regions[i].map)
			munmap(s->regions[i].map, s->regions[i].map_len);
	memset(s->regions, 0, sizeof(s->regions));
	s->nregions = 0;
}

/* ------------------------------------------------------ ring helpers */

static inline uint16_t ld16(const uint8_t *p)
{
	uint16_t v;
	memcpy(&v, p, 2);
	return v;
}

static inline void st16(uint8_t *p, uint16_t v)
{
	memcpy(p, &v, 2);
}

static inline uint16_t avail_idx(struct vq *q)
{
	return __atomic_load_n((uint16_t *)(q->avail + 2), __ATOMIC_ACQUIRE);
}

static bool has_feature(struct blk_vhost_session *s, unsigned bit)
{
	return s->features & (1ull << bit);
}

/* Mark [gpa, gpa+len) dirty for a migration under way. */
static void log_write(struct blk_vhost_session *s, uint64_t gpa, uint64_t len)
{
	if (!s->log || !len || !has_feature(s, F_LOG_ALL))
		return;
	uint64_t first = gpa / LOG_PAGE, last = (gpa + len - 1) / LOG_PAGE;
	for (uint64_t page = first; page <= last && page / 8 < s->log_len; page++)
		__atomic_fetch_or(&s->log[page / 8], (uint8_t)(1u << (page % 8)), __ATOMIC_RELAXED);
}

/* Translate the ring addresses; false when they do not lie in guest memory. */
static bool vq_translate(struct vq *q)
{
	struct blk_vhost_session *s = q->s;
	bool ev = has_feature(s, F_RING_EVENT_IDX);
	q->desc = uva_to_host(s, q->desc_uva, 16ull * q->num);
	q->avail = uva_to_host(s, q->avail_uva, 4 + 2ull * q->num + (ev ? 2 : 0));
	q->used = uva_to_host(s, q->used_uva, 4 + 8ull * q->num + (ev ? 2 : 0));
	bool ok = q->desc && q->avail && q->used && q->num;
	/* Unaligned rings would make our 16/32-bit accesses unaligned too. */
	if (ok && (((uintptr_t)q->desc & 15) || ((uintptr_t)q->avail & 1) || ((uintptr_t)q->used & 3)))
		ok = false;
	if (!ok)
		q->desc = q->avail = q->used = NULL;
	return ok;
}

static void vq_notify(struct vq *q, uint16_t old_used)
{
	if (q->call_fd < 0)
		return;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (has_feature(q->s, F_RING_EVENT_IDX)) {
		uint16_t event = ld16(q->avail + 4 + 2 * q->num);
		/* Notify when used_event lies in (old_used, used_idx]. */
		if ((uint16_t)(q->used_idx - event - 1) >= (uint16_t)(q->used_idx - old_used))
			return;
	} else if (ld16(q->avail) & AVAIL_F_NO_INTERRUPT) {
		return;
	}
	uint64_t one = 1;
	if (write(q->call_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		vela_log(VELA_LOG_WARN, "vhost-user-blk: queue %u: signal the guest: %s", q->index, strerror(errno));
}

static void vq_push_used(struct vq *q, uint16_t head, uint32_t written)
{
	uint8_t *elem = q->used + 4 + 8 * (size_t)(q->used_idx % q->num);
	uint32_t id = head;
	memcpy(elem, &id, 4);
	memcpy(elem + 4, &written, 4);
	q->used_idx++;
	__atomic_store_n((uint16_t *)(q->used + 2), q->used_idx, __ATOMIC_RELEASE);
	if (q->log_used) {
		log_write(q->s, q->used_gpa + 4 + 8 * (uint64_t)((q->used_idx - 1) % q->num), 8);
		log_write(q->s, q->used_gpa + 2, 2);
	}
}

/*
 * Collect the descriptor chain starting at head into q->segs.  Returns the
 * number of segments, or -1 for a chain that is broken (out of range index,
 * loop, memory outside the guest, nested indirect table).
 */
static int vq_collect(struct vq *q, uint16_t head)
{
	struct blk_vhost_session *s = q->s;
	const uint8_t *table = q->desc;
	uint32_t table_len = q->num;
	uint32_t idx = head;
	unsigned nseg = 0, seen = 0;
	bool indirect_done = false;
	for (;;) {
		if (idx >= table_len || ++seen > MAX_CHAIN)
			return -1;
		const uint8_t *d = table + 16 * (size_t)idx;
		uint64_t addr;
		uint32_t len;
		memcpy(&addr, d, 8);
		memcpy(&len, d + 8, 4);
		uint16_t flags = ld16(d + 12), next = ld16(d + 14);
		if (flags & DESC_F_INDIRECT) {
			/* Only a top-level descriptor may point to a table, and
			 * then it must be the only one of the chain. */
			if (indirect_done || table != q->desc || nseg > 0 || (flags & DESC_F_NEXT) || len == 0 ||
			    len % 16 || len / 16 > MAX_CHAIN)
				return -1;
			table = gpa_to_host(s, addr, len);
			if (!table || ((uintptr_t)table & 7))
				return -1;
			table_len = len / 16;
			idx = 0;
			seen = 0;
			indirect_done = true;
			continue;
		}
		if (len > 0) {
			uint8_t *p = gpa_to_host(s, addr, len);
			if (!p || nseg >= MAX_CHAIN)
				return -1;
			q->segs[nseg++] = (struct seg){ p, len, (flags & DESC_F_WRITE) != 0, addr };
		}
		if (!(flags & DESC_F_NEXT))
			break;
		idx = next;
	}
	return (int)nseg;
}

/* Copy n bytes from the start of the segments, skipping `skip`. */
static bool segs_read(const struct seg *segs, unsigned nseg, size_t skip, void *out, size_t n)
{
	uint8_t *o = out;
	for (unsigned i = 0; i < nseg && n > 0; i++) {
		if (skip >= segs[i].len) {
			skip -= segs[i].len;
			continue;
		}
		size_t k = segs[i].len - skip;
		if (k > n)
			k = n;
		memcpy(o, segs[i].p + skip, k);
		o += k;
		n -= k;
		skip = 0;
	}
	return n == 0;
}

static void *vq_bounce(struct vq *q, size_t len)
{
	if (q->bounce_len < len) {
		free(q->bounce);
		q->bounce = xcalloc(1, len);
		q->bounce_len = len;
	}
	return q->bounce;
}

/* -------------------------------------------------------- requests */

/* The data segments of a request: between the 16-byte header and the
 * status byte.  Splits segments the header or status share with data. */
struct req {
	struct seg data[MAX_CHAIN];
	unsigned ndata;
	uint64_t data_len;
	bool data_writable, data_readable;
	uint8_t *status;
};

static bool req_layout(const struct seg *segs, unsigned nseg, struct req *r)
{
	if (nseg == 0)
		return false;
	const struct seg *last = &segs[nseg - 1];
	if (!last->writable)
		return false;
	r->status = last->p + last->len - 1;
	size_t skip = 16;
	r->ndata = 0;
	r->data_len = 0;
	r->data_writable = r->data_readable = false;
	for (unsigned i = 0; i < nseg; i++) {
		uint8_t *p = segs[i].p;
		size_t len = segs[i].len;
		if (i == nseg - 1)
			len -= 1;   /* the status byte */
		if (skip > 0) {
			if (segs[i].writable)   /* the header is device-readable */
				return false;
			size_t k = skip < len ? skip : len;
			p += k;
			len -= k;
			skip -= k;
		}
		if (len == 0)
			continue;
		r->data[r->ndata++] = (struct seg){ p, (uint32_t)len, segs[i].writable };
		r->data_len += len;
		if (segs[i].writable)
			r->data_writable = true;
		else
			r->data_readable = true;
	}
	return skip == 0;
}

static uint8_t do_rw(struct vq *q, struct req *r, bool write, uint64_t sector)
{
	struct blk_disk *disk = q->s->disk;
	if (write ? (r->data_writable || blk_disk_read_only(disk)) : r->data_readable)
		return S_IOERR;
	if (r->data_len % BLK_SECTOR || r->data_len > MAX_REQUEST || sector > UINT64_MAX / BLK_SECTOR)
		return S_IOERR;
	uint64_t off = sector * BLK_SECTOR;
	if (r->data_len == 0)
		return S_OK;
	/* The range is checked once, by blk_disk, under its lock. */
	int rc;
	if (r->ndata == 1) {
		rc = write ? blk_disk_pwrite(disk, r->data[0].p, r->data_len, off)
			   : blk_disk_pread(disk, r->data[0].p, r->data_len, off);
	} else {
		/* Several guest pages: one disk request through a bounce
		 * buffer costs a memcpy, several requests would cost more. */
		uint8_t *b = vq_bounce(q, r->data_len), *p = b;
		if (write) {
			for (unsigned i = 0; i < r->ndata; i++, p += r->data[i - 1].len)
				memcpy(p, r->data[i].p, r->data[i].len);
			rc = blk_disk_pwrite(disk, b, r->data_len, off);
		} else {
			rc = blk_disk_pread(disk, b, r->data_len, off);
			for (unsigned i = 0; rc == 0 && i < r->ndata; i++, p += r->data[i - 1].len)
				memcpy(r->data[i].p, p, r->data[i].len);
		}
	}
	if (rc < 0) {
		/* A guest reading past the end is its own error: not logged. */
		if (rc != -VELA_E_RANGE)
			vela_log(VELA_LOG_WARN, "vhost-user-blk: %s of %" PRIu64 " bytes at %" PRIu64 ": %s",
				 write ? "write" : "read", r->data_len, off, vela_errmsg());
		return S_IOERR;
	}
	return S_OK;
}

static uint8_t do_zero(struct vq *q, struct req *r)
{
	struct blk_disk *disk = q->s->disk;
	if (r->data_writable || blk_disk_read_only(disk) || r->data_len % 16 || r->data_len == 0 ||
	    r->data_len / 16 > MAX_DISCARD_SEGS)
		return S_IOERR;
	uint64_t size = blk_disk_size(disk);
	for (uint64_t i = 0; i < r->data_len / 16; i++) {
		uint8_t range[16];
		if (!segs_read(r->data, r->ndata, i * 16, range, 16))
			return S_IOERR;
		uint64_t sector;
		uint32_t count, flags;
		memcpy(&sector, range, 8);
		memcpy(&count, range + 8, 4);
		memcpy(&flags, range + 12, 4);
		if (flags & ~1u || sector > size / BLK_SECTOR || count > size / BLK_SECTOR - sector)
			return S_IOERR;
		/* Discard leaves the content undefined: zeroing (which frees
		 * whole allocation units) is a valid and safer answer. */
		if (count && blk_disk_write_zeroes(disk, sector * BLK_SECTOR, (uint64_t)count * BLK_SECTOR) < 0) {
			vela_log(VELA_LOG_WARN, "vhost-user-blk: zero %u sectors at %" PRIu64 ": %s", count, sector,
				 vela_errmsg());
			return S_IOERR;
		}
	}
	return S_OK;
}

/* Serve one request; returns the bytes written into guest memory. */
static uint32_t vq_serve_request(struct vq *q, unsigned nseg)
{
	static __thread struct req r;
	uint8_t hdr[16];
	if (!segs_read(q->segs, nseg, 0, hdr, 16) || !req_layout(q->segs, nseg, &r)) {
		vela_log(VELA_LOG_WARN, "vhost-user-blk: queue %u: malformed request dropped", q->index);
		return 0;
	}
	uint32_t type;
	uint64_t sector;
	memcpy(&type, hdr, 4);
	memcpy(&sector, hdr + 8, 8);
	uint8_t status;
	uint32_t written = 1;
	switch (type) {
	case T_IN:
		status = do_rw(q, &r, false, sector);
		if (status == S_OK)
			written += (uint32_t)r.data_len;
		break;
	case T_OUT:
		status = do_rw(q, &r, true, sector);
		break;
	case T_FLUSH:
		status = blk_disk_flush(q->s->disk) < 0 ? S_IOERR : S_OK;
		break;
	case T_GET_ID: {
		status = S_IOERR;
		if (r.data_writable && !r.data_readable) {
			size_t n = r.data_len < 20 ? r.data_len : 20, done = 0;
			char id[20] = { 0 };
			memcpy(id, q->s->serial, strnlen(q->s->serial, 20));
			for (unsigned i = 0; i < r.ndata && done < n; i++) {
				size_t k = r.data[i].len < n - done ? r.data[i].len : n - done;
				memcpy(r.data[i].p, id + done, k);
				done += k;
			}
			written += (uint32_t)n;
			status = S_OK;
		}
		break;
	}
	case T_DISCARD:
	case T_WRITE_ZEROES:
		status = do_zero(q, &r);
		break;
	default:
		status = S_UNSUPP;
		break;
	}
	*r.status = status;
	return written;
}

static int vq_process_locked(struct vq *q)
{
	if (!q->started || q->broken || !q->desc)
		return 0;
	/* At most four rings' worth per call: a guest whose rings overlap (or
	 * whose buffers point into them) can make every completion look like
	 * a new request, and must not hold the caller forever. */
	unsigned budget = 4u * q->num;
	for (;;) {
		uint16_t avail = avail_idx(q);
		if ((uint16_t)(avail - q->last_avail) > q->num) {
			vela_log(VELA_LOG_ERROR, "vhost-user-blk: queue %u: the guest claims %u new requests on a ring of %u; queue stopped",
				 q->index, (uint16_t)(avail - q->last_avail), q->num);
			q->broken = true;
			return -1;
		}
		if (avail == q->last_avail) {
			if (!has_feature(q->s, F_RING_EVENT_IDX))
				return 0;
			/* Ask for a kick at the next request, then look once more
			 * so a request posted meanwhile is not left waiting. */
			st16(q->used + 4 + 8 * q->num, q->last_avail);
			if (q->log_used)
				log_write(q->s, q->used_gpa + 4 + 8ull * q->num, 2);
			__atomic_thread_fence(__ATOMIC_SEQ_CST);
			if (avail_idx(q) == q->last_avail)
				return 0;
			continue;
		}
		while (q->last_avail != avail) {
			if (budget-- == 0)
				return 1;
			uint16_t head = ld16(q->avail + 4 + 2 * (size_t)(q->last_avail % q->num));
			q->last_avail++;
			int nseg = vq_collect(q, head);
			uint32_t written = 0;
			if (nseg < 0)
				vela_log(VELA_LOG_WARN, "vhost-user-blk: queue %u: broken descriptor chain at %u dropped",
					 q->index, head);
			else
				written = vq_serve_request(q, (unsigned)nseg);
			for (int i = 0; i < nseg && q->s->log; i++)
				if (q->segs[i].writable)
					log_write(q->s, q->segs[i].gpa, q->segs[i].len);
			uint16_t old = q->used_idx;
			/* A head out of range cannot be returned to the guest either. */
			if (head < q->num)
				vq_push_used(q, head, written);
			vq_notify(q, old);
		}
	}
}

int blk_vhost_session_poll_queue(struct blk_vhost_session *s, unsigned qi)
{
	if (qi >= s->opts.num_queues)
		return vela_error(VELA_E_INVAL, "vhost-user-blk: no queue %u", qi);
	struct vq *q = &s->vqs[qi];
	pthread_rwlock_rdlock(&s->mem_lock);
	pthread_mutex_lock(&q->lock);
	int r = vq_process_locked(q);
	pthread_mutex_unlock(&q->lock);
	pthread_rwlock_unlock(&s->mem_lock);
	return r;
}

static void *vq_thread(void *opaque)
{
	struct vq *q = opaque;
	struct pollfd p[2] = { { .fd = q->kick_fd, .events = POLLIN }, { .fd = q->stop_fd, .events = POLLIN } };
	for (;;) {
		/* Serve first: requests may have been posted before the
		 * kick fd was handed over.  A full budget served: go on at
		 * once (after a look at the stop fd), without a kick. */
		int more = blk_vhost_session_poll_queue(q->s, q->index) > 0;
		if (poll(p, 2, more ? 0 : -1) < 0 && errno != EINTR)
			break;
		if (p[1].revents)
			break;
		if (p[0].revents & (POLLERR | POLLHUP | POLLNVAL))
			break;
		uint64_t v;
		if (read(q->kick_fd, &v, sizeof(v)) < 0 && errno != EAGAIN && errno != EINTR)
			break;
	}
	return NULL;
}

/* ------------------------------------------------- queue lifecycle */

static void vq_stop(struct vq *q)
{
	if (q->thread_running) {
		uint64_t one = 1;
		if (write(q->stop_fd, &one, sizeof(one)) < 0)
			vela_log(VELA_LOG_WARN, "vhost-user-blk: stop queue %u: %s", q->index, strerror(errno));
		pthread_join(q->thread, NULL);
		q->thread_running = false;
		uint64_t v;
		if (read(q->stop_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
			vela_log(VELA_LOG_WARN, "vhost-user-blk: drain queue %u stop: %s", q->index, strerror(errno));
	}
	q->started = false;
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void vq_reset(struct vq *q)
{
	vq_stop(q);
	close_fd(&q->kick_fd);
	close_fd(&q->call_fd);
	close_fd(&q->err_fd);
	q->num = 0;
	q->desc_uva = q->avail_uva = q->used_uva = 0;
	q->desc = q->avail = q->used = NULL;
	q->last_avail = q->used_idx = 0;
	q->enabled = q->broken = false;
}

/* Start the queue when everything it needs has arrived. */
static int vq_maybe_start(struct vq *q)
{
	struct blk_vhost_session *s = q->s;
	bool enabled = q->enabled || !has_feature(s, F_PROTOCOL_FEATURES);
	if (q->started || q->kick_fd < 0 || !enabled || q->num == 0)
		return 0;
	pthread_rwlock_rdlock(&s->mem_lock);
	bool ok = vq_translate(q);
	pthread_rwlock_unlock(&s->mem_lock);
	if (!ok)
		return vela_error(VELA_E_PROTOCOL, "vhost-user-blk: queue %u: ring addresses lie outside guest memory",
				  q->index);
	q->used_idx = __atomic_load_n((uint16_t *)(q->used + 2), __ATOMIC_ACQUIRE);
	q->broken = false;
	q->started = true;
	if (s->opts.no_threads)
		return 0;
	int e = pthread_create(&q->thread, NULL, vq_thread, q);
	if (e) {
		q->started = false;
		return vela_error_errno(e, "vhost-user-blk: start queue %u", q->index);
	}
	q->thread_running = true;
	return 0;
}

/* ------------------------------------------------------- messages */

int blk_vhost_session_new(struct blk_disk *disk, const struct blk_vhost_opts *o, struct blk_vhost_session **out)
{
	if (o->num_queues < 1 || o->num_queues > BLK_VHOST_MAX_QUEUES)
		return vela_error(VELA_E_INVAL, "vhost-user-blk: %u queues asked, 1..%u possible", o->num_queues,
				  BLK_VHOST_MAX_QUEUES);
	struct blk_vhost_session *s = xcalloc(1, sizeof(*s));
	s->disk = disk;
	s->opts = *o;
	snprintf(s->serial, sizeof(s->serial), "%s", o->serial ? o->serial : "");
	s->opts.serial = NULL;
	pthread_rwlock_init(&s->mem_lock, NULL);
	for (unsigned i = 0; i < BLK_VHOST_MAX_QUEUES; i++) {
		struct vq *q = &s->vqs[i];
		q->s = s;
		q->index = i;
		q->kick_fd = q->call_fd = q->err_fd = -1;
		pthread_mutex_init(&q->lock, NULL);
		q->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (q->stop_fd < 0) {
			int e = errno;
			blk_vhost_session_free(s);
			return vela_error_errno(e, "vhost-user-blk: eventfd");
		}
	}
	*out = s;
	return 0;
}

void blk_vhost_session_free(struct blk_vhost_session *s)
{
	if (!s)
		return;
	for (unsigned i = 0; i < BLK_VHOST_MAX_QUEUES; i++) {
		vq_reset(&s->vqs[i]);
		close_fd(&s->vqs[i].stop_fd);
		free(s->vqs[i].bounce);
		pthread_mutex_destroy(&s->vqs[i].lock);
	}
	unmap_regions(s);
	unmap_log(s);
	pthread_rwlock_destroy(&s->mem_lock);
	free(s);
}

static uint64_t offered_features(struct blk_vhost_session *s)
{
	uint64_t f = 1ull << F_VERSION_1 | 1ull << F_RING_INDIRECT_DESC | 1ull << F_RING_EVENT_IDX |
		     1ull << F_PROTOCOL_FEATURES | 1ull << F_BLK_SEG_MAX | 1ull << F_BLK_BLK_SIZE |
		     1ull << F_BLK_FLUSH | 1ull << F_BLK_TOPOLOGY | 1ull << F_BLK_DISCARD |
		     1ull << F_BLK_WRITE_ZEROES | 1ull << F_BLK_SIZE_MAX | 1ull << F_LOG_ALL;
	if (s->opts.num_queues > 1)
		f |= 1ull << F_BLK_MQ;
	if (blk_disk_read_only(s->disk))
		f |= 1ull << F_BLK_RO;
	return f;
}

static void put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
}

/* virtio_blk_config, little-endian (the only byte order here). */
static void build_config(struct blk_vhost_session *s, uint8_t cfg[CONFIG_SIZE])
{
	memset(cfg, 0, CONFIG_SIZE);
	uint64_t sectors = blk_disk_size(s->disk) / BLK_SECTOR;
	memcpy(cfg, &sectors, 8);
	put32(cfg + 8, 1u << 20);           /* size_max: bytes per segment */
	put32(cfg + 12, SEG_MAX);           /* seg_max */
	put32(cfg + 20, BLK_SECTOR);        /* blk_size */
	cfg[24] = 0;                        /* physical_block_exp */
	st16(cfg + 26, 1);                  /* min_io_size (sectors) */
	put32(cfg + 28, 0);                 /* opt_io_size */
	cfg[32] = 1;                        /* wce: write-back, the guest flushes */
	st16(cfg + 34, (uint16_t)s->opts.num_queues);
	put32(cfg + 36, 1u << 22);          /* max_discard_sectors (2 GiB) */
	put32(cfg + 40, MAX_DISCARD_SEGS);
	put32(cfg + 44, 1);                 /* discard_sector_alignment */
	put32(cfg + 48, 1u << 22);          /* max_write_zeroes_sectors */
	put32(cfg + 52, MAX_DISCARD_SEGS);
	cfg[56] = 1;                        /* write_zeroes_may_unmap */
}

static int proto_error(const char *what, uint32_t req)
{
	return vela_error(VELA_E_PROTOCOL, "vhost-user-blk: message %u: %s", req, what);
}

/* SET_LOG_BASE: {u64 size, u64 offset} and the log's memory descriptor. */
static int set_log_base(struct blk_vhost_session *s, const uint8_t *p, int fd, size_t nfds)
{
	uint64_t size, off;
	memcpy(&size, p, 8);
	memcpy(&off, p + 8, 8);
	if (nfds != 1 || fd < 0 || size == 0 || size > LOG_MAX || off > LOG_MAX)
		return proto_error("dirty log: one descriptor and a size of 1 byte to 1 TiB", VU_SET_LOG_BASE);
	void *map = mmap(NULL, size + off, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED)
		return vela_error_errno(errno, "vhost-user-blk: map the dirty log");
	/* The queues write to the log under the read lock: swap it under the write lock. */
	pthread_rwlock_wrlock(&s->mem_lock);
	unmap_log(s);
	s->log_map = map;
	s->log_map_len = size + off;
	s->log = (uint8_t *)map + off;
	s->log_len = size;
	pthread_rwlock_unlock(&s->mem_lock);
	return 0;
}

static int set_mem_table(struct blk_vhost_session *s, const uint8_t *p, uint32_t size, int *fds, size_t nfds)
{
	if (size < 8)
		return proto_error("memory table too short", VU_SET_MEM_TABLE);
	uint32_t n;
	memcpy(&n, p, 4);
	if (n == 0 || n > VU_MAX_REGIONS || size < 8 + 32 * n || nfds != n)
		return proto_error("memory table: bad region count or missing descriptors", VU_SET_MEM_TABLE);
	struct region nr[VU_MAX_REGIONS];
	memset(nr, 0, sizeof(nr));
	int err = 0;
	for (uint32_t i = 0; i < n && !err; i++) {
		const uint8_t *e = p + 8 + 32 * i;
		uint64_t mmap_off;
		memcpy(&nr[i].gpa, e, 8);
		memcpy(&nr[i].size, e + 8, 8);
		memcpy(&nr[i].uva, e + 16, 8);
		memcpy(&mmap_off, e + 24, 8);
		struct stat st;
		if (nr[i].size == 0 || mmap_off > UINT64_MAX - nr[i].size || nr[i].gpa > UINT64_MAX - nr[i].size ||
		    nr[i].uva > UINT64_MAX - nr[i].size || fstat(fds[i], &st) < 0 ||
		    (S_ISREG(st.st_mode) && (uint64_t)st.st_size < mmap_off + nr[i].size) ||
		    mmap_off + nr[i].size > SIZE_MAX) {
			err = proto_error("memory region outside its file", VU_SET_MEM_TABLE);
			break;
		}
		nr[i].map_len = (size_t)(mmap_off + nr[i].size);
		nr[i].map = mmap(NULL, nr[i].map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fds[i], 0);
		if (nr[i].map == MAP_FAILED) {
			nr[i].map = NULL;
			err = vela_error_errno(errno, "vhost-user-blk: map guest memory region %u (%" PRIu64 " bytes)", i,
					       nr[i].size);
			break;
		}
		nr[i].host = (uint8_t *)nr[i].map + mmap_off;
	}
	if (err) {
		for (uint32_t i = 0; i < n; i++)
			if (nr[i].map)
				munmap(nr[i].map, nr[i].map_len);
		return err;
	}
	/* Stop the queues while the memory under them changes, then
	 * restart those that ran, on the new translation. */
	bool was_started[BLK_VHOST_MAX_QUEUES];
	for (unsigned i = 0; i < s->opts.num_queues; i++) {
		was_started[i] = s->vqs[i].started;
		vq_stop(&s->vqs[i]);
	}
	pthread_rwlock_wrlock(&s->mem_lock);
	unmap_regions(s);
	memcpy(s->regions, nr, sizeof(nr));
	s->nregions = n;
	pthread_rwlock_unlock(&s->mem_lock);
	int r = 0;
	for (unsigned i = 0; i < s->opts.num_queues; i++) {
		if (was_started[i]) {
			uint16_t used = s->vqs[i].used_idx;
			int e = vq_maybe_start(&s->vqs[i]);
			s->vqs[i].used_idx = used;
			if (e < 0)
				r = e;
		}
	}
	return r;
}

static struct vq *vring_of(struct blk_vhost_session *s, uint32_t index)
{
	return index < s->opts.num_queues ? &s->vqs[index] : NULL;
}

int blk_vhost_session_handle(struct blk_vhost_session *s, const void *msg, size_t len, int *fds, size_t nfds,
			     void *reply, size_t *reply_len)
{
	*reply_len = 0;
	size_t fds_used = 0;
	int r = 0;
	const uint8_t *m = msg;
	uint8_t *rep = reply;
	uint32_t req = 0, flags, size;
	uint64_t u64 = 0;
	bool has_reply = false;
	if (len < VU_HDR) {
		r = proto_error("short header", 0);
		goto out;
	}
	memcpy(&req, m, 4);
	memcpy(&flags, m + 4, 4);
	memcpy(&size, m + 8, 4);
	const uint8_t *p = m + VU_HDR;
	if ((flags & 3) != VU_VERSION || size != len - VU_HDR || size > BLK_VHOST_MAX_MSG - VU_HDR) {
		r = proto_error("bad version or size", req);
		goto out;
	}
	if (size >= 8)
		memcpy(&u64, p, 8);
	uint32_t st_index = 0, st_num = 0;
	if (size >= 8) {
		memcpy(&st_index, p, 4);
		memcpy(&st_num, p + 4, 4);
	}
#define NEED(n)                                                      \
	do {                                                         \
		if (size < (n)) {                                    \
			r = proto_error("payload too short", req);   \
			goto out;                                    \
		}                                                    \
	} while (0)
	struct vq *q;
	switch (req) {
	case VU_GET_FEATURES:
		u64 = offered_features(s);
		memcpy(rep + VU_HDR, &u64, 8);
		*reply_len = VU_HDR + 8;
		has_reply = true;
		break;
	case VU_SET_FEATURES:
		NEED(8);
		if (u64 & ~offered_features(s)) {
			r = proto_error("features that were not offered", req);
			goto out;
		}
		s->features = u64;
		s->features_set = true;
		break;
	case VU_SET_OWNER:
		break;
	case VU_RESET_OWNER:
		for (unsigned i = 0; i < BLK_VHOST_MAX_QUEUES; i++)
			vq_reset(&s->vqs[i]);
		s->features = 0;
		break;
	case VU_GET_PROTOCOL_FEATURES:
		u64 = PF_OURS;
		memcpy(rep + VU_HDR, &u64, 8);
		*reply_len = VU_HDR + 8;
		has_reply = true;
		break;
	case VU_SET_PROTOCOL_FEATURES:
		NEED(8);
		s->protocol_features = u64 & PF_OURS;
		break;
	case VU_GET_QUEUE_NUM:
		u64 = s->opts.num_queues;
		memcpy(rep + VU_HDR, &u64, 8);
		*reply_len = VU_HDR + 8;
		has_reply = true;
		break;
	case VU_SET_MEM_TABLE:
		fds_used = nfds;
		r = set_mem_table(s, p, size, fds, nfds);
		for (size_t i = 0; i < nfds; i++)
			close(fds[i]);   /* the mappings keep the memory */
		break;
	case VU_SET_LOG_BASE:
		NEED(16);
		fds_used = nfds;
		r = set_log_base(s, p, nfds == 1 ? fds[0] : -1, nfds);
		for (size_t i = 0; i < nfds; i++)
			close(fds[i]);
		u64 = 0;
		memcpy(rep + VU_HDR, &u64, 8);
		*reply_len = VU_HDR + 8;
		has_reply = r == 0;
		break;
	case VU_SET_LOG_FD:
		/* Only for front-ends that want a signal at log updates: none of QEMU's. */
		break;
	case VU_SET_VRING_NUM:
		NEED(8);
		if (!(q = vring_of(s, st_index)) || q->started || st_num == 0 || st_num > VQ_MAX_SIZE ||
		    (st_num & (st_num - 1))) {
			r = proto_error("bad ring size or index", req);
			goto out;
		}
		q->num = st_num;
		break;
	case VU_SET_VRING_ADDR:
		NEED(40);
		if (!(q = vring_of(s, st_index)) || q->started) {
			r = proto_error("bad ring index", req);
			goto out;
		}
		memcpy(&q->desc_uva, p + 8, 8);
		memcpy(&q->used_uva, p + 16, 8);
		memcpy(&q->avail_uva, p + 24, 8);
		memcpy(&q->used_gpa, p + 32, 8);
		q->log_used = st_num & VRING_F_LOG;   /* the flags word */
		break;
	case VU_SET_VRING_BASE:
		NEED(8);
		if (!(q = vring_of(s, st_index)) || q->started || st_num > 0xffff) {
			r = proto_error("bad ring index", req);
			goto out;
		}
		q->last_avail = (uint16_t)st_num;
		break;
	case VU_GET_VRING_BASE:
		NEED(8);
		if (!(q = vring_of(s, st_index))) {
			r = proto_error("bad ring index", req);
			goto out;
		}
		vq_stop(q);
		close_fd(&q->kick_fd);
		st_num = q->last_avail;
		memcpy(rep + VU_HDR, &st_index, 4);
		memcpy(rep + VU_HDR + 4, &st_num, 4);
		*reply_len = VU_HDR + 8;
		has_reply = true;
		break;
	case VU_SET_VRING_KICK:
	case VU_SET_VRING_CALL:
	case VU_SET_VRING_ERR: {
		NEED(8);
		bool nofd = u64 & VU_VRING_NOFD;
		if (!(q = vring_of(s, (uint32_t)(u64 & 0xff))) || (u64 & ~0x1ffull) || nofd != (nfds == 0) || nfds > 1) {
			r = proto_error("bad ring index or descriptor", req);
			goto out;
		}
		int fd = nofd ? -1 : fds[0];
		fds_used = nfds;
		if (req == VU_SET_VRING_KICK) {
			vq_stop(q);
			close_fd(&q->kick_fd);
			q->kick_fd = fd;
			if (fd < 0) {
				r = proto_error("polled rings (no kick descriptor) are not supported", req);
				goto out;
			}
			r = vq_maybe_start(q);
		} else if (req == VU_SET_VRING_CALL) {
			/* The queue thread reads call_fd: swap it stopped. */
			bool running = q->started;
			vq_stop(q);
			close_fd(&q->call_fd);
			q->call_fd = fd;
			if (running) {
				uint16_t used = q->used_idx;
				r = vq_maybe_start(q);
				q->used_idx = used;
			}
		} else {
			close_fd(&q->err_fd);
			q->err_fd = fd;
		}
		break;
	}
	case VU_SET_VRING_ENABLE:
		NEED(8);
		if (!(q = vring_of(s, st_index)) || st_num > 1) {
			r = proto_error("bad ring index", req);
			goto out;
		}
		q->enabled = st_num == 1;
		if (q->enabled)
			r = vq_maybe_start(q);
		else
			vq_stop(q);
		break;
	case VU_GET_CONFIG:
	case VU_SET_CONFIG: {
		NEED(12);
		uint32_t off, csize;
		memcpy(&off, p, 4);
		memcpy(&csize, p + 4, 4);
		if (off > 256 || csize > 256 - off || size < 12 + csize) {
			r = proto_error("config space access out of range", req);
			goto out;
		}
		if (req == VU_SET_CONFIG)
			break;   /* nothing the guest may change (wce stays write-back) */
		uint8_t cfg[256] = { 0 };
		build_config(s, cfg);
		memcpy(rep + VU_HDR, p, 12);
		memcpy(rep + VU_HDR + 12, cfg + off, csize);
		*reply_len = VU_HDR + 12 + csize;
		has_reply = true;
		break;
	}
	default:
		r = proto_error("not supported", req);
		goto out;
	}
#undef NEED
out:
	for (size_t i = fds_used; i < nfds; i++)
		close(fds[i]);
	if (!has_reply && len >= VU_HDR && (flags & VU_FLAG_NEED_REPLY) && (s->protocol_features & (1ull << PF_REPLY_ACK))) {
		/* REPLY_ACK: report success or failure instead of breaking
		 * the connection; the front-end decides. */
		u64 = r < 0 ? 1 : 0;
		memcpy(rep + VU_HDR, &u64, 8);
		*reply_len = VU_HDR + 8;
		has_reply = true;
		if (r < 0)
			vela_log(VELA_LOG_WARN, "%s", vela_errmsg());
		r = 0;
	}
	if (has_reply) {
		uint32_t rflags = VU_VERSION | VU_FLAG_REPLY, rsize = (uint32_t)(*reply_len - VU_HDR);
		memcpy(rep, &req, 4);
		memcpy(rep + 4, &rflags, 4);
		memcpy(rep + 8, &rsize, 4);
	}
	return r;
}

/* --------------------------------------------------------- transport */

/* Receive one message with its descriptors; 0 at a clean end of stream. */
static ssize_t recv_msg(int fd, uint8_t *buf, int *fds, size_t *nfds)
{
	*nfds = 0;
	union {
		char buf[CMSG_SPACE(sizeof(int) * VU_MAX_REGIONS)];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { buf, VU_HDR };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf) };
	ssize_t n;
	do
		n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return vela_error_errno(errno, "vhost-user-blk: receive");
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++) {
			int f;
			memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (*nfds < VU_MAX_REGIONS)
				fds[(*nfds)++] = f;
			else
				close(f);
		}
	}
	if (n == 0)
		return 0;
	if ((size_t)n < VU_HDR || (mh.msg_flags & MSG_CTRUNC)) {
		for (size_t i = 0; i < *nfds; i++)
			close(fds[i]);
		*nfds = 0;
		return vela_error(VELA_E_PROTOCOL, "vhost-user-blk: truncated message header");
	}
	uint32_t size;
	memcpy(&size, buf + 8, 4);
	if (size > BLK_VHOST_MAX_MSG - VU_HDR) {
		for (size_t i = 0; i < *nfds; i++)
			close(fds[i]);
		*nfds = 0;
		return vela_error(VELA_E_PROTOCOL, "vhost-user-blk: message of %u bytes is too big", size);
	}
	size_t got = 0;
	while (got < size) {
		ssize_t k = recv(fd, buf + VU_HDR + got, size - got, 0);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			for (size_t i = 0; i < *nfds; i++)
				close(fds[i]);
			*nfds = 0;
			return k < 0 ? vela_error_errno(errno, "vhost-user-blk: receive") :
				       vela_error(VELA_E_PROTOCOL, "vhost-user-blk: connection closed inside a message");
		}
		got += (size_t)k;
	}
	return (ssize_t)(VU_HDR + size);
}

static int serve_conn(int fd, struct blk_disk *disk, const struct blk_vhost_opts *o, volatile bool *stop)
{
	struct blk_vhost_session *s;
	int r = blk_vhost_session_new(disk, o, &s);
	if (r < 0)
		return r;
	CLEANUP_FREE uint8_t *buf = xcalloc(1, BLK_VHOST_MAX_MSG);
	CLEANUP_FREE uint8_t *reply = xcalloc(1, BLK_VHOST_MAX_MSG);
	for (;;) {
		if (stop) {
			struct pollfd pf = { .fd = fd, .events = POLLIN };
			int pr = poll(&pf, 1, 200);
			if (*stop)
				break;
			if (pr <= 0)
				continue;
		}
		int fds[VU_MAX_REGIONS];
		size_t nfds;
		ssize_t n = recv_msg(fd, buf, fds, &nfds);
		if (n <= 0) {
			r = (int)n;
			break;
		}
		size_t rlen;
		r = blk_vhost_session_handle(s, buf, (size_t)n, fds, nfds, reply, &rlen);
		if (r < 0)
			break;
		if (rlen && (r = send_all(fd, reply, rlen)) < 0)
			break;
	}
	/* Whatever ended the connection, the guest's writes that were
	 * acknowledged must be durable before the rings go away. */
	blk_vhost_session_free(s);
	int fr = blk_disk_flush(disk);
	return r < 0 ? r : fr;
}

int blk_vhost_serve_fd(int fd, struct blk_disk *disk, const struct blk_vhost_opts *o)
{
	return serve_conn(fd, disk, o, NULL);
}

int blk_vhost_listen(const char *path, struct blk_disk *disk, const struct blk_vhost_opts *o, volatile bool *stop,
		     void (*ready)(const char *where, void *opaque), void *opaque)
{
	int lfd = unix_listen(path, 4);
	if (lfd < 0)
		return lfd;
	if (ready)
		ready(path, opaque);
	int r = 0;
	while (!*stop) {
		struct pollfd p = { .fd = lfd, .events = POLLIN };
		int n = poll(&p, 1, 200);
		if (n < 0 && errno != EINTR) {
			r = vela_error_errno(errno, "vhost-user-blk: wait for a connection on %s", path);
			break;
		}
		if (n <= 0)
			continue;
		int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (cfd < 0)
			continue;
		vela_log(VELA_LOG_INFO, "vhost-user-blk: %s: front-end connected", path);
		if (serve_conn(cfd, disk, o, stop) < 0)
			vela_log(VELA_LOG_WARN, "vhost-user-blk: %s: %s", path, vela_errmsg());
		else
			vela_log(VELA_LOG_INFO, "vhost-user-blk: %s: front-end disconnected", path);
		close(cfd);
	}
	close(lfd);
	unlink(path);
	return r;
}
