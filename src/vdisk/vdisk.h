/*
 * vdisk.h - libvdisk: virtual disk images and chains of them.
 *
 * A disk is a chain: the image you open on top, then its parent (the image it
 * is a redo log / delta of), and so on down to a base.  Reads fall through
 * unallocated ranges to the parent (or zeros at the bottom); writes go to the
 * top image only.  Every format is a backend (struct vdisk_format in
 * vdisk-format.h, private to this folder); nothing here depends on which.
 *
 * Thread safety: one struct vdisk may be used from several threads at once.
 * Ownership: functions returning strings or structs say who frees them.
 */
#ifndef VELA_VDISK_H
#define VELA_VDISK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VDISK_SECTOR 512u
/* Deepest chain accepted (the classic limit was 2). */
#define VDISK_MAX_CHAIN 255
/* Largest virtual size accepted from any header: 64 TiB (> the 62 TB minimum). */
#define VDISK_MAX_SIZE (64ull << 40)

struct vdisk;

enum vdisk_open_flags {
	VDISK_OPEN_RDONLY = 1 << 0,
	VDISK_OPEN_NO_PARENT = 1 << 1,   /* open the top image alone (inspection) */
	/* Data I/O bypasses the host page cache (O_DIRECT) when a request is
	 * 512-byte aligned in memory, offset and length; metadata stays cached.
	 * File systems without O_DIRECT (tmpfs) quietly keep the cache. */
	VDISK_OPEN_DIRECT = 1 << 2,
	/* Through the page cache, sequential write streams are pushed to the
	 * device while they are written, so a flush finds little left to do
	 * (writebehind.c).  This turns that off (benchmarks compare). */
	VDISK_OPEN_NO_WRITE_BEHIND = 1 << 3,
};

/* Open path and its parents.  Errors name the file: a missing parent
 * (VELA_E_CHAIN), a parent whose content changed (VELA_E_PARENT), a loop
 * (VELA_E_LOOP), a corrupt header (VELA_E_CORRUPT), an unknown format
 * (VELA_E_FORMAT). */
int vdisk_open(const char *path, unsigned flags, struct vdisk **out);
/* Flush and close; returns the flush result. */
int vdisk_close(struct vdisk *d);

uint64_t vdisk_size(const struct vdisk *d);
/* Bytes per allocation unit of the top image (grain, cluster, block), >= 512. */
uint32_t vdisk_granularity(const struct vdisk *d);
/* Number of images in the chain (1 = no parent). */
unsigned vdisk_depth(const struct vdisk *d);

/* I/O at any offset and length inside the disk. */
int vdisk_pread(struct vdisk *d, void *buf, size_t len, uint64_t off);
int vdisk_pwrite(struct vdisk *d, const void *buf, size_t len, uint64_t off);
/* Make [off, off+len) read as zeros; whole allocation units whose parent
 * chain reads zero there too are dropped (space goes back to the host). */
int vdisk_write_zeroes(struct vdisk *d, uint64_t off, uint64_t len);
/* Make every completed write durable (data first, then metadata). */
int vdisk_flush(struct vdisk *d);

enum vdisk_status {
	VDISK_DATA,     /* allocated in the image at `depth` */
	VDISK_ZERO,     /* reads as zeros (explicit zero, or unallocated everywhere) */
};

struct vdisk_extent_status {
	enum vdisk_status status;
	unsigned depth;     /* VDISK_DATA: 0 = top image, 1 = its parent, ... */
	uint64_t len;       /* bytes from the queried offset with this status */
};

/* Allocation status of [off, off+len): how far from off the status holds. */
int vdisk_block_status(struct vdisk *d, uint64_t off, uint64_t len, struct vdisk_extent_status *out);

/* The images of the chain whose top is path, top first, as real paths
 * (NULL-terminated array in *paths, count in *n; free with vdisk_chain_free). */
int vdisk_chain_paths(const char *path, char ***paths, size_t *n);
void vdisk_chain_free(char **paths);

/* ------------------------------------------------------- partitions */

/* The partition table in a disk's content (MBR with logical partitions,
 * or GPT), for taking files out of a disk without running its guest. */
struct vdisk_partition {
	unsigned number;        /* as Linux numbers them: MBR 1-4 primary, 5.. logical; GPT entry + 1 */
	uint64_t offset, length;   /* bytes */
	char type[40];          /* "mbr:0x83", or a GPT partition type GUID in lower case */
	bool bootable;
};
#define VDISK_MAX_PARTITIONS 128

typedef int (*vdisk_read_fn)(void *opaque, void *buf, size_t len, uint64_t off);
/* Parse the table of a disk of disk_size bytes read through rd: at most max
 * entries into out, the count in *n (0: no table, which is no error).  A
 * table pointing outside the disk, a GPT failing its CRC32s or an
 * extended-record chain that goes backwards is VELA_E_CORRUPT. */
int vdisk_partitions_parse(vdisk_read_fn rd, void *opaque, uint64_t disk_size, struct vdisk_partition *out,
			   size_t max, size_t *n);
int vdisk_partitions(struct vdisk *d, struct vdisk_partition *out, size_t max, size_t *n);

/* ------------------------------------------------------------- info */

