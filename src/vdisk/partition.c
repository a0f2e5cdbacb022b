/*
 * partition.c - the partition table of a disk's content: MBR (primary
 * entries and the logical ones of an extended partition) and GPT.
 *
 * What a guest wrote is hostile input here: every offset is checked
 * against the disk's size before it is used, the chain of extended boot
 * records must move forward (so a loop ends), the GPT header and entry
 * array must match their CRC32s, and the number of partitions is capped.
 * A disk with no table (a whole-disk file system, a blank disk) has no
 * partitions and is not an error.
 */
#include "common.h"
#include "vdisk.h"

#include <string.h>
#include <zlib.h>

#define MBR_SIG_OFF 510
#define MBR_ENTRIES_OFF 446
#define MBR_TYPE_GPT_PROTECTIVE 0xee
/* A GPT entry array larger than this is not one any tool writes. */
#define GPT_MAX_ARRAY (1u << 20)
/* Logical partitions in one extended partition (Linux numbers them 5..). */
#define MBR_MAX_LOGICAL 124

struct part_list {
	struct vdisk_partition *out;
	size_t max, n;
	uint64_t disk_size;
};

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
	return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static bool is_extended(uint8_t type)
{
	return type == 0x05 || type == 0x0f || type == 0x85;
}

static int add(struct part_list *l, unsigned number, uint64_t off, uint64_t len, const char *type, bool boot)
{
	if (len == 0)
		return 0;
	if (off > l->disk_size || len > l->disk_size - off)
		return vela_error(VELA_E_CORRUPT,
				  "partition %u: %llu bytes at %llu reach past the end of the disk (%llu bytes)", number,
				  (unsigned long long)len, (unsigned long long)off, (unsigned long long)l->disk_size);
	if (l->n == l->max)
		return vela_error(VELA_E_LIMIT, "more than %zu partitions", l->max);
	struct vdisk_partition *p = &l->out[l->n++];
	memset(p, 0, sizeof *p);
	p->number = number;
	p->offset = off;
	p->length = len;
	p->bootable = boot;
	snprintf(p->type, sizeof p->type, "%s", type);
	return 0;
}

/* A GUID as text: the first three fields are little-endian on disk. */
static void guid_text(const uint8_t *g, char *out, size_t size)
{
	snprintf(out, size, "%08x-%04x-%04x-%02x%02x-%02x%02x%02x%02x%02x%02x", le32(g),
		 (unsigned)(g[4] | g[5] << 8), (unsigned)(g[6] | g[7] << 8), g[8], g[9], g[10], g[11], g[12], g[13],
		 g[14], g[15]);
}

static int parse_gpt(vdisk_read_fn rd, void *opaque, struct part_list *l)
{
	uint8_t hdr[VDISK_SECTOR];
	int r;
	if (l->disk_size < 3 * VDISK_SECTOR)
		return vela_error(VELA_E_CORRUPT, "GPT: the disk is too small for one");
	if ((r = rd(opaque, hdr, sizeof hdr, VDISK_SECTOR)) < 0)
		return vela_error_context(r, "GPT header");
	if (memcmp(hdr, "EFI PART", 8) != 0)
		return vela_error(VELA_E_CORRUPT, "GPT: the protective MBR has no GPT header behind it");
	uint32_t hsize = le32(hdr + 12);
	if (hsize < 92 || hsize > sizeof hdr)
		return vela_error(VELA_E_CORRUPT, "GPT: header size %u", hsize);
	uint32_t want = le32(hdr + 16);
	memset(hdr + 16, 0, 4);
	if ((uint32_t)crc32(0, hdr, hsize) != want)
		return vela_error(VELA_E_CORRUPT, "GPT: the header's CRC32 does not match");
	uint64_t array_lba = le64(hdr + 72);
	uint32_t count = le32(hdr + 80), esize = le32(hdr + 84), array_crc = le32(hdr + 88);
	if (esize < 128 || esize > 4096 || (esize & (esize - 1)) != 0)
		return vela_error(VELA_E_CORRUPT, "GPT: entry size %u", esize);
	if (count == 0 || (uint64_t)count * esize > GPT_MAX_ARRAY)
		return vela_error(VELA_E_CORRUPT, "GPT: %u entries of %u bytes", count, esize);
	size_t bytes = (size_t)count * esize;
	if (array_lba < 2 || array_lba > l->disk_size / VDISK_SECTOR ||
	    bytes > l->disk_size - array_lba * VDISK_SECTOR)
		return vela_error(VELA_E_CORRUPT, "GPT: the entry array at sector %llu is outside the disk",
				  (unsigned long long)array_lba);
	CLEANUP_FREE uint8_t *arr = xcalloc(1, bytes);
	if ((r = rd(opaque, arr, bytes, array_lba * VDISK_SECTOR)) < 0)
		return vela_error_context(r, "GPT entry array");
	if ((uint32_t)crc32(0, arr, (uInt)bytes) != array_crc)
		return vela_error(VELA_E_CORRUPT, "GPT: the entry array's CRC32 does not match");
	static const uint8_t unused[16];
	for (uint32_t i = 0; i < count; i++) {
		const uint8_t *e = arr + (size_t)i * esize;
		if (memcmp(e, unused, 16) == 0)
			continue;
		uint64_t first = le64(e + 32), last = le64(e + 40);
		if (last < first || last >= l->disk_size / VDISK_SECTOR)
			return vela_error(VELA_E_CORRUPT, "GPT entry %u: sectors %llu to %llu are not on the disk", i + 1,
					  (unsigned long long)first, (unsigned long long)last);
		char type[40];
		guid_text(e, type, sizeof type);
		/* Attribute bit 2: legacy BIOS bootable. */
		if ((r = add(l, i + 1, first * VDISK_SECTOR, (last - first + 1) * VDISK_SECTOR, type,
			     (le64(e + 48) & 4) != 0)) < 0)
			return r;
	}
	return 0;
}

