/* Unit tests: src/vdisk (formats, chains, operations, crash consistency, hostile images). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <zlib.h>

#include "common.h"
#include "vdisk.h"
#include "vdisk-format.h"   /* the module's own tests may use its fault injection */

static char dir[64];
#define MIB (1024u * 1024u)

static char *tmp(const char *name)
{
	return xasprintf("%s/%s", dir, name);
}

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof dir, "/tmp/vela-vdisk-XXXXXX");
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	char *cmd = xasprintf("rm -rf %s", dir);
	int r = system(cmd);
	free(cmd);
	return r ? -1 : 0;
}

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static void create(const char *path, enum vdisk_type t, uint64_t size)
{
	struct vdisk_create_opts o = { .type = t, .size = size, .adapter = VDISK_ADAPTER_LSILOGIC };
	if (vdisk_create(path, &o) < 0)
		fail_msg("create %s: %s", path, vela_errmsg());
}

static struct vdisk *open_rw(const char *path)
{
	struct vdisk *d = NULL;
	if (vdisk_open(path, 0, &d) < 0)
		fail_msg("open %s: %s", path, vela_errmsg());
	return d;
}

static void assert_content(struct vdisk *d, const uint8_t *model, uint64_t size)
{
	uint8_t *buf = xcalloc(1, size);
	assert_int_equal(vdisk_pread(d, buf, size, 0), 0);
	for (uint64_t i = 0; i < size; i++)
		if (buf[i] != model[i])
			fail_msg("byte %llu: got %02x, expected %02x", (unsigned long long)i, buf[i], model[i]);
	free(buf);
}

/* Random writes at odd offsets (some across grains and extents), the last
 * sector, reads in between; then reopen and compare with the model. */
static void random_io(enum vdisk_type t, uint64_t size)
{
	char *p = tmp(vdisk_type_name(t));
	create(p, t, size);
	struct vdisk *d = open_rw(p);
	if (t == VDISK_TYPE_VHD_DYNAMIC || t == VDISK_TYPE_VHD_FIXED) {
		assert_true(vdisk_size(d) >= size && vdisk_size(d) < size + 64 * 1024);   /* CHS rounding */
		size = vdisk_size(d);
	} else {
		assert_int_equal(vdisk_size(d), size);
	}
	uint8_t *model = xcalloc(1, size);
	uint8_t *buf = xcalloc(1, 300000);
	for (int i = 0; i < 200; i++) {
		uint64_t len = 1 + rnd() % 200000;
		uint64_t off = rnd() % (size - len);
		if (i == 0) {
			off = size - 512;   /* data at the last sector */
			len = 512;
		}
		for (uint64_t k = 0; k < len; k++)
			buf[k] = (uint8_t)(rnd() | 1);
		assert_int_equal(vdisk_pwrite(d, buf, len, off), 0);
		memcpy(model + off, buf, len);
		if (i % 17 == 0)
			assert_int_equal(vdisk_flush(d), 0);
		/* Reads of any length at odd offsets: they cross grains and
		 * clusters that may or may not follow each other in the file. */
		uint64_t rlen = 1 + rnd() % 300000;
		uint64_t roff = rnd() % (size - rlen);
		assert_int_equal(vdisk_pread(d, buf, rlen, roff), 0);
		assert_memory_equal(buf, model + roff, rlen);
	}
	assert_content(d, model, size);
	assert_int_equal(vdisk_close(d), 0);
	d = open_rw(p);
	assert_content(d, model, size);
	vdisk_close(d);

	struct vdisk_check_report rep;
	assert_int_equal(vdisk_check(p, false, &rep), 0);
	assert_int_equal(rep.errors, 0);
	assert_int_equal(rep.leaks, 0);
	free(rep.first_problem);
	free(model);
	free(buf);
	free(p);
}

static void io_raw(void **s) { (void)s; random_io(VDISK_TYPE_RAW, 24 * MIB + 4096); }
static void io_monolithic_sparse(void **s) { (void)s; random_io(VDISK_TYPE_VMDK_MONOLITHIC_SPARSE, 24 * MIB + 512); }
static void io_monolithic_flat(void **s) { (void)s; random_io(VDISK_TYPE_VMDK_MONOLITHIC_FLAT, 24 * MIB); }
static void io_2gb_sparse(void **s) { (void)s; random_io(VDISK_TYPE_VMDK_2GB_SPARSE, 24 * MIB); }
static void io_2gb_flat(void **s) { (void)s; random_io(VDISK_TYPE_VMDK_2GB_FLAT, 24 * MIB); }
static void io_vhd_dynamic(void **s) { (void)s; random_io(VDISK_TYPE_VHD_DYNAMIC, 24 * MIB); }
static void io_vhd_fixed(void **s) { (void)s; random_io(VDISK_TYPE_VHD_FIXED, 24 * MIB); }
static void io_qcow2(void **s) { (void)s; random_io(VDISK_TYPE_QCOW2, 24 * MIB + 512); }
static void io_stream(void **s) { (void)s; random_io(VDISK_TYPE_VMDK_STREAM, 8 * MIB); }

static void errors_of_io_and_create(void **s)
{
	(void)s;
	char *p = tmp("errs.vmdk");
	create(p, VDISK_TYPE_VMDK_MONOLITHIC_SPARSE, MIB);
	struct vdisk_create_opts o = { .type = VDISK_TYPE_VMDK_MONOLITHIC_SPARSE, .size = MIB };
	assert_int_equal(vdisk_create(p, &o), -VELA_E_EXISTS);
	o.size = 0;
	char *q = tmp("zero.vmdk");
	assert_int_equal(vdisk_create(q, &o), -VELA_E_INVAL);
	o.size = VDISK_MAX_SIZE + 1;
	assert_int_equal(vdisk_create(q, &o), -VELA_E_LIMIT);
	struct vdisk *d = open_rw(p);
	char buf[512] = { 1 };
	assert_int_equal(vdisk_pwrite(d, buf, 512, MIB), -VELA_E_RANGE);
	assert_int_equal(vdisk_pread(d, buf, 512, UINT64_MAX - 10), -VELA_E_RANGE);
	vdisk_close(d);
	assert_int_equal(vdisk_open(p, VDISK_OPEN_RDONLY, &d), 0);
	assert_int_equal(vdisk_pwrite(d, buf, 512, 0), -VELA_E_READONLY);
	vdisk_close(d);
	assert_int_equal(vdisk_open("/nonexistent/disk.vmdk", 0, &d), -VELA_E_NOTFOUND);
	enum vdisk_type t;
	assert_int_equal(vdisk_type_parse("qcow7", &t), -VELA_E_INVAL);
	free(p);
	free(q);
}

static void geometry_rules(void **s)
{
	(void)s;
	uint32_t c, h, sec;
	vdisk_geometry(2097152, VDISK_ADAPTER_IDE, &c, &h, &sec);      /* 1 GiB IDE */
	assert_int_equal(h, 16);
	assert_int_equal(sec, 63);
	assert_int_equal(c, 2080);
	vdisk_geometry(2097152, VDISK_ADAPTER_LSILOGIC, &c, &h, &sec); /* 1 GiB SCSI */
	assert_int_equal(h, 64);
	assert_int_equal(sec, 32);
	vdisk_geometry(4194304, VDISK_ADAPTER_BUSLOGIC, &c, &h, &sec); /* 2 GiB SCSI */
	assert_int_equal(h, 128);
	vdisk_geometry(8388608, VDISK_ADAPTER_LSILOGIC, &c, &h, &sec); /* 4 GiB SCSI */
	assert_int_equal(h, 255);
	assert_int_equal(sec, 63);
	assert_int_equal(c, 522);
}

static uint64_t be64(const char *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | (uint8_t)p[i];
	return v;
}

static uint64_t file_hash(const char *p)
{
	char *data;
	size_t len;
	assert_int_equal(read_file(p, 256 * MIB, &data, &len), 0);
	uint64_t h = hash_fnv1a64(data, len);
	free(data);
	return h;
}

/* addredo leaves the parent's bytes alone; 40 levels read correctly; commit
 * equals the flattened chain. */
