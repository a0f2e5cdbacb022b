/*
 * libFuzzer target: the vhost-user-blk back-end's message decoder and its
 * virtqueue walker together.  Input: a 16-bit length L, L bytes of guest
 * RAM content (rings, descriptors, requests), then front-end messages
 * (12-byte header + payload) as QEMU would send them.  Messages that carry
 * descriptors get real ones: the guest RAM memfd for memory tables, an
 * eventfd for kick/call/err.  After every message each queue is polled, as
 * a kick would.  The seed (corpus/vhost/start-and-read) negotiates, maps
 * the memory and serves one read request.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common.h"
#include "blk.h"

#define GUEST_RAM (64u << 10)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct blk_disk *disk;
	static int memfd = -1;
	static uint8_t *ram;
	if (!disk) {
		vela_log_set_level(VELA_LOG_ERROR + 1);
		char path[64];
		snprintf(path, sizeof path, "/tmp/vela-fuzz-vhost-%d.raw", (int)getpid());
		int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
		if (fd < 0 || ftruncate(fd, 1 << 20) < 0 || pwrite(fd, "data", 4, 4096) != 4)
			abort();
		close(fd);
		if (blk_disk_open(path, false, &disk) < 0)
			abort();
		memfd = memfd_create("fuzz-guest", MFD_CLOEXEC);
		if (memfd < 0 || ftruncate(memfd, GUEST_RAM) < 0)
			abort();
		ram = mmap(NULL, GUEST_RAM, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
		if (ram == MAP_FAILED)
			abort();
	}
	if (size < 2)
		return 0;
	size_t memlen = (size_t)data[0] | (size_t)data[1] << 8;
	data += 2;
	size -= 2;
	if (memlen > size)
		memlen = size;
	if (memlen > GUEST_RAM)
		memlen = GUEST_RAM;
	memset(ram, 0, GUEST_RAM);
	memcpy(ram, data, memlen);
	data += memlen;
	size -= memlen;

	struct blk_vhost_opts o = { .num_queues = 2, .serial = "fuzz", .no_threads = true };
	struct blk_vhost_session *s;
	if (blk_vhost_session_new(disk, &o, &s) < 0)
		abort();
	static uint8_t reply[BLK_VHOST_MAX_MSG];
	while (size >= 12) {
		uint32_t req, msize;
		memcpy(&req, data, 4);
		memcpy(&msize, data + 8, 4);
		size_t len = 12 + (msize < size - 12 ? msize : size - 12);
		int fds[8];
		size_t nfds = 0;
		if (req == 5 && len >= 16) {
			uint32_t n;
			memcpy(&n, data + 12, 4);
			for (uint32_t i = 0; i < n && i < 8; i++)
				fds[nfds++] = dup(memfd);
		} else if (req >= 12 && req <= 14 && len >= 20 && !(data[13] & 1)) {
			fds[nfds++] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		}
		size_t rlen;
		int r = blk_vhost_session_handle(s, data, len, fds, nfds, reply, &rlen);
		data += len;
		size -= len;
		if (r < 0)
			break;   /* the connection would end here */
		for (unsigned q = 0; q < o.num_queues; q++)
			blk_vhost_session_poll_queue(s, q);
	}
	blk_vhost_session_free(s);
	return 0;
}
