/* supervisor.c - vela-vmx: one process per powered-on VM. */
#include "common.h"
#include "engine.h"
#include "vmx.h"
#include "vmx-sup.h"
#include "blk.h"
#include "disks.h"
#include "guest.h"
#include "vmstate.h"
#include "agent.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define CONSOLE_RING_SIZE (256u * 1024u)   /* scrollback kept for late attachers */
#define CLIENT_OUT_MAX (4u << 20)          /* a console reader further behind is dropped */
#define CTL_LINE_MAX (1u << 20)
#define QMP_TIMEOUT_MS 10000
#define DEFAULT_SOFT_TIMEOUT_S 60

struct ctl_client {
	int fd;
	struct strbuf in;
	bool waiting;              /* reply owed when the pending power op ends */
	bool waiting_job;          /* reply owed when the disk job ends */
	bool waiting_guest;        /* reply owed when the guest agent answers */
	uint64_t serial;           /* names the client in callbacks that outlive it */
	struct ctl_client *next;
};

struct con_client {
	int fd;
	struct strbuf out;
	struct con_client *next;
};

enum pending_op { OP_NONE, OP_STOP, OP_RESET, OP_START, OP_SUSPEND };

struct sup {
	const struct vmxsup_opts *opts;
	char *config_path;          /* absolute */
	char *vm_dir, *run_dir;
	struct vela_loop *loop;
	struct vmx_file *file;
	struct vmx_model *model;
	enum vm_state state;
	bool locked;                /* we hold the run folder's lock */
	int lock_fd, ctl_listen_fd, con_listen_fd, sig_fd, ready_fd;

	pid_t qemu_pid;
	int qemu_err_fd;
	struct strbuf qemu_err;
	char qemu_last_err[512];
	struct qmp *qmp;
	bool quitting;              /* we told QEMU to quit */

	int con_fd;                 /* our end of the serial console */
	unsigned char *ring;
	size_t ring_start, ring_len;
	struct con_client *con_clients;
	struct ctl_client *ctl_clients;

	enum pending_op op;
	enum vm_power_mode op_mode;
	uint64_t op_timer;
	int op_timeout_s;

	int inotify_fd;             /* watches the VM folder for edits of the .vmx */
	unsigned screendumps;       /* names the screenshot files */
	char question[1024];
	enum { Q_MOVED, Q_UNDOABLE } question_kind;
	struct sup_disks *disks;    /* served while QEMU runs */
	struct sup_guest *guest;    /* the guest agent's channel, while QEMU runs */
	bool op_via_agent;          /* the pending soft operation went through the agent */
	json_t *fingerprint;        /* the machine as QEMU sees it (engine_machine_fingerprint) */
	char *vmstate;              /* the suspended-state file being written */
	bool suspending;            /* QEMU quits because its state is saved */
	bool saving_snapshot;       /* a memory snapshot's save: the VM stays, paused */
	bool suspend_was_running;
	json_t *suspend_guestinfo;  /* kept for the resume: guestinfo lives as long as the VM runs */
	uint64_t mig_timer;
	int64_t mig_started_ms;
	char *used_state;           /* a resumed state file to remove once the VM runs */
	uint64_t client_serial;
	struct disk_job *job;       /* a long live disk operation (one at a time) */
	pthread_mutex_t file_lock;  /* s->file: disk jobs record new disk tops in it */
	enum engine_accel accel;
	char accel_why[384];
	int64_t on_since_ms;
	int exit_code;
};

/* Give the VM's runtime folder up: sockets and pid go, the lock is released.
 * Done before the last replies are sent, so a client that hears "off" can
 * power the VM on again at once. */
static void release_run_dir(struct sup *s)
{
	if (!s->run_dir || !s->locked)
		return;
	static const char *const names[] = { "control.sock", "console.sock", "vnc.sock", "pid", "config" };
	for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
		CLEANUP_FREE char *p = xasprintf("%s/%s", s->run_dir, names[i]);
		unlink(p);
	}
	/* The lock file itself stays: removing it would race with a new supervisor. */
	close(s->lock_fd);
	s->lock_fd = -1;
	s->locked = false;
}

/* ------------------------------------------------------------- replies */

static json_t *error_json(int code)
{
	const struct vela_errinfo *e = vela_errinfo(code);
	return json_pack("{s:b, s:{s:i, s:s, s:s}}", "ok", 0,
			 "error", "code", e ? e->code : VELA_E_INTERNAL,
			 "name", e ? e->name : "VELA_E_INTERNAL", "message", vela_errmsg());
}

/*
 * Compare the .vmx on disk with the configuration the VM powered on with.
 * Edits never apply to a running VM: they are pending until the next power
 * cycle.  Returns an array of {key, running, file} (a null side = absent), or
 * sets *bad to the parse error of a broken file.
 */
static json_t *pending_changes(struct sup *s, char **bad)
{
	struct vmx_file *now = NULL;
	const char *k, *v;
	*bad = NULL;
	if (!s->file)
		return json_array();
	if (vmx_file_load(s->config_path, &now) < 0) {
		*bad = xstrdup(vela_errmsg());
		return json_array();
	}
	json_t *arr = json_array();
	pthread_mutex_lock(&s->file_lock);
	for (size_t i = 0; vmx_entry_at(now, i, &k, &v, NULL); i++) {
		const char *old = vmx_get(s->file, k);
		if (!old || strcmp(old, v) != 0)
			json_array_append_new(arr, json_pack("{s:s, s:s?, s:s}", "key", k, "running", old, "file", v));
	}
	for (size_t i = 0; vmx_entry_at(s->file, i, &k, &v, NULL); i++)
		if (!vmx_get(now, k))
			json_array_append_new(arr, json_pack("{s:s, s:s, s:n}", "key", k, "running", v, "file"));
	pthread_mutex_unlock(&s->file_lock);
	vmx_file_free(now);
	return arr;
}

static json_t *status_json(struct sup *s)
{
	json_t *j = json_pack("{s:b, s:s, s:s, s:s, s:i, s:s, s:s}",
			      "ok", 1, "state", vm_state_name(s->state),
			      "config", s->config_path,
			      "display_name", s->model ? s->model->display_name : "",
			      "supervisor_pid", (int)getpid(),
			      "accel", engine_accel_name(s->accel), "accel_reason", s->accel_why);
	if (s->qemu_pid > 0)
		json_object_set_new(j, "qemu_pid", json_integer(s->qemu_pid));
	if (s->on_since_ms)
		json_object_set_new(j, "uptime_s", json_integer((time_mono_ms() - s->on_since_ms) / 1000));
	if (s->state == VM_STUCK && s->question_kind == Q_UNDOABLE)
		json_object_set_new(j, "question", json_pack("{s:s, s:[s,s,s]}", "text", s->question,
							     "choices", "commit", "discard", "keep"));
	else if (s->state == VM_STUCK)
		json_object_set_new(j, "question", json_pack("{s:s, s:[s,s,s]}", "text", s->question,
							     "choices", "keep", "create", "cancel"));
	if (s->state != VM_STUCK && s->state != VM_OFF) {
		char *bad = NULL;
		json_t *pending = pending_changes(s, &bad);
		if (json_array_size(pending))
			json_object_set(j, "pending_changes", pending);
		json_decref(pending);
		if (bad) {
			json_object_set_new(j, "config_error", json_string(bad));
			free(bad);
		}
	}
	if (s->guest)
		json_object_set_new(j, "guest", sup_guest_status(s->guest));
	if (s->op != OP_NONE && s->op != OP_START)
		json_object_set_new(j, "pending", json_pack("{s:s, s:s}", "op",
							    s->op == OP_STOP ? "stop" : s->op == OP_SUSPEND ? "suspend" : "reset",
							    "mode", vm_power_mode_name(s->op_mode)));
	return j;
}

static void send_json(int fd, json_t *j)
{
	char *text = json_dumps(j, JSON_COMPACT);
	if (text) {
		/* Replies are small; a client that cannot take them is gone. */
		struct strbuf sb = { 0 };
		strbuf_puts(&sb, text);
		strbuf_puts(&sb, "\n");
		fd_set_nonblock(fd, false);
		send_all(fd, sb.data, sb.len);
		fd_set_nonblock(fd, true);
		strbuf_free(&sb);
		free(text);
	}
	json_decref(j);
}

static void report_ready(struct sup *s, json_t *j)
{
	if (s->ready_fd < 0) {
		json_decref(j);
		return;
	}
	send_json(s->ready_fd, j);
	close(s->ready_fd);
	s->ready_fd = -1;
}

/* Answer every client waiting for the pending operation. */
static void finish_op(struct sup *s, int rc)
{
	if (s->op_timer) {
		vela_loop_del_timer(s->loop, s->op_timer);
		s->op_timer = 0;
	}
	s->op = OP_NONE;
	for (struct ctl_client *c = s->ctl_clients; c; c = c->next) {
		if (!c->waiting)
			continue;
		c->waiting = false;
		send_json(c->fd, rc < 0 ? error_json(rc) : status_json(s));
	}
}

static void set_state(struct sup *s, enum vm_state st)
{
	if (s->state != st)
		log_info("event: state %s -> %s", vm_state_name(s->state), vm_state_name(st));
	s->state = st;
}

/* ------------------------------------------------------------------ QMP */

static void drain_qmp_events(struct vela_loop *loop, uint64_t id, void *opaque);

static int sup_qmp(struct sup *s, const char *cmd, json_t *args)
{
	if (!s->qmp)
		return vela_error(VELA_E_NOTCONN, "%s: QEMU is not running", cmd);
	int r = qmp_execute(s->qmp, cmd, args, NULL, QMP_TIMEOUT_MS);
	if (args)
		json_decref(args);
	/* Events that arrived while we waited for the reply are queued. */
	vela_loop_add_timer(s->loop, 0, drain_qmp_events, s);
	return r;
}

static void quit_qemu(struct sup *s)
{
	if (s->quitting || s->qemu_pid <= 0)
		return;
	s->quitting = true;
	if (sup_qmp(s, "quit", NULL) < 0 && s->qemu_pid > 0) {
		log_warn("quit over QMP failed (%s); killing QEMU", vela_errmsg());
		kill(s->qemu_pid, SIGKILL);
	}
}

static void handle_guest_shutdown(struct sup *s, const char *reason)
{
	if (s->quitting)
		return;
	if (s->op == OP_RESET) {
		/* Soft reset: the guest shut down cleanly; power it back on in place. */
		log_info("event: guest shut down (%s); resetting", reason);
		if (sup_qmp(s, "system_reset", NULL) < 0 || sup_qmp(s, "cont", NULL) < 0) {
			int r = vela_error_context(VELA_E_ENGINE, "soft reset");
			log_error("%s", vela_errmsg());
			finish_op(s, r);
			return;
		}
		set_state(s, VM_ON);
		finish_op(s, 0);
		return;
	}
	log_info("event: guest powered off (%s)", reason);
	set_state(s, VM_STOPPING);
	quit_qemu(s);
}