static void chains_addredo_commit(void **s)
{
	(void)s;
	const uint64_t size = 8 * MIB;
	char *base = tmp("chain.vmdk");
	create(base, VDISK_TYPE_VMDK_MONOLITHIC_SPARSE, size);
	uint8_t *model = xcalloc(1, size);
	uint8_t buf[70000];
	struct vdisk *d = open_rw(base);
	for (uint64_t k = 0; k < sizeof buf; k++)
		buf[k] = (uint8_t)k;
	assert_int_equal(vdisk_pwrite(d, buf, sizeof buf, 100000), 0);
	memcpy(model + 100000, buf, sizeof buf);
	vdisk_close(d);

	char *top = xstrdup(base);
	char *levels[41];
	levels[0] = xstrdup(base);
	for (int level = 1; level <= 40; level++) {
		uint64_t before = file_hash(top);
		char *child = NULL;
		assert_int_equal(vdisk_addredo(top, &child), 0);
		assert_int_equal(file_hash(top), before);            /* parent untouched by addredo */
		d = open_rw(child);
		assert_int_equal(vdisk_depth(d), (unsigned)level + 1);
		uint64_t len = 1 + rnd() % sizeof buf, off = rnd() % (size - len);
		memset(buf, level, sizeof buf);
		assert_int_equal(vdisk_pwrite(d, buf, len, off), 0);
		memcpy(model + off, buf, len);
		vdisk_close(d);
		assert_int_equal(file_hash(top), before);            /* nor by writes to the child */
		free(top);
		top = child;
		levels[level] = xstrdup(child);
	}
	d = open_rw(top);
	assert_content(d, model, size);
	struct vdisk_extent_status es;
	assert_int_equal(vdisk_block_status(d, 100000, 512, &es), 0);
	assert_int_equal(es.status, VDISK_DATA);
	vdisk_close(d);

	/* Commit the top three levels one by one: content never changes. */
	for (int level = 40; level > 37; level--) {
		assert_int_equal(vdisk_commit(levels[level], true, NULL, NULL), 0);
		d = open_rw(levels[level - 1]);
		assert_content(d, model, size);
		vdisk_close(d);
		struct stat st;
		assert_int_equal(stat(levels[level], &st), -1);
	}
	for (int i = 0; i <= 40; i++)
		free(levels[i]);
	assert_int_equal(vdisk_commit(base, true, NULL, NULL), -VELA_E_INVAL);   /* no parent */
	free(top);
	free(model);
	free(base);
}

static void chain_problems_are_detected(void **s)
{
	(void)s;
	char *base = tmp("p.vmdk");
	create(base, VDISK_TYPE_VMDK_MONOLITHIC_SPARSE, MIB);
	char *child = NULL;
	assert_int_equal(vdisk_addredo(base, &child), 0);
	/* The parent's content changes under the child. */
	struct vdisk *d = open_rw(base);
	char buf[512] = "changed";
	assert_int_equal(vdisk_pwrite(d, buf, 512, 0), 0);
	vdisk_close(d);
	assert_int_equal(vdisk_open(child, 0, &d), -VELA_E_PARENT);
	assert_non_null(strstr(vela_errmsg(), "changed after the child was made"));
	/* The parent disappears. */
	char *moved = tmp("p-moved.vmdk");
	assert_int_equal(rename(base, moved), 0);
	assert_int_equal(vdisk_open(child, 0, &d), -VELA_E_CHAIN);
	assert_non_null(strstr(vela_errmsg(), "is missing"));
	/* A child that names itself as its parent. */
	char *loop = tmp("loop.vmdk");
	FILE *f = fopen(loop, "w");
	fprintf(f, "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=12345678\ncreateType=\"monolithicFlat\"\n"
		   "parentFileNameHint=\"loop.vmdk\"\nRW 2048 FLAT \"loop-flat.vmdk\" 0\n");
	fclose(f);
	char *flat = tmp("loop-flat.vmdk");
	close(open(flat, O_CREAT | O_WRONLY, 0644));
	truncate(flat, MIB);
	assert_int_equal(vdisk_open(loop, 0, &d), -VELA_E_LOOP);
	free(flat);
	free(loop);
	free(moved);
	free(child);
	free(base);
}

/* Hostile images: a clear error, no crash, no hang (ASan watches). */
static void hostile_images(void **s)
{
	(void)s;
	char *good = tmp("good.vmdk");
	create(good, VDISK_TYPE_VMDK_MONOLITHIC_SPARSE, 4 * MIB);
	char *data;
	size_t len;
	assert_int_equal(read_file(good, 16 * MIB, &data, &len), 0);
	struct { size_t at; uint64_t value; int width; int code; } mods[] = {
		{ 12, UINT64_MAX, 8, -VELA_E_CORRUPT },        /* capacity near 2^64 */
		{ 12, 0, 8, -VELA_E_CORRUPT },                 /* capacity 0 */
		{ 20, 3, 8, -VELA_E_CORRUPT },                 /* grain not a power of two */
		{ 20, 1ull << 40, 8, -VELA_E_CORRUPT },        /* huge grain */
		{ 44, 100000, 4, -VELA_E_CORRUPT },            /* too many GTEs */
		{ 56, 1ull << 40, 8, -VELA_E_CORRUPT },        /* GD beyond the file */
		{ 48, 1ull << 40, 8, -VELA_E_CORRUPT },        /* RGD beyond the file */
		{ 28, 1ull << 40, 8, -VELA_E_CORRUPT },        /* descriptor beyond the file */
		{ 4, 9, 4, -VELA_E_VERSION },                  /* unknown version */
		{ 8, (1u << 16) | (1u << 17) | 1, 4, -VELA_E_NOTSUP },   /* compressed, algorithm 0 */
	};
	for (size_t i = 0; i < ARRAY_SIZE(mods); i++) {
		char *bad = xasprintf("%s/bad%zu.vmdk", dir, i);
		char *copy = xcalloc(1, len);
		memcpy(copy, data, len);
		if (mods[i].width == 8)
			le64_put((uint8_t *)copy + mods[i].at, mods[i].value);
		else
			le32_put((uint8_t *)copy + mods[i].at, (uint32_t)mods[i].value);
		assert_int_equal(write_file_atomic(bad, copy, len), 0);
		struct vdisk *d = NULL;
		int r = vdisk_open(bad, VDISK_OPEN_RDONLY, &d);
		if (r != mods[i].code)
			fail_msg("case %zu: got %d (%s)", i, r, vela_errmsg());
		assert_non_null(strstr(vela_errmsg(), bad));           /* the message names the file */
		free(copy);
		free(bad);
	}
	/* A grain table entry pointing into the header, found when read. */
	{
		char *bad = tmp("gte.vmdk");
		char *copy = xcalloc(1, len);
		memcpy(copy, data, len);
		uint64_t gd = le64_get((uint8_t *)copy + 56);
		uint32_t gt0 = le32_get((uint8_t *)copy + gd * 512);
		le32_put((uint8_t *)copy + (uint64_t)gt0 * 512, 2);    /* grain 0 -> sector 2 (descriptor) */
		assert_int_equal(write_file_atomic(bad, copy, len), 0);
		struct vdisk *d = NULL;
		assert_int_equal(vdisk_open(bad, 0, &d), 0);
		char buf[512];
		assert_int_equal(vdisk_pread(d, buf, 512, 0), -VELA_E_CORRUPT);
		assert_int_equal(vdisk_pwrite(d, buf, 512, 0), -VELA_E_CORRUPT);   /* never writes over metadata */
		vdisk_close(d);
		struct vdisk_check_report rep;
		assert_int_equal(vdisk_check(bad, false, &rep), 0);
		assert_true(rep.errors > 0);
		free(rep.first_problem);
		free(copy);
		free(bad);
	}
	/* A grain over a grain table that extend placed in the data area. */
	{
		char *bad = tmp("over-gt.vmdk");
		create(bad, VDISK_TYPE_VMDK_MONOLITHIC_SPARSE, MIB);
		assert_int_equal(vdisk_extend(bad, 64 * MIB), 0);     /* new tables go after the overhead */
		struct vdisk *d = open_rw(bad);
		char buf[512] = "x";
		assert_int_equal(vdisk_pwrite(d, buf, 512, 0), 0);
		vdisk_close(d);
		char *img;
		size_t ilen;
		assert_int_equal(read_file(bad, 64 * MIB, &img, &ilen), 0);
		uint64_t gd = le64_get((uint8_t *)img + 56);
		uint32_t gt0 = le32_get((uint8_t *)img + gd * 512), gt1 = le32_get((uint8_t *)img + gd * 512 + 4);
		le32_put((uint8_t *)img + (uint64_t)gt0 * 512, gt1);  /* grain 0 -> grain table 1 */
		assert_int_equal(write_file_atomic(bad, img, ilen), 0);
		struct vdisk_check_report rep;
		assert_int_equal(vdisk_check(bad, false, &rep), 0);
		assert_true(rep.errors > 0);
		assert_non_null(strstr(rep.first_problem, "lies over grain table 1"));
		free(rep.first_problem);
		free(img);
		free(bad);
	}
	/* Truncated file: the grain directory is gone. */
	{
		char *bad = tmp("trunc.vmdk");
		assert_int_equal(write_file_atomic(bad, data, 4096), 0);
		struct vdisk *d = NULL;
		assert_int_equal(vdisk_open(bad, 0, &d), -VELA_E_CORRUPT);
		free(bad);
	}
	/* Descriptor garbage and a huge descriptor. */
	static const char *const descs[] = {
		"# Disk DescriptorFile\nversion=1\nRW 99999999999999999999 FLAT \"x\" 0\n",
		"# Disk DescriptorFile\nversion=1\nRW 100 WEIRD \"x\"\n",
		"# Disk DescriptorFile\nversion=7\nRW 100 FLAT \"x\" 0\n",
		"# Disk DescriptorFile\nversion=1\n",
		"# Disk DescriptorFile\nversion=1\nRW 100 FLAT\n",
		"# Disk DescriptorFile\nversion=1\nCID=zzzz\nRW 100 FLAT \"x\" 0\n",
		"# Disk DescriptorFile\nversion=1\nthis is not a key value line\n",
		"# Disk DescriptorFile\nversion=1\nRW 100 FLAT \"missing-extent.vmdk\" 0\n",
	};
	for (size_t i = 0; i < ARRAY_SIZE(descs); i++) {
		char *bad = xasprintf("%s/desc%zu.vmdk", dir, i);
		assert_int_equal(write_file_atomic(bad, descs[i], strlen(descs[i])), 0);
		struct vdisk *d = NULL;
		int r = vdisk_open(bad, 0, &d);
		if (r >= 0)
			fail_msg("descriptor %zu opened", i);
		free(bad);
	}
	char *huge = tmp("huge.vmdk");
	size_t hn = 2 * MIB;
	char *h = xcalloc(1, hn);
	memset(h, '#', hn);
	memcpy(h, "# Disk DescriptorFile\n", 22);
	assert_int_equal(write_file_atomic(huge, h, hn), 0);
	struct vdisk *d = NULL;
	assert_true(vdisk_open(huge, 0, &d) < 0);   /* > 1 MiB: not a descriptor, and not raw-by-accident either */
	if (d)
		vdisk_close(d);
	free(h);
	free(huge);
	free(data);
	free(good);
}

