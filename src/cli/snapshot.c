/* snapshot.c - `vela vm snapshot create|list|revert|delete FILE.vmx [NAME]`
 * over src/snapshot. */
#include "common.h"
#include "cli.h"
#include "snapshot.h"
#include "vmx-sup.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void print_tree(json_t *snaps, int parent, int depth)
{
	size_t i;
	json_t *s;
	json_array_foreach(snaps, i, s) {
		if (json_integer_value(json_object_get(s, "parent")) != parent)
			continue;
		const char *desc = json_string_value(json_object_get(s, "description"));
		printf("%*s%s%s%s  %s%s%s\n", depth * 2, "", json_string_value(json_object_get(s, "name")),
		       json_is_true(json_object_get(s, "current")) ? " (current)" : "",
		       json_is_true(json_object_get(s, "memory")) ? " [memory]" : "",
		       json_string_value(json_object_get(s, "created")), desc && *desc ? "  " : "", desc ? desc : "");
		print_tree(snaps, (int)json_integer_value(json_object_get(s, "uid")), depth + 1);
	}
}

int cmd_vm_snapshot(const struct cli *c, const char *const *w, size_t n)
{
	/* vela vm snapshot SUB FILE.vmx [NAME] */
	if (n < 4)
		return cli_usage_error("usage: vela vm snapshot create|list|revert|delete FILE.vmx [NAME]%s", "");
	const char *sub = w[2], *vmx = w[3], *name = n > 4 ? w[4] : NULL;
	if (access(vmx, F_OK) < 0)
		return cli_fail(c, vela_error_errno(errno, "%s", vmx));
	json_t *out = NULL;
	int r;
	if (strcmp(sub, "list") == 0 && n == 4) {
		if ((r = snapshot_list(vmx, &out)) < 0)
			return cli_fail(c, r);
		if (c->json)
			cli_print_json(out);
		else if (json_array_size(out) == 0)
			printf("no snapshots\n");
		else
			print_tree(out, 0, 0);
		json_decref(out);
		return 0;
	}
	if (!name || n != 5)
		return cli_usage_error("usage: vela vm snapshot %s FILE.vmx NAME", sub);
	if (strcmp(sub, "create") == 0) {
		struct snapshot_opts so = { .description = c->description, .memory = c->memory, .quiesce = c->quiesce };
		if ((r = snapshot_create(vmx, name, &so, &out)) < 0)
			return cli_fail(c, r);
		if (c->json) {
			cli_print_json(out);
		} else {
			size_t i;
			json_t *sk;
			json_array_foreach(json_object_get(out, "skipped"), i, sk)
				printf("%s: %s disk, not in snapshots\n", json_string_value(json_object_get(sk, "disk")),
				       json_string_value(json_object_get(sk, "mode")));
			json_int_t nd = json_integer_value(json_object_get(out, "disks"));
			printf("snapshot \"%s\" taken (%lld disk%s%s%s%s)\n", name, (long long)nd, nd == 1 ? "" : "s",
			       json_is_true(json_object_get(out, "live")) ? ", live" : "",
			       json_is_true(json_object_get(out, "memory")) ? ", with memory" : "",
			       json_is_true(json_object_get(out, "quiesced")) ? ", quiesced" : "");
		}
		json_decref(out);
		return 0;
	}
	if (strcmp(sub, "revert") == 0) {
		bool resume = false;
		if ((r = snapshot_revert(vmx, name, &resume)) < 0)
			return cli_fail(c, r);
		if (resume) {
			/* A memory snapshot: the VM runs on from that instant. */
			json_t *reply = NULL;
			if ((r = vmxsup_spawn(vmx, getenv("VELA_VMX_BINARY"), &reply, 600000)) < 0)
				return cli_fail(c, vela_error_context(r, "reverted to \"%s\", but resuming it failed", name));
			json_decref(reply);
		}
		if (!c->json)
			printf("reverted to \"%s\"%s\n", name, resume ? ", running from its saved state" : "");
		return 0;
	}
	if (strcmp(sub, "delete") == 0) {
		bool live = false;
		if ((r = snapshot_delete(vmx, name, &live)) < 0)
			return cli_fail(c, r);
		if (!c->json)
			printf("snapshot \"%s\" deleted%s\n", name, live ? " (consolidated live)" : "");
		return 0;
	}
	return cli_usage_error("unknown snapshot command \"%s\"", sub);
}
