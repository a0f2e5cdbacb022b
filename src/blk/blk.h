/*
 * blk.h - disk servers on top of libvdisk.  For now: an NBD server (fixed
 * newstyle negotiation, structured replies, base:allocation block status,
 * several connections, read-only or read-write exports).  The
 * vhost-user-blk server for running VMs comes with the disk data path.
 */
#ifndef VELA_BLK_H
#define VELA_BLK_H

#include <stdbool.h>
#include <stdint.h>

struct vdisk;

struct blk_export {
	struct vdisk *disk;      /* shared by all connections; not owned */
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