/*
 * Crash consistency: run a workload, stop all writes after the k-th one (for
 * every k), "crash" (the process ends without closing), reopen: the image
 * opens, check finds no errors (leaks at most, which repair removes), every
 * write covered by a completed flush is there, others are old or new.
 */
#define CRASH_REGIONS 24
static void crash_workload(const char *path, long k, int *last_flushed)
{
	vdisk_test_fail_writes_after(k);
	struct vdisk *d = NULL;
	if (vdisk_open(path, 0, &d) < 0)
		_exit(2);
	char buf[40000];
	for (int i = 0; i < CRASH_REGIONS; i++) {
		memset(buf, 'A' + i, sizeof buf);
		/* Regions straddle grain boundaries and never overlap. */
		if (vdisk_pwrite(d, buf, sizeof buf, (uint64_t)i * 300000 + 40000) < 0)
			_exit(0);
		if (i % 3 == 2) {
			if (vdisk_flush(d) < 0)
				_exit(0);
			*last_flushed = i;
		}
	}
	vdisk_flush(d);
	_exit(0);   /* no close: as if the power went */
}

static void crash_consistency(const char *name, enum vdisk_type type)
{
	char *base = tmp(name);
	create(base, type, 8 * MIB);
	/* The old content under the child: a recognisable pattern everywhere. */
	struct vdisk *d = open_rw(base);
	char *fill = xcalloc(1, 8 * MIB);
	memset(fill, 'o', 8 * MIB);
	assert_int_equal(vdisk_pwrite(d, fill, 8 * MIB, 0), 0);
	vdisk_close(d);
	free(fill);

	int *shared = mmap(NULL, sizeof(int), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	/* How many writes does the whole workload make? */
	long total;
	{
		char *child = NULL;
		assert_int_equal(vdisk_addredo(base, &child), 0);
		vdisk_test_fail_writes_after(-1);
		pid_t p = fork();
		if (p == 0)
			crash_workload(child, -1, shared);
		int st;
		waitpid(p, &st, 0);
		/* Count in this process the same way. */
		unlink(child);
		free(child);
	}
	{
		char *child = NULL;
		assert_int_equal(vdisk_addredo(base, &child), 0);
		vdisk_test_fail_writes_after(1000000);
		struct vdisk *c = open_rw(child);
		char buf[40000];
		for (int i = 0; i < CRASH_REGIONS; i++) {
			memset(buf, 'A' + i, sizeof buf);
			vdisk_pwrite(c, buf, sizeof buf, (uint64_t)i * 300000 + 40000);
			if (i % 3 == 2)
				vdisk_flush(c);
		}
		vdisk_flush(c);
		total = vdisk_test_write_count();
		vdisk_close(c);
		vdisk_test_fail_writes_after(-1);
		unlink(child);
		free(child);
	}
	assert_true(total > CRASH_REGIONS);

	for (long k = 0; k <= total; k++) {
		char *child = NULL;
		assert_int_equal(vdisk_addredo(base, &child), 0);
		*shared = -1;
		pid_t p = fork();
		if (p == 0)
			crash_workload(child, k, shared);
		int st;
		waitpid(p, &st, 0);
		assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);

		struct vdisk_check_report rep;
		assert_int_equal(vdisk_check(child, true, &rep), 0);
		if (rep.errors)
			fail_msg("k=%ld: %s", k, rep.first_problem);
		free(rep.first_problem);
		assert_int_equal(vdisk_check(child, false, &rep), 0);
		assert_int_equal(rep.leaks, 0);                       /* repaired */
		free(rep.first_problem);

		struct vdisk *c = NULL;
		if (vdisk_open(child, VDISK_OPEN_RDONLY, &c) < 0)
			fail_msg("k=%ld: reopen: %s", k, vela_errmsg());
		char buf[40000];
		for (int i = 0; i < CRASH_REGIONS; i++) {
			assert_int_equal(vdisk_pread(c, buf, sizeof buf, (uint64_t)i * 300000 + 40000), 0);
			bool all_new = true, all_old = true;
			for (size_t b = 0; b < sizeof buf; b++) {
				all_new &= buf[b] == 'A' + i;
				all_old &= buf[b] == 'o';
			}
			if (i <= *shared && !all_new)
				fail_msg("k=%ld: region %d was flushed but is not intact", k, i);
			if (i > *shared && !all_new && !all_old) {
				/* Unflushed writes may be lost whole grains at a time, never mixed with garbage. */
				for (size_t b = 0; b < sizeof buf; b++)
					if (buf[b] != 'A' + i && buf[b] != 'o')
						fail_msg("k=%ld: region %d byte %zu is neither old nor new", k, i, b);
			}
		}
		vdisk_close(c);
		unlink(child);
		free(child);
	}
	munmap(shared, sizeof(int));
	free(base);
}

/*
 * A crash at every write of a commit: the chain still opens (the child
 * announced the parent's new content ID before the merge), reads exactly what
 * it read before, and the commit run again completes.
 */
