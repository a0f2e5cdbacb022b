/*
 * raw.c - raw images: the bytes of the disk, holes read as zeros.
 *
 * Also the flat disks of ESX Server 1.x (".dsk"): the disk's bytes followed
 * by a 512-byte trailer of the old product's metadata.  They are recognised
 * by their name (a ".dsk" that is not a COWD sparse file, which the VMDK
 * format takes), served without the trailer, which is never touched.
 */
#include "common.h"
#include "vdisk-format.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

struct raw {
	int fd;
	int dfd;             /* O_DIRECT descriptor, or -1 */
	struct vdisk_writebehind *wb;
	bool esx1_trailer;   /* ESX 1.x .dsk: the last 512 bytes are not disk */
};

#define ESX1_TRAILER 512u

static bool is_esx1_dsk(const char *path, const struct stat *st)
{
	size_t n = strlen(path);
	return n > 4 && str_ieq(path + n - 4, ".dsk") && S_ISREG(st->st_mode) && st->st_size >= (off_t)ESX1_TRAILER &&
	       st->st_size % 512 == 0;
}

static int raw_probe(const uint8_t *head, size_t len, uint64_t file_size)
{
	(void)head;
	(void)len;
	(void)file_size;
	return 1;   /* anything is a raw image; every real format scores higher */
}

static int raw_open(struct vdisk_image *img)
{
	struct stat st;
	int fd = open(img->path, (img->read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (fd < 0)
		return vela_error_errno(errno, "open %s", img->path);
	if (fstat(fd, &st) < 0) {
		int e = errno;
		close(fd);
		return vela_error_errno(e, "stat %s", img->path);
	}
	struct raw *r = xcalloc(1, sizeof *r);
	r->fd = fd;
	bool data_file = S_ISREG(st.st_mode) || S_ISBLK(st.st_mode);   /* not a pipe or character device */
	r->dfd = data_file ? vdisk_open_data_fd(img, img->path, !img->read_only) : -1;
	r->wb = data_file ? vdisk_writebehind_new(img, fd) : NULL;
	img->priv = r;
	img->size = (uint64_t)st.st_size;
	if (is_esx1_dsk(img->path, &st)) {
		r->esx1_trailer = true;
		img->size = (uint64_t)st.st_size - ESX1_TRAILER;
	}
	if (S_ISBLK(st.st_mode)) {
		off_t end = lseek(fd, 0, SEEK_END);
		img->size = end > 0 ? (uint64_t)end : 0;
	}
	img->granularity = 4096;
	return 0;
}

static void raw_close(struct vdisk_image *img)
{
	struct raw *r = img->priv;
	if (r) {
		vdisk_writebehind_free(r->wb);
		close(r->fd);
		if (r->dfd >= 0)
			close(r->dfd);
		free(r);
	}
	img->priv = NULL;
}

static int raw_block_status(struct vdisk_image *img, uint64_t off, uint64_t len, enum img_status *st, uint64_t *pnum)
{
	struct raw *r = img->priv;
	off_t data = lseek(r->fd, (off_t)off, SEEK_DATA);
	if (data < 0 && errno == ENXIO) {
		*st = IMG_ZERO;   /* a hole up to the end of the file */
		*pnum = len;
		return 0;
	}
	if (data < 0) {
		/* No SEEK_DATA on this file system: all data. */
		*st = IMG_DATA;
		*pnum = len;
		return 0;
	}
	if ((uint64_t)data > off) {
		*st = IMG_ZERO;
		*pnum = (uint64_t)data - off < len ? (uint64_t)data - off : len;
		return 0;
	}
	off_t hole = lseek(r->fd, (off_t)off, SEEK_HOLE);
	uint64_t n = hole < 0 ? len : (uint64_t)hole - off;
	*st = IMG_DATA;
	*pnum = n < len && n > 0 ? n : len;
	return 0;
}

static int raw_pread(struct vdisk_image *img, void *buf, size_t len, uint64_t off)
{
	struct raw *r = img->priv;
	return vdisk_data_pread(r->fd, r->dfd, buf, len, off, img->path);
}

static int raw_pwrite(struct vdisk_image *img, const void *buf, size_t len, uint64_t off)
{
	struct raw *r = img->priv;
	return vdisk_data_pwrite(r->fd, r->dfd, r->wb, buf, len, off, img->path);
}

static int raw_flush(struct vdisk_image *img)
{
	struct raw *r = img->priv;
	if (fdatasync(r->fd) < 0)
		return vela_error_errno(errno, "flush %s", img->path);
	return 0;
}

static int raw_create(const char *path, const struct vdisk_create_opts *o, struct vdisk_image *parent,
		      const char *parent_name)
{
	(void)parent_name;
	if (parent)
		return vela_error(VELA_E_NOTSUP, "create %s: a raw image cannot have a parent; use a VMDK child", path);
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return vela_error_errno(errno, "create %s", path);
	if (ftruncate(fd, (off_t)o->size) < 0) {
		int e = errno;
		close(fd);
		unlink(path);
		return vela_error_errno(e, "create %s: set size", path);
	}
	close(fd);
	return 0;
}

static int raw_info(struct vdisk_image *img, struct vdisk_info *info)
{
	struct raw *r = img->priv;
	struct stat st;
	if (r->esx1_trailer)
		info->subformat = xstrdup("esx1-dsk (flat, 512-byte trailer)");
	if (fstat(r->fd, &st) == 0)
		info->allocated = (uint64_t)st.st_blocks * 512;
	return 0;
}

static int raw_check(struct vdisk_image *img, bool repair, struct vdisk_check_report *rep)
{
	(void)img;
	(void)repair;
	memset(rep, 0, sizeof *rep);
	return 0;   /* no metadata */
}

static int raw_resize(struct vdisk_image *img, uint64_t new_size)
{
	struct raw *r = img->priv;
	if (r->esx1_trailer)
		return vela_error(VELA_E_NOTSUP, "extend %s: an ESX 1.x .dsk keeps its trailer at the end; convert it first "
				  "(vela disk convert)", img->path);
	if (ftruncate(r->fd, (off_t)new_size) < 0)
		return vela_error_errno(errno, "extend %s", img->path);
	img->size = new_size;
	return 0;
}

static int raw_unmap(struct vdisk_image *img, uint64_t off, uint64_t len)
{
	struct raw *r = img->priv;
	vdisk_punch_hole(r->fd, off, len);
	return 0;
}

const struct vdisk_format vdisk_format_raw = {
	.struct_size = sizeof(struct vdisk_format),
	.name = "raw",
	.probe = raw_probe,
	.open = raw_open,
	.close = raw_close,
	.block_status = raw_block_status,
	.pread = raw_pread,
	.pwrite = raw_pwrite,
	.flush = raw_flush,
	.create = raw_create,
	.info = raw_info,
	.check = raw_check,
	.resize = raw_resize,
	.unmap = raw_unmap,
	.flags = VDISK_FMT_READ_ANY,
};
