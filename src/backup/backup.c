/* backup.c - hot backup, verification and restore of whole VMs. */
#include "common.h"
#include "blk.h"
#include "vdisk.h"
#include "vmx.h"
#include "vmx-sup.h"
#include "backup.h"
#include "internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <nettle/sha2.h>
#include <xxhash.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define MANIFEST "manifest.json"
#define MANIFEST_MAX (16u << 20)
#define LIVE_TIMEOUT_MS (24 * 3600 * 1000)

/* Feed a whole file to update(ctx, data, len); *bytes: its length. */
static int read_through(const char *path, void (*update)(void *ctx, const void *p, size_t n), void *ctx,
			uint64_t *bytes)
{
	CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return vela_error_errno(errno, "open %s", path);
	size_t size = 4u << 20;
	CLEANUP_FREE uint8_t *buf = xcalloc(1, size);
	uint64_t total = 0;
	ssize_t n;
	while ((n = read(fd, buf, size)) > 0) {
		update(ctx, buf, (size_t)n);
		total += (uint64_t)n;
	}
	if (n < 0)
		return vela_error_errno(errno, "read %s", path);
	if (bytes)
		*bytes = total;
	return 0;
}

static void sha256_update_cb(void *ctx, const void *p, size_t n)
{
	sha256_update(ctx, n, p);
}

/* SHA-256 of a file as 64 hex digits (buffer of 65): older manifests.
 * Nettle (GnuTLS's own hash code) rather than GnuTLS: the CLI links this
 * module, and GnuTLS's start-up costs every vela command 2 ms. */
static int sha256_file(const char *path, char hex[65], uint64_t *bytes)
{
	struct sha256_ctx h;
	sha256_init(&h);
	int r = read_through(path, sha256_update_cb, &h, bytes);
	uint8_t digest[SHA256_DIGEST_SIZE];
	sha256_digest(&h, sizeof digest, digest);
	for (int i = 0; i < SHA256_DIGEST_SIZE; i++)
		snprintf(hex + 2 * i, 3, "%02x", digest[i]);
	return r;
}

static void xxh_update(void *ctx, const void *p, size_t n)
{
	XXH3_128bits_update(ctx, p, n);
}

/*
 * XXH3-128 of a file as 32 hex digits (buffer of 33): what the manifest
 * records.  A backup's checksums catch damage (bit rot, a torn copy), and
 * must not cost more than the copy: SHA-256 ran at 190 MB/s here, XXH3 at
 * memory speed.  (Manifests with "sha256" still verify.)
 */
static int xxh128_file(const char *path, char hex[33], uint64_t *bytes)
{
	XXH3_state_t *st = XXH3_createState();
	if (!st || XXH3_128bits_reset(st) != XXH_OK) {
		XXH3_freeState(st);
		return vela_error(VELA_E_NOMEM, "checksum state");
	}
	int r = read_through(path, xxh_update, st, bytes);
	XXH128_hash_t h = XXH3_128bits_digest(st);
	XXH3_freeState(st);
	snprintf(hex, 33, "%016llx%016llx", (unsigned long long)h.high64, (unsigned long long)h.low64);
	return r;
}

/*
 * The checksum of a disk's content, computed as the copy writes it (no
 * second pass over the image): XXH3-128 over every non-zero 64 KiB granule
 * of the virtual disk, each preceded by its offset (8 bytes, LE).  verify
 * recomputes it by reading the image through libvdisk.
 */
#define CONTENT_GRANULE (64u * 1024u)

struct content_hash {
	XXH3_state_t *st;
	uint64_t size;
	uint64_t cur;          /* the granule being assembled, UINT64_MAX = none */
	uint8_t buf[CONTENT_GRANULE];
};

