/*
 * Unit tests: the vhost-user-blk back-end, driven as QEMU would drive it -
 * messages with descriptors, guest RAM in a memfd, split virtqueues laid
 * out in it by the test playing the guest driver - and as a hostile
 * front-end or guest would (bad regions, loops, out-of-range descriptors).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"
#include "blk.h"

#define MEM_SIZE (1u << 20)
#define GUEST_UVA 0x7f1200000000ull   /* where "QEMU" has guest RAM */
#define QSIZE 16u
#define DESC 0x0u
#define AVAIL 0x1000u
#define USED 0x2000u
#define DATA 0x10000u

static char path[64];
static struct blk_disk *disk;

struct guest {
	struct blk_vhost_session *s;
	int memfd;
	uint8_t *mem;
	uint16_t avail_idx, used_seen;
	unsigned next_desc;
	int call_fd;
};

static int setup(void **state)
{
	(void)state;
	snprintf(path, sizeof path, "/tmp/vela-vhost-%d.raw", (int)getpid());
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || ftruncate(fd, 1 << 20) < 0 || pwrite(fd, "hello", 5, 4096) != 5)
		return -1;
	close(fd);
	return blk_disk_open(path, false, &disk);
}

static int teardown(void **state)
{
	(void)state;
	blk_disk_close(disk);
	unlink(path);
	return 0;
}

/* Send one message; returns the handler's result, reply in reply/rlen. */
static int msg(struct guest *g, uint32_t req, uint32_t flags, const void *payload, uint32_t size, int *fds,
	       size_t nfds, uint8_t *reply, size_t *rlen)
{
	uint8_t buf[BLK_VHOST_MAX_MSG];
	uint8_t rbuf[BLK_VHOST_MAX_MSG];
	size_t rl;
	uint32_t f = 1 | flags;
	memcpy(buf, &req, 4);
	memcpy(buf + 4, &f, 4);
	memcpy(buf + 8, &size, 4);
	if (size)
		memcpy(buf + 12, payload, size);
	int r = blk_vhost_session_handle(g->s, buf, 12 + size, fds, nfds, reply ? reply : rbuf, rlen ? rlen : &rl);
	return r;
}

static int msg_u64(struct guest *g, uint32_t req, uint64_t v)
{
	return msg(g, req, 0, &v, 8, NULL, 0, NULL, NULL);
}

static int msg_state(struct guest *g, uint32_t req, uint32_t index, uint32_t num)
{
	uint32_t st[2] = { index, num };
	return msg(g, req, 0, st, 8, NULL, 0, NULL, NULL);
}

static int set_mem(struct guest *g, uint64_t size, uint64_t mmap_off)
{
	uint8_t p[8 + 32] = { 0 };
	uint32_t n = 1;
	uint64_t gpa = 0, uva = GUEST_UVA;
	memcpy(p, &n, 4);
	memcpy(p + 8, &gpa, 8);
	memcpy(p + 16, &size, 8);
	memcpy(p + 24, &uva, 8);
	memcpy(p + 32, &mmap_off, 8);
	int fd = dup(g->memfd);
	return msg(g, 5, 0, p, sizeof p, &fd, 1, NULL, NULL);
}

