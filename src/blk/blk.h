/*
 * blk.h - disk servers on top of libvdisk:
 *  - blk_disk: a served disk whose chain can be switched while the guest
 *    runs (live redo logs, commit), with statistics and IOPS/bandwidth limits;
 *  - a vhost-user-blk server (the data path of a running VM's disks);
 *  - an NBD server (fixed newstyle negotiation, structured replies,
 *    base:allocation block status, several connections, read-only or
 *    read-write exports) for exports, backup and file-level restore.
 */
#ifndef VELA_BLK_H
#define VELA_BLK_H

#include <stdbool.h>
#include <stdint.h>

struct vdisk;
struct vdisk_extent_status;

/* ------------------------------------------------------------ blk_disk */

struct blk_disk;

/* Latency histogram: bucket i counts operations that took < 2^i us (the
 * last bucket: everything slower). */
#define BLK_LAT_BUCKETS 24

/* Cumulative counters since the disk was opened.  All uint64_t. */
struct blk_disk_stats {
	uint64_t rd_ops, wr_ops, flush_ops, discard_ops;
	uint64_t rd_bytes, wr_bytes;
	uint64_t rd_lat_us, wr_lat_us;   /* summed latencies */
	uint64_t errors;
	uint64_t lat_hist[BLK_LAT_BUCKETS];
};

/* Per-direction limits; 0 = unlimited. */
struct blk_disk_limits {
	uint64_t iops_rd, iops_wr;
	uint64_t bps_rd, bps_wr;
};

int blk_disk_open(const char *path, bool read_only, struct blk_disk **out);
/* host_cache false: data I/O bypasses the host page cache (VDISK_OPEN_DIRECT). */
int blk_disk_open_cache(const char *path, bool read_only, bool host_cache, struct blk_disk **out);
/* Flush and close; returns the flush result. */
int blk_disk_close(struct blk_disk *d);
uint64_t blk_disk_size(struct blk_disk *d);
bool blk_disk_read_only(const struct blk_disk *d);
/* Path of the chain's current top image (caller frees). */
char *blk_disk_top(struct blk_disk *d);
unsigned blk_disk_depth(struct blk_disk *d);

/* I/O, thread-safe; limits apply, statistics count. */
int blk_disk_pread(struct blk_disk *d, void *buf, size_t len, uint64_t off);
int blk_disk_pwrite(struct blk_disk *d, const void *buf, size_t len, uint64_t off);
int blk_disk_write_zeroes(struct blk_disk *d, uint64_t off, uint64_t len);
int blk_disk_flush(struct blk_disk *d);
int blk_disk_block_status(struct blk_disk *d, uint64_t off, uint64_t len, struct vdisk_extent_status *out);

void blk_disk_get_stats(struct blk_disk *d, struct blk_disk_stats *out);
void blk_disk_set_limits(struct blk_disk *d, const struct blk_disk_limits *l);
void blk_disk_get_limits(struct blk_disk *d, struct blk_disk_limits *out);

/* ------------------------------------------- changed-block tracking */

#define BLK_CBT_GRANULE (64u * 1024u)
#define BLK_CBT_EPOCH_LEN 32

/*
 * Which granules of a disk the guest wrote since its epoch began (cbt.c):
 * kept in <base>.ctk, trusted only after a clean close.  An epoch is a
 * random id; a backup records the one that starts with it, so the next
 * backup knows whether the map it gets covers exactly the time since.
 */
struct blk_cbt;
struct blk_cbt_epoch {
	char prev[BLK_CBT_EPOCH_LEN + 1];   /* the epoch that ended */
	char next[BLK_CBT_EPOCH_LEN + 1];   /* the one that starts now */
	uint8_t *bits;                      /* prev's map (caller frees: blk_cbt_epoch_clear) */
	size_t nbytes;
	uint64_t disk_size;
};
/*
 * A map only covers writes that went through Vela.  So that a disk written
 * by another tool while its VM was off is noticed, a clean map records the
 * size and modification time of the disk's top image at the close, and is
 * trusted again only when the top still has them (taken before the disk is
 * opened: opening may write).
 */
struct blk_cbt_stamp {
	uint64_t size, mtime_ns;
};
void blk_cbt_stamp_of(const char *top, struct blk_cbt_stamp *out);
int blk_cbt_open(const char *path, uint64_t disk_size, const struct blk_cbt_stamp *top_now, struct blk_cbt **out);
void blk_cbt_mark(struct blk_cbt *c, uint64_t off, uint64_t len);
int blk_cbt_rotate(struct blk_cbt *c, struct blk_cbt_epoch *out);
/* Save clean, with the stamp of the (closed) top image, and free. */
int blk_cbt_close(struct blk_cbt *c, const char *top);
void blk_cbt_free(struct blk_cbt *c);
/* The same on a disk nobody serves (its VM is off; top: its chain's top). */
int blk_cbt_rotate_offline(const char *path, uint64_t disk_size, const char *top, struct blk_cbt_epoch *out);
void blk_cbt_epoch_clear(struct blk_cbt_epoch *e);
uint64_t blk_cbt_count(const struct blk_cbt_epoch *e);

