/*
 * vmdk.c - VMDK: text descriptor + extents (hosted sparse "KDMV", flat, zero).
 *
 * Covers monolithicSparse, monolithicFlat, twoGbMaxExtentSparse,
 * twoGbMaxExtentFlat, vmfs (flat), sparse child disks (parentCID +
 * parentFileNameHint) and streamOptimized (deflate-compressed grains behind
 * markers; grain directory either in front, as QEMU writes it, or at the end
 * behind a footer, as the classic tools and Vela write it).  vmfsSparse (COWD)
 * is recognised and refused with a clear error for now.
 *
 * streamOptimized is an export format: new grains are appended where the
 * tail (grain tables, directory, footer) was, and the tail is rewritten at
 * flush, so it is not crash-safe while being written.
 *
 * Crash consistency: new grains (and grain tables) are appended to the file
 * and referenced only from memory until flush.  Flush makes the data durable
 * (fdatasync), then writes the changed grain tables and directories, then
 * syncs again.  A crash therefore loses at most unflushed writes and leaves
 * unreferenced space at the end of the file, which check --repair trims.
 */
#include "common.h"
#include "vdisk-format.h"

#include <ctype.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#define VMDK_MAGIC 0x564d444bu           /* "KDMV" little-endian */
#define VMDK_FLAG_NL_TEST (1u << 0)
#define VMDK_FLAG_RGD (1u << 1)
#define VMDK_FLAG_ZERO_GRAIN (1u << 2)
#define VMDK_FLAG_COMPRESSED (1u << 16)
#define VMDK_FLAG_MARKERS (1u << 17)
#define VMDK_GD_AT_END 0xffffffffffffffffull
#define GTE_ZERO 1u
#define DESC_MAX (1u << 20)
#define DESC_EMBED_SECTORS 20
#define DEFAULT_GRAIN 128                /* sectors = 64 KiB */
#define GTES_PER_GT 512
#define COWD_GTES 4096                   /* vmfsSparse (COWD) tables are fixed at 4096 entries */
#define COWD_HEADER_SECTORS 4
#define MAX_GRAIN 65536                  /* sectors = 32 MiB */
#define MAX_EXTENTS 10000
#define TWOGB_EXTENT_SECTORS 4192256ull  /* 2047 MiB, as the classic tools split */
#define MAX_DIRTY_GTS 256
#define MARKER_EOS 0
#define MARKER_GT 1
#define MARKER_GD 2
#define MARKER_FOOTER 3

enum ext_type { EXT_FLAT, EXT_SPARSE, EXT_ZERO };

struct sparse {
	uint64_t capacity, grain;    /* sectors */
	uint32_t gtes, flags;
	uint64_t gd_sector, rgd_sector, overhead;
	uint64_t desc_sector, desc_sectors;
	uint32_t n_gdes;
	uint32_t *gd, *rgd;
	uint32_t **gt;               /* loaded tables, NULL = not loaded */
	uint32_t gt_loaded;          /* how many; while 0, closing skips the walk over
	                              * every slot (32768 on a 1 TiB disk) */
	uint8_t *gt_dirty;
	unsigned n_dirty;
	bool gd_dirty;
	uint64_t next_free;          /* sector where the next grain or table goes */
	uint64_t file_sectors;       /* size of the file when opened */
	bool compressed;             /* streamOptimized: grains are deflated behind markers */
	bool cowd;                   /* vmfsSparse / ESX 2 redo log (COWD): read-only here */
	bool tail_gd;                /* directory at the end, behind a footer */
	bool tail_dirty;             /* the tail must be rewritten at flush */
	uint8_t header[512];         /* the header as read (the footer copies it) */
};

struct extent {
	enum ext_type type;
	uint64_t start, sectors;     /* place in the virtual disk, in sectors */
	uint64_t offset;             /* FLAT: sector offset in its file */
	bool writable;
	char *path;
	int fd;
	bool has_dfd;                /* dfd: O_DIRECT descriptor for grain data */
	int dfd;
	struct vdisk_writebehind *wb;
	struct sparse *sp;
};

#define DFD(e) ((e)->has_dfd ? (e)->dfd : -1)

struct vmdk {
	struct extent *ext;
	size_t n_ext;
	char *desc;                  /* descriptor text */
	bool desc_embedded;          /* inside ext[0]'s sparse file */
	int desc_fd;                 /* separate descriptor file, or -1 */
	uint32_t cid, parent_cid;
	/* During a commit into the parent: the CID the parent takes at its
	 * first merged write (ddb.vela.mergeParentCID; 0xffffffff = none). */
	uint32_t merge_parent_cid;
	uint32_t next_cid;           /* the CID the next bump takes (0 = random) */
	char *create_type, *parent_hint, *adapter;
	uint32_t cyl, heads, secs;
	bool cid_bumped;
	bool opened;                 /* open completed: safe to flush on close */
};

/* ------------------------------------------------------------ probe */

static bool looks_like_descriptor(const uint8_t *head, size_t len)
{
	size_t n = len < 1024 ? len : 1024;
	for (size_t i = 0; i < n; i++)
		if (head[i] == 0)
			return false;
	return memmem(head, n, "# Disk DescriptorFile", 21) || memmem(head, n, "createType", 10);
}

static int vmdk_probe(const uint8_t *head, size_t len, uint64_t file_size)
{
	if (len >= 4 && le32_get(head) == VMDK_MAGIC)
		return 100;
	if (len >= 4 && memcmp(head, "COWD", 4) == 0)
		return 100;   /* vmfsSparse / ESX 2 redo log: read for import */
	/* The header line claims a descriptor at any size (a huge one is then
	 * refused at open rather than read as a raw disk). */
	if (len >= 21 && memcmp(head, "# Disk DescriptorFile", 21) == 0)
		return 100;
	if (file_size <= DESC_MAX && looks_like_descriptor(head, len))
		return 100;
	return 0;
}

/* ------------------------------------------------------------ descriptor */

static char *unquote(const char *v)
{
	size_t n = strlen(v);
	if (n >= 2 && v[0] == '"' && v[n - 1] == '"')
		return xstrndup(v + 1, n - 2);
	return xstrdup(v);
}

static int parse_hex32(const char *s, uint32_t *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 16);
	if (errno || end == s || *end || v > 0xffffffffu)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

/* Parse the descriptor into m (extents with names resolved against dir). */
static int parse_descriptor(struct vmdk *m, const char *text, const char *dir, const char *what)
{
	CLEANUP_FREE char *copy = xstrdup(text);
	char *save = NULL;
	unsigned lineno = 0;
	bool have_version = false;
	uint64_t pos = 0;
	m->parent_cid = 0xffffffffu;
	m->merge_parent_cid = 0xffffffffu;
	for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		lineno++;
		size_t n = strlen(line);
		while (n && (line[n - 1] == '\r' || isspace((unsigned char)line[n - 1])))
			line[--n] = '\0';
		while (*line && isspace((unsigned char)*line))
			line++;
		if (!*line || *line == '#')
			continue;
		if (str_starts_with(line, "RW ") || str_starts_with(line, "RDONLY ") || str_starts_with(line, "NOACCESS ")) {
			char access[16], type[32], name[4096] = "";
			unsigned long long sectors, offset = 0;
			int got = sscanf(line, "%15s %llu %31s \"%4095[^\"]\" %llu", access, &sectors, type, name, &offset);
			if (got < 3)
				return vela_error(VELA_E_CORRUPT, "%s: descriptor line %u: bad extent line \"%s\"", what, lineno, line);
			if (m->n_ext >= MAX_EXTENTS)
				return vela_error(VELA_E_CORRUPT, "%s: more than %u extents", what, MAX_EXTENTS);
			if (sectors == 0 || sectors > VDISK_MAX_SIZE / VDISK_SECTOR || pos + sectors > VDISK_MAX_SIZE / VDISK_SECTOR)
				return vela_error(VELA_E_CORRUPT, "%s: descriptor line %u: extent size %llu sectors is out of range",
						  what, lineno, sectors);
			m->ext = xrealloc(m->ext, (m->n_ext + 1) * sizeof *m->ext);
			struct extent *e = &m->ext[m->n_ext++];
			memset(e, 0, sizeof *e);
			e->fd = -1;
			e->start = pos;
			e->sectors = sectors;
			e->writable = strcmp(access, "RW") == 0;
			pos += sectors;
			if (strcmp(type, "FLAT") == 0 || strcmp(type, "VMFS") == 0) {
				e->type = EXT_FLAT;
				if (offset > VDISK_MAX_SIZE / VDISK_SECTOR)
					return vela_error(VELA_E_CORRUPT, "%s: descriptor line %u: flat offset out of range", what, lineno);
				e->offset = offset;
			} else if (strcmp(type, "SPARSE") == 0) {
				e->type = EXT_SPARSE;
			} else if (strcmp(type, "ZERO") == 0) {
				e->type = EXT_ZERO;
			} else if (strcmp(type, "VMFSSPARSE") == 0) {
				e->type = EXT_SPARSE;   /* a COWD file: sparse_open tells */
			} else if (strcmp(type, "SESPARSE") == 0 || strcmp(type, "VMFSRDM") == 0 ||
				   strcmp(type, "VMFSRAW") == 0) {
				return vela_error(VELA_E_NOTSUP, "%s: extent type %s is not supported yet", what, type);
			} else {
				return vela_error(VELA_E_CORRUPT, "%s: descriptor line %u: unknown extent type \"%s\"", what, lineno, type);
			}
			if (e->type != EXT_ZERO) {
				if (got < 4 || !name[0])
					return vela_error(VELA_E_CORRUPT, "%s: descriptor line %u: extent without a file name", what, lineno);
				e->path = path_join(dir, name);
			}
			continue;
		}
		char *eq = strchr(line, '=');
		if (!eq)
			return vela_error(VELA_E_CORRUPT, "%s: descriptor line %u: expected key=value, got \"%.60s\"", what, lineno, line);
		*eq = '\0';
		char *key = line, *val = eq + 1;
		size_t kn = strlen(key);
		while (kn && isspace((unsigned char)key[kn - 1]))
			key[--kn] = '\0';
		while (*val && isspace((unsigned char)*val))
			val++;
		CLEANUP_FREE char *v = unquote(val);
		if (strcmp(key, "version") == 0) {
			if (strcmp(v, "1") && strcmp(v, "2") && strcmp(v, "3"))
				return vela_error(VELA_E_VERSION, "%s: descriptor version %s is not supported", what, v);
			have_version = true;
		} else if (strcmp(key, "CID") == 0) {
			if (parse_hex32(v, &m->cid) < 0)
				return vela_error(VELA_E_CORRUPT, "%s: descriptor line %u: bad CID \"%s\"", what, lineno, v);
		} else if (strcmp(key, "parentCID") == 0) {
			if (parse_hex32(v, &m->parent_cid) < 0)
				return vela_error(VELA_E_CORRUPT, "%s: descriptor line %u: bad parentCID \"%s\"", what, lineno, v);
		} else if (strcmp(key, "ddb.vela.mergeParentCID") == 0) {
			if (parse_hex32(v, &m->merge_parent_cid) < 0)
				return vela_error(VELA_E_CORRUPT, "%s: descriptor line %u: bad ddb.vela.mergeParentCID \"%s\"",
						  what, lineno, v);
		} else if (strcmp(key, "createType") == 0) {
			free(m->create_type);
			m->create_type = xstrdup(v);
		} else if (strcmp(key, "parentFileNameHint") == 0) {
			free(m->parent_hint);
			m->parent_hint = xstrdup(v);
		} else if (strcmp(key, "ddb.adapterType") == 0) {
			free(m->adapter);
			m->adapter = xstrdup(v);
		} else if (strcmp(key, "ddb.geometry.cylinders") == 0) {
			m->cyl = (uint32_t)strtoul(v, NULL, 10);
		} else if (strcmp(key, "ddb.geometry.heads") == 0) {
			m->heads = (uint32_t)strtoul(v, NULL, 10);
		} else if (strcmp(key, "ddb.geometry.sectors") == 0) {
			m->secs = (uint32_t)strtoul(v, NULL, 10);
		}
	}
	if (!have_version)
		return vela_error(VELA_E_CORRUPT, "%s: not a VMDK descriptor (no version line)", what);
	if (m->n_ext == 0)
		return vela_error(VELA_E_CORRUPT, "%s: the descriptor lists no extents", what);
	return 0;
}