/* Negotiate and start queue 0 the way QEMU does. */
static void guest_start(struct guest *g)
{
	memset(g, 0, sizeof(*g));
	struct blk_vhost_opts o = { .num_queues = 2, .serial = "vela-serial-0123456789", .no_threads = true };
	assert_int_equal(blk_vhost_session_new(disk, &o, &g->s), 0);
	g->memfd = memfd_create("guest", MFD_CLOEXEC);
	assert_true(g->memfd >= 0);
	assert_int_equal(ftruncate(g->memfd, MEM_SIZE), 0);
	g->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, g->memfd, 0);
	assert_true(g->mem != MAP_FAILED);

	uint8_t reply[BLK_VHOST_MAX_MSG];
	size_t rlen;
	assert_int_equal(msg(g, 1, 0, NULL, 0, NULL, 0, reply, &rlen), 0);   /* GET_FEATURES */
	assert_int_equal(rlen, 20);
	uint64_t features;
	memcpy(&features, reply + 12, 8);
	assert_true(features & (1ull << 32));   /* VERSION_1 */
	assert_true(features & (1ull << 30));   /* PROTOCOL_FEATURES */
	assert_true(features & (1ull << 9));    /* FLUSH */
	assert_int_equal(msg(g, 15, 0, NULL, 0, NULL, 0, reply, &rlen), 0);  /* GET_PROTOCOL_FEATURES */
	uint64_t pf;
	memcpy(&pf, reply + 12, 8);
	assert_true(pf & (1ull << 9));   /* CONFIG */
	assert_int_equal(msg_u64(g, 16, pf), 0);
	assert_int_equal(msg(g, 3, 0, NULL, 0, NULL, 0, NULL, NULL), 0);    /* SET_OWNER */
	/* Without EVENT_IDX: every completion signals (simpler to test). */
	assert_int_equal(msg_u64(g, 2, features & ~(1ull << 29)), 0);
	assert_int_equal(set_mem(g, MEM_SIZE, 0), 0);
	assert_int_equal(msg_state(g, 8, 0, QSIZE), 0);   /* SET_VRING_NUM */
	uint64_t addr[5] = { 0, GUEST_UVA + DESC, GUEST_UVA + USED, GUEST_UVA + AVAIL, 0 };
	assert_int_equal(msg(g, 9, 0, addr, 40, NULL, 0, NULL, NULL), 0);
	assert_int_equal(msg_state(g, 10, 0, 0), 0);      /* SET_VRING_BASE */
	g->call_fd = eventfd(0, EFD_NONBLOCK);
	int fd = dup(g->call_fd);
	uint64_t idx = 0;
	assert_int_equal(msg(g, 13, 0, &idx, 8, &fd, 1, NULL, NULL), 0);   /* CALL */
	int kick = eventfd(0, 0);
	assert_int_equal(msg(g, 12, 0, &idx, 8, &kick, 1, NULL, NULL), 0); /* KICK */
	assert_int_equal(msg_state(g, 18, 0, 1), 0);      /* SET_VRING_ENABLE */
}

static void guest_stop(struct guest *g)
{
	blk_vhost_session_free(g->s);
	munmap(g->mem, MEM_SIZE);
	close(g->memfd);
	close(g->call_fd);
}

static unsigned add_desc(struct guest *g, uint64_t addr, uint32_t len, uint16_t flags)
{
	unsigned i = g->next_desc++ % QSIZE;
	uint8_t *d = g->mem + DESC + 16 * i;
	uint16_t next = (uint16_t)((i + 1) % QSIZE);
	memcpy(d, &addr, 8);
	memcpy(d + 8, &len, 4);
	memcpy(d + 12, &flags, 2);
	memcpy(d + 14, &next, 2);
	return i;
}

static void post(struct guest *g, unsigned head)
{
	uint16_t h = (uint16_t)head;
	memcpy(g->mem + AVAIL + 4 + 2 * (g->avail_idx % QSIZE), &h, 2);
	g->avail_idx++;
	memcpy(g->mem + AVAIL + 2, &g->avail_idx, 2);
}

static uint16_t used_idx(struct guest *g)
{
	uint16_t v;
	memcpy(&v, g->mem + USED + 2, 2);
	return v;
}

/* A whole request: header, data (split in `pieces`), status.  Returns the status. */
static int request(struct guest *g, uint32_t type, uint64_t sector, uint32_t len, unsigned pieces, bool data_in)
{
	uint8_t *hdr = g->mem + DATA;
	memset(hdr, 0, 16);
	memcpy(hdr, &type, 4);
	memcpy(hdr + 8, &sector, 8);
	unsigned head = add_desc(g, DATA, 16, 1);
	uint32_t piece = pieces ? len / pieces : 0;
	for (unsigned i = 0; i < pieces; i++)
		add_desc(g, DATA + 0x1000 + i * piece, i + 1 == pieces ? len - i * piece : piece, 1 | (data_in ? 2 : 0));
	g->mem[DATA + 0x800] = 0xff;
	add_desc(g, DATA + 0x800, 1, 2);
	post(g, head);
	uint16_t before = used_idx(g);
	assert_int_equal(blk_vhost_session_poll_queue(g->s, 0), 0);
	assert_int_equal(used_idx(g), (uint16_t)(before + 1));
	uint64_t calls;
	assert_int_equal(read(g->call_fd, &calls, 8), 8);
	return g->mem[DATA + 0x800];
}

