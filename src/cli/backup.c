/* backup.c - `vela backup VM --to DIR`, `vela backup verify DIR`,
 * `vela restore BACKUP --to DIR [--as NAME]`. */
#include "common.h"
#include "backup.h"
#include "cli.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static bool print_progress(unsigned percent, void *opaque)
{
	(void)opaque;
	if (isatty(STDERR_FILENO))
		fprintf(stderr, "\rbackup: %3u%%%s", percent, percent == 100 ? "\n" : "");
	return true;
}

int cmd_backup(const struct cli *c, const char *const *w, size_t n)
{
	json_t *out = NULL;
	int r;
	if (strcmp(w[0], "backup") == 0 && n == 3 && strcmp(w[1], "verify") == 0) {
		if ((r = backup_verify(w[2], &out)) < 0)
			return cli_fail(c, r);
		if (c->json)
			cli_print_json(out);
		else
			printf("%s: %lld files, %lld bytes, every checksum matches\n", w[2],
			       (long long)json_integer_value(json_object_get(out, "files")),
			       (long long)json_integer_value(json_object_get(out, "bytes")));
		json_decref(out);
		return 0;
	}
	/* A VM of velad's inventory (by id or name), schedules, or --host: velad. */
	bool remote = c->host || (strcmp(w[0], "backup") == 0 && n >= 2 &&
				  (strcmp(w[1], "schedule") == 0 ||
				   (n == 2 && !strchr(w[1], '/') && !strstr(w[1], ".vmx") && access(w[1], F_OK) < 0)));
	if (remote)
		return cmd_remote(c, w, n);
	if (strcmp(w[0], "backup") == 0 && n == 2) {
		if (!c->to)
			return cli_usage_error("usage: vela backup FILE.vmx --to DIR [--quiesce] [--compress]%s", "");
		struct backup_opts o = { .quiesce = c->quiesce, .compress = c->compress, .incremental = c->incremental,
					 .progress = print_progress };
		if ((r = backup_vm(w[1], c->to, &o, &out)) < 0)
			return cli_fail(c, r);
		if (c->json)
			cli_print_json(out);
		else
			printf("%s (%s%lld disk%s, %lld bytes, %s%s, %lld ms)\n", json_string_value(json_object_get(out, "folder")),
			       json_is_true(json_object_get(out, "incremental")) ? "incremental, " : "",
			       (long long)json_integer_value(json_object_get(out, "disks")),
			       json_integer_value(json_object_get(out, "disks")) == 1 ? "" : "s",
			       (long long)json_integer_value(json_object_get(out, "bytes")),
			       json_is_true(json_object_get(out, "live")) ? "live" : "offline",
			       json_is_true(json_object_get(out, "quiesced")) ? ", quiesced" : "",
			       (long long)json_integer_value(json_object_get(out, "ms")));
		json_decref(out);
		return 0;
	}
	if (strcmp(w[0], "restore") == 0 && n == 2) {
		if (!c->to)
			return cli_usage_error("usage: vela restore BACKUP --to NEW-FOLDER [--as NAME]%s", "");
		if ((r = backup_restore(w[1], c->to, c->as, &out)) < 0)
			return cli_fail(c, r);
		if (c->json)
			cli_print_json(out);
		else
			printf("%s\n", json_string_value(json_object_get(out, "vmx")));
		json_decref(out);
		return 0;
	}
	return cli_usage_error("usage: vela backup FILE.vmx --to DIR | vela backup verify DIR | "
			       "vela restore BACKUP --to DIR [--as NAME]%s", "");
}