/* ------------------------------------------------------------ sparse extent */

static void sparse_free(struct sparse *sp)
{
	if (!sp)
		return;
	if (sp->gt && sp->gt_loaded)
		for (uint32_t i = 0; i < sp->n_gdes; i++)
			free(sp->gt[i]);
	free(sp->gt);
	free(sp->gt_dirty);
	free(sp->gd);
	free(sp->rgd);
	free(sp);
}

static uint64_t gt_sectors(const struct sparse *sp)
{
	return ((uint64_t)sp->gtes * 4 + VDISK_SECTOR - 1) / VDISK_SECTOR;
}

static int sparse_load_directory(int fd, const char *path, struct sparse *sp);

/*
 * vmfsSparse (ESX 3 delta disks) and ESX 2 redo logs: the older "COWD"
 * sparse extent.  A 2048-byte header (capacity, grain size, directory place
 * and size, next free sector, all 32-bit sectors), then a directory of grain
 * tables of 4096 entries each.  Read here for import; never written (Vela
 * writes its own redo logs as monolithicSparse children).
 */
static int cowd_open(int fd, const char *path, const uint8_t *h, const struct stat *st, struct sparse **out)
{
	struct sparse *sp = xcalloc(1, sizeof *sp);
	*out = sp;
	uint32_t version = le32_get(h + 4);
	if (version != 1)
		return vela_error(VELA_E_VERSION, "%s: COWD (vmfsSparse) version %u is not supported", path, version);
	sp->cowd = true;
	sp->capacity = le32_get(h + 12);
	sp->grain = le32_get(h + 16);
	sp->gd_sector = le32_get(h + 20);
	uint32_t gd_entries = le32_get(h + 24);
	sp->next_free = le32_get(h + 28);
	sp->gtes = COWD_GTES;
	sp->overhead = COWD_HEADER_SECTORS;
	sp->file_sectors = ((uint64_t)st->st_size + VDISK_SECTOR - 1) / VDISK_SECTOR;
	if (sp->grain == 0 || sp->grain > MAX_GRAIN || (sp->grain & (sp->grain - 1)))
		return vela_error(VELA_E_CORRUPT, "%s: COWD grain size %llu sectors is not a power of two up to %u", path,
				  (unsigned long long)sp->grain, MAX_GRAIN);
	if (sp->capacity == 0)
		return vela_error(VELA_E_CORRUPT, "%s: COWD capacity is 0", path);
	uint64_t per_gde = sp->grain * sp->gtes;
	uint64_t needed = (sp->capacity + per_gde - 1) / per_gde;
	if (gd_entries < needed || gd_entries > (1u << 20))
		return vela_error(VELA_E_CORRUPT, "%s: COWD directory of %u entries for %llu tables", path, gd_entries,
				  (unsigned long long)needed);
	sp->n_gdes = (uint32_t)needed;
	if (sp->gd_sector < COWD_HEADER_SECTORS)
		return vela_error(VELA_E_CORRUPT, "%s: COWD directory at sector %llu is inside the header", path,
				  (unsigned long long)sp->gd_sector);
	if (sp->next_free < sp->overhead || sp->next_free > sp->file_sectors)
		sp->next_free = sp->file_sectors;
	return sparse_load_directory(fd, path, sp);
}

/* Read and validate the header of a hosted sparse extent. */
static int sparse_open(int fd, const char *path, struct sparse **out)
{
	uint8_t h[512];
	struct stat st;
	int r = vdisk_pread_full(fd, h, sizeof h, 0, path);
	if (r < 0)
		return r;
	if (fstat(fd, &st) < 0)
		return vela_error_errno(errno, "stat %s", path);
	if (memcmp(h, "COWD", 4) == 0)
		return cowd_open(fd, path, h, &st, out);
	if (le32_get(h) != VMDK_MAGIC)
		return vela_error(VELA_E_CORRUPT, "%s: not a VMDK sparse extent (bad magic)", path);
	struct sparse *sp = xcalloc(1, sizeof *sp);
	uint32_t version = le32_get(h + 4);
	sp->flags = le32_get(h + 8);
	sp->capacity = le64_get(h + 12);
	sp->grain = le64_get(h + 20);
	sp->desc_sector = le64_get(h + 28);
	sp->desc_sectors = le64_get(h + 36);
	sp->gtes = le32_get(h + 44);
	sp->rgd_sector = le64_get(h + 48);
	sp->gd_sector = le64_get(h + 56);
	sp->overhead = le64_get(h + 64);
	sp->file_sectors = ((uint64_t)st.st_size + VDISK_SECTOR - 1) / VDISK_SECTOR;
	*out = sp;

	memcpy(sp->header, h, sizeof h);
	if (version < 1 || version > 3)
		return vela_error(VELA_E_VERSION, "%s: sparse extent version %u is not supported", path, version);
	if (sp->flags & VMDK_FLAG_COMPRESSED) {
		uint16_t algo = (uint16_t)(h[77] | h[78] << 8);
		if (algo != 1)
			return vela_error(VELA_E_NOTSUP, "%s: compression algorithm %u is not supported (deflate only)", path, algo);
		if (!(sp->flags & VMDK_FLAG_MARKERS))
			return vela_error(VELA_E_NOTSUP, "%s: compressed grains without markers are not supported", path);
		sp->compressed = true;
	}
	if (sp->gd_sector == VMDK_GD_AT_END) {
		/* The directory's place is in the footer: footer marker, footer
		 * (a copy of the header), end-of-stream marker. */
		uint8_t tail[1536];
		if ((uint64_t)st.st_size < sizeof tail + 512)
			return vela_error(VELA_E_CORRUPT, "%s: too short for a streamOptimized footer", path);
		int rr = vdisk_pread_full(fd, tail, sizeof tail, (uint64_t)st.st_size - sizeof tail, path);
		if (rr < 0)
			return rr;
		if (le32_get(tail + 8) != 0 || le32_get(tail + 12) != MARKER_FOOTER || le32_get(tail + 512) != VMDK_MAGIC ||
		    le64_get(tail + 1024) != 0 || le32_get(tail + 1024 + 8) != 0 || le32_get(tail + 1024 + 12) != MARKER_EOS)
			return vela_error(VELA_E_CORRUPT, "%s: the streamOptimized footer is missing or damaged", path);
		sp->gd_sector = le64_get(tail + 512 + 56);
		sp->rgd_sector = le64_get(tail + 512 + 48);
		if (sp->gd_sector == VMDK_GD_AT_END)
			return vela_error(VELA_E_CORRUPT, "%s: the footer does not say where the grain directory is", path);
		sp->tail_gd = true;
	}
	if (sp->grain == 0 || sp->grain > MAX_GRAIN || (sp->grain & (sp->grain - 1)))
		return vela_error(VELA_E_CORRUPT, "%s: grain size %llu sectors is not a power of two up to %u", path,
				  (unsigned long long)sp->grain, MAX_GRAIN);
	if (sp->gtes == 0 || sp->gtes > GTES_PER_GT)
		return vela_error(VELA_E_CORRUPT, "%s: %u entries per grain table (expected 1 to %u)", path, sp->gtes, GTES_PER_GT);
	if (sp->capacity == 0 || sp->capacity > VDISK_MAX_SIZE / VDISK_SECTOR)
		return vela_error(VELA_E_CORRUPT, "%s: capacity %llu sectors is out of range", path, (unsigned long long)sp->capacity);
	uint64_t per_gde = sp->grain * sp->gtes;
	uint64_t n_gdes = (sp->capacity + per_gde - 1) / per_gde;
	if (n_gdes > UINT32_MAX / 4)
		return vela_error(VELA_E_CORRUPT, "%s: grain directory too large", path);
	sp->n_gdes = (uint32_t)n_gdes;
	return sparse_load_directory(fd, path, sp);
}

/* Check the directory's place, load it (and its redundant copy). */
static int sparse_load_directory(int fd, const char *path, struct sparse *sp)
{
	int r;
	uint64_t gd_bytes = (uint64_t)sp->n_gdes * 4;
	uint64_t gd_secs = (gd_bytes + VDISK_SECTOR - 1) / VDISK_SECTOR;
	bool use_rgd = (sp->flags & VMDK_FLAG_RGD) != 0;
	if (sp->gd_sector == 0 || sp->gd_sector + gd_secs > sp->file_sectors)
		return vela_error(VELA_E_CORRUPT, "%s: grain directory at sector %llu lies outside the file (%llu sectors)",
				  path, (unsigned long long)sp->gd_sector, (unsigned long long)sp->file_sectors);
	if (use_rgd && (sp->rgd_sector == 0 || sp->rgd_sector + gd_secs > sp->file_sectors))
		return vela_error(VELA_E_CORRUPT, "%s: redundant grain directory lies outside the file", path);
	if (sp->desc_sector && (sp->desc_sectors > DESC_MAX / VDISK_SECTOR ||
				sp->desc_sector + sp->desc_sectors > sp->file_sectors))
		return vela_error(VELA_E_CORRUPT, "%s: embedded descriptor lies outside the file", path);
	if (sp->overhead > sp->file_sectors + sp->grain)
		return vela_error(VELA_E_CORRUPT, "%s: overhead %llu sectors is beyond the end of the file", path,
				  (unsigned long long)sp->overhead);

	/* Read straight into the tables (whole sectors) and turn them around
	 * in place: no staging copy of what is 128 KiB each on a 1 TiB disk. */
	sp->gd = xcalloc(gd_secs, VDISK_SECTOR);
	if ((r = vdisk_pread_full(fd, sp->gd, gd_secs * VDISK_SECTOR, sp->gd_sector * VDISK_SECTOR, path)) == 0)
		for (uint32_t i = 0; i < sp->n_gdes; i++)
			sp->gd[i] = le32_get((const uint8_t *)&sp->gd[i]);
	if (r == 0 && use_rgd) {
		sp->rgd = xcalloc(gd_secs, VDISK_SECTOR);
		if ((r = vdisk_pread_full(fd, sp->rgd, gd_secs * VDISK_SECTOR, sp->rgd_sector * VDISK_SECTOR, path)) == 0)
			for (uint32_t i = 0; i < sp->n_gdes; i++)
				sp->rgd[i] = le32_get((const uint8_t *)&sp->rgd[i]);
	}
	if (r < 0)
		return r;
	uint64_t gts = gt_sectors(sp);
	for (uint32_t i = 0; i < sp->n_gdes; i++) {
		if (sp->gd[i] && ((uint64_t)sp->gd[i] + gts > sp->file_sectors || sp->gd[i] < 1))
			return vela_error(VELA_E_CORRUPT, "%s: grain table %u at sector %u lies outside the file", path, i, sp->gd[i]);
		if (sp->rgd && sp->rgd[i] && (uint64_t)sp->rgd[i] + gts > sp->file_sectors)
			return vela_error(VELA_E_CORRUPT, "%s: redundant grain table %u lies outside the file", path, i);
	}
	sp->gt = xcalloc(sp->n_gdes, sizeof *sp->gt);
	sp->gt_dirty = xcalloc(sp->n_gdes, 1);
	if (sp->cowd)
		return 0;   /* read-only: no append point */
	sp->next_free = sp->file_sectors > sp->overhead ? sp->file_sectors : sp->overhead;
	if (sp->tail_gd) {
		/* New grains go where the tail starts: the first marker before a
		 * grain table or the directory. */
		uint64_t tail = sp->gd_sector - 1;
		for (uint32_t i = 0; i < sp->n_gdes; i++)
			if (sp->gd[i] && sp->gd[i] - 1 < tail)
				tail = sp->gd[i] - 1;
		if (tail < sp->overhead)
			tail = sp->overhead;
		sp->next_free = tail;
	}
	return 0;
}