static void requests_from_the_guest(void **state)
{
	(void)state;
	struct guest g;
	guest_start(&g);
	uint8_t *data = g.mem + DATA + 0x1000;

	/* Read sector 8 (offset 4096: "hello") into two pieces. */
	assert_int_equal(request(&g, 0, 8, 1024, 2, true), 0);
	assert_memory_equal(data, "hello", 5);
	/* Write a pattern over three pieces at sector 100, read it back. */
	memset(data, 0x5a, 4096);
	assert_int_equal(request(&g, 1, 100, 4096, 3, false), 0);
	char buf[4096];
	assert_int_equal(blk_disk_pread(disk, buf, 4096, 100 * 512), 0);
	for (int i = 0; i < 4096; i++)
		assert_int_equal((uint8_t)buf[i], 0x5a);
	memset(data, 0, 4096);
	assert_int_equal(request(&g, 0, 100, 4096, 1, true), 0);
	assert_int_equal(data[4095], 0x5a);
	/* Flush; GET_ID answers the serial (20 bytes at most). */
	assert_int_equal(request(&g, 4, 0, 0, 0, false), 0);
	assert_int_equal(request(&g, 8, 0, 20, 1, true), 0);
	assert_memory_equal(data, "vela-serial-01234567", 20);
	/* Write-zeroes one range: sectors 100..107 read as zeros again. */
	uint64_t sec = 100;
	uint32_t cnt = 8, fl = 0;
	memcpy(data, &sec, 8);
	memcpy(data + 8, &cnt, 4);
	memcpy(data + 12, &fl, 4);
	assert_int_equal(request(&g, 13, 0, 16, 1, false), 0);
	assert_int_equal(blk_disk_pread(disk, buf, 4096, 100 * 512), 0);
	assert_int_equal(buf[0], 0);
	/* Refusals: past the end, a read into device-readable memory, an
	 * unknown request type, a write of a partial sector. */
	assert_int_equal(request(&g, 0, 2048, 512, 1, true), 1);
	assert_int_equal(request(&g, 0, 0, 512, 1, false), 1);
	assert_int_equal(request(&g, 99, 0, 512, 1, true), 2);
	assert_int_equal(request(&g, 1, 0, 100, 1, false), 1);
	guest_stop(&g);
}

static void config_space(void **state)
{
	(void)state;
	struct guest g;
	guest_start(&g);
	uint8_t p[12 + 60] = { 0 }, reply[BLK_VHOST_MAX_MSG];
	size_t rlen;
	uint32_t off = 0, size = 60;
	memcpy(p, &off, 4);
	memcpy(p + 4, &size, 4);
	assert_int_equal(msg(&g, 24, 0, p, sizeof p, NULL, 0, reply, &rlen), 0);
	assert_int_equal(rlen, 12 + 12 + 60);
	uint64_t capacity;
	memcpy(&capacity, reply + 24, 8);
	assert_int_equal(capacity, (1 << 20) / 512);
	uint16_t nq;
	memcpy(&nq, reply + 24 + 34, 2);
	assert_int_equal(nq, 2);
	/* Out of range config access ends the connection. */
	off = 250;
	memcpy(p, &off, 4);
	assert_true(msg(&g, 24, 0, p, sizeof p, NULL, 0, reply, &rlen) < 0);
	guest_stop(&g);
}

static void hostile_front_end(void **state)
{
	(void)state;
	struct guest g;
	guest_start(&g);
	/* A region bigger than its memfd, a region count without descriptors,
	 * unknown messages, an unoffered feature, a ring index out of range,
	 * a ring size that is not a power of two, truncated payloads. */
	assert_true(set_mem(&g, MEM_SIZE * 4, 0) < 0);
	assert_true(set_mem(&g, MEM_SIZE, MEM_SIZE) < 0);
	uint8_t p[40] = { 1 };
	assert_true(msg(&g, 5, 0, p, sizeof p, NULL, 0, NULL, NULL) < 0);
	assert_true(msg(&g, 99, 0, NULL, 0, NULL, 0, NULL, NULL) < 0);
	assert_true(msg_u64(&g, 2, 1ull << 60) < 0);
	assert_true(msg_state(&g, 8, 7, 16) < 0);
	assert_true(msg_state(&g, 8, 1, 12) < 0);
	assert_true(msg(&g, 8, 0, p, 4, NULL, 0, NULL, NULL) < 0);
	/* With REPLY_ACK asked for, a failure is answered, not fatal. */
	uint8_t reply[BLK_VHOST_MAX_MSG];
	size_t rlen;
	uint32_t st[2] = { 7, 16 };
	assert_int_equal(msg(&g, 8, 1u << 3, st, 8, NULL, 0, reply, &rlen), 0);
	assert_int_equal(rlen, 20);
	assert_int_equal(reply[12], 1);
	/* Ring addresses outside guest memory: the queue does not start. */
	assert_int_equal(msg_state(&g, 11, 1, 0), 0);   /* GET_VRING_BASE stops ring 1 */
	assert_int_equal(msg_state(&g, 8, 1, QSIZE), 0);
	uint64_t addr[5] = { 1, GUEST_UVA + MEM_SIZE, GUEST_UVA + USED, GUEST_UVA + AVAIL, 0 };
	assert_int_equal(msg(&g, 9, 0, addr, 40, NULL, 0, NULL, NULL), 0);
	assert_int_equal(msg_state(&g, 18, 1, 1), 0);
	int kick = eventfd(0, 0);
	uint64_t idx = 1;
	assert_true(msg(&g, 12, 0, &idx, 8, &kick, 1, NULL, NULL) < 0);
	/* The memory and queue 0 still work. */
	assert_int_equal(request(&g, 0, 8, 512, 1, true), 0);
	guest_stop(&g);
}

