/*
 * vela-guestd - Vela's guest agent.  Runs inside a Linux guest and talks to
 * the VM's supervisor over the virtio-serial port org.vela.guestd.0 (see
 * docs/guest-agent-protocol.md):
 *
 *   - heartbeat, and guest information (OS, kernel, hostname, addresses,
 *     memory, balloon driver, agent version);
 *   - soft halt and reboot, after the configured pre-commands;
 *   - the clock set by the host (after resume and revert, and periodically
 *     when the VM has tools.syncTime);
 *   - quiesce: pre-freeze script, FIFREEZE on every mounted block file
 *     system, FITHAW and the post-thaw script (and a thaw by itself after
 *     freeze-timeout, should the host never ask);
 *   - zero-fill of free space, so compaction can reclaim it;
 *   - machine.id and guestinfo for programs in the guest, through the
 *     local socket /run/vela-guestd.sock (`vela-guestd machine-id`,
 *     `vela-guestd get KEY`, `vela-guestd set KEY VALUE`).
 *
 * One thread, one event loop: slow work (scripts, zero-fill) runs in child
 * processes so the heartbeat never stops while it runs.
 */
#include "common.h"
#include "agent.h"

#include <dirent.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/fs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>

#define DEFAULT_CONF "/etc/vela-guestd.conf"
#define DEFAULT_SOCKET "/run/vela-guestd.sock"
#define OUT_MAX (1u << 20)       /* unsent bytes to the host before we drop notices */
#define MAX_FROZEN 64
#define MAX_LOCAL_CLIENTS 16
#define LOCAL_TIMEOUT_MS 10000

enum job_kind { JOB_SCRIPT, JOB_HALT_PREP, JOB_FREEZE_PREP, JOB_ZERO_FILL, JOB_POWER };

struct job {
	pid_t pid;
	enum job_kind kind;
	uint64_t reply_id;          /* host request to answer at the end (0 = none) */
	bool reboot;                /* JOB_HALT_PREP */
	int out_fd;                 /* JOB_ZERO_FILL: the child writes its result here */
	int64_t deadline_ms;
	char what[32];
	struct job *next;
};

struct local_client {
	int fd;
	struct agent_lines in;
	uint64_t waiting_id;        /* our request to the host, 0 = none */
	int64_t since_ms;
	struct local_client *next;
};

struct guestd {
	struct vela_loop *loop;
	struct agent_conf conf;
	const char *conf_path, *port_path, *socket_path;
	char port_dev[300];
	int port_fd, sig_fd, listen_fd;
	struct agent_lines in;
	struct strbuf out;
	uint64_t next_id, beats;
	struct job *jobs;
	struct local_client *clients;
	int frozen_fd[MAX_FROZEN];
	char *frozen_path[MAX_FROZEN];
	unsigned n_frozen;
	uint64_t thaw_timer;
	char *last_info;            /* the last info we sent: resent only when it changes */
	uint64_t overlong_seen;
};

static void port_flush(struct guestd *g);

/* ------------------------------------------------------------- sending */

static void send_msg(struct guestd *g, json_t *j)
{
	char *line = agent_encode(j);
	json_decref(j);
	if (!line || g->port_fd < 0) {
		free(line);
		return;
	}
	if (g->out.len + strlen(line) > OUT_MAX) {
		/* Nobody reads on the host (no supervisor yet): drop, the next beat
		 * and hello say everything again. */
		free(line);
		return;
	}
	strbuf_puts(&g->out, line);
	free(line);
	port_flush(g);
}

static void reply_ok(struct guestd *g, uint64_t id, json_t *fields)
{
	json_t *j = fields ? fields : json_object();
	json_object_set_new(j, "re", json_integer((json_int_t)id));
	json_object_set_new(j, "ok", json_true());
	send_msg(g, j);
}

static void reply_err(struct guestd *g, uint64_t id, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void reply_err(struct guestd *g, uint64_t id, const char *fmt, ...)
{
	char text[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	send_msg(g, json_pack("{s:I, s:b, s:s}", "re", (json_int_t)id, "ok", 0, "error", text));
}

static void port_flush(struct guestd *g)
{
	while (g->out.len > 0) {
		ssize_t n = write(g->port_fd, g->out.data, g->out.len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				vela_loop_mod_fd(g->loop, g->port_fd, EPOLLIN | EPOLLOUT);
				return;
			}
			log_warn("write to %s: %s", g->port_dev, strerror(errno));
			strbuf_reset(&g->out);
			break;
		}
		memmove(g->out.data, g->out.data + n, g->out.len - (size_t)n);
		g->out.len -= (size_t)n;
	}
	vela_loop_mod_fd(g->loop, g->port_fd, EPOLLIN);
}

/* ------------------------------------------------------------ guest info */

static char *os_pretty_name(void)
{
	static const char *const files[] = { "/etc/os-release", "/usr/lib/os-release" };
	for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
		char *text = NULL;
		size_t len;
		if (read_file(files[i], 65536, &text, &len) < 0)
			continue;
		char *p = strstr(text, "PRETTY_NAME=");
		if (p && (p == text || p[-1] == '\n')) {
			p += strlen("PRETTY_NAME=");
			if (*p == '"' || *p == '\'')
				p++;
			size_t n = strcspn(p, "\"'\n");
			char *name = xstrndup(p, n);
			free(text);
			return name;
		}
		free(text);
	}
	return xstrdup("Linux");
}

