/* main.c - the `vela` command-line tool. */
#include "common.h"
#include "vmx.h"
#include "vmx-sup.h"
#include "cli.h"

#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <termios.h>

/* ------------------------------------------------------------ output */

int cli_fail(const struct cli *c, int code)
{
	const struct vela_errinfo *e = vela_errinfo(code);
	if (c->json) {
		json_t *j = json_pack("{s:b, s:{s:i, s:s, s:s}}", "ok", 0, "error",
				      "code", e ? e->code : VELA_E_INTERNAL,
				      "name", e ? e->name : "VELA_E_INTERNAL", "message", vela_errmsg());
		char *t = json_dumps(j, JSON_INDENT(2));
		puts(t);
		free(t);
		json_decref(j);
	} else {
		fprintf(stderr, "vela: %s: %s\n", e ? e->name : "VELA_E_INTERNAL", vela_errmsg());
	}
	return 1;
}

void cli_print_json(json_t *j)
{
	char *t = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	puts(t);
	free(t);
}

int cli_usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, "vela: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\nTry 'vela --help'.\n");
	return 2;
}

/* ------------------------------------------------------------ errors */

static int cmd_errors(const struct cli *c)
{
	if (c->json) {
		json_t *arr = json_array();
		for (const struct vela_errinfo *e = vela_error_table; e->name; e++)
			json_array_append_new(arr, json_pack("{s:s, s:i, s:s, s:i, s:s}", "name", e->name, "code", e->code,
							      "errno", e->errno_name, "errno_value", e->errno_value,
							      "message", e->message));
		cli_print_json(arr);
		json_decref(arr);
		return 0;
	}
	printf("%-20s %4s  %-13s %s\n", "NAME", "CODE", "ERRNO", "MESSAGE");
	for (const struct vela_errinfo *e = vela_error_table; e->name; e++)
		printf("%-20s %4d  %-13s %s\n", e->name, e->code, e->errno_name, e->message);
	return 0;
}

/* ------------------------------------------------------------ vmx check */

static int cmd_vmx_check(const struct cli *c, const char *path)
{
	struct vmx_file *f = NULL;
	struct vmx_model *m = NULL;
	struct strbuf diag = { 0 };
	int r = vmx_file_load(path, &f);
	if (r < 0)
		return cli_fail(c, r);
	r = vmx_model_build(f, path, NULL, &diag, &m);
	if (r < 0) {
		if (c->json) {
			json_t *probs = json_array();
			for (char *line = strtok(diag.data, "\n"); line; line = strtok(NULL, "\n"))
				json_array_append_new(probs, json_string(line));
			json_t *j = json_pack("{s:b, s:{s:i, s:s, s:s}, s:o}", "ok", 0, "error", "code", VELA_E_CONFIG,
					      "name", "VELA_E_CONFIG", "message", vela_errmsg(), "problems", probs);
			cli_print_json(j);
			json_decref(j);
		} else {
			fputs(diag.data, stderr);
		}
		strbuf_free(&diag);
		vmx_file_free(f);
		return 1;
	}
	if (c->json) {
		json_t *disks = json_array();
		for (size_t i = 0; i < m->n_disks; i++)
			json_array_append_new(disks, json_pack("{s:s, s:s, s:s?, s:s}", "address", m->disks[i].addr,
				"type", m->disks[i].type == VMX_DEV_DISK ? "disk" : "cdrom",
				"path", m->disks[i].path, "mode", vmx_disk_mode_name(m->disks[i].mode)));
		unsigned nics = 0;
		for (unsigned i = 0; i < VMX_MAX_NICS; i++)
			nics += m->nics[i].present;
		json_t *j = json_pack("{s:b, s:s, s:s, s:I, s:i, s:o, s:i}", "ok", 1, "display_name", m->display_name,
				      "guest_os", m->guest_os, "memsize_mb", (json_int_t)m->memsize_mb,
				      "vcpus", m->vcpus, "disks", disks, "nics", nics);
		cli_print_json(j);
		json_decref(j);
	} else {
		printf("%s: OK (%s, %llu MB, %u vCPU, %zu disk device%s)\n", path, m->display_name,
		       (unsigned long long)m->memsize_mb, m->vcpus, m->n_disks, m->n_disks == 1 ? "" : "s");
	}
	vmx_model_free(m);
	vmx_file_free(f);
	return 0;
}

/* ------------------------------------------------------------ vm ops */

static void print_status(const struct cli *c, json_t *st)
{
	if (c->json) {
		cli_print_json(st);
		return;
	}
	const char *state = json_string_value(json_object_get(st, "state"));
	printf("%s\n", state ? state : "unknown");
	json_t *q = json_object_get(st, "question");
	if (q) {
		printf("question: %s\n", json_string_value(json_object_get(q, "text")));
		struct strbuf ch = { 0 };
		size_t i;
		json_t *v;
		json_array_foreach(json_object_get(q, "choices"), i, v)
			strbuf_printf(&ch, "%s%s", i ? "|" : "", json_string_value(v));
		printf("answer with: vela vm answer FILE.vmx %s\n", ch.data ? ch.data : "");
		strbuf_free(&ch);
	}
}

static int call_simple(const struct cli *c, const char *path, json_t *req, int timeout_ms)
{
	json_t *reply = NULL;
	int r = vmxsup_call(path, req, &reply, timeout_ms);
	json_decref(req);
	if (r < 0)
		return cli_fail(c, r);
	print_status(c, reply);
	json_decref(reply);
	return 0;
}

