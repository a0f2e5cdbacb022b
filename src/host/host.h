/*
 * host.h - velad's core: the host's inventory of virtual machines, power
 * control through their supervisors, the event log and the datastores, kept
 * in one SQLite database ($VELA_HOME/host.db, WAL mode).
 *
 * Every function is safe to call from several threads at once (the API
 * serves requests in a thread pool).  Database work is serialized inside;
 * long power operations run without holding any host-wide lock, and each VM
 * has its own operation lock so two power requests on one VM never race:
 * the second waits, then meets the state the first left (and a refusal from
 * the supervisor's state machine when that state does not allow it).
 *
 * Running VMs belong to their vela-vmx supervisors, not to velad: closing the
 * host (or killing velad) never stops them, and host_open finds them again.
 *
 * "user" arguments name who asked (for the audit trail in the event log).
 */
#ifndef VELA_HOST_H
#define VELA_HOST_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

struct host;

struct host_opts {
	const char *home;         /* NULL = vela_home() */
	const char *vmx_binary;   /* vela-vmx to start VMs with; NULL = the default search */
	int power_timeout_ms;     /* how long a power operation may take; 0 = 120 s */
};

/* Open (or create) the host database, make the default datastore on first
 * start and reconcile the inventory with the supervisors that are running. */
int host_open(const struct host_opts *opts, struct host **out);
void host_close(struct host *h);

/* ---- inventory */

/*
 * Register an existing .vmx (absolute path, or relative to a datastore as
 * "[name] dir/file.vmx").  name NULL = the file's displayName; folder NULL =
 * "/".  *out gets the new VM object (caller decrefs).
 */
int host_vm_register(struct host *h, const char *user, const char *config, const char *name, const char *folder,
		     json_t **out);
/* Forget a VM (files stay).  A VM that is not off is refused. */
int host_vm_unregister(struct host *h, const char *user, int64_t id);
/* All VMs: [{id, name, folder, config, state}], by id. */
int host_vm_list(struct host *h, json_t **out);
/* One VM with its supervisor's status when it runs. */
int host_vm_get(struct host *h, int64_t id, json_t **out);

/*
 * Power operations: op = start, stop, reset, pause, unpause; mode (stop,
 * reset) = hard, soft or trysoft (NULL = trysoft).  *out gets the VM's status
 * afterwards.  Refusals of the state machine come back as VELA_E_BADSTATE.
 */
int host_vm_power(struct host *h, const char *user, int64_t id, const char *op, const char *mode, json_t **out);
/* Answer the VM's pending question. */
int host_vm_answer(struct host *h, const char *user, int64_t id, const char *choice, json_t **out);

/* ---- events */

enum host_severity { HOST_INFO, HOST_WARNING, HOST_ERROR, HOST_AUDIT };
const char *host_severity_name(enum host_severity s);
int host_severity_parse(const char *s, enum host_severity *out);

/* Record an event (vm_id 0 = the host itself). */
int host_event(struct host *h, enum host_severity sev, int64_t vm_id, const char *user, const char *type,
	       const char *fmt, ...) __attribute__((format(printf, 6, 7)));

struct host_event_query {
	int64_t vm_id;            /* 0 = any */
	int64_t after_id;         /* only events with a larger id (for following) */
	int64_t since_ms;         /* 0 = any time */
	const char *severity;     /* NULL = any */
	unsigned limit;           /* 0 = 100; at most 10000 */
};
/* Newest last: [{id, time, severity, vm, user, type, message}]. */
int host_event_list(struct host *h, const struct host_event_query *q, json_t **out);

/* ---- host and datastores */

/* {name, version, home, vms, running, datastores:[...]} */
int host_info(struct host *h, json_t **out);
/* [{name, path, capacity, free}] */
int host_datastore_list(struct host *h, json_t **out);

#endif /* VELA_HOST_H */
