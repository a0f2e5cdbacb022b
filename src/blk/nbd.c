/*
 * nbd.c - NBD server: fixed newstyle handshake, options (EXPORT_NAME, LIST,
 * ABORT, INFO, GO, STRUCTURED_REPLY, LIST/SET_META_CONTEXT), and the
 * transmission phase (READ, WRITE, FLUSH, TRIM, WRITE_ZEROES, CACHE,
 * BLOCK_STATUS for base:allocation, DISC).  All numbers big-endian.
 * Every length and offset from the wire is checked before use.
 */
#include "common.h"
#include "blk.h"
#include "vdisk.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>

#define NBDMAGIC 0x4e42444d41474943ull
#define IHAVEOPT 0x49484156454f5054ull
#define OPT_REPLY_MAGIC 0x3e889045565a9ull
#define REQUEST_MAGIC 0x25609513u
#define SIMPLE_REPLY_MAGIC 0x67446698u
#define STRUCTURED_REPLY_MAGIC 0x668e33efu

enum { FLAG_FIXED_NEWSTYLE = 1, FLAG_NO_ZEROES = 2 };
enum {
	OPT_EXPORT_NAME = 1, OPT_ABORT = 2, OPT_LIST = 3, OPT_STARTTLS = 5, OPT_INFO = 6, OPT_GO = 7,
	OPT_STRUCTURED_REPLY = 8, OPT_LIST_META_CONTEXT = 9, OPT_SET_META_CONTEXT = 10,
};
enum { REP_ACK = 1, REP_SERVER = 2, REP_INFO = 3, REP_META_CONTEXT = 4 };
#define REP_ERR_UNSUP (0x80000000u | 1)
#define REP_ERR_POLICY (0x80000000u | 2)
#define REP_ERR_INVALID (0x80000000u | 3)
#define REP_ERR_UNKNOWN (0x80000000u | 6)
#define REP_ERR_TOO_BIG (0x80000000u | 9)
enum { INFO_EXPORT = 0, INFO_NAME = 1, INFO_DESCRIPTION = 2, INFO_BLOCK_SIZE = 3 };
enum {
	TFLAG_HAS_FLAGS = 1 << 0, TFLAG_READ_ONLY = 1 << 1, TFLAG_SEND_FLUSH = 1 << 2, TFLAG_SEND_FUA = 1 << 3,
	TFLAG_SEND_TRIM = 1 << 5, TFLAG_SEND_WRITE_ZEROES = 1 << 6, TFLAG_SEND_DF = 1 << 7, TFLAG_CAN_MULTI_CONN = 1 << 8,
	TFLAG_SEND_CACHE = 1 << 10, TFLAG_SEND_FAST_ZERO = 1 << 11,
};
enum { CMD_READ = 0, CMD_WRITE = 1, CMD_DISC = 2, CMD_FLUSH = 3, CMD_TRIM = 4, CMD_CACHE = 5, CMD_WRITE_ZEROES = 6, CMD_BLOCK_STATUS = 7 };
enum { CMDF_FUA = 1, CMDF_NO_HOLE = 2, CMDF_DF = 4, CMDF_REQ_ONE = 8, CMDF_FAST_ZERO = 16 };
enum { REPLY_FLAG_DONE = 1 };
enum { REPLY_NONE = 0, REPLY_OFFSET_DATA = 1, REPLY_OFFSET_HOLE = 2, REPLY_BLOCK_STATUS = 5, REPLY_ERROR = 32769 };
enum { NBD_EPERM = 1, NBD_EIO = 5, NBD_ENOMEM = 12, NBD_EINVAL = 22, NBD_ENOSPC = 28, NBD_EOVERFLOW = 75, NBD_ENOTSUP = 95 };
#define STATE_HOLE 1u
#define STATE_ZERO 2u
#define META_ALLOCATION_ID 1u
#define MAX_OPTION_LEN 65536u
#define MAX_OPTIONS 64u
#define MAX_STATUS_EXTENTS 1024u