/* The grain table for directory entry i, loaded on first use. */
static int load_gt(struct extent *e, uint32_t i, uint32_t **out)
{
	struct sparse *sp = e->sp;
	if (!sp->gt[i]) {
		uint32_t *gt = xcalloc(sp->gtes, sizeof *gt);
		if (sp->gd[i]) {
			uint8_t *raw = xcalloc(sp->gtes, 4);
			int r = vdisk_pread_full(e->fd, raw, (size_t)sp->gtes * 4, (uint64_t)sp->gd[i] * VDISK_SECTOR, e->path);
			if (r < 0) {
				free(raw);
				free(gt);
				return r;
			}
			for (uint32_t k = 0; k < sp->gtes; k++)
				gt[k] = le32_get(raw + 4 * (size_t)k);
			free(raw);
		}
		sp->gt[i] = gt;
		sp->gt_loaded++;
	}
	*out = sp->gt[i];
	return 0;
}

/* Grain table entry for grain g of the extent, validated. */
static int get_gte(struct extent *e, uint64_t g, uint32_t *gte)
{
	struct sparse *sp = e->sp;
	uint32_t *gt;
	uint32_t i = (uint32_t)(g / sp->gtes);
	if (i >= sp->n_gdes)
		return vela_error(VELA_E_INTERNAL, "%s: grain %llu beyond the directory", e->path, (unsigned long long)g);
	int r = load_gt(e, i, &gt);
	if (r < 0)
		return r;
	uint32_t v = gt[g % sp->gtes];
	if (sp->compressed) {
		uint64_t limit = sp->file_sectors > sp->next_free ? sp->file_sectors : sp->next_free;
		if (v > GTE_ZERO && ((uint64_t)v < sp->overhead || (uint64_t)v >= limit))
			return vela_error(VELA_E_CORRUPT, "%s: grain %llu points to sector %u, outside the data area", e->path,
					  (unsigned long long)g, v);
		*gte = v;
		return 0;
	}
	if (v > GTE_ZERO && ((uint64_t)v < sp->overhead || (uint64_t)v + sp->grain > sp->next_free + sp->grain))
		return vela_error(VELA_E_CORRUPT, "%s: grain %llu points to sector %u, outside the data area", e->path,
				  (unsigned long long)g, v);
	if (v == GTE_ZERO && !(sp->flags & VMDK_FLAG_ZERO_GRAIN))
		return vela_error(VELA_E_CORRUPT, "%s: grain %llu points into the header (sector 1)", e->path, (unsigned long long)g);
	*gte = v;
	return 0;
}

/* ------------------------------------------------------------ open/close */

static void vmdk_free(struct vmdk *m)
{
	if (!m)
		return;
	/* Every write-behind thread stops before any descriptor closes: extents
	 * may share one, and a thread must never push on a closed number. */
	for (size_t i = 0; i < m->n_ext; i++)
		vdisk_writebehind_free(m->ext[i].wb);
	for (size_t i = 0; i < m->n_ext; i++) {
		struct extent *e = &m->ext[i];
		/* Extents may share the descriptor's fd (monolithicSparse). */
		bool shared = false;
		for (size_t k = 0; k < i; k++)
			if (m->ext[k].fd == e->fd)
				shared = true;
		if (e->fd >= 0 && !shared && e->fd != m->desc_fd)
			close(e->fd);
		if (e->has_dfd)
			close(e->dfd);
		sparse_free(e->sp);
		free(e->path);
	}
	if (m->desc_fd >= 0)
		close(m->desc_fd);
	free(m->ext);
	free(m->desc);
	free(m->create_type);
	free(m->parent_hint);
	free(m->adapter);
	free(m);
}

