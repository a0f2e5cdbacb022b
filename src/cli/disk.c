/* disk.c - `vela disk ...`: offline disk tools on libvdisk. */
#include "common.h"
#include "cli.h"
#include "vdisk.h"
#include "blk.h"

#include <signal.h>

#include <pthread.h>
#include <sys/mman.h>
#include <stdatomic.h>
#include <string.h>

static void progress_line(uint64_t done, uint64_t total, void *opaque)
{
	const struct cli *c = opaque;
	static int last = -1;
	int pct = total ? (int)(done * 100 / total) : 100;
	if (c->json || pct == last || !isatty(2))
		return;
	last = pct;
	fprintf(stderr, "\r%3d%%", pct);
	if (pct == 100)
		fputc('\n', stderr);
}

static int parse_create_opts(const struct cli *c, struct vdisk_create_opts *o, bool need_size)
{
	int r;
	memset(o, 0, sizeof *o);
	o->type = VDISK_TYPE_VMDK_MONOLITHIC_SPARSE;
	o->adapter = VDISK_ADAPTER_LSILOGIC;
	if (c->type && (r = vdisk_type_parse(c->type, &o->type)) < 0)
		return r;
	if (c->adapter && (r = vdisk_adapter_parse(c->adapter, &o->adapter)) < 0)
		return r;
	if (need_size) {
		if (!c->size)
			return vela_error(VELA_E_INVAL, "a size is needed: -s SIZE (k, m, g, t suffixes)");
		if ((r = parse_size(c->size, &o->size)) < 0)
			return r;
	}
	return 0;
}

static json_t *info_json(const struct vdisk_info *i)
{
	json_t *j = json_pack("{s:s, s:s, s:s, s:I, s:I, s:i}", "path", i->path, "format", i->format,
			      "subformat", i->subformat, "size", (json_int_t)i->size,
			      "allocated", (json_int_t)i->allocated, "granularity", (int)i->granularity);
	if (i->adapter)
		json_object_set_new(j, "adapter", json_string(i->adapter));
	if (i->heads)
		json_object_set_new(j, "geometry", json_pack("{s:i, s:i, s:i}", "cylinders", (int)i->cylinders,
							     "heads", (int)i->heads, "sectors", (int)i->sectors));
	if (i->parent)
		json_object_set_new(j, "parent", json_string(i->parent));
	if (i->backing)
		json_object_set_new(j, "backing", info_json(i->backing));
	return j;
}

static int disk_info(const struct cli *c, const char *path)
{
	struct vdisk *d;
	struct vdisk_info *info;
	int r = vdisk_open(path, VDISK_OPEN_RDONLY, &d);
	if (r < 0)
		return cli_fail(c, r);
	r = vdisk_get_info(d, &info);
	vdisk_close(d);
	if (r < 0)
		return cli_fail(c, r);
	if (c->json) {
		json_t *j = info_json(info);
		cli_print_json(j);
		json_decref(j);
	} else {
		unsigned level = 0;
		for (struct vdisk_info *i = info; i; i = i->backing, level++) {
			printf("%s%s\n", level ? "parent: " : "", i->path);
			printf("  format: %s%s%s\n", i->format, i->subformat[0] ? " " : "", i->subformat);
			printf("  size: %llu bytes\n", (unsigned long long)i->size);
			printf("  allocated: %llu bytes\n", (unsigned long long)i->allocated);
			printf("  granularity: %u bytes\n", i->granularity);
			if (i->adapter)
				printf("  adapter: %s (geometry %u/%u/%u)\n", i->adapter, i->cylinders, i->heads, i->sectors);
		}
	}
	vdisk_info_free(info);
	return 0;
}

