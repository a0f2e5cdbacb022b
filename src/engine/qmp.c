/* qmp.c - QMP client: message parsing, handshake, commands, events. */
#include "common.h"
#include "engine.h"

#include <poll.h>
#include <string.h>

/* QMP lines from QEMU are small; a bigger one means something is wrong. */
#define QMP_MAX_LINE (4u << 20)
#define QMP_MAX_QUEUED_EVENTS 1024

struct event_node {
	struct qmp_msg msg;
	struct event_node *next;
};

struct qmp {
	int fd;
	struct strbuf in;
	int64_t next_id;
	struct event_node *head, *tail;
	size_t n_events;
	bool closed;
};

void qmp_msg_clear(struct qmp_msg *msg)
{
	if (msg->json)
		json_decref(msg->json);
	memset(msg, 0, sizeof *msg);
}

int qmp_parse_message(const char *text, size_t len, struct qmp_msg *out)
{
	json_error_t jerr;
	memset(out, 0, sizeof *out);
	out->id = -1;
	json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!j)
		return vela_error(VELA_E_PROTOCOL, "qmp: malformed JSON: %s", jerr.text);
	if (!json_is_object(j)) {
		json_decref(j);
		return vela_error(VELA_E_PROTOCOL, "qmp: message is not a JSON object");
	}
	out->json = j;
	json_t *id = json_object_get(j, "id");
	if (id && json_is_integer(id))
		out->id = json_integer_value(id);

	json_t *v;
	if ((v = json_object_get(j, "QMP"))) {
		out->kind = QMP_MSG_GREETING;
		out->data = v;
	} else if ((v = json_object_get(j, "return"))) {
		out->kind = QMP_MSG_RETURN;
		out->data = v;
	} else if ((v = json_object_get(j, "error"))) {
		out->kind = QMP_MSG_ERROR;
		json_t *cls = json_object_get(v, "class"), *desc = json_object_get(v, "desc");
		if (!json_is_object(v) || !json_is_string(cls) || !json_is_string(desc)) {
			qmp_msg_clear(out);
			return vela_error(VELA_E_PROTOCOL, "qmp: error reply without class and desc");
		}
		out->err_class = json_string_value(cls);
		out->err_desc = json_string_value(desc);
	} else if ((v = json_object_get(j, "event"))) {
		if (!json_is_string(v)) {
			qmp_msg_clear(out);
			return vela_error(VELA_E_PROTOCOL, "qmp: event name is not a string");
		}
		out->kind = QMP_MSG_EVENT;
		out->event = json_string_value(v);
		out->data = json_object_get(j, "data");
	} else {
		qmp_msg_clear(out);
		return vela_error(VELA_E_PROTOCOL, "qmp: message is neither greeting, return, error nor event");
	}
	return 0;
}

struct qmp *qmp_new(int fd)
{
	struct qmp *q = xcalloc(1, sizeof *q);
	q->fd = fd;
	q->next_id = 1;
	return q;
}

void qmp_free(struct qmp *q)
{
	if (!q)
		return;
	struct qmp_msg m;
	while (qmp_next_event(q, &m))
		qmp_msg_clear(&m);
	strbuf_free(&q->in);
	if (q->fd >= 0)
		close(q->fd);
	free(q);
}

int qmp_fd(const struct qmp *q)
{
	return q->fd;
}

static void queue_event(struct qmp *q, struct qmp_msg *m)
{
	if (q->n_events >= QMP_MAX_QUEUED_EVENTS) {
		/* A flood of events nobody reads: drop the oldest. */
		struct qmp_msg old;
		qmp_next_event(q, &old);
		qmp_msg_clear(&old);
	}
	struct event_node *n = xcalloc(1, sizeof *n);
	n->msg = *m;
	memset(m, 0, sizeof *m);
	if (q->tail)
		q->tail->next = n;
	else
		q->head = n;
	q->tail = n;
	q->n_events++;
}

bool qmp_next_event(struct qmp *q, struct qmp_msg *out)
{
	struct event_node *n = q->head;
	if (!n)
		return false;
	q->head = n->next;
	if (!q->head)
		q->tail = NULL;
	q->n_events--;
	*out = n->msg;
	free(n);
	return true;
}

