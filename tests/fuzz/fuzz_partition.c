/* libFuzzer target: the partition table reader (MBR, the extended boot
 * record chain, GPT header and entry array) on a disk whose content is the
 * input.  The disk claims to be 16 times larger than the input, so entries
 * may point past the bytes given (they read as zeros) but still inside. */
#include <stdint.h>
#include <string.h>

#include "common.h"
#include "vdisk.h"

struct mem_disk {
	const uint8_t *data;
	size_t size;
};

static int read_mem(void *opaque, void *buf, size_t len, uint64_t off)
{
	const struct mem_disk *m = opaque;
	memset(buf, 0, len);
	if (off < m->size)
		memcpy(buf, m->data + off, len < m->size - off ? len : (size_t)(m->size - off));
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mem_disk m = { data, size };
	struct vdisk_partition parts[VDISK_MAX_PARTITIONS];
	size_t n = 0;
	if (vdisk_partitions_parse(read_mem, &m, (uint64_t)size * 16, parts, VDISK_MAX_PARTITIONS, &n) == 0) {
		for (size_t i = 0; i < n; i++)
			if (parts[i].offset + parts[i].length > (uint64_t)size * 16 || n > VDISK_MAX_PARTITIONS)
				__builtin_trap();   /* the reader promised entries inside the disk */
	}
	return 0;
}