static int vm_getstate(const struct cli *c, const char *path, bool full)
{
	if (access(path, F_OK) < 0)
		return cli_fail(c, vela_error_errno(errno, "%s", path));
	json_t *reply = NULL;
	int r = vmxsup_call(path, json_pack("{s:s}", "cmd", "status"), &reply, 10000);
	CLEANUP_FREE char *vmstate = NULL;
	if (r == -VELA_E_NOTRUNNING && vmxsup_is_suspended(path, &vmstate)) {
		reply = json_pack("{s:b, s:s, s:s}", "ok", 1, "state", "suspended", "vmstate", vmstate);
	} else if (r == -VELA_E_NOTRUNNING) {
		reply = json_pack("{s:b, s:s}", "ok", 1, "state", "off");
	} else if (r < 0) {
		return cli_fail(c, r);
	}
	if (full || c->json) {
		if (c->json)
			cli_print_json(reply);
		else {
			const char *k;
			json_t *v;
			json_object_foreach(reply, k, v) {
				if (strcmp(k, "ok") == 0)
					continue;
				if (json_is_string(v))
					printf("%-16s %s\n", k, json_string_value(v));
				else if (json_is_integer(v))
					printf("%-16s %lld\n", k, (long long)json_integer_value(v));
				else {
					char *t = json_dumps(v, JSON_COMPACT);
					printf("%-16s %s\n", k, t);
					free(t);
				}
			}
		}
	} else {
		/* getstate prints the state alone, for scripts; status shows the rest. */
		const char *state = json_string_value(json_object_get(reply, "state"));
		printf("%s\n", state ? state : "unknown");
	}
	json_decref(reply);
	return 0;
}

static int vm_start(const struct cli *c, const char *path)
{
	json_t *reply = NULL;
	int r = vmxsup_spawn(path, getenv("VELA_VMX_BINARY"), &reply, 120000);
	if (r < 0)
		return cli_fail(c, r);
	print_status(c, reply);
	json_decref(reply);
	return 0;
}

static int vm_power(const struct cli *c, const char *cmd, const char *path, const char *mode)
{
	if (strcmp(cmd, "stop") == 0 && !vmxsup_is_running(path) && vmxsup_is_suspended(path, NULL)) {
		/* Powering off a suspended VM: its saved state is discarded. */
		int r = vmxsup_discard_suspended(path);
		if (r < 0)
			return cli_fail(c, r);
		json_t *st = json_pack("{s:b, s:s}", "ok", 1, "state", "off");
		print_status(c, st);
		json_decref(st);
		return 0;
	}
	json_t *req = json_pack("{s:s}", "cmd", cmd);
	if (mode)
		json_object_set_new(req, "mode", json_string(mode));
	if (c->timeout_s)
		json_object_set_new(req, "timeout", json_integer(c->timeout_s));
	int wait_ms = ((c->timeout_s ? c->timeout_s : 60) + 60) * 1000;
	return call_simple(c, path, req, wait_ms);
}

/* ------------------------------------------------------------ console */

static char *unescape(const char *s, size_t *len)
{
	struct strbuf sb = { 0 };
	for (const char *p = s; *p; p++) {
		char ch = *p;
		if (ch == '\\' && p[1]) {
			p++;
			switch (*p) {
			case 'n': ch = '\n'; break;
			case 'r': ch = '\r'; break;
			case 't': ch = '\t'; break;
			case '\\': ch = '\\'; break;
			case 'x':
				if (p[1] && p[2]) {
					char hex[3] = { p[1], p[2], 0 };
					ch = (char)strtol(hex, NULL, 16);
					p += 2;
				}
				break;
			default: ch = *p; break;
			}
		}
		strbuf_append(&sb, &ch, 1);
	}
	*len = sb.len;
	return strbuf_steal(&sb);
}

static int console_connect(const struct cli *c, const char *path, int *fd)
{
	CLEANUP_FREE char *dir = NULL;
	int r = vmxsup_run_dir(path, &dir);
	if (r < 0)
		return cli_fail(c, r);
	if (!vmxsup_is_running(path))
		return cli_fail(c, vela_error(VELA_E_NOTRUNNING, "%s: the VM is off", path));
	CLEANUP_FREE char *sock = xasprintf("%s/console.sock", dir);
	*fd = unix_connect(sock);
	if (*fd < 0)
		return cli_fail(c, *fd);
	return 0;
}

static size_t count_occurrences(const char *hay, size_t n, const char *needle)
{
	size_t k = strlen(needle), count = 0;
	for (size_t i = 0; k && i + k <= n; i++)
		if (memcmp(hay + i, needle, k) == 0)
			count++;
	return count;
}

static struct termios saved_tio;
static void restore_tty(void)
{
	tcsetattr(0, TCSANOW, &saved_tio);
}