static void expect_merged_view(struct vdisk *d, long k)
{
	char buf[40000];
	for (int i = 0; i < CRASH_REGIONS; i++) {
		assert_int_equal(vdisk_pread(d, buf, sizeof buf, (uint64_t)i * 300000 + 40000), 0);
		for (size_t b = 0; b < sizeof buf; b++)
			if (buf[b] != 'A' + i)
				fail_msg("k=%ld: region %d byte %zu reads %d", k, i, b, buf[b]);
	}
	assert_int_equal(vdisk_pread(d, buf, 100, 7 * MIB), 0);
	assert_int_equal(buf[0], 'o');
}

static void commit_crash(const char *name, enum vdisk_type type)
{
	char *base = tmp(name);
	long total = -1;
	for (long k = -2; k < total || total < 0; k++) {
		unlink(base);
		create(base, type, 8 * MIB);
		struct vdisk *d = open_rw(base);
		char *fill = xcalloc(1, 8 * MIB);
		memset(fill, 'o', 8 * MIB);
		assert_int_equal(vdisk_pwrite(d, fill, 8 * MIB, 0), 0);
		vdisk_close(d);
		free(fill);
		char *child = NULL;
		assert_int_equal(vdisk_addredo(base, &child), 0);
		struct vdisk *c = open_rw(child);
		char buf[40000];
		for (int i = 0; i < CRASH_REGIONS; i++) {
			memset(buf, 'A' + i, sizeof buf);
			assert_int_equal(vdisk_pwrite(c, buf, sizeof buf, (uint64_t)i * 300000 + 40000), 0);
		}
		vdisk_close(c);
		if (k == -2) {
			/* Count the writes a whole commit makes. */
			vdisk_test_fail_writes_after(1000000);
			assert_int_equal(vdisk_commit(child, false, NULL, NULL), 0);
			total = vdisk_test_write_count();
			vdisk_test_fail_writes_after(-1);
			assert_true(total > 0);
			unlink(child);
			free(child);
			continue;
		}
		if (k >= 0) {
			pid_t p = fork();
			if (p == 0) {
				vdisk_test_fail_writes_after(k);
				vdisk_commit(child, false, NULL, NULL);
				_exit(0);   /* as if the power went */
			}
			int st;
			waitpid(p, &st, 0);
		}
		struct vdisk *v = NULL;
		if (vdisk_open(child, VDISK_OPEN_RDONLY, &v) < 0)
			fail_msg("k=%ld: the chain does not open after a crash in the commit: %s", k, vela_errmsg());
		expect_merged_view(v, k);
		vdisk_close(v);
		if (vdisk_commit(child, true, NULL, NULL) < 0)
			fail_msg("k=%ld: commit again: %s", k, vela_errmsg());
		struct vdisk *b = NULL;
		assert_int_equal(vdisk_open(base, VDISK_OPEN_RDONLY, &b), 0);
		expect_merged_view(b, k);
		vdisk_close(b);
		free(child);
	}
	free(base);
}

static void commit_crash_vmdk(void **s) { (void)s; commit_crash("ccrash.vmdk", VDISK_TYPE_VMDK_MONOLITHIC_SPARSE); }
static void commit_crash_vhd(void **s) { (void)s; commit_crash("ccrash.vhd", VDISK_TYPE_VHD_DYNAMIC); }
static void commit_crash_qcow2(void **s) { (void)s; commit_crash("ccrash.qcow2", VDISK_TYPE_QCOW2); }

static void crash_consistency_vmdk(void **s) { (void)s; crash_consistency("crash-base.vmdk", VDISK_TYPE_VMDK_MONOLITHIC_SPARSE); }
static void crash_consistency_vhd(void **s) { (void)s; crash_consistency("crash-base.vhd", VDISK_TYPE_VHD_DYNAMIC); }
static void crash_consistency_qcow2(void **s) { (void)s; crash_consistency("crash-base.qcow2", VDISK_TYPE_QCOW2); }

static void hostile_qcow2(void **s)
{
	(void)s;
	char *good = tmp("hq.qcow2");
	create(good, VDISK_TYPE_QCOW2, 8 * MIB);
	char *data;
	size_t len;
	assert_int_equal(read_file(good, 64 * MIB, &data, &len), 0);
	struct { size_t at; int width; uint64_t value; int code; } mods[] = {
		{ 4, 4, 7, -VELA_E_VERSION },                     /* version */
		{ 20, 4, 40, -VELA_E_CORRUPT },                   /* cluster_bits */
		{ 24, 8, UINT64_MAX, -VELA_E_CORRUPT },           /* size near 2^64 */
		{ 32, 4, 1, -VELA_E_NOTSUP },                     /* encrypted */
		{ 36, 4, 0, -VELA_E_CORRUPT },                    /* L1 too small for the size */
		{ 40, 8, 1ull << 50, -VELA_E_CORRUPT },           /* L1 beyond the file */
		{ 48, 8, 12345, -VELA_E_CORRUPT },                /* refcount table unaligned */
		{ 56, 4, 0x7fffffff, -VELA_E_CORRUPT },           /* refcount table huge */
		{ 72, 8, 1ull << 4, -VELA_E_NOTSUP },             /* unknown incompatible feature */
		{ 72, 8, 2, -VELA_E_CORRUPT },                    /* marked corrupt, opened writable */
		{ 8, 8, 65000, -VELA_E_CORRUPT },                 /* backing name beyond 4 KiB */
		{ 100, 4, 1, -VELA_E_CORRUPT },                   /* header length */
	};
	for (size_t i = 0; i < ARRAY_SIZE(mods); i++) {
		uint8_t *c = xcalloc(1, len);
		memcpy(c, data, len);
		for (int b = 0; b < mods[i].width; b++)
			c[mods[i].at + (size_t)b] = (uint8_t)(mods[i].value >> (8 * (mods[i].width - 1 - b)));
		if (mods[i].at == 8)
			c[19] = 10;   /* backing name length */
		char *bad = xasprintf("%s/badq%zu.qcow2", dir, i);
		assert_int_equal(write_file_atomic(bad, c, len), 0);
		struct vdisk *d = NULL;
		int r = vdisk_open(bad, 0, &d);
		if (r != mods[i].code)
			fail_msg("case %zu: got %d (%s)", i, r, vela_errmsg());
		free(bad);
		free(c);
	}
	/* An L2 entry pointing into the header cluster: caught on access. */
	{
		struct vdisk *d = open_rw(good);
		char buf[512] = "x";
		assert_int_equal(vdisk_pwrite(d, buf, 512, 0), 0);
		vdisk_close(d);
		free(data);
		assert_int_equal(read_file(good, 64 * MIB, &data, &len), 0);
		uint64_t l1 = be64(data + 40);
		uint64_t l2 = be64(data + l1) & 0x00fffffffffffe00ull;
		for (int b = 0; b < 8; b++)
			data[l2 + (uint64_t)b] = (char)(b == 0 ? 0x80 : b == 7 ? 0x00 : 0);   /* COPIED | offset 0 */
		char *bad = tmp("l2hdr.qcow2");
		assert_int_equal(write_file_atomic(bad, data, len), 0);
		assert_int_equal(vdisk_open(bad, 0, &d), 0);
		assert_int_equal(vdisk_pread(d, buf, 512, 0), 0);          /* offset 0 with no flags = unallocated */
		data[l2 + 6] = 0x02;                                        /* offset 512: unaligned, in the header */
		vdisk_close(d);
		assert_int_equal(write_file_atomic(bad, data, len), 0);
		assert_int_equal(vdisk_open(bad, 0, &d), 0);
		assert_int_equal(vdisk_pread(d, buf, 512, 0), -VELA_E_CORRUPT);
		assert_int_equal(vdisk_pwrite(d, buf, 512, 0), -VELA_E_CORRUPT);
		vdisk_close(d);
		free(bad);
	}
	free(data);
	free(good);
}