static bool all_zero(const uint8_t *p, size_t n)
{
	return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

static void content_flush(struct content_hash *c)
{
	if (c->cur == UINT64_MAX)
		return;
	uint64_t off = c->cur * CONTENT_GRANULE;
	size_t n = c->size - off < CONTENT_GRANULE ? (size_t)(c->size - off) : CONTENT_GRANULE;
	if (!all_zero(c->buf, n)) {
		uint8_t le[8];
		le64_put(le, off);
		XXH3_128bits_update(c->st, le, 8);
		XXH3_128bits_update(c->st, c->buf, n);
	}
	memset(c->buf, 0, CONTENT_GRANULE);
	c->cur = UINT64_MAX;
}

static void content_add(uint64_t off, const void *p, size_t len, void *opaque)
{
	struct content_hash *c = opaque;
	const uint8_t *b = p;
	while (len > 0) {
		uint64_t g = off / CONTENT_GRANULE;
		if (g != c->cur) {
			content_flush(c);
			c->cur = g;
		}
		size_t within = (size_t)(off % CONTENT_GRANULE);
		size_t n = len < CONTENT_GRANULE - within ? len : CONTENT_GRANULE - within;
		memcpy(c->buf + within, b, n);
		off += n;
		b += n;
		len -= n;
	}
}

static struct content_hash *content_new(uint64_t size)
{
	struct content_hash *c = xcalloc(1, sizeof *c);
	c->st = XXH3_createState();
	if (!c->st || XXH3_128bits_reset(c->st) != XXH_OK)
		abort();   /* allocation of a small state: fatal, as xcalloc */
	c->size = size;
	c->cur = UINT64_MAX;
	return c;
}

static void content_end(struct content_hash *c, char hex[33])
{
	content_flush(c);
	XXH128_hash_t h = XXH3_128bits_digest(c->st);
	snprintf(hex, 33, "%016llx%016llx", (unsigned long long)h.high64, (unsigned long long)h.low64);
	XXH3_freeState(c->st);
	free(c);
}

/* The content checksum of an image as it reads through libvdisk. */
static int content_of_image(const char *path, char hex[33])
{
	struct vdisk *d = NULL;
	int r = vdisk_open(path, VDISK_OPEN_RDONLY, &d);
	if (r < 0)
		return r;
	uint64_t size = vdisk_size(d), off = 0;
	struct content_hash *c = content_new(size);
	size_t chunk = 4u << 20;
	CLEANUP_FREE uint8_t *buf = xcalloc(1, chunk);
	while (off < size && r == 0) {
		struct vdisk_extent_status es;
		uint64_t want = size - off < chunk ? size - off : chunk;
		if ((r = vdisk_block_status(d, off, want, &es)) < 0)
			break;
		if (es.status == VDISK_DATA && (r = vdisk_pread(d, buf, (size_t)es.len, off)) == 0)
			content_add(off, buf, (size_t)es.len, c);
		off += es.len;
	}
	content_end(c, hex);
	vdisk_close(d);
	return r;
}

static int copy_file(const char *from, const char *to)
{
	CLEANUP_FREE char *data = NULL;
	size_t len;
	int r = read_file(from, 1u << 30, &data, &len);
	if (r == 0)
		r = write_file_atomic(to, data, len);
	return r < 0 ? vela_error_context(r, "copy %s", from) : 0;
}

/* A name safe as one path component. */
static char *safe_name(const char *s)
{
	char *out = xstrdup(s && *s ? s : "vm");
	for (char *p = out; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
		      *p == '_' || *p == '.'))
			*p = '_';
	if (out[0] == '.')
		out[0] = '_';
	return out;
}

static int sup_request(const char *vmx, json_t *req, json_t **reply, int timeout_ms)
{
	json_t *rep = NULL;
	int r = vmxsup_call(vmx, req, &rep, timeout_ms);
	json_decref(req);
	if (reply)
		*reply = rep;
	else
		json_decref(rep);
	return r;
}

struct copy_progress {
	const struct backup_opts *o;
	uint64_t before, total;
	unsigned last;
};

static void on_copy_progress(uint64_t done, uint64_t total, void *opaque)
{
	(void)total;
	struct copy_progress *p = opaque;
	if (!p->o->progress || !p->total)
		return;
	unsigned pc = (unsigned)((p->before + done) * 100 / p->total);
	if (pc > 99)
		pc = 99;
	if (pc != p->last) {
		p->last = pc;
		p->o->progress(pc, p->o->opaque);
	}
}

struct bdisk {
	const struct vmx_disk *md;
	char *image;        /* the static image copied (the chain under it too) */
	char *file;         /* its copy's name in the backup */
	bool redo;          /* a live redo log went on: consolidate afterwards */
	uint64_t size;
	/* Changed-block tracking (ctkEnabled): the map since the last backup. */
	struct blk_cbt_epoch cbt;
	bool have_cbt;
	char *parent;       /* incremental: the previous backup's image, "../<folder>/<file>" */
	uint64_t changed;   /* incremental: granules copied */
	char content[33];   /* a full copy: the checksum of its content, "" = none */
};

/* The newest complete backup of this VM in dir: its manifest and folder
 * name (caller frees both), or NULL. */
static json_t *latest_backup(const char *dir, const char *stem, char **folder)
{
	*folder = NULL;
	DIR *d = opendir(dir);
	if (!d)
		return NULL;
	size_t sl = strlen(stem);
	char *best = NULL;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (strncmp(e->d_name, stem, sl) != 0 || e->d_name[sl] != '-' || strlen(e->d_name + sl + 1) < 15)
			continue;
		CLEANUP_FREE char *m = xasprintf("%s/%s/" MANIFEST, dir, e->d_name);
		if (access(m, F_OK) < 0 || (best && strcmp(e->d_name, best) <= 0))
			continue;
		free(best);
		best = xstrdup(e->d_name);
	}
	closedir(d);
	if (!best)
		return NULL;
	CLEANUP_FREE char *mp = xasprintf("%s/%s/" MANIFEST, dir, best);
	CLEANUP_FREE char *text = NULL;
	size_t len;
	json_error_t jerr;
	json_t *j = read_file(mp, MANIFEST_MAX, &text, &len) == 0 ? json_loadb(text, len, 0, &jerr) : NULL;
	if (!json_is_object(j)) {
		json_decref(j);
		free(best);
		return NULL;
	}
	*folder = best;
	return j;
}

/* The previous backup's entry for a disk, when its changed-block epoch is
 * the one that just ended: then the map covers exactly the time since. */
static const char *incremental_parent(json_t *prev, const char *addr, const char *ended_epoch)
{
	size_t i;
	json_t *d;
	json_array_foreach(json_object_get(prev, "disks"), i, d) {
		const char *a = json_string_value(json_object_get(d, "disk"));
		const char *ep = json_string_value(json_object_get(d, "cbt_next"));
		if (a && ep && strcmp(a, addr) == 0 && strcmp(ep, ended_epoch) == 0)
			return json_string_value(json_object_get(d, "file"));
	}
	return NULL;
}

