/*
 * vdisk-format.h - the backend interface of libvdisk (private to src/vdisk).
 *
 * Each image format is a struct vdisk_format registered in image.c.  The
 * chain, commit, convert and server code only ever call through this table,
 * so adding a format touches nothing else.  Members are append-only;
 * struct_size tells which ones a backend knows.
 */
#ifndef VELA_VDISK_FORMAT_H
#define VELA_VDISK_FORMAT_H

#include <pthread.h>
#include <stdatomic.h>

#include "vdisk.h"

/* Status of a range in one image (not the chain). */
enum img_status { IMG_UNALLOC, IMG_DATA, IMG_ZERO };

struct vdisk_image {
	char *path;                 /* as given */
	char *dir;                  /* folder: base of relative names inside the image */
	bool read_only;
	bool direct;                /* VDISK_OPEN_DIRECT: backends open a data fd with O_DIRECT */
	bool write_behind;          /* writable through the page cache, and not turned off */
	_Atomic uint64_t write_behind_pushed;   /* bytes of streams pushed early (writebehind.c) */
	const struct vdisk_format *fmt;
	void *priv;                 /* the backend's state */
	uint64_t size;              /* virtual bytes */
	uint32_t granularity;       /* bytes of one allocation unit */
	char *parent_path;          /* resolved parent file named by the image, or NULL */
	struct vdisk_image *parent; /* opened parent, or NULL */
	pthread_mutex_t lock;       /* the backend's metadata */
};

/* An open chain (the public struct vdisk). */
struct vdisk {
	struct vdisk_image *top;
	unsigned depth;
};

struct vdisk_format {
	uint32_t struct_size;
	const char *name;
	/* > 0 if the file looks like this format (higher wins); head is the
	 * first bytes of the file (up to 4096). */
	int (*probe)(const uint8_t *head, size_t len, uint64_t file_size);
	/* Fill size, granularity, parent_path, priv. */
	int (*open)(struct vdisk_image *img);
	void (*close)(struct vdisk_image *img);
	/* Status of [off, off+len) in this image; *pnum = bytes it holds for. */
	int (*block_status)(struct vdisk_image *img, uint64_t off, uint64_t len, enum img_status *st, uint64_t *pnum);
	/* Read a range the image holds as IMG_DATA. */
	int (*pread)(struct vdisk_image *img, void *buf, size_t len, uint64_t off);
	/* Write; the backend allocates and copies partial units up from the
	 * parent with vdisk_image_read_below(). */
	int (*pwrite)(struct vdisk_image *img, const void *buf, size_t len, uint64_t off);
	/* Data durable first, then metadata. */
	int (*flush)(struct vdisk_image *img);
	/* Create.  parent is the opened parent for a child image, else NULL;
	 * parent_name is how the child refers to it (relative if possible). */
	int (*create)(const char *path, const struct vdisk_create_opts *o,
		      struct vdisk_image *parent, const char *parent_name);
	int (*info)(struct vdisk_image *img, struct vdisk_info *info);
	int (*check)(struct vdisk_image *img, bool repair, struct vdisk_check_report *r);
	/* Is parent still the image this child was made on?  0 or VELA_E_PARENT. */
	int (*check_parent)(struct vdisk_image *img, struct vdisk_image *parent);
	/* Formats recognised by their last bytes (fixed VHD): > 0 if this
	 * format; called when no head probe scored above raw. */
	int (*probe_tail)(int fd, uint64_t file_size);
	/* Point this child at another parent (moved, or after a middle level was
	 * committed): name as the child should record it, identity from parent. */
	int (*set_parent)(struct vdisk_image *img, struct vdisk_image *parent, const char *parent_name);
	/* Grow the virtual size to new_size bytes (never shrinks). */
	int (*resize)(struct vdisk_image *img, uint64_t new_size);
	/* Drop the allocation of every whole unit inside [off, off+len) so it
	 * reads from below again, and give its space back to the host. */
	int (*unmap)(struct vdisk_image *img, uint64_t off, uint64_t len);
	/* VDISK_FMT_*: what the chain code may rely on. */
	uint32_t flags;
	/* Every file the image is made of, the one named by img->path first
	 * (caller frees the array and the strings).  NULL = just img->path. */
	int (*list_files)(struct vdisk_image *img, char ***files, size_t *n);
	/* Before child (open writable) merges into parent (open writable):
	 * make the chain still open after a crash in the middle of the merge. */
	int (*prepare_merge)(struct vdisk_image *child, struct vdisk_image *parent);
};