static int disk_map(const struct cli *c, const char *path)
{
	struct vdisk *d;
	int r = vdisk_open(path, VDISK_OPEN_RDONLY, &d);
	if (r < 0)
		return cli_fail(c, r);
	json_t *arr = json_array();
	uint64_t size = vdisk_size(d), off = 0;
	struct vdisk_extent_status prev = { 0 };
	uint64_t start = 0;
	bool have = false;
	if (!c->json)
		printf("%-16s %-16s %-6s %s\n", "OFFSET", "LENGTH", "STATE", "DEPTH");
	while (off < size) {
		struct vdisk_extent_status es;
		uint64_t want = size - off < (1ull << 30) ? size - off : (1ull << 30);
		if ((r = vdisk_block_status(d, off, want, &es)) < 0)
			break;
		bool same = have && es.status == prev.status && (es.status == VDISK_ZERO || es.depth == prev.depth);
		if (have && !same) {
			if (c->json)
				json_array_append_new(arr, json_pack("{s:I, s:I, s:s, s:i}", "offset", (json_int_t)start,
					"length", (json_int_t)(off - start), "state", prev.status == VDISK_DATA ? "data" : "zero",
					"depth", (int)prev.depth));
			else
				printf("%-16llu %-16llu %-6s %u\n", (unsigned long long)start, (unsigned long long)(off - start),
				       prev.status == VDISK_DATA ? "data" : "zero", prev.depth);
		}
		if (!same) {
			start = off;
			prev = es;
			have = true;
		}
		off += es.len;
	}
	if (r == 0 && have) {
		if (c->json)
			json_array_append_new(arr, json_pack("{s:I, s:I, s:s, s:i}", "offset", (json_int_t)start,
				"length", (json_int_t)(off - start), "state", prev.status == VDISK_DATA ? "data" : "zero",
				"depth", (int)prev.depth));
		else
			printf("%-16llu %-16llu %-6s %u\n", (unsigned long long)start, (unsigned long long)(off - start),
			       prev.status == VDISK_DATA ? "data" : "zero", prev.depth);
	}
	vdisk_close(d);
	if (r < 0) {
		json_decref(arr);
		return cli_fail(c, r);
	}
	if (c->json)
		cli_print_json(arr);
	json_decref(arr);
	return 0;
}

static int print_done(const struct cli *c, const char *what, const char *path)
{
	if (c->json) {
		json_t *j = json_pack("{s:b, s:s}", "ok", 1, what, path);
		cli_print_json(j);
		json_decref(j);
	} else {
		printf("%s\n", path);
	}
	return 0;
}

static int disk_check(const struct cli *c, const char *path)
{
	struct vdisk_check_report rep;
	int r = vdisk_check(path, c->repair, &rep);
	if (r < 0)
		return cli_fail(c, r);
	if (c->json) {
		json_t *j = json_pack("{s:b, s:I, s:I, s:I, s:s?}", "ok", rep.errors == 0, "errors", (json_int_t)rep.errors,
				      "leaks", (json_int_t)rep.leaks, "repaired", (json_int_t)rep.repaired,
				      "first_problem", rep.first_problem);
		cli_print_json(j);
		json_decref(j);
	} else {
		printf("%s: %llu error%s, %llu leaked grain%s%s\n", path, (unsigned long long)rep.errors,
		       rep.errors == 1 ? "" : "s", (unsigned long long)rep.leaks, rep.leaks == 1 ? "" : "s",
		       rep.repaired ? " (repaired)" : "");
		if (rep.first_problem)
			printf("  %s\n", rep.first_problem);
	}
	/* Exit status as qemu-img check: 2 = corrupt metadata, 3 = leaked space only. */
	uint64_t errors = rep.errors, unrepaired = rep.leaks - rep.repaired;
	free(rep.first_problem);
	return errors ? 2 : unrepaired ? 3 : 0;
}

int cli_host_cache(const struct cli *c, bool *host_cache)
{
	*host_cache = true;
	if (!c->cache || strcmp(c->cache, "writeback") == 0)
		return 0;
	if (strcmp(c->cache, "none") == 0) {
		*host_cache = false;
		return 0;
	}
	return vela_error(VELA_E_INVAL, "--cache %s: expected none or writeback", c->cache);
}

/* ------------------------------------------------------------- bench */

struct bench {
	struct vdisk *d;
	uint64_t size, bs, step, count;
	bool write;
	uint8_t *arena;      /* depth request buffers of bs bytes, one per worker */
	atomic_uint worker;
	atomic_ullong next;
	atomic_int failed;
	pthread_mutex_t lock;
	char error[512];     /* the first failure's message: messages are per thread */
};