static json_t *addresses(void)
{
	json_t *arr = json_array();
	struct ifaddrs *ifs = NULL;
	if (getifaddrs(&ifs) < 0)
		return arr;
	for (struct ifaddrs *i = ifs; i; i = i->ifa_next) {
		char buf[INET6_ADDRSTRLEN];
		if (!i->ifa_addr || (i->ifa_flags & IFF_LOOPBACK))
			continue;
		if (i->ifa_addr->sa_family == AF_INET)
			inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, buf, sizeof buf);
		else if (i->ifa_addr->sa_family == AF_INET6)
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr, buf, sizeof buf);
		else
			continue;
		json_array_append_new(arr, json_pack("{s:s, s:s}", "interface", i->ifa_name, "address", buf));
	}
	freeifaddrs(ifs);
	return arr;
}

/* Bytes each network interface received and sent (the kernel's 64-bit
 * counters), for the host's network rates: {"eth0": [rx, tx], ...}.  The
 * loopback is left out; at most AGENT_MAX_NICS interfaces. */
static json_t *net_counters(void)
{
	json_t *j = json_object();
	DIR *d = opendir("/sys/class/net");
	if (!d)
		return j;
	struct dirent *e;
	while ((e = readdir(d)) && json_object_size(j) < AGENT_MAX_NICS) {
		if (e->d_name[0] == '.' || strcmp(e->d_name, "lo") == 0 || strlen(e->d_name) >= IFNAMSIZ)
			continue;
		unsigned long long v[2];
		bool ok = true;
		static const char *const names[] = { "rx_bytes", "tx_bytes" };
		for (int k = 0; k < 2 && ok; k++) {
			char path[96];
			snprintf(path, sizeof path, "/sys/class/net/%s/statistics/%s", e->d_name, names[k]);
			char *text = NULL;
			size_t len;
			ok = read_file(path, 64, &text, &len) == 0 && sscanf(text, "%llu", &v[k]) == 1;
			free(text);
		}
		if (ok)
			json_object_set_new(j, e->d_name, json_pack("[I, I]", (json_int_t)(v[0] & INT64_MAX),
								   (json_int_t)(v[1] & INT64_MAX)));
	}
	closedir(d);
	return j;
}

static json_t *memory_info(void)
{
	char *text = NULL;
	size_t len;
	json_t *j = json_object();
	if (read_file("/proc/meminfo", 65536, &text, &len) < 0)
		return j;
	static const char *const keys[][2] = { { "MemTotal:", "total_kb" }, { "MemAvailable:", "available_kb" } };
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
		char *p = strstr(text, keys[i][0]);
		if (p)
			json_object_set_new(j, keys[i][1], json_integer(strtoll(p + strlen(keys[i][0]), NULL, 10)));
	}
	free(text);
	struct stat st;
	/* The balloon itself is the kernel's virtio_balloon driver; we say whether it is bound. */
	json_object_set_new(j, "balloon_driver", json_boolean(stat("/sys/bus/virtio/drivers/virtio_balloon", &st) == 0));
	return j;
}

static json_t *guest_info(void)
{
	struct utsname u;
	char host[256] = "";
	uname(&u);
	gethostname(host, sizeof host - 1);
	char *os = os_pretty_name();
	json_t *j = json_pack("{s:i, s:s, s:s, s:s, s:s, s:s, s:o, s:o}", "version", AGENT_PROTOCOL_VERSION,
			      "agent", "vela-guestd " VELA_VERSION, "os", os, "kernel", u.release, "machine", u.machine,
			      "hostname", host, "addresses", addresses(), "memory", memory_info());
	free(os);
	return j;
}

/* Send our info when it changed since the last time (or always). */
static void send_info(struct guestd *g, bool always)
{
	json_t *info = guest_info();
	char *text = json_dumps(info, JSON_COMPACT | JSON_SORT_KEYS);
	if (!always && g->last_info && text && strcmp(text, g->last_info) == 0) {
		free(text);
		json_decref(info);
		return;
	}
	free(g->last_info);
	g->last_info = text;
	json_object_set_new(info, "cmd", json_string("hello"));
	send_msg(g, info);
}

/* ----------------------------------------------------------------- jobs */

static void job_add(struct guestd *g, struct job *j)
{
	j->next = g->jobs;
	g->jobs = j;
}