static void hostile_guest(void **state)
{
	(void)state;
	struct guest g;
	guest_start(&g);
	/* A descriptor loop: 0 -> 1 -> 0 ... dropped, the queue goes on. */
	uint8_t *d = g.mem + DESC;
	uint64_t a = DATA;
	uint32_t len = 16;
	uint16_t fl = 1, n1 = 1, n0 = 0;
	memcpy(d, &a, 8); memcpy(d + 8, &len, 4); memcpy(d + 12, &fl, 2); memcpy(d + 14, &n1, 2);
	memcpy(d + 16, &a, 8); memcpy(d + 24, &len, 4); memcpy(d + 28, &fl, 2); memcpy(d + 30, &n0, 2);
	post(&g, 0);
	assert_int_equal(blk_vhost_session_poll_queue(g.s, 0), 0);
	assert_int_equal(used_idx(&g), 1);
	/* A buffer outside guest memory and a head out of range: dropped. */
	g.next_desc = 2;
	unsigned h = add_desc(&g, MEM_SIZE - 8, 16, 0);
	post(&g, h);
	post(&g, 1000);
	assert_int_equal(blk_vhost_session_poll_queue(g.s, 0), 0);
	assert_int_equal(used_idx(&g), 2);
	/* Nested indirect tables are refused. */
	uint8_t *t = g.mem + DATA + 0x4000;
	uint64_t ta = DATA + 0x4000;
	uint32_t tl = 16;
	uint16_t fi = 4;
	memcpy(t, &ta, 8); memcpy(t + 8, &tl, 4); memcpy(t + 12, &fi, 2);
	h = add_desc(&g, ta, 16, 4);
	post(&g, h);
	assert_int_equal(blk_vhost_session_poll_queue(g.s, 0), 0);
	assert_int_equal(used_idx(&g), 3);
	/* An indirect request done right works. */
	uint8_t *hdr = g.mem + DATA;
	memset(hdr, 0, 16);
	uint64_t sector = 8;
	memcpy(hdr + 8, &sector, 8);
	uint64_t ents[3][2] = { { DATA, 16 | (1ull << 32) | (1ull << 48) },
				{ DATA + 0x1000, 512 | (3ull << 32) | (2ull << 48) },
				{ DATA + 0x800, 1 | (2ull << 32) } };
	memcpy(t, ents, sizeof ents);
	h = add_desc(&g, ta, sizeof ents, 4);
	post(&g, h);
	assert_int_equal(blk_vhost_session_poll_queue(g.s, 0), 0);
	assert_int_equal(used_idx(&g), 4);
	assert_int_equal(g.mem[DATA + 0x800], 0);
	assert_memory_equal(g.mem + DATA + 0x1000, "hello", 5);
	/* An avail index far ahead of the ring: the queue stops for good. */
	g.avail_idx += 1000;
	memcpy(g.mem + AVAIL + 2, &g.avail_idx, 2);
	assert_true(blk_vhost_session_poll_queue(g.s, 0) < 0);
	guest_stop(&g);
}

/* Queue 1 with its used ring on top of its avail ring and a used index
 * ahead: every completion the back-end writes is a new request.  Polling
 * must come back (with 1: more) instead of serving forever. */
static void self_feeding_ring(void **state)
{
	(void)state;
	struct guest g;
	guest_start(&g);
	const uint64_t ring = 0x5000;
	assert_int_equal(msg_state(&g, 8, 1, QSIZE), 0);   /* SET_VRING_NUM */
	uint64_t addr[5] = { 1, GUEST_UVA + DESC, GUEST_UVA + ring, GUEST_UVA + ring, 0 };
	assert_int_equal(msg(&g, 9, 0, addr, 40, NULL, 0, NULL, NULL), 0);
	assert_int_equal(msg_state(&g, 10, 1, 0), 0);      /* SET_VRING_BASE */
	uint16_t ahead = 3;
	memcpy(g.mem + ring + 2, &ahead, 2);
	int fd = eventfd(0, EFD_NONBLOCK);
	uint64_t idx = 1;
	assert_int_equal(msg(&g, 13, 0, &idx, 8, &fd, 1, NULL, NULL), 0);   /* CALL */
	int kick = eventfd(0, 0);
	assert_int_equal(msg(&g, 12, 0, &idx, 8, &kick, 1, NULL, NULL), 0); /* KICK */
	assert_int_equal(msg_state(&g, 18, 1, 1), 0);      /* SET_VRING_ENABLE */
	assert_int_equal(blk_vhost_session_poll_queue(g.s, 1), 1);
	assert_int_equal(blk_vhost_session_poll_queue(g.s, 1), 1);
	/* Queue 0 is not held up by it. */
	assert_int_equal(request(&g, 0, 8, 512, 1, true), 0);
	guest_stop(&g);
}

