/* guest.c - the host end of the guest-agent channel. */
#include "common.h"
#include "agent.h"
#include "guest.h"

#include <string.h>
#include <sys/epoll.h>
#include <time.h>

#define READ_BUDGET (64u * 1024u)         /* bytes read per wake-up */
#define MSG_RATE_MAX 1000u                 /* messages per second before we stop listening */
#define FLOOD_PAUSE_MS 1000
#define OUT_MAX (256u * 1024u)             /* unsent bytes to the agent */
#define MAX_PENDING 64
#define SYNC_TIME_INTERVAL_MS 60000

enum hb_state { HB_NONE, HB_OK, HB_LOST };

struct pending {
	uint64_t id, tag;
	int64_t deadline_ms;
	char cmd[AGENT_CMD_MAX + 1];
	sup_guest_reply_cb cb;
	void *opaque;
	struct pending *next;
};

struct sup_guest {
	struct vela_loop *loop;
	int fd;
	bool reading;                 /* fd is in the loop for EPOLLIN */
	struct agent_lines in;
	struct strbuf out;
	char *machine_id;
	bool machine_id_blocked, sync_time;
	unsigned hb_timeout_s;
	json_t *info;                 /* the agent's last hello, or NULL */
	uint64_t net_rx, net_tx;      /* bytes the guest's interfaces received and sent (last beat) */
	bool net_known;
	json_t *guestinfo;            /* key -> value */
	enum hb_state hb;
	bool agent_stopped;           /* it said "stopping" */
	bool asking_info;             /* an "info" request is out */
	bool resumed;                 /* set the clock as soon as the agent answers */
	bool vm_running;
	int64_t last_heard_ms;
	uint64_t next_id;
	struct pending *pending;
	unsigned n_pending;
	uint64_t timer;
	int64_t rate_window_ms;
	unsigned rate_count;
	uint64_t bad_messages, flood_pauses;
	int64_t bad_logged_ms, flood_logged_ms, next_sync_ms;
	uint64_t overlong_seen;
};

static void on_readable(struct vela_loop *loop, int fd, uint32_t events, void *opaque);
static int request_raw(struct sup_guest *g, const char *cmd, json_t *args, int timeout_ms, sup_guest_reply_cb cb,
		       void *opaque, uint64_t tag);

static void set_events(struct sup_guest *g)
{
	uint32_t ev = (g->reading ? EPOLLIN : 0) | (g->out.len ? EPOLLOUT : 0);
	vela_loop_mod_fd(g->loop, g->fd, ev);
}

static void flush_out(struct sup_guest *g)
{
	while (g->out.len > 0) {
		ssize_t n = write(g->fd, g->out.data, g->out.len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				strbuf_reset(&g->out);   /* QEMU is gone; SIGCHLD tells the rest */
			break;
		}
		memmove(g->out.data, g->out.data + n, g->out.len - (size_t)n);
		g->out.len -= (size_t)n;
	}
	set_events(g);
}

static int send_msg(struct sup_guest *g, json_t *j)
{
	char *line = agent_encode(j);
	json_decref(j);
	if (!line)
		return vela_error(VELA_E_TOOBIG, "agent message longer than %u bytes", AGENT_LINE_MAX);
	size_t n = strlen(line);
	if (g->out.len + n > OUT_MAX) {
		free(line);
		/* The guest does not read its port (no agent, or a stuck one). */
		return vela_error(VELA_E_NOAGENT, "the guest agent does not read its channel");
	}
	strbuf_append(&g->out, line, n);
	free(line);
	flush_out(g);
	return 0;
}

static void reply_ok(struct sup_guest *g, uint64_t id, json_t *fields)
{
	json_t *j = fields ? fields : json_object();
	json_object_set_new(j, "re", json_integer((json_int_t)id));
	json_object_set_new(j, "ok", json_true());
	send_msg(g, j);
}

static void reply_err(struct sup_guest *g, uint64_t id, const char *text)
{
	send_msg(g, json_pack("{s:I, s:b, s:s}", "re", (json_int_t)id, "ok", 0, "error", text));
}

static void pending_finish(struct sup_guest *g, struct pending *p, int r, json_t *reply)
{
	for (struct pending **pp = &g->pending; *pp; pp = &(*pp)->next) {
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	}
	g->n_pending--;
	p->cb(p->opaque, p->tag, r, reply);
	free(p);
}

/* ------------------------------------------------------------ heartbeat */

