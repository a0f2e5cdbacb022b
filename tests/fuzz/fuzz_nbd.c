/* libFuzzer target: the NBD server's negotiation and request decoding, fed
 * an arbitrary byte stream as if from a client, against a small raw disk. */
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"
#include "blk.h"
#include "vdisk.h"

struct feed {
	int fd;
	const uint8_t *data;
	size_t size;
};

/* The "client": send the input, then read and drop whatever comes back. */
static void *client(void *arg)
{
	struct feed *f = arg;
	size_t off = 0;
	while (off < f->size) {
		ssize_t n = send(f->fd, f->data + off, f->size - off, MSG_NOSIGNAL);
		if (n <= 0)
			break;
		off += (size_t)n;
	}
	shutdown(f->fd, SHUT_WR);
	char buf[65536];
	while (recv(f->fd, buf, sizeof buf, 0) > 0)
		;
	return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct blk_disk *disk;
	if (!disk) {
		char path[64];
		snprintf(path, sizeof path, "/tmp/vela-fuzz-nbd-%d.raw", (int)getpid());
		int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
		if (fd < 0 || ftruncate(fd, 1 << 20) < 0 || pwrite(fd, "data", 4, 4096) != 4)
			abort();
		close(fd);
		if (blk_disk_open(path, false, &disk) < 0)
			abort();
	}
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		return 0;
	struct feed f = { sv[1], data, size };
	pthread_t t;
	pthread_create(&t, NULL, client, &f);
	struct blk_export exp = { .disk = disk, .name = "fuzz" };
	blk_nbd_serve_fd(sv[0], &exp);
	shutdown(sv[0], SHUT_RDWR);
	pthread_join(t, NULL);
	close(sv[0]);
	close(sv[1]);
	return 0;
}