static void handle_event(struct sup *s, struct qmp_msg *m)
{
	const char *reason = json_string_value(json_object_get(m->data, "reason"));
	if (strcmp(m->event, "SHUTDOWN") == 0) {
		handle_guest_shutdown(s, reason ? reason : "unknown");
	} else if (strcmp(m->event, "RESET") == 0) {
		log_info("event: guest reset (%s)", reason ? reason : "unknown");
		if (s->op == OP_RESET && s->op_via_agent) {
			/* The agent rebooted the guest: the soft restart is done. */
			set_state(s, VM_ON);
			finish_op(s, 0);
		}
	} else if (strcmp(m->event, "STOP") == 0 || strcmp(m->event, "RESUME") == 0) {
		log_debug("qmp event %s", m->event);
	} else if (strcmp(m->event, "POWERDOWN") == 0) {
		log_info("event: ACPI power button pressed");
	} else {
		log_info("qmp event %s", m->event);
	}
}

static void drain_qmp_events(struct vela_loop *loop, uint64_t id, void *opaque)
{
	(void)loop;
	(void)id;
	struct sup *s = opaque;
	struct qmp_msg m;
	while (s->qmp && qmp_next_event(s->qmp, &m)) {
		handle_event(s, &m);
		qmp_msg_clear(&m);
	}
}

static void on_qmp_readable(struct vela_loop *loop, int fd, uint32_t events, void *opaque)
{
	(void)events;
	struct sup *s = opaque;
	int r = qmp_read_events(s->qmp);
	drain_qmp_events(loop, 0, s);
	if (r < 0) {
		/* QEMU is exiting; SIGCHLD finishes the job. */
		vela_loop_del_fd(loop, fd);
	}
}

/* ---------------------------------------------------------------- console */

static void ring_append(struct sup *s, const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		size_t pos = (s->ring_start + s->ring_len) % CONSOLE_RING_SIZE;
		s->ring[pos] = p[i];
		if (s->ring_len < CONSOLE_RING_SIZE)
			s->ring_len++;
		else
			s->ring_start = (s->ring_start + 1) % CONSOLE_RING_SIZE;
	}
}

static void ring_copy(struct sup *s, struct strbuf *out)
{
	size_t first = CONSOLE_RING_SIZE - s->ring_start;
	if (first > s->ring_len)
		first = s->ring_len;
	strbuf_append(out, (const char *)s->ring + s->ring_start, first);
	strbuf_append(out, (const char *)s->ring, s->ring_len - first);
}

static void console_to_guest(struct sup *s, const char *p, size_t n);

static void con_client_drop(struct sup *s, struct con_client *c)
{
	/* A client may type and hang up at once: what it typed still goes to the guest. */
	char buf[4096];
	ssize_t n;
	while ((n = read(c->fd, buf, sizeof buf)) > 0)
		console_to_guest(s, buf, (size_t)n);

	for (struct con_client **pp = &s->con_clients; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	vela_loop_del_fd(s->loop, c->fd);
	close(c->fd);
	strbuf_free(&c->out);
	free(c);
}

/* Write what we can; the rest waits for EPOLLOUT. */
static void con_client_flush(struct sup *s, struct con_client *c)
{
	while (c->out.len > 0) {
		ssize_t n = write(c->fd, c->out.data, c->out.len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				vela_loop_mod_fd(s->loop, c->fd, EPOLLIN | EPOLLOUT);
				return;
			}
			con_client_drop(s, c);
			return;
		}
		memmove(c->out.data, c->out.data + n, c->out.len - (size_t)n);
		c->out.len -= (size_t)n;
	}
	vela_loop_mod_fd(s->loop, c->fd, EPOLLIN);
}

static void console_to_guest(struct sup *s, const char *p, size_t n)
{
	if (s->con_fd < 0)
		return;
	int64_t deadline = time_mono_ms() + 1000;
	while (n > 0 && time_mono_ms() < deadline) {
		ssize_t w = write(s->con_fd, p, n);
		if (w < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			return;
		}
		p += w;
		n -= (size_t)w;
	}
}

static void on_con_client(struct vela_loop *loop, int fd, uint32_t events, void *opaque)
{
	(void)loop;
	struct sup *s = opaque;
	struct con_client *c = s->con_clients;
	while (c && c->fd != fd)
		c = c->next;
	if (!c)
		return;
	if (events & EPOLLOUT) {
		con_client_flush(s, c);
		return;
	}
	char buf[4096];
	ssize_t n = read(fd, buf, sizeof buf);
	if (n <= 0) {
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		con_client_drop(s, c);
		return;
	}
	console_to_guest(s, buf, (size_t)n);
}

static void on_con_accept(struct vela_loop *loop, int fd, uint32_t events, void *opaque)
{
	(void)events;
	struct sup *s = opaque;
	int cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (cfd < 0)
		return;
	struct con_client *c = xcalloc(1, sizeof *c);
	c->fd = cfd;
	c->next = s->con_clients;
	s->con_clients = c;
	vela_loop_add_fd(loop, cfd, EPOLLIN, on_con_client, s);
	ring_copy(s, &c->out);   /* scrollback first */
	con_client_flush(s, c);
}

static void on_console_output(struct vela_loop *loop, int fd, uint32_t events, void *opaque)
{
	(void)events;
	struct sup *s = opaque;
	unsigned char buf[16384];
	ssize_t n = read(fd, buf, sizeof buf);
	if (n <= 0) {
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		vela_loop_del_fd(loop, fd);
		return;
	}
	ring_append(s, buf, (size_t)n);
	for (struct con_client *c = s->con_clients, *next; c; c = next) {
		next = c->next;
		if (c->out.len + (size_t)n > CLIENT_OUT_MAX) {
			log_warn("console reader too slow; disconnected");
			con_client_drop(s, c);
			continue;
		}
		strbuf_append(&c->out, (const char *)buf, (size_t)n);
		con_client_flush(s, c);
	}
}

/* ------------------------------------------------------------- QEMU */

static void on_qemu_stderr(struct vela_loop *loop, int fd, uint32_t events, void *opaque)
{
	(void)events;
	struct sup *s = opaque;
	char buf[4096];
	ssize_t n = read(fd, buf, sizeof buf);
	if (n <= 0) {
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		vela_loop_del_fd(loop, fd);
		close(fd);
		s->qemu_err_fd = -1;
		return;
	}
	strbuf_append(&s->qemu_err, buf, (size_t)n);
	char *nl;
	while ((nl = memchr(s->qemu_err.data, '\n', s->qemu_err.len))) {
		*nl = '\0';
		if (s->qemu_err.data[0]) {
			log_warn("qemu: %s", s->qemu_err.data);
			snprintf(s->qemu_last_err, sizeof s->qemu_last_err, "%s", s->qemu_err.data);
		}
		size_t used = (size_t)(nl - s->qemu_err.data) + 1;
		memmove(s->qemu_err.data, nl + 1, s->qemu_err.len - used);
		s->qemu_err.len -= used;
	}
}

