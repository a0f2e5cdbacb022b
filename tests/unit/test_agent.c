/* Unit tests: the guest-agent protocol (src/agent) and the suspended-state
 * file's trailer (src/vmx-sup/vmstate.c, compiled in). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <string.h>

#include "common.h"
#include "agent.h"
#include "vmstate.h"

struct got {
	char lines[8][128];
	size_t n;
};

static void collect(const char *line, size_t len, void *opaque)
{
	struct got *g = opaque;
	assert_int_equal(strlen(line), len);
	if (g->n < 8)
		snprintf(g->lines[g->n++], sizeof g->lines[0], "%s", line);
}

static void lines_split_join_and_drop_overlong(void **s)
{
	(void)s;
	struct agent_lines l = { 0 };
	struct got g = { 0 };
	agent_lines_feed(&l, "ab", 2, collect, &g);
	assert_int_equal(g.n, 0);
	agent_lines_feed(&l, "c\nd\n\n", 5, collect, &g);   /* empty lines are skipped */
	assert_int_equal(g.n, 2);
	assert_string_equal(g.lines[0], "abc");
	assert_string_equal(g.lines[1], "d");
	/* A line over the limit goes whole, up to its LF; the next one is fine. */
	char *big = xcalloc(1, AGENT_LINE_MAX + 10);
	memset(big, 'x', AGENT_LINE_MAX + 9);
	agent_lines_feed(&l, big, AGENT_LINE_MAX + 9, collect, &g);
	agent_lines_feed(&l, "tail\nok\n", 8, collect, &g);
	assert_int_equal(l.overlong, 1);
	assert_int_equal(g.n, 3);
	assert_string_equal(g.lines[2], "ok");
	free(big);
	agent_lines_free(&l);
}

static void messages_are_validated(void **s)
{
	(void)s;
	struct agent_msg m;
	const char *r1 = "{\"id\":7,\"cmd\":\"machine-id\"}";
	assert_int_equal(agent_msg_parse(r1, strlen(r1), &m), 0);
	assert_int_equal(m.kind, AGENT_MSG_REQUEST);
	assert_int_equal(m.id, 7);
	assert_string_equal(m.cmd, "machine-id");
	agent_msg_clear(&m);
	const char *r2 = "{\"re\":7,\"ok\":false,\"error\":\"no\"}";
	assert_int_equal(agent_msg_parse(r2, strlen(r2), &m), 0);
	assert_int_equal(m.kind, AGENT_MSG_REPLY);
	assert_false(m.ok);
	assert_string_equal(m.error, "no");
	agent_msg_clear(&m);
	const char *r3 = "{\"cmd\":\"beat\",\"seq\":1}";
	assert_int_equal(agent_msg_parse(r3, strlen(r3), &m), 0);
	assert_int_equal(m.kind, AGENT_MSG_NOTICE);
	agent_msg_clear(&m);
	static const char *const bad[] = {
		"", "not json", "[1]", "{}", "{\"cmd\":5}", "{\"cmd\":\"Bad Name\"}", "{\"cmd\":\"\"}",
		"{\"cmd\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}", "{\"id\":-1,\"cmd\":\"x\"}",
		"{\"id\":9007199254740992,\"cmd\":\"x\"}", "{\"id\":1.5,\"cmd\":\"x\"}", "{\"re\":1}",
		"{\"re\":1,\"ok\":false}", "{\"re\":\"1\",\"ok\":true}", "{\"cmd\":\"a\",\"cmd\":\"b\"}",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		assert_int_equal(agent_msg_parse(bad[i], strlen(bad[i]), &m), -VELA_E_PROTOCOL);
		assert_null(m.json);
	}
	json_t *j = json_pack("{s:s}", "cmd", "beat");
	char *line = agent_encode(j);
	assert_string_equal(line, "{\"cmd\":\"beat\"}\n");
	free(line);
	json_decref(j);
}

static void guestinfo_keys_and_values(void **s)
{
	(void)s;
	char *k = NULL;
	assert_int_equal(agent_guestinfo_key("color", &k), 0);
	assert_string_equal(k, "guestinfo.color");
	free(k);
	assert_int_equal(agent_guestinfo_key("guestinfo.a.b-c_1", &k), 0);
	assert_string_equal(k, "guestinfo.a.b-c_1");
	free(k);
	assert_int_equal(agent_guestinfo_key("../etc", &k), -VELA_E_INVAL);
	assert_int_equal(agent_guestinfo_key("a b", &k), -VELA_E_INVAL);
	assert_int_equal(agent_guestinfo_key("guestinfo.", &k), -VELA_E_INVAL);
	assert_int_equal(agent_guestinfo_key(NULL, &k), -VELA_E_INVAL);
	char longkey[200];
	memset(longkey, 'k', sizeof longkey - 1);
	longkey[sizeof longkey - 1] = '\0';
	assert_int_equal(agent_guestinfo_key(longkey, &k), -VELA_E_INVAL);
	char *big = xcalloc(1, AGENT_VALUE_MAX + 2);
	memset(big, 'v', AGENT_VALUE_MAX + 1);
	assert_int_equal(agent_guestinfo_value_check(big), -VELA_E_TOOBIG);
	big[AGENT_VALUE_MAX] = '\0';
	assert_int_equal(agent_guestinfo_value_check(big), 0);
	free(big);
}