struct conn {
	int fd;
	const struct blk_export *exp;
	bool structured, meta_allocation, no_zeroes;
	struct strbuf *out;   /* transmission: a request's reply is built here, sent whole */
};

/* Send now (negotiation) or add to the reply being built (transmission). */
static int conn_send(struct conn *c, const void *data, size_t len)
{
	if (c->out)
		return strbuf_append(c->out, data, len);
	return send_all(c->fd, data, len);
}

static int recv_all(int fd, void *buf, size_t len)
{
	char *p = buf;
	while (len > 0) {
		ssize_t n = recv(fd, p, len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return vela_error_errno(errno, "nbd: receive");
		if (n == 0)
			return vela_error(VELA_E_CONNRESET, "nbd: the client closed the connection");
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Read and drop len bytes (an option or payload we refuse). */
static int skip(int fd, uint64_t len)
{
	char buf[4096];
	while (len > 0) {
		size_t n = len < sizeof buf ? (size_t)len : sizeof buf;
		int r = recv_all(fd, buf, n);
		if (r < 0)
			return r;
		len -= n;
	}
	return 0;
}

static int opt_reply(struct conn *c, uint32_t opt, uint32_t type, const void *data, uint32_t len)
{
	uint8_t h[20];
	be64_put(h, OPT_REPLY_MAGIC);
	be32_put(h + 8, opt);
	be32_put(h + 12, type);
	be32_put(h + 16, len);
	int r = send_all(c->fd, h, sizeof h);
	if (r == 0 && len)
		r = send_all(c->fd, data, len);
	return r;
}

static int opt_error(struct conn *c, uint32_t opt, uint32_t type, const char *msg)
{
	return opt_reply(c, opt, type, msg, (uint32_t)strlen(msg));
}

static uint16_t transmission_flags(const struct blk_export *e)
{
	uint16_t f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_SEND_DF | TFLAG_CAN_MULTI_CONN |
		     TFLAG_SEND_CACHE;
	if (e->read_only)
		f |= TFLAG_READ_ONLY;
	else
		f |= TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;
	return f;
}

static bool name_matches(const struct blk_export *e, const char *name)
{
	return name[0] == '\0' || (e->name && strcmp(e->name, name) == 0);
}

/* INFO/GO payload: u32 name length, name, u16 count, u16 requests. */
static int handle_info(struct conn *c, uint32_t opt, const uint8_t *d, uint32_t len, bool *go)
{
	if (len < 6)
		return opt_error(c, opt, REP_ERR_INVALID, "option payload too short");
	uint32_t nl = be32_get(d);
	if (nl > len - 6)
		return opt_error(c, opt, REP_ERR_INVALID, "name length beyond the option");
	uint16_t nreq = be16_get(d + 4 + nl);
	if ((uint64_t)nreq * 2 != len - 6 - nl)
		return opt_error(c, opt, REP_ERR_INVALID, "information request count does not match the length");
	char *name = xstrndup((const char *)d + 4, nl);
	bool ok = strlen(name) == nl && name_matches(c->exp, name);
	free(name);
	if (!ok)
		return opt_error(c, opt, REP_ERR_UNKNOWN, "no such export");
	uint8_t info[12];
	be16_put(info, INFO_EXPORT);
	be64_put(info + 2, blk_disk_size(c->exp->disk));
	be16_put(info + 10, transmission_flags(c->exp));
	int r = opt_reply(c, opt, REP_INFO, info, 12);
	uint8_t bs[14];
	be16_put(bs, INFO_BLOCK_SIZE);
	be32_put(bs + 2, 1);
	be32_put(bs + 6, 4096);
	be32_put(bs + 10, BLK_NBD_MAX_REQUEST);
	if (r == 0)
		r = opt_reply(c, opt, REP_INFO, bs, sizeof bs);
	for (uint16_t i = 0; r == 0 && i < nreq; i++) {
		uint16_t want = be16_get(d + 4 + nl + 2 + 2 * i);
		if (want == INFO_DESCRIPTION && c->exp->description) {
			size_t dl = strlen(c->exp->description);
			uint8_t *buf = xcalloc(1, 2 + dl);
			be16_put(buf, INFO_DESCRIPTION);
			memcpy(buf + 2, c->exp->description, dl);
			r = opt_reply(c, opt, REP_INFO, buf, (uint32_t)(2 + dl));
			free(buf);
		}
	}
	if (r == 0)
		r = opt_reply(c, opt, REP_ACK, NULL, 0);
	if (r == 0 && opt == OPT_GO)
		*go = true;
	return r;
}

/* LIST/SET_META_CONTEXT: u32 name length, name, u32 count, (u32 len, query)*. */
static int handle_meta(struct conn *c, uint32_t opt, const uint8_t *d, uint32_t len)
{
	if (!c->structured)
		return opt_error(c, opt, REP_ERR_INVALID, "structured replies must be negotiated first");
	if (len < 8)
		return opt_error(c, opt, REP_ERR_INVALID, "option payload too short");
	uint32_t nl = be32_get(d);
	if (nl > len - 8)
		return opt_error(c, opt, REP_ERR_INVALID, "name length beyond the option");
	char *name = xstrndup((const char *)d + 4, nl);
	bool ok = strlen(name) == nl && name_matches(c->exp, name);
	free(name);
	if (!ok)
		return opt_error(c, opt, REP_ERR_UNKNOWN, "no such export");
	uint32_t nq = be32_get(d + 4 + nl);
	uint64_t pos = 8 + (uint64_t)nl;
	bool want_alloc = nq == 0 && opt == OPT_LIST_META_CONTEXT;   /* empty list query = all */
	for (uint32_t i = 0; i < nq; i++) {
		if (pos + 4 > len)
			return opt_error(c, opt, REP_ERR_INVALID, "query beyond the option");
		uint32_t ql = be32_get(d + pos);
		if (ql > len - pos - 4)
			return opt_error(c, opt, REP_ERR_INVALID, "query length beyond the option");
		const char *q = (const char *)d + pos + 4;
		if ((ql == 16 && memcmp(q, "base:allocation", 15) == 0 && q[15] == 0) ||
		    (ql == 15 && memcmp(q, "base:allocation", 15) == 0) ||
		    (opt == OPT_LIST_META_CONTEXT && ql == 5 && memcmp(q, "base:", 5) == 0))
			want_alloc = true;
		pos += 4 + ql;
	}
	if (pos != len)
		return opt_error(c, opt, REP_ERR_INVALID, "trailing bytes in the option");
	int r = 0;
	if (opt == OPT_SET_META_CONTEXT)
		c->meta_allocation = want_alloc;
	if (want_alloc) {
		uint8_t rep[4 + 15];
		be32_put(rep, META_ALLOCATION_ID);
		memcpy(rep + 4, "base:allocation", 15);
		r = opt_reply(c, opt, REP_META_CONTEXT, rep, sizeof rep);
	}
	if (r == 0)
		r = opt_reply(c, opt, REP_ACK, NULL, 0);
	return r;
}

/* Option haggling; returns 1 when transmission starts, 0 on a clean abort. */
static int negotiate(struct conn *c)
{
	uint8_t greet[18];
	be64_put(greet, NBDMAGIC);
	be64_put(greet + 8, IHAVEOPT);
	be16_put(greet + 16, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
	int r = send_all(c->fd, greet, sizeof greet);
	uint8_t cf[4];
	if (r == 0)
		r = recv_all(c->fd, cf, 4);
	if (r < 0)
		return r;
	uint32_t flags = be32_get(cf);
	if (!(flags & FLAG_FIXED_NEWSTYLE) || (flags & ~(uint32_t)(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)))
		return vela_error(VELA_E_PROTOCOL, "nbd: client flags 0x%x are not fixed newstyle", flags);
	c->no_zeroes = flags & FLAG_NO_ZEROES;
	for (unsigned n = 0; n < MAX_OPTIONS; n++) {
		uint8_t h[16];
		if ((r = recv_all(c->fd, h, sizeof h)) < 0)
			return r;
		if (be64_get(h) != IHAVEOPT)
			return vela_error(VELA_E_PROTOCOL, "nbd: bad option magic");
		uint32_t opt = be32_get(h + 8), len = be32_get(h + 12);
		if (len > MAX_OPTION_LEN) {
			/* Read it away in pieces rather than trusting an allocation. */
			if ((r = skip(c->fd, len)) < 0 || (r = opt_error(c, opt, REP_ERR_TOO_BIG, "option too long")) < 0)
				return r;
			continue;
		}
		uint8_t *d = xcalloc(1, len + 1);
		if ((r = recv_all(c->fd, d, len)) < 0) {
			free(d);
			return r;
		}
		bool go = false;
		switch (opt) {
		case OPT_EXPORT_NAME: {
			d[len] = 0;
			if (strlen((char *)d) != len || !name_matches(c->exp, (char *)d)) {
				free(d);
				return vela_error(VELA_E_NOTFOUND, "nbd: the client asked for an unknown export");
			}
			uint8_t reply[10 + 124] = { 0 };
			be64_put(reply, blk_disk_size(c->exp->disk));
			be16_put(reply + 8, transmission_flags(c->exp));
			r = send_all(c->fd, reply, c->no_zeroes ? 10 : sizeof reply);
			go = true;
			break;
		}
		case OPT_ABORT:
			opt_reply(c, opt, REP_ACK, NULL, 0);
			free(d);
			return 0;
		case OPT_LIST:
			if (len) {
				r = opt_error(c, opt, REP_ERR_INVALID, "LIST takes no data");
			} else {
				const char *name = c->exp->name ? c->exp->name : "";
				size_t nl = strlen(name);
				uint8_t *rep = xcalloc(1, 4 + nl);
				be32_put(rep, (uint32_t)nl);
				memcpy(rep + 4, name, nl);
				r = opt_reply(c, opt, REP_SERVER, rep, (uint32_t)(4 + nl));
				free(rep);
				if (r == 0)
					r = opt_reply(c, opt, REP_ACK, NULL, 0);
			}
			break;
		case OPT_STRUCTURED_REPLY:
			if (len)
				r = opt_error(c, opt, REP_ERR_INVALID, "STRUCTURED_REPLY takes no data");
			else {
				c->structured = true;
				r = opt_reply(c, opt, REP_ACK, NULL, 0);
			}
			break;
		case OPT_INFO:
		case OPT_GO:
			r = handle_info(c, opt, d, len, &go);
			break;
		case OPT_LIST_META_CONTEXT:
		case OPT_SET_META_CONTEXT:
			r = handle_meta(c, opt, d, len);
			break;
		case OPT_STARTTLS:
			r = opt_error(c, opt, REP_ERR_POLICY, "TLS is not offered on this export");
			break;
		default:
			r = opt_error(c, opt, REP_ERR_UNSUP, "option not supported");
			break;
		}
		free(d);
		if (r < 0)
			return r;
		if (go)
			return 1;
	}
	return vela_error(VELA_E_PROTOCOL, "nbd: more than %u options", MAX_OPTIONS);
}

static int simple_reply(struct conn *c, uint64_t handle, uint32_t err, const void *data, size_t len)
{
	uint8_t h[16];
	be32_put(h, SIMPLE_REPLY_MAGIC);
	be32_put(h + 4, err);
	be64_put(h + 8, handle);
	int r = conn_send(c, h, sizeof h);
	if (r == 0 && len)
		r = conn_send(c, data, len);
	return r;
}

static int chunk_header(struct conn *c, uint16_t flags, uint16_t type, uint64_t handle, uint32_t len)
{
	uint8_t h[20];
	be32_put(h, STRUCTURED_REPLY_MAGIC);
	be16_put(h + 4, flags);
	be16_put(h + 6, type);
	be64_put(h + 8, handle);
	be32_put(h + 16, len);
	return conn_send(c, h, sizeof h);
}

static int error_reply(struct conn *c, uint64_t handle, uint32_t err)
{
	if (!c->structured)
		return simple_reply(c, handle, err, NULL, 0);
	uint8_t p[6];
	be32_put(p, err);
	be16_put(p + 4, 0);
	int r = chunk_header(c, REPLY_FLAG_DONE, REPLY_ERROR, handle, sizeof p);
	return r == 0 ? conn_send(c, p, sizeof p) : r;
}

static int done_reply(struct conn *c, uint64_t handle)
{
	return c->structured ? chunk_header(c, REPLY_FLAG_DONE, REPLY_NONE, handle, 0) : simple_reply(c, handle, 0, NULL, 0);
}

static uint32_t nbd_errno(int r)
{
	switch (-r) {
	case VELA_E_READONLY: case VELA_E_PERM: return NBD_EPERM;
	case VELA_E_NOMEM: return NBD_ENOMEM;
	case VELA_E_RANGE: case VELA_E_INVAL: return NBD_EINVAL;
	case VELA_E_DISKFULL: return NBD_ENOSPC;
	case VELA_E_NOTSUP: return NBD_ENOTSUP;
	default: return NBD_EIO;
	}
}

/* A read: structured replies send holes as holes. */
static int do_read(struct conn *c, uint64_t handle, uint64_t off, uint32_t len, uint16_t flags)
{
	struct blk_disk *d = c->exp->disk;
	char *buf = xcalloc(1, len ? len : 1);
	int r = 0;
	if (!c->structured || (flags & CMDF_DF)) {
		r = blk_disk_pread(d, buf, len, off);
		if (r < 0) {
			free(buf);
			return error_reply(c, handle, nbd_errno(r));
		}
		if (!c->structured) {
			r = simple_reply(c, handle, 0, buf, len);
		} else {
			r = chunk_header(c, REPLY_FLAG_DONE, REPLY_OFFSET_DATA, handle, 8 + len);
			uint8_t o[8];
			be64_put(o, off);
			if (r == 0)
				r = conn_send(c, o, 8);
			if (r == 0)
				r = conn_send(c, buf, len);
		}
		free(buf);
		return r;
	}
	/* Chunks per allocation run; all chunks first, then NONE with DONE. */
	uint64_t pos = off, end = off + len;
	while (pos < end && r == 0) {
		struct vdisk_extent_status es;
		int rr = blk_disk_block_status(d, pos, end - pos, &es);
		if (rr < 0) {
			free(buf);
			return error_reply(c, handle, nbd_errno(rr));
		}
		uint32_t n = (uint32_t)es.len;
		uint8_t o[12];
		be64_put(o, pos);
		if (es.status == VDISK_ZERO) {
			be32_put(o + 8, n);
			r = chunk_header(c, 0, REPLY_OFFSET_HOLE, handle, 12);
			if (r == 0)
				r = conn_send(c, o, 12);
		} else {
			rr = blk_disk_pread(d, buf, n, pos);
			if (rr < 0) {
				free(buf);
				return error_reply(c, handle, nbd_errno(rr));
			}
			r = chunk_header(c, 0, REPLY_OFFSET_DATA, handle, 8 + n);
			if (r == 0)
				r = conn_send(c, o, 8);
			if (r == 0)
				r = conn_send(c, buf, n);
		}
		pos += n;
	}
	free(buf);
	return r == 0 ? done_reply(c, handle) : r;
}

static int do_block_status(struct conn *c, uint64_t handle, uint64_t off, uint32_t len, uint16_t flags)
{
	if (!c->structured || !c->meta_allocation)
		return error_reply(c, handle, NBD_EINVAL);
	uint8_t *p = xcalloc(1, 4 + 8 * MAX_STATUS_EXTENTS);
	uint32_t n = 0;
	uint64_t pos = off, end = off + len;
	be32_put(p, META_ALLOCATION_ID);
	while (pos < end && n < MAX_STATUS_EXTENTS) {
		struct vdisk_extent_status es;
		int r = blk_disk_block_status(c->exp->disk, pos, end - pos, &es);
		if (r < 0) {
			free(p);
			return error_reply(c, handle, nbd_errno(r));
		}
		uint32_t state = es.status == VDISK_ZERO ? (STATE_HOLE | STATE_ZERO) : 0;
		if (n > 0 && be32_get(p + 4 + 8 * (n - 1) + 4) == state &&
		    (uint64_t)be32_get(p + 4 + 8 * (n - 1)) + es.len <= UINT32_MAX) {
			be32_put(p + 4 + 8 * (n - 1), be32_get(p + 4 + 8 * (n - 1)) + (uint32_t)es.len);
		} else {
			be32_put(p + 4 + 8 * n, (uint32_t)es.len);
			be32_put(p + 4 + 8 * n + 4, state);
			n++;
		}
		pos += es.len;
		if (flags & CMDF_REQ_ONE)
			break;
	}
	int r = chunk_header(c, REPLY_FLAG_DONE, REPLY_BLOCK_STATUS, handle, 4 + 8 * n);
	if (r == 0)
		r = conn_send(c, p, 4 + 8 * n);
	free(p);
	return r;
}

/*
 * Transmission: this thread reads requests (and write payloads) and queues
 * them; NBD_WORKERS threads serve them concurrently, so a client with
 * several requests in flight keeps several disk operations going.  Each
 * reply is built whole and sent under send_lock: replies may overtake each
 * other (the protocol allows it; handles tell them apart) but never mix.
 */
#define NBD_WORKERS 4
#define NBD_QUEUE_MAX 16

struct nbd_req {
	uint16_t flags, type;
	uint64_t handle, off;
	uint32_t len;
	bool range_ok;
	char *payload;
	struct nbd_req *next;
};

struct xmit {
	struct conn *c;
	pthread_mutex_t lock, send_lock;
	pthread_cond_t have_work, have_room;
	struct nbd_req *head, *tail;
	unsigned queued;
	bool closing;
	int error;              /* first send failure: the connection is over */
};

static int serve_request(struct conn *c, struct nbd_req *q)
{
	struct blk_disk *d = c->exp->disk;
	int r;
	switch (q->type) {
	case CMD_READ:
		if (!q->range_ok || q->len > BLK_NBD_MAX_REQUEST)
			return error_reply(c, q->handle, q->range_ok ? NBD_EOVERFLOW : NBD_EINVAL);
		return do_read(c, q->handle, q->off, q->len, q->flags);
	case CMD_WRITE: {
		int wr = c->exp->read_only ? -VELA_E_READONLY : !q->range_ok ? -VELA_E_RANGE
									     : blk_disk_pwrite(d, q->payload, q->len, q->off);
		if (wr == 0 && (q->flags & CMDF_FUA))
			wr = blk_disk_flush(d);
		return wr < 0 ? error_reply(c, q->handle, nbd_errno(wr)) : done_reply(c, q->handle);
	}
	case CMD_FLUSH:
		r = c->exp->read_only ? 0 : blk_disk_flush(d);
		return r < 0 ? error_reply(c, q->handle, nbd_errno(r)) : done_reply(c, q->handle);
	case CMD_TRIM:
	case CMD_WRITE_ZEROES:
		r = c->exp->read_only ? -VELA_E_READONLY : !q->range_ok ? -VELA_E_RANGE
									 : blk_disk_write_zeroes(d, q->off, q->len);
		if (r == 0 && (q->flags & CMDF_FUA))
			r = blk_disk_flush(d);
		return r < 0 ? error_reply(c, q->handle, nbd_errno(r)) : done_reply(c, q->handle);
	case CMD_CACHE:
		return q->range_ok ? done_reply(c, q->handle) : error_reply(c, q->handle, NBD_EINVAL);
	case CMD_BLOCK_STATUS:
		return q->range_ok && q->len ? do_block_status(c, q->handle, q->off, q->len, q->flags)
					     : error_reply(c, q->handle, NBD_EINVAL);
	default:
		return error_reply(c, q->handle, NBD_EINVAL);
	}
}

static void *xmit_worker(void *arg)
{
	struct xmit *x = arg;
	struct strbuf out = { 0 };
	struct conn c = *x->c;
	c.out = &out;
	for (;;) {
		pthread_mutex_lock(&x->lock);
		while (!x->head && !x->closing)
			pthread_cond_wait(&x->have_work, &x->lock);
		struct nbd_req *q = x->head;
		if (!q) {
			pthread_mutex_unlock(&x->lock);
			break;
		}
		x->head = q->next;
		if (!x->head)
			x->tail = NULL;
		x->queued--;
		pthread_cond_signal(&x->have_room);
		pthread_mutex_unlock(&x->lock);

		strbuf_reset(&out);
		int r = serve_request(&c, q);
		free(q->payload);
		free(q);
		pthread_mutex_lock(&x->send_lock);
		if (r == 0 && x->error == 0)
			r = send_all(c.fd, out.data, out.len);
		if (r < 0 && x->error == 0) {
			x->error = r;
			shutdown(c.fd, SHUT_RDWR);   /* wakes the reader */
		}
		pthread_mutex_unlock(&x->send_lock);
	}
	strbuf_free(&out);
	return NULL;
}

static int transmission(struct conn *c)
{
	struct blk_disk *d = c->exp->disk;
	struct xmit x = { .c = c };
	pthread_mutex_init(&x.lock, NULL);
	pthread_mutex_init(&x.send_lock, NULL);
	pthread_cond_init(&x.have_work, NULL);
	pthread_cond_init(&x.have_room, NULL);
	pthread_t workers[NBD_WORKERS];
	unsigned started = 0;
	for (; started < NBD_WORKERS; started++)
		if (pthread_create(&workers[started], NULL, xmit_worker, &x) != 0)
			break;
	int r = 0;
	if (started == 0)
		r = vela_error(VELA_E_NORES, "nbd: no thread to serve the connection");
	while (r == 0) {
		uint8_t h[28];
		r = recv_all(c->fd, h, sizeof h);
		if (r < 0) {
			if (r == -VELA_E_CONNRESET)
				r = 0;   /* a client that just goes is fine */
			break;
		}
		if (be32_get(h) != REQUEST_MAGIC) {
			r = vela_error(VELA_E_PROTOCOL, "nbd: bad request magic");
			break;
		}
		struct nbd_req *q = xcalloc(1, sizeof(*q));
		q->flags = be16_get(h + 4);
		q->type = be16_get(h + 6);
		q->handle = be64_get(h + 8);
		q->off = be64_get(h + 16);
		q->len = be32_get(h + 24);
		uint64_t size = blk_disk_size(d);
		q->range_ok = q->off <= size && q->len <= size - q->off;
		if (q->type == CMD_DISC) {
			free(q);
			break;
		}
		if (q->type == CMD_WRITE) {
			if (q->len > BLK_NBD_MAX_REQUEST) {
				r = vela_error(VELA_E_PROTOCOL, "nbd: write of %u bytes is over the limit", q->len);
				free(q);
				break;
			}
			q->payload = xcalloc(1, q->len ? q->len : 1);
			if ((r = recv_all(c->fd, q->payload, q->len)) < 0) {
				free(q->payload);
				free(q);
				break;
			}
		}
		pthread_mutex_lock(&x.lock);
		while (x.queued >= NBD_QUEUE_MAX)
			pthread_cond_wait(&x.have_room, &x.lock);
		if (x.tail)
			x.tail->next = q;
		else
			x.head = q;
		x.tail = q;
		x.queued++;
		pthread_cond_signal(&x.have_work);
		pthread_mutex_unlock(&x.lock);
	}
	/* Finish what was asked before the end (a disconnect waits for it). */
	pthread_mutex_lock(&x.lock);
	x.closing = true;
	pthread_cond_broadcast(&x.have_work);
	pthread_mutex_unlock(&x.lock);
	for (unsigned i = 0; i < started; i++)
		pthread_join(workers[i], NULL);
	if (r == 0 && x.error < 0 && x.error != -VELA_E_CONNRESET)
		r = x.error;
	pthread_mutex_destroy(&x.lock);
	pthread_mutex_destroy(&x.send_lock);
	pthread_cond_destroy(&x.have_work);
	pthread_cond_destroy(&x.have_room);
	return r;
}

int blk_nbd_serve_fd(int fd, const struct blk_export *exp)
{
	struct conn c = { .fd = fd, .exp = exp };
	int r = negotiate(&c);
	if (r <= 0)
		return r;
	return transmission(&c);
}

/* ------------------------------------------------------------ listening */

struct client {
	int fd;
	const struct blk_export *exp;
};

static void *client_thread(void *arg)
{
	struct client *cl = arg;
	int r = blk_nbd_serve_fd(cl->fd, cl->exp);
	if (r < 0)
		log_info("nbd: connection ended: %s", vela_errmsg());
	close(cl->fd);
	free(cl);
	return NULL;
}

static int listen_tcp(const char *addr)
{
	CLEANUP_FREE char *host = NULL;
	const char *colon = strrchr(addr, ':');
	if (!colon)
		return vela_error(VELA_E_INVAL, "nbd: address \"%s\" is not HOST:PORT or a socket path", addr);
	host = colon == addr ? xstrdup("127.0.0.1") : xstrndup(addr, (size_t)(colon - addr));
	if (host[0] == '[') {
		size_t n = strlen(host);
		if (n >= 2 && host[n - 1] == ']') {
			memmove(host, host + 1, n - 2);
			host[n - 2] = '\0';
		}
	}
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
	struct addrinfo *res = NULL;
	int gr = getaddrinfo(host, colon + 1, &hints, &res);
	if (gr != 0)
		return vela_error(VELA_E_INVAL, "nbd: address %s: %s", addr, gai_strerror(gr));
	int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;
	int r = 0;
	if (fd < 0)
		r = vela_error_errno(errno, "nbd: socket");
	else if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
		 bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 64) < 0)
		r = vela_error_errno(errno, "nbd: listen on %s", addr);
	freeaddrinfo(res);
	if (r < 0) {
		if (fd >= 0)
			close(fd);
		return r;
	}
	return fd;
}

int blk_nbd_listen(const char *addr, const struct blk_export *exp, volatile bool *stop,
		   void (*ready)(const char *where, void *opaque), void *opaque)
{
	int lfd = strchr(addr, '/') ? unix_listen(addr, 64) : listen_tcp(addr);
	if (lfd < 0)
		return lfd;
	if (ready)
		ready(addr, opaque);
	while (!*stop) {
		struct pollfd p = { .fd = lfd, .events = POLLIN };
		if (poll(&p, 1, 200) <= 0)
			continue;
		int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (cfd < 0)
			continue;
		int one = 1;
		setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		struct client *cl = xcalloc(1, sizeof *cl);
		cl->fd = cfd;
		cl->exp = exp;
		pthread_t t;
		if (pthread_create(&t, NULL, client_thread, cl) != 0) {
			close(cfd);
			free(cl);
			continue;
		}
		pthread_detach(t);
	}
	close(lfd);
	if (strchr(addr, '/'))
		unlink(addr);
	return 0;
}