static void heard(struct sup_guest *g)
{
	g->last_heard_ms = time_mono_ms();
	g->agent_stopped = false;
	if (g->hb == HB_LOST)
		log_info("event: heartbeat recovered: the guest agent answers again");
	if (g->hb != HB_OK && g->info)
		g->hb = HB_OK;
}

static void sync_clock(struct sup_guest *g, const char *reason);

static void on_timer(struct vela_loop *loop, uint64_t id, void *opaque)
{
	(void)id;
	struct sup_guest *g = opaque;
	int64_t now = time_mono_ms();
	if (g->vm_running && g->hb == HB_OK && now - g->last_heard_ms > (int64_t)g->hb_timeout_s * 1000) {
		g->hb = HB_LOST;
		log_warn("event: heartbeat lost: nothing from the guest agent for %u s", g->hb_timeout_s);
	}
	for (struct pending *p = g->pending, *next; p; p = next) {
		next = p->next;
		if (now > p->deadline_ms) {
			int r = vela_error(VELA_E_TIMEOUT, "the guest agent did not answer \"%s\" in time", p->cmd);
			pending_finish(g, p, r, NULL);
		}
	}
	if (g->sync_time && g->vm_running && g->hb == HB_OK && now >= g->next_sync_ms)
		sync_clock(g, "periodic");
	g->timer = vela_loop_add_timer(loop, 1000, on_timer, g);
}

static void ignore_reply(void *opaque, uint64_t tag, int r, json_t *reply)
{
	(void)opaque;
	(void)tag;
	if (r < 0)
		log_warn("guest clock not set: %s", vela_errmsg());
	else if (json_integer_value(json_object_get(reply, "offset_ms")) > 1000 ||
		 json_integer_value(json_object_get(reply, "offset_ms")) < -1000)
		log_info("event: guest clock corrected by %lld ms",
			 (long long)json_integer_value(json_object_get(reply, "offset_ms")));
}

static void sync_clock(struct sup_guest *g, const char *reason)
{
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	g->next_sync_ms = time_mono_ms() + SYNC_TIME_INTERVAL_MS;
	json_t *args = json_pack("{s:I, s:s}", "epoch_ns", (json_int_t)now.tv_sec * 1000000000 + now.tv_nsec,
				 "reason", reason);
	if (sup_guest_request(g, "time-set", args, 10000, ignore_reply, g, 0) < 0)
		log_warn("guest clock not set (%s): %s", reason, vela_errmsg());
}

/* ------------------------------------------------- the agent's requests */

static void guest_request(struct sup_guest *g, struct agent_msg *m)
{
	const char *cmd = m->cmd;
	if (strcmp(cmd, "machine-id") == 0) {
		if (g->machine_id_blocked)
			reply_err(g, m->id, "machine.id is not available to this guest "
					    "(isolation.tools.machine.id.get.disable)");
		else if (!g->machine_id)
			reply_err(g, m->id, "this VM has no machine.id");
		else
			reply_ok(g, m->id, json_pack("{s:s}", "value", g->machine_id));
	} else if (strcmp(cmd, "guestinfo-get") == 0) {
		CLEANUP_FREE char *key = NULL;
		json_t *v;
		if (agent_guestinfo_key(json_string_value(json_object_get(m->json, "key")), &key) < 0)
			reply_err(g, m->id, vela_errmsg());
		else if (!(v = json_object_get(g->guestinfo, key)))
			reply_err(g, m->id, "no such guestinfo key");
		else
			reply_ok(g, m->id, json_pack("{s:s, s:O}", "key", key, "value", v));
	} else if (strcmp(cmd, "guestinfo-set") == 0) {
		const char *value = json_string_value(json_object_get(m->json, "value"));
		if (sup_guest_guestinfo_set(g, json_string_value(json_object_get(m->json, "key")), value, "the guest") < 0)
			reply_err(g, m->id, vela_errmsg());
		else
			reply_ok(g, m->id, NULL);
	} else if (strcmp(cmd, "guestinfo-list") == 0) {
		reply_ok(g, m->id, json_pack("{s:O}", "values", g->guestinfo));
	} else {
		reply_err(g, m->id, "unknown command");
	}
}

static void guest_notice(struct sup_guest *g, struct agent_msg *m);

/* An agent that beats but never said hello to us (the VM was resumed: it
 * said hello to the supervisor before the suspend) is asked who it is. */