/* Run a shell command in a child; JOB_SCRIPT children have no result. */
static struct job *spawn_command(struct guestd *g, enum job_kind kind, const char *what, const char *cmd)
{
	pid_t pid = fork();
	if (pid < 0) {
		log_error("%s: fork: %s", what, strerror(errno));
		return NULL;
	}
	if (pid == 0) {
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		setsid();
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	struct job *j = xcalloc(1, sizeof *j);
	j->pid = pid;
	j->kind = kind;
	j->out_fd = -1;
	j->deadline_ms = time_mono_ms() + (int64_t)g->conf.command_timeout_s * 1000;
	snprintf(j->what, sizeof j->what, "%s", what);
	log_info("%s: running %s", what, cmd);
	job_add(g, j);
	return j;
}

/* A job whose command is not configured finishes at once. */
static void job_done(struct guestd *g, struct job *j, int status);

static void start_step(struct guestd *g, enum job_kind kind, const char *what, const char *cmd, uint64_t reply_id,
		       bool reboot)
{
	struct job *j = cmd ? spawn_command(g, kind, what, cmd) : NULL;
	if (j) {
		j->reply_id = reply_id;
		j->reboot = reboot;
		return;
	}
	struct job now = { .kind = kind, .reply_id = reply_id, .reboot = reboot, .out_fd = -1 };
	snprintf(now.what, sizeof now.what, "%s", what);
	job_done(g, &now, 0);
}

static const char *power_command(struct guestd *g, bool reboot)
{
	struct stat st;
	bool systemd = stat("/run/systemd/system", &st) == 0;
	if (reboot)
		return g->conf.reboot_command ? g->conf.reboot_command : systemd ? "systemctl reboot" : "reboot";
	return g->conf.halt_command ? g->conf.halt_command : systemd ? "systemctl poweroff" : "poweroff";
}

/* ----------------------------------------------------------------- freeze */

static void thaw_all(struct guestd *g, const char *why)
{
	if (g->thaw_timer) {
		vela_loop_del_timer(g->loop, g->thaw_timer);
		g->thaw_timer = 0;
	}
	/* Reverse order: a file system mounted on a frozen one thaws first. */
	for (unsigned i = g->n_frozen; i-- > 0;) {
		if (ioctl(g->frozen_fd[i], FITHAW, 0) < 0 && errno != EINVAL)
			log_warn("thaw %s: %s", g->frozen_path[i], strerror(errno));
		close(g->frozen_fd[i]);
		free(g->frozen_path[i]);
	}
	if (g->n_frozen)
		log_info("thawed %u file system%s (%s)", g->n_frozen, g->n_frozen == 1 ? "" : "s", why);
	g->n_frozen = 0;
}

static void on_thaw_timeout(struct vela_loop *loop, uint64_t id, void *opaque)
{
	(void)loop;
	(void)id;
	struct guestd *g = opaque;
	g->thaw_timer = 0;
	log_warn("file systems frozen for %u s without a thaw from the host: thawing", g->conf.freeze_timeout_s);
	thaw_all(g, "timeout");
	if (g->conf.post_thaw)
		spawn_command(g, JOB_SCRIPT, "post-thaw", g->conf.post_thaw);
}

/* Is this /proc/mounts line a file system to freeze?  Block devices only:
 * proc, tmpfs, devtmpfs and friends have nothing to flush. */
static bool freezable(const char *dev, const char *opts)
{
	return str_starts_with(dev, "/dev/") && !str_starts_with(opts, "ro,") && strcmp(opts, "ro") != 0;
}

static void unescape_mount(char *s)
{
	/* /proc/mounts writes space, tab, newline and backslash as \ooo. */
	char *w = s;
	for (char *p = s; *p; p++) {
		if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' && p[2] >= '0' && p[2] <= '7' && p[3] >= '0' && p[3] <= '7') {
			*w++ = (char)((p[1] - '0') * 64 + (p[2] - '0') * 8 + (p[3] - '0'));
			p += 3;
		} else {
			*w++ = *p;
		}
	}
	*w = '\0';
}

static void do_freeze(struct guestd *g, uint64_t reply_id)
{
	char *text = NULL;
	size_t len;
	json_t *frozen = json_array(), *skipped = json_array();
	if (read_file("/proc/mounts", 1 << 20, &text, &len) < 0) {
		reply_err(g, reply_id, "read /proc/mounts: %s", vela_errmsg());
		json_decref(frozen);
		json_decref(skipped);
		return;
	}
	for (char *line = text, *next; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		char dev[256], dir[1024], type[64], opts[512];
		if (sscanf(line, "%255s %1023s %63s %511s", dev, dir, type, opts) != 4 || !freezable(dev, opts))
			continue;
		unescape_mount(dir);
		if (g->n_frozen == MAX_FROZEN) {
			json_array_append_new(skipped, json_pack("{s:s, s:s}", "path", dir, "reason", "too many file systems"));
			continue;
		}
		int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0 || ioctl(fd, FIFREEZE, 0) < 0) {
			/* EBUSY: already frozen (a bind mount of the same file system). */
			json_array_append_new(skipped, json_pack("{s:s, s:s}", "path", dir, "reason", strerror(errno)));
			if (fd >= 0)
				close(fd);
			continue;
		}
		g->frozen_fd[g->n_frozen] = fd;
		g->frozen_path[g->n_frozen++] = xstrdup(dir);
		json_array_append_new(frozen, json_string(dir));
	}
	free(text);
	g->thaw_timer = vela_loop_add_timer(g->loop, (int64_t)g->conf.freeze_timeout_s * 1000, on_thaw_timeout, g);
	log_info("froze %u file system%s", g->n_frozen, g->n_frozen == 1 ? "" : "s");
	reply_ok(g, reply_id, json_pack("{s:o, s:o}", "frozen", frozen, "skipped", skipped));
}