static void describe_exit(int status, char *buf, size_t size)
{
	if (WIFEXITED(status))
		snprintf(buf, size, "exit status %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, size, "killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
	else
		snprintf(buf, size, "status 0x%x", status);
}

static void disk_job_finish(struct sup *s);
static void finish_suspend(struct sup *s);

/* QEMU is gone: the VM is off.  Finish everything and leave the loop. */
static void qemu_exited(struct sup *s, int status)
{
	char how[128];
	describe_exit(status, how, sizeof how);
	/* Collect QEMU's last words before deciding what to say. */
	if (s->qemu_err_fd >= 0)
		on_qemu_stderr(s->loop, s->qemu_err_fd, EPOLLIN, s);
	s->qemu_pid = 0;
	if (s->suspending && s->quitting) {
		finish_suspend(s);
		return;
	}
	if (s->quitting) {
		log_info("event: VM powered off (QEMU %s)", how);
		s->exit_code = 0;
	} else {
		log_error("event: QEMU exited unexpectedly (%s)%s%s; the VM is off", how,
			  s->qemu_last_err[0] ? ": " : "", s->qemu_last_err);
		s->exit_code = 1;
	}
	s->on_since_ms = 0;
	s->op_via_agent = false;   /* no fallback to a button of a machine that is gone */
	sup_guest_free(s->guest);
	s->guest = NULL;
	disk_job_finish(s);   /* a live commit finishes before the disks close */
	if (s->disks) {
		char *question = NULL;
		if (sup_disks_power_off(s->disks, &question) < 0) {
			log_error("event: disk error at power-off: %s", vela_errmsg());
			s->exit_code = 1;
		}
		if (question) {
			/* Undoable disks: the VM stays stuck until somebody answers. */
			snprintf(s->question, sizeof s->question, "%s", question);
			free(question);
			s->question_kind = Q_UNDOABLE;
			set_state(s, VM_STUCK);
			log_info("event: question: %s", s->question);
			finish_op(s, 0);
			return;
		}
	}
	set_state(s, VM_OFF);
	release_run_dir(s);
	if (s->op == OP_RESET)
		finish_op(s, vela_error(VELA_E_ENGINE, "the VM powered off during the reset"));
	else
		finish_op(s, 0);
	vela_loop_stop(s->loop);
}

static void on_signal(struct vela_loop *loop, int fd, uint32_t events, void *opaque)
{
	(void)loop;
	(void)events;
	struct sup *s = opaque;
	struct signalfd_siginfo si;
	if (read(fd, &si, sizeof si) != sizeof si)
		return;
	if (si.ssi_signo == SIGCHLD) {
		int status;
		pid_t p;
		while ((p = waitpid(-1, &status, WNOHANG)) > 0)
			if (p == s->qemu_pid)
				qemu_exited(s, status);
		return;
	}
	/* SIGTERM/SIGINT/SIGHUP: power off hard, cleanly. */
	log_info("signal %u: powering off", si.ssi_signo);
	if (s->qemu_pid > 0) {
		set_state(s, VM_STOPPING);
		quit_qemu(s);
	} else {
		set_state(s, VM_OFF);
		release_run_dir(s);
		finish_op(s, 0);
		vela_loop_stop(s->loop);
	}
}

static int spawn_qemu(struct sup *s, char **argv, int qmp_child, int con_child, int agent_child, int state_fd,
		      int err_w)
{
	sigset_t empty;
	pid_t pid = fork();
	if (pid < 0)
		return vela_error_errno(errno, "fork QEMU");
	if (pid == 0) {
		/* QEMU must not outlive its supervisor: the disk engine and the
		 * console live here, and nobody else would reap it. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		sigemptyset(&empty);
		sigprocmask(SIG_SETMASK, &empty, NULL);
		signal(SIGPIPE, SIG_DFL);
		int devnull = open("/dev/null", O_RDWR);
		dup2(devnull, 0);
		dup2(err_w, 1);
		dup2(err_w, 2);
		fd_set_cloexec(qmp_child, false);
		if (con_child >= 0)
			fd_set_cloexec(con_child, false);
		if (agent_child >= 0)
			fd_set_cloexec(agent_child, false);
		if (state_fd >= 0)
			fd_set_cloexec(state_fd, false);
		execvp(argv[0], argv);
		dprintf(2, "cannot run %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	s->qemu_pid = pid;
	return 0;
}

static bool has_console(const struct vmx_model *m)
{
	for (unsigned i = 0; i < VMX_MAX_SERIAL; i++)
		if (m->serials[i].present && m->serials[i].type == VMX_SERIAL_CONSOLE)
			return true;
	return false;
}

static void on_config_edit(struct vela_loop *loop, int fd, uint32_t events, void *opaque)
{
	(void)loop;
	(void)events;
	struct sup *s = opaque;
	char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
	CLEANUP_FREE char *base = path_basename(s->config_path);
	bool ours = false;
	ssize_t n;
	while ((n = read(fd, buf, sizeof buf)) > 0) {
		for (char *p = buf; p < buf + n; ) {
			struct inotify_event *ev = (struct inotify_event *)p;
			if (ev->len && strcmp(ev->name, base) == 0)
				ours = true;
			p += sizeof *ev + ev->len;
		}
	}
	if (!ours)
		return;
	char *bad = NULL;
	json_t *pending = pending_changes(s, &bad);
	if (bad) {
		log_warn("event: the configuration file was edited while the VM runs and is now invalid: %s", bad);
	} else if (json_array_size(pending)) {
		struct strbuf keys = { 0 };
		size_t i;
		json_t *c;
		json_array_foreach(pending, i, c)
			strbuf_printf(&keys, "%s%s", i ? ", " : "", json_string_value(json_object_get(c, "key")));
		log_info("event: the configuration file was edited while the VM runs; %zu change%s pending until the "
			 "next power cycle: %s", json_array_size(pending), json_array_size(pending) == 1 ? "" : "s", keys.data);
		strbuf_free(&keys);
	}
	free(bad);
	json_decref(pending);
}

/* Watch the VM's folder: editors often replace the file rather than write it. */
static void watch_config(struct sup *s)
{
	s->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (s->inotify_fd < 0 ||
	    inotify_add_watch(s->inotify_fd, s->vm_dir, IN_CLOSE_WRITE | IN_MOVED_TO) < 0) {
		log_warn("cannot watch %s for edits: %s", s->vm_dir, strerror(errno));
		return;
	}
	vela_loop_add_fd(s->loop, s->inotify_fd, EPOLLIN, on_config_edit, s);
}

/* The guest agent's channel, with what the .vmx says it may know (and,
 * at a resume, the guestinfo values of the suspended session). */
static int open_guest_channel(struct sup *s, int fd, json_t *resumed)
{
	json_t *info = json_object();
	const char *k, *v;
	for (size_t i = 0; vmx_entry_at(s->file, i, &k, &v, NULL); i++)
		if (str_istarts_with(k, "guestinfo.") && json_object_size(info) < 256)
			json_object_set_new(info, k, json_string(v));
	json_t *saved = json_object_get(resumed, "guestinfo");
	if (json_is_object(saved))
		json_object_update(info, saved);
	struct sup_guest_opts o = {
		.machine_id = s->model->machine_id, .machine_id_blocked = s->model->machine_id_get_disable,
		.heartbeat_timeout_s = s->model->heartbeat_timeout_s, .sync_time = s->model->sync_time,
		.guestinfo = info, .resumed = resumed && s->model->sync_time_resume,
	};
	int r = sup_guest_new(s->loop, fd, &o, &s->guest);
	json_decref(info);
	return r;
}

/* Everything after identity: build argv, start QEMU paused, connect QMP, run. */
static int on_disk_top_changed(const char *addr, const char *top, void *opaque);
static int load_state(struct sup *s, const char *path, uint64_t stream_len);
static int record_checkpoint(struct sup *s, const char *path);

static int power_on(struct sup *s)
{
	struct engine_host_virt host;
	struct strbuf notes = { 0 };
	char **argv = NULL;
	int qmp_sv[2] = { -1, -1 }, con_sv[2] = { -1, -1 }, agent_sv[2] = { -1, -1 }, err_p[2] = { -1, -1 };
	CLEANUP_FREE char *vnc = NULL;
	CLEANUP_FREE char *cmd = NULL;
	json_t *resume_meta = NULL;
	uint64_t stream_len = 0;
	int state_fd = -1;
	int64_t t0 = time_mono_ms();
	int r;

	/* Rebuild the model from the file as written back (UUIDs, MACs). */
	vmx_model_free(s->model);
	s->model = NULL;
	r = vmx_model_build(s->file, s->config_path, NULL, NULL, &s->model);
	if (r < 0)
		return r;

	engine_probe_host(&host);
	enum vmx_accel want = s->model->accel;
	if (want == VMX_ACCEL_AUTO && s->opts->accel_override) {
		if (str_ieq(s->opts->accel_override, "kvm"))
			want = VMX_ACCEL_KVM;
		else if (str_ieq(s->opts->accel_override, "tcg"))
			want = VMX_ACCEL_TCG;
	}
	r = engine_choose_accel(want, &host, &s->accel, s->accel_why, sizeof s->accel_why);
	if (r < 0)
		return r;
	log_info("accelerator: %s", s->accel_why);
	json_decref(s->fingerprint);
	s->fingerprint = NULL;
	if ((r = engine_machine_fingerprint(s->model, s->accel, &s->fingerprint)) < 0)
		return r;
	if (s->model->checkpoint) {
		/* A suspended VM: resume it, if the saved state still fits. */
		if ((r = vmstate_read(s->model->checkpoint, &resume_meta, &stream_len)) < 0 ||
		    (r = vmstate_check(resume_meta, s->fingerprint, s->model)) < 0) {
			r = vela_error_context(r, "resume refused");
			goto out;
		}
		set_state(s, VM_RESUMING);
		log_info("resuming from %s (suspended %s)", s->model->checkpoint,
			 json_string_value(json_object_get(resume_meta, "suspended_at")) ?: "?");
	}
	bool resume = resume_meta != NULL;
	if (resume) {
		/* QEMU reads the saved state straight from the file (its stream
		 * ends before Vela's trailer, which it never reaches). */
		state_fd = open(s->model->checkpoint, O_RDONLY | O_CLOEXEC);
		if (state_fd < 0) {
			r = vela_error_errno(errno, "resume: open %s", s->model->checkpoint);
			goto out;
		}
	}

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, qmp_sv) < 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, con_sv) < 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, agent_sv) < 0 ||
	    pipe2(err_p, O_CLOEXEC) < 0) {
		r = vela_error_errno(errno, "socketpair/pipe");
		goto out;
	}
	vnc = xasprintf("%s/vnc.sock", s->run_dir);
	/* Vela's engine serves the disks: they must be listening before QEMU connects. */
	r = sup_disks_open(s->model, s->vm_dir, s->run_dir,
			   resume ? SUP_DISKS_RESUME | (s->model->resume_repeatable ? SUP_DISKS_THROWAWAY : 0) : 0,
			   &s->disks);
	if (r < 0)
		goto out;
	sup_disks_on_top_changed(s->disks, on_disk_top_changed, s);
	struct engine_runtime rt = {
		.qemu_binary = s->opts->qemu_binary, .accel = s->accel,
		.qmp_fd = qmp_sv[1], .console_fd = has_console(s->model) ? con_sv[1] : -1,
		.vnc_socket = vnc, .name = s->model->display_name,
		.disk_sockets = sup_disks_sockets(s->disks), .agent_fd = agent_sv[1], .incoming = resume,
		.incoming_fd = state_fd,
	};
	r = engine_build_argv(s->model, &rt, &argv, &notes);
	if (r < 0)
		goto out;
	if (notes.len) {
		for (char *line = strtok(notes.data, "\n"); line; line = strtok(NULL, "\n"))
			log_info("note: %s", line);
	}
	cmd = engine_argv_to_string(argv);
	log_info("starting QEMU: %s", cmd);

	r = spawn_qemu(s, argv, qmp_sv[1], con_sv[1], agent_sv[1], state_fd, err_p[1]);
	if (state_fd >= 0) {
		close(state_fd);   /* QEMU has its own */
		state_fd = -1;
	}
	close(qmp_sv[1]);
	close(con_sv[1]);
	close(agent_sv[1]);
	close(err_p[1]);
	qmp_sv[1] = con_sv[1] = agent_sv[1] = err_p[1] = -1;
	if (r < 0)
		goto out;
	s->qemu_err_fd = err_p[0];
	err_p[0] = -1;
	fd_set_nonblock(s->qemu_err_fd, true);
	vela_loop_add_fd(s->loop, s->qemu_err_fd, EPOLLIN, on_qemu_stderr, s);

	s->qmp = qmp_new(qmp_sv[0]);
	qmp_sv[0] = -1;
	r = qmp_handshake(s->qmp, QMP_TIMEOUT_MS);
	if (r < 0) {
		/* Most likely QEMU refused the command line: give its reason. */
		int status;
		for (int i = 0; i < 50 && waitpid(s->qemu_pid, &status, WNOHANG) == 0; i++)
			usleep(20000);
		if (s->qemu_err_fd >= 0)
			on_qemu_stderr(s->loop, s->qemu_err_fd, EPOLLIN, s);
		if (s->qemu_last_err[0])
			r = vela_error(VELA_E_ENGINE, "QEMU failed to start: %s", s->qemu_last_err);
		goto out;
	}
	fd_set_nonblock(qmp_fd(s->qmp), true);
	vela_loop_add_fd(s->loop, qmp_fd(s->qmp), EPOLLIN, on_qmp_readable, s);

	s->con_fd = con_sv[0];
	con_sv[0] = -1;
	fd_set_nonblock(s->con_fd, true);
	vela_loop_add_fd(s->loop, s->con_fd, EPOLLIN, on_console_output, s);

	r = open_guest_channel(s, agent_sv[0], resume_meta);
	agent_sv[0] = -1;
	if (r < 0)
		goto out;
	if (resume && (r = load_state(s, s->model->checkpoint, stream_len)) < 0)
		goto out;
	r = sup_qmp(s, "cont", NULL);
	if (r < 0)
		goto out;
	s->on_since_ms = time_mono_ms();
	if (resume) {
		log_info("event: VM resumed from %s in %lld ms%s", s->model->checkpoint, (long long)(time_mono_ms() - t0),
			 s->model->resume_repeatable ? " (repeatable: the state file is kept)" : "");
		if (!s->model->resume_repeatable) {
			/* Used: the state goes (unless it is a snapshot's memory, kept
			 * for the next revert), and the disks' modes apply again. */
			bool keep = vmx_get(s->file, "checkpoint.vmState.readOnly") &&
				    str_ieq(vmx_get(s->file, "checkpoint.vmState.readOnly"), "TRUE");
			sup_disks_resumed(s->disks);
			if (record_checkpoint(s, NULL) < 0)
				log_error("%s", vela_errmsg());
			else if (!keep)
				s->used_state = xstrdup(s->model->checkpoint);   /* removed after the reply */
		}
	}
	watch_config(s);
	set_state(s, VM_ON);
	log_info("event: VM powered on (QEMU pid %d, %s)", (int)s->qemu_pid, engine_accel_name(s->accel));