/* A differencing VHD chain: writes, parent untouched, commit, parent check. */
static void vhd_chain(void **s)
{
	(void)s;
	char *base = tmp("vchain.vhd");
	create(base, VDISK_TYPE_VHD_DYNAMIC, 16 * MIB);
	struct vdisk *d = open_rw(base);
	uint64_t size = vdisk_size(d);
	uint8_t *model = xcalloc(1, size);
	uint8_t buf[100000];
	memset(buf, 0x31, sizeof buf);
	assert_int_equal(vdisk_pwrite(d, buf, sizeof buf, 3 * MIB - 1000), 0);
	memcpy(model + 3 * MIB - 1000, buf, sizeof buf);
	vdisk_close(d);
	uint64_t before = file_hash(base);
	char *c1 = NULL, *c2 = NULL;
	assert_int_equal(vdisk_addredo(base, &c1), 0);
	assert_non_null(strstr(c1, "vchain-000001.vhd"));
	d = open_rw(c1);
	memset(buf, 0x32, sizeof buf);
	assert_int_equal(vdisk_pwrite(d, buf, 5000, 3 * MIB + 10), 0);     /* inside an allocated parent block */
	memcpy(model + 3 * MIB + 10, buf, 5000);
	assert_int_equal(vdisk_pwrite(d, buf, sizeof buf, 9 * MIB), 0);    /* in a hole of the parent */
	memcpy(model + 9 * MIB, buf, sizeof buf);
	vdisk_close(d);
	assert_int_equal(file_hash(base), before);
	assert_int_equal(vdisk_addredo(c1, &c2), 0);
	d = open_rw(c2);
	assert_int_equal(vdisk_depth(d), 3);
	memset(buf, 0x33, sizeof buf);
	assert_int_equal(vdisk_pwrite(d, buf, 512, size - 512), 0);
	memcpy(model + size - 512, buf, 512);
	assert_content(d, model, size);
	vdisk_close(d);
	assert_int_equal(vdisk_commit(c2, true, NULL, NULL), 0);
	assert_int_equal(vdisk_commit(c1, true, NULL, NULL), 0);
	d = open_rw(base);
	assert_content(d, model, size);
	vdisk_close(d);
	/* A child whose parent was replaced by another disk of the same name. */
	free(c1);
	assert_int_equal(vdisk_addredo(base, &c1), 0);
	unlink(base);
	create(base, VDISK_TYPE_VHD_DYNAMIC, 16 * MIB);
	assert_int_equal(vdisk_open(c1, 0, &d), -VELA_E_PARENT);
	free(c1);
	free(c2);
	free(model);
	free(base);
}

/* Relink after a move; commit a middle level; content never changes. */
static void relink_and_commit_level(enum vdisk_type t, const char *ext)
{
	const uint64_t size = 8 * MIB;
	char *base = xasprintf("%s/rl-base.%s", dir, ext);
	create(base, t, size);
	struct vdisk *d = open_rw(base);
	uint64_t vsize = vdisk_size(d);
	uint8_t *model = xcalloc(1, vsize);
	uint8_t buf[50000];
	char *lv[4];
	lv[0] = xstrdup(base);
	for (int level = 0; level < 4; level++) {
		if (level > 0) {
			vdisk_close(d);
			assert_int_equal(vdisk_addredo(lv[level - 1], &lv[level]), 0);
			d = open_rw(lv[level]);
		}
		memset(buf, 0x40 + level, sizeof buf);
		uint64_t off = (uint64_t)level * 1500000 + 777;
		assert_int_equal(vdisk_pwrite(d, buf, sizeof buf, off), 0);
		memcpy(model + off, buf, sizeof buf);
	}
	vdisk_close(d);
	(void)size;
	/* Move the base: the chain breaks, relink mends it. */
	char *moved_dir = xasprintf("%s/rl-moved-%s", dir, ext);
	mkdir(moved_dir, 0755);
	char *moved = xasprintf("%s/rl-base.%s", moved_dir, ext);
	assert_int_equal(rename(base, moved), 0);
	assert_int_equal(vdisk_open(lv[3], 0, &d), -VELA_E_CHAIN);
	assert_int_equal(vdisk_relink(lv[1], moved, false), 0);
	d = open_rw(lv[3]);
	assert_content(d, model, vsize);
	vdisk_close(d);
	/* Another disk is not the parent (content IDs differ): refused unless forced. */
	if (t != VDISK_TYPE_QCOW2) {
		char *other = xasprintf("%s/rl-other.%s", dir, ext);
		create(other, t, 8 * MIB);
		assert_int_equal(vdisk_relink(lv[1], other, false), -VELA_E_PARENT);
		unlink(other);
		free(other);
	}
	/* Commit level 1 (lv[2] into lv[1]), then level 1 again (lv[1] into base). */
	assert_int_equal(vdisk_commit_level(lv[3], 1, true, NULL, NULL), 0);
	d = open_rw(lv[3]);
	assert_int_equal(vdisk_depth(d), 3);
	assert_content(d, model, vsize);
	vdisk_close(d);
	assert_int_equal(vdisk_commit_level(lv[3], 1, true, NULL, NULL), 0);
	d = open_rw(lv[3]);
	assert_int_equal(vdisk_depth(d), 2);
	assert_content(d, model, vsize);
	vdisk_close(d);
	assert_int_equal(vdisk_commit_level(lv[3], 5, true, NULL, NULL), -VELA_E_RANGE);
	for (int i = 0; i < 4; i++)
		free(lv[i]);
	free(moved);
	free(moved_dir);
	free(model);
	free(base);
}

static void relink_commit_level_vmdk(void **s) { (void)s; relink_and_commit_level(VDISK_TYPE_VMDK_MONOLITHIC_SPARSE, "vmdk"); }
static void relink_commit_level_qcow2(void **s) { (void)s; relink_and_commit_level(VDISK_TYPE_QCOW2, "qcow2"); }
static void relink_commit_level_vhd(void **s) { (void)s; relink_and_commit_level(VDISK_TYPE_VHD_DYNAMIC, "vhd"); }

static void extend_compact_write_zeroes(void **s)
{
	(void)s;
	static const struct { enum vdisk_type t; const char *ext; } types[] = {
		{ VDISK_TYPE_RAW, "raw" }, { VDISK_TYPE_VMDK_MONOLITHIC_SPARSE, "vmdk" },
		{ VDISK_TYPE_VMDK_MONOLITHIC_FLAT, "flat.vmdk" }, { VDISK_TYPE_QCOW2, "qcow2" },
		{ VDISK_TYPE_VHD_FIXED, "fixed.vhd" }, { VDISK_TYPE_VHD_DYNAMIC, "vhd" },
	};
	for (size_t k = 0; k < ARRAY_SIZE(types); k++) {
		char *p = xasprintf("%s/ext.%s", dir, types[k].ext);
		create(p, types[k].t, 6 * MIB);
		struct vdisk *d = open_rw(p);
		uint64_t small = vdisk_size(d);
		uint8_t *buf = xcalloc(1, 4 * MIB);
		memset(buf, 0x5a, 4 * MIB);
		assert_int_equal(vdisk_pwrite(d, buf, 4 * MIB, 0), 0);
		vdisk_close(d);
		/* (A dynamic VHD's block table is full here: it moves to the end.) */
		int r = vdisk_extend(p, 40 * MIB);
		{
			if (r < 0)
				fail_msg("%s: %s", p, vela_errmsg());
			d = open_rw(p);
			assert_true(vdisk_size(d) >= 40 * MIB);
			assert_int_equal(vdisk_pread(d, buf, 4 * MIB, 0), 0);
			for (size_t b = 0; b < 4 * MIB; b++)
				if (buf[b] != 0x5a)
					fail_msg("%s: old data lost at %zu", p, b);
			memset(buf, 0x6b, 512);
			assert_int_equal(vdisk_pwrite(d, buf, 512, vdisk_size(d) - 512), 0);   /* the new end */
			vdisk_close(d);
			d = open_rw(p);
			assert_int_equal(vdisk_pread(d, buf, 512, vdisk_size(d) - 512), 0);
			assert_int_equal(buf[0], 0x6b);
			vdisk_close(d);
		}
		assert_int_equal(vdisk_extend(p, small / 2), -VELA_E_INVAL);   /* never shrinks */
		/* Zero most of the data; compact gives it back; content unchanged. */
		d = open_rw(p);
		assert_int_equal(vdisk_write_zeroes(d, 1 * MIB, 3 * MIB), 0);
		assert_int_equal(vdisk_pread(d, buf, 4 * MIB, 0), 0);
		assert_int_equal(buf[MIB - 1], 0x5a);
		assert_true(vdisk_buf_is_zero(buf + MIB, 3 * MIB));
		vdisk_close(d);
		uint64_t freed = 99;
		assert_int_equal(vdisk_compact(p, &freed), 0);
		assert_int_equal(freed, 0);          /* write_zeroes already dropped what it could */
		struct vdisk_check_report rep;
		assert_int_equal(vdisk_check(p, false, &rep), 0);
		assert_int_equal(rep.errors, 0);
		free(rep.first_problem);
		free(buf);
		free(p);
	}
	/* Compact of explicit zero data; a child keeps zeros that hide its parent. */
	char *base = tmp("cz.vmdk");
	create(base, VDISK_TYPE_VMDK_MONOLITHIC_SPARSE, 4 * MIB);
	struct vdisk *d = open_rw(base);
	uint8_t *buf = xcalloc(1, 2 * MIB);
	memset(buf, 0x11, MIB);
	assert_int_equal(vdisk_pwrite(d, buf, 2 * MIB, 0), 0);   /* 1 MiB data, 1 MiB zeros */
	vdisk_close(d);
	uint64_t freed = 0;
	assert_int_equal(vdisk_compact(base, &freed), 0);
	assert_int_equal(freed, MIB);
	char *child = NULL;
	assert_int_equal(vdisk_addredo(base, &child), 0);
	d = open_rw(child);
	memset(buf, 0, 2 * MIB);
	assert_int_equal(vdisk_pwrite(d, buf, 2 * MIB, 0), 0);    /* zeros over the parent's data */
	vdisk_close(d);
	assert_int_equal(vdisk_compact(child, &freed), 0);
	assert_int_equal(freed, MIB);                             /* only where the parent is zero too */
	d = open_rw(child);
	assert_int_equal(vdisk_pread(d, buf, 2 * MIB, 0), 0);
	assert_true(vdisk_buf_is_zero(buf, 2 * MIB));             /* the parent's data stays hidden */
	assert_int_equal(vdisk_write_zeroes(d, 0, 2 * MIB), 0);
	assert_int_equal(vdisk_pread(d, buf, 2 * MIB, 0), 0);
	assert_true(vdisk_buf_is_zero(buf, 2 * MIB));
	vdisk_close(d);
	free(child);
	free(buf);
	free(base);
}