/* Request i goes to (i * step) mod size, as qemu-img bench walks a disk. */
static void *bench_worker(void *arg)
{
	struct bench *b = arg;
	void *buf = b->arena + (size_t)atomic_fetch_add(&b->worker, 1) * b->bs;
	memset(buf, 0xa5, b->bs);
	for (;;) {
		unsigned long long i = atomic_fetch_add(&b->next, 1);
		if (i >= b->count)
			break;
		uint64_t off = (uint64_t)((unsigned __int128)i * b->step % b->size);
		if (off + b->bs > b->size)
			off = b->size - b->bs;
		int r = b->write ? vdisk_pwrite(b->d, buf, b->bs, off) : vdisk_pread(b->d, buf, b->bs, off);
		if (r < 0) {
			int none = 0;
			if (atomic_compare_exchange_strong(&b->failed, &none, r)) {
				pthread_mutex_lock(&b->lock);
				snprintf(b->error, sizeof b->error, "%s", vela_errmsg());
				pthread_mutex_unlock(&b->lock);
			}
			break;
		}
	}
	return NULL;
}

/* Request buffers live where a guest's would: in one arena that transparent
 * huge pages may back, as a VMM backs guest RAM.  Large O_DIRECT requests on
 * 4 KiB pages cost a descriptor segment per page (a 1 MiB request already
 * exceeds a virtio disk's 254 segments); --small-pages measures that case. */
struct bench_arena {
	void *map;
	size_t map_size;
};