static void on_info_reply(void *opaque, uint64_t tag, int r, json_t *reply)
{
	(void)tag;
	struct sup_guest *g = opaque;
	g->asking_info = false;
	if (r < 0 || !json_is_object(reply))
		return;
	json_t *hello = json_deep_copy(reply);
	json_object_del(hello, "re");
	json_object_del(hello, "ok");
	json_object_set_new(hello, "cmd", json_string("hello"));
	struct agent_msg m = { .kind = AGENT_MSG_NOTICE, .json = hello, .cmd = "hello" };
	guest_notice(g, &m);
	json_decref(hello);
}

static void guest_notice(struct sup_guest *g, struct agent_msg *m)
{
	if (strcmp(m->cmd, "beat") == 0 && !g->info && !g->asking_info && !g->agent_stopped) {
		g->asking_info = true;
		if (request_raw(g, "info", NULL, 10000, on_info_reply, g, 0) < 0)
			g->asking_info = false;
		return;
	}
	if (strcmp(m->cmd, "hello") == 0) {
		json_t *v = json_object_get(m->json, "version");
		bool first = !g->info;
		json_t *info = json_deep_copy(m->json);
		json_object_del(info, "cmd");
		/* Keep what we show bounded whatever the agent sends. */
		char *text = json_dumps(info, JSON_COMPACT);
		size_t len = text ? strlen(text) : 0;
		free(text);
		if (len > 16384) {
			json_decref(info);
			info = json_pack("{s:s}", "error", "the agent's information was too large");
		}
		json_decref(g->info);
		g->info = info;
		if (first || g->hb != HB_OK) {
			log_info("event: guest agent running: %s, %s, kernel %s, protocol %lld",
				 json_string_value(json_object_get(info, "agent")) ?: "?",
				 json_string_value(json_object_get(info, "os")) ?: "?",
				 json_string_value(json_object_get(info, "kernel")) ?: "?", (long long)json_integer_value(v));
			heard(g);
			g->hb = HB_OK;
			if (g->resumed)
				sync_clock(g, "resume");
			else if (g->sync_time)
				sync_clock(g, "agent start");
			g->resumed = false;
		}
	} else if (strcmp(m->cmd, "beat") == 0) {
		/* The guest's network counters, for the host's rates: a bad
		 * "net" is counted as a bad message and ignored. */
		json_t *net = json_object_get(m->json, "net");
		uint64_t rx, tx;
		if (net && agent_net_counters(net, &rx, &tx) == 0) {
			g->net_rx = rx;
			g->net_tx = tx;
			g->net_known = true;
		} else if (net) {
			g->bad_messages++;
		}
	} else if (strcmp(m->cmd, "shutting-down") == 0) {
		const char *mode = json_string_value(json_object_get(m->json, "mode"));
		log_info("event: the guest is shutting down (%s)", mode && strcmp(mode, "reboot") == 0 ? "reboot" : "halt");
	} else if (strcmp(m->cmd, "stopping") == 0) {
		log_info("event: the guest agent stopped");
		g->agent_stopped = true;
		g->hb = HB_NONE;
		json_decref(g->info);
		g->info = NULL;
	}
	/* Unknown notices come from newer agents: ignored. */
}

static void count_bad(struct sup_guest *g, const char *what)
{
	g->bad_messages++;
	int64_t now = time_mono_ms();
	if (now - g->bad_logged_ms > 60000) {
		log_warn("guest agent: %s (%" PRIu64 " bad messages so far)", what, g->bad_messages);
		g->bad_logged_ms = now;
	}
}

static void on_line(const char *line, size_t len, void *opaque)
{
	struct sup_guest *g = opaque;
	struct agent_msg m;
	g->rate_count++;
	if (agent_msg_parse(line, len, &m) < 0) {
		count_bad(g, vela_errmsg());
		return;
	}
	if (m.kind == AGENT_MSG_NOTICE && strcmp(m.cmd, "stopping") != 0)
		heard(g);
	else if (m.kind != AGENT_MSG_NOTICE && g->info)
		heard(g);
	switch (m.kind) {
	case AGENT_MSG_REPLY: {
		struct pending *p = g->pending;
		while (p && p->id != m.id)
			p = p->next;
		if (!p) {
			count_bad(g, "a reply to no request");
			break;
		}
		int r = 0;
		if (!m.ok)
			r = vela_error(VELA_E_NOAGENT, "the guest agent refused \"%s\": %.512s", p->cmd, m.error);
		pending_finish(g, p, r, m.json);
		break;
	}
	case AGENT_MSG_REQUEST:
		guest_request(g, &m);
		break;
	case AGENT_MSG_NOTICE:
		guest_notice(g, &m);
		break;
	}
	agent_msg_clear(&m);
}