out:
	for (int i = 0; i < 2; i++) {
		if (qmp_sv[i] >= 0) close(qmp_sv[i]);
		if (con_sv[i] >= 0) close(con_sv[i]);
		if (agent_sv[i] >= 0) close(agent_sv[i]);
		if (err_p[i] >= 0) close(err_p[i]);
	}
	engine_argv_free(argv);
	strbuf_free(&notes);
	json_decref(resume_meta);
	if (state_fd >= 0)
		close(state_fd);
	if (r < 0 && s->guest) {
		sup_guest_free(s->guest);
		s->guest = NULL;
	}
	if (r < 0 && s->qemu_pid > 0) {
		kill(s->qemu_pid, SIGKILL);
		waitpid(s->qemu_pid, NULL, 0);
		s->qemu_pid = 0;
	}
	if (r < 0 && s->disks) {
		/* Never powered on: temporary redo logs go, nothing is asked. */
		char *msg = xstrdup(vela_errmsg()), *question = NULL;
		sup_disks_power_off(s->disks, &question);
		free(question);
		sup_disks_free(s->disks);
		s->disks = NULL;
		vela_error(r, "%s", msg);
		free(msg);
	}
	return r;
}

/* Identity write-back, then power on; may stop at the moved-VM question. */
static int start_vm(struct sup *s, enum vmx_uuid_action action)
{
	bool changed = false;
	int r = vmx_identity_update(s->file, s->config_path, action, &changed);
	if (r == -VELA_E_NEEDINPUT) {
		snprintf(s->question, sizeof s->question, "%s", vela_errmsg());
		set_state(s, VM_STUCK);
		log_info("event: question: %s", s->question);
		return 0;
	}
	if (r < 0)
		return r;
	if (changed) {
		r = vmx_file_save(s->file, s->config_path);
		if (r < 0)
			return vela_error_context(r, "write back generated identity");
		log_info("wrote generated identity (uuid.bios, uuid.location, MAC addresses) to %s", s->config_path);
	}
	return power_on(s);
}

/* ---------------------------------------------------- suspend, resume */

/* Where the suspended state goes: <stem>.vmss in suspend.directory or
 * the VM's folder. */
static char *vmstate_path(struct sup *s)
{
	CLEANUP_FREE char *base = path_basename(s->config_path);
	size_t n = strlen(base);
	if (n > 4 && str_ieq(base + n - 4, ".vmx"))
		base[n - 4] = '\0';
	return xasprintf("%s/%s.vmss", s->model->suspend_dir ? s->model->suspend_dir : s->vm_dir, base);
}

/* checkpoint.vmState in the .vmx: set (the file's name when it lies in the
 * VM's folder) or removed (NULL). */
static int record_checkpoint(struct sup *s, const char *path)
{
	const char *keys[2] = { "checkpoint.vmState", "checkpoint.vmState.readOnly" };
	const char *values[2] = { NULL, NULL };
	CLEANUP_FREE char *dir = path ? path_dirname(path) : NULL;
	CLEANUP_FREE char *name = path ? path_basename(path) : NULL;
	if (path)
		values[0] = strcmp(dir, s->vm_dir) == 0 ? name : path;
	pthread_mutex_lock(&s->file_lock);
	int r = vmx_file_edit(s->config_path, keys, values, 2);
	if (r == 0) {
		if (values[0])
			vmx_set(s->file, keys[0], values[0]);
		else
			vmx_unset(s->file, keys[0]);
		vmx_unset(s->file, keys[1]);
	}
	pthread_mutex_unlock(&s->file_lock);
	return r < 0 ? vela_error_context(r, "%s checkpoint.vmState in %s", path ? "record" : "remove", s->config_path)
		     : 0;
}

static void shell_quote(struct strbuf *sb, const char *s)
{
	strbuf_puts(sb, "'");
	for (; *s; s++) {
		if (*s == '\'')
			strbuf_puts(sb, "'\\''");
		else
			strbuf_append(sb, s, 1);
	}
	strbuf_puts(sb, "'");
}

static void finish_save_state(struct sup *s);

static void suspend_failed(struct sup *s, int r)
{
	if (s->saving_snapshot) {
		/* The VM was paused by the caller and stays so; it unpauses. */
		s->saving_snapshot = false;
		log_error("event: saving the memory state failed: %s", vela_errmsg());
		unlink(s->vmstate);
		set_state(s, VM_PAUSED);
		finish_op(s, r);
		return;
	}
	if (s->mig_timer) {
		vela_loop_del_timer(s->loop, s->mig_timer);
		s->mig_timer = 0;
	}
	log_error("event: suspend failed: %s", vela_errmsg());
	char *msg = xstrdup(vela_errmsg());
	unlink(s->vmstate);
	free(s->vmstate);
	s->vmstate = NULL;
	if (s->suspend_was_running && sup_qmp(s, "cont", NULL) < 0)
		log_error("continue after the failed suspend: %s", vela_errmsg());
	set_state(s, s->suspend_was_running ? VM_ON : VM_PAUSED);
	sup_guest_vm_running(s->guest, s->suspend_was_running, NULL);
	vela_error(r, "%s", msg);
	free(msg);
	finish_op(s, r);
}

static void poll_suspend(struct vela_loop *loop, uint64_t id, void *opaque)
{
	(void)id;
	struct sup *s = opaque;
	s->mig_timer = 0;
	json_t *ret = NULL;
	int r = s->qmp ? qmp_execute(s->qmp, "query-migrate", NULL, &ret, QMP_TIMEOUT_MS) : -VELA_E_NOTCONN;
	vela_loop_add_timer(loop, 0, drain_qmp_events, s);
	const char *st = json_string_value(json_object_get(ret, "status"));
	if (r < 0) {
		suspend_failed(s, vela_error_context(r, "suspend: query-migrate"));
	} else if (st && strcmp(st, "completed") == 0 && s->saving_snapshot) {
		finish_save_state(s);
	} else if (st && strcmp(st, "completed") == 0) {
		/* The state is in the file: QEMU can go, then the disks close. */
		s->suspending = true;
		quit_qemu(s);
	} else if (st && (strcmp(st, "failed") == 0 || strcmp(st, "cancelled") == 0)) {
		const char *why = json_string_value(json_object_get(ret, "error-desc"));
		suspend_failed(s, vela_error(VELA_E_MIGRATION, "saving the VM's state %s: %s", st, why ? why : "no reason given"));
	} else {
		s->mig_timer = vela_loop_add_timer(loop, 5, poll_suspend, s);
	}
	json_decref(ret);
}

/* A memory snapshot's state is sealed: no disk stamps (the snapshot's
 * images are parents nobody writes), the VM stays paused for the caller. */
static void finish_save_state(struct sup *s)
{
	s->saving_snapshot = false;
	json_t *gi = sup_guest_guestinfo(s->guest);
	char when[40];
	time_format_iso(time_real_ms(), when, sizeof when);
	json_t *meta = json_pack("{s:i, s:s, s:s, s:O, s:[], s:O, s:s, s:I, s:b}", "version", 1, "vela", VELA_VERSION,
				 "suspended_at", when, "fingerprint", s->fingerprint, "disks", "guestinfo",
				 json_object_get(gi, "values"), "config", s->config_path, "memsize_mb",
				 (json_int_t)s->model->memsize_mb, "snapshot", 1);
	json_decref(gi);
	int r = vmstate_finish(s->vmstate, meta);
	json_decref(meta);
	set_state(s, VM_PAUSED);
	if (r < 0) {
		log_error("event: saving the memory state failed: %s", vela_errmsg());
		unlink(s->vmstate);
	} else {
		log_info("event: memory state saved to %s in %lld ms", s->vmstate,
			 (long long)(time_mono_ms() - s->mig_started_ms));
	}
	finish_op(s, r);
}

/* Save the running state (a memory snapshot): {cmd: save-state, file}.
 * The VM must be paused (the caller put its disks' redo logs on meanwhile)
 * and stays paused; the reply comes when the file is complete. */
static int req_save_state(struct sup *s, struct ctl_client *c, const char *file)
{
	if (s->state != VM_PAUSED)
		return vela_error(VELA_E_BADSTATE, "save-state: pause the VM first (it is %s)", vm_state_name(s->state));
	if (s->op != OP_NONE)
		return vela_error(VELA_E_BUSY, "save-state: another power operation is under way");
	if (!file || file[0] != '/')
		return vela_error(VELA_E_INVAL, "save-state needs the absolute path of the file to write");
	free(s->vmstate);
	s->vmstate = xstrdup(file);
	unlink(file);
	s->mig_started_ms = time_mono_ms();
	int r = sup_qmp(s, "migrate-set-parameters", json_pack("{s:I}", "max-bandwidth", (json_int_t)1 << 40));
	struct strbuf uri = { 0 };
	strbuf_puts(&uri, "exec:cat > ");
	shell_quote(&uri, file);
	if (r == 0)
		r = sup_qmp(s, "migrate", json_pack("{s:s}", "uri", uri.data));
	strbuf_free(&uri);
	if (r < 0)
		return vela_error_context(r, "save-state");
	s->saving_snapshot = true;
	s->suspend_was_running = false;
	s->op = OP_SUSPEND;
	c->waiting = true;
	s->mig_timer = vela_loop_add_timer(s->loop, 5, poll_suspend, s);
	return 0;
}