/* Pull one complete line out of the input buffer.  1 = got one, 0 = none. */
static int take_line(struct qmp *q, struct qmp_msg *out)
{
	for (;;) {
		char *nl = q->in.data ? memchr(q->in.data, '\n', q->in.len) : NULL;
		if (!nl) {
			if (q->in.len > QMP_MAX_LINE)
				return vela_error(VELA_E_PROTOCOL, "qmp: line longer than %u bytes", QMP_MAX_LINE);
			return 0;
		}
		size_t n = (size_t)(nl - q->in.data) + 1;
		int r = 1;
		bool blank = true;
		for (size_t i = 0; i < n; i++)
			if (q->in.data[i] != ' ' && q->in.data[i] != '\r' && q->in.data[i] != '\n')
				blank = false;
		if (!blank)
			r = qmp_parse_message(q->in.data, n, out);
		memmove(q->in.data, q->in.data + n, q->in.len - n);
		q->in.len -= n;
		q->in.data[q->in.len] = '\0';
		if (blank)
			continue;
		return r < 0 ? r : 1;
	}
}

/* Read once (waiting up to timeout_ms; 0 = don't wait). */
static int fill(struct qmp *q, int timeout_ms)
{
	struct pollfd p = { .fd = q->fd, .events = POLLIN };
	int pr = poll(&p, 1, timeout_ms);
	if (pr < 0)
		return errno == EINTR ? 0 : vela_error_errno(errno, "qmp: poll");
	if (pr == 0)
		return 0;
	char buf[16384];
	ssize_t n = read(q->fd, buf, sizeof buf);
	if (n < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return 0;
		return vela_error_errno(errno, "qmp: read");
	}
	if (n == 0) {
		q->closed = true;
		return vela_error(VELA_E_CONNRESET, "qmp: QEMU closed the monitor connection");
	}
	strbuf_append(&q->in, buf, (size_t)n);
	return 1;
}

/* Wait for the next non-event message; events are queued. */
static int wait_message(struct qmp *q, struct qmp_msg *out, int timeout_ms)
{
	int64_t deadline = time_mono_ms() + timeout_ms;
	for (;;) {
		int r = take_line(q, out);
		if (r < 0)
			return r;
		if (r == 1) {
			if (out->kind == QMP_MSG_EVENT) {
				queue_event(q, out);
				continue;
			}
			return 0;
		}
		int64_t left = deadline - time_mono_ms();
		if (left <= 0)
			return vela_error(VELA_E_TIMEOUT, "qmp: no answer from QEMU within %d ms", timeout_ms);
		r = fill(q, (int)left);
		if (r < 0)
			return r;
	}
}

int qmp_handshake(struct qmp *q, int timeout_ms)
{
	struct qmp_msg m;
	int r = wait_message(q, &m, timeout_ms);
	if (r < 0)
		return vela_error_context(r, "qmp_handshake");
	bool greeting = m.kind == QMP_MSG_GREETING;
	qmp_msg_clear(&m);
	if (!greeting)
		return vela_error(VELA_E_PROTOCOL, "qmp_handshake: expected the QMP greeting first");
	return qmp_execute(q, "qmp_capabilities", NULL, NULL, timeout_ms);
}

int qmp_execute(struct qmp *q, const char *command, json_t *args, json_t **ret, int timeout_ms)
{
	int64_t id = q->next_id++;
	json_t *req = json_pack("{s:s, s:I}", "execute", command, "id", (json_int_t)id);
	if (args)
		json_object_set(req, "arguments", args);
	char *text = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	if (!text)
		return vela_error(VELA_E_NOMEM, "qmp %s: cannot encode the request", command);
	struct strbuf line = { 0 };
	strbuf_puts(&line, text);
	strbuf_puts(&line, "\n");
	free(text);
	int r = send_all(q->fd, line.data, line.len);
	strbuf_free(&line);
	if (r < 0)
		return vela_error_context(r, "qmp %s", command);

	for (;;) {
		struct qmp_msg m;
		r = wait_message(q, &m, timeout_ms);
		if (r < 0)
			return vela_error_context(r, "qmp %s", command);
		if (m.id != id) {
			/* A late answer to an earlier command that timed out. */
			qmp_msg_clear(&m);
			continue;
		}
		if (m.kind == QMP_MSG_ERROR) {
			r = vela_error(VELA_E_QMP, "qmp %s: %s: %s", command, m.err_class, m.err_desc);
			qmp_msg_clear(&m);
			return r;
		}
		if (m.kind != QMP_MSG_RETURN) {
			qmp_msg_clear(&m);
			return vela_error(VELA_E_PROTOCOL, "qmp %s: unexpected message", command);
		}
		if (ret)
			*ret = json_incref(m.data);
		qmp_msg_clear(&m);
		return 0;
	}
}

int qmp_read_events(struct qmp *q)
{
	int r = fill(q, 0);
	if (r < 0)
		return r;
	for (;;) {
		struct qmp_msg m;
		r = take_line(q, &m);
		if (r <= 0)
			return r;
		if (m.kind == QMP_MSG_EVENT)
			queue_event(q, &m);
		else
			qmp_msg_clear(&m);   /* stray answer to a timed-out command */
	}
}
