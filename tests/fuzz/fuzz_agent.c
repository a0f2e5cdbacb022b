/* libFuzzer target: what a hostile guest can send on the agent channel.
 * The bytes go through the protocol's framing and parser, through
 * vela-guestd's settings parser, and into the supervisor's real channel
 * code (guest.c) over a socketpair, with a request of ours pending so
 * replies are matched too. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common.h"
#include "agent.h"
#include "guest.h"

static void check_line(const char *line, size_t len, void *opaque)
{
	(void)opaque;
	if (len > AGENT_LINE_MAX || strlen(line) > len)
		__builtin_trap();
	struct agent_msg m;
	if (agent_msg_parse(line, len, &m) == 0) {
		if (m.kind != AGENT_MSG_REPLY && (!m.cmd || strlen(m.cmd) > AGENT_CMD_MAX))
			__builtin_trap();
		if (m.id > AGENT_ID_MAX)
			__builtin_trap();
		agent_msg_clear(&m);
	}
}

static void on_reply(void *opaque, uint64_t tag, int r, json_t *reply)
{
	(void)opaque;
	(void)tag;
	if (r == 0 && !json_is_object(reply))
		__builtin_trap();
}

static void stop(struct vela_loop *loop, uint64_t id, void *opaque)
{
	(void)id;
	(void)opaque;
	vela_loop_stop(loop);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool quiet;
	if (!quiet) {
		vela_log_set_level(VELA_LOG_ERROR);
		quiet = true;
	}
	struct agent_lines l = { 0 };
	agent_lines_feed(&l, (const char *)data, size, check_line, NULL);
	agent_lines_free(&l);

	struct agent_conf conf;
	if (agent_conf_parse((const char *)data, size, "fuzz.conf", &conf) == 0) {
		if (conf.heartbeat_interval_s < 1 || conf.heartbeat_interval_s > 60)
			__builtin_trap();
		agent_conf_free(&conf);
	}

	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return 0;
	struct vela_loop *loop = vela_loop_new();
	struct sup_guest *g = NULL;
	json_t *seed = json_pack("{s:s}", "guestinfo.seed", "1");
	struct sup_guest_opts o = { .machine_id = "fuzz", .heartbeat_timeout_s = 60, .guestinfo = seed };
	if (sup_guest_new(loop, sv[0], &o, &g) < 0)
		abort();
	json_decref(seed);
	static const char hello[] = "{\"cmd\":\"hello\",\"version\":1,\"agent\":\"fuzz\"}\n";
	if (write(sv[1], hello, sizeof hello - 1) < 0)
		abort();
	vela_loop_add_timer(loop, 1, stop, NULL);
	vela_loop_run(loop);
	sup_guest_request(g, "ping", NULL, 60000, on_reply, NULL, 1);
	fd_set_nonblock(sv[1], true);
	size_t at = 0;
	for (int rounds = 0; at < size && rounds < 64; rounds++) {
		ssize_t n = write(sv[1], data + at, size - at);
		if (n > 0)
			at += (size_t)n;
		vela_loop_add_timer(loop, 1, stop, NULL);
		vela_loop_run(loop);
		/* Drain what the supervisor answered, as QEMU would. */
		char sink[65536];
		while (read(sv[1], sink, sizeof sink) > 0)
			;
	}
	json_t *st = sup_guest_status(g);
	json_t *gi = sup_guest_guestinfo(g);
	if (json_object_size(json_object_get(gi, "values")) > AGENT_GUESTINFO_MAX + 1)
		__builtin_trap();
	json_decref(st);
	json_decref(gi);
	sup_guest_free(g);
	close(sv[1]);
	vela_loop_free(loop);
	return 0;
}
