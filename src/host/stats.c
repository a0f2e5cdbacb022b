/*
 * stats.c - performance statistics: every interval (20 s by default) the
 * host's CPU and memory use and, for each running VM, the CPU its QEMU
 * process used, its resident memory and its disks' read and write rates,
 * kept in the database for a while (an hour by default; older samples are
 * dropped as new ones come: a ring).
 *
 * Network rates are the guest's own counts of what its interfaces received
 * and sent, from its agent's heartbeat: the NICs are not switched by the
 * host yet (a virtual switch will count at its ports); without the agent
 * they are 0.
 *
 * Rates need two readings: a VM's first sample after it started only seeds
 * them.  VM CPU is in host cores used (0.5 = half a core), so a reader can
 * relate it to the VM's vCPUs or to the host as it likes.
 */
#include "common.h"
#include "internal.h"
#include "vmx-sup.h"

#include <string.h>
#include <unistd.h>

/* The last raw reading of a VM (or of the host, id 0). */
struct stats_prev {
	int64_t id;
	pid_t pid;                 /* QEMU's: a new process starts the counters anew */
	int64_t mono_ms;
	uint64_t cpu_ticks, busy_ticks, total_ticks, rd_bytes, wr_bytes, net_rx, net_tx;
	bool net_known;
	bool seen;                 /* in this round (the others are gone) */
	struct stats_prev *next;
};

static struct stats_prev *prev_of(struct host *h, int64_t id)
{
	struct stats_prev *p = h->stats_prev;
	while (p && p->id != id)
		p = p->next;
	if (!p) {
		p = xcalloc(1, sizeof *p);
		p->id = id;
		p->next = h->stats_prev;
		h->stats_prev = p;
	}
	p->seen = true;
	return p;
}

struct rates {
	uint64_t disk_rd, disk_wr, net_rx, net_tx;   /* bytes per second */
};

static int record(struct host *h, int64_t vm, int64_t when, double cpu, uint64_t mem, uint64_t mem_total,
		  const struct rates *rt)
{
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	int r = host_db_prepare(h,
				"INSERT INTO stats(vm, time, cpu, mem, mem_total, disk_rd, disk_wr, net_rx, net_tx)"
				" VALUES(?,?,?,?,?,?,?,?,?)",
				&st);
	if (r == 0) {
		sqlite3_bind_int64(st, 1, vm);
		sqlite3_bind_int64(st, 2, when);
		sqlite3_bind_double(st, 3, cpu);
		sqlite3_bind_int64(st, 4, (sqlite3_int64)mem);
		sqlite3_bind_int64(st, 5, (sqlite3_int64)mem_total);
		sqlite3_bind_int64(st, 6, (sqlite3_int64)rt->disk_rd);
		sqlite3_bind_int64(st, 7, (sqlite3_int64)rt->disk_wr);
		sqlite3_bind_int64(st, 8, (sqlite3_int64)rt->net_rx);
		sqlite3_bind_int64(st, 9, (sqlite3_int64)rt->net_tx);
		if (sqlite3_step(st) != SQLITE_DONE)
			r = host_db_fail(h, "record statistics");
	}
	pthread_mutex_unlock(&h->db_lock);
	return r;
}

/* user+nice+system+... and idle+iowait of /proc/stat's first line. */
static bool host_cpu_ticks(uint64_t *busy, uint64_t *total)
{
	CLEANUP_FREE char *text = NULL;
	size_t len;
	if (read_file("/proc/stat", 1 << 20, &text, &len) < 0)
		return false;
	unsigned long long v[8] = { 0 };
	if (sscanf(text, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
		   &v[7]) < 4)
		return false;
	*total = 0;
	for (int i = 0; i < 8; i++)
		*total += v[i];
	*busy = *total - v[3] - v[4];
	return true;
}

static uint64_t meminfo_kb(const char *text, const char *key)
{
	const char *p = strstr(text, key);
	unsigned long long kb = 0;
	if (p)
		sscanf(p + strlen(key), " %llu", &kb);
	return kb * 1024;
}

/* utime+stime (ticks) and resident bytes of a process. */
static bool proc_usage(pid_t pid, uint64_t *ticks, uint64_t *rss)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	CLEANUP_FREE char *text = NULL;
	size_t len;
	if (read_file(path, 1 << 16, &text, &len) < 0)
		return false;
	/* The command name may hold spaces and parentheses: fields count from
	 * the last ')'. */
	const char *p = strrchr(text, ')');
	unsigned long long ut = 0, stime = 0;
	long long rss_pages = 0;
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d %*u %*u %lld",
			 &ut, &stime, &rss_pages) != 3)
		return false;
	*ticks = ut + stime;
	*rss = rss_pages > 0 ? (uint64_t)rss_pages * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
	return true;
}