/* Several threads writing and reading their own regions at once, with new
 * units being allocated concurrently: every region reads back exactly. */
struct conc_arg {
	struct vdisk *d;
	int id;
	int failures;
};

#define CONC_THREADS 8
#define CONC_REGION (1536u * 1024u)

static void *conc_worker(void *p)
{
	struct conc_arg *a = p;
	uint8_t *buf = xcalloc(1, 70000), *back = xcalloc(1, 70000);
	uint64_t base = (uint64_t)a->id * CONC_REGION;
	for (int i = 0; i < 60; i++) {
		uint64_t off = base + (uint64_t)((i * 37 + a->id * 11) % 20) * 70000;
		memset(buf, (a->id << 4) | (i & 15), 70000);
		if (vdisk_pwrite(a->d, buf, 70000, off) < 0 || vdisk_pread(a->d, back, 70000, off) < 0 ||
		    memcmp(buf, back, 70000) != 0)
			a->failures++;
		if (i % 20 == 19 && vdisk_flush(a->d) < 0)
			a->failures++;
	}
	free(buf);
	free(back);
	return NULL;
}

static void concurrent_io(void **s)
{
	(void)s;
	static const struct { enum vdisk_type t; const char *name; } types[] = {
		{ VDISK_TYPE_VMDK_MONOLITHIC_SPARSE, "conc.vmdk" }, { VDISK_TYPE_QCOW2, "conc.qcow2" },
		{ VDISK_TYPE_VHD_DYNAMIC, "conc.vhd" }, { VDISK_TYPE_RAW, "conc.raw" },
	};
	for (size_t k = 0; k < ARRAY_SIZE(types); k++) {
		char *p = tmp(types[k].name);
		create(p, types[k].t, CONC_THREADS * CONC_REGION);
		struct vdisk *d = open_rw(p);
		pthread_t t[CONC_THREADS];
		struct conc_arg a[CONC_THREADS];
		for (int i = 0; i < CONC_THREADS; i++) {
			a[i] = (struct conc_arg){ .d = d, .id = i };
			pthread_create(&t[i], NULL, conc_worker, &a[i]);
		}
		for (int i = 0; i < CONC_THREADS; i++) {
			pthread_join(t[i], NULL);
			if (a[i].failures)
				fail_msg("%s: thread %d saw %d failures", p, i, a[i].failures);
		}
		assert_int_equal(vdisk_close(d), 0);
		struct vdisk_check_report rep;
		assert_int_equal(vdisk_check(p, false, &rep), 0);
		assert_int_equal(rep.errors, 0);
		assert_int_equal(rep.leaks, 0);
		free(rep.first_problem);
		free(p);
	}
}

static void hostile_vhd(void **s)
{
	(void)s;
	char *good = tmp("hv.vhd");
	create(good, VDISK_TYPE_VHD_DYNAMIC, 8 * MIB);
	char *data;
	size_t len;
	assert_int_equal(read_file(good, 64 * MIB, &data, &len), 0);
	struct { size_t at; uint32_t value; bool fix_dh; int code; } mods[] = {
		{ 512 + 28, 0x7fffffff, true, -VELA_E_CORRUPT },   /* absurd BAT size */
		{ 512 + 32, 12345, true, -VELA_E_CORRUPT },        /* block size not a power of two */
		{ 512 + 20, 0x7fffffff, true, -VELA_E_CORRUPT },   /* BAT beyond the file */
		{ 512 + 40, 1, false, -VELA_E_CORRUPT },           /* header checksum wrong */
		{ 512 + 1024, 0x00000001, false, -VELA_E_CORRUPT },/* block 0 points into the headers */
	};
	for (size_t i = 0; i < ARRAY_SIZE(mods); i++) {
		uint8_t *c = xcalloc(1, len);
		memcpy(c, data, len);
		c[mods[i].at] = (uint8_t)(mods[i].value >> 24);
		c[mods[i].at + 1] = (uint8_t)(mods[i].value >> 16);
		c[mods[i].at + 2] = (uint8_t)(mods[i].value >> 8);
		c[mods[i].at + 3] = (uint8_t)mods[i].value;
		if (mods[i].fix_dh) {   /* keep the header checksum right: only the field is hostile */
			uint32_t sum = 0;
			c[512 + 36] = c[512 + 37] = c[512 + 38] = c[512 + 39] = 0;
			for (size_t k = 0; k < 1024; k++)
				sum += c[512 + k];
			sum = ~sum;
			c[512 + 36] = (uint8_t)(sum >> 24); c[512 + 37] = (uint8_t)(sum >> 16);
			c[512 + 38] = (uint8_t)(sum >> 8); c[512 + 39] = (uint8_t)sum;
		}
		char *bad = xasprintf("%s/badvhd%zu.vhd", dir, i);
		assert_int_equal(write_file_atomic(bad, c, len), 0);
		struct vdisk *d = NULL;
		int r = vdisk_open(bad, VDISK_OPEN_RDONLY, &d);
		if (r != mods[i].code)
			fail_msg("case %zu: got %d (%s)", i, r, vela_errmsg());
		free(bad);
		free(c);
	}
	/* Both footers broken. */
	uint8_t *c = xcalloc(1, len);
	memcpy(c, data, len);
	c[3] ^= 0xff;
	c[len - 512 + 3] ^= 0xff;
	char *bad = tmp("nofooter.vhd");
	assert_int_equal(write_file_atomic(bad, c, len), 0);
	struct vdisk *d = NULL;
	/* Not recognisable as a VHD any more: it opens as raw, which is right. */
	assert_int_equal(vdisk_open(bad, VDISK_OPEN_RDONLY, &d), 0);
	struct vdisk_info *info;
	assert_int_equal(vdisk_get_info(d, &info), 0);
	assert_string_equal(info->format, "raw");
	vdisk_info_free(info);
	vdisk_close(d);
	/* Only the trailing footer broken: the copy at the start is used. */
	memcpy(c, data, len);
	c[len - 512 + 3] ^= 0xff;
	assert_int_equal(write_file_atomic(bad, c, len), 0);
	assert_int_equal(vdisk_open(bad, VDISK_OPEN_RDONLY, &d), 0);
	assert_int_equal(vdisk_get_info(d, &info), 0);
	assert_string_equal(info->format, "vhd");
	vdisk_info_free(info);
	vdisk_close(d);
	free(bad);
	free(c);
	free(data);
	free(good);
}