/* Over a real socket with queue threads: kick, and the answer comes. */
struct conn {
	int fd;
	int result;
};

static void *serve(void *arg)
{
	struct conn *c = arg;
	struct blk_vhost_opts o = { .num_queues = 1 };
	c->result = blk_vhost_serve_fd(c->fd, disk, &o);
	return NULL;
}

static void send_msg(int fd, uint32_t req, const void *payload, uint32_t size, int pass_fd)
{
	uint8_t buf[256];
	uint32_t f = 1;
	memcpy(buf, &req, 4);
	memcpy(buf + 4, &f, 4);
	memcpy(buf + 8, &size, 4);
	memcpy(buf + 12, payload, size);
	struct iovec iov = { buf, 12 + size };
	union {
		char b[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (pass_fd >= 0) {
		mh.msg_control = ctl.b;
		mh.msg_controllen = sizeof ctl.b;
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
	}
	assert_int_equal(sendmsg(fd, &mh, 0), (ssize_t)(12 + size));
}

static void threaded_queue_over_a_socket(void **state)
{
	(void)state;
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	struct conn c = { .fd = sv[0] };
	pthread_t t;
	pthread_create(&t, NULL, serve, &c);
	int memfd = memfd_create("guest", 0);
	assert_int_equal(ftruncate(memfd, MEM_SIZE), 0);
	uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	uint64_t features = 1ull << 32;
	send_msg(sv[1], 2, &features, 8, -1);
	uint8_t p[40] = { 0 };
	uint32_t n = 1;
	uint64_t size = MEM_SIZE, uva = GUEST_UVA;
	memcpy(p, &n, 4);
	memcpy(p + 16, &size, 8);
	memcpy(p + 24, &uva, 8);
	send_msg(sv[1], 5, p, sizeof p, memfd);
	uint32_t st[2] = { 0, QSIZE };
	send_msg(sv[1], 8, st, 8, -1);
	uint64_t addr[5] = { 0, GUEST_UVA + DESC, GUEST_UVA + USED, GUEST_UVA + AVAIL, 0 };
	send_msg(sv[1], 9, addr, 40, -1);
	int call = eventfd(0, 0), kick = eventfd(0, 0);
	uint64_t idx = 0;
	send_msg(sv[1], 13, &idx, 8, call);
	send_msg(sv[1], 12, &idx, 8, kick);
	/* A read of sector 8 in one go: header, data, status. */
	uint64_t desc[3][2] = { { DATA, 16 | (1ull << 32) | (1ull << 48) },
				{ DATA + 0x1000, 512 | (3ull << 32) | (2ull << 48) },
				{ DATA + 0x800, 1 | (2ull << 32) } };
	memcpy(mem + DESC, desc, sizeof desc);
	uint64_t sector = 8;
	memcpy(mem + DATA + 8, &sector, 8);
	mem[DATA + 0x800] = 0xff;
	uint16_t one = 1;
	memcpy(mem + AVAIL + 2, &one, 2);
	uint64_t v = 1;
	assert_int_equal(write(kick, &v, 8), 8);
	assert_int_equal(read(call, &v, 8), 8);   /* blocks until the answer */
	assert_int_equal(mem[DATA + 0x800], 0);
	assert_memory_equal(mem + DATA + 0x1000, "hello", 5);
	close(sv[1]);
	pthread_join(t, NULL);
	assert_int_equal(c.result, 0);
	close(sv[0]);
	close(call);
	close(kick);
	munmap(mem, MEM_SIZE);
	close(memfd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(requests_from_the_guest),
		cmocka_unit_test(config_space),
		cmocka_unit_test(hostile_front_end),
		cmocka_unit_test(hostile_guest),
		cmocka_unit_test(self_feeding_ring),
		cmocka_unit_test(threaded_queue_over_a_socket),
	};
	return cmocka_run_group_tests_name("vhost", tests, setup, teardown);
}