static int vm_console(const struct cli *c, const char *path, const char *dump, const char *send,
		      const char *wait_text, unsigned wait_count, int wait_s)
{
	if (dump) {
		json_t *reply = NULL;
		int r = vmxsup_call(path, json_pack("{s:s}", "cmd", "scrollback"), &reply, 10000);
		if (r < 0)
			return cli_fail(c, r);
		void *data;
		size_t len;
		r = base64_decode(json_string_value(json_object_get(reply, "data_base64")), &data, &len);
		json_decref(reply);
		if (r < 0)
			return cli_fail(c, r);
		fwrite(data, 1, len, stdout);
		free(data);
		return 0;
	}
	int fd = -1;
	int r = console_connect(c, path, &fd);
	if (r)
		return r;
	if (send) {
		size_t len;
		CLEANUP_FREE char *bytes = unescape(send, &len);
		r = send_all(fd, bytes, len);
		if (r == 0) {
			/* Half-close and wait for the supervisor to hang up: then it has
			 * read everything we typed. */
			shutdown(fd, SHUT_WR);
			char sink[8192];
			int64_t deadline = time_mono_ms() + 5000;
			while (time_mono_ms() < deadline) {
				struct pollfd p = { .fd = fd, .events = POLLIN };
				if (poll(&p, 1, 100) > 0 && read(fd, sink, sizeof sink) <= 0)
					break;
			}
		}
		close(fd);
		return r < 0 ? cli_fail(c, r) : 0;
	}
	if (wait_text) {
		struct strbuf seen = { 0 };
		int64_t deadline = time_mono_ms() + (int64_t)wait_s * 1000;
		for (;;) {
			if (count_occurrences(seen.data, seen.len, wait_text) >= wait_count) {
				strbuf_free(&seen);
				close(fd);
				return 0;
			}
			int64_t left = deadline - time_mono_ms();
			if (left <= 0)
				break;
			struct pollfd p = { .fd = fd, .events = POLLIN };
			if (poll(&p, 1, (int)left) <= 0)
				continue;
			char buf[8192];
			ssize_t n = read(fd, buf, sizeof buf);
			if (n <= 0) {
				strbuf_free(&seen);
				close(fd);
				return cli_fail(c, vela_error(VELA_E_NOTRUNNING, "the VM powered off before \"%s\" appeared", wait_text));
			}
			strbuf_append(&seen, buf, (size_t)n);
		}
		strbuf_free(&seen);
		close(fd);
		return cli_fail(c, vela_error(VELA_E_TIMEOUT, "\"%s\" did not appear %u time%s on the console within %d s",
					  wait_text, wait_count, wait_count == 1 ? "" : "s", wait_s));
	}

	/* Interactive (or piped) session.  Ctrl-] detaches, as in telnet and virsh. */
	bool tty = isatty(0);
	if (tty) {
		struct termios raw;
		tcgetattr(0, &saved_tio);
		raw = saved_tio;
		cfmakeraw(&raw);
		tcsetattr(0, TCSANOW, &raw);
		atexit(restore_tty);
		fprintf(stderr, "Connected to the serial console of %s. Escape character is ^]\r\n", path);
	}
	struct pollfd p[2] = { { .fd = 0, .events = POLLIN }, { .fd = fd, .events = POLLIN } };
	bool stdin_open = true;
	for (;;) {
		int n = poll(p, 2, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (p[1].revents) {
			char buf[8192];
			ssize_t k = read(fd, buf, sizeof buf);
			if (k <= 0)
				break;
			if (write_all(1, buf, (size_t)k) < 0)
				break;
		}
		if (stdin_open && p[0].revents) {
			char buf[4096];
			ssize_t k = read(0, buf, sizeof buf);
			if (k <= 0) {
				stdin_open = false;
				p[0].fd = -1;
				break;
			}
			if (tty && memchr(buf, 0x1d, (size_t)k))
				break;
			if (send_all(fd, buf, (size_t)k) < 0)
				break;
		}
	}
	close(fd);
	if (tty)
		fprintf(stderr, "\r\nDisconnected.\r\n");
	return 0;
}

/* ------------------------------------------------------------ help */

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: vela [--json] COMMAND ...\n"
		"Manage Vela virtual machines.\n\n"
		"Commands:\n"
		"  vela errors                          print the table of error codes\n"
		"  vela vmx check FILE.vmx              validate a configuration file\n"
		"  vela vm start FILE.vmx               power on\n"
		"  vela vm stop [hard|soft|trysoft] FILE.vmx   power off (default trysoft)\n"
		"  vela vm reset [hard|soft|trysoft] FILE.vmx  reset (default trysoft)\n"
		"  vela vm pause FILE.vmx               freeze the guest\n"
		"  vela vm suspend FILE.vmx             save the running state to disk; the VM is suspended\n"
		"  vela vm resume FILE.vmx              continue a suspended VM (start does too)\n"
		"  vela vm unpause FILE.vmx             continue a paused guest\n"
		"  vela vm getstate FILE.vmx            print the power state\n"
		"  vela vm status FILE.vmx              print state, pids, accelerator, question\n"
		"  vela vm answer FILE.vmx CHOICE       answer the pending question\n"
		"  vela vm console FILE.vmx             attach to the serial console (^] detaches)\n"
		"  vela vm addredo FILE.vmx DISK        live: new redo log on a running VM's disk\n"
		"  vela vm commit [--level N] [--freeze] [--no-wait] FILE.vmx DISK  live: merge a redo log\n"
		"  vela vm disk-stats FILE.vmx          per-disk I/O counters, latency, limits\n"
		"  vela vm guest FILE.vmx               the guest agent: heartbeat, OS, addresses\n"
		"  vela backup FILE.vmx --to DIR [--quiesce] [--compress] [--incremental]  hot backup (the VM keeps running;\n"
		"                                       --incremental: only what changed since the last one, ctkEnabled)\n"
		"  vela backup verify DIR               check every file of a backup against its checksum\n"
		"  vela backup mount [--foreground] BACKUP DIR  single-file restore: the backup's disks and\n"
		"                                       their partitions as read-only files in DIR (FUSE);\n"
		"                                       mount -o ro,loop DIR/scsi0-0-part1.raw /mnt, copy files\n"
		"  vela backup unmount DIR              end such a mount\n"
		"  vela backup VM --datastore D [--folder F] [--retain N] [--quiesce] [--compress]\n"
		"                                       hot backup through velad (a task), into a datastore\n"
		"  vela backup schedule VM --datastore D --every 24h --retain 7 [--now] [--quiesce] [--compress]\n"
		"  vela backup schedule list|remove [VM]  scheduled backups with retention (velad)\n"
		"  vela backup list VM --datastore D [--folder F]  the VM's backups there, newest first (velad)\n"
		"  vela restore BACKUP --to DIR [--as NAME]  a backup as a VM in a new folder\n"
		"  vela vm guestinfo list|get|set|unset FILE.vmx [KEY [VALUE]]  guestinfo values\n"
		"  vela vm freeze|thaw FILE.vmx         quiesce the guest's file systems (agent)\n"
		"  vela vm sync-time FILE.vmx           set the guest's clock from the host (agent)\n"
		"  vela vm zero-fill FILE.vmx FOLDER    zero the free space of a guest file system\n"
		"  vela vm snapshot create [--description D] [--memory] [--quiesce] FILE.vmx NAME\n"
		"                                       snapshot (live too; --memory: with the running state,\n"
		"                                       --quiesce: file systems frozen by the guest agent)\n"
		"  vela vm snapshot list FILE.vmx       the snapshot tree\n"
		"  vela vm snapshot revert FILE.vmx NAME  go back to a snapshot (VM off)\n"
		"  vela vm snapshot delete FILE.vmx NAME  drop a snapshot, merging its disk images\n"
		"                                       (snapshot commands take a VM's id or name too:\n"
		"                                       then through velad)\n"
		"  vela vm disk-limit [--iops N] [--bps N] FILE.vmx DISK  live: cap a disk's I/O\n"
		"  vela vm export-disk --nbd ADDR FILE.vmx DISK  live: read-only point-in-time export\n"
		"  vela vm export-disk --end [--keep] FILE.vmx DISK  end it, fold the redo log back\n"
		"  vela vm list                         the inventory (through velad)\n"
		"  vela vm register [--name N] [--folder F] FILE.vmx  add a VM to the inventory\n"
		"  vela vm create [--datastore D] [--folder F] [--memsize MB] [--vcpus N] [--guest-os G]\n"
		"         [--disk SIZE[:TYPE[:BUS]]]... [--cdrom ISO] NAME  a new VM with new disks\n"
		"  vela vm unregister VM                forget a VM (files stay)\n"
		"  vela vm delete [--files] VM          forget a VM; with --files, delete its files\n"
		"  vela vm set VM KEY=VALUE...          change memsize, vcpus, guestOS, annotation,\n"
		"                                       name, folder, cdrom, nic (on|off), boot (cdrom,disk),\n"
		"                                       add-disk=SIZE[:TYPE[:BUS]], add-nic=CONN[:NET],\n"
		"                                       disk-mode=ADDR:MODE, remove=DEVICE; a running\n"
		"                                       VM gets them at its next power cycle\n"
		"  vela vm get VM                       one VM with its status\n"
		"  vela vm autostart [--order N] [--delay S] [--stop soft|hard|none] [--off] VM\n"
		"                                       start VM with the host (or not)\n"
		"  vela host info                       the host: name, version, VM counts\n"
		"  vela host autostart                  the start order\n"
		"  vela host autostop                   stop the VMs as their autostop says\n"
		"  vela host stats                      the host's CPU and memory, last hour\n"
		"  vela vm stats VM                     a VM's CPU, memory and disk rates, last hour\n"
		"  vela ds list                         datastores with capacity and free space\n"
		"  vela ds browse NAME [PATH]           the files of a datastore folder\n"
		"  vela ds upload NAME LOCAL PATH       copy a file (an ISO) into a datastore\n"
		"  vela ds download NAME PATH LOCAL     copy a file out of a datastore\n"
		"  vela ds add NAME PATH                make a folder of the host a datastore\n"
		"  vela ds remove NAME                  forget a datastore (its files stay)\n"
		"  vela task list [--vm VM] [--state S] [--limit N]  recent tasks, progress\n"
		"  vela task get ID                     one task\n"
		"  vela task wait [--timeout S] ID      wait until a task has ended\n"
		"  vela task cancel ID                  ask a running task to stop\n"
		"  vela question list                   questions VMs wait on\n"
		"  vela event list [--vm VM] [--severity S] [--limit N]  the event log\n"
		"  vela event follow [--vm VM] [--severity S]  new events as they happen\n"
		"  vela perm list                       grants of roles\n"
		"  vela perm grant PRINCIPAL SCOPE ROLE  give user:U or group:G a role on host,\n"
		"                                       folder:/F or vm:ID\n"
		"  vela perm revoke ID                  take a grant back\n"
		"  vela token create NAME               a new API token; prints its secret once\n"
		"  vela token list                      API tokens\n"
		"  vela token delete ID                 revoke an API token\n"
		"  vela disk create -s SIZE [-t TYPE] [-a ADAPTER] FILE   create a disk\n"
		"  vela disk info FILE                  format, size, allocation, chain\n"
		"  vela disk map FILE                   allocated and zero ranges, by chain level\n"
		"  vela disk convert SRC DST [-t TYPE]  copy into a new disk of another type\n"
		"  vela disk clone SRC DST [--linked]   full copy, or a child of SRC\n"
		"  vela disk check [--repair] FILE      verify metadata, trim leaked space\n"
		"  vela disk extend -s SIZE FILE        grow the disk\n"
		"  vela disk compact FILE               drop zeroed grains, give the space back\n"
		"  vela disk rename FILE NEW            rename a disk and its extents; children follow\n"
		"  vela disk delete [--force] FILE      delete a disk's files (not a parent in use)\n"
		"  vela disk addredo FILE               add an empty redo log; prints the new top\n"
		"  vela disk bench [-w] [--bs B] [--step S] [--count N] [--depth D] [--cache none] [--small-pages] [--no-write-behind] FILE  I/O benchmark\n"
		"  vela disk serve [--nbd ADDR] [--readonly] [--name N] FILE  export over NBD\n"
		"  vela disk serve --vhost-user SOCKET [--queues N] [--readonly] FILE  serve a VM's virtio disk\n"
		"  vela disk commit [--level N] [--keep] FILE  merge FILE (or level N below it) into its parent\n"
		"  vela disk relink [--force] FILE PARENT  point FILE at its moved parent\n"
		"\n"
		"Options:\n"
		"  --json             machine-readable output\n"
		"  --timeout S        seconds a soft stop/reset waits for the guest (default 60);\n"
		"                     (task wait, event follow) how long to wait\n"
		"  --dump             (console) print the scrollback and exit\n"
		"  --send TEXT        (console) type TEXT (C escapes: \\n \\r \\t \\xHH) and exit\n"
		"  --wait TEXT        (console) wait until TEXT appears on the console\n"
		"  --count N          (console --wait) wait for the Nth appearance;\n"
		"                     (disk bench) number of requests (default 100000)\n"
		"  -s, --size SIZE    (disk) size with k, m, g, t suffixes\n"
		"  -t, --type TYPE    (disk) raw, monolithicSparse (default), monolithicFlat,\n"
		"                     twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized,\n"
		"                     qcow2, vhd-dynamic, vhd-fixed\n"
		"  -a, --adapter A    (disk) ide, lsilogic (default), buslogic, virtio\n"
		"  --linked           (disk clone) make a child of SRC instead of a copy\n"
		"  --repair           (disk check) trim leaked space\n"
		"  --keep             (disk commit) keep the merged child file;\n"
		"                     (vm export-disk --end) keep the export's redo log\n"
		"  --level N          (disk commit) merge the image N levels below FILE\n"
		"  --force            (disk relink) accept a parent whose content ID differs;\n"
		"                     (disk delete) delete a disk other disks depend on\n"
		"  --bs SIZE          (disk bench) request size (default 4k)\n"
		"  --step SIZE        (disk bench) distance between requests (default: --bs)\n"
		"  --depth N          (disk bench) requests in flight (default 32)\n"
		"  --small-pages      (disk bench) request buffers on 4 KiB pages, not huge pages\n"
		"  --no-write-behind  (disk bench) leave sequential writes in the host cache until the flush\n"
		"  -w, --write        (disk bench) write instead of read\n"
		"  --cache MODE       (disk bench, disk serve) writeback (default: the host page\n"
		"                     cache) or none (data I/O with O_DIRECT)\n"
		"  --nbd ADDR         (disk serve, vm export-disk) HOST:PORT, :PORT (loopback) or a\n"
		"                     socket path;\n"
		"                     default :10809\n"
		"  --vhost-user SOCKET  (disk serve) be a vhost-user-blk back-end on SOCKET\n"
		"  --queues N         (disk serve --vhost-user) request queues offered (default 1)\n"
		"  --readonly         (disk serve) refuse writes\n"
		"  --freeze           (vm commit) hold guest I/O for the whole merge\n"
		"  --no-wait          (vm commit) return once the merge has started;\n"
		"                     (through velad) print the task's id and return\n"
		"  --files            (vm delete) delete the VM's files too\n"
		"  --state S          (task list) running, success, error or cancelled\n"
		"  --description D    (vm snapshot create) what the snapshot is for\n"
		"  --memory           (vm snapshot create) include the running VM's memory\n"
		"  --quiesce          (vm snapshot create) freeze the guest's file systems meanwhile\n"
		"  --end              (vm export-disk) end the export\n"
		"  --iops N, --bps N  (vm disk-limit) I/O per second, bytes per second, read and\n"
		"                     write each; --iops-rd, --iops-wr, --bps-rd, --bps-wr set\n"
		"                     one direction; 0 removes a limit\n"
		"  --name N           (disk serve) export name (default: the file's name);\n"
		"                     (vm register) inventory name (default: displayName)\n"
		"  --host H[:PORT]    talk to velad on host H over HTTPS (port 8333)\n"
		"                     instead of the local socket\n"
		"  --user U           (with --host) log in as U (password from the terminal\n"
		"                     or $VELA_PASSWORD); else $VELA_TOKEN is used\n"
		"  --ca FILE          (with --host) trust this certificate\n"
		"  --insecure         (with --host) do not check the certificate\n"
		"  --socket PATH      velad's local socket (default <run>/velad.sock)\n"
		"  --folder F         (vm register) inventory folder (default /)\n"
		"  --vm VM            (event) only this VM's events\n"
		"  --severity S       (event) info, warning, error or audit\n"
		"  --limit N          (event list) newest N events (default 100)\n"
		"  --order N          (vm autostart) place in the start order (lower first)\n"
		"  --delay S          (vm autostart) seconds before the next VM starts\n"
		"  --stop ACTION      (vm autostart) what host autostop does: soft, hard, none\n"
		"  --off              (vm autostart) do not start with the host\n"
		"  --datastore D      (vm create) where the VM's folder goes (default local)\n"
		"  --memsize MB       (vm create) memory (default 512)\n"
		"  --vcpus N          (vm create) virtual CPUs (default 1)\n"
		"  --guest-os G       (vm create) guestOS (default other-64)\n"
		"  --disk SPEC        (vm create) SIZE[:TYPE[:BUS]], up to 4; BUS scsi (default),\n"
		"                     virtio, ide or sata\n"
		"  --cdrom ISO        (vm create) [datastore] path of a CD-ROM image\n"
		"  -h, --help         this text\n"
		"  -V, --version      print the version\n"
		"\n"
		"VM is an inventory id or name (through velad) or a .vmx path (directly).\n"
		"Environment: VELA_HOME (state and sockets; default /var/lib/vela),\n"
		"VELA_ACCEL (host default accelerator), VELA_VMX_BINARY (supervisor path),\n"
		"VELA_PASSWORD and VELA_TOKEN (with --host).\n");
}