static void convert_is_sparse_aware(void **s)
{
	(void)s;
	char *src = tmp("conv-src.raw");
	create(src, VDISK_TYPE_RAW, 64 * MIB);
	struct vdisk *d = open_rw(src);
	char buf[8192];
	memset(buf, 7, sizeof buf);
	assert_int_equal(vdisk_pwrite(d, buf, sizeof buf, 10 * MIB), 0);
	vdisk_close(d);
	char *dst = tmp("conv-dst.vmdk");
	struct vdisk_create_opts o = { .type = VDISK_TYPE_VMDK_MONOLITHIC_SPARSE };
	assert_int_equal(vdisk_convert(src, dst, &o, NULL, NULL), 0);
	struct vdisk_info *info;
	d = open_rw(dst);
	assert_int_equal(vdisk_get_info(d, &info), 0);
	assert_true(info->allocated < 2 * MIB);                 /* one grain of data, not 64 MiB */
	assert_string_equal(info->subformat, "monolithicSparse");
	vdisk_info_free(info);
	assert_int_equal(vdisk_pread(d, buf, 512, 10 * MIB), 0);
	assert_int_equal(buf[0], 7);
	vdisk_close(d);
	free(src);
	free(dst);
}

/* ------------------------------------------------------------ partitions */

struct mem_disk {
	uint8_t *data;
	size_t size;
};