static uint8_t *bench_arena_new(struct bench_arena *a, size_t size, bool huge)
{
	const size_t huge_page = 2u << 20;
	size = (size + huge_page - 1) & ~(huge_page - 1);
	a->map_size = size + huge_page;
	a->map = mmap(NULL, a->map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (a->map == MAP_FAILED)
		return NULL;
	/* Use a 2 MiB-aligned window; the slack is never touched. */
	uint8_t *p = (uint8_t *)(((uintptr_t)a->map + huge_page - 1) & ~(uintptr_t)(huge_page - 1));
	madvise(p, size, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	return p;
}

static int disk_bench(const struct cli *c, const char *path)
{
	struct bench b = { .count = c->count ? c->count : 100000, .write = c->write, .lock = PTHREAD_MUTEX_INITIALIZER };
	uint64_t depth = 32;
	int r = 0;
	b.bs = 4096;
	if (c->bs && (r = parse_size(c->bs, &b.bs)) < 0)
		return cli_fail(c, vela_error_context(r, "--bs"));
	b.step = b.bs;
	if (c->step && (r = parse_size(c->step, &b.step)) < 0)
		return cli_fail(c, vela_error_context(r, "--step"));
	if (c->depth && (r = parse_u64(c->depth, 1024, &depth)) < 0)
		return cli_fail(c, vela_error_context(r, "--depth"));
	if (b.bs == 0 || b.bs > (64u << 20) || depth == 0)
		return cli_fail(c, vela_error(VELA_E_INVAL, "bench: --bs from 1 byte to 64 MiB and --depth above 0"));
	if (b.bs * depth > (4ull << 30))
		return cli_fail(c, vela_error(VELA_E_INVAL, "bench: --bs times --depth is over 4 GiB of buffers"));
	bool host_cache;
	if ((r = cli_host_cache(c, &host_cache)) < 0)
		return cli_fail(c, r);
	unsigned flags = (c->write ? 0 : VDISK_OPEN_RDONLY) | (host_cache ? 0 : VDISK_OPEN_DIRECT) |
			 (c->no_write_behind ? VDISK_OPEN_NO_WRITE_BEHIND : 0);
	if ((r = vdisk_open(path, flags, &b.d)) < 0)
		return cli_fail(c, r);
	b.size = vdisk_size(b.d);
	if (b.bs > b.size) {
		vdisk_close(b.d);
		return cli_fail(c, vela_error(VELA_E_INVAL, "bench: --bs is larger than the disk"));
	}
	struct bench_arena arena;
	size_t arena_size = (size_t)(depth * b.bs);
	if (!(b.arena = bench_arena_new(&arena, arena_size, !c->small_pages))) {
		vdisk_close(b.d);
		return cli_fail(c, vela_error_errno(errno, "bench: %zu bytes of request buffers", arena_size));
	}
	pthread_t *t = xcalloc(depth, sizeof *t);
	int64_t t0 = time_mono_ms();
	for (uint64_t i = 0; i < depth; i++)
		pthread_create(&t[i], NULL, bench_worker, &b);
	for (uint64_t i = 0; i < depth; i++)
		pthread_join(t[i], NULL);
	if (c->write && atomic_load(&b.failed) == 0)
		r = vdisk_flush(b.d);   /* writes count once they are durable */
	int64_t ms = time_mono_ms() - t0;
	free(t);
	munmap(arena.map, arena.map_size);
	int cr = vdisk_close(b.d);
	if (atomic_load(&b.failed) < 0)
		return cli_fail(c, vela_error(atomic_load(&b.failed), "bench: %s", b.error));
	if (r < 0 || cr < 0)
		return cli_fail(c, r < 0 ? r : cr);
	double secs = ms > 0 ? ms / 1000.0 : 0.001;
	double mib = (double)b.count * (double)b.bs / (1024.0 * 1024.0);
	if (c->json) {
		json_t *j = json_pack("{s:b, s:s, s:I, s:I, s:I, s:I, s:f, s:f, s:f}", "ok", 1, "mode", c->write ? "write" : "read",
				      "requests", (json_int_t)b.count, "bs", (json_int_t)b.bs, "step", (json_int_t)b.step,
				      "depth", (json_int_t)depth, "seconds", secs, "iops", b.count / secs, "mib_per_s", mib / secs);
		cli_print_json(j);
		json_decref(j);
	} else {
		printf("%s: %llu %s requests of %llu bytes, depth %llu: %.3f s, %.0f IOPS, %.1f MiB/s\n", path,
		       (unsigned long long)b.count, c->write ? "write" : "read", (unsigned long long)b.bs,
		       (unsigned long long)depth, secs, b.count / secs, mib / secs);
	}
	return 0;
}

/* ------------------------------------------------------------- serve */

static volatile bool serve_stop;
static void on_stop_signal(int sig)
{
	(void)sig;
	serve_stop = true;
}

static void serve_ready(const char *where, void *opaque)
{
	const char *path = opaque;
	printf("serving %s over NBD on %s\n", path, where);
	fflush(stdout);
}

static void serve_vhost_ready(const char *where, void *opaque)
{
	printf("serving %s over vhost-user-blk on %s\n", (const char *)opaque, where);
	fflush(stdout);
}

/* Serve the disk over NBD, or over vhost-user-blk with --vhost-user, until
 * SIGINT or SIGTERM. */
static int disk_serve(const struct cli *c, const char *path)
{
	struct blk_disk *d = NULL;
	bool host_cache;
	int r = cli_host_cache(c, &host_cache);
	if (r == 0)
		r = blk_disk_open_cache(path, c->read_only, host_cache, &d);
	if (r < 0)
		return cli_fail(c, r);
	struct sigaction sa = { .sa_handler = on_stop_signal };
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	CLEANUP_FREE char *base = path_basename(path);
	if (c->vhost_user) {
		struct blk_vhost_opts o = { .num_queues = c->queues ? c->queues : 1, .serial = base };
		r = blk_vhost_listen(c->vhost_user, d, &o, &serve_stop, serve_vhost_ready, (void *)path);
	} else {
		struct blk_export exp = { .disk = d, .name = c->name ? c->name : base, .read_only = c->read_only,
					  .description = path };
		r = blk_nbd_listen(c->nbd ? c->nbd : ":10809", &exp, &serve_stop, serve_ready, (void *)path);
	}
	int cr = blk_disk_close(d);
	if (r < 0 || cr < 0)
		return cli_fail(c, r < 0 ? r : cr);
	return 0;
}

int cmd_disk(const struct cli *c, const char *const *w, size_t n)
{
	struct vdisk_create_opts o;
	int r;
	if (n < 2)
		return cli_usage_error("usage: vela disk create|info|map|convert|clone|check|extend|compact|addredo|commit|relink|rename|delete|bench|serve ...%s", "");
	const char *verb = w[1];
	if (strcmp(verb, "create") == 0 && n == 3) {
		if ((r = parse_create_opts(c, &o, true)) < 0 || (r = vdisk_create(w[2], &o)) < 0)
			return cli_fail(c, r);
		return print_done(c, "created", w[2]);
	}
	if (strcmp(verb, "info") == 0 && n == 3)
		return disk_info(c, w[2]);
	if (strcmp(verb, "map") == 0 && n == 3)
		return disk_map(c, w[2]);
	if (strcmp(verb, "convert") == 0 && n == 4) {
		if ((r = parse_create_opts(c, &o, false)) < 0 ||
		    (r = vdisk_convert(w[2], w[3], &o, progress_line, (void *)c)) < 0)
			return cli_fail(c, r);
		return print_done(c, "created", w[3]);
	}
	if (strcmp(verb, "clone") == 0 && n == 4) {
		if ((r = parse_create_opts(c, &o, false)) < 0)
			return cli_fail(c, r);
		if (c->linked) {
			/* A linked clone is a child of the (now read-only) source, in the
			 * source's format unless -t qcow2 asks for a qcow2 child. */
			if (!c->type)
				o.type = VDISK_TYPE_VMDK_MONOLITHIC_SPARSE;
			o.parent = w[2];
			r = vdisk_create(w[3], &o);
		} else {
			r = vdisk_convert(w[2], w[3], &o, progress_line, (void *)c);
		}
		if (r < 0)
			return cli_fail(c, r);
		return print_done(c, "created", w[3]);
	}
	if (strcmp(verb, "check") == 0 && n == 3)
		return disk_check(c, w[2]);
	if (strcmp(verb, "addredo") == 0 && n == 3) {
		CLEANUP_FREE char *child = NULL;
		if ((r = vdisk_addredo(w[2], &child)) < 0)
			return cli_fail(c, r);
		return print_done(c, "child", child);
	}
	if (strcmp(verb, "commit") == 0 && n == 3) {
		uint64_t level = 0;
		if (c->level && (r = parse_u64(c->level, VDISK_MAX_CHAIN, &level)) < 0)
			return cli_fail(c, vela_error_context(r, "--level"));
		if ((r = vdisk_commit_level(w[2], (unsigned)level, !c->keep, progress_line, (void *)c)) < 0)
			return cli_fail(c, r);
		return print_done(c, "committed", w[2]);
	}
	if (strcmp(verb, "delete") == 0 && n == 3) {
		if ((r = vdisk_delete(w[2], c->force)) < 0)
			return cli_fail(c, r);
		return print_done(c, "deleted", w[2]);
	}
	if (strcmp(verb, "rename") == 0 && n == 4) {
		if ((r = vdisk_rename(w[2], w[3])) < 0)
			return cli_fail(c, r);
		return print_done(c, "renamed", w[3]);
	}
	if (strcmp(verb, "serve") == 0 && n == 3)
		return disk_serve(c, w[2]);
	if (strcmp(verb, "bench") == 0 && n == 3)
		return disk_bench(c, w[2]);
	if (strcmp(verb, "extend") == 0 && n == 3) {
		uint64_t size;
		if (!c->size)
			return cli_fail(c, vela_error(VELA_E_INVAL, "extend needs the new size: -s SIZE"));
		if ((r = parse_size(c->size, &size)) < 0 || (r = vdisk_extend(w[2], size)) < 0)
			return cli_fail(c, r);
		return print_done(c, "extended", w[2]);
	}
	if (strcmp(verb, "compact") == 0 && n == 3) {
		uint64_t freed;
		if ((r = vdisk_compact(w[2], &freed)) < 0)
			return cli_fail(c, r);
		if (c->json) {
			json_t *j = json_pack("{s:b, s:s, s:I}", "ok", 1, "compacted", w[2], "reclaimed", (json_int_t)freed);
			cli_print_json(j);
			json_decref(j);
		} else {
			printf("%s: %llu bytes of zeroed data dropped\n", w[2], (unsigned long long)freed);
		}
		return 0;
	}
	if (strcmp(verb, "relink") == 0 && n == 4) {
		if ((r = vdisk_relink(w[2], w[3], c->force)) < 0)
			return cli_fail(c, r);
		return print_done(c, "relinked", w[2]);
	}
	return cli_usage_error("usage: vela disk create|info|map|convert|clone|check|extend|compact|addredo|commit|relink|rename|delete|bench|serve ... (see vela --help)%s", "");
}