/* ------------------------------------------------------------ zero-fill */

/* In a child: fill the file system holding dir with zeros, then free it. */
static void zero_fill_child(const char *dir, int out_fd)
{
	CLEANUP_FREE char *tmpl = xasprintf("%s/.vela-zero-fill.XXXXXX", dir);
	int fd = mkstemp(tmpl);
	if (fd < 0) {
		dprintf(out_fd, "error create a file in %s: %s", dir, strerror(errno));
		_exit(1);
	}
	unlink(tmpl);   /* the space comes back even if we are killed */
	static char zeros[1 << 20];
	uint64_t total = 0;
	for (;;) {
		ssize_t n = write(fd, zeros, sizeof zeros);
		if (n <= 0)
			break;
		total += (uint64_t)n;
	}
	fsync(fd);
	close(fd);
	dprintf(out_fd, "%" PRIu64, total);
	_exit(0);
}

static void start_zero_fill(struct guestd *g, uint64_t reply_id, const char *dir)
{
	struct stat st;
	if (!dir || dir[0] != '/' || stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		reply_err(g, reply_id, "zero-fill: \"%s\" is not an absolute path of a folder", dir ? dir : "");
		return;
	}
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0) {
		reply_err(g, reply_id, "zero-fill: pipe: %s", strerror(errno));
		return;
	}
	pid_t pid = fork();
	if (pid < 0) {
		reply_err(g, reply_id, "zero-fill: fork: %s", strerror(errno));
		close(p[0]);
		close(p[1]);
		return;
	}
	if (pid == 0) {
		close(p[0]);
		zero_fill_child(dir, p[1]);
	}
	close(p[1]);
	struct job *j = xcalloc(1, sizeof *j);
	j->pid = pid;
	j->kind = JOB_ZERO_FILL;
	j->reply_id = reply_id;
	j->out_fd = p[0];
	j->deadline_ms = 0;   /* as long as the disk takes */
	snprintf(j->what, sizeof j->what, "zero-fill");
	job_add(g, j);
	log_info("zero-fill of %s started", dir);
}

static void job_done(struct guestd *g, struct job *j, int status)
{
	bool failed = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	if (j->pid && failed)
		log_warn("%s: %s %d", j->what, WIFEXITED(status) ? "exit status" : "killed by signal",
			 WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
	switch (j->kind) {
	case JOB_SCRIPT:
	case JOB_POWER:
		break;
	case JOB_HALT_PREP:
		/* The pre-command's failure does not stop the shutdown: the host
		 * asked for it, and would otherwise power off hard. */
		sync();
		log_info("%s now", j->reboot ? "rebooting" : "halting");
		spawn_command(g, JOB_POWER, j->reboot ? "reboot" : "halt", power_command(g, j->reboot));
		break;
	case JOB_FREEZE_PREP:
		if (j->pid && failed) {
			reply_err(g, j->reply_id, "the pre-freeze script failed (%s %d); nothing was frozen",
				  WIFEXITED(status) ? "exit status" : "signal",
				  WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
			if (g->conf.post_thaw)
				spawn_command(g, JOB_SCRIPT, "post-thaw", g->conf.post_thaw);
		} else {
			do_freeze(g, j->reply_id);
		}
		break;
	case JOB_ZERO_FILL: {
		char buf[512] = "";
		ssize_t n = read(j->out_fd, buf, sizeof buf - 1);
		buf[n > 0 ? n : 0] = '\0';
		close(j->out_fd);
		if (failed || !n || str_starts_with(buf, "error "))
			reply_err(g, j->reply_id, "zero-fill: %s", n > 6 ? buf + 6 : "failed");
		else
			reply_ok(g, j->reply_id, json_pack("{s:I}", "bytes", (json_int_t)strtoull(buf, NULL, 10)));
		log_info("zero-fill done: %s", buf);
		break;
	}
	}
}

static void reap_children(struct guestd *g)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (struct job **pp = &g->jobs; *pp; pp = &(*pp)->next) {
			struct job *j = *pp;
			if (j->pid != pid)
				continue;
			*pp = j->next;
			job_done(g, j, status);
			free(j);
			break;
		}
	}
}