static void sample_vm(struct host *h, int64_t id, const char *config, int64_t now_real, int64_t now_mono, double tick_s)
{
	json_t *status = host_vm_status(config);
	pid_t pid = (pid_t)json_integer_value(json_object_get(status, "qemu_pid"));
	json_decref(status);
	uint64_t ticks, rss, rd = 0, wr = 0;
	if (pid <= 0 || !proc_usage(pid, &ticks, &rss))
		return;   /* starting or stopping: next round */
	json_t *reply = NULL, *req = json_pack("{s:s}", "cmd", "disk-stats");
	if (vmxsup_call(config, req, &reply, 5000) == 0) {
		const char *addr;
		json_t *d;
		json_object_foreach(json_object_get(reply, "disks"), addr, d) {
			rd += (uint64_t)json_integer_value(json_object_get(d, "rd_bytes"));
			wr += (uint64_t)json_integer_value(json_object_get(d, "wr_bytes"));
		}
	}
	json_decref(req);
	json_decref(reply);
	reply = NULL;
	uint64_t net_rx = 0, net_tx = 0;
	bool net_known = false;
	req = json_pack("{s:s}", "cmd", "guest");
	if (vmxsup_call(config, req, &reply, 5000) == 0) {
		json_t *net = json_object_get(reply, "net");
		net_known = json_is_integer(json_object_get(net, "rx_bytes"));
		net_rx = (uint64_t)json_integer_value(json_object_get(net, "rx_bytes"));
		net_tx = (uint64_t)json_integer_value(json_object_get(net, "tx_bytes"));
	}
	json_decref(req);
	json_decref(reply);
	struct stats_prev *p = prev_of(h, id);
	if (p->pid == pid && p->mono_ms && now_mono > p->mono_ms && ticks >= p->cpu_ticks && rd >= p->rd_bytes &&
	    wr >= p->wr_bytes) {
		double dt = (double)(now_mono - p->mono_ms) / 1000.0;
		struct rates rt = { .disk_rd = (uint64_t)((double)(rd - p->rd_bytes) / dt),
				    .disk_wr = (uint64_t)((double)(wr - p->wr_bytes) / dt) };
		/* A guest's counters start again when it reboots: no rate then. */
		if (net_known && p->net_known && net_rx >= p->net_rx && net_tx >= p->net_tx) {
			rt.net_rx = (uint64_t)((double)(net_rx - p->net_rx) / dt);
			rt.net_tx = (uint64_t)((double)(net_tx - p->net_tx) / dt);
		}
		record(h, id, now_real, (double)(ticks - p->cpu_ticks) * tick_s / dt, rss, 0, &rt);
	}
	p->pid = pid;
	p->mono_ms = now_mono;
	p->cpu_ticks = ticks;
	p->rd_bytes = rd;
	p->wr_bytes = wr;
	p->net_rx = net_rx;
	p->net_tx = net_tx;
	p->net_known = net_known;
}

void host_stats_sample(struct host *h)
{
	int64_t now_real = time_real_ms(), now_mono = time_mono_ms();
	double tick_s = 1.0 / (double)sysconf(_SC_CLK_TCK);
	for (struct stats_prev *p = h->stats_prev; p; p = p->next)
		p->seen = false;
	/* The host: CPU busy share of all cores, memory in use (not available). */
	uint64_t busy, total;
	CLEANUP_FREE char *mem = NULL;
	size_t len;
	if (host_cpu_ticks(&busy, &total) && read_file("/proc/meminfo", 1 << 20, &mem, &len) == 0) {
		struct stats_prev *p = prev_of(h, 0);
		uint64_t mt = meminfo_kb(mem, "MemTotal:"), ma = meminfo_kb(mem, "MemAvailable:");
		long cores = sysconf(_SC_NPROCESSORS_ONLN);
		if (p->mono_ms && total > p->total_ticks)
			record(h, 0, now_real,
			       (double)(busy - p->busy_ticks) / (double)(total - p->total_ticks) * (double)(cores > 0 ? cores : 1),
			       mt > ma ? mt - ma : 0, mt, &(struct rates){ 0 });
		p->mono_ms = now_mono;
		p->busy_ticks = busy;
		p->total_ticks = total;
	}
	json_t *vms = NULL;
	if (host_vm_list(h, &vms) == 0) {
		size_t i;
		json_t *vm;
		json_array_foreach(vms, i, vm) {
			const char *state = json_string_value(json_object_get(vm, "state"));
			if (strcmp(state, "off") != 0)
				sample_vm(h, json_integer_value(json_object_get(vm, "id")),
					  json_string_value(json_object_get(vm, "config")), now_real, now_mono, tick_s);
		}
		json_decref(vms);
	}
	/* Forget what is gone, so a VM's next life starts its rates anew. */
	for (struct stats_prev **pp = &h->stats_prev; *pp;) {
		struct stats_prev *p = *pp;
		if (!p->seen) {
			*pp = p->next;
			free(p);
		} else {
			pp = &p->next;
		}
	}
	/* The ring: what is older than the keep time goes. */
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	if (host_db_prepare(h, "DELETE FROM stats WHERE time < ?", &st) == 0) {
		sqlite3_bind_int64(st, 1, now_real - h->stats_keep_ms);
		sqlite3_step(st);
	}
	pthread_mutex_unlock(&h->db_lock);
}

void host_stats_free(struct host *h)
{
	while (h->stats_prev) {
		struct stats_prev *p = h->stats_prev;
		h->stats_prev = p->next;
		free(p);
	}
}

int host_stats(struct host *h, int64_t vm, int64_t since_ms, json_t **out)
{
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	int r = host_db_prepare(h,
				vm ? "SELECT time, cpu, mem, disk_rd, disk_wr, net_rx, net_tx FROM stats WHERE vm = ? AND time > ? ORDER BY time"
				   : "SELECT time, cpu, mem, mem_total FROM stats WHERE vm = ? AND time > ? ORDER BY time",
				&st);
	json_t *rows = NULL;
	if (r == 0) {
		sqlite3_bind_int64(st, 1, vm);
		sqlite3_bind_int64(st, 2, since_ms);
		r = host_db_rows(h, st, &rows);
	}
	pthread_mutex_unlock(&h->db_lock);
	if (r < 0)
		return r;
	*out = json_pack("{s:I, s:I, s:o}", "interval_ms", (json_int_t)h->stats_interval_ms, "keep_ms",
			 (json_int_t)h->stats_keep_ms, "samples", rows);
	return 0;
}