/* An incremental copy: a child of the previous backup's image holding the
 * granules the map marks, read from the static image. */
static int copy_changed(struct bdisk *b, const char *src, const char *dst, const char *parent,
			struct copy_progress *cp)
{
	struct vdisk_create_opts co = { .type = VDISK_TYPE_VMDK_MONOLITHIC_SPARSE, .parent = parent };
	int r = vdisk_create(dst, &co);
	if (r < 0)
		return r;
	struct vdisk *in = NULL, *out = NULL;
	if ((r = vdisk_open(src, VDISK_OPEN_RDONLY, &in)) < 0 || (r = vdisk_open(dst, 0, &out)) < 0) {
		vdisk_close(in);
		return r;
	}
	if (vdisk_size(in) != vdisk_size(out))
		r = vela_error(VELA_E_INVAL, "%s: the disk's size changed since the previous backup", src);
	CLEANUP_FREE uint8_t *buf = xcalloc(1, BLK_CBT_GRANULE);
	uint64_t size = vdisk_size(in);
	for (uint64_t g = 0; r == 0 && g / 8 < b->cbt.nbytes && g * BLK_CBT_GRANULE < size; g++) {
		if (!(b->cbt.bits[g / 8] & (1u << (g % 8))))
			continue;
		uint64_t off = g * BLK_CBT_GRANULE;
		size_t n = size - off < BLK_CBT_GRANULE ? (size_t)(size - off) : BLK_CBT_GRANULE;
		if ((r = vdisk_pread(in, buf, n, off)) == 0)
			r = vdisk_pwrite(out, buf, n, off);
		b->changed++;
		on_copy_progress(off, size, cp);
	}
	if (r == 0)
		r = vdisk_flush(out);
	int e = vdisk_close(out);
	vdisk_close(in);
	return r < 0 ? r : e;
}

struct backup_meta {
	const char *real;
	const char *folder;
	struct vmx_model *m;
	struct bdisk *disks;
	size_t nd;
	json_t *skipped, *consolidation;
	bool live, frozen, compress;
};

/* The backup's configuration (pointing at the copies), NVRAM, logs and the
 * manifest with every file's checksum; *bytes: what the folder holds. */
static int write_folder(struct vmx_file *f, const struct backup_meta *b, uint64_t *bytes_out)
{
	const char *real = b->real, *folder = b->folder;
	struct vmx_model *m = b->m;
	struct bdisk *disks = b->disks;
	size_t nd = b->nd;
	json_t *skipped = b->skipped, *consolidation = b->consolidation;
	bool live = b->live, frozen = b->frozen;
	/* The configuration, pointing at the copies; NVRAM and logs as they are. */
	for (size_t i = 0; i < nd; i++) {
		CLEANUP_FREE char *key = xasprintf("%s.fileName", disks[i].md->addr);
		vmx_set(f, key, disks[i].file);
	}
	for (size_t i = 0; i < json_array_size(skipped); i++) {
		CLEANUP_FREE char *key = xasprintf("%s.present",
						   json_string_value(json_object_get(json_array_get(skipped, i), "disk")));
		vmx_set(f, key, "FALSE");
	}
	vmx_unset(f, "checkpoint.vmState");
	vmx_unset(f, "checkpoint.vmState.readOnly");
	CLEANUP_FREE char *vmx_name = path_basename(real);
	CLEANUP_FREE char *vmx_copy = path_join(folder, vmx_name);
	int r = vmx_file_save(f, vmx_copy);
	if (r < 0)
		return r;
	json_t *files = json_array();
	const char *vm_dir_end = strrchr(real, '/');
	CLEANUP_FREE char *vm_dir = xstrndup(real, (size_t)(vm_dir_end - real));
	DIR *dd = opendir(vm_dir);
	struct dirent *e;
	size_t stem_len = strlen(vmx_name) > 4 ? strlen(vmx_name) - 4 : strlen(vmx_name);
	while (dd && (e = readdir(dd))) {
		bool nvram = strncmp(e->d_name, vmx_name, stem_len) == 0 && strcmp(e->d_name + stem_len, ".nvram") == 0;
		bool log = str_starts_with(e->d_name, "vela") && strstr(e->d_name, ".log");
		if (!nvram && !log)
			continue;
		CLEANUP_FREE char *from = path_join(vm_dir, e->d_name);
		CLEANUP_FREE char *to = path_join(folder, e->d_name);
		if (copy_file(from, to) < 0)
			log_warn("backup: %s", vela_errmsg());
	}
	if (dd)
		closedir(dd);
	/* Checksums of everything in the folder. */
	dd = opendir(folder);
	uint64_t bytes = 0;
	while (dd && (e = readdir(dd)) && r == 0) {
		if (e->d_name[0] == '.' || strcmp(e->d_name, MANIFEST) == 0)
			continue;
		bool by_content = false;   /* a full disk copy: its content checksum stands for it */
		for (size_t i = 0; i < nd; i++)
			by_content |= disks[i].content[0] && strcmp(disks[i].file, e->d_name) == 0;
		if (by_content) {
			struct stat st;
			CLEANUP_FREE char *p = path_join(folder, e->d_name);
			if (stat(p, &st) == 0)
				bytes += (uint64_t)st.st_size;
			continue;
		}
		CLEANUP_FREE char *p = path_join(folder, e->d_name);
		char hex[33];
		uint64_t n = 0;
		if ((r = xxh128_file(p, hex, &n)) == 0)
			json_array_append_new(files, json_pack("{s:s, s:s, s:I}", "name", e->d_name, "xxh3_128", hex, "bytes",
							       (json_int_t)n));
		bytes += n;
	}
	if (dd)
		closedir(dd);
	json_t *jd = json_array();
	bool incremental = false;
	for (size_t i = 0; i < nd; i++) {
		json_t *e = json_pack("{s:s, s:s, s:s, s:I, s:s, s:b}", "disk", disks[i].md->addr, "file", disks[i].file,
				      "source", disks[i].md->path, "virtual_size", (json_int_t)disks[i].size, "mode",
				      vmx_disk_mode_name(disks[i].md->mode), "incremental", disks[i].parent != NULL);
		if (disks[i].have_cbt)
			json_object_set_new(e, "cbt_next", json_string(disks[i].cbt.next));
		if (disks[i].content[0])
			json_object_set_new(e, "content_xxh3_128", json_string(disks[i].content));
		if (disks[i].parent) {
			json_object_set_new(e, "parent", json_string(disks[i].parent));
			json_object_set_new(e, "changed_blocks", json_integer((json_int_t)disks[i].changed));
			json_object_set_new(e, "block_size", json_integer(BLK_CBT_GRANULE));
			incremental = true;
		}
		json_array_append_new(jd, e);
	}
	char when[40];
	time_format_iso(time_real_ms(), when, sizeof when);
	json_t *manifest = json_pack("{s:i, s:s, s:s, s:s, s:s, s:s, s:b, s:b, s:b, s:b, s:o, s:o, s:O, s:O}", "version", 1,
				     "vela", VELA_VERSION, "created", when, "vm", m->display_name, "source", real, "vmx",
				     vmx_name, "live", live, "quiesced", frozen, "compressed", b->compress, "incremental",
				     incremental, "disks", jd, "files", files, "skipped", skipped, "consolidation", consolidation);
	char *text = json_dumps(manifest, JSON_INDENT(2) | JSON_SORT_KEYS);
	CLEANUP_FREE char *mpath = path_join(folder, MANIFEST);
	if (r == 0)
		r = write_file_atomic(mpath, text, strlen(text));
	free(text);
	json_decref(manifest);
	*bytes_out = bytes;
	return r;
}