static void check_job_deadlines(struct guestd *g)
{
	int64_t now = time_mono_ms();
	for (struct job *j = g->jobs; j; j = j->next) {
		if (j->deadline_ms && now > j->deadline_ms) {
			log_warn("%s: still running after %u s; killed", j->what, g->conf.command_timeout_s);
			kill(-j->pid, SIGKILL);
			kill(j->pid, SIGKILL);
			j->deadline_ms = 0;
		}
	}
}

/* ------------------------------------------------------- host requests */

static void set_clock(struct guestd *g, uint64_t id, json_t *req)
{
	json_t *ns = json_object_get(req, "epoch_ns");
	if (!json_is_integer(ns) || json_integer_value(ns) <= 0) {
		reply_err(g, id, "time-set: \"epoch_ns\" is a positive number of nanoseconds");
		return;
	}
	struct timespec before, t = { .tv_sec = json_integer_value(ns) / 1000000000,
				      .tv_nsec = json_integer_value(ns) % 1000000000 };
	clock_gettime(CLOCK_REALTIME, &before);
	int64_t off_ms = ((int64_t)t.tv_sec - before.tv_sec) * 1000 + ((int64_t)t.tv_nsec - before.tv_nsec) / 1000000;
	if (clock_settime(CLOCK_REALTIME, &t) < 0) {
		reply_err(g, id, "time-set: %s", strerror(errno));
		return;
	}
	const char *reason = json_string_value(json_object_get(req, "reason"));
	if (off_ms > 1000 || off_ms < -1000)
		log_info("clock set by the host (%s): moved by %lld ms", reason ? reason : "sync", (long long)off_ms);
	reply_ok(g, id, json_pack("{s:I}", "offset_ms", (json_int_t)off_ms));
	if (reason && (strcmp(reason, "resume") == 0 || strcmp(reason, "revert") == 0) && g->conf.post_resume)
		spawn_command(g, JOB_SCRIPT, "post-resume", g->conf.post_resume);
}

static struct local_client *client_waiting(struct guestd *g, uint64_t id)
{
	for (struct local_client *c = g->clients; c; c = c->next)
		if (c->waiting_id == id)
			return c;
	return NULL;
}

static void client_send(struct local_client *c, json_t *j)
{
	char *line = agent_encode(j);
	json_decref(j);
	if (line) {
		fd_set_nonblock(c->fd, false);
		send_all(c->fd, line, strlen(line));
		fd_set_nonblock(c->fd, true);
		free(line);
	}
}

static void handle_host_line(const char *line, size_t len, void *opaque)
{
	struct guestd *g = opaque;
	struct agent_msg m;
	if (agent_msg_parse(line, len, &m) < 0) {
		log_warn("from the host: %s", vela_errmsg());
		return;
	}
	if (m.kind == AGENT_MSG_REPLY) {
		/* The answer to a local client's question. */
		struct local_client *c = client_waiting(g, m.id);
		if (c) {
			c->waiting_id = 0;
			json_object_del(m.json, "re");
			client_send(c, json_incref(m.json));
		}
		agent_msg_clear(&m);
		return;
	}
	if (m.kind == AGENT_MSG_NOTICE) {
		agent_msg_clear(&m);   /* nothing from the host is a notice yet */
		return;
	}
	const char *cmd = m.cmd;
	if (strcmp(cmd, "ping") == 0) {
		reply_ok(g, m.id, NULL);
	} else if (strcmp(cmd, "info") == 0) {
		reply_ok(g, m.id, guest_info());
	} else if (strcmp(cmd, "shutdown") == 0) {
		const char *mode = json_string_value(json_object_get(m.json, "mode"));
		bool reboot = mode && strcmp(mode, "reboot") == 0;
		if (!mode || (!reboot && strcmp(mode, "halt") != 0)) {
			reply_err(g, m.id, "shutdown: mode is halt or reboot");
		} else {
			log_info("the host asks for a %s", reboot ? "reboot" : "halt");
			reply_ok(g, m.id, NULL);
			send_msg(g, json_pack("{s:s, s:s}", "cmd", "shutting-down", "mode", mode));
			start_step(g, JOB_HALT_PREP, reboot ? "pre-reboot" : "pre-halt",
				   reboot ? g->conf.pre_reboot : g->conf.pre_halt, 0, reboot);
		}
	} else if (strcmp(cmd, "time-set") == 0) {
		set_clock(g, m.id, m.json);
	} else if (strcmp(cmd, "freeze") == 0) {
		if (g->n_frozen || g->thaw_timer)
			reply_err(g, m.id, "freeze: already frozen");
		else
			start_step(g, JOB_FREEZE_PREP, "pre-freeze", g->conf.pre_freeze, m.id, false);
	} else if (strcmp(cmd, "thaw") == 0) {
		unsigned n = g->n_frozen;
		bool was = n || g->thaw_timer;
		thaw_all(g, "asked by the host");
		reply_ok(g, m.id, json_pack("{s:i}", "thawed", (int)n));
		if (was && g->conf.post_thaw)
			spawn_command(g, JOB_SCRIPT, "post-thaw", g->conf.post_thaw);
	} else if (strcmp(cmd, "zero-fill") == 0) {
		start_zero_fill(g, m.id, json_string_value(json_object_get(m.json, "path")));
	} else {
		reply_err(g, m.id, "unknown command \"%s\"", cmd);
	}
	agent_msg_clear(&m);
}