/* Track this disk's writes in c (owned by the caller, who closes it after
 * the disk). */
void blk_disk_set_cbt(struct blk_disk *d, struct blk_cbt *c);
/* addredo, and under the same hold of guest I/O a new CBT epoch: the map
 * returned covers exactly the writes that the images under the new redo
 * log hold since the previous epoch. */
int blk_disk_addredo_rotate(struct blk_disk *d, char **new_top, struct blk_cbt_epoch *out);

/*
 * Live redo log: put a new child on top of the open chain and continue on
 * it; the former top is never written again.  O(1) in disk size: I/O pauses
 * only for a flush and the reopen of the chain's metadata.
 */
int blk_disk_addredo(struct blk_disk *d, char **new_top);

/*
 * Switch the served chain: with I/O held back and the chain closed, run
 * between (if given; it may name the new top in *new_top, caller's string
 * freed by blk_disk), then open new_top.  On failure the former chain is
 * reopened.  This is the final step of a live commit.
 */
typedef int (*blk_disk_between_fn)(void *opaque, char **new_top);
int blk_disk_switch(struct blk_disk *d, const char *new_top, blk_disk_between_fn between, void *opaque);

/* ----------------------------------------------------- vhost-user-blk */

#define BLK_VHOST_MAX_QUEUES 16

struct blk_vhost_opts {
	unsigned num_queues;     /* offered to the front-end, 1..BLK_VHOST_MAX_QUEUES */
	const char *serial;      /* virtio-blk GET_ID answer (<= 20 bytes used) */
	bool no_threads;         /* queues are polled by the caller (tests, fuzzing) */
};

struct blk_vhost_session;

int blk_vhost_session_new(struct blk_disk *disk, const struct blk_vhost_opts *o, struct blk_vhost_session **out);
/* Stops every queue, unmaps guest memory, closes the fds it holds. */
void blk_vhost_session_free(struct blk_vhost_session *s);

/*
 * Handle one front-end message: msg holds the 12-byte header and its
 * payload (len bytes in all); fds are the descriptors that came with it and
 * become the session's (closed here when not kept).  A reply, when due, is
 * written to reply (room for BLK_VHOST_MAX_MSG bytes) and its length to
 * *reply_len (0 = none).  A negative return means the front-end broke the
 * protocol and the connection must end.
 */
#define BLK_VHOST_MAX_MSG 4096
int blk_vhost_session_handle(struct blk_vhost_session *s, const void *msg, size_t len, int *fds, size_t nfds,
			     void *reply, size_t *reply_len);

/* Serve the requests available on queue q now (what a kick does): 0 when
 * none is left, 1 when it stopped after four rings' worth (call again; a
 * guest can make its own completions look like new requests), < 0 when the
 * queue is broken. */
int blk_vhost_session_poll_queue(struct blk_vhost_session *s, unsigned q);

/* Serve one front-end (QEMU) on a connected socket until it disconnects. */
int blk_vhost_serve_fd(int fd, struct blk_disk *disk, const struct blk_vhost_opts *o);

/*
 * Listen on a UNIX socket path and serve front-ends one after another (a
 * VM reconnects after a reboot of its device model) until *stop becomes true
 * (checked at least every 200 ms).  ready, if given, is called once listening.
 */
int blk_vhost_listen(const char *path, struct blk_disk *disk, const struct blk_vhost_opts *o, volatile bool *stop,
		     void (*ready)(const char *where, void *opaque), void *opaque);

/* ----------------------------------------------------------------- NBD */

struct blk_export {
	struct blk_disk *disk;   /* shared by all connections; not owned */
	const char *name;        /* export name clients ask for ("" accepted too) */
	bool read_only;
	const char *description;
};

/* Largest request served; bigger ones get EINVAL (reads) or a disconnect
 * (writes, whose payload cannot be trusted). */
#define BLK_NBD_MAX_REQUEST (32u << 20)

/*
 * Serve one NBD client on a connected socket until it disconnects or breaks
 * the protocol.  Returns 0 on a clean end, a negative error otherwise (the
 * socket is not closed).  Thread-safe with other connections of the same
 * export.
 */
int blk_nbd_serve_fd(int fd, const struct blk_export *exp);

/*
 * Listen on addr ("HOST:PORT", ":PORT" for loopback, or a UNIX socket path
 * containing '/') and serve clients, one thread each, until *stop becomes
 * true (checked at least every 200 ms) or a signal the caller handles ends
 * the process.  ready, if given, is called once listening.
 */
int blk_nbd_listen(const char *addr, const struct blk_export *exp, volatile bool *stop,
		   void (*ready)(const char *where, void *opaque), void *opaque);

#endif /* VELA_BLK_H */
