/* libFuzzer target: opening a disk image of any format (VMDK sparse and
 * streamOptimized headers, grain directories and tables, text descriptors;
 * VHD footers, dynamic headers and BATs; qcow2 headers, extensions, L1/L2
 * tables and refcounts; raw as the fallback), then reading it and walking
 * its allocation map.  The seeds (one image per format) are made by rule in
 * tests/run-all.sh.  The input becomes a file. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "vdisk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char path[64];
	if (!path[0])
		snprintf(path, sizeof path, "/tmp/vela-fuzz-vdisk-%d.img", (int)getpid());
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		return 0;
	if (write(fd, data, size) != (ssize_t)size) {
		close(fd);
		return 0;
	}
	close(fd);
	struct vdisk *d = NULL;
	if (vdisk_open(path, VDISK_OPEN_RDONLY | VDISK_OPEN_NO_PARENT, &d) == 0) {
		uint64_t sz = vdisk_size(d), off = 0;
		char buf[65536];
		/* Bounded work per input: at most 64 status calls and reads. */
		for (int i = 0; i < 64 && off < sz; i++) {
			struct vdisk_extent_status es;
			if (vdisk_block_status(d, off, sz - off, &es) < 0)
				break;
			size_t n = es.len < sizeof buf ? (size_t)es.len : sizeof buf;
			if (vdisk_pread(d, buf, n, off) < 0)
				break;
			off += es.len;
		}
		struct vdisk_info *info;
		if (vdisk_get_info(d, &info) == 0)
			vdisk_info_free(info);
		vdisk_close(d);
	}
	return 0;
}