/* The logical partitions: a chain of extended boot records, each holding
 * one partition (relative to itself) and the next record (relative to the
 * extended partition's start). */
static int parse_logical(vdisk_read_fn rd, void *opaque, struct part_list *l, uint64_t ext_start, uint64_t ext_len)
{
	uint64_t rel = 0;
	for (unsigned i = 0; i < MBR_MAX_LOGICAL; i++) {
		uint64_t ebr = ext_start + rel;
		uint8_t s[VDISK_SECTOR];
		if (rel >= ext_len || ebr > l->disk_size - VDISK_SECTOR)
			return vela_error(VELA_E_CORRUPT, "extended boot record at %llu is outside the extended partition",
					  (unsigned long long)ebr);
		int r = rd(opaque, s, sizeof s, ebr);
		if (r < 0)
			return vela_error_context(r, "extended boot record at %llu", (unsigned long long)ebr);
		if (s[MBR_SIG_OFF] != 0x55 || s[MBR_SIG_OFF + 1] != 0xaa)
			return vela_error(VELA_E_CORRUPT, "extended boot record at %llu has no signature",
					  (unsigned long long)ebr);
		const uint8_t *e = s + MBR_ENTRIES_OFF, *next = e + 16;
		if (e[4] != 0) {
			char type[16];
			snprintf(type, sizeof type, "mbr:0x%02x", e[4]);
			uint64_t off = ebr + (uint64_t)le32(e + 8) * VDISK_SECTOR;
			uint64_t len = (uint64_t)le32(e + 12) * VDISK_SECTOR;
			if (off < ebr || off - ext_start > ext_len || len > ext_len - (off - ext_start))
				return vela_error(VELA_E_CORRUPT, "logical partition %u is outside the extended partition", 5 + i);
			if ((r = add(l, 5 + i, off, len, type, e[0] == 0x80)) < 0)
				return r;
		}
		if (!is_extended(next[4]) || le32(next + 8) == 0)
			return 0;
		uint64_t nrel = (uint64_t)le32(next + 8) * VDISK_SECTOR;
		if (nrel <= rel)   /* only forward: a loop or a step back ends here as an error */
			return vela_error(VELA_E_CORRUPT, "extended boot record at %llu points back to %llu",
					  (unsigned long long)ebr, (unsigned long long)(ext_start + nrel));
		rel = nrel;
	}
	return vela_error(VELA_E_LIMIT, "more than %d logical partitions", MBR_MAX_LOGICAL);
}

int vdisk_partitions_parse(vdisk_read_fn rd, void *opaque, uint64_t disk_size, struct vdisk_partition *out,
			   size_t max, size_t *n)
{
	struct part_list l = { .out = out, .max = max, .disk_size = disk_size };
	*n = 0;
	if (disk_size < VDISK_SECTOR)
		return 0;
	uint8_t s[VDISK_SECTOR];
	int r = rd(opaque, s, sizeof s, 0);
	if (r < 0)
		return vela_error_context(r, "master boot record");
	if (s[MBR_SIG_OFF] != 0x55 || s[MBR_SIG_OFF + 1] != 0xaa)
		return 0;   /* no table */
	/* A file system's boot sector (FAT, NTFS) ends in 55 aa too; its bytes
	 * where the entries would be do not have the status bytes of one. */
	for (int i = 0; i < 4; i++) {
		uint8_t status = s[MBR_ENTRIES_OFF + 16 * i];
		if (status != 0 && status != 0x80)
			return 0;
	}
	for (int i = 0; i < 4; i++)
		if (s[MBR_ENTRIES_OFF + 16 * i + 4] == MBR_TYPE_GPT_PROTECTIVE)
			return (r = parse_gpt(rd, opaque, &l)) < 0 ? r : (*n = l.n, 0);
	bool seen_extended = false;
	for (int i = 0; i < 4; i++) {
		const uint8_t *e = s + MBR_ENTRIES_OFF + 16 * i;
		if (e[4] == 0)
			continue;
		uint64_t off = (uint64_t)le32(e + 8) * VDISK_SECTOR, len = (uint64_t)le32(e + 12) * VDISK_SECTOR;
		if (is_extended(e[4])) {
			/* A container, not a partition to read: its logical ones are. */
			if (seen_extended)
				return vela_error(VELA_E_CORRUPT, "more than one extended partition");
			seen_extended = true;
			if (off > disk_size || len > disk_size - off)
				return vela_error(VELA_E_CORRUPT, "the extended partition reaches past the end of the disk");
			if (len && (r = parse_logical(rd, opaque, &l, off, len)) < 0)
				return r;
			continue;
		}
		char type[16];
		snprintf(type, sizeof type, "mbr:0x%02x", e[4]);
		if ((r = add(&l, (unsigned)i + 1, off, len, type, e[0] == 0x80)) < 0)
			return r;
	}
	*n = l.n;
	return 0;
}

static int read_vdisk(void *opaque, void *buf, size_t len, uint64_t off)
{
	return vdisk_pread(opaque, buf, len, off);
}

int vdisk_partitions(struct vdisk *d, struct vdisk_partition *out, size_t max, size_t *n)
{
	return vdisk_partitions_parse(read_vdisk, d, vdisk_size(d), out, max, n);
}