/* pread works on any range and unallocated space reads as zeros: an image
 * without a parent can be read without asking for its allocation first. */
#define VDISK_FMT_READ_ANY (1u << 0)

extern const struct vdisk_format vdisk_format_raw;
extern const struct vdisk_format vdisk_format_vmdk;
extern const struct vdisk_format vdisk_format_vhd;
extern const struct vdisk_format vdisk_format_qcow2;

/* Open one image (no parent).  Used by the chain code and by create. */
int vdisk_image_open(const char *path, bool read_only, struct vdisk_image **out);
/* The same with VDISK_OPEN_RDONLY, _DIRECT and _NO_WRITE_BEHIND. */
int vdisk_image_open_flags(const char *path, unsigned flags, struct vdisk_image **out);

/* A second descriptor on path with O_DIRECT for data I/O when img->direct,
 * else (or where the file system cannot) -1. */
int vdisk_open_data_fd(const struct vdisk_image *img, const char *path, bool writable);
/* Data I/O: through dfd (O_DIRECT) when it is open and the request is
 * aligned, else through fd; an O_DIRECT refusal (EINVAL) falls back. */
int vdisk_data_pread(int fd, int dfd, void *buf, size_t len, uint64_t off, const char *what);
struct vdisk_writebehind;
/* A write through fd is reported to wb (may be NULL) when it succeeds. */
int vdisk_data_pwrite(int fd, int dfd, struct vdisk_writebehind *wb, const void *buf, size_t len, uint64_t off,
		      const char *what);

/* Write-behind (writebehind.c): one per file of guest data a writable image
 * writes through the page cache.  NULL (nothing to do) unless
 * img->write_behind.  _wrote() is told of every data write through fd;
 * sequential streams get pushed to the device early by a thread of the
 * writebehind's own.  Free it before closing fd. */
struct vdisk_writebehind *vdisk_writebehind_new(struct vdisk_image *img, int fd);
void vdisk_writebehind_wrote(struct vdisk_writebehind *wb, uint64_t off, size_t len);
void vdisk_writebehind_free(struct vdisk_writebehind *wb);
void vdisk_image_close(struct vdisk_image *img);
/* Read [off, off+len) as the image's parent chain sees it (zeros at the bottom). */
int vdisk_image_read_below(struct vdisk_image *img, void *buf, size_t len, uint64_t off);
/* Read through the chain starting at img. */
int vdisk_image_read(struct vdisk_image *img, void *buf, size_t len, uint64_t off);

/* Fault injection for crash-consistency tests (a singleton owned by
 * image.c): after n more writes through vdisk_pwrite_full, every write fails
 * as if the machine had stopped.  n < 0 turns it off (the default).
 * vdisk_test_write_count() counts writes since the last arm. */
void vdisk_test_fail_writes_after(long n);
long vdisk_test_write_count(void);
/* Bytes the top image's write-behind has pushed so far. */
uint64_t vdisk_test_write_behind_pushed(const struct vdisk *d);

/* Helpers for backends. */
int vdisk_pread_full(int fd, void *buf, size_t len, uint64_t off, const char *what);
int vdisk_pwrite_full(int fd, const void *buf, size_t len, uint64_t off, const char *what);
bool vdisk_buf_is_zero(const void *buf, size_t len);
/* End of creating a file: sync it if all went well (r == 0), close it, and
 * remove it if not.  Returns r or the sync error. */
int vdisk_finish_create(int fd, const char *path, int r);
/* Give [off, off+len) of a file back to the host (hole punch); best effort. */
void vdisk_punch_hole(int fd, uint64_t off, uint64_t len);

#endif /* VELA_VDISK_FORMAT_H */
