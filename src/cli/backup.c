/* backup.c - `vela backup VM --to DIR`, `vela backup verify DIR`,
 * `vela backup mount|unmount`, `vela restore BACKUP --to DIR [--as NAME]`. */
#include "common.h"
#include "backup.h"
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static bool print_progress(unsigned percent, void *opaque)
{
	(void)opaque;
	if (isatty(STDERR_FILENO))
		fprintf(stderr, "\rbackup: %3u%%%s", percent, percent == 100 ? "\n" : "");
	return true;
}

struct mount_ready {
	const struct cli *c;
	int fd;   /* to the waiting parent, -1 in the foreground */
};

static void print_listing(const struct cli *c, const char *mountpoint, json_t *listing)
{
	if (c->json) {
		json_t *j = json_pack("{s:s, s:O}", "mountpoint", mountpoint, "files", json_object_get(listing, "files"));
		cli_print_json(j);
		json_decref(j);
		return;
	}
	size_t i;
	json_t *f;
	json_array_foreach(json_object_get(listing, "files"), i, f) {
		const char *err = json_string_value(json_object_get(f, "partition_error"));
		printf("%s/%s  %lld bytes  %s", mountpoint, json_string_value(json_object_get(f, "name")),
		       (long long)json_integer_value(json_object_get(f, "size")),
		       json_string_value(json_object_get(f, "disk")));
		if (json_object_get(f, "partition"))
			printf(" partition %lld (%s)", (long long)json_integer_value(json_object_get(f, "partition")),
			       json_string_value(json_object_get(f, "type")));
		if (err)
			printf(" (partition table not read: %s)", err);
		printf("\n");
	}
	fflush(stdout);
}

static void mount_is_ready(json_t *listing, void *opaque)
{
	struct mount_ready *m = opaque;
	print_listing(m->c, m->c->to ? m->c->to : "", listing);
	if (m->fd >= 0) {
		/* The parent may go now; the file system runs on here. */
		fflush(stdout);
		fflush(stderr);
		write_all(m->fd, "+", 1);
		close(m->fd);
		m->fd = -1;
		/* Let go of the caller's terminal or pipe, as a daemon does (a
		 * shell's $(...) waits for every writer to close). */
		int null = open("/dev/null", O_RDWR);
		if (null >= 0) {
			dup2(null, STDIN_FILENO);
			dup2(null, STDOUT_FILENO);
			dup2(null, STDERR_FILENO);
			if (null > STDERR_FILENO)
				close(null);
		}
	}
}

/* vela backup mount BACKUP DIR [--foreground]: like other FUSE file
 * systems, returns once mounted and serves in the background. */
static int mount_backup(const struct cli *c, const char *backup, const char *dir)
{
	struct cli cc = *c;
	cc.to = dir;
	struct mount_ready m = { .c = &cc, .fd = -1 };
	struct backup_mount_opts o = { .ready = mount_is_ready, .opaque = &m };
	if (c->foreground) {
		int r = backup_mount(backup, dir, &o);
		return r < 0 ? cli_fail(c, r) : 0;
	}
	int p[2];
	if (pipe(p) < 0)
		return cli_fail(c, vela_error_errno(errno, "pipe"));
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		return cli_fail(c, vela_error_errno(errno, "fork"));
	if (pid == 0) {
		close(p[0]);
		setsid();
		m.fd = p[1];
		int r = backup_mount(backup, dir, &o);
		if (r < 0 && m.fd >= 0) {
			/* Not mounted: the parent reports the error. */
			dprintf(m.fd, "-%d %s", -r, vela_errmsg());
			_exit(1);
		}
		_exit(r < 0 ? 1 : 0);
	}
	close(p[1]);
	char buf[4096];
	size_t got = 0;
	ssize_t k;
	while (got < sizeof buf - 1 && (k = read(p[0], buf + got, sizeof buf - 1 - got)) != 0) {
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			break;
		got += (size_t)k;
		if (buf[0] == '+')
			break;
	}
	close(p[0]);
	buf[got] = 0;
	if (got && buf[0] == '+')
		return 0;   /* the child printed the files */
	int status;
	waitpid(pid, &status, 0);
	int code = VELA_E_SYSTEM;
	const char *msg = "the file system process ended before mounting";
	if (got && buf[0] == '-') {
		char *sp = strchr(buf, ' ');
		code = atoi(buf + 1);
		msg = sp ? sp + 1 : msg;
	}
	vela_error(-code, "%s", msg);
	return cli_fail(c, -code);
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
	if (strcmp(w[0], "backup") == 0 && n == 4 && strcmp(w[1], "mount") == 0)
		return mount_backup(c, w[2], w[3]);
	if (strcmp(w[0], "backup") == 0 && n == 3 && (strcmp(w[1], "unmount") == 0 || strcmp(w[1], "umount") == 0)) {
		if ((r = backup_unmount(w[2])) < 0)
			return cli_fail(c, r);
		return 0;
	}
	/* A VM of velad's inventory (by id or name), schedules, or --host: velad. */
	bool remote = c->host || (strcmp(w[0], "backup") == 0 && n >= 2 &&
				  (strcmp(w[1], "schedule") == 0 || strcmp(w[1], "list") == 0 ||
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
			       "vela backup mount BACKUP DIR | vela backup unmount DIR | "
			       "vela restore BACKUP --to DIR [--as NAME]%s", "");
}