static void resume_reading(struct vela_loop *loop, uint64_t id, void *opaque)
{
	(void)loop;
	(void)id;
	struct sup_guest *g = opaque;
	g->reading = true;
	set_events(g);
}

static void on_readable(struct vela_loop *loop, int fd, uint32_t events, void *opaque)
{
	struct sup_guest *g = opaque;
	if (events & EPOLLOUT)
		flush_out(g);
	if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)) || !g->reading)
		return;
	int64_t now = time_mono_ms();
	if (now - g->rate_window_ms >= 1000) {
		g->rate_window_ms = now;
		g->rate_count = 0;
	}
	char buf[16384];
	size_t got = 0;
	while (got < READ_BUDGET && g->rate_count < MSG_RATE_MAX) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n == 0 || errno != EAGAIN) {
				/* QEMU closed its end: it is exiting. */
				g->reading = false;
				set_events(g);
			}
			break;
		}
		got += (size_t)n;
		agent_lines_feed(&g->in, buf, (size_t)n, on_line, g);
	}
	if (g->in.overlong != g->overlong_seen) {
		g->overlong_seen = g->in.overlong;
		count_bad(g, "a line longer than the protocol's limit was dropped");
	}
	if (g->rate_count >= MSG_RATE_MAX && g->reading) {
		/* A flood: stop reading for a while.  QEMU stops taking the
		 * guest's writes when we do, so only the guest waits. */
		g->flood_pauses++;
		if (now - g->flood_logged_ms > 60000) {
			log_warn("guest agent: more than %u messages a second; reading paused for %d ms (%" PRIu64 " times so far)",
				 MSG_RATE_MAX, FLOOD_PAUSE_MS, g->flood_pauses);
			g->flood_logged_ms = now;
		}
		g->reading = false;
		set_events(g);
		vela_loop_add_timer(loop, FLOOD_PAUSE_MS, resume_reading, g);
	}
}

/* --------------------------------------------------------------- public */

int sup_guest_new(struct vela_loop *loop, int fd, const struct sup_guest_opts *o, struct sup_guest **out)
{
	struct sup_guest *g = xcalloc(1, sizeof *g);
	g->loop = loop;
	g->fd = fd;
	g->machine_id = o->machine_id ? xstrdup(o->machine_id) : NULL;
	g->machine_id_blocked = o->machine_id_blocked;
	g->hb_timeout_s = o->heartbeat_timeout_s ? o->heartbeat_timeout_s : 60;
	g->sync_time = o->sync_time;
	g->resumed = o->resumed;
	g->guestinfo = o->guestinfo ? json_deep_copy(o->guestinfo) : json_object();
	g->reading = true;
	g->vm_running = true;
	fd_set_nonblock(fd, true);
	if (vela_loop_add_fd(loop, fd, EPOLLIN, on_readable, g) < 0) {
		json_decref(g->guestinfo);
		free(g->machine_id);
		free(g);
		return vela_error(VELA_E_SYSTEM, "guest agent channel: cannot watch it");
	}
	g->timer = vela_loop_add_timer(loop, 1000, on_timer, g);
	*out = g;
	return 0;
}

void sup_guest_free(struct sup_guest *g)
{
	if (!g)
		return;
	while (g->pending) {
		int r = vela_error(VELA_E_NOAGENT, "the VM powered off before the guest agent answered \"%s\"",
				   g->pending->cmd);
		pending_finish(g, g->pending, r, NULL);
	}
	if (g->timer)
		vela_loop_del_timer(g->loop, g->timer);
	vela_loop_del_fd(g->loop, g->fd);
	close(g->fd);
	agent_lines_free(&g->in);
	strbuf_free(&g->out);
	json_decref(g->info);
	json_decref(g->guestinfo);
	free(g->machine_id);
	free(g);
}

bool sup_guest_ready(const struct sup_guest *g)
{
	return g && g->info && g->hb == HB_OK;
}

