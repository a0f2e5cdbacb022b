/* vmdisk.c - `vela vm addredo|commit|disk-stats|disk-limit|export-disk`:
 * live disk operations, carried out by the VM's supervisor. */
#include "common.h"
#include "vmx-sup.h"
#include "cli.h"

#include <stdio.h>
#include <string.h>

/* Live commits may take as long as the merge: no short timeout. */
#define LIVE_OP_TIMEOUT_MS (24 * 3600 * 1000)

static int call(const struct cli *c, const char *file, json_t *req, json_t **reply)
{
	int r = vmxsup_call(file, req, reply, LIVE_OP_TIMEOUT_MS);
	json_decref(req);
	return r < 0 ? cli_fail(c, r) : 0;
}

static void print_stats(json_t *disks)
{
	const char *addr;
	json_t *d;
	printf("%-10s %-8s %-14s %10s %10s %12s %12s %8s %8s  %s\n", "DISK", "DEPTH", "MODE", "READS", "WRITES",
	       "READ-BYTES", "WRITE-BYTES", "RD-US", "WR-US", "FILE");
	json_object_foreach(disks, addr, d) {
		printf("%-10s %-8lld %-14s %10lld %10lld %12lld %12lld %8lld %8lld  %s\n", addr,
		       (long long)json_integer_value(json_object_get(d, "depth")),
		       json_string_value(json_object_get(d, "mode")),
		       (long long)json_integer_value(json_object_get(d, "rd_ops")),
		       (long long)json_integer_value(json_object_get(d, "wr_ops")),
		       (long long)json_integer_value(json_object_get(d, "rd_bytes")),
		       (long long)json_integer_value(json_object_get(d, "wr_bytes")),
		       (long long)json_integer_value(json_object_get(d, "rd_lat_us_avg")),
		       (long long)json_integer_value(json_object_get(d, "wr_lat_us_avg")),
		       json_string_value(json_object_get(d, "file")));
		json_t *l = json_object_get(d, "limits");
		json_int_t ir = json_integer_value(json_object_get(l, "iops_rd")), iw = json_integer_value(json_object_get(l, "iops_wr"));
		json_int_t br = json_integer_value(json_object_get(l, "bps_rd")), bw = json_integer_value(json_object_get(l, "bps_wr"));
		if (ir || iw || br || bw)
			printf("%-10s limits: read %lld IOPS %lld B/s, write %lld IOPS %lld B/s (0 = none)\n", "",
			       (long long)ir, (long long)br, (long long)iw, (long long)bw);
	}
}

static int add_limit(const struct cli *c, json_t *req, const char *key, const char *val)
{
	if (!val)
		return 0;
	uint64_t v;
	int r = parse_size(val, &v);
	if (r < 0)
		return cli_fail(c, vela_error_context(r, "--%s", key));
	json_object_set_new(req, key, json_integer((json_int_t)v));
	return 0;
}

int cmd_vm_disk(const struct cli *c, const char *verb, const char *file, const char *disk)
{
	json_t *reply = NULL;
	int r;
	if (strcmp(verb, "disk-stats") == 0) {
		if (disk)
			return cli_usage_error("usage: vela vm disk-stats FILE.vmx%s", "");
		if ((r = call(c, file, json_pack("{s:s}", "cmd", "disk-stats"), &reply)) != 0)
			return r;
		if (c->json)
			cli_print_json(json_object_get(reply, "disks"));
		else
			print_stats(json_object_get(reply, "disks"));
		json_decref(reply);
		return 0;
	}
	if (!disk)
		return cli_usage_error("usage: vela vm %s FILE.vmx DISK (e.g. scsi0:0)", verb);
	json_t *req = json_pack("{s:s, s:s}", "cmd", verb, "disk", disk);
	if (strcmp(verb, "commit") == 0) {
		if (c->level) {
			uint64_t level;
			if ((r = parse_u64(c->level, 255, &level)) < 0) {
				json_decref(req);
				return cli_fail(c, vela_error_context(r, "--level"));
			}
			json_object_set_new(req, "level", json_integer((json_int_t)level));
		}
		if (c->freeze)
			json_object_set_new(req, "freeze", json_true());
		if (c->no_wait)
			json_object_set_new(req, "wait", json_false());
	} else if (strcmp(verb, "disk-limit") == 0) {
		if (!c->iops && !c->bps && !c->iops_rd && !c->iops_wr && !c->bps_rd && !c->bps_wr) {
			json_decref(req);
			return cli_usage_error("vm disk-limit needs --iops, --bps, --iops-rd, --iops-wr, --bps-rd or --bps-wr%s", "");
		}
		if (add_limit(c, req, "iops", c->iops) || add_limit(c, req, "bps", c->bps) ||
		    add_limit(c, req, "iops_rd", c->iops_rd) || add_limit(c, req, "iops_wr", c->iops_wr) ||
		    add_limit(c, req, "bps_rd", c->bps_rd) || add_limit(c, req, "bps_wr", c->bps_wr)) {
			json_decref(req);
			return 1;
		}
	} else if (strcmp(verb, "export-disk") == 0) {
		if (c->end) {
			json_object_set_new(req, "end", json_true());
			if (c->keep)
				json_object_set_new(req, "keep", json_true());
		} else if (c->nbd) {
			json_object_set_new(req, "nbd", json_string(c->nbd));
		} else {
			json_decref(req);
			return cli_usage_error("usage: vela vm export-disk --nbd ADDR | --end [--keep] FILE.vmx DISK%s", "");
		}
	} else if (strcmp(verb, "addredo") != 0) {
		json_decref(req);
		return cli_usage_error("unknown vm command \"%s\"", verb);
	}
	if ((r = call(c, file, req, &reply)) != 0)
		return r;
	if (c->json) {
		cli_print_json(reply);
	} else if (strcmp(verb, "disk-limit") == 0) {
		print_stats(json_object_get(reply, "disks"));
	} else if (json_is_true(json_object_get(reply, "started"))) {
		printf("%s: %s started; its end is logged in the VM's vela.log\n", disk, verb);
	} else if (strcmp(verb, "export-disk") == 0 && json_object_get(reply, "export")) {
		printf("%s: exporting %s read-only over NBD on %s; the guest writes to %s\n", disk,
		       json_string_value(json_object_get(reply, "export")), json_string_value(json_object_get(reply, "nbd")),
		       json_string_value(json_object_get(reply, "top")));
	} else {
		printf("%s: %s done in %lld ms; the disk now runs on %s\n", disk, verb,
		       (long long)json_integer_value(json_object_get(reply, "ms")),
		       json_string_value(json_object_get(reply, "top")));
	}
	json_decref(reply);
	return 0;
}
