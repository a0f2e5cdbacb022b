/* snapshots.c - a VM's disk snapshots through velad: src/snapshot under the
 * VM's operation lock, with audit events. */
#include "common.h"
#include "internal.h"
#include "snapshot.h"
#include "vmx-sup.h"

#include <string.h>

int host_vm_snapshots(struct host *h, int64_t id, json_t **out)
{
	struct vm_row v = { 0 };
	int r = host_vm_row_get(h, id, &v);
	if (r == 0)
		r = snapshot_list(v.config, out);
	host_vm_row_clear(&v);
	return r;
}

int host_vm_snapshot(struct host *h, const char *user, int64_t id, const char *op, const char *name, bool memory,
		     bool quiesce,
		     const char *description, json_t **out)
{
	if (!op || (strcmp(op, "create") != 0 && strcmp(op, "revert") != 0 && strcmp(op, "delete") != 0))
		return vela_error(VELA_E_INVAL, "snapshot: create, revert or delete");
	if (!name || !host_name_ok(name, 200))
		return vela_error(VELA_E_BADNAME, "snapshot: a name of 1-200 characters");
	if (description && (strlen(description) > 1024 || strpbrk(description, "\n\r")))
		return vela_error(VELA_E_INVAL, "snapshot: a description is one line of at most 1024 bytes");
	struct vm_row v = { 0 };
	struct vm_oplock *l = NULL;
	int r = host_vm_lock(h, id, &v, &l);
	if (r < 0)
		return r;
	bool live = false;
	if (strcmp(op, "create") == 0) {
		struct snapshot_opts so = { .description = description, .memory = memory, .quiesce = quiesce };
		r = snapshot_create(v.config, name, &so, out);
	} else if (strcmp(op, "revert") == 0) {
		bool resume = false;
		r = snapshot_revert(v.config, name, &resume);
		if (r == 0 && resume) {
			/* A memory snapshot: the VM runs on from that instant. */
			json_t *st = NULL;
			r = vmxsup_spawn(v.config, h->vmx_binary, &st, h->power_timeout_ms);
			if (r < 0)
				vela_error_context(r, "reverted to \"%s\", but resuming it failed", name);
			json_decref(st);
			live = r == 0;
		}
	} else {
		r = snapshot_delete(v.config, name, &live);
	}
	if (r == 0 && !*out)
		*out = json_pack("{s:s, s:b}", "name", name, "live", live);
	pthread_mutex_unlock(&l->lock);
	if (r == 0)
		host_event(h, HOST_AUDIT, id, user, "vm.snapshot", "%s \"%s\"", op, name);
	else
		vela_error_context(r, "VM %lld (%s)", (long long)id, v.name);
	host_vm_row_clear(&v);
	return r;
}
