/* Unit tests: src/blk (NBD server) against crafted, partly hostile clients. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>

#include "common.h"
#include "blk.h"
#include "vdisk.h"

static char path[64];
static struct blk_disk *disk;

static int setup(void **state)
{
	(void)state;
	snprintf(path, sizeof path, "/tmp/vela-blk-%d.raw", (int)getpid());
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

struct server {
	int fd;
	struct blk_export exp;
	int result;
};

static void *serve(void *arg)
{
	struct server *s = arg;
	s->result = blk_nbd_serve_fd(s->fd, &s->exp);
	shutdown(s->fd, SHUT_RDWR);
	return NULL;
}

static void put32(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v; }
static void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)(v >> 32)); put32(p + 4, (uint32_t)v); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

static void recv_n(int fd, void *buf, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t k = recv(fd, (char *)buf + got, n - got, 0);
		assert_true(k > 0);
		got += (size_t)k;
	}
}

/* Negotiate with EXPORT_NAME (simple replies); returns the client fd. */
static int connect_simple(struct server *s, pthread_t *t, bool read_only)
{
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	s->fd = sv[0];
	s->exp = (struct blk_export){ .disk = disk, .name = "t", .read_only = read_only };
	pthread_create(t, NULL, serve, s);
	int c = sv[1];
	uint8_t greet[18];
	recv_n(c, greet, sizeof greet);
	assert_memory_equal(greet, "NBDMAGICIHAVEOPT", 16);
	uint8_t msg[4 + 16 + 1];
	put32(msg, 3);
	memcpy(msg + 4, "IHAVEOPT", 8);
	put32(msg + 12, 1);        /* EXPORT_NAME */
	put32(msg + 16, 1);
	msg[20] = 't';
	assert_int_equal(send(c, msg, sizeof msg, 0), (ssize_t)sizeof msg);
	uint8_t info[10];
	recv_n(c, info, sizeof info);
	assert_int_equal(get32(info + 4), 1 << 20);   /* low half of the size */
	return c;
}

static void request(int c, uint16_t type, uint64_t off, uint32_t len)
{
	uint8_t r[28] = { 0 };
	put32(r, 0x25609513);
	r[6] = (uint8_t)(type >> 8);
	r[7] = (uint8_t)type;
	put64(r + 8, 0x1234);
	put64(r + 16, off);
	put32(r + 24, len);
	assert_int_equal(send(c, r, sizeof r, 0), 28);
}

static uint32_t reply_error(int c)
{
	uint8_t h[16];
	recv_n(c, h, sizeof h);
	assert_int_equal(get32(h), 0x67446698);
	return get32(h + 4);
}

static void reads_writes_and_refusals(void **state)
{
	(void)state;
	struct server s;
	pthread_t t;
	int c = connect_simple(&s, &t, false);

	request(c, 0, 4096, 5);                          /* a good read */
	assert_int_equal(reply_error(c), 0);
	char data[5];
	recv_n(c, data, 5);
	assert_memory_equal(data, "hello", 5);

	request(c, 0, (1 << 20) - 2, 5);                 /* past the end */
	assert_int_equal(reply_error(c), 22);
	request(c, 0, UINT64_MAX - 1, 5);                /* offset near 2^64 */
	assert_int_equal(reply_error(c), 22);
	request(c, 0, 0, (64u << 20));                   /* bigger than the limit (and the disk) */
	assert_int_equal(reply_error(c), 22);
	request(c, 99, 0, 0);                            /* unknown command */
	assert_int_equal(reply_error(c), 22);
	request(c, 7, 0, 4096);                          /* block status without a context */
	assert_int_equal(reply_error(c), 22);
	request(c, 1, 8192, 3);                          /* a good write */
	assert_int_equal(send(c, "xyz", 3, 0), 3);
	assert_int_equal(reply_error(c), 0);
	request(c, 1, (1 << 20) - 1, 3);                 /* write past the end: payload read, refused */
	assert_int_equal(send(c, "xyz", 3, 0), 3);
	assert_int_equal(reply_error(c), 22);
	request(c, 3, 0, 0);                             /* flush */
	assert_int_equal(reply_error(c), 0);
	request(c, 1, 0, 0xffffffffu);                   /* a write whose payload cannot be trusted */
	pthread_join(t, NULL);
	assert_int_equal(s.result, -VELA_E_PROTOCOL);    /* the server hangs up */
	close(c);

	char buf[3];
	assert_int_equal(blk_disk_pread(disk, buf, 3, 8192), 0);
	assert_memory_equal(buf, "xyz", 3);
}

static void read_only_export_and_bad_magic(void **state)
{
	(void)state;
	struct server s;
	pthread_t t;
	int c = connect_simple(&s, &t, true);
	request(c, 1, 0, 4);
	assert_int_equal(send(c, "abcd", 4, 0), 4);
	assert_int_equal(reply_error(c), 1);             /* EPERM */
	request(c, 6, 0, 4096);                          /* write zeroes */
	assert_int_equal(reply_error(c), 1);
	uint8_t junk[28] = "this is not a request!!!!!!";
	assert_int_equal(send(c, junk, sizeof junk, 0), 28);
	pthread_join(t, NULL);
	assert_int_equal(s.result, -VELA_E_PROTOCOL);
	close(c);
}

static void bad_handshakes(void **state)
{
	(void)state;
	/* Old-style client flags, then an unknown export, then garbage options. */
	static const struct { const char *bytes; size_t n; } cases[] = {
		{ "\x00\x00\x00\x00", 4 },
		{ "\x00\x00\x00\x01IHAVEOPT\x00\x00\x00\x01\x00\x00\x00\x03" "bad", 23 },
		{ "\x00\x00\x00\x01NOTOPTIONxxxxxxx", 20 },
		{ "\x00\x00\x00\x01IHAVEOPT\x00\x00\x00\x07\xff\xff\xff\xff", 20 },  /* huge INFO, then EOF */
	};
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		int sv[2];
		assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
		struct server s = { .fd = sv[0], .exp = { .disk = disk, .name = "t" } };
		pthread_t t;
		pthread_create(&t, NULL, serve, &s);
		uint8_t greet[18];
		recv_n(sv[1], greet, sizeof greet);
		assert_int_equal(send(sv[1], cases[i].bytes, cases[i].n, 0), (ssize_t)cases[i].n);
		shutdown(sv[1], SHUT_WR);
		char sink[4096];
		while (recv(sv[1], sink, sizeof sink, 0) > 0)
			;
		pthread_join(t, NULL);
		assert_true(s.result < 0);                    /* refused, not crashed or hung */
		close(sv[0]);
		close(sv[1]);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(reads_writes_and_refusals),
		cmocka_unit_test(read_only_export_and_bad_magic),
		cmocka_unit_test(bad_handshakes),
	};
	return cmocka_run_group_tests_name("blk", tests, setup, teardown);
}