/* Options may come anywhere among the words, as admins type them. */
static int parse_value(const char *opt, const char *val, uint64_t max, uint64_t *out)
{
	if (parse_u64(val, max, out) < 0 || *out == 0) {
		fprintf(stderr, "vela: %s: expected a number from 1 to %llu, got \"%s\"\n", opt,
			(unsigned long long)max, val);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct cli c = { 0 };
	const char *send = NULL, *wait_text = NULL;
	bool dump = false;
	unsigned count = 1;
	uint64_t v;
	const char *words[24];
	size_t nw = 0;

	vela_log_set_level(VELA_LOG_WARN);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		bool has_val = i + 1 < argc;
		if (strcmp(a, "--json") == 0) {
			c.json = true;
		} else if (strcmp(a, "--dump") == 0) {
			dump = true;
		} else if (strcmp(a, "--timeout") == 0 && has_val) {
			if (parse_value(a, argv[++i], 86400, &v) < 0)
				return 2;
			c.timeout_s = (int)v;
		} else if (strcmp(a, "--count") == 0 && has_val) {
			if (parse_value(a, argv[++i], 1000000, &v) < 0)
				return 2;
			count = (unsigned)v;
			c.count = count;
		} else if ((strcmp(a, "-s") == 0 || strcmp(a, "--size") == 0) && has_val) {
			c.size = argv[++i];
		} else if ((strcmp(a, "-t") == 0 || strcmp(a, "--type") == 0) && has_val) {
			c.type = argv[++i];
		} else if ((strcmp(a, "-a") == 0 || strcmp(a, "--adapter") == 0) && has_val) {
			c.adapter = argv[++i];
		} else if (strcmp(a, "--linked") == 0) {
			c.linked = true;
		} else if (strcmp(a, "--repair") == 0) {
			c.repair = true;
		} else if (strcmp(a, "--keep") == 0) {
			c.keep = true;
		} else if (strcmp(a, "--nbd") == 0 && has_val) {
			c.nbd = argv[++i];
		} else if (strcmp(a, "--vhost-user") == 0 && has_val) {
			c.vhost_user = argv[++i];
		} else if (strcmp(a, "--queues") == 0 && has_val) {
			if (parse_value(a, argv[++i], 16, &v) < 0)
				return 2;
			c.queues = (unsigned)v;
		} else if (strcmp(a, "--end") == 0) {
			c.end = true;
		} else if (strcmp(a, "--description") == 0 && has_val) {
			c.description = argv[++i];
		} else if (strcmp(a, "--no-wait") == 0) {
			c.no_wait = true;
		} else if (strcmp(a, "--to") == 0 && has_val) {
			c.to = argv[++i];
		} else if (strcmp(a, "--as") == 0 && has_val) {
			c.as = argv[++i];
		} else if (strcmp(a, "--every") == 0 && has_val) {
			c.every = argv[++i];
		} else if (strcmp(a, "--retain") == 0 && has_val) {
			c.retain = argv[++i];
		} else if (strcmp(a, "--incremental") == 0) {
			c.incremental = true;
		} else if (strcmp(a, "--foreground") == 0) {
			c.foreground = true;
		} else if (strcmp(a, "--now") == 0) {
			c.now = true;
		} else if (strcmp(a, "--compress") == 0) {
			c.compress = true;
		} else if (strcmp(a, "--memory") == 0) {
			c.memory = true;
		} else if (strcmp(a, "--quiesce") == 0) {
			c.quiesce = true;
		} else if (strcmp(a, "--freeze") == 0) {
			c.freeze = true;
		} else if (strcmp(a, "--iops") == 0 && has_val) {
			c.iops = argv[++i];
		} else if (strcmp(a, "--bps") == 0 && has_val) {
			c.bps = argv[++i];
		} else if (strcmp(a, "--iops-rd") == 0 && has_val) {
			c.iops_rd = argv[++i];
		} else if (strcmp(a, "--iops-wr") == 0 && has_val) {
			c.iops_wr = argv[++i];
		} else if (strcmp(a, "--bps-rd") == 0 && has_val) {
			c.bps_rd = argv[++i];
		} else if (strcmp(a, "--bps-wr") == 0 && has_val) {
			c.bps_wr = argv[++i];
		} else if (strcmp(a, "--name") == 0 && has_val) {
			c.name = argv[++i];
		} else if (strcmp(a, "--readonly") == 0) {
			c.read_only = true;
		} else if (strcmp(a, "--cache") == 0 && has_val) {
			c.cache = argv[++i];
		} else if (strcmp(a, "--bs") == 0 && has_val) {
			c.bs = argv[++i];
		} else if (strcmp(a, "--step") == 0 && has_val) {
			c.step = argv[++i];
		} else if (strcmp(a, "--depth") == 0 && has_val) {
			c.depth = argv[++i];
		} else if (strcmp(a, "--small-pages") == 0) {
			c.small_pages = true;
		} else if (strcmp(a, "--no-write-behind") == 0) {
			c.no_write_behind = true;
		} else if (strcmp(a, "-w") == 0 || strcmp(a, "--write") == 0) {
			c.write = true;
		} else if (strcmp(a, "--force") == 0) {
			c.force = true;
		} else if (strcmp(a, "--level") == 0 && has_val) {
			c.level = argv[++i];
		} else if (strcmp(a, "--host") == 0 && has_val) {
			c.host = argv[++i];
		} else if (strcmp(a, "--user") == 0 && has_val) {
			c.user = argv[++i];
		} else if (strcmp(a, "--ca") == 0 && has_val) {
			c.ca = argv[++i];
		} else if (strcmp(a, "--insecure") == 0) {
			c.insecure = true;
		} else if (strcmp(a, "--socket") == 0 && has_val) {
			c.socket = argv[++i];
		} else if (strcmp(a, "--folder") == 0 && has_val) {
			c.folder = argv[++i];
		} else if (strcmp(a, "--vm") == 0 && has_val) {
			c.vm = argv[++i];
		} else if (strcmp(a, "--severity") == 0 && has_val) {
			c.severity = argv[++i];
		} else if (strcmp(a, "--limit") == 0 && has_val) {
			if (parse_value(a, argv[++i], 10000, &v) < 0)
				return 2;
			c.limit = (unsigned)v;
		} else if (strcmp(a, "--order") == 0 && has_val) {
			c.order = argv[++i];
		} else if (strcmp(a, "--delay") == 0 && has_val) {
			c.delay = argv[++i];
		} else if (strcmp(a, "--stop") == 0 && has_val) {
			c.stop_action = argv[++i];
		} else if (strcmp(a, "--memsize") == 0 && has_val) {
			c.memsize = argv[++i];
		} else if (strcmp(a, "--vcpus") == 0 && has_val) {
			c.vcpus = argv[++i];
		} else if (strcmp(a, "--guest-os") == 0 && has_val) {
			c.guest_os = argv[++i];
		} else if (strcmp(a, "--datastore") == 0 && has_val) {
			c.datastore = argv[++i];
		} else if (strcmp(a, "--cdrom") == 0 && has_val) {
			c.cdrom = argv[++i];
		} else if (strcmp(a, "--disk") == 0 && has_val) {
			if (c.n_disks == ARRAY_SIZE(c.disks))
				return cli_usage_error("at most 4 --disk%s", "");
			c.disks[c.n_disks++] = argv[++i];
		} else if (strcmp(a, "--off") == 0) {
			c.off = true;
		} else if (strcmp(a, "--files") == 0) {
			c.files = true;
		} else if (strcmp(a, "--state") == 0 && has_val) {
			c.state = argv[++i];
		} else if (strcmp(a, "--send") == 0 && has_val) {
			send = argv[++i];
		} else if (strcmp(a, "--wait") == 0 && has_val) {
			wait_text = argv[++i];
		} else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(a, "--version") == 0 || strcmp(a, "-V") == 0) {
			printf("vela %s\n", VELA_VERSION);
			return 0;
		} else if (a[0] == '-' && a[1] && !(a[1] >= '0' && a[1] <= '9')) {
			return cli_usage_error("unknown option or missing value: %s", a);
		} else if (nw < ARRAY_SIZE(words)) {
			words[nw++] = a;
		} else {
			return cli_usage_error("too many arguments (at \"%s\")", a);
		}
	}
	if (nw == 0) {
		usage(stderr);
		return 2;
	}

	if (strcmp(words[0], "errors") == 0 && nw == 1)
		return cmd_errors(&c);
	if (strcmp(words[0], "backup") == 0 || strcmp(words[0], "restore") == 0)
		return cmd_backup(&c, words, nw);
	if (strcmp(words[0], "disk") == 0)
		return cmd_disk(&c, words, nw);
	if (strcmp(words[0], "vmx") == 0) {
		if (nw == 3 && strcmp(words[1], "check") == 0)
			return cmd_vmx_check(&c, words[2]);
		return cli_usage_error("usage: vela vmx check FILE.vmx%s", "");
	}
	static const char *const remote_nouns[] = { "host", "ds", "event", "perm", "token", "task", "question" };
	for (size_t i = 0; i < ARRAY_SIZE(remote_nouns); i++)
		if (strcmp(words[0], remote_nouns[i]) == 0)
			return cmd_remote(&c, words, nw);
	if (strcmp(words[0], "vm") != 0 || nw < 2)
		return cli_usage_error("unknown command \"%s\"", words[0]);

	const char *verb = words[1];
	/* The inventory lives in velad; so does every VM named by id or name
	 * rather than by its .vmx file, and everything with --host. */
	static const char *const inventory_verbs[] = { "list", "register", "unregister", "get", "autostart", "create",
							"delete", "set", "stats" };
	for (size_t i = 0; i < ARRAY_SIZE(inventory_verbs); i++)
		if (strcmp(verb, inventory_verbs[i]) == 0)
			return cmd_remote(&c, words, nw);
	static const char *const power_verbs[] = { "start", "stop", "reset", "pause", "unpause", "getstate", "status",
						   "answer", "suspend", "resume" };
	for (size_t i = 0; i < ARRAY_SIZE(power_verbs); i++) {
		if (strcmp(verb, power_verbs[i]) != 0 || nw < 3)
			continue;
		/* The mode may come before the VM, as with files. */
		enum vm_power_mode pm;
		bool mode_first = (strcmp(verb, "stop") == 0 || strcmp(verb, "reset") == 0) && nw == 4 &&
				  vm_power_mode_parse(words[2], &pm) == 0;
		/* A .vmx path anywhere among the words means the direct way (which
		 * also reports a bad mode next to a file). */
		bool is_file = false;
		for (size_t k = 2; k < nw && k < 4; k++)
			is_file |= strchr(words[k], '/') || strstr(words[k], ".vmx") || access(words[k], F_OK) == 0;
		if (c.host || !is_file) {
			if (mode_first) {
				const char *w[4] = { words[0], words[1], words[3], words[2] };
				return cmd_remote(&c, w, 4);
			}
			return cmd_remote(&c, words, nw);
		}
	}
	if (strcmp(verb, "snapshot") == 0) {
		/* A .vmx file: directly; a VM's id or name (or --host): velad. */
		bool file = nw > 3 && (strchr(words[3], '/') || strstr(words[3], ".vmx") || access(words[3], F_OK) == 0);
		if (c.host || (nw > 3 && !file))
			return cmd_remote(&c, words, nw);
		return cmd_vm_snapshot(&c, words, nw);
	}
	static const char *const guest_verbs[] = { "guest", "guestinfo", "freeze", "thaw", "sync-time", "zero-fill" };
	for (size_t i = 0; i < ARRAY_SIZE(guest_verbs); i++)
		if (strcmp(verb, guest_verbs[i]) == 0)
			return cmd_vm_guest(&c, words, nw);
	/* The power mode and the file may come in either order. */
	const char *file = NULL, *mode = NULL, *extra = NULL;
	for (size_t i = 2; i < nw; i++) {
		enum vm_power_mode pm;
		if (!mode && (strcmp(verb, "stop") == 0 || strcmp(verb, "reset") == 0) &&
		    vm_power_mode_parse(words[i], &pm) == 0)
			mode = words[i];
		else if (!file)
			file = words[i];
		else if (!extra)
			extra = words[i];
		else
			return cli_usage_error("too many arguments for vm %s", verb);
	}
	if (!file)
		return cli_usage_error("vm %s needs a FILE.vmx", verb);
	if (extra && (strcmp(verb, "stop") == 0 || strcmp(verb, "reset") == 0) && !mode) {
		/* Two words, neither a known mode: the one that is not a file is a bad mode. */
		const char *bad = access(file, F_OK) == 0 ? extra : file;
		enum vm_power_mode pm;
		return cli_fail(&c, vm_power_mode_parse(bad, &pm));
	}
	static const char *const disk_verbs[] = { "addredo", "commit", "disk-stats", "disk-limit", "export-disk" };
	for (size_t i = 0; i < ARRAY_SIZE(disk_verbs); i++)
		if (strcmp(verb, disk_verbs[i]) == 0)
			return cmd_vm_disk(&c, verb, file, extra);
	if (extra && strcmp(verb, "answer") != 0)
		return cli_usage_error("unexpected argument \"%s\"", extra);

	if (strcmp(verb, "start") == 0 || strcmp(verb, "resume") == 0) {
		if (strcmp(verb, "resume") == 0 && !vmxsup_is_suspended(file, NULL) && !vmxsup_is_running(file))
			return cli_fail(&c, vela_error(VELA_E_BADSTATE, "%s: the VM is not suspended", file));
		return vm_start(&c, file);
	}
	if (strcmp(verb, "suspend") == 0)
		return call_simple(&c, file, json_pack("{s:s}", "cmd", "suspend"), 3600 * 1000);
	if (strcmp(verb, "stop") == 0 || strcmp(verb, "reset") == 0)
		return vm_power(&c, verb, file, mode ? mode : "trysoft");
	if (strcmp(verb, "pause") == 0 || strcmp(verb, "unpause") == 0)
		return call_simple(&c, file, json_pack("{s:s}", "cmd", verb), 15000);
	if (strcmp(verb, "getstate") == 0)
		return vm_getstate(&c, file, false);
	if (strcmp(verb, "status") == 0)
		return vm_getstate(&c, file, true);
	if (strcmp(verb, "answer") == 0) {
		if (!extra)
			return cli_usage_error("usage: vela vm answer FILE.vmx keep|create|cancel%s", "");
		return call_simple(&c, file, json_pack("{s:s, s:s}", "cmd", "answer", "choice", extra), 120000);
	}
	if (strcmp(verb, "console") == 0)
		return vm_console(&c, file, dump ? "" : NULL, send, wait_text, count,
				  c.timeout_s ? c.timeout_s : 60);
	return cli_usage_error("unknown vm command \"%s\"", verb);
}