static int req_suspend(struct sup *s, struct ctl_client *c)
{
	if (s->state != VM_ON && s->state != VM_PAUSED)
		return vela_error(VELA_E_BADSTATE, "cannot suspend: the VM is %s", vm_state_name(s->state));
	if (s->job)
		return vela_error(VELA_E_BUSY, "cannot suspend while a live disk operation runs");
	if (s->op != OP_NONE)
		return vela_error(VELA_E_BUSY, "cannot suspend: another power operation is under way");
	free(s->vmstate);
	s->vmstate = vmstate_path(s);
	CLEANUP_FREE char *dir = path_dirname(s->vmstate);
	int r = mkdir_p(dir, 0755);
	if (r < 0)
		return vela_error_context(r, "suspend.directory");
	unlink(s->vmstate);   /* an interrupted suspend's leftovers */
	s->suspend_was_running = s->state == VM_ON;
	s->mig_started_ms = time_mono_ms();
	set_state(s, VM_SUSPENDING);
	sup_guest_vm_running(s->guest, false, NULL);
	if (s->suspend_was_running && (r = sup_qmp(s, "stop", NULL)) < 0)
		goto fail;
	/* QEMU 7.2 throttles migration to 32 MiB/s by default: a file is no network. */
	if ((r = sup_qmp(s, "migrate-set-parameters", json_pack("{s:I}", "max-bandwidth", (json_int_t)1 << 40))) < 0)
		goto fail;
	struct strbuf uri = { 0 };
	strbuf_puts(&uri, "exec:cat > ");
	shell_quote(&uri, s->vmstate);
	r = sup_qmp(s, "migrate", json_pack("{s:s}", "uri", uri.data));
	strbuf_free(&uri);
	if (r < 0)
		goto fail;
	log_info("event: suspending to %s", s->vmstate);
	s->op = OP_SUSPEND;
	c->waiting = true;
	s->mig_timer = vela_loop_add_timer(s->loop, 5, poll_suspend, s);
	return 0;
fail:
	vela_error_context(r, "suspend");
	{
		char *msg = xstrdup(vela_errmsg());
		if (s->suspend_was_running)
			sup_qmp(s, "cont", NULL);
		set_state(s, s->suspend_was_running ? VM_ON : VM_PAUSED);
		sup_guest_vm_running(s->guest, s->suspend_was_running, NULL);
		unlink(s->vmstate);
		vela_error(r, "%s", msg);
		free(msg);
	}
	return r;
}

/* QEMU quit after saving its state: close the disks, seal the file, name
 * it in the .vmx.  The VM is suspended. */
static void finish_suspend(struct sup *s)
{
	json_t *stamps = NULL;
	json_t *gi = sup_guest_guestinfo(s->guest);
	s->op_via_agent = false;
	sup_guest_free(s->guest);
	s->guest = NULL;
	int r = sup_disks_suspend(s->disks, &stamps);
	char when[40];
	time_format_iso(time_real_ms(), when, sizeof when);
	json_t *meta = json_pack("{s:i, s:s, s:s, s:O, s:o, s:O, s:s, s:I}", "version", 1, "vela", VELA_VERSION,
				 "suspended_at", when, "fingerprint", s->fingerprint, "disks", stamps, "guestinfo",
				 json_object_get(gi, "values"), "config", s->config_path, "memsize_mb",
				 (json_int_t)s->model->memsize_mb);
	json_decref(gi);
	if (r == 0)
		r = vmstate_finish(s->vmstate, meta);
	if (r == 0)
		r = record_checkpoint(s, s->vmstate);
	json_decref(meta);
	struct stat st;
	long long mb = stat(s->vmstate, &st) == 0 ? (long long)(st.st_size >> 20) : 0;
	if (r < 0) {
		/* The state cannot be trusted: the VM is off, as after a crash. */
		log_error("event: suspend failed after QEMU saved its state: %s; the VM is off", vela_errmsg());
		unlink(s->vmstate);
		s->exit_code = 1;
		set_state(s, VM_OFF);
	} else {
		log_info("event: VM suspended to %s (%lld MiB) in %lld ms", s->vmstate, mb,
			 (long long)(time_mono_ms() - s->mig_started_ms));
		s->exit_code = 0;
		set_state(s, VM_SUSPENDED);
	}
	s->on_since_ms = 0;
	release_run_dir(s);
	finish_op(s, r);
	vela_loop_stop(s->loop);
}

/* Feed QEMU (started with -incoming defer) the saved state and wait until
 * it is loaded.  The loop is not running yet: this is part of the power-on. */
static int load_state(struct sup *s, const char *path, uint64_t stream_len)
{
	(void)stream_len;   /* QEMU stops at its stream's end marker */
	int r;
	int64_t deadline = time_mono_ms() + 30 * 60 * 1000;
	for (;;) {
		json_t *ret = NULL;
		r = qmp_execute(s->qmp, "query-status", NULL, &ret, QMP_TIMEOUT_MS);
		const char *st = json_string_value(json_object_get(ret, "status"));
		bool loading = r == 0 && st && strcmp(st, "inmigrate") == 0;
		bool done = r == 0 && st && (strcmp(st, "paused") == 0 || strcmp(st, "prelaunch") == 0);
		CLEANUP_FREE char *what = st ? xstrdup(st) : NULL;
		json_decref(ret);
		if (done)
			return 0;
		if (r < 0) {
			if (s->qemu_err_fd >= 0)
				on_qemu_stderr(s->loop, s->qemu_err_fd, EPOLLIN, s);
			return vela_error(VELA_E_MIGRATION, "resume from %s: QEMU could not load the state%s%s", path,
					  s->qemu_last_err[0] ? ": " : "", s->qemu_last_err);
		}
		if (!loading)
			return vela_error(VELA_E_MIGRATION, "resume from %s: QEMU ended in state %s", path, what);
		if (time_mono_ms() > deadline)
			return vela_error(VELA_E_TIMEOUT, "resume from %s: loading took more than 30 minutes", path);
		usleep(2000);
	}
}

/* ------------------------------------------------------------ control */

static void op_timeout(struct vela_loop *loop, uint64_t id, void *opaque)
{
	(void)loop;
	(void)id;
	struct sup *s = opaque;
	s->op_timer = 0;
	if (s->op_mode == VM_POWER_TRYSOFT) {
		log_warn("event: guest did not respond within %d s; falling back to hard %s",
			 s->op_timeout_s, s->op == OP_STOP ? "power off" : "reset");
		if (s->op == OP_STOP) {
			quit_qemu(s);
		} else {
			int r = sup_qmp(s, "system_reset", NULL);
			if (r == 0)
				r = sup_qmp(s, "cont", NULL);
			set_state(s, VM_ON);
			finish_op(s, r);
		}
		return;
	}
	int r = vela_error(VELA_E_TIMEOUT, "the guest did not %s within %d s (%s); it is still running",
			   s->op == OP_STOP ? "shut down" : "restart", s->op_timeout_s,
			   s->op_via_agent ? "asked through its agent" : "no response to the ACPI power button");
	log_warn("event: %s", vela_errmsg());
	set_state(s, VM_ON);
	finish_op(s, r);
}

/* The agent refused the shutdown or did not answer: the ACPI button instead. */
static void on_agent_shutdown(void *opaque, uint64_t tag, int r, json_t *reply)
{
	(void)tag;
	(void)reply;
	struct sup *s = opaque;
	if (r == 0 || (s->op != OP_STOP && s->op != OP_RESET) || !s->op_via_agent)
		return;
	log_warn("soft %s through the guest agent failed (%s); pressing the ACPI power button instead",
		 s->op == OP_STOP ? "shutdown" : "restart", vela_errmsg());
	s->op_via_agent = false;
	if (sup_qmp(s, "system_powerdown", NULL) < 0)
		log_error("ACPI power button: %s", vela_errmsg());
}

static int begin_soft(struct sup *s, struct ctl_client *c, enum pending_op op, enum vm_power_mode mode, int timeout_s)
{
	int r = -VELA_E_NOAGENT;
	s->op_via_agent = false;
	if (sup_guest_ready(s->guest)) {
		/* The agent runs the guest's pre-commands and shuts down cleanly;
		 * a reboot through it needs no power-off and power-on. */
		r = sup_guest_request(s->guest, "shutdown",
				      json_pack("{s:s}", "mode", op == OP_STOP ? "halt" : "reboot"),
				      timeout_s * 1000, on_agent_shutdown, s, 0);
		if (r == 0) {
			s->op_via_agent = true;
			log_info("event: soft %s requested through the guest agent", op == OP_STOP ? "shutdown" : "restart");
		}
	}
	if (r < 0 && (r = sup_qmp(s, "system_powerdown", NULL)) < 0)
		return r;
	s->op = op;
	s->op_mode = mode;
	s->op_timeout_s = timeout_s;
	s->op_timer = vela_loop_add_timer(s->loop, (int64_t)timeout_s * 1000, op_timeout, s);
	set_state(s, op == OP_STOP ? VM_STOPPING : VM_RESETTING);
	c->waiting = true;
	return 0;
}

static int req_stop(struct sup *s, struct ctl_client *c, enum vm_power_mode mode, int timeout_s)
{
	if (mode == VM_POWER_HARD) {
		switch (s->state) {
		case VM_ON: case VM_PAUSED: case VM_STOPPING: case VM_RESETTING:
			if (s->op != OP_NONE)
				finish_op(s, vela_error(VELA_E_CANCELED, "superseded by a hard power off"));
			s->op = OP_STOP;
			s->op_mode = mode;
			set_state(s, VM_STOPPING);
			c->waiting = true;
			quit_qemu(s);
			return 0;
		case VM_STUCK:
			/* Cancel a power-on that waits for an answer; at an undoable
			 * power-off, leave the redo logs as they are (= keep). */
			log_info("event: %s", s->question_kind == Q_UNDOABLE
						      ? "question left unanswered; undoable redo logs kept"
						      : "power-on canceled while a question was pending");
			set_state(s, VM_OFF);
			release_run_dir(s);
			vela_loop_stop(s->loop);
			return 0;
		default:
			break;
		}
		return vela_error(VELA_E_BADSTATE, "cannot power off: the VM is %s", vm_state_name(s->state));
	}
	if (s->state == VM_PAUSED)
		return vela_error(VELA_E_BADSTATE, "cannot shut down a paused guest softly; unpause it or use stop hard");
	if (s->state != VM_ON)
		return vela_error(VELA_E_BADSTATE, "cannot shut down: the VM is %s", vm_state_name(s->state));
	return begin_soft(s, c, OP_STOP, mode, timeout_s);
}

static int req_reset(struct sup *s, struct ctl_client *c, enum vm_power_mode mode, int timeout_s)
{
	if (mode == VM_POWER_HARD) {
		if (s->state != VM_ON && s->state != VM_PAUSED)
			return vela_error(VELA_E_BADSTATE, "cannot reset: the VM is %s", vm_state_name(s->state));
		int r = sup_qmp(s, "system_reset", NULL);
		if (r == 0 && s->state == VM_PAUSED)
			r = sup_qmp(s, "cont", NULL);
		if (r < 0)
			return r;
		log_info("event: VM reset (hard)");
		set_state(s, VM_ON);
		return 0;
	}
	if (s->state != VM_ON)
		return vela_error(VELA_E_BADSTATE, "cannot restart the guest: the VM is %s", vm_state_name(s->state));
	return begin_soft(s, c, OP_RESET, mode, timeout_s);
}