int backup_vm(const char *vmx, const char *dir, const struct backup_opts *o, json_t **out)
{
	static const struct backup_opts none = { 0 };
	if (!o)
		o = &none;
	char real[4096];
	if (!realpath(vmx, real))
		return vela_error_errno(errno, "backup: %s", vmx);
	struct vmx_file *f = NULL;
	struct vmx_model *m = NULL;
	struct vmx_model_opts mo = { .check_files = true };
	int r = vmx_file_load(real, &f);
	if (r == 0)
		r = vmx_model_build(f, real, &mo, NULL, &m);
	if (r < 0) {
		vmx_file_free(f);
		return vela_error_context(r, "backup");
	}
	int64_t t0 = time_mono_ms();
	bool live = vmxsup_is_running(real), frozen = false;
	struct bdisk *disks = xcalloc(m->n_disks + 1, sizeof *disks);
	size_t nd = 0;
	json_t *skipped = json_array(), *consolidation = json_array();
	CLEANUP_FREE char *folder = NULL;
	CLEANUP_FREE char *prev_folder = NULL;   /* incremental: the backup built on */
	CLEANUP_FREE char *stem = safe_name(m->display_name);
	uint64_t total = 0;

	/* The backup's folder: <name>-<UTC time>, unique. */
	char stamp[32];
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
	if ((r = mkdir_p(dir, 0755)) < 0)
		goto out;
	for (int i = 0; i < 100; i++) {
		free(folder);
		folder = i ? xasprintf("%s/%s-%s-%d", dir, stem, stamp, i) : xasprintf("%s/%s-%s", dir, stem, stamp);
		if (mkdir(folder, 0755) == 0)
			break;
		if (errno != EEXIST) {
			r = vela_error_errno(errno, "backup: create %s", folder);
			goto out;
		}
	}

	for (size_t i = 0; i < m->n_disks; i++) {
		const struct vmx_disk *md = &m->disks[i];
		if (md->type != VMX_DEV_DISK || !md->path)
			continue;
		if (md->mode == VMX_MODE_INDEPENDENT_PERSISTENT) {
			/* Written in place, outside every snapshot: no instant to copy. */
			json_array_append_new(skipped, json_pack("{s:s, s:s}", "disk", md->addr, "mode",
								 vmx_disk_mode_name(md->mode)));
			continue;
		}
		struct bdisk *b = &disks[nd++];
		b->md = md;
		b->image = xstrdup(md->path);
		CLEANUP_FREE char *id = xstrdup(md->addr);
		for (char *p = id; *p; p++)
			if (*p == ':')
				*p = '-';   /* scsi0:1 -> scsi0-1 */
		b->file = xasprintf("%s.vmdk", id);
	}

	/* The instant: quiesced (agent), then a redo log on every disk the
	 * guest writes in place; everything under it is static from now on. */
	if (live && o->quiesce) {
		if ((r = sup_request(real, json_pack("{s:s, s:s}", "cmd", "guest-op", "op", "freeze"), NULL, 120000)) < 0) {
			vela_error_context(r, "backup: quiesce the guest");
			goto out;
		}
		frozen = true;
	}
	for (size_t i = 0; live && i < nd && r == 0; i++) {
		if (disks[i].md->mode != VMX_MODE_PERSISTENT)
			continue;   /* the others write to redo logs already: their base is static */
		json_t *rep = NULL;
		r = sup_request(real, json_pack("{s:s, s:s, s:b}", "cmd", "addredo", "disk", disks[i].md->addr, "cbt",
						m->ctk_enabled), &rep, 60000);
		if (r < 0)
			vela_error_context(r, "backup: redo log on %s", disks[i].md->addr);
		else
			disks[i].redo = true;
		json_t *cbt = json_object_get(rep, "cbt");
		const char *b64 = json_string_value(json_object_get(cbt, "bitmap_base64"));
		void *bits = NULL;
		size_t nbytes = 0;
		if (r == 0 && b64 && base64_decode(b64, &bits, &nbytes) == 0) {
			struct blk_cbt_epoch *e = &disks[i].cbt;
			snprintf(e->prev, sizeof e->prev, "%s", json_string_value(json_object_get(cbt, "prev")) ?: "");
			snprintf(e->next, sizeof e->next, "%s", json_string_value(json_object_get(cbt, "next")) ?: "");
			e->bits = bits;
			e->nbytes = nbytes;
			disks[i].have_cbt = true;
		}
		json_decref(rep);
	}
	if (frozen) {
		int e = sup_request(real, json_pack("{s:s, s:s}", "cmd", "guest-op", "op", "thaw"), NULL, 60000);
		if (e < 0 && r == 0)
			r = vela_error_context(e, "backup: thaw the guest");
	}
	if (r < 0)
		goto consolidate;

	for (size_t i = 0; i < nd; i++) {
		struct vdisk *d = NULL;
		if ((r = vdisk_open(disks[i].image, VDISK_OPEN_RDONLY, &d)) < 0) {
			vela_error_context(r, "backup: %s", disks[i].md->addr);
			goto consolidate;
		}
		disks[i].size = vdisk_size(d);
		total += disks[i].size;
		vdisk_close(d);
		if (!live && m->ctk_enabled && disks[i].md->mode == VMX_MODE_PERSISTENT) {
			/* Nobody serves the disk: its map is read and restarted here. */
			char **chain = NULL;
			size_t cn = 0;
			if (vdisk_chain_paths(disks[i].image, &chain, &cn) == 0) {
				CLEANUP_FREE char *ctk = xasprintf("%s.ctk", chain[cn - 1]);
				if (blk_cbt_rotate_offline(ctk, disks[i].size, chain[0], &disks[i].cbt) == 0)
					disks[i].have_cbt = true;
				vdisk_chain_free(chain);
			}
		}
	}
	json_t *prev = o->incremental ? latest_backup(dir, stem, &prev_folder) : NULL;
	struct copy_progress cp = { .o = o, .total = total };
	for (size_t i = 0; i < nd && r == 0; i++) {
		CLEANUP_FREE char *dst = path_join(folder, disks[i].file);
		struct vdisk_create_opts co = {
			.type = o->compress ? VDISK_TYPE_VMDK_STREAM : VDISK_TYPE_VMDK_MONOLITHIC_SPARSE,
		};
		const char *pfile = prev && disks[i].have_cbt ? incremental_parent(prev, disks[i].md->addr, disks[i].cbt.prev)
							      : NULL;
		CLEANUP_FREE char *pimg = pfile && strchr(pfile, '/') == NULL ? xasprintf("%s/%s/%s", dir, prev_folder, pfile) : NULL;
		if (pimg && access(pimg, F_OK) == 0) {
			disks[i].parent = xasprintf("../%s/%s", prev_folder, pfile);
			r = copy_changed(&disks[i], disks[i].image, dst, pimg, &cp);
		} else {
			/* The content's checksum as it is written: no second pass. */
			struct content_hash *ch = content_new(disks[i].size);
			r = vdisk_convert_data(disks[i].image, dst, &co, on_copy_progress, &cp, content_add, ch);
			content_end(ch, disks[i].content);
			if (r < 0)
				disks[i].content[0] = '\0';
		}
		if (r < 0)
			vela_error_context(r, "backup: copy %s", disks[i].md->addr);
		cp.before += disks[i].size;
	}
	json_decref(prev);

consolidate:
	/* The logs go back into the disks, live, whatever happened above. */
	for (size_t i = 0; i < nd; i++) {
		if (!disks[i].redo)
			continue;
		json_t *rep = NULL;
		int e = sup_request(real, json_pack("{s:s, s:s, s:i}", "cmd", "commit", "disk", disks[i].md->addr, "level", 0),
				    &rep, LIVE_TIMEOUT_MS);
		json_decref(rep);
		json_array_append_new(consolidation, json_pack("{s:s, s:s}", "disk", disks[i].md->addr, "result",
							       e < 0 ? vela_errmsg() : "merged"));
		if (e < 0 && r == 0)
			r = vela_error_context(e, "backup: consolidate %s (the VM runs on its redo log)", disks[i].md->addr);
	}
	if (r < 0)
		goto out;

	uint64_t bytes = 0;
	struct backup_meta meta = { .real = real, .folder = folder, .m = m, .disks = disks, .nd = nd, .skipped = skipped,
				    .consolidation = consolidation, .live = live, .frozen = frozen, .compress = o->compress };
	r = write_folder(f, &meta, &bytes);
	if (r == 0) {
		if (o->progress)
			o->progress(100, o->opaque);
		uint64_t changed = 0;
		bool incr = false;
		for (size_t i = 0; i < nd; i++) {
			changed += disks[i].changed;
			incr |= disks[i].parent != NULL;
		}
		*out = json_pack("{s:s, s:s, s:I, s:I, s:b, s:b, s:I, s:b, s:I}", "folder", folder, "vm", m->display_name,
				 "disks", (json_int_t)nd, "bytes", (json_int_t)bytes, "live", live, "quiesced", frozen, "ms",
				 (json_int_t)(time_mono_ms() - t0), "incremental", incr, "changed_blocks", (json_int_t)changed);
	}
out:
	if (r < 0 && folder) {
		/* No half backups: a folder without a manifest is removed. */
		CLEANUP_FREE char *mpath = path_join(folder, MANIFEST);
		if (access(mpath, F_OK) < 0) {
			DIR *dd2 = opendir(folder);
			struct dirent *e2;
			while (dd2 && (e2 = readdir(dd2))) {
				if (e2->d_name[0] == '.')
					continue;
				CLEANUP_FREE char *p = path_join(folder, e2->d_name);
				unlink(p);
			}
			if (dd2)
				closedir(dd2);
			rmdir(folder);
		}
	}
	for (size_t i = 0; i < nd; i++) {
		free(disks[i].image);
		free(disks[i].file);
		free(disks[i].parent);
		blk_cbt_epoch_clear(&disks[i].cbt);
	}
	free(disks);
	json_decref(skipped);
	json_decref(consolidation);
	vmx_model_free(m);
	vmx_file_free(f);
	return r;
}