static int read_mem(void *opaque, void *buf, size_t len, uint64_t off)
{
	const struct mem_disk *m = opaque;
	if (off > m->size || len > m->size - off)
		return vela_error(VELA_E_RANGE, "read past the test disk");
	memcpy(buf, m->data + off, len);
	return 0;
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

static void mbr_entry(uint8_t *sector, int i, uint8_t status, uint8_t type, uint32_t lba, uint32_t sectors)
{
	uint8_t *e = sector + 446 + 16 * i;
	e[0] = status;
	e[4] = type;
	put32(e + 8, lba);
	put32(e + 12, sectors);
	sector[510] = 0x55;
	sector[511] = 0xaa;
}

static int parse_mem(struct mem_disk *m, struct vdisk_partition *p, size_t *n)
{
	return vdisk_partitions_parse(read_mem, m, m->size, p, VDISK_MAX_PARTITIONS, n);
}

static void partitions_mbr(void **state)
{
	(void)state;
	struct mem_disk m = { xcalloc(1, 1 << 20), 1 << 20 };
	struct vdisk_partition p[VDISK_MAX_PARTITIONS];
	size_t n = 99;
	assert_int_equal(parse_mem(&m, p, &n), 0);
	assert_int_equal(n, 0);   /* blank: no table, no error */
	mbr_entry(m.data, 0, 0x80, 0x83, 1, 100);
	mbr_entry(m.data, 1, 0, 0x05, 200, 1000);   /* extended: logical 5 and 6 */
	mbr_entry(m.data + 200 * 512, 0, 0, 0x07, 2, 10);
	mbr_entry(m.data + 200 * 512, 1, 0, 0x05, 50, 20);
	mbr_entry(m.data + 250 * 512, 0, 0, 0x0c, 1, 5);
	assert_int_equal(parse_mem(&m, p, &n), 0);
	assert_int_equal(n, 3);
	assert_int_equal(p[0].number, 1);
	assert_true(p[0].bootable);
	assert_int_equal(p[0].offset, 512);
	assert_int_equal(p[0].length, 100 * 512);
	assert_string_equal(p[0].type, "mbr:0x83");
	assert_int_equal(p[1].number, 5);
	assert_int_equal(p[1].offset, 202 * 512);
	assert_int_equal(p[2].number, 6);
	assert_int_equal(p[2].offset, 251 * 512);
	assert_string_equal(p[2].type, "mbr:0x0c");
	/* An extended boot record pointing back at itself: an error, not a hang. */
	put32(m.data + 200 * 512 + 446 + 16 + 8, 0);
	put32(m.data + 250 * 512 + 446 + 16 + 8, 50);
	m.data[250 * 512 + 446 + 16 + 4] = 0x05;
	assert_int_equal(parse_mem(&m, p, &n), 0);   /* rel 0 in the first record ends the chain */
	put32(m.data + 200 * 512 + 446 + 16 + 8, 50);
	assert_int_equal(parse_mem(&m, p, &n), -VELA_E_CORRUPT);
	assert_non_null(strstr(vela_errmsg(), "points back"));
	m.data[250 * 512 + 446 + 16 + 4] = 0;
	/* A partition past the end of the disk. */
	mbr_entry(m.data, 2, 0, 0x83, 2000, 0xffffffffu);
	assert_int_equal(parse_mem(&m, p, &n), -VELA_E_CORRUPT);
	assert_non_null(strstr(vela_errmsg(), "partition 3"));
	/* A FAT boot sector is not a table (its status bytes are not 0/0x80). */
	memset(m.data + 446, 0x4a, 64);
	assert_int_equal(parse_mem(&m, p, &n), 0);
	assert_int_equal(n, 0);
	free(m.data);
}

static void gpt_seal(struct mem_disk *m, uint32_t count)
{
	uint8_t *h = m->data + 512, *arr = m->data + 1024;
	put32(h + 88, (uint32_t)crc32(0, arr, count * 128));
	put32(h + 16, 0);
	put32(h + 16, (uint32_t)crc32(0, h, 92));
}

static void partitions_gpt(void **state)
{
	(void)state;
	struct mem_disk m = { xcalloc(1, 1 << 20), 1 << 20 };
	mbr_entry(m.data, 0, 0, 0xee, 1, 2047);
	uint8_t *h = m.data + 512, *arr = m.data + 1024;
	memcpy(h, "EFI PART", 8);
	put32(h + 8, 0x10000);
	put32(h + 12, 92);
	put64(h + 24, 1);
	put64(h + 72, 2);
	put32(h + 80, 128);
	put32(h + 84, 128);
	/* Entry 2 (of the Linux file system type), entry 1 unused. */
	static const uint8_t linux_fs[16] = { 0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47,
					      0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4 };
	memcpy(arr + 128, linux_fs, 16);
	put64(arr + 128 + 32, 40);
	put64(arr + 128 + 40, 1039);
	put64(arr + 128 + 48, 4);
	gpt_seal(&m, 128);
	struct vdisk_partition p[VDISK_MAX_PARTITIONS];
	size_t n = 0;
	assert_int_equal(parse_mem(&m, p, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(p[0].number, 2);
	assert_int_equal(p[0].offset, 40 * 512);
	assert_int_equal(p[0].length, 1000 * 512);
	assert_true(p[0].bootable);
	assert_string_equal(p[0].type, "0fc63daf-8483-4772-8e79-3d69d8477de4");
	/* A changed entry without a new CRC: refused. */
	put64(arr + 128 + 40, 1040);
	assert_int_equal(parse_mem(&m, p, &n), -VELA_E_CORRUPT);
	assert_non_null(strstr(vela_errmsg(), "entry array"));
	/* Sealed again but past the disk's end. */
	put64(arr + 128 + 40, 1ull << 40);
	gpt_seal(&m, 128);
	assert_int_equal(parse_mem(&m, p, &n), -VELA_E_CORRUPT);
	assert_non_null(strstr(vela_errmsg(), "not on the disk"));
	/* An entry array claimed huge. */
	put64(arr + 128 + 40, 1039);
	put32(h + 80, 1u << 30);
	gpt_seal(&m, 128);
	assert_int_equal(parse_mem(&m, p, &n), -VELA_E_CORRUPT);
	/* A protective MBR with no GPT behind it. */
	memset(h, 0, 512);
	assert_int_equal(parse_mem(&m, p, &n), -VELA_E_CORRUPT);
	assert_non_null(strstr(vela_errmsg(), "no GPT header"));
	free(m.data);
}

/* ------------------------------------------------------------ write-behind */

/* cachestat(2) (Linux 6.5): the page cache's view of a file range.  Older
 * kernels answer ENOSYS and the dirty-page check is skipped (the counter
 * checks still run). */
struct cachestat_range_v1 {
	uint64_t off, len;
};
struct cachestat_v1 {
	uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};

static int dirty_pages(const char *path, uint64_t off, uint64_t len, uint64_t *dirty)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	struct cachestat_range_v1 range = { off, len };
	struct cachestat_v1 cs = { 0 };
	long r = syscall(451 /* cachestat */, fd, &range, &cs, 0);
	close(fd);
	*dirty = cs.nr_dirty;
	return r == 0 ? 0 : -1;
}

static uint64_t wait_pushed(struct vdisk *d, uint64_t at_least)
{
	/* The push runs on the write-behind thread: give it up to 10 s. */
	for (int i = 0; i < 1000 && vdisk_test_write_behind_pushed(d) < at_least; i++)
		usleep(10000);
	return vdisk_test_write_behind_pushed(d);
}

static void write_stream(struct vdisk *d, const char *buf, const unsigned *order, unsigned n, uint64_t base)
{
	for (unsigned i = 0; i < n; i++)
		assert_int_equal(vdisk_pwrite(d, buf, MIB, base + (uint64_t)order[i] * MIB), 0);
}

static void write_behind_pushes_streams_only(void **state)
{
	(void)state;
	CLEANUP_FREE char *path = tmp("wb.raw");
	struct vdisk_create_opts o = { .type = VDISK_TYPE_RAW, .size = 256ull * MIB };
	assert_int_equal(vdisk_create(path, &o), 0);
	char *buf = xcalloc(1, MIB);
	memset(buf, 0x5a, MIB);
	unsigned order[64];

	/* Random 4 KiB writes and far-apart 1 MiB writes are left to the cache. */
	struct vdisk *d = NULL;
	assert_int_equal(vdisk_open(path, 0, &d), 0);
	for (unsigned i = 0; i < 2000; i++)
		assert_int_equal(vdisk_pwrite(d, buf, 4096, (uint64_t)i * 7919 * 4096 % (256ull * MIB)), 0);
	for (unsigned i = 0; i < 3; i++)
		assert_int_equal(vdisk_pwrite(d, buf, MIB, (uint64_t)i * 40 * MIB), 0);
	usleep(100000);
	assert_int_equal(vdisk_test_write_behind_pushed(d), 0);

	/* A 64 MiB stream whose requests land out of order (pairs swapped, as
	 * a deep queue delivers them) is pushed up to its last 16 MiB window. */
	for (unsigned i = 0; i < 64; i++)
		order[i] = i ^ 1;
	write_stream(d, buf, order, 64, 128 * MIB);
	uint64_t pushed = wait_pushed(d, 40 * MIB);
	if (pushed < 40 * MIB || pushed > 48 * MIB)
		fail_msg("a 64 MiB stream pushed %llu bytes", (unsigned long long)pushed);
	uint64_t dirty = 0;
	if (dirty_pages(path, 128 * MIB, 40 * MIB, &dirty) == 0) {
		/* Pushed means written to the device, not only counted. */
		for (int i = 0; i < 500 && dirty; i++) {
			usleep(10000);
			dirty_pages(path, 128 * MIB, 40 * MIB, &dirty);
		}
		assert_int_equal(dirty, 0);
	}
	assert_int_equal(vdisk_close(d), 0);

	/* The data is what was written, wherever it went first. */
	assert_int_equal(vdisk_open(path, VDISK_OPEN_RDONLY, &d), 0);
	char *back = xcalloc(1, MIB);
	for (unsigned i = 0; i < 64; i++) {
		assert_int_equal(vdisk_pread(d, back, MIB, 128 * MIB + (uint64_t)i * MIB), 0);
		assert_memory_equal(back, buf, MIB);
	}
	assert_int_equal(vdisk_close(d), 0);

	/* Turned off, and never for read-only or direct opens: nothing pushed. */
	for (unsigned i = 0; i < 64; i++)
		order[i] = i;
	assert_int_equal(vdisk_open(path, VDISK_OPEN_NO_WRITE_BEHIND, &d), 0);
	write_stream(d, buf, order, 64, 0);
	usleep(100000);
	assert_int_equal(vdisk_test_write_behind_pushed(d), 0);
	assert_int_equal(vdisk_close(d), 0);
	assert_int_equal(vdisk_open(path, VDISK_OPEN_DIRECT, &d), 0);
	write_stream(d, buf, order, 64, 0);
	usleep(100000);
	assert_int_equal(vdisk_test_write_behind_pushed(d), 0);
	assert_int_equal(vdisk_close(d), 0);
	free(back);
	free(buf);
}

static void write_behind_in_every_format(void **state)
{
	(void)state;
	static const enum vdisk_type types[] = { VDISK_TYPE_QCOW2, VDISK_TYPE_VMDK_MONOLITHIC_SPARSE,
						 VDISK_TYPE_VMDK_2GB_FLAT, VDISK_TYPE_VHD_DYNAMIC, VDISK_TYPE_VHD_FIXED };
	char *buf = xcalloc(1, MIB);
	memset(buf, 0xa5, MIB);
	unsigned order[48];
	for (unsigned i = 0; i < 48; i++)
		order[i] = i;
	for (size_t t = 0; t < ARRAY_SIZE(types); t++) {
		CLEANUP_FREE char *name = xasprintf("wb-%zu.img", t);
		CLEANUP_FREE char *path = tmp(name);
		struct vdisk_create_opts o = { .type = types[t], .size = 64ull * MIB };
		assert_int_equal(vdisk_create(path, &o), 0);
		struct vdisk *d = NULL;
		assert_int_equal(vdisk_open(path, 0, &d), 0);
		/* New allocations (the first pass) and rewrites in place. */
		write_stream(d, buf, order, 48, 0);
		write_stream(d, buf, order, 48, 0);
		if (wait_pushed(d, 8 * MIB) < 8 * MIB)
			fail_msg("%s: write-behind pushed %llu bytes", vdisk_type_name(types[t]),
				 (unsigned long long)vdisk_test_write_behind_pushed(d));
		assert_int_equal(vdisk_close(d), 0);
	}
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(io_raw),
		cmocka_unit_test(io_monolithic_sparse),
		cmocka_unit_test(io_monolithic_flat),
		cmocka_unit_test(io_2gb_sparse),
		cmocka_unit_test(io_2gb_flat),
		cmocka_unit_test(errors_of_io_and_create),
		cmocka_unit_test(geometry_rules),
		cmocka_unit_test(chains_addredo_commit),
		cmocka_unit_test(chain_problems_are_detected),
		cmocka_unit_test(hostile_images),
		cmocka_unit_test(crash_consistency_vmdk),
		cmocka_unit_test(commit_crash_vmdk),
		cmocka_unit_test(commit_crash_vhd),
		cmocka_unit_test(commit_crash_qcow2),
		cmocka_unit_test(crash_consistency_vhd),
		cmocka_unit_test(io_vhd_dynamic),
		cmocka_unit_test(io_vhd_fixed),
		cmocka_unit_test(vhd_chain),
		cmocka_unit_test(hostile_vhd),
		cmocka_unit_test(io_qcow2),
		cmocka_unit_test(io_stream),
		cmocka_unit_test(relink_commit_level_vmdk),
		cmocka_unit_test(relink_commit_level_qcow2),
		cmocka_unit_test(relink_commit_level_vhd),
		cmocka_unit_test(extend_compact_write_zeroes),
		cmocka_unit_test(concurrent_io),
		cmocka_unit_test(crash_consistency_qcow2),
		cmocka_unit_test(hostile_qcow2),
		cmocka_unit_test(convert_is_sparse_aware),
		cmocka_unit_test(partitions_mbr),
		cmocka_unit_test(partitions_gpt),
		cmocka_unit_test(write_behind_pushes_streams_only),
		cmocka_unit_test(write_behind_in_every_format),
	};
	return cmocka_run_group_tests_name("vdisk", tests, setup, teardown);
}
