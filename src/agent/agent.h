/*
 * agent.h - the guest-agent protocol, shared by vela-guestd (inside the
 * guest) and the supervisor (on the host).  docs/guest-agent-protocol.md is
 * the full description; in short:
 *
 *  - transport: the virtio-serial port named AGENT_PORT_NAME;
 *  - one JSON object per line (LF), at most AGENT_LINE_MAX bytes;
 *  - a request carries "id" (a number) and "cmd"; the other side answers
 *    with a reply {"re": id, "ok": true, ...} or {"re": id, "ok": false,
 *    "error": "text"};
 *  - a notice has "cmd" and no "id", and gets no reply.
 *
 * Either side may send requests.  Nothing here trusts the other side: every
 * message is bounded and validated before use.
 */
#ifndef VELA_AGENT_H
#define VELA_AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define AGENT_PROTOCOL_VERSION 1
#define AGENT_PORT_NAME "org.vela.guestd.0"
#define AGENT_LINE_MAX 65536u
#define AGENT_CMD_MAX 32u
#define AGENT_KEY_MAX 128u            /* guestinfo key, with its "guestinfo." prefix */
#define AGENT_VALUE_MAX 4096u         /* guestinfo value */
#define AGENT_GUESTINFO_MAX 256u      /* guestinfo keys kept per VM */
#define AGENT_ID_MAX 9007199254740991ull  /* 2^53 - 1: exact in every JSON reader */
#define AGENT_MAX_NICS 16u            /* interfaces counted in a beat's "net" */

/*
 * Bounded line splitter.  Feed it bytes as they come; it calls line_cb for
 * each complete line (without the LF, NUL-terminated).  A line longer than
 * AGENT_LINE_MAX is dropped whole (up to its LF) and counted in overlong.
 */
struct agent_lines {
	char *buf;
	size_t len;
	bool discarding;
	uint64_t overlong;
};
typedef void (*agent_line_cb)(const char *line, size_t len, void *opaque);
void agent_lines_feed(struct agent_lines *l, const char *data, size_t n, agent_line_cb line_cb, void *opaque);
void agent_lines_free(struct agent_lines *l);

enum agent_msg_kind { AGENT_MSG_REQUEST, AGENT_MSG_REPLY, AGENT_MSG_NOTICE };

struct agent_msg {
	enum agent_msg_kind kind;
	json_t *json;        /* the whole object (owned) */
	const char *cmd;     /* request, notice */
	uint64_t id;         /* request: "id"; reply: "re" */
	bool ok;             /* reply */
	const char *error;   /* reply with ok = false */
};

/* Parse and validate one line.  Anything malformed: -VELA_E_PROTOCOL with
 * the reason; out is then empty. */
int agent_msg_parse(const char *line, size_t len, struct agent_msg *out);
void agent_msg_clear(struct agent_msg *m);

/* Encode a message as one line (with the LF); caller frees.  NULL when j
 * would not fit in AGENT_LINE_MAX. */
char *agent_encode(json_t *j);

/*
 * guestinfo keys: "guestinfo." followed by 1-118 of [A-Za-z0-9._-].  A key
 * given without the prefix gets it.  *out (caller frees) is the full key.
 */
int agent_guestinfo_key(const char *key, char **out);
/* Values: at most AGENT_VALUE_MAX bytes, no NUL. */
int agent_guestinfo_value_check(const char *value);

/* A beat's "net": {IFNAME: [rx_bytes, tx_bytes]} with at most
 * AGENT_MAX_NICS names of 1-15 bytes and counts from 0 to 2^53-1; the
 * sums over the interfaces in *rx, *tx. */
int agent_net_counters(json_t *net, uint64_t *rx, uint64_t *tx);


/* --------------------------------------------- vela-guestd's own settings */

/*
 * /etc/vela-guestd.conf: "key = value" lines, '#' comments.  Commands are
 * run with /bin/sh -c.  Unknown keys and bad numbers are errors (with the
 * line), so a typo never silently disables a pre-freeze script.
 */
struct agent_conf {
	char *pre_halt, *pre_reboot;      /* run before a soft halt / reboot */
	char *pre_freeze, *post_thaw;     /* around a quiesce */
	char *post_resume;                /* after the clock was set at resume/revert */
	char *halt_command, *reboot_command;  /* NULL: systemctl when systemd runs, else poweroff/reboot */
	unsigned heartbeat_interval_s;    /* 1-60, default 1 */
	unsigned freeze_timeout_s;        /* thaw by itself after this, 1-600, default 60 */
	unsigned command_timeout_s;       /* a script running longer is killed, 1-3600, default 60 */
};
int agent_conf_parse(const char *text, size_t len, const char *name, struct agent_conf *out);
void agent_conf_free(struct agent_conf *c);

#endif /* VELA_AGENT_H */