static int open_extents(struct vdisk_image *img, struct vmdk *m, int first_fd)
{
	int flags = (img->read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
	for (size_t i = 0; i < m->n_ext; i++) {
		struct extent *e = &m->ext[i];
		if (e->type == EXT_ZERO)
			continue;
		if (i == 0 && first_fd >= 0) {
			e->fd = first_fd;
		} else {
			e->fd = open(e->path, e->writable && !img->read_only ? flags : (O_RDONLY | O_CLOEXEC));
			if (e->fd < 0)
				return vela_error_errno(errno, "%s: extent %s", img->path, e->path);
		}
		if (e->type == EXT_SPARSE) {
			int r = sparse_open(e->fd, e->path, &e->sp);
			if (r < 0)
				return r;
			if (e->sp->cowd)
				e->writable = false;   /* imported, never written */
		}
		if (!e->sp || !e->sp->compressed) {
			int dfd = vdisk_open_data_fd(img, e->path, e->writable && !img->read_only);
			if (dfd >= 0) {
				e->dfd = dfd;
				e->has_dfd = true;
			}
		}
		if (e->writable && !img->read_only && !(e->sp && e->sp->compressed))
			e->wb = vdisk_writebehind_new(img, e->fd);
		if (e->type == EXT_SPARSE) {
			if (e->sp->compressed && e->sp->tail_gd && !img->read_only) {
				/* New grains overwrite the old tail: hold every table first. */
				uint32_t *gt;
				int r = 0;
				for (uint32_t g = 0; g < e->sp->n_gdes && r == 0; g++)
					r = load_gt(e, g, &gt);
				if (r < 0)
					return r;
			}
			if (e->sp->capacity < e->sectors)
				return vela_error(VELA_E_CORRUPT, "%s: extent %s holds %llu sectors, the descriptor says %llu",
						  img->path, e->path, (unsigned long long)e->sp->capacity,
						  (unsigned long long)e->sectors);
		}
	}
	return 0;
}

static int vmdk_open(struct vdisk_image *img)
{
	struct vmdk *m = xcalloc(1, sizeof *m);
	uint8_t head[512];
	int r;
	m->desc_fd = -1;
	img->priv = m;
	int fd = open(img->path, (img->read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (fd < 0)
		return vela_error_errno(errno, "open %s", img->path);
	if ((r = vdisk_pread_full(fd, head, sizeof head, 0, img->path)) < 0) {
		close(fd);
		return r;
	}
	if (le32_get(head) == VMDK_MAGIC || memcmp(head, "COWD", 4) == 0) {
		struct sparse *sp = NULL;
		r = sparse_open(fd, img->path, &sp);
		if (r < 0) {
			sparse_free(sp);
			close(fd);
			return r;
		}
		if (sp->desc_sector && sp->desc_sectors) {
			/* monolithicSparse (or a child): the descriptor is inside. */
			size_t n = (size_t)(sp->desc_sectors * VDISK_SECTOR);
			char *text = xcalloc(1, n + 1);
			r = vdisk_pread_full(fd, text, n, sp->desc_sector * VDISK_SECTOR, img->path);
			text[n] = '\0';
			m->desc = text;
			m->desc_embedded = true;
			if (r == 0)
				r = parse_descriptor(m, text, img->dir, img->path);
			sparse_free(sp);
			if (r == 0 && (m->n_ext != 1 || m->ext[0].type != EXT_SPARSE))
				r = vela_error(VELA_E_CORRUPT, "%s: an embedded descriptor must name one sparse extent", img->path);
			if (r == 0) {
				/* The extent is this very file, whatever name the descriptor gives. */
				free(m->ext[0].path);
				m->ext[0].path = xstrdup(img->path);
				r = open_extents(img, m, fd);
			} else {
				close(fd);
			}
		} else {
			/* A bare sparse extent (e.g. disk-s001.vmdk opened on its own). */
			m->ext = xcalloc(1, sizeof *m->ext);
			m->n_ext = 1;
			m->ext[0] = (struct extent){ .type = EXT_SPARSE, .sectors = sp->capacity, .writable = !sp->cowd,
						     .path = xstrdup(img->path), .fd = fd, .sp = sp };
			m->parent_cid = 0xffffffffu;
			r = 0;
		}
	} else {
		struct stat st;
		if (fstat(fd, &st) < 0 || (uint64_t)st.st_size > DESC_MAX) {
			close(fd);
			return vela_error(VELA_E_CORRUPT, "%s: descriptor file larger than %u bytes", img->path, DESC_MAX);
		}
		m->desc = xcalloc(1, (size_t)st.st_size + 1);
		r = vdisk_pread_full(fd, m->desc, (size_t)st.st_size, 0, img->path);
		m->desc_fd = fd;
		/* Some tools pad the descriptor file with NULs to a sector: fine.
		 * NULs followed by more text are not. */
		char *nul = r == 0 ? memchr(m->desc, '\0', (size_t)st.st_size) : NULL;
		if (nul && !vdisk_buf_is_zero(nul, (size_t)st.st_size - (size_t)(nul - m->desc)))
			r = vela_error(VELA_E_CORRUPT, "%s: descriptor contains binary data", img->path);
		if (r == 0)
			r = parse_descriptor(m, m->desc, img->dir, img->path);
		if (r == 0)
			r = open_extents(img, m, -1);
	}
	if (r < 0)
		return r;
	uint64_t total = 0;
	for (size_t i = 0; i < m->n_ext; i++)
		total += m->ext[i].sectors;
	img->size = total * VDISK_SECTOR;
	img->granularity = VDISK_SECTOR;
	for (size_t i = 0; i < m->n_ext; i++)
		if (m->ext[i].sp) {
			img->granularity = (uint32_t)(m->ext[i].sp->grain * VDISK_SECTOR);
			break;
		}
	if (m->parent_hint && m->parent_cid != 0xffffffffu)
		img->parent_path = path_join(img->dir, m->parent_hint);
	else if (m->parent_hint && *m->parent_hint)
		img->parent_path = path_join(img->dir, m->parent_hint);
	m->opened = true;
	return 0;
}

static void vmdk_close(struct vdisk_image *img)
{
	struct vmdk *m = img->priv;
	if (m && m->opened && !img->read_only)
		img->fmt->flush(img);
	vmdk_free(img->priv);
	img->priv = NULL;
}

/* ------------------------------------------------------------ I/O */

static struct extent *find_extent(struct vmdk *m, uint64_t sector)
{
	size_t lo = 0, hi = m->n_ext;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		struct extent *e = &m->ext[mid];
		if (sector < e->start)
			hi = mid;
		else if (sector >= e->start + e->sectors)
			lo = mid + 1;
		else
			return e;
	}
	return NULL;
}

static int vmdk_block_status(struct vdisk_image *img, uint64_t off, uint64_t len, enum img_status *st, uint64_t *pnum)
{
	struct vmdk *m = img->priv;
	struct extent *e = find_extent(m, off / VDISK_SECTOR);
	if (!e)
		return vela_error(VELA_E_INTERNAL, "%s: no extent at %llu", img->path, (unsigned long long)off);
	uint64_t ext_end = (e->start + e->sectors) * VDISK_SECTOR;
	uint64_t max = ext_end - off < len ? ext_end - off : len;
	if (e->type == EXT_FLAT) {
		*st = IMG_DATA;
		*pnum = max;
		return 0;
	}
	if (e->type == EXT_ZERO) {
		*st = IMG_ZERO;
		*pnum = max;
		return 0;
	}
	uint64_t gbytes = e->sp->grain * VDISK_SECTOR;
	uint64_t rel = off - e->start * VDISK_SECTOR;
	uint64_t done = 0;
	enum img_status first = IMG_UNALLOC;
	pthread_mutex_lock(&img->lock);
	int r = 0;
	bool changed = false;
	while (done < max && !changed) {
		uint64_t g = (rel + done) / gbytes;
		uint64_t t = g / e->sp->gtes;
		if (t < e->sp->n_gdes && !e->sp->gd[t] && !e->sp->gt[t]) {
			/* A table never allocated: its whole span is unallocated,
			 * without building an empty table in memory (a sparse
			 * 1 TiB disk has 32768 of them). */
			if (done == 0)
				first = IMG_UNALLOC;
			else if (first != IMG_UNALLOC)
				break;
			done = (t + 1) * e->sp->gtes * gbytes - rel;
			continue;
		}
		uint32_t *gt;
		if (t >= e->sp->n_gdes) {
			r = vela_error(VELA_E_INTERNAL, "%s: grain %llu beyond the directory", e->path, (unsigned long long)g);
			break;
		}
		if ((r = load_gt(e, (uint32_t)t, &gt)) < 0)
			break;
		/* Walk this table's entries in place; allocated ones are
		 * validated (get_gte) before they count. */
		uint64_t in = (rel + done) % gbytes;   /* only the first grain may be partial */
		for (uint32_t idx = (uint32_t)(g % e->sp->gtes); idx < e->sp->gtes && done < max; idx++, g++) {
			uint32_t gte = gt[idx];
			if (gte != 0 && (r = get_gte(e, g, &gte)) < 0)
				break;
			enum img_status s = gte == 0 ? IMG_UNALLOC : gte == GTE_ZERO ? IMG_ZERO : IMG_DATA;
			if (done == 0) {
				first = s;
			} else if (s != first) {
				changed = true;
				break;
			}
			done += gbytes - in;
			in = 0;
		}
		if (r < 0)
			break;
	}
	pthread_mutex_unlock(&img->lock);
	if (r < 0)
		return r;
	*st = first;
	*pnum = done < max ? done : max;
	return 0;
}

static int write_u32_table(int fd, const uint32_t *t, uint32_t n, uint64_t sector, const char *path);

/* Read and inflate the compressed grain whose marker is at sector `at`. */
static int read_compressed_grain(struct extent *e, uint32_t at, uint8_t *out)
{
	struct sparse *sp = e->sp;
	uint64_t gbytes = sp->grain * VDISK_SECTOR;
	uint8_t m[12];
	struct stat st;
	int r = vdisk_pread_full(e->fd, m, sizeof m, (uint64_t)at * VDISK_SECTOR, e->path);
	if (r < 0)
		return r;
	if (fstat(e->fd, &st) < 0)
		return vela_error_errno(errno, "stat %s", e->path);
	uint32_t size = le32_get(m + 8);
	if (size == 0 || size > gbytes + 4096 || (uint64_t)at * VDISK_SECTOR + 12 + size > (uint64_t)st.st_size)
		return vela_error(VELA_E_CORRUPT, "%s: compressed grain at sector %u has a bad size (%u)", e->path, at, size);
	uint8_t *in = xcalloc(1, size);
	r = vdisk_pread_full(e->fd, in, size, (uint64_t)at * VDISK_SECTOR + 12, e->path);
	if (r == 0) {
		uLongf outlen = (uLongf)gbytes;
		int zr = uncompress(out, &outlen, in, size);
		if (zr != Z_OK && zr != Z_BUF_ERROR)
			r = vela_error(VELA_E_CORRUPT, "%s: compressed grain at sector %u does not inflate (zlib %d)", e->path, at, zr);
		else if (outlen < gbytes)
			memset(out + outlen, 0, gbytes - outlen);
	}
	free(in);
	return r;
}

/* Deflate a whole grain and append it behind a marker; *at = its sector. */
static int append_compressed_grain(struct extent *e, uint64_t g, const uint8_t *grain, uint32_t *at)
{
	struct sparse *sp = e->sp;
	uint64_t gbytes = sp->grain * VDISK_SECTOR;
	uLongf clen = compressBound((uLong)gbytes);
	size_t cap = (12 + clen + VDISK_SECTOR - 1) / VDISK_SECTOR * VDISK_SECTOR;
	uint8_t *buf = xcalloc(1, cap);
	if (compress2(buf + 12, &clen, grain, (uLong)gbytes, Z_DEFAULT_COMPRESSION) != Z_OK) {
		free(buf);
		return vela_error(VELA_E_INTERNAL, "%s: deflate failed", e->path);
	}
	le64_put(buf, g * sp->grain);
	le32_put(buf + 8, (uint32_t)clen);
	size_t total = (12 + clen + VDISK_SECTOR - 1) / VDISK_SECTOR * VDISK_SECTOR;
	if (sp->next_free + total / VDISK_SECTOR > UINT32_MAX) {
		free(buf);
		return vela_error(VELA_E_LIMIT, "%s: the file is full (32-bit sector numbers)", e->path);
	}
	int r = vdisk_pwrite_full(e->fd, buf, total, sp->next_free * VDISK_SECTOR, e->path);
	free(buf);
	if (r < 0)
		return r;
	*at = (uint32_t)sp->next_free;
	sp->next_free += total / VDISK_SECTOR;
	sp->tail_dirty = true;
	return 0;
}

/* The end of a streamOptimized file: a marker and table per used grain
 * table, the directory, the footer (a copy of the header that says where the
 * directory is) and the end-of-stream marker.  Written from sector pos. */
static int write_stream_tail(int fd, const char *path, const uint8_t *header, struct sparse *sp, uint64_t pos)
{
	uint8_t sec[512];
	uint64_t gts = gt_sectors(sp);
	int r = 0;
	for (uint32_t i = 0; i < sp->n_gdes && r == 0; i++) {
		bool used = false;
		for (uint32_t k = 0; sp->gt[i] && k < sp->gtes; k++)
			used |= sp->gt[i][k] != 0;
		if (!used) {
			sp->gd[i] = 0;
			continue;
		}
		memset(sec, 0, sizeof sec);
		le64_put(sec, gts);
		le32_put(sec + 12, MARKER_GT);
		r = vdisk_pwrite_full(fd, sec, sizeof sec, pos * VDISK_SECTOR, path);
		if (r == 0)
			r = write_u32_table(fd, sp->gt[i], sp->gtes, pos + 1, path);
		sp->gd[i] = (uint32_t)(pos + 1);
		pos += 1 + gts;
	}
	uint64_t gd_secs = ((uint64_t)sp->n_gdes * 4 + VDISK_SECTOR - 1) / VDISK_SECTOR;
	memset(sec, 0, sizeof sec);
	le64_put(sec, gd_secs);
	le32_put(sec + 12, MARKER_GD);
	if (r == 0)
		r = vdisk_pwrite_full(fd, sec, sizeof sec, pos * VDISK_SECTOR, path);
	if (r == 0) {
		/* Pad the directory to whole sectors. */
		uint32_t *padded = xcalloc(gd_secs * 128, 4);
		memcpy(padded, sp->gd, (size_t)sp->n_gdes * 4);
		r = write_u32_table(fd, padded, (uint32_t)(gd_secs * 128), pos + 1, path);
		free(padded);
	}
	sp->gd_sector = pos + 1;
	pos += 1 + gd_secs;
	memset(sec, 0, sizeof sec);
	le64_put(sec, 1);
	le32_put(sec + 12, MARKER_FOOTER);
	if (r == 0)
		r = vdisk_pwrite_full(fd, sec, sizeof sec, pos * VDISK_SECTOR, path);
	memcpy(sec, header, sizeof sec);
	le64_put(sec + 56, sp->gd_sector);
	if (r == 0)
		r = vdisk_pwrite_full(fd, sec, sizeof sec, (pos + 1) * VDISK_SECTOR, path);
	memset(sec, 0, sizeof sec);
	if (r == 0)
		r = vdisk_pwrite_full(fd, sec, sizeof sec, (pos + 2) * VDISK_SECTOR, path);
	if (r == 0 && ftruncate(fd, (off_t)((pos + 3) * VDISK_SECTOR)) < 0)
		r = vela_error_errno(errno, "%s: set size", path);
	return r;
}

static int vmdk_pread(struct vdisk_image *img, void *buf, size_t len, uint64_t off)
{
	struct vmdk *m = img->priv;
	char *p = buf;
	while (len > 0) {
		struct extent *e = find_extent(m, off / VDISK_SECTOR);
		if (!e)
			return vela_error(VELA_E_INTERNAL, "%s: no extent at %llu", img->path, (unsigned long long)off);
		uint64_t rel = off - e->start * VDISK_SECTOR;
		uint64_t ext_left = e->sectors * VDISK_SECTOR - rel;
		size_t n = len < ext_left ? len : (size_t)ext_left;
		int r;
		if (e->type == EXT_FLAT) {
			r = vdisk_data_pread(e->fd, DFD(e), p, n, e->offset * VDISK_SECTOR + rel, e->path);
		} else if (e->type == EXT_ZERO) {
			memset(p, 0, n);
			r = 0;
		} else {
			uint64_t gbytes = e->sp->grain * VDISK_SECTOR, in = rel % gbytes;
			if (n > gbytes - in)
				n = (size_t)(gbytes - in);
			uint32_t gte;
			pthread_mutex_lock(&img->lock);
			r = get_gte(e, rel / gbytes, &gte);
			/* Grains that follow each other in the file too are read in
			 * one request (up to 256 grains, one lock hold). */
			uint64_t left = len < ext_left ? len : ext_left;
			for (int more = 0; r == 0 && more < 256 && gte > GTE_ZERO && !e->sp->compressed && n < left; more++) {
				uint32_t next;
				if (get_gte(e, (rel + n) / gbytes, &next) < 0 ||
				    next != gte + (uint64_t)e->sp->grain * (uint64_t)(more + 1))
					break;
				n += left - n < gbytes ? (size_t)(left - n) : (size_t)gbytes;
			}
			pthread_mutex_unlock(&img->lock);
			if (r < 0)
				return r;
			if (gte <= GTE_ZERO) {
				memset(p, 0, n);   /* callers read DATA ranges only */
			} else if (e->sp->compressed) {
				uint8_t *g = xcalloc(1, gbytes);
				r = read_compressed_grain(e, gte, g);
				if (r == 0)
					memcpy(p, g + in, n);
				free(g);
			} else {
				r = vdisk_data_pread(e->fd, DFD(e), p, n, (uint64_t)gte * VDISK_SECTOR + in, e->path);
			}
		}
		if (r < 0)
			return r;
		p += n;
		off += n;
		len -= n;
	}
	return 0;
}

static int write_descriptor(struct vdisk_image *img, struct vmdk *m)
{
	if (m->desc_embedded) {
		struct sparse *sp = m->ext[0].sp;
		size_t cap = (size_t)(sp->desc_sectors * VDISK_SECTOR);
		if (strlen(m->desc) >= cap)
			return vela_error(VELA_E_TOOBIG, "%s: descriptor no longer fits its %zu bytes", img->path, cap);
		char *buf = xcalloc(1, cap);
		memcpy(buf, m->desc, strlen(m->desc));
		int r = vdisk_pwrite_full(m->ext[0].fd, buf, cap, sp->desc_sector * VDISK_SECTOR, img->path);
		free(buf);
		return r;
	}
	return write_file_atomic(img->path, m->desc, strlen(m->desc));
}

/* Replace "KEY=..." in the descriptor text (first occurrence at a line start). */
static void desc_set(struct vmdk *m, const char *key, const char *value)
{
	struct strbuf sb = { 0 };
	bool done = false;
	size_t klen = strlen(key);
	for (const char *line = m->desc; *line; ) {
		const char *nl = strchr(line, '\n');
		size_t n = nl ? (size_t)(nl - line + 1) : strlen(line);
		if (!done && strncmp(line, key, klen) == 0 && line[klen] == '=') {
			strbuf_printf(&sb, "%s=%s\n", key, value);
			done = true;
		} else {
			strbuf_append(&sb, line, n);
		}
		line += n;
	}
	free(m->desc);
	m->desc = strbuf_steal(&sb);
}

/* The content changes: give the disk a new content ID (children made from
 * the old content will then see that their parent changed). */
static int bump_cid(struct vdisk_image *img, struct vmdk *m)
{
	if (m->cid_bumped || !m->desc)
		return 0;
	uint32_t cid = m->next_cid;
	int r = 0;
	if (!cid && (r = random_bytes(&cid, sizeof cid)) < 0)
		return r;
	if (cid == 0xffffffffu || cid == m->cid)
		cid ^= 0x5a5a5a5au;
	char buf[16];
	snprintf(buf, sizeof buf, "%08x", cid);
	desc_set(m, "CID", buf);
	if ((r = write_descriptor(img, m)) < 0)
		return r;
	m->cid = cid;
	m->cid_bumped = true;
	return 0;
}

static int alloc_gt(struct extent *e, uint32_t i)
{
	struct sparse *sp = e->sp;
	uint64_t n = gt_sectors(sp);
	if (sp->next_free + n > UINT32_MAX)
		return vela_error(VELA_E_LIMIT, "%s: the file is full (sector numbers are 32-bit)", e->path);
	sp->gd[i] = (uint32_t)sp->next_free;
	sp->next_free += n;
	if (sp->rgd) {
		sp->rgd[i] = (uint32_t)sp->next_free;
		sp->next_free += n;
	}
	sp->gd_dirty = true;
	return 0;
}

static int write_grain(struct vdisk_image *img, struct extent *e, const char *src, size_t n, uint64_t rel)
{
	struct sparse *sp = e->sp;
	uint64_t gbytes = sp->grain * VDISK_SECTOR, g = rel / gbytes, in = rel % gbytes;
	uint32_t gte, i = (uint32_t)(g / sp->gtes), *gt;
	int r = get_gte(e, g, &gte);
	if (r < 0)
		return r;
	if (sp->compressed) {
		/* Grains are never rewritten in place: merge, deflate, append. */
		uint8_t *grain = xcalloc(1, gbytes);
		uint64_t vstart = e->start * VDISK_SECTOR + g * gbytes;
		if (n < gbytes) {
			if (gte > GTE_ZERO)
				r = read_compressed_grain(e, gte, grain);
			else if (gte == 0)
				r = vdisk_image_read_below(img, grain, gbytes, vstart);
		}
		uint32_t at = 0;
		if (r == 0 && (r = load_gt(e, i, &gt)) == 0) {
			memcpy(grain + in, src, n);
			r = append_compressed_grain(e, g, grain, &at);
		}
		free(grain);
		if (r < 0)
			return r;
		gt[g % sp->gtes] = at;
		if (!sp->gt_dirty[i]) {
			sp->gt_dirty[i] = 1;
			sp->n_dirty++;
		}
		return 0;
	}
	if (gte > GTE_ZERO)
		return vdisk_data_pwrite(e->fd, DFD(e), e->wb, src, n, (uint64_t)gte * VDISK_SECTOR + in, e->path);

	/* A new grain at the end of the file, filled from below where the
	 * write does not cover it. */
	if (!sp->gd[i] && (r = alloc_gt(e, i)) < 0)
		return r;
	if ((r = load_gt(e, i, &gt)) < 0)
		return r;
	if (sp->next_free + sp->grain > UINT32_MAX)
		return vela_error(VELA_E_LIMIT, "%s: the file is full (sector numbers are 32-bit)", e->path);
	uint64_t at = sp->next_free;
	if (n == gbytes) {
		r = vdisk_data_pwrite(e->fd, DFD(e), e->wb, src, n, at * VDISK_SECTOR, e->path);
	} else {
		char *buf = xcalloc(1, gbytes);
		uint64_t vstart = e->start * VDISK_SECTOR + g * gbytes;
		if (gte == 0)
			r = vdisk_image_read_below(img, buf, gbytes, vstart);
		if (r == 0) {
			memcpy(buf + in, src, n);
			r = vdisk_data_pwrite(e->fd, DFD(e), e->wb, buf, gbytes, at * VDISK_SECTOR, e->path);
		}
		free(buf);
	}
	if (r < 0)
		return r;
	sp->next_free += sp->grain;
	gt[g % sp->gtes] = (uint32_t)at;
	if (!sp->gt_dirty[i]) {
		sp->gt_dirty[i] = 1;
		sp->n_dirty++;
	}
	return 0;
}

static int vmdk_flush_locked(struct vdisk_image *img);

/* Overwrite of grains that are already allocated: look up under the lock,
 * write outside it (grains never move while the image is open).  Returns 1
 * if it wrote everything, 0 if the slow path must run. */
static int pwrite_allocated(struct vdisk_image *img, struct vmdk *m, const char *p, size_t len, uint64_t off)
{
	struct extent *e = find_extent(m, off / VDISK_SECTOR);
	if (!e || e->type != EXT_SPARSE || e->sp->compressed || !e->writable)
		return 0;
	uint64_t rel = off - e->start * VDISK_SECTOR, gbytes = e->sp->grain * VDISK_SECTOR;
	if (rel % gbytes + len > gbytes)
		return 0;   /* crosses a grain: let the general path split it */
	uint32_t gte;
	pthread_mutex_lock(&img->lock);
	int r = m->cid_bumped ? get_gte(e, rel / gbytes, &gte) : -1;
	pthread_mutex_unlock(&img->lock);
	if (r < 0 || gte <= GTE_ZERO)
		return 0;
	r = vdisk_data_pwrite(e->fd, DFD(e), e->wb, p, len, (uint64_t)gte * VDISK_SECTOR + rel % gbytes, e->path);
	return r < 0 ? r : 1;
}

static int vmdk_pwrite(struct vdisk_image *img, const void *buf, size_t len, uint64_t off)
{
	struct vmdk *m = img->priv;
	const char *p = buf;
	int r = pwrite_allocated(img, m, p, len, off);
	if (r != 0)
		return r < 0 ? r : 0;
	pthread_mutex_lock(&img->lock);
	if ((r = bump_cid(img, m)) < 0)
		goto out;
	while (len > 0) {
		struct extent *e = find_extent(m, off / VDISK_SECTOR);
		if (!e) {
			r = vela_error(VELA_E_INTERNAL, "%s: no extent at %llu", img->path, (unsigned long long)off);
			break;
		}
		if (!e->writable || e->type == EXT_ZERO) {
			r = vela_error(VELA_E_READONLY, "%s: extent %s is read-only", img->path, e->path ? e->path : "ZERO");
			break;
		}
		uint64_t rel = off - e->start * VDISK_SECTOR;
		uint64_t ext_left = e->sectors * VDISK_SECTOR - rel;
		size_t n = len < ext_left ? len : (size_t)ext_left;
		if (e->type == EXT_FLAT) {
			r = vdisk_data_pwrite(e->fd, DFD(e), e->wb, p, n, e->offset * VDISK_SECTOR + rel, e->path);
		} else {
			uint64_t gbytes = e->sp->grain * VDISK_SECTOR, in = rel % gbytes;
			if (n > gbytes - in)
				n = (size_t)(gbytes - in);
			r = write_grain(img, e, p, n, rel);
			if (r == 0 && e->sp->n_dirty > MAX_DIRTY_GTS)
				r = vmdk_flush_locked(img);   /* bound the metadata held in memory */
		}
		if (r < 0)
			break;
		p += n;
		off += n;
		len -= n;
	}
out:
	pthread_mutex_unlock(&img->lock);
	return r;
}

static int write_u32_table(int fd, const uint32_t *t, uint32_t n, uint64_t sector, const char *path)
{
	size_t bytes = (size_t)n * 4;
	uint8_t *raw = xcalloc(1, bytes);
	for (uint32_t k = 0; k < n; k++)
		le32_put(raw + 4 * (size_t)k, t[k]);
	int r = vdisk_pwrite_full(fd, raw, bytes, sector * VDISK_SECTOR, path);
	free(raw);
	return r;
}

static int vmdk_flush_locked(struct vdisk_image *img)
{
	struct vmdk *m = img->priv;
	int r = 0;
	for (size_t x = 0; x < m->n_ext && r == 0; x++) {
		struct extent *e = &m->ext[x];
		if (e->fd < 0 || !e->writable)
			continue;
		struct sparse *sp = e->sp;
		bool meta = sp && (sp->n_dirty || sp->gd_dirty);
		/* 1. the data the new metadata will point to */
		if (fdatasync(e->fd) < 0)
			return vela_error_errno(errno, "flush %s", e->path);
		if (sp && sp->compressed && sp->tail_gd) {
			if (!sp->tail_dirty && !meta)
				continue;
			r = write_stream_tail(e->fd, e->path, sp->header, sp, sp->next_free);
			if (r == 0 && fdatasync(e->fd) < 0)
				r = vela_error_errno(errno, "flush %s", e->path);
			memset(sp->gt_dirty, 0, sp->n_gdes);
			sp->n_dirty = 0;
			sp->gd_dirty = sp->tail_dirty = false;
			continue;
		}
		if (!meta)
			continue;
		/* 2. grain tables, then directories (a new table is referenced only
		 *    once its content is written) */
		for (uint32_t i = 0; i < sp->n_gdes && r == 0; i++) {
			if (!sp->gt_dirty[i])
				continue;
			r = write_u32_table(e->fd, sp->gt[i], sp->gtes, sp->gd[i], e->path);
			if (r == 0 && sp->rgd)
				r = write_u32_table(e->fd, sp->gt[i], sp->gtes, sp->rgd[i], e->path);
			sp->gt_dirty[i] = 0;
		}
		sp->n_dirty = 0;
		if (r == 0 && sp->gd_dirty) {
			if (fdatasync(e->fd) < 0)
				return vela_error_errno(errno, "flush %s", e->path);
			r = write_u32_table(e->fd, sp->gd, sp->n_gdes, sp->gd_sector, e->path);
			if (r == 0 && sp->rgd)
				r = write_u32_table(e->fd, sp->rgd, sp->n_gdes, sp->rgd_sector, e->path);
			sp->gd_dirty = false;
		}
		if (r == 0 && fdatasync(e->fd) < 0)
			r = vela_error_errno(errno, "flush %s", e->path);
	}
	return r;
}

static int vmdk_flush(struct vdisk_image *img)
{
	pthread_mutex_lock(&img->lock);
	int r = vmdk_flush_locked(img);
	pthread_mutex_unlock(&img->lock);
	return r;
}

/* ------------------------------------------------------------ create */

static const char *adapter_name(enum vdisk_adapter a)
{
	switch (a) {
	case VDISK_ADAPTER_IDE: return "ide";
	case VDISK_ADAPTER_LSILOGIC: return "lsilogic";
	case VDISK_ADAPTER_BUSLOGIC: return "buslogic";
	case VDISK_ADAPTER_VIRTIO: return "lsilogic";   /* VMDK has no virtio type: SCSI geometry */
	}
	return "ide";
}

static char *make_descriptor(uint32_t cid, uint32_t parent_cid, const char *type, const char *parent_name,
			     const char *extents, uint64_t sectors, enum vdisk_adapter a)
{
	uint32_t c, h, s;
	vdisk_geometry(sectors, a, &c, &h, &s);
	struct strbuf sb = { 0 };
	strbuf_printf(&sb, "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=%08x\nparentCID=%08x\n"
		      "isNativeSnapshot=\"no\"\ncreateType=\"%s\"\n", cid, parent_cid, type);
	if (parent_name)
		strbuf_printf(&sb, "parentFileNameHint=\"%s\"\n", parent_name);
	strbuf_printf(&sb, "\n# Extent description\n%s\n# The Disk Data Base\n#DDB\n\n"
		      "ddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"%u\"\nddb.geometry.heads = \"%u\"\n"
		      "ddb.geometry.sectors = \"%u\"\nddb.adapterType = \"%s\"\n", extents, c, h, s, adapter_name(a));
	return strbuf_steal(&sb);
}

/* Write a hosted sparse extent file of `capacity` sectors, optionally with an
 * embedded descriptor.  Grain tables are preallocated (zeros, sparse in the
 * host file) so other tools can write the image too. */
static int create_sparse_file(const char *path, uint64_t capacity, const char *desc)
{
	uint64_t grain = DEFAULT_GRAIN, per_gde = grain * GTES_PER_GT;
	uint64_t n_gdes = (capacity + per_gde - 1) / per_gde;
	uint64_t gd_secs = (n_gdes * 4 + VDISK_SECTOR - 1) / VDISK_SECTOR;
	uint64_t gt_secs = GTES_PER_GT * 4 / VDISK_SECTOR;
	uint64_t desc_secs = desc ? DESC_EMBED_SECTORS : 0;
	uint64_t rgd = 1 + desc_secs, rgts = rgd + gd_secs;
	uint64_t gd = rgts + n_gdes * gt_secs, gts = gd + gd_secs;
	uint64_t end = gts + n_gdes * gt_secs;
	uint64_t overhead = (end + grain - 1) / grain * grain;
	if (overhead > UINT32_MAX)
		return vela_error(VELA_E_LIMIT, "create %s: the disk is too large for a sparse VMDK extent", path);
	if (desc && strlen(desc) >= desc_secs * VDISK_SECTOR)
		return vela_error(VELA_E_TOOBIG, "create %s: descriptor too long", path);

	uint8_t h[512] = { 0 };
	le32_put(h, VMDK_MAGIC);
	le32_put(h + 4, 1);
	le32_put(h + 8, VMDK_FLAG_NL_TEST | VMDK_FLAG_RGD);
	le64_put(h + 12, capacity);
	le64_put(h + 20, grain);
	le64_put(h + 28, desc ? 1 : 0);
	le64_put(h + 36, desc_secs);
	le32_put(h + 44, GTES_PER_GT);
	le64_put(h + 48, rgd);
	le64_put(h + 56, gd);
	le64_put(h + 64, overhead);
	h[73] = '\n';
	h[74] = ' ';
	h[75] = '\r';
	h[76] = '\n';

	int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return vela_error_errno(errno, "create %s", path);
	int r = ftruncate(fd, (off_t)(overhead * VDISK_SECTOR)) < 0 ? vela_error_errno(errno, "create %s: set size", path) : 0;
	if (r == 0)
		r = vdisk_pwrite_full(fd, h, sizeof h, 0, path);
	if (r == 0 && desc)
		r = vdisk_pwrite_full(fd, desc, strlen(desc), VDISK_SECTOR, path);
	if (r == 0) {
		/* Both directories, built on disk byte order in one buffer. */
		uint8_t *t = xcalloc(n_gdes, 4);
		for (uint64_t i = 0; i < n_gdes; i++)
			le32_put(t + 4 * i, (uint32_t)(rgts + i * gt_secs));
		r = vdisk_pwrite_full(fd, t, n_gdes * 4, rgd * VDISK_SECTOR, path);
		for (uint64_t i = 0; i < n_gdes && r == 0; i++)
			le32_put(t + 4 * i, (uint32_t)(gts + i * gt_secs));
		if (r == 0)
			r = vdisk_pwrite_full(fd, t, n_gdes * 4, gd * VDISK_SECTOR, path);
		free(t);
	}
	return vdisk_finish_create(fd, path, r);
}

static int create_stream_file(const char *path, uint64_t capacity, const char *desc)
{
	uint8_t h[512] = { 0 };
	uint64_t overhead = DEFAULT_GRAIN;
	le32_put(h, VMDK_MAGIC);
	le32_put(h + 4, 3);
	le32_put(h + 8, VMDK_FLAG_NL_TEST | VMDK_FLAG_COMPRESSED | VMDK_FLAG_MARKERS);
	le64_put(h + 12, capacity);
	le64_put(h + 20, DEFAULT_GRAIN);
	le64_put(h + 28, 1);
	le64_put(h + 36, DESC_EMBED_SECTORS);
	le32_put(h + 44, GTES_PER_GT);
	le64_put(h + 48, 0);
	le64_put(h + 56, VMDK_GD_AT_END);
	le64_put(h + 64, overhead);
	h[73] = '\n';
	h[74] = ' ';
	h[75] = '\r';
	h[76] = '\n';
	h[77] = 1;   /* deflate */
	if (strlen(desc) >= DESC_EMBED_SECTORS * VDISK_SECTOR)
		return vela_error(VELA_E_TOOBIG, "create %s: descriptor too long", path);
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return vela_error_errno(errno, "create %s", path);
	int r = vdisk_pwrite_full(fd, h, sizeof h, 0, path);
	if (r == 0)
		r = vdisk_pwrite_full(fd, desc, strlen(desc), VDISK_SECTOR, path);
	if (r == 0) {
		/* An empty stream: no grains, an all-zero directory. */
		struct sparse sp = { .capacity = capacity, .grain = DEFAULT_GRAIN, .gtes = GTES_PER_GT };
		uint64_t per = sp.grain * sp.gtes;
		sp.n_gdes = (uint32_t)((capacity + per - 1) / per);
		sp.gd = xcalloc(sp.n_gdes, 4);
		sp.gt = xcalloc(sp.n_gdes, sizeof *sp.gt);
		r = write_stream_tail(fd, path, h, &sp, overhead);
		free(sp.gd);
		free(sp.gt);
	}
	return vdisk_finish_create(fd, path, r);
}

static int create_flat_file(const char *path, uint64_t sectors)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return vela_error_errno(errno, "create %s", path);
	int r = ftruncate(fd, (off_t)(sectors * VDISK_SECTOR)) < 0 ? vela_error_errno(errno, "create %s", path) : 0;
	close(fd);
	if (r < 0)
		unlink(path);
	return r;
}

static int vmdk_create(const char *path, const struct vdisk_create_opts *o, struct vdisk_image *parent,
		       const char *parent_name)
{
	uint64_t sectors = (o->size + VDISK_SECTOR - 1) / VDISK_SECTOR;
	uint32_t cid, parent_cid = 0xffffffffu;
	int r = random_bytes(&cid, sizeof cid);
	if (r < 0)
		return r;
	if (parent) {
		if (parent->fmt != &vdisk_format_vmdk)
			return vela_error(VELA_E_NOTSUP, "create %s: the parent %s is %s; a VMDK child needs a VMDK parent "
					  "(convert it first)", path, parent->path, parent->fmt->name);
		parent_cid = ((struct vmdk *)parent->priv)->cid;
	}
	CLEANUP_FREE char *base = path_basename(path);
	CLEANUP_FREE char *dir = path_dirname(path);
	size_t bl = strlen(base);
	CLEANUP_FREE char *stem = xstrndup(base, bl > 5 && str_ieq(base + bl - 5, ".vmdk") ? bl - 5 : bl);
	struct strbuf ext = { 0 };
	const char *type;

	switch (o->type) {
	case VDISK_TYPE_VMDK_MONOLITHIC_SPARSE: {
		type = "monolithicSparse";
		strbuf_printf(&ext, "RW %llu SPARSE \"%s\"\n", (unsigned long long)sectors, base);
		CLEANUP_FREE char *desc = make_descriptor(cid, parent_cid, type, parent_name, ext.data, sectors, o->adapter);
		r = create_sparse_file(path, sectors, desc);
		strbuf_free(&ext);
		return r;
	}
	case VDISK_TYPE_VMDK_STREAM: {
		if (parent)
			return vela_error(VELA_E_NOTSUP, "create %s: a streamOptimized disk cannot be a child", path);
		type = "streamOptimized";
		strbuf_printf(&ext, "RW %llu SPARSE \"%s\"\n", (unsigned long long)sectors, base);
		CLEANUP_FREE char *desc = make_descriptor(cid, parent_cid, type, NULL, ext.data, sectors, o->adapter);
		r = create_stream_file(path, sectors, desc);
		strbuf_free(&ext);
		return r;
	}
	case VDISK_TYPE_VMDK_MONOLITHIC_FLAT:
	case VDISK_TYPE_VMDK_2GB_FLAT:
	case VDISK_TYPE_VMDK_2GB_SPARSE: {
		bool split = o->type != VDISK_TYPE_VMDK_MONOLITHIC_FLAT;
		bool sparse = o->type == VDISK_TYPE_VMDK_2GB_SPARSE;
		type = sparse ? "twoGbMaxExtentSparse" : split ? "twoGbMaxExtentFlat" : "monolithicFlat";
		if (parent)
			return vela_error(VELA_E_NOTSUP, "create %s: a child disk is monolithicSparse", path);
		uint64_t per = split ? TWOGB_EXTENT_SECTORS : sectors;
		unsigned k = 0;
		for (uint64_t at = 0; at < sectors && r == 0; at += per) {
			uint64_t n = sectors - at < per ? sectors - at : per;
			char name[4200];
			if (split)
				snprintf(name, sizeof name, "%s-%c%03u.vmdk", stem, sparse ? 's' : 'f', ++k);
			else
				snprintf(name, sizeof name, "%s-flat.vmdk", stem);
			CLEANUP_FREE char *fp = path_join(dir, name);
			r = sparse ? create_sparse_file(fp, n, NULL) : create_flat_file(fp, n);
			if (sparse)
				strbuf_printf(&ext, "RW %llu SPARSE \"%s\"\n", (unsigned long long)n, name);
			else
				strbuf_printf(&ext, "RW %llu FLAT \"%s\" 0\n", (unsigned long long)n, name);
		}
		if (r == 0) {
			CLEANUP_FREE char *desc = make_descriptor(cid, parent_cid, type, NULL, ext.data, sectors, o->adapter);
			int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
			if (fd < 0)
				r = vela_error_errno(errno, "create %s", path);
			else {
				r = vdisk_pwrite_full(fd, desc, strlen(desc), 0, path);
				if (r == 0 && fsync(fd) < 0)
					r = vela_error_errno(errno, "create %s: sync", path);
				close(fd);
			}
		}
		strbuf_free(&ext);
		return r;
	}
	default:
		strbuf_free(&ext);
		return vela_error(VELA_E_INVAL, "create %s: not a VMDK type", path);
	}
}

/* ------------------------------------------------------------ info, check */

static int vmdk_info(struct vdisk_image *img, struct vdisk_info *info)
{
	struct vmdk *m = img->priv;
	struct stat st;
	info->subformat = xstrdup(m->create_type ? m->create_type : "monolithicSparse");
	info->adapter = m->adapter ? xstrdup(m->adapter) : NULL;
	info->cylinders = m->cyl;
	info->heads = m->heads;
	info->sectors = m->secs;
	if (m->desc_fd >= 0 && fstat(m->desc_fd, &st) == 0)
		info->allocated += (uint64_t)st.st_blocks * 512;
	for (size_t i = 0; i < m->n_ext; i++) {
		bool seen = false;
		for (size_t k = 0; k < i; k++)
			seen |= m->ext[k].fd == m->ext[i].fd;
		if (m->ext[i].fd >= 0 && !seen && fstat(m->ext[i].fd, &st) == 0)
			info->allocated += (uint64_t)st.st_blocks * 512;
	}
	return 0;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static int vmdk_check(struct vdisk_image *img, bool repair, struct vdisk_check_report *rep)
{
	struct vmdk *m = img->priv;
	memset(rep, 0, sizeof *rep);
	int r = 0;
	for (size_t x = 0; x < m->n_ext && r == 0; x++) {
		struct extent *e = &m->ext[x];
		struct sparse *sp = e->sp;
		if (!sp || sp->compressed || sp->cowd)
			continue;   /* compressed grains are variable-sized, COWD is read-only: no leak accounting */
		uint64_t gts = gt_sectors(sp), max_end = sp->overhead;
		size_t n_used = 0, cap = 1024;
		uint32_t *used = xcalloc(cap, sizeof *used);
		for (uint32_t i = 0; i < sp->n_gdes; i++) {
			if (!sp->gd[i])
				continue;
			uint64_t gt_end = (uint64_t)sp->gd[i] + gts;
			if (sp->rgd && (uint64_t)sp->rgd[i] + gts > gt_end)
				gt_end = (uint64_t)sp->rgd[i] + gts;
			if (gt_end > max_end)
				max_end = gt_end;
			uint32_t *gt;
			if ((r = load_gt(e, i, &gt)) < 0)
				break;
			for (uint32_t k = 0; k < sp->gtes; k++) {
				uint32_t v = gt[k];
				if (v <= GTE_ZERO)
					continue;
				if ((uint64_t)v < sp->overhead || (uint64_t)v + sp->grain > sp->file_sectors + sp->grain) {
					if (!rep->errors++)
						rep->first_problem = xasprintf("%s: grain table %u entry %u points to sector %u, "
									       "outside the data area", e->path, i, k, v);
					continue;
				}
				if ((uint64_t)v + sp->grain > max_end)
					max_end = (uint64_t)v + sp->grain;
				if (n_used == cap) {
					cap *= 2;
					used = xrealloc(used, cap * sizeof *used);
				}
				used[n_used++] = v;
			}
		}
		qsort(used, n_used, sizeof *used, cmp_u32);
		for (size_t k = 1; k < n_used; k++) {
			if (used[k] - used[k - 1] < sp->grain) {
				if (!rep->errors++)
					rep->first_problem = xasprintf("%s: two grains overlap at sector %u", e->path, used[k]);
			}
		}
		/* No grain may lie over a grain table or directory placed after the
		 * overhead (tables added later live in the data area). */
		for (uint32_t i = 0; i < sp->n_gdes && n_used; i++) {
			uint64_t starts[2] = { sp->gd[i], sp->rgd ? sp->rgd[i] : 0 };
			for (int w = 0; w < 2; w++) {
				uint64_t t0 = starts[w], t1 = t0 + gts;
				if (!t0 || t0 < sp->overhead)
					continue;
				/* the first grain that ends after t0 */
				size_t lo = 0, hi = n_used;
				while (lo < hi) {
					size_t mid = (lo + hi) / 2;
					if ((uint64_t)used[mid] + sp->grain <= t0)
						lo = mid + 1;
					else
						hi = mid;
				}
				if (lo < n_used && used[lo] < t1 && !rep->errors++)
					rep->first_problem = xasprintf("%s: the grain at sector %u lies over grain table %u", e->path,
								       used[lo], i);
			}
		}
		free(used);
		if (r < 0)
			break;
		/* Space after the last referenced grain: left by a crash before flush. */
		if (sp->file_sectors > max_end) {
			uint64_t leaked = (sp->file_sectors - max_end + sp->grain - 1) / sp->grain;
			rep->leaks += leaked;
			if (!rep->first_problem)
				rep->first_problem = xasprintf("%s: %llu grain%s of space after the last referenced grain", e->path,
							       (unsigned long long)leaked, leaked == 1 ? "" : "s");
			if (repair && !rep->errors && !img->read_only) {
				if (ftruncate(e->fd, (off_t)(max_end * VDISK_SECTOR)) < 0)
					return vela_error_errno(errno, "repair %s: truncate", e->path);
				sp->file_sectors = max_end;
				sp->next_free = max_end;
				rep->repaired += leaked;
			}
		}
	}
	return r;
}

static int vmdk_check_parent(struct vdisk_image *img, struct vdisk_image *parent)
{
	struct vmdk *m = img->priv;
	if (parent->fmt != &vdisk_format_vmdk || m->parent_cid == 0xffffffffu)
		return 0;
	struct vmdk *p = parent->priv;
	/* A commit of this child into its parent was under way: the parent
	 * took the CID announced here, and reads the same through the child. */
	if (m->merge_parent_cid != 0xffffffffu && p->cid == m->merge_parent_cid)
		return 0;
	if (p->cid != m->parent_cid)
		return vela_error(VELA_E_PARENT, "%s: its parent %s changed after the child was made (parentCID %08x, "
				  "the parent's CID is now %08x)", img->path, parent->path, m->parent_cid, p->cid);
	return 0;
}

/*
 * Before the child's content is merged into the parent (commit): the parent
 * will change content, hence CID, at its first merged write.  Announce that
 * CID in the child first (ddb.vela.mergeParentCID, a key other tools ignore),
 * so a crash in the middle of the merge leaves a chain that still opens:
 * the half-merged parent reads the same through the child.
 */
static int vmdk_prepare_merge(struct vdisk_image *child, struct vdisk_image *parent)
{
	struct vmdk *m = child->priv, *p = parent->priv;
	if (parent->fmt != &vdisk_format_vmdk || !m->desc || m->parent_cid == 0xffffffffu)
		return 0;
	uint32_t next;
	int r = random_bytes(&next, sizeof next);
	if (r < 0)
		return r;
	if (next == 0 || next == 0xffffffffu || next == p->cid)
		next ^= 0x5a5a5a5au;
	char buf[16];
	/* An earlier, interrupted merge may have moved the parent already. */
	snprintf(buf, sizeof buf, "%08x", p->cid);
	desc_set(m, "parentCID", buf);
	snprintf(buf, sizeof buf, "\"%08x\"", next);
	if (strstr(m->desc, "\nddb.vela.mergeParentCID=")) {
		desc_set(m, "ddb.vela.mergeParentCID", buf);
	} else {
		size_t dl = strlen(m->desc);
		char *nd = xasprintf("%s%sddb.vela.mergeParentCID=%s\n", m->desc, dl && m->desc[dl - 1] != '\n' ? "\n" : "", buf);
		free(m->desc);
		m->desc = nd;
	}
	if ((r = write_descriptor(child, m)) < 0)
		return r;
	if (m->desc_embedded && fsync(m->ext[0].fd) < 0)
		return vela_error_errno(errno, "fsync %s", child->path);
	m->parent_cid = p->cid;
	m->merge_parent_cid = next;
	p->next_cid = next;
	return 0;
}

static int vmdk_set_parent(struct vdisk_image *img, struct vdisk_image *parent, const char *parent_name)
{
	struct vmdk *m = img->priv;
	if (!m->desc)
		return vela_error(VELA_E_NOTSUP, "%s: a bare sparse extent has no descriptor to record a parent in", img->path);
	if (parent->fmt != &vdisk_format_vmdk)
		return vela_error(VELA_E_NOTSUP, "%s: a VMDK child needs a VMDK parent, not %s", img->path, parent->fmt->name);
	if (strchr(parent_name, '"'))
		return vela_error(VELA_E_BADNAME, "%s: the parent's name contains a quote", img->path);
	char cid[16];
	snprintf(cid, sizeof cid, "%08x", ((struct vmdk *)parent->priv)->cid);
	pthread_mutex_lock(&img->lock);
	desc_set(m, "parentCID", cid);
	CLEANUP_FREE char *quoted = xasprintf("\"%s\"", parent_name);
	if (strstr(m->desc, "\nparentFileNameHint="))
		desc_set(m, "parentFileNameHint", quoted);
	else {
		/* Insert it after the createType line. */
		char *ct = strstr(m->desc, "createType=");
		char *nl = ct ? strchr(ct, '\n') : NULL;
		size_t at = nl ? (size_t)(nl - m->desc) + 1 : strlen(m->desc);
		char *nd = xasprintf("%.*sparentFileNameHint=%s\n%s", (int)at, m->desc, quoted, m->desc + at);
		free(m->desc);
		m->desc = nd;
	}
	int r = write_descriptor(img, m);
	if (r == 0) {
		m->parent_cid = ((struct vmdk *)parent->priv)->cid;
		free(m->parent_hint);
		m->parent_hint = xstrdup(parent_name);
	}
	pthread_mutex_unlock(&img->lock);
	return r;
}

/* Rewrite a "key = \"value\"" ddb line of the descriptor. */
static void desc_set_ddb(struct vmdk *m, const char *key, const char *value)
{
	struct strbuf sb = { 0 };
	size_t kl = strlen(key);
	for (const char *line = m->desc; *line; ) {
		const char *nl = strchr(line, '\n');
		size_t n = nl ? (size_t)(nl - line + 1) : strlen(line);
		if (strncmp(line, key, kl) == 0 && (line[kl] == ' ' || line[kl] == '='))
			strbuf_printf(&sb, "%s = \"%s\"\n", key, value);
		else
			strbuf_append(&sb, line, n);
		line += n;
	}
	free(m->desc);
	m->desc = strbuf_steal(&sb);
}

/* The one extent line's sector count. */
static void desc_set_extent_sectors(struct vmdk *m, uint64_t sectors)
{
	struct strbuf sb = { 0 };
	for (const char *line = m->desc; *line; ) {
		const char *nl = strchr(line, '\n');
		size_t n = nl ? (size_t)(nl - line + 1) : strlen(line);
		if (str_starts_with(line, "RW ") || str_starts_with(line, "RDONLY ")) {
			const char *sp1 = strchr(line, ' ');
			const char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
			if (sp2 && sp2 < line + n) {
				strbuf_append(&sb, line, (size_t)(sp1 - line + 1));
				strbuf_printf(&sb, "%llu", (unsigned long long)sectors);
				strbuf_append(&sb, sp2, n - (size_t)(sp2 - line));
				line += n;
				continue;
			}
		}
		strbuf_append(&sb, line, n);
		line += n;
	}
	free(m->desc);
	m->desc = strbuf_steal(&sb);
}

static int grow_sparse(struct extent *e, uint64_t new_secs)
{
	struct sparse *sp = e->sp;
	uint64_t per = sp->grain * sp->gtes, gts = gt_sectors(sp);
	uint64_t new_n = (new_secs + per - 1) / per;
	if (new_n > UINT32_MAX / 4)
		return vela_error(VELA_E_LIMIT, "%s: too large for a sparse extent", e->path);
	uint32_t *gd = xcalloc(new_n, 4), *rgd = sp->rgd ? xcalloc(new_n, 4) : NULL;
	memcpy(gd, sp->gd, (size_t)sp->n_gdes * 4);
	if (rgd)
		memcpy(rgd, sp->rgd, (size_t)sp->n_gdes * 4);
	/* New grain tables (zeros: a hole in the file) and a new directory at
	 * the end; the header points at them last. */
	uint64_t pos = sp->next_free;
	for (uint64_t i = sp->n_gdes; i < new_n; i++) {
		gd[i] = (uint32_t)pos;
		pos += gts;
		if (rgd) {
			rgd[i] = (uint32_t)pos;
			pos += gts;
		}
	}
	uint64_t gd_secs = (new_n * 4 + VDISK_SECTOR - 1) / VDISK_SECTOR;
	uint64_t new_gd = pos, new_rgd = 0;
	pos += gd_secs;
	if (rgd) {
		new_rgd = pos;
		pos += gd_secs;
	}
	int r = 0;
	if (pos > UINT32_MAX)
		r = vela_error(VELA_E_LIMIT, "%s: too large for a sparse extent", e->path);
	if (r == 0 && ftruncate(e->fd, (off_t)(pos * VDISK_SECTOR)) < 0)
		r = vela_error_errno(errno, "extend %s", e->path);
	if (r == 0)
		r = write_u32_table(e->fd, gd, (uint32_t)new_n, new_gd, e->path);
	if (r == 0 && rgd)
		r = write_u32_table(e->fd, rgd, (uint32_t)new_n, new_rgd, e->path);
	if (r == 0 && fdatasync(e->fd) < 0)
		r = vela_error_errno(errno, "extend %s", e->path);
	if (r == 0) {
		le64_put(sp->header + 12, new_secs);
		le64_put(sp->header + 56, new_gd);
		le64_put(sp->header + 48, new_rgd);
		r = vdisk_pwrite_full(e->fd, sp->header, 512, 0, e->path);
	}
	if (r < 0) {
		free(gd);
		free(rgd);
		return r;
	}
	sp->gt = xrealloc(sp->gt, new_n * sizeof *sp->gt);
	sp->gt_dirty = xrealloc(sp->gt_dirty, new_n);
	for (uint64_t i = sp->n_gdes; i < new_n; i++) {
		sp->gt[i] = NULL;
		sp->gt_dirty[i] = 0;
	}
	free(sp->gd);
	free(sp->rgd);
	sp->gd = gd;
	sp->rgd = rgd;
	sp->n_gdes = (uint32_t)new_n;
	sp->gd_sector = new_gd;
	sp->rgd_sector = new_rgd;
	sp->capacity = new_secs;
	sp->next_free = pos;
	sp->file_sectors = pos;
	return 0;
}

/* Insert extent lines after the descriptor's last extent line. */
static void desc_add_extent_lines(struct vmdk *m, const char *lines)
{
	struct strbuf sb = { 0 };
	const char *after = NULL;
	for (const char *line = m->desc; *line; ) {
		const char *nl = strchr(line, '\n');
		size_t n = nl ? (size_t)(nl - line + 1) : strlen(line);
		if (str_starts_with(line, "RW ") || str_starts_with(line, "RDONLY ") || str_starts_with(line, "NOACCESS "))
			after = line + n;
		line += n;
	}
	if (!after)
		after = m->desc + strlen(m->desc);
	strbuf_append(&sb, m->desc, (size_t)(after - m->desc));
	if (after > m->desc && after[-1] != '\n')
		strbuf_puts(&sb, "\n");
	strbuf_puts(&sb, lines);
	strbuf_puts(&sb, after);
	free(m->desc);
	m->desc = strbuf_steal(&sb);
}

/*
 * Grow a disk split over extent files (twoGbMaxExtentSparse/Flat) the way
 * the classic tools do: the existing files stay as they are, new extent files
 * of at most 2047 MiB each cover the added sectors and are listed after the
 * others.  Files created here are removed again when a later step fails.
 */
static int add_extents(struct vdisk_image *img, struct vmdk *m, uint64_t new_secs)
{
	struct extent *last = &m->ext[m->n_ext - 1];
	if (m->desc_embedded || !m->desc)
		return vela_error(VELA_E_NOTSUP, "extend %s: no descriptor file to list new extents in", img->path);
	if ((last->type != EXT_SPARSE && last->type != EXT_FLAT) || (last->sp && last->sp->compressed))
		return vela_error(VELA_E_NOTSUP, "extend %s: this kind of extent cannot be extended", img->path);
	bool sparse = last->type == EXT_SPARSE;
	uint64_t have = last->start + last->sectors;
	size_t n_new = (size_t)((new_secs - have + TWOGB_EXTENT_SECTORS - 1) / TWOGB_EXTENT_SECTORS);
	CLEANUP_FREE char *base = path_basename(img->path);
	size_t bl = strlen(base);
	CLEANUP_FREE char *stem = xstrndup(base, bl > 5 && str_ieq(base + bl - 5, ".vmdk") ? bl - 5 : bl);
	struct extent *added = xcalloc(n_new, sizeof *added);
	struct strbuf lines = { 0 };
	int r = 0;
	size_t made = 0;
	unsigned k = (unsigned)m->n_ext;
	for (uint64_t at = have; at < new_secs && r == 0; at += TWOGB_EXTENT_SECTORS) {
		uint64_t n = new_secs - at < TWOGB_EXTENT_SECTORS ? new_secs - at : TWOGB_EXTENT_SECTORS;
		char name[4200];
		snprintf(name, sizeof name, "%s-%c%03u.vmdk", stem, sparse ? 's' : 'f', ++k);
		char *fp = path_join(img->dir, name);
		r = sparse ? create_sparse_file(fp, n, NULL) : create_flat_file(fp, n);
		if (r < 0) {
			free(fp);
			break;
		}
		struct extent *e = &added[made++];
		*e = (struct extent){ .type = sparse ? EXT_SPARSE : EXT_FLAT, .start = at, .sectors = n, .writable = true,
				      .path = fp, .fd = open(fp, O_RDWR | O_CLOEXEC) };
		if (e->fd < 0)
			r = vela_error_errno(errno, "extend %s: open %s", img->path, fp);
		else if (sparse)
			r = sparse_open(e->fd, fp, &e->sp);
		if (sparse)
			strbuf_printf(&lines, "RW %llu SPARSE \"%s\"\n", (unsigned long long)n, name);
		else
			strbuf_printf(&lines, "RW %llu FLAT \"%s\" 0\n", (unsigned long long)n, name);
	}
	char *old_desc = xstrdup(m->desc);
	if (r == 0) {
		desc_add_extent_lines(m, lines.data ? lines.data : "");
		r = write_descriptor(img, m);
	}
	if (r < 0) {
		free(m->desc);
		m->desc = old_desc;
		for (size_t i = 0; i < made; i++) {
			if (added[i].fd >= 0)
				close(added[i].fd);
			sparse_free(added[i].sp);
			unlink(added[i].path);
			free(added[i].path);
		}
		free(added);
		strbuf_free(&lines);
		return r;
	}
	free(old_desc);
	m->ext = xrealloc(m->ext, (m->n_ext + made) * sizeof *m->ext);
	memcpy(m->ext + m->n_ext, added, made * sizeof *added);
	m->n_ext += made;
	free(added);
	strbuf_free(&lines);
	return 0;
}

static int vmdk_resize(struct vdisk_image *img, uint64_t new_size)
{
	struct vmdk *m = img->priv;
	uint64_t new_secs = new_size / VDISK_SECTOR;
	bool split = m->create_type && str_istarts_with(m->create_type, "twoGbMaxExtent");
	struct extent *e = &m->ext[m->n_ext - 1];
	pthread_mutex_lock(&img->lock);
	int r = vmdk_flush_locked(img);
	if (r == 0 && (split || m->n_ext != 1)) {
		r = add_extents(img, m, new_secs);
	} else if (r == 0) {
		if (e->type == EXT_FLAT) {
			if (ftruncate(e->fd, (off_t)((e->offset + new_secs) * VDISK_SECTOR)) < 0)
				r = vela_error_errno(errno, "extend %s", e->path);
		} else if (e->type == EXT_SPARSE && !e->sp->compressed) {
			r = grow_sparse(e, new_secs);
		} else {
			r = vela_error(VELA_E_NOTSUP, "extend %s: this kind of extent cannot be extended", img->path);
		}
	}
	if (r == 0 && m->desc) {
		if (!split && m->n_ext == 1)
			desc_set_extent_sectors(m, new_secs);
		enum vdisk_adapter a = m->adapter && str_ieq(m->adapter, "ide") ? VDISK_ADAPTER_IDE : VDISK_ADAPTER_LSILOGIC;
		uint32_t c, h, sec;
		vdisk_geometry(new_secs, a, &c, &h, &sec);
		char buf[32];
		snprintf(buf, sizeof buf, "%u", c);
		desc_set_ddb(m, "ddb.geometry.cylinders", buf);
		snprintf(buf, sizeof buf, "%u", h);
		desc_set_ddb(m, "ddb.geometry.heads", buf);
		snprintf(buf, sizeof buf, "%u", sec);
		desc_set_ddb(m, "ddb.geometry.sectors", buf);
		r = write_descriptor(img, m);
	}
	if (r == 0) {
		if (!split && m->n_ext == 1)
			e->sectors = new_secs;
		img->size = new_secs * VDISK_SECTOR;
	}
	pthread_mutex_unlock(&img->lock);
	return r;
}

static int vmdk_unmap(struct vdisk_image *img, uint64_t off, uint64_t len)
{
	struct vmdk *m = img->priv;
	int r = 0;
	pthread_mutex_lock(&img->lock);
	uint64_t end = off + len;
	while (off < end && r == 0) {
		struct extent *e = find_extent(m, off / VDISK_SECTOR);
		if (!e)
			break;
		uint64_t rel = off - e->start * VDISK_SECTOR, ext_end = (e->start + e->sectors) * VDISK_SECTOR;
		uint64_t stop = end < ext_end ? end : ext_end;
		if (e->type == EXT_FLAT) {
			vdisk_punch_hole(e->fd, e->offset * VDISK_SECTOR + rel, stop - off);
		} else if (e->type == EXT_SPARSE && !e->sp->compressed) {
			struct sparse *sp = e->sp;
			uint64_t gbytes = sp->grain * VDISK_SECTOR;
			for (uint64_t g = (rel + gbytes - 1) / gbytes; (g + 1) * gbytes + e->start * VDISK_SECTOR <= stop && r == 0; g++) {
				uint32_t gte, *gt, i = (uint32_t)(g / sp->gtes);
				if ((r = get_gte(e, g, &gte)) < 0 || gte == 0)
					continue;
				if ((r = load_gt(e, i, &gt)) < 0)
					break;
				if (gte > GTE_ZERO)
					vdisk_punch_hole(e->fd, (uint64_t)gte * VDISK_SECTOR, gbytes);
				gt[g % sp->gtes] = 0;
				if (!sp->gt_dirty[i]) {
					sp->gt_dirty[i] = 1;
					sp->n_dirty++;
				}
			}
		}
		off = stop;
	}
	pthread_mutex_unlock(&img->lock);
	return r;
}

static int vmdk_list_files(struct vdisk_image *img, char ***files, size_t *n)
{
	struct vmdk *m = img->priv;
	char **v = xcalloc(m->n_ext + 1, sizeof *v);
	size_t k = 0;
	v[k++] = xstrdup(img->path);
	for (size_t i = 0; i < m->n_ext; i++) {
		if (!m->ext[i].path || strcmp(m->ext[i].path, img->path) == 0)
			continue;
		bool dup = false;
		for (size_t j = 0; j < k; j++)
			dup |= strcmp(v[j], m->ext[i].path) == 0;
		if (!dup)
			v[k++] = xstrdup(m->ext[i].path);
	}
	*files = v;
	*n = k;
	return 0;
}

const struct vdisk_format vdisk_format_vmdk = {
	.struct_size = sizeof(struct vdisk_format),
	.name = "vmdk",
	.probe = vmdk_probe,
	.open = vmdk_open,
	.close = vmdk_close,
	.block_status = vmdk_block_status,
	.pread = vmdk_pread,
	.pwrite = vmdk_pwrite,
	.flush = vmdk_flush,
	.create = vmdk_create,
	.info = vmdk_info,
	.check = vmdk_check,
	.check_parent = vmdk_check_parent,
	.prepare_merge = vmdk_prepare_merge,
	.set_parent = vmdk_set_parent,
	.resize = vmdk_resize,
	.unmap = vmdk_unmap,
	.list_files = vmdk_list_files,
};
