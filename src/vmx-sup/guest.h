/*
 * guest.h - the supervisor's end of the guest-agent channel (private to
 * vela-vmx).  It owns the socket QEMU's virtio-serial port is connected to,
 * keeps the agent's heartbeat and guest information, answers the agent's
 * questions (machine.id, guestinfo) and carries the supervisor's requests
 * (shutdown, time-set, freeze, thaw, zero-fill) to the agent.
 */
#ifndef VELA_VMXSUP_GUEST_H
#define VELA_VMXSUP_GUEST_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "common.h"

struct sup_guest;

struct sup_guest_opts {
	const char *machine_id;          /* machine.id, or NULL */
	bool machine_id_blocked;         /* isolation.tools.machine.id.get.disable */
	unsigned heartbeat_timeout_s;    /* tools.heartbeatTimeout (default 60) */
	bool sync_time;                  /* tools.syncTime: set the guest clock every minute */
	json_t *guestinfo;               /* guestinfo.* keys of the .vmx (borrowed, copied) */
	bool resumed;                    /* a resumed VM: set the guest's clock as soon as its agent answers */
};

/* Take ownership of fd (our end of the channel). */
int sup_guest_new(struct vela_loop *loop, int fd, const struct sup_guest_opts *o, struct sup_guest **out);
void sup_guest_free(struct sup_guest *g);

/*
 * The answer to a request: r = 0 and the reply object (borrowed), or r < 0
 * (the message in vela_errmsg()) when the agent refused, did not answer
 * within the timeout, or the channel closed.
 */
typedef void (*sup_guest_reply_cb)(void *opaque, uint64_t tag, int r, json_t *reply);

/* Send a request to the agent; -VELA_E_NOAGENT when no agent is running. */
int sup_guest_request(struct sup_guest *g, const char *cmd, json_t *args, int timeout_ms, sup_guest_reply_cb cb,
		      void *opaque, uint64_t tag);

/* Is an agent running (it said hello, and its heartbeat is not lost)? */
bool sup_guest_ready(const struct sup_guest *g);

/* The VM was paused, suspended or resumed: no beats are expected while it
 * does not run, and the clock is set after a resume or a revert. */
void sup_guest_vm_running(struct sup_guest *g, bool running, const char *why);

/* {agent: "running"|"not running"|"stopped", heartbeat: "ok"|"lost"|"none",
 *  last_heard_s, info: {...}} */
json_t *sup_guest_status(const struct sup_guest *g);
/* {values: {key: value}} of guestinfo; set (value NULL = remove). */
json_t *sup_guest_guestinfo(const struct sup_guest *g);
int sup_guest_guestinfo_set(struct sup_guest *g, const char *key, const char *value, const char *who);

#endif /* VELA_VMXSUP_GUEST_H */