int backup_manifest_load(const char *backup, json_t **out)
{
	CLEANUP_FREE char *p = path_join(backup, MANIFEST);
	CLEANUP_FREE char *text = NULL;
	size_t len;
	int r = read_file(p, MANIFEST_MAX, &text, &len);
	if (r < 0)
		return vela_error_context(r, "%s is not a Vela backup", backup);
	json_error_t jerr;
	json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!json_is_object(j) || !json_is_array(json_object_get(j, "files")) ||
	    !json_is_array(json_object_get(j, "disks")) || !json_is_string(json_object_get(j, "vmx"))) {
		json_decref(j);
		return vela_error(VELA_E_CORRUPT, "%s: not a manifest Vela writes", p);
	}
	*out = j;
	return 0;
}

bool backup_plain_name(const char *s)
{
	return s && *s && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/* The folder name of an incremental disk's parent backup ("../F/file" -> F),
 * or NULL when the entry has no parent or names something else. */
static char *parent_folder(json_t *disk_entry)
{
	const char *p = json_string_value(json_object_get(disk_entry, "parent"));
	if (!p || strncmp(p, "../", 3) != 0)
		return NULL;
	const char *slash = strchr(p + 3, '/');
	if (!slash || slash == p + 3 || strchr(slash + 1, '/'))
		return NULL;
	char *f = xstrndup(p + 3, (size_t)(slash - (p + 3)));
	if (!backup_plain_name(f)) {
		free(f);
		return NULL;
	}
	return f;
}

static int verify_depth(const char *backup, json_t **out, unsigned depth);

int backup_verify(const char *backup, json_t **out)
{
	return verify_depth(backup, out, 0);
}

static int verify_depth(const char *backup, json_t **out, unsigned depth)
{
	if (depth > 1000)
		return vela_error(VELA_E_LOOP, "%s: more than 1000 incremental backups in a chain (a loop?)", backup);
	json_t *man = NULL;
	int r = backup_manifest_load(backup, &man);
	if (r < 0)
		return r;
	size_t i;
	json_t *fe;
	uint64_t bytes = 0;
	json_array_foreach(json_object_get(man, "files"), i, fe) {
		const char *name = json_string_value(json_object_get(fe, "name"));
		const char *want = json_string_value(json_object_get(fe, "xxh3_128"));
		bool sha = !want;
		if (sha)
			want = json_string_value(json_object_get(fe, "sha256"));
		if (!backup_plain_name(name) || !want) {
			r = vela_error(VELA_E_CORRUPT, "%s: manifest entry %zu is malformed", backup, i);
			break;
		}
		CLEANUP_FREE char *p = path_join(backup, name);
		char hex[65];
		uint64_t n = 0;
		if ((r = sha ? sha256_file(p, hex, &n) : xxh128_file(p, hex, &n)) < 0)
			break;
		if (strcmp(hex, want) != 0) {
			r = vela_error(VELA_E_CORRUPT, "%s: %s does not match its checksum (the backup is damaged)", backup, name);
			break;
		}
		bytes += n;
	}
	/* Full disk copies: their content, read back through libvdisk. */
	json_t *cd;
	json_array_foreach(json_object_get(man, "disks"), i, cd) {
		const char *file = json_string_value(json_object_get(cd, "file"));
		const char *want = json_string_value(json_object_get(cd, "content_xxh3_128"));
		if (r < 0 || !want)
			continue;
		if (!backup_plain_name(file)) {
			r = vela_error(VELA_E_CORRUPT, "%s: disk %zu of the manifest is malformed", backup, i);
			break;
		}
		CLEANUP_FREE char *p = path_join(backup, file);
		char hex[33];
		struct stat st;
		if ((r = content_of_image(p, hex)) < 0) {
			r = vela_error(VELA_E_CORRUPT, "%s: %s does not open as a disk image (the backup is damaged): %s", backup,
				       file, vela_errmsg());
			break;
		}
		if (strcmp(hex, want) != 0) {
			r = vela_error(VELA_E_CORRUPT, "%s: the content of %s does not match its checksum (the backup is damaged)",
				       backup, file);
			break;
		}
		if (stat(p, &st) == 0)
			bytes += (uint64_t)st.st_size;
	}
	/* An incremental backup is only as good as the ones it builds on. */
	json_t *dd;
	uint64_t chain = 0;
	json_array_foreach(json_object_get(man, "disks"), i, dd) {
		CLEANUP_FREE char *pf = parent_folder(dd);
		if (r < 0 || !pf)
			continue;
		CLEANUP_FREE char *up = path_dirname(backup);
		CLEANUP_FREE char *pp = path_join(up, pf);
		json_t *po = NULL;
		if ((r = verify_depth(pp, &po, depth + 1)) < 0)
			vela_error_context(r, "%s builds on %s", backup, pf);
		else
			chain += 1 + (uint64_t)json_integer_value(json_object_get(po, "builds_on"));
		json_decref(po);
		break;   /* every disk of a backup has the same parent backup */
	}
	if (r == 0)
		*out = json_pack("{s:I, s:I, s:b, s:I}", "files", (json_int_t)json_array_size(json_object_get(man, "files")),
				 "bytes", (json_int_t)bytes, "ok", 1, "builds_on", (json_int_t)chain);
	json_decref(man);
	return r;
}

int backup_restore(const char *backup, const char *dest, const char *new_name, json_t **out)
{
	json_t *verified = NULL;
	int r = backup_verify(backup, &verified);
	json_decref(verified);
	if (r < 0)
		return vela_error_context(r, "restore");
	json_t *man = NULL;
	if ((r = backup_manifest_load(backup, &man)) < 0)
		return r;
	const char *vmx_name = json_string_value(json_object_get(man, "vmx"));
	struct vmx_file *f = NULL;
	CLEANUP_FREE char *vmx_in = path_join(backup, backup_plain_name(vmx_name) ? vmx_name : "");
	CLEANUP_FREE char *vmx_out = NULL;
	CLEANUP_FREE char *stem = NULL;
	if (!backup_plain_name(vmx_name)) {
		r = vela_error(VELA_E_CORRUPT, "%s: the manifest's vmx is not a file name", backup);
		goto out;
	}
	if (mkdir(dest, 0755) < 0) {
		r = errno == EEXIST ? vela_error(VELA_E_EXISTS, "restore: %s exists; restore into a new folder", dest)
				    : vela_error_errno(errno, "restore: create %s", dest);
		goto out;
	}
	if ((r = vmx_file_load(vmx_in, &f)) < 0)
		goto out;
	size_t i;
	json_t *d;
	json_array_foreach(json_object_get(man, "disks"), i, d) {
		const char *file = json_string_value(json_object_get(d, "file"));
		const char *addr = json_string_value(json_object_get(d, "disk"));
		if (!backup_plain_name(file) || !addr) {
			r = vela_error(VELA_E_CORRUPT, "%s: disk %zu of the manifest is malformed", backup, i);
			goto out;
		}
		CLEANUP_FREE char *src = path_join(backup, file);
		CLEANUP_FREE char *dst = path_join(dest, file);
		struct vdisk_create_opts co = { .type = VDISK_TYPE_VMDK_MONOLITHIC_SPARSE };
		if ((r = vdisk_convert(src, dst, &co, NULL, NULL)) < 0) {
			vela_error_context(r, "restore %s", addr);
			goto out;
		}
	}
	json_t *fe;
	json_array_foreach(json_object_get(man, "files"), i, fe) {
		const char *name = json_string_value(json_object_get(fe, "name"));
		size_t n = name ? strlen(name) : 0;
		if (backup_plain_name(name) && n > 6 && strcmp(name + n - 6, ".nvram") == 0) {
			CLEANUP_FREE char *from = path_join(backup, name);
			CLEANUP_FREE char *to = path_join(dest, name);
			if ((r = copy_file(from, to)) < 0)
				goto out;
		}
	}
	if (new_name) {
		/* A second VM next to the original: its own name and identity. */
		vmx_set(f, "displayName", new_name);
		vmx_set(f, "uuid.action", "create");
	}
	stem = new_name ? safe_name(new_name) : NULL;
	vmx_out = stem ? xasprintf("%s/%s.vmx", dest, stem) : path_join(dest, vmx_name);
	if ((r = vmx_file_save(f, vmx_out)) < 0)
		goto out;
	*out = json_pack("{s:s}", "vmx", vmx_out);
out:
	vmx_file_free(f);
	json_decref(man);
	return r;
}

static int remove_tree(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return vela_error_errno(errno, "open %s", dir);
	struct dirent *e;
	int r = 0;
	while ((e = readdir(d))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		CLEANUP_FREE char *p = path_join(dir, e->d_name);
		if (unlink(p) < 0 && r == 0)
			r = vela_error_errno(errno, "remove %s", p);   /* backups hold files only */
	}
	closedir(d);
	if (r == 0 && rmdir(dir) < 0)
		r = vela_error_errno(errno, "remove %s", dir);
	return r;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The backups of a VM in dir: folders <stem>-YYYYMMDD-HHMMSS[-N] with a
 * manifest, oldest first (the time sorts as text).  *names is freed with
 * free_names. */
static int scan_backups(const char *dir, const char *vm_name, char ***names_out, size_t *n_out)
{
	CLEANUP_FREE char *stem = safe_name(vm_name);
	size_t sl = strlen(stem);
	*names_out = NULL;
	*n_out = 0;
	DIR *d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0 : vela_error_errno(errno, "open %s", dir);
	char **names = NULL;
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		const char *t = e->d_name + sl + 1;
		if (strncmp(e->d_name, stem, sl) != 0 || e->d_name[sl] != '-' || strlen(t) < 15 || t[8] != '-')
			continue;
		CLEANUP_FREE char *m = xasprintf("%s/%s/" MANIFEST, dir, e->d_name);
		if (access(m, F_OK) < 0)
			continue;
		names = xrealloc(names, (n + 1) * sizeof *names);
		names[n++] = xstrdup(e->d_name);
	}
	closedir(d);
	if (n)
		qsort(names, n, sizeof *names, cmp_names);
	*names_out = names;
	*n_out = n;
	return 0;
}

static void free_names(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

int backup_vm_name(const char *vmx, char **out)
{
	struct vmx_file *f = NULL;
	struct vmx_model *m = NULL;
	struct vmx_model_opts mo = { .check_files = false };
	int r = vmx_file_load(vmx, &f);
	if (r == 0)
		r = vmx_model_build(f, vmx, &mo, NULL, &m);
	if (r == 0)
		*out = xstrdup(m->display_name);
	vmx_model_free(m);
	vmx_file_free(f);
	return r;
}

int backup_list(const char *dir, const char *vm_name, json_t **out)
{
	char **names = NULL;
	size_t n = 0;
	int r = scan_backups(dir, vm_name, &names, &n);
	if (r < 0)
		return r;
	json_t *list = json_array();
	for (size_t i = n; i-- > 0;) {
		json_t *man = NULL;
		CLEANUP_FREE char *p = path_join(dir, names[i]);
		if (backup_manifest_load(p, &man) < 0)
			continue;
		json_t *builds_on = json_null();
		uint64_t bytes = 0;
		size_t k;
		json_t *d2;
		json_array_foreach(json_object_get(man, "disks"), k, d2) {
			CLEANUP_FREE char *pf = parent_folder(d2);
			if (pf && json_is_null(builds_on))
				builds_on = json_string(pf);
		}
		json_array_foreach(json_object_get(man, "files"), k, d2)
			bytes += (uint64_t)json_integer_value(json_object_get(d2, "bytes"));
		json_array_append_new(list, json_pack("{s:s, s:O, s:O, s:O, s:O, s:O, s:I, s:I, s:o}", "folder", names[i],
						      "created", json_object_get(man, "created"), "live",
						      json_object_get(man, "live"), "quiesced", json_object_get(man, "quiesced"),
						      "compressed", json_object_get(man, "compressed"), "incremental",
						      json_object_get(man, "incremental"), "disks",
						      (json_int_t)json_array_size(json_object_get(man, "disks")), "bytes",
						      (json_int_t)bytes, "builds_on", builds_on));
		json_decref(man);
	}
	free_names(names, n);
	*out = list;
	return 0;
}

int backup_prune(const char *dir, const char *vm_name, unsigned keep, json_t **removed)
{
	char **names = NULL;
	size_t n = 0;
	int sr = scan_backups(dir, vm_name, &names, &n);
	if (sr < 0)
		return sr;
	json_t *gone = json_array();
	int r = 0;
	/* A kept incremental backup keeps every backup it builds on. */
	bool *needed = xcalloc(n + 1, sizeof *needed);
	for (size_t i = n; i-- > 0;) {
		if (i + keep < n && !needed[i])
			continue;
		needed[i] = true;
		json_t *man = NULL;
		CLEANUP_FREE char *p = path_join(dir, names[i]);
		if (backup_manifest_load(p, &man) < 0)
			continue;
		size_t k;
		json_t *d2;
		json_array_foreach(json_object_get(man, "disks"), k, d2) {
			CLEANUP_FREE char *pf = parent_folder(d2);
			for (size_t x = 0; pf && x < i; x++)
				if (strcmp(names[x], pf) == 0)
					needed[x] = true;
		}
		json_decref(man);
	}
	for (size_t i = 0; i < n && r == 0; i++) {
		if (needed[i])
			continue;
		CLEANUP_FREE char *p = path_join(dir, names[i]);
		if ((r = remove_tree(p)) == 0)
			json_array_append_new(gone, json_string(names[i]));
	}
	free(needed);
	free_names(names, n);
	if (removed)
		*removed = gone;
	else
		json_decref(gone);
	return r;
}