static int req_pause(struct sup *s, bool pause)
{
	if (pause && s->state != VM_ON)
		return vela_error(VELA_E_BADSTATE, "cannot pause: the VM is %s", vm_state_name(s->state));
	if (!pause && s->state != VM_PAUSED)
		return vela_error(VELA_E_BADSTATE, "cannot unpause: the VM is %s", vm_state_name(s->state));
	int r = sup_qmp(s, pause ? "stop" : "cont", NULL);
	if (r < 0)
		return r;
	log_info("event: VM %s", pause ? "paused" : "unpaused");
	set_state(s, pause ? VM_PAUSED : VM_ON);
	sup_guest_vm_running(s->guest, !pause, NULL);
	return 0;
}

static int req_answer(struct sup *s, struct ctl_client *c, const char *choice)
{
	if (s->state != VM_STUCK)
		return vela_error(VELA_E_BADSTATE, "no question is pending: the VM is %s", vm_state_name(s->state));
	if (!choice)
		return vela_error(VELA_E_INVAL, "answer needs a choice: keep, create or cancel");
	if (s->question_kind == Q_UNDOABLE) {
		int r = sup_disks_answer(s->disks, choice);
		if (r == -VELA_E_INVAL)
			return r;   /* not a choice: the question stays */
		log_info("event: answer \"%s\" to: %s", choice, s->question);
		set_state(s, VM_OFF);
		release_run_dir(s);
		if (r < 0)
			s->exit_code = 1;
		vela_loop_stop(s->loop);
		return r;
	}
	log_info("event: answer \"%s\" to: %s", choice, s->question);
	if (str_ieq(choice, "cancel"))
		return req_stop(s, c, VM_POWER_HARD, 0);
	enum vmx_uuid_action a;
	if (str_ieq(choice, "keep"))
		a = VMX_UUID_KEEP;
	else if (str_ieq(choice, "create"))
		a = VMX_UUID_CREATE;
	else
		return vela_error(VELA_E_INVAL, "the choices are keep, create and cancel, not \"%s\"", choice);
	set_state(s, VM_STARTING);
	int r = start_vm(s, a);
	if (r < 0) {
		/* The power-on failed after the answer: the VM is off. */
		log_error("event: power on failed: %s", vela_errmsg());
		set_state(s, VM_OFF);
		release_run_dir(s);
		s->exit_code = 1;
		vela_loop_stop(s->loop);
	}
	return r;
}

static int req_scrollback(struct sup *s, json_t **out)
{
	struct strbuf sb = { 0 };
	ring_copy(s, &sb);
	char *b64 = base64_encode(sb.data ? sb.data : "", sb.len);
	strbuf_free(&sb);
	*out = json_pack("{s:b, s:s%}", "ok", 1, "data_base64", b64, strlen(b64));
	free(b64);
	return 0;
}

/*
 * A live disk operation moved the disk's top: the .vmx names the new top
 * from now on (so the next power-on continues where the guest left off),
 * on disk and in the running configuration (so it is not "pending").
 */
static int record_disk_top(struct sup *s, const char *addr, const char *top)
{
	CLEANUP_FREE char *key = xasprintf("%s.fileName", addr);
	CLEANUP_FREE char *dir = path_dirname(top);
	CLEANUP_FREE char *name = path_basename(top);
	char real_dir[PATH_MAX];
	const char *value = realpath(dir, real_dir) && strcmp(real_dir, s->vm_dir) == 0 ? name : top;
	struct vmx_file *now = NULL;
	pthread_mutex_lock(&s->file_lock);
	int r = vmx_file_load(s->config_path, &now);
	if (r == 0)
		r = vmx_set(now, key, value);
	if (r == 0)
		r = vmx_file_save(now, s->config_path);
	vmx_file_free(now);
	if (r == 0)
		vmx_set(s->file, key, value);
	pthread_mutex_unlock(&s->file_lock);
	if (r < 0)
		return vela_error_context(r, "record the new top of %s in %s", addr, s->config_path);
	log_info("%s = \"%s\" written to %s", key, value, s->config_path);
	return 0;
}

static int on_disk_top_changed(const char *addr, const char *top, void *opaque)
{
	return record_disk_top(opaque, addr, top);
}

/*
 * Long live disk operations (commit, the end of an export) run in a thread
 * of their own, so the console, QMP and other clients stay served; the
 * client gets its reply when the job ends, or at once with "wait": false.
 */
struct disk_job {
	struct sup *s;
	pthread_t thread;
	int efd;                    /* the worker says "done" here */
	struct ctl_client *client;  /* owed the reply, or NULL */
	char cmd[32], disk[32];
	unsigned level;
	bool freeze, end_keep;
	int r;
	char err[1024];
	char *top;
	int64_t ms;
};

static void *disk_job_thread(void *opaque)
{
	struct disk_job *j = opaque;
	int64_t t0 = time_mono_ms();
	if (strcmp(j->cmd, "commit") == 0)
		j->r = sup_disks_commit(j->s->disks, j->disk, j->level, j->freeze, &j->top);
	else
		j->r = sup_disks_export_end(j->s->disks, j->disk, !j->end_keep, &j->top);
	if (j->r < 0)
		snprintf(j->err, sizeof j->err, "%s", vela_errmsg());
	j->ms = time_mono_ms() - t0;
	uint64_t one = 1;
	if (write(j->efd, &one, sizeof one) < 0)
		log_error("disk job: signal the end: %s", strerror(errno));
	return NULL;
}

static void disk_job_finish(struct sup *s)
{
	struct disk_job *j = s->job;
	if (!j)
		return;
	pthread_join(j->thread, NULL);
	vela_loop_del_fd(s->loop, j->efd);
	close(j->efd);
	json_t *reply;
	if (j->r < 0) {
		vela_error(j->r, "%s", j->err);
		log_error("event: %s %s failed after %lld ms: %s", j->cmd, j->disk, (long long)j->ms, j->err);
		reply = error_json(j->r);
	} else {
		log_info("event: %s %s done in %lld ms; the disk's top is now %s", j->cmd, j->disk, (long long)j->ms,
			 j->top);
		reply = json_pack("{s:b, s:s, s:s, s:I}", "ok", 1, "disk", j->disk, "top", j->top, "ms", (json_int_t)j->ms);
	}
	if (j->client) {
		j->client->waiting_job = false;
		send_json(j->client->fd, reply);
	} else {
		json_decref(reply);
	}
	free(j->top);
	free(j);
	s->job = NULL;
}

static void on_disk_job_done(struct vela_loop *loop, int fd, uint32_t events, void *opaque)
{
	(void)loop;
	(void)events;
	uint64_t v;
	if (read(fd, &v, sizeof v) < 0 && errno == EAGAIN)
		return;
	disk_job_finish(opaque);
}

static int disk_job_start(struct sup *s, struct ctl_client *c, const char *cmd, const char *disk, json_t *req,
			  json_t **reply)
{
	if (s->job)
		return vela_error(VELA_E_BUSY, "%s %s is still running; one long disk operation at a time", s->job->cmd,
				  s->job->disk);
	json_t *lv = json_object_get(req, "level");
	if (lv && (!json_is_integer(lv) || json_integer_value(lv) < 0 || json_integer_value(lv) > 255))
		return vela_error(VELA_E_INVAL, "commit: level must be a number from 0 to 255");
	struct disk_job *j = xcalloc(1, sizeof(*j));
	j->s = s;
	snprintf(j->cmd, sizeof j->cmd, "%s", cmd);
	snprintf(j->disk, sizeof j->disk, "%s", disk);
	j->level = lv ? (unsigned)json_integer_value(lv) : 0;
	j->freeze = json_is_true(json_object_get(req, "freeze"));
	j->end_keep = json_is_true(json_object_get(req, "keep"));
	j->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (j->efd < 0) {
		free(j);
		return vela_error_errno(errno, "eventfd");
	}
	bool wait = !json_is_false(json_object_get(req, "wait"));
	if (wait) {
		j->client = c;
		c->waiting_job = true;
	}
	vela_loop_add_fd(s->loop, j->efd, EPOLLIN, on_disk_job_done, s);
	s->job = j;
	int e = pthread_create(&j->thread, NULL, disk_job_thread, j);
	if (e) {
		vela_loop_del_fd(s->loop, j->efd);
		close(j->efd);
		if (wait)
			c->waiting_job = false;
		free(j);
		s->job = NULL;
		return vela_error_errno(e, "start %s", cmd);
	}
	log_info("event: %s %s started", cmd, disk);
	if (!wait)
		*reply = json_pack("{s:b, s:s, s:s, s:b}", "ok", 1, "disk", disk, "cmd", cmd, "started", 1);
	return 0;
}

