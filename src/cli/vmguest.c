/* vmguest.c - `vela vm guest|guestinfo|freeze|thaw|sync-time|zero-fill`:
 * the guest agent, through the VM's supervisor. */
#include "common.h"
#include "vmx-sup.h"
#include "cli.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int call(const struct cli *c, const char *file, json_t *req, json_t **reply, int timeout_ms)
{
	int r = vmxsup_call(file, req, reply, timeout_ms);
	json_decref(req);
	return r < 0 ? cli_fail(c, r) : 0;
}

static void print_guest(json_t *st)
{
	json_t *info = json_object_get(st, "info");
	printf("%-12s %s\n", "agent", json_string_value(json_object_get(st, "agent")));
	printf("%-12s %s\n", "heartbeat", json_string_value(json_object_get(st, "heartbeat")));
	if (json_object_get(st, "last_heard_s"))
		printf("%-12s %lld s ago\n", "last heard", (long long)json_integer_value(json_object_get(st, "last_heard_s")));
	if (!info)
		return;
	static const char *const keys[] = { "agent", "os", "kernel", "hostname" };
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
		if (json_is_string(json_object_get(info, keys[i])))
			printf("%-12s %s\n", i == 0 ? "version" : keys[i], json_string_value(json_object_get(info, keys[i])));
	size_t i;
	json_t *a;
	json_array_foreach(json_object_get(info, "addresses"), i, a)
		printf("%-12s %s (%s)\n", "address", json_string_value(json_object_get(a, "address")),
		       json_string_value(json_object_get(a, "interface")));
	json_t *mem = json_object_get(info, "memory");
	if (json_object_get(mem, "total_kb"))
		printf("%-12s %lld MiB total, %lld MiB available\n", "memory",
		       (long long)json_integer_value(json_object_get(mem, "total_kb")) / 1024,
		       (long long)json_integer_value(json_object_get(mem, "available_kb")) / 1024);
}

/* words: vm VERB ... (the file is wherever the verb's usage puts it) */
static bool is_file(const char *w)
{
	return strchr(w, '/') || strstr(w, ".vmx") || access(w, F_OK) == 0;
}

int cmd_vm_guest(const struct cli *c, const char *const *words, size_t n)
{
	const char *verb = words[1];
	json_t *reply = NULL;
	int r;
	/* A VM by id or name (or --host): through velad. */
	const char *vm = strcmp(verb, "guestinfo") == 0 ? (n > 3 ? words[3] : NULL) : (n > 2 ? words[2] : NULL);
	if ((strcmp(verb, "guest") == 0 || strcmp(verb, "guestinfo") == 0) && vm && (c->host || !is_file(vm)))
		return cmd_remote(c, words, n);
	if (strcmp(verb, "guest") == 0) {
		if (n != 3)
			return cli_usage_error("usage: vela vm guest FILE.vmx%s", "");
		if ((r = call(c, words[2], json_pack("{s:s}", "cmd", "guest"), &reply, 10000)) != 0)
			return r;
		if (c->json)
			cli_print_json(reply);
		else
			print_guest(reply);
		json_decref(reply);
		return 0;
	}
	if (strcmp(verb, "guestinfo") == 0) {
		const char *op = n > 2 ? words[2] : "";
		json_t *req;
		if (strcmp(op, "list") == 0 && n == 4)
			req = json_pack("{s:s}", "cmd", "guestinfo");
		else if (strcmp(op, "get") == 0 && n == 5)
			req = json_pack("{s:s, s:s}", "cmd", "guestinfo", "key", words[4]);
		else if (strcmp(op, "set") == 0 && n == 6)
			req = json_pack("{s:s, s:s, s:s}", "cmd", "guestinfo", "key", words[4], "value", words[5]);
		else if (strcmp(op, "unset") == 0 && n == 5)
			req = json_pack("{s:s, s:s, s:n}", "cmd", "guestinfo", "key", words[4], "value");
		else
			return cli_usage_error("usage: vela vm guestinfo list|get|set|unset FILE.vmx [KEY [VALUE]]%s", "");
		if (!req)
			return cli_fail(c, vela_error(VELA_E_INVAL, "guestinfo: the key and value must be valid UTF-8"));
		if ((r = call(c, words[3], req, &reply, 10000)) != 0)
			return r;
		if (c->json) {
			cli_print_json(reply);
		} else if (strcmp(op, "get") == 0) {
			printf("%s\n", json_string_value(json_object_get(reply, "value")));
		} else if (strcmp(op, "list") == 0) {
			const char *k;
			json_t *v;
			json_object_foreach(json_object_get(reply, "values"), k, v)
				printf("%s = %s\n", k, json_string_value(v));
		}
		json_decref(reply);
		return 0;
	}
	/* freeze, thaw, sync-time, zero-fill: one request to the agent. */
	const char *path = NULL;
	if (strcmp(verb, "zero-fill") == 0) {
		if (n != 4)
			return cli_usage_error("usage: vela vm zero-fill FILE.vmx GUEST-FOLDER%s", "");
		path = words[3];
	} else if (n != 3) {
		return cli_usage_error("usage: vela vm %s FILE.vmx", verb);
	}
	json_t *req = json_pack("{s:s, s:s}", "cmd", "guest-op", "op", verb);
	if (path)
		json_object_set_new(req, "path", json_string(path));
	if (c->timeout_s)
		json_object_set_new(req, "timeout", json_integer(c->timeout_s));
	int wait_ms = (c->timeout_s ? c->timeout_s : path ? 3600 : 60) * 1000 + 5000;
	if ((r = call(c, words[2], req, &reply, wait_ms)) != 0)
		return r;
	json_object_del(reply, "ok");
	if (c->json) {
		cli_print_json(reply);
	} else if (strcmp(verb, "freeze") == 0) {
		size_t i;
		json_t *v;
		json_array_foreach(json_object_get(reply, "frozen"), i, v)
			printf("frozen  %s\n", json_string_value(v));
		if (!json_array_size(json_object_get(reply, "frozen")))
			printf("no file system to freeze\n");
		json_array_foreach(json_object_get(reply, "skipped"), i, v)
			printf("skipped %s (%s)\n", json_string_value(json_object_get(v, "path")),
			       json_string_value(json_object_get(v, "reason")));
	} else if (strcmp(verb, "thaw") == 0) {
		printf("thawed %lld file system(s)\n", (long long)json_integer_value(json_object_get(reply, "thawed")));
	} else if (strcmp(verb, "sync-time") == 0) {
		printf("guest clock moved by %lld ms\n", (long long)json_integer_value(json_object_get(reply, "offset_ms")));
	} else if (path) {
		printf("%lld bytes of free space zeroed\n", (long long)json_integer_value(json_object_get(reply, "bytes")));
	}
	json_decref(reply);
	return 0;
}