/* ------------------------------------------------------------ the port */

static void on_port(struct vela_loop *loop, int fd, uint32_t events, void *opaque)
{
	(void)loop;
	struct guestd *g = opaque;
	if (events & EPOLLOUT)
		port_flush(g);
	if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
		return;
	char buf[16384];
	ssize_t n = read(fd, buf, sizeof buf);
	if (n <= 0) {
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		/* EOF: the host end is not connected; virtio-serial keeps the port.
		 * Poll again a little later instead of spinning. */
		vela_loop_mod_fd(g->loop, fd, g->out.len ? EPOLLOUT : 0);
		return;
	}
	agent_lines_feed(&g->in, buf, (size_t)n, handle_host_line, g);
	if (g->in.overlong != g->overlong_seen) {
		g->overlong_seen = g->in.overlong;
		log_warn("from the host: a line longer than %u bytes was dropped", AGENT_LINE_MAX);
	}
}

/* /sys/class/virtio-ports/vportNpM/name holds the port's name. */
static int find_port(char *dev, size_t size)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	if (!d)
		return -VELA_E_NOTFOUND;
	struct dirent *e;
	int r = -VELA_E_NOTFOUND;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		CLEANUP_FREE char *p = xasprintf("/sys/class/virtio-ports/%s/name", e->d_name);
		char *name = NULL;
		size_t len;
		if (read_file(p, 256, &name, &len) == 0) {
			if (len && name[len - 1] == '\n')
				name[len - 1] = '\0';
			if (strcmp(name, AGENT_PORT_NAME) == 0) {
				snprintf(dev, size, "/dev/%s", e->d_name);
				r = 0;
			}
			free(name);
		}
		if (r == 0)
			break;
	}
	closedir(d);
	return r;
}

static void tick(struct vela_loop *loop, uint64_t id, void *opaque);