static int req_disk(struct sup *s, struct ctl_client *c, const char *cmd, json_t *req, json_t **reply)
{
	const char *disk = json_string_value(json_object_get(req, "disk"));
	if (s->state != VM_ON && s->state != VM_PAUSED)
		return vela_error(VELA_E_BADSTATE, "%s: the VM is %s; offline disks are handled with vela disk", cmd,
				  vm_state_name(s->state));
	if (strcmp(cmd, "disk-stats") == 0) {
		*reply = json_pack("{s:b, s:o}", "ok", 1, "disks", sup_disks_stats(s->disks));
		return 0;
	}
	if (!disk)
		return vela_error(VELA_E_INVAL, "%s needs a disk (e.g. scsi0:0)", cmd);
	CLEANUP_FREE char *top = NULL;
	int r;
	int64_t t0 = time_mono_ms();
	if (strcmp(cmd, "addredo") == 0 && json_is_true(json_object_get(req, "cbt"))) {
		/* A backup's instant: the changed-block map since the last one. */
		struct blk_cbt_epoch e;
		if ((r = sup_disks_addredo_rotate(s->disks, disk, &top, &e)) < 0)
			return r;
		char *b64 = base64_encode(e.bits, e.nbytes);
		*reply = json_pack("{s:b, s:s, s:s, s:{s:s, s:s, s:i, s:I, s:I, s:s%}}", "ok", 1, "disk", disk, "top", top, "cbt",
				   "prev", e.prev, "next", e.next, "granule", (int)BLK_CBT_GRANULE, "disk_size",
				   (json_int_t)e.disk_size, "changed", (json_int_t)blk_cbt_count(&e), "bitmap_base64", b64,
				   strlen(b64));
		free(b64);
		blk_cbt_epoch_clear(&e);
		log_info("event: addredo %s with a new changed-block epoch", disk);
		return 0;
	} else if (strcmp(cmd, "addredo") == 0) {
		r = sup_disks_addredo(s->disks, disk, &top);
	} else if (strcmp(cmd, "commit") == 0 ||
		   (strcmp(cmd, "export-disk") == 0 && json_is_true(json_object_get(req, "end")))) {
		return disk_job_start(s, c, cmd, disk, req, reply);
	} else if (strcmp(cmd, "export-disk") == 0) {
		const char *listen = json_string_value(json_object_get(req, "nbd"));
		if (!listen)
			return vela_error(VELA_E_INVAL, "export-disk needs an NBD address (HOST:PORT, :PORT or a socket path)");
		CLEANUP_FREE char *frozen = NULL;
		r = sup_disks_export(s->disks, disk, listen, &frozen, &top);
		if (r < 0)
			return r;
		log_info("event: export of %s (%s) on %s; the guest writes to %s", disk, frozen, listen, top);
		*reply = json_pack("{s:b, s:s, s:s, s:s, s:s}", "ok", 1, "disk", disk, "export", frozen, "nbd", listen,
				   "top", top);
		return 0;
	} else if (strcmp(cmd, "disk-limit") == 0) {
		r = sup_disks_set_limits(s->disks, disk, req);
		if (r == 0)
			*reply = json_pack("{s:b, s:o}", "ok", 1, "disks", sup_disks_stats(s->disks));
		return r;
	} else {
		return vela_error(VELA_E_NOTSUP, "unknown request \"%s\"", cmd);
	}
	if (r < 0)
		return r;
	int64_t ms = time_mono_ms() - t0;
	log_info("event: %s %s done in %lld ms; the disk's top is now %s", cmd, disk, (long long)ms, top);
	*reply = json_pack("{s:b, s:s, s:s, s:I}", "ok", 1, "disk", disk, "top", top, "ms", (json_int_t)ms);
	return 0;
}

/* The screen as a PNG file in the run folder, a new name each time (the
 * caller reads it and removes it): {file}. */
static int req_screendump(struct sup *s, json_t **reply)
{
	if (s->state != VM_ON && s->state != VM_PAUSED)
		return vela_error(VELA_E_BADSTATE, "no screen: the VM is %s", vm_state_name(s->state));
	CLEANUP_FREE char *file = xasprintf("%s/screen-%u.png", s->run_dir, ++s->screendumps);
	int r = sup_qmp(s, "screendump", json_pack("{s:s, s:s}", "filename", file, "format", "png"));
	if (r < 0)
		return vela_error_context(r, "screendump");
	*reply = json_pack("{s:b, s:s}", "ok", 1, "file", file);
	return 0;
}

/* ------------------------------------------------------- guest agent */

static struct ctl_client *client_by_serial(struct sup *s, uint64_t serial)
{
	for (struct ctl_client *c = s->ctl_clients; c; c = c->next)
		if (c->serial == serial)
			return c;
	return NULL;
}

static void on_guest_op_reply(void *opaque, uint64_t tag, int r, json_t *reply)
{
	struct sup *s = opaque;
	struct ctl_client *c = client_by_serial(s, tag);
	if (!c || !c->waiting_guest)
		return;   /* the client went away */
	c->waiting_guest = false;
	if (r < 0) {
		send_json(c->fd, error_json(r));
		return;
	}
	json_t *j = json_deep_copy(reply);
	json_object_del(j, "re");
	send_json(c->fd, j);
}

/*
 * {cmd: guest-op, op: ping|info|freeze|thaw|zero-fill|sync-time, path}:
 * passed to the agent; the reply comes when it answers.
 */
static int req_guest_op(struct sup *s, struct ctl_client *c, json_t *req)
{
	const char *op = json_string_value(json_object_get(req, "op"));
	json_t *tmo = json_object_get(req, "timeout");
	int timeout_ms = json_is_integer(tmo) && json_integer_value(tmo) > 0 && json_integer_value(tmo) <= 86400
				 ? (int)json_integer_value(tmo) * 1000 : 60000;
	if (s->state != VM_ON)
		return vela_error(VELA_E_BADSTATE, "guest %s: the VM is %s", op ? op : "operation", vm_state_name(s->state));
	json_t *args = NULL;
	const char *cmd = op;
	if (!op) {
		return vela_error(VELA_E_INVAL, "guest-op needs an op: ping, info, freeze, thaw, zero-fill or sync-time");
	} else if (strcmp(op, "zero-fill") == 0) {
		const char *path = json_string_value(json_object_get(req, "path"));
		if (!path || path[0] != '/')
			return vela_error(VELA_E_INVAL, "zero-fill needs the absolute path of a folder in the guest");
		args = json_pack("{s:s}", "path", path);
		if (!tmo)
			timeout_ms = 3600 * 1000;
	} else if (strcmp(op, "sync-time") == 0) {
		struct timespec now;
		clock_gettime(CLOCK_REALTIME, &now);
		cmd = "time-set";
		args = json_pack("{s:I, s:s}", "epoch_ns", (json_int_t)now.tv_sec * 1000000000 + now.tv_nsec, "reason", "host");
	} else if (strcmp(op, "ping") != 0 && strcmp(op, "info") != 0 && strcmp(op, "freeze") != 0 &&
		   strcmp(op, "thaw") != 0) {
		return vela_error(VELA_E_INVAL, "unknown guest op \"%.32s\": ping, info, freeze, thaw, zero-fill or sync-time", op);
	}
	int r = sup_guest_request(s->guest, cmd, args, timeout_ms, on_guest_op_reply, s, c->serial);
	if (r < 0)
		return r;
	c->waiting_guest = true;
	return 0;
}

/* {cmd: guestinfo} lists, {key} gets, {key, value} sets, {key, value: null} removes. */
static int req_guestinfo(struct sup *s, json_t *req, json_t **reply)
{
	if (!s->guest)
		return vela_error(VELA_E_BADSTATE, "guestinfo: the VM is %s", vm_state_name(s->state));
	json_t *key = json_object_get(req, "key");
	json_t *value = json_object_get(req, "value");
	json_t *all = sup_guest_guestinfo(s->guest);
	int r = 0;
	if (!key) {
		*reply = all;
		json_object_set_new(*reply, "ok", json_true());
		return 0;
	}
	CLEANUP_FREE char *full = NULL;
	if ((r = agent_guestinfo_key(json_string_value(key), &full)) < 0) {
		json_decref(all);
		return r;
	}
	if (!value) {
		json_t *v = json_object_get(json_object_get(all, "values"), full);
		if (!v)
			r = vela_error(VELA_E_NOTFOUND, "guestinfo: %s is not set", full);
		else
			*reply = json_pack("{s:b, s:s, s:O}", "ok", 1, "key", full, "value", v);
		json_decref(all);
		return r;
	}
	json_decref(all);
	if (!json_is_string(value) && !json_is_null(value))
		return vela_error(VELA_E_INVAL, "guestinfo: the value is a string (or null to remove the key)");
	r = sup_guest_guestinfo_set(s->guest, full, json_string_value(value), "the host");
	if (r == 0)
		*reply = json_pack("{s:b, s:s}", "ok", 1, "key", full);
	return r;
}

/*
 * Edit the .vmx for the next power-on: {cmd: edit, keys: {key: value or
 * null}}.  Done here, under the lock the supervisor's own writes take (a
 * live disk operation records its new top in the same file), so two
 * writers never lose each other's change.  The running VM is untouched: the
 * edits show as pending_changes until the next power cycle.
 */
static int req_edit(struct sup *s, json_t *edits)
{
	if (!json_is_object(edits) || json_object_size(edits) == 0 || json_object_size(edits) > 256)
		return vela_error(VELA_E_INVAL, "edit: \"keys\" is an object of 1-256 key: value (or null) pairs");
	size_t n = json_object_size(edits), i = 0;
	CLEANUP_FREE const char **keys = xcalloc(n, sizeof *keys);
	CLEANUP_FREE const char **values = xcalloc(n, sizeof *values);
	const char *k;
	json_t *v;
	json_object_foreach(edits, k, v) {
		if (!json_is_string(v) && !json_is_null(v))
			return vela_error(VELA_E_INVAL, "edit: the value of %.64s is not a string or null", k);
		keys[i] = k;
		values[i++] = json_string_value(v);
	}
	pthread_mutex_lock(&s->file_lock);
	int r = vmx_file_edit(s->config_path, keys, values, n);
	pthread_mutex_unlock(&s->file_lock);
	if (r == 0)
		log_info("event: the configuration was edited through the control socket (%zu key%s)", n, n == 1 ? "" : "s");
	return r;
}

static void handle_request(struct sup *s, struct ctl_client *c, const char *line)
{
	json_error_t jerr;
	json_t *req = json_loads(line, JSON_REJECT_DUPLICATES, &jerr);
	json_t *reply = NULL;
	int r = 0;

	if (!json_is_object(req)) {
		r = vela_error(VELA_E_PROTOCOL, "request is not a JSON object%s%s", req ? "" : ": ", req ? "" : jerr.text);
		goto done;
	}
	const char *cmd = json_string_value(json_object_get(req, "cmd"));
	const char *mode_s = json_string_value(json_object_get(req, "mode"));
	json_t *tmo = json_object_get(req, "timeout");
	int timeout_s = DEFAULT_SOFT_TIMEOUT_S;
	enum vm_power_mode mode = VM_POWER_TRYSOFT;
	if (tmo && (!json_is_integer(tmo) || json_integer_value(tmo) < 1 || json_integer_value(tmo) > 86400)) {
		r = vela_error(VELA_E_INVAL, "timeout must be a number of seconds from 1 to 86400");
		goto done;
	}
	if (tmo)
		timeout_s = (int)json_integer_value(tmo);
	if (mode_s && (r = vm_power_mode_parse(mode_s, &mode)) < 0)
		goto done;
	if (!cmd) {
		r = vela_error(VELA_E_PROTOCOL, "request has no \"cmd\"");
	} else if (strcmp(cmd, "status") == 0) {
		reply = status_json(s);
	} else if (strcmp(cmd, "stop") == 0) {
		r = req_stop(s, c, mode, timeout_s);
	} else if (strcmp(cmd, "reset") == 0) {
		r = req_reset(s, c, mode, timeout_s);
	} else if (strcmp(cmd, "pause") == 0 || strcmp(cmd, "unpause") == 0) {
		r = req_pause(s, strcmp(cmd, "pause") == 0);
	} else if (strcmp(cmd, "answer") == 0) {
		r = req_answer(s, c, json_string_value(json_object_get(req, "choice")));
	} else if (strcmp(cmd, "scrollback") == 0) {
		r = req_scrollback(s, &reply);
	} else if (strcmp(cmd, "screendump") == 0) {
		r = req_screendump(s, &reply);
	} else if (strcmp(cmd, "edit") == 0) {
		r = req_edit(s, json_object_get(req, "keys"));
	} else if (strcmp(cmd, "suspend") == 0) {
		r = req_suspend(s, c);
	} else if (strcmp(cmd, "save-state") == 0) {
		r = req_save_state(s, c, json_string_value(json_object_get(req, "file")));
	} else if (strcmp(cmd, "guest") == 0) {
		reply = sup_guest_status(s->guest);
		json_object_set_new(reply, "ok", json_true());
	} else if (strcmp(cmd, "guest-op") == 0) {
		r = req_guest_op(s, c, req);
	} else if (strcmp(cmd, "guestinfo") == 0) {
		r = req_guestinfo(s, req, &reply);
	} else if (strcmp(cmd, "addredo") == 0 || strcmp(cmd, "commit") == 0 || strcmp(cmd, "disk-stats") == 0 ||
		   strcmp(cmd, "disk-limit") == 0 || strcmp(cmd, "export-disk") == 0) {
		r = req_disk(s, c, cmd, req, &reply);
	} else {
		r = vela_error(VELA_E_NOTSUP, "unknown request \"%s\"", cmd);
	}
	if (r == 0)
		log_debug("control: %s", cmd);
done:
	json_decref(req);
	if ((c->waiting || c->waiting_job || c->waiting_guest) && r == 0) {
		json_decref(reply);
		return;   /* answered when the operation completes */
	}
	c->waiting = false;
	if (r < 0)
		send_json(c->fd, error_json(r));
	else
		send_json(c->fd, reply ? reply : status_json(s));
}

