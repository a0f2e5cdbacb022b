/* cli.h - shared parts of the vela command (private to src/cli). */
#ifndef VELA_CLI_H
#define VELA_CLI_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

struct cli {
	bool json;
	int timeout_s;        /* soft power-op timeout, 0 = supervisor default */
	/* vela disk */
	const char *size;     /* -s */
	const char *type;     /* -t */
	const char *adapter;  /* -a */
	bool linked, repair, keep, force;
	const char *level;    /* --level N */
	/* vela disk bench */
	const char *bs, *step, *depth;
	unsigned count;
	bool write;
	bool small_pages;     /* --small-pages: bench buffers without huge pages */
	bool no_write_behind; /* --no-write-behind: bench without pushing streams early */
	const char *cache;    /* --cache none|writeback (disk bench, disk serve) */
	/* vela disk serve */
	const char *nbd, *name;
	const char *vhost_user;   /* --vhost-user SOCKET */
	unsigned queues;          /* --queues N */
	/* vela vm commit / disk-limit */
	bool freeze;
	bool no_wait;           /* vm commit --no-wait */
	const char *description;   /* vm snapshot create */
	bool memory, quiesce;      /* vm snapshot create --memory --quiesce; backup --quiesce */
	const char *to, *as;       /* backup --to DIR, restore --to DIR --as NAME */
	bool compress;             /* backup --compress */
	const char *every, *retain; /* backup schedule --every DURATION --retain N */
	bool now;                  /* backup schedule --now */
	bool incremental;          /* backup --incremental */
	bool foreground;           /* backup mount --foreground */
	bool end;               /* vm export-disk --end */
	const char *iops, *bps, *iops_rd, *iops_wr, *bps_rd, *bps_wr;
	bool read_only;
	/* through velad */
	const char *host;       /* --host H[:PORT]: HTTPS instead of the local socket */
	const char *user;       /* --user U: PAM login (password from the terminal or $VELA_PASSWORD) */
	const char *ca;         /* --ca FILE: the certificate to trust */
	bool insecure;          /* --insecure: no certificate check */
	const char *socket;     /* --socket PATH: velad's local socket */
	const char *folder;     /* vm register --folder */
	const char *vm;         /* event list --vm */
	const char *severity;   /* event list --severity */
	unsigned limit;         /* event list --limit */
	const char *order, *delay, *stop_action;   /* vm autostart --order --delay --stop */
	bool off;               /* vm autostart --off */
	const char *memsize, *vcpus, *guest_os, *datastore, *cdrom;   /* vm create */
	const char *disks[4];   /* vm create --disk SIZE[:TYPE[:BUS]] */
	unsigned n_disks;
	bool files;             /* vm delete --files */
	const char *state;      /* task list --state */
};

/* --cache: true = through the host page cache (default), false = O_DIRECT. */
int cli_host_cache(const struct cli *c, bool *host_cache);

/* Print the current error (text or JSON) and return the exit status 1. */
int cli_fail(const struct cli *c, int code);
void cli_print_json(json_t *j);
int cli_usage_error(const char *fmt, const char *arg);

/* vela disk VERB ARGS... */
int cmd_disk(const struct cli *c, const char *const *words, size_t n);
/* vela vm addredo|commit|disk-stats|disk-limit FILE.vmx [DISK] */
int cmd_vm_disk(const struct cli *c, const char *verb, const char *file, const char *disk);
/* Through velad: vela vm list|register|unregister|get|start|... VM,
 * vela host info, vela ds list, vela event list|follow, vela perm ...,
 * vela token ... */
int cmd_remote(const struct cli *c, const char *const *words, size_t n);
/* vela vm guest|guestinfo|freeze|thaw|sync-time|zero-fill FILE.vmx ... */
int cmd_vm_guest(const struct cli *c, const char *const *words, size_t n);
/* vela vm snapshot create|list|revert|delete FILE.vmx [NAME] */
int cmd_vm_snapshot(const struct cli *c, const char *const *words, size_t n);
/* vela backup FILE.vmx --to DIR | backup verify DIR | restore BACKUP --to DIR */
int cmd_backup(const struct cli *c, const char *const *words, size_t n);

#endif