struct vdisk_info {
	char *path;            /* as opened */
	char *format;          /* "vmdk", "raw", ... */
	char *subformat;       /* "monolithicSparse", ... or "" */
	uint64_t size;         /* virtual bytes */
	uint64_t allocated;    /* bytes the image's files take on the host */
	uint32_t granularity;
	char *parent;          /* resolved parent path, NULL if none */
	char *adapter;         /* VMDK ddb.adapterType, or NULL */
	uint32_t cylinders, heads, sectors;
	bool read_only;
	struct vdisk_info *backing;   /* parent's info, NULL at the base */
};
/* Describe the whole chain; free with vdisk_info_free. */
int vdisk_get_info(struct vdisk *d, struct vdisk_info **out);
void vdisk_info_free(struct vdisk_info *info);

/* ---------------------------------------------------------- create */

enum vdisk_type {
	VDISK_TYPE_RAW,
	VDISK_TYPE_VMDK_MONOLITHIC_SPARSE,
	VDISK_TYPE_VMDK_MONOLITHIC_FLAT,
	VDISK_TYPE_VMDK_2GB_SPARSE,
	VDISK_TYPE_VMDK_2GB_FLAT,
	VDISK_TYPE_VHD_DYNAMIC,
	VDISK_TYPE_VHD_FIXED,
	VDISK_TYPE_QCOW2,
	VDISK_TYPE_VMDK_STREAM,
	VDISK_TYPE__COUNT,
};

enum vdisk_adapter { VDISK_ADAPTER_IDE, VDISK_ADAPTER_LSILOGIC, VDISK_ADAPTER_BUSLOGIC, VDISK_ADAPTER_VIRTIO };

struct vdisk_create_opts {
	enum vdisk_type type;
	uint64_t size;               /* bytes; rounded up to 512 */
	enum vdisk_adapter adapter;  /* VMDK geometry and ddb.adapterType */
	const char *parent;          /* create a child (redo log) of this disk; the
	                              * child's format follows the parent's */
};

int vdisk_type_parse(const char *name, enum vdisk_type *out);
const char *vdisk_type_name(enum vdisk_type t);
int vdisk_adapter_parse(const char *name, enum vdisk_adapter *out);

/* Create an image.  Existing files are never overwritten (VELA_E_EXISTS). */
int vdisk_create(const char *path, const struct vdisk_create_opts *opts);

/* CHS geometry of a disk of `sectors` for an adapter (IDE 16/63; SCSI 64/32
 * up to 1 GB, 128/32 up to 2 GB, 255/63 above). */
void vdisk_geometry(uint64_t sectors, enum vdisk_adapter a, uint32_t *c, uint32_t *h, uint32_t *s);

/* ------------------------------------------------------ operations */

typedef void (*vdisk_progress_cb)(uint64_t done, uint64_t total, void *opaque);

/* Copy the whole content of src (any chain) into a new image; only
 * allocated, non-zero data is written (sparse-aware). */
int vdisk_convert(const char *src, const char *dst, const struct vdisk_create_opts *opts,
		  vdisk_progress_cb progress, void *opaque);
/* The same, handing every non-zero piece it writes to data(off, p, len),
 * in increasing offset order (a checksum of the content as it goes). */
typedef void (*vdisk_data_cb)(uint64_t off, const void *p, size_t len, void *opaque);
int vdisk_convert_data(const char *src, const char *dst, const struct vdisk_create_opts *opts,
		       vdisk_progress_cb progress, void *opaque, vdisk_data_cb data, void *data_opaque);

/* Put a new empty child on top of path; the new file's name is returned in
 * *child (caller frees).  O(1) in the disk's size. */
int vdisk_addredo(const char *path, char **child);

/* The name a child of parent gets: "<dir>/<stem>-<tag>.<ext>", the extension
 * following the parent's format; dir NULL = no folder part. */
int vdisk_child_name(const char *parent, const char *dir, const char *tag, char **out);

/* Merge the top image of path into its parent, then remove the child file
 * only if remove_child.  Only what the child allocated is copied. */
int vdisk_commit(const char *path, bool remove_child, vdisk_progress_cb progress, void *opaque);

/* Merge the image `level` steps below path (0 = path itself) into its
 * parent; the image above it is then re-pointed at that parent. */
int vdisk_commit_level(const char *path, unsigned level, bool remove_child, vdisk_progress_cb progress, void *opaque);

/* Point the child disk at parent (e.g. after the parent moved).  Refused with
 * VELA_E_PARENT when parent is not the disk the child was made from, unless
 * force. */
int vdisk_relink(const char *child, const char *parent, bool force);

/* Grow the disk to new_size bytes (VHD sizes round up to their geometry). */
int vdisk_extend(const char *path, uint64_t new_size);

/* Drop allocation units of the top image that read all-zero (where the
 * chain below reads zero too) and give their space back; *reclaimed gets
 * the bytes dropped. */
int vdisk_compact(const char *path, uint64_t *reclaimed);

/* Delete a disk: every file it is made of.  Refused with VELA_E_BUSY when a
 * disk in the same folder uses it as its parent, unless force. */
int vdisk_delete(const char *path, bool force);

/* Rename a disk (and, for a VMDK with separate extent files, its extents);
 * children in the same folder are re-pointed at the new name. */
int vdisk_rename(const char *from, const char *to);

struct vdisk_check_report {
	uint64_t errors;         /* metadata pointing where it must not */
	uint64_t leaks;          /* allocated space nothing points to */
	uint64_t repaired;
	char *first_problem;     /* or NULL; caller frees */
};
/* Check the top image's metadata; with repair, fix leaks. */
int vdisk_check(const char *path, bool repair, struct vdisk_check_report *report);

#endif /* VELA_VDISK_H */