static void settings_file(void **s)
{
	(void)s;
	struct agent_conf c;
	const char *ok = "# comment\n\npre-halt = echo bye > /dev/console\nheartbeat-interval = 5\r\nfreeze-timeout=10\n";
	assert_int_equal(agent_conf_parse(ok, strlen(ok), "t.conf", &c), 0);
	assert_string_equal(c.pre_halt, "echo bye > /dev/console");
	assert_int_equal(c.heartbeat_interval_s, 5);
	assert_int_equal(c.freeze_timeout_s, 10);
	assert_int_equal(c.command_timeout_s, 60);
	assert_null(c.halt_command);
	agent_conf_free(&c);
	static const char *const bad[] = { "pre-hlat = x\n", "heartbeat-interval = 0\n", "heartbeat-interval = 61\n",
					   "freeze-timeout = ten\n", "no equals sign\n" };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		assert_int_equal(agent_conf_parse(bad[i], strlen(bad[i]), "t.conf", &c), -VELA_E_CONFIG);
	assert_int_equal(agent_conf_parse("\n\nbogus = 1\n", 12, "t.conf", &c), -VELA_E_CONFIG);
	assert_non_null(strstr(vela_errmsg(), "line 3"));
	assert_int_equal(agent_conf_parse("a\0b", 3, "t.conf", &c), -VELA_E_CONFIG);
}

static void vmstate_trailer(void **s)
{
	(void)s;
	char dir[] = "/tmp/vela-vmstate-XXXXXX";
	assert_non_null(mkdtemp(dir));
	CLEANUP_FREE char *p = xasprintf("%s/vm.vmss", dir);
	/* QEMU's part, then ours. */
	assert_int_equal(write_file_atomic(p, "QEVMstream-bytes", 16), 0);
	json_t *meta = json_pack("{s:[s,s], s:[], s:i}", "fingerprint", "-m", "256", "disks", "version", 1);
	assert_int_equal(vmstate_finish(p, meta), 0);
	json_t *back = NULL;
	uint64_t stream = 0;
	assert_int_equal(vmstate_read(p, &back, &stream), 0);
	assert_int_equal(stream, 16);
	assert_true(json_equal(meta, back));
	json_decref(back);
	/* An unfinished suspend (no trailer) and a cut trailer are refused. */
	CLEANUP_FREE char *q = xasprintf("%s/bad.vmss", dir);
	assert_int_equal(write_file_atomic(q, "QEVMstream-bytes", 16), 0);
	assert_int_equal(vmstate_read(q, &back, &stream), -VELA_E_CORRUPT);
	assert_int_equal(truncate(p, 30), 0);
	assert_int_equal(vmstate_read(p, &back, &stream), -VELA_E_CORRUPT);
	/* A length pointing before the file's start. */
	uint8_t tail[24];
	memcpy(tail, "VELA-VMSTATE-1\n", 16);
	le64_put(tail + 16, 1u << 30);
	CLEANUP_FREE char *r = xasprintf("%s/len.vmss", dir);
	assert_int_equal(write_file_atomic(r, tail, sizeof tail), 0);
	assert_int_equal(vmstate_read(r, &back, &stream), -VELA_E_CORRUPT);
	json_decref(meta);
	unlink(p);
	unlink(q);
	unlink(r);
	rmdir(dir);
}

static void net_counters(void **state)
{
	(void)state;
	uint64_t rx, tx;
	json_t *j = json_loads("{\"eth0\": [100, 200], \"ens3\": [1, 2]}", 0, NULL);
	assert_int_equal(agent_net_counters(j, &rx, &tx), 0);
	assert_int_equal(rx, 101);
	assert_int_equal(tx, 202);
	json_decref(j);
	static const char *const bad[] = {
		"[1, 2]", "{\"eth0\": [1]}", "{\"eth0\": [-1, 2]}", "{\"eth0\": [1, \"2\"]}",
		"{\"a-name-longer-than-15\": [1, 2]}", "{\"\": [1, 2]}", "{\"eth0\": [1, 9007199254740992]}",
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		j = json_loads(bad[i], JSON_DECODE_ANY, NULL);
		assert_non_null(j);
		assert_int_equal(agent_net_counters(j, &rx, &tx), -VELA_E_PROTOCOL);
		json_decref(j);
	}
	/* More interfaces than a guest may report. */
	j = json_object();
	for (int i = 0; i < 17; i++) {
		char name[8];
		snprintf(name, sizeof name, "e%d", i);
		json_object_set_new(j, name, json_pack("[i, i]", 1, 1));
	}
	assert_int_equal(agent_net_counters(j, &rx, &tx), -VELA_E_PROTOCOL);
	json_decref(j);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(lines_split_join_and_drop_overlong),
		cmocka_unit_test(messages_are_validated),
		cmocka_unit_test(guestinfo_keys_and_values),
		cmocka_unit_test(settings_file),
		cmocka_unit_test(vmstate_trailer),
		cmocka_unit_test(net_counters),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