static int open_port(struct guestd *g)
{
	if (g->port_path)
		snprintf(g->port_dev, sizeof g->port_dev, "%s", g->port_path);
	else if (find_port(g->port_dev, sizeof g->port_dev) < 0)
		return -VELA_E_NOTFOUND;
	g->port_fd = open(g->port_dev, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	if (g->port_fd < 0)
		return vela_error_errno(errno, "open %s", g->port_dev);
	vela_loop_add_fd(g->loop, g->port_fd, EPOLLIN, on_port, g);
	log_info("connected to the host on %s", g->port_dev);
	/* End whatever half line an earlier agent left behind, then introduce us. */
	strbuf_puts(&g->out, "\n");
	send_info(g, true);
	return 0;
}

static void tick(struct vela_loop *loop, uint64_t id, void *opaque)
{
	(void)id;
	struct guestd *g = opaque;
	if (g->port_fd < 0) {
		static bool said;
		if (open_port(g) < 0 && !said) {
			log_warn("no virtio-serial port named %s yet; waiting for it", AGENT_PORT_NAME);
			said = true;
		}
	}
	if (g->port_fd >= 0) {
		g->beats++;
		send_msg(g, json_pack("{s:s, s:I, s:o}", "cmd", "beat", "seq", (json_int_t)g->beats, "net", net_counters()));
		/* Addresses change (DHCP): say so within half a minute. */
		if (g->beats % (30 / g->conf.heartbeat_interval_s + 1) == 0)
			send_info(g, false);
		if (!(g->out.len))
			vela_loop_mod_fd(loop, g->port_fd, EPOLLIN);
	}
	check_job_deadlines(g);
	/* Local clients whose answer never came. */
	int64_t now = time_mono_ms();
	for (struct local_client *c = g->clients; c; c = c->next) {
		if (c->waiting_id && now - c->since_ms > LOCAL_TIMEOUT_MS) {
			c->waiting_id = 0;
			client_send(c, json_pack("{s:b, s:s}", "ok", 0, "error", "no answer from the host"));
		}
	}
	vela_loop_add_timer(loop, (int64_t)g->conf.heartbeat_interval_s * 1000, tick, g);
}

/* --------------------------------------------------------- local clients */

static void client_drop(struct guestd *g, struct local_client *c)
{
	for (struct local_client **pp = &g->clients; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	vela_loop_del_fd(g->loop, c->fd);
	close(c->fd);
	agent_lines_free(&c->in);
	free(c);
}

struct client_line {
	struct guestd *g;
	struct local_client *c;
};

/* Requests from programs in the guest, passed on to the host. */
static void handle_client_line(const char *line, size_t len, void *opaque)
{
	struct client_line *cl = opaque;
	struct guestd *g = cl->g;
	struct local_client *c = cl->c;
	json_error_t jerr;
	json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	const char *cmd = json_string_value(json_object_get(req, "cmd"));
	static const char *const forwarded[] = { "machine-id", "guestinfo-get", "guestinfo-set", "guestinfo-list" };
	bool fwd = false;
	for (size_t i = 0; cmd && i < ARRAY_SIZE(forwarded); i++)
		fwd |= strcmp(cmd, forwarded[i]) == 0;
	if (!json_is_object(req) || !cmd) {
		client_send(c, json_pack("{s:b, s:s}", "ok", 0, "error", "a request is a JSON object with \"cmd\""));
	} else if (strcmp(cmd, "status") == 0) {
		json_t *info = guest_info();
		json_object_set_new(info, "ok", json_true());
		json_object_set_new(info, "connected", json_boolean(g->port_fd >= 0));
		json_object_set_new(info, "port", json_string(g->port_dev));
		json_object_set_new(info, "frozen", json_integer(g->n_frozen));
		client_send(c, info);
	} else if (!fwd) {
		client_send(c, json_pack("{s:b, s:s}", "ok", 0, "error", "unknown command"));
	} else if (g->port_fd < 0) {
		client_send(c, json_pack("{s:b, s:s}", "ok", 0, "error", "not connected to the host"));
	} else if (c->waiting_id) {
		client_send(c, json_pack("{s:b, s:s}", "ok", 0, "error", "one request at a time"));
	} else {
		c->waiting_id = ++g->next_id;
		c->since_ms = time_mono_ms();
		json_object_set_new(req, "id", json_integer((json_int_t)c->waiting_id));
		send_msg(g, json_incref(req));
	}
	json_decref(req);
}

static void on_client(struct vela_loop *loop, int fd, uint32_t events, void *opaque)
{
	(void)loop;
	(void)events;
	struct guestd *g = opaque;
	struct local_client *c = g->clients;
	while (c && c->fd != fd)
		c = c->next;
	if (!c)
		return;
	char buf[4096];
	ssize_t n = read(fd, buf, sizeof buf);
	if (n <= 0) {
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		client_drop(g, c);
		return;
	}
	struct client_line cl = { g, c };
	agent_lines_feed(&c->in, buf, (size_t)n, handle_client_line, &cl);
}

static void on_accept(struct vela_loop *loop, int fd, uint32_t events, void *opaque)
{
	(void)events;
	struct guestd *g = opaque;
	int cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (cfd < 0)
		return;
	unsigned n = 0;
	for (struct local_client *c = g->clients; c; c = c->next)
		n++;
	if (n >= MAX_LOCAL_CLIENTS) {
		close(cfd);
		return;
	}
	struct local_client *c = xcalloc(1, sizeof *c);
	c->fd = cfd;
	c->next = g->clients;
	g->clients = c;
	vela_loop_add_fd(loop, cfd, EPOLLIN, on_client, g);
}

static void on_signal(struct vela_loop *loop, int fd, uint32_t events, void *opaque)
{
	(void)events;
	(void)fd;
	struct guestd *g = opaque;
	struct signalfd_siginfo si;
	if (read(g->sig_fd, &si, sizeof si) != sizeof si)
		return;
	if (si.ssi_signo == SIGCHLD) {
		reap_children(g);
		return;
	}
	log_info("signal %u: stopping", si.ssi_signo);
	thaw_all(g, "agent stopping");
	if (g->port_fd >= 0) {
		send_msg(g, json_pack("{s:s}", "cmd", "stopping"));
		fd_set_nonblock(g->port_fd, false);
		port_flush(g);
	}
	vela_loop_stop(loop);
}

/* ------------------------------------------------------------------ main */

static int daemon_main(const char *conf_path, const char *port_path, const char *socket_path)
{
	struct guestd g = { .conf_path = conf_path, .port_path = port_path, .socket_path = socket_path,
			    .port_fd = -1, .sig_fd = -1, .listen_fd = -1 };
	char *text = NULL;
	size_t len = 0;
	int r = read_file(conf_path, 65536, &text, &len);
	if (r == -VELA_E_NOTFOUND) {
		r = agent_conf_parse("", 0, conf_path, &g.conf);
	} else if (r == 0) {
		r = agent_conf_parse(text, len, conf_path, &g.conf);
		free(text);
	}
	if (r < 0) {
		log_error("%s", vela_errmsg());
		return 1;
	}
	g.loop = vela_loop_new();
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	g.sig_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	vela_loop_add_fd(g.loop, g.sig_fd, EPOLLIN, on_signal, &g);
	unlink(socket_path);
	g.listen_fd = unix_listen(socket_path, 8);
	if (g.listen_fd < 0)
		log_warn("no local socket: %s", vela_errmsg());
	else
		vela_loop_add_fd(g.loop, g.listen_fd, EPOLLIN, on_accept, &g);
	log_info("vela-guestd %s (protocol %d) starting", VELA_VERSION, AGENT_PROTOCOL_VERSION);
	tick(g.loop, 0, &g);
	vela_loop_run(g.loop);
	thaw_all(&g, "exit");
	while (g.clients)
		client_drop(&g, g.clients);
	if (g.listen_fd >= 0) {
		close(g.listen_fd);
		unlink(socket_path);
	}
	vela_loop_free(g.loop);
	agent_conf_free(&g.conf);
	agent_lines_free(&g.in);
	strbuf_free(&g.out);
	free(g.last_info);
	return 0;
}

/* The client side: one request to the daemon's local socket. */
static int client_main(const char *socket_path, json_t *req)
{
	int fd = unix_connect(socket_path);
	if (fd < 0) {
		fprintf(stderr, "vela-guestd: %s (is the daemon running?)\n", vela_errmsg());
		json_decref(req);
		return 2;
	}
	char *line = agent_encode(req);
	json_decref(req);
	if (!line || send_all(fd, line, strlen(line)) < 0) {
		free(line);
		close(fd);
		fprintf(stderr, "vela-guestd: cannot send the request\n");
		return 2;
	}
	free(line);
	struct strbuf in = { 0 };
	char buf[4096];
	ssize_t n;
	while (!(in.data && memchr(in.data, '\n', in.len)) && (n = read(fd, buf, sizeof buf)) > 0)
		strbuf_append(&in, buf, (size_t)n);
	close(fd);
	json_error_t jerr;
	json_t *rep = in.data ? json_loads(in.data, 0, &jerr) : NULL;
	strbuf_free(&in);
	if (!json_is_object(rep)) {
		fprintf(stderr, "vela-guestd: no answer from the daemon\n");
		json_decref(rep);
		return 2;
	}
	int rc = 0;
	if (!json_is_true(json_object_get(rep, "ok"))) {
		fprintf(stderr, "vela-guestd: %s\n", json_string_value(json_object_get(rep, "error")));
		rc = 1;
	} else if (json_object_get(rep, "value")) {
		printf("%s\n", json_string_value(json_object_get(rep, "value")));
	} else if (json_object_get(rep, "values")) {
		const char *k;
		json_t *v;
		json_object_foreach(json_object_get(rep, "values"), k, v)
			printf("%s=%s\n", k, json_string_value(v));
	} else {
		json_object_del(rep, "ok");
		char *text = json_dumps(rep, JSON_INDENT(2) | JSON_SORT_KEYS);
		printf("%s\n", text);
		free(text);
	}
	json_decref(rep);
	return rc;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: vela-guestd daemon [-c CONF] [-p PORT-DEVICE] [-s SOCKET]\n"
		"       vela-guestd machine-id          the VM's machine.id\n"
		"       vela-guestd get KEY             a guestinfo value\n"
		"       vela-guestd set KEY VALUE       set a guestinfo value\n"
		"       vela-guestd list                every guestinfo value\n"
		"       vela-guestd status              the agent's view of this guest\n"
		"       vela-guestd --version\n");
}

int main(int argc, char **argv)
{
	const char *conf = DEFAULT_CONF, *port = NULL, *sock = DEFAULT_SOCKET;
	int i = 1;
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[i++];
	while (i < argc && argv[i][0] == '-' && i + 1 < argc) {
		if (strcmp(argv[i], "-c") == 0)
			conf = argv[i + 1];
		else if (strcmp(argv[i], "-p") == 0)
			port = argv[i + 1];
		else if (strcmp(argv[i], "-s") == 0)
			sock = argv[i + 1];
		else
			break;
		i += 2;
	}
	int rest = argc - i;
	if (strcmp(cmd, "--version") == 0) {
		printf("vela-guestd %s (protocol %d)\n", VELA_VERSION, AGENT_PROTOCOL_VERSION);
		return 0;
	}
	if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
		usage(stdout);
		return 0;
	}
	if (strcmp(cmd, "daemon") == 0 && rest == 0)
		return daemon_main(conf, port, sock);
	if (strcmp(cmd, "machine-id") == 0 && rest == 0)
		return client_main(sock, json_pack("{s:s}", "cmd", "machine-id"));
	if (strcmp(cmd, "status") == 0 && rest == 0)
		return client_main(sock, json_pack("{s:s}", "cmd", "status"));
	if (strcmp(cmd, "list") == 0 && rest == 0)
		return client_main(sock, json_pack("{s:s}", "cmd", "guestinfo-list"));
	if (strcmp(cmd, "get") == 0 && rest == 1)
		return client_main(sock, json_pack("{s:s, s:s}", "cmd", "guestinfo-get", "key", argv[i]));
	if (strcmp(cmd, "set") == 0 && rest == 2)
		return client_main(sock, json_pack("{s:s, s:s, s:s}", "cmd", "guestinfo-set", "key", argv[i],
						   "value", argv[i + 1]));
	usage(stderr);
	return 2;
}