static void ctl_client_drop(struct sup *s, struct ctl_client *c)
{
	if (s->job && s->job->client == c)
		s->job->client = NULL;   /* the job goes on; its end is logged */
	for (struct ctl_client **pp = &s->ctl_clients; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	vela_loop_del_fd(s->loop, c->fd);
	close(c->fd);
	strbuf_free(&c->in);
	free(c);
}

static void on_ctl_client(struct vela_loop *loop, int fd, uint32_t events, void *opaque)
{
	(void)loop;
	(void)events;
	struct sup *s = opaque;
	struct ctl_client *c = s->ctl_clients;
	while (c && c->fd != fd)
		c = c->next;
	if (!c)
		return;
	char buf[4096];
	ssize_t n = read(fd, buf, sizeof buf);
	if (n <= 0) {
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		ctl_client_drop(s, c);
		return;
	}
	strbuf_append(&c->in, buf, (size_t)n);
	char *nl;
	while (c->in.data && (nl = memchr(c->in.data, '\n', c->in.len))) {
		*nl = '\0';
		CLEANUP_FREE char *line = xstrdup(c->in.data);
		size_t used = (size_t)(nl - c->in.data) + 1;
		memmove(c->in.data, nl + 1, c->in.len - used);
		c->in.len -= used;
		handle_request(s, c, line);
		if (s->state == VM_OFF && !s->qemu_pid)
			return;
	}
	if (c->in.len > CTL_LINE_MAX) {
		vela_error(VELA_E_PROTOCOL, "request longer than %u bytes", CTL_LINE_MAX);
		send_json(c->fd, error_json(VELA_E_PROTOCOL));
		ctl_client_drop(s, c);
	}
}

static void on_ctl_accept(struct vela_loop *loop, int fd, uint32_t events, void *opaque)
{
	(void)events;
	struct sup *s = opaque;
	int cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (cfd < 0)
		return;
	struct ctl_client *c = xcalloc(1, sizeof *c);
	c->fd = cfd;
	c->serial = ++s->client_serial;
	c->next = s->ctl_clients;
	s->ctl_clients = c;
	vela_loop_add_fd(loop, cfd, EPOLLIN, on_ctl_client, s);
}

/* ------------------------------------------------------------ setup */

static void daemonize(void)
{
	pid_t p = fork();
	if (p < 0)
		exit(1);
	if (p > 0)
		_exit(0);
	setsid();
	p = fork();
	if (p < 0)
		exit(1);
	if (p > 0)
		_exit(0);
	int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (devnull >= 0) {
		dup2(devnull, 0);
		dup2(devnull, 1);
		dup2(devnull, 2);
		close(devnull);
	}
}

static int setup_run_dir(struct sup *s)
{
	int r = vmxsup_run_dir(s->config_path, &s->run_dir);
	if (r < 0)
		return r;
	if ((r = mkdir_p(s->run_dir, 0750)) < 0)
		return r;
	CLEANUP_FREE char *lock = xasprintf("%s/lock", s->run_dir);
	s->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (s->lock_fd < 0)
		return vela_error_errno(errno, "open %s", lock);
	if (flock(s->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		if (errno == EWOULDBLOCK)
			return vela_error(VELA_E_BADSTATE, "%s: the VM is already powered on", s->config_path);
		return vela_error_errno(errno, "lock %s", lock);
	}
	s->locked = true;
	CLEANUP_FREE char *pidf = xasprintf("%s/pid", s->run_dir);
	CLEANUP_FREE char *pidtxt = xasprintf("%d\n", (int)getpid());
	CLEANUP_FREE char *cfgf = xasprintf("%s/config", s->run_dir);
	CLEANUP_FREE char *cfgtxt = xasprintf("%s\n", s->config_path);
	if ((r = write_file_atomic(pidf, pidtxt, strlen(pidtxt))) < 0 ||
	    (r = write_file_atomic(cfgf, cfgtxt, strlen(cfgtxt))) < 0)
		return r;
	CLEANUP_FREE char *ctl = xasprintf("%s/control.sock", s->run_dir);
	CLEANUP_FREE char *con = xasprintf("%s/console.sock", s->run_dir);
	if ((s->ctl_listen_fd = unix_listen(ctl, 16)) < 0)
		return s->ctl_listen_fd;
	if ((s->con_listen_fd = unix_listen(con, 16)) < 0)
		return s->con_listen_fd;
	vela_loop_add_fd(s->loop, s->ctl_listen_fd, EPOLLIN, on_ctl_accept, s);
	vela_loop_add_fd(s->loop, s->con_listen_fd, EPOLLIN, on_con_accept, s);
	return 0;
}

static void sup_free(struct sup *s)
{
	while (s->ctl_clients)
		ctl_client_drop(s, s->ctl_clients);
	while (s->con_clients)
		con_client_drop(s, s->con_clients);
	release_run_dir(s);
	qmp_free(s->qmp);
	if (s->con_fd >= 0) close(s->con_fd);
	if (s->qemu_err_fd >= 0) close(s->qemu_err_fd);
	if (s->ctl_listen_fd >= 0) close(s->ctl_listen_fd);
	if (s->con_listen_fd >= 0) close(s->con_listen_fd);
	if (s->sig_fd >= 0) close(s->sig_fd);
	if (s->inotify_fd >= 0) close(s->inotify_fd);
	if (s->lock_fd >= 0) close(s->lock_fd);
	if (s->ready_fd >= 0) close(s->ready_fd);
	sup_disks_free(s->disks);
	json_decref(s->fingerprint);
	free(s->vmstate);
	free(s->used_state);
	vela_loop_free(s->loop);
	vmx_model_free(s->model);
	vmx_file_free(s->file);
	strbuf_free(&s->qemu_err);
	free(s->ring);
	free(s->config_path);
	free(s->vm_dir);
	free(s->run_dir);
}

static void *remove_thread(void *path)
{
	if (unlink(path) < 0)
		log_warn("remove %s: %s", (char *)path, strerror(errno));
	free(path);
	return NULL;
}

/* Freeing a big file's blocks takes the file system a while (0.4 s for
 * 300 MiB here): not on the way of a resume, nor of the event loop. */
static void remove_in_background(const char *path)
{
	pthread_t t;
	char *p = xstrdup(path);
	if (pthread_create(&t, NULL, remove_thread, p) != 0) {
		remove_thread(p);
		return;
	}
	pthread_detach(t);
}

int vmxsup_main(const struct vmxsup_opts *opts)
{
	struct sup s = { .opts = opts, .lock_fd = -1, .ctl_listen_fd = -1, .con_listen_fd = -1,
			 .sig_fd = -1, .inotify_fd = -1, .ready_fd = opts->ready_fd, .qemu_err_fd = -1, .con_fd = -1,
			 .state = VM_STARTING, .file_lock = PTHREAD_MUTEX_INITIALIZER };
	char real[PATH_MAX];
	int r;

	if (!realpath(opts->config_path, real)) {
		r = vela_error_errno(errno, "%s", opts->config_path);
		report_ready(&s, error_json(r));
		return 1;
	}
	if (opts->daemonize)
		daemonize();
	s.config_path = xstrdup(real);
	s.vm_dir = path_dirname(real);
	s.ring = xcalloc(1, CONSOLE_RING_SIZE);
	s.loop = vela_loop_new();

	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	s.sig_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);

	CLEANUP_FREE char *logpath = xasprintf("%s/vela.log", s.vm_dir);
	if (opts->daemonize)
		vela_log_set_stderr(false);
	if (vela_log_open_file(logpath, 3, 8u << 20) < 0)
		vela_log_set_stderr(true);   /* read-only VM folder: still say something */
	log_info("vela-vmx %s starting for %s (pid %d)", VELA_VERSION, s.config_path, (int)getpid());

	if ((r = setup_run_dir(&s)) < 0)
		goto fail;
	vela_loop_add_fd(s.loop, s.sig_fd, EPOLLIN, on_signal, &s);
	if ((r = vmx_file_load(s.config_path, &s.file)) < 0)
		goto fail;
	if ((r = vmx_model_build(s.file, s.config_path, NULL, NULL, &s.model)) < 0)
		goto fail;
	if ((r = start_vm(&s, s.model->uuid_action)) < 0)
		goto fail;
	report_ready(&s, status_json(&s));
	if (s.used_state)
		remove_in_background(s.used_state);

	r = vela_loop_run(s.loop);
	if (s.qemu_pid > 0) {
		kill(s.qemu_pid, SIGKILL);
		waitpid(s.qemu_pid, NULL, 0);
	}
	log_info("vela-vmx exiting; VM is off");
	int code = s.exit_code;
	sup_free(&s);
	vela_log_close_file();
	return code;
fail:
	log_error("event: power on failed: %s", vela_errmsg());
	{
		json_t *err = error_json(r);
		release_run_dir(&s);
		report_ready(&s, err);
	}
	sup_free(&s);
	vela_log_close_file();
	return 1;
}