int sup_guest_request(struct sup_guest *g, const char *cmd, json_t *args, int timeout_ms, sup_guest_reply_cb cb,
		      void *opaque, uint64_t tag)
{
	if (!sup_guest_ready(g)) {
		json_decref(args);
		return vela_error(VELA_E_NOAGENT, "%s: no guest agent is running in the VM%s", cmd,
				  g && g->hb == HB_LOST ? " (its heartbeat is lost)" : "");
	}
	return request_raw(g, cmd, args, timeout_ms, cb, opaque, tag);
}

static int request_raw(struct sup_guest *g, const char *cmd, json_t *args, int timeout_ms, sup_guest_reply_cb cb,
		       void *opaque, uint64_t tag)
{
	if (g->n_pending >= MAX_PENDING) {
		json_decref(args);
		return vela_error(VELA_E_BUSY, "%s: %u requests to the guest agent are still unanswered", cmd, MAX_PENDING);
	}
	json_t *j = args ? args : json_object();
	uint64_t id = ++g->next_id;
	json_object_set_new(j, "id", json_integer((json_int_t)id));
	json_object_set_new(j, "cmd", json_string(cmd));
	int r = send_msg(g, j);
	if (r < 0)
		return vela_error_context(r, "%s", cmd);
	struct pending *p = xcalloc(1, sizeof *p);
	p->id = id;
	p->tag = tag;
	p->cb = cb;
	p->opaque = opaque;
	p->deadline_ms = time_mono_ms() + timeout_ms;
	snprintf(p->cmd, sizeof p->cmd, "%s", cmd);
	p->next = g->pending;
	g->pending = p;
	g->n_pending++;
	return 0;
}

void sup_guest_vm_running(struct sup_guest *g, bool running, const char *why)
{
	if (!g)
		return;
	bool was = g->vm_running;
	g->vm_running = running;
	if (running && !was) {
		/* Time stood still for the guest: no beats were due. */
		g->last_heard_ms = time_mono_ms();
		if (why && sup_guest_ready(g))
			sync_clock(g, why);
	}
}

json_t *sup_guest_status(const struct sup_guest *g)
{
	if (!g)
		return json_pack("{s:s, s:s}", "agent", "not running", "heartbeat", "none");
	const char *agent = g->info && g->hb == HB_OK ? "running" : g->agent_stopped ? "stopped" : "not running";
	const char *hb = g->hb == HB_OK ? "ok" : g->hb == HB_LOST ? "lost" : "none";
	json_t *j = json_pack("{s:s, s:s}", "agent", agent, "heartbeat", hb);
	if (g->last_heard_ms)
		json_object_set_new(j, "last_heard_s", json_integer((time_mono_ms() - g->last_heard_ms) / 1000));
	if (g->info)
		json_object_set(j, "info", g->info);
	if (g->net_known && g->hb == HB_OK)
		json_object_set_new(j, "net", json_pack("{s:I, s:I}", "rx_bytes", (json_int_t)g->net_rx, "tx_bytes",
							(json_int_t)g->net_tx));
	if (g->bad_messages)
		json_object_set_new(j, "bad_messages", json_integer((json_int_t)g->bad_messages));
	if (g->flood_pauses)
		json_object_set_new(j, "flood_pauses", json_integer((json_int_t)g->flood_pauses));
	return j;
}

json_t *sup_guest_guestinfo(const struct sup_guest *g)
{
	return g ? json_pack("{s:O}", "values", g->guestinfo) : json_pack("{s:o}", "values", json_object());
}

int sup_guest_guestinfo_set(struct sup_guest *g, const char *key, const char *value, const char *who)
{
	CLEANUP_FREE char *full = NULL;
	int r = agent_guestinfo_key(key, &full);
	if (r < 0)
		return r;
	if (!value) {
		json_object_del(g->guestinfo, full);
		log_info("guestinfo %s removed by %s", full, who);
		return 0;
	}
	if ((r = agent_guestinfo_value_check(value)) < 0)
		return r;
	if (!json_object_get(g->guestinfo, full) && json_object_size(g->guestinfo) >= AGENT_GUESTINFO_MAX)
		return vela_error(VELA_E_LIMIT, "guestinfo: at most %u keys", AGENT_GUESTINFO_MAX);
	json_t *v = json_string(value);
	if (!v)
		return vela_error(VELA_E_INVAL, "guestinfo: the value of %s is not valid UTF-8", full);
	json_object_set_new(g->guestinfo, full, v);
	log_debug("guestinfo %s set by %s", full, who);
	return 0;
}
