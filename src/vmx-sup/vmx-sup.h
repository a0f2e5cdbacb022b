/*
 * vmx-sup.h - the per-VM supervisor (vela-vmx) and the client side of its
 * control socket.
 *
 * One vela-vmx process runs per powered-on VM.  It owns the QEMU child, the
 * QMP connection, the serial console (with scrollback) and the VM's log file,
 * and exits when the VM powers off.  Its runtime folder is
 * <vela_run_root()>/vm/<vmid>/ where vmid is derived from the absolute path of
 * the .vmx, so any client that knows the config path can find it:
 *
 *   lock          flock()ed by the live supervisor (no lock holder = VM off)
 *   control.sock  JSON lines: one request object in, one reply object out
 *   console.sock  raw byte stream: scrollback first, then live output; input
 *                 written to it goes to the guest's serial console
 *   pid           supervisor pid
 *   config        absolute path of the .vmx
 *
 * Control requests ({"cmd": ...}): status, stop {mode, timeout}, reset
 * {mode, timeout}, pause, unpause, suspend, answer {choice}, scrollback,
 * screendump, edit {keys}, guest, guestinfo {key, value}, guest-op {op},
 * and the live disk operations (addredo, commit, export-disk, ...).
 * Replies: {"ok": true, ...} or {"ok": false, "error": {"code", "name",
 * "message"}}.
 */
#ifndef VELA_VMX_SUP_H
#define VELA_VMX_SUP_H

#include <stdbool.h>
#include <jansson.h>

enum vm_state {
	VM_OFF,
	VM_STARTING,
	VM_ON,
	VM_PAUSED,
	VM_SUSPENDED,
	VM_STUCK,
	VM_STOPPING,
	VM_SUSPENDING,
	VM_RESUMING,
	VM_RESETTING,
};

enum vm_power_mode { VM_POWER_HARD, VM_POWER_SOFT, VM_POWER_TRYSOFT };

const char *vm_state_name(enum vm_state s);
int vm_power_mode_parse(const char *s, enum vm_power_mode *out);
const char *vm_power_mode_name(enum vm_power_mode m);

/* Runtime folder of the VM whose config is config_path (caller frees). */
int vmxsup_run_dir(const char *config_path, char **out);

/*
 * Send one request to the VM's supervisor and wait for the reply (up to
 * timeout_ms).  No supervisor: -VELA_E_NOTRUNNING.  A reply with ok=false is
 * turned into its error code and message; *reply (may be NULL) gets the reply
 * object on success (caller decrefs).
 */
int vmxsup_call(const char *config_path, json_t *request, json_t **reply, int timeout_ms);

/* Is a supervisor alive for this config? */
bool vmxsup_is_running(const char *config_path);

/*
 * Power on: start a detached vela-vmx for config_path and wait until the VM
 * is on, stuck on a question, or failed.  *reply gets the supervisor's first
 * status (caller decrefs).  vmx_binary: path of vela-vmx (NULL = next to the
 * running program, else $PATH).
 */
int vmxsup_spawn(const char *config_path, const char *vmx_binary, json_t **reply, int timeout_ms);

/*
 * A VM with no supervisor is off, or suspended when its .vmx names a saved
 * state that exists (checkpoint.vmState).  *vmstate (may be NULL) gets the
 * state file's path.  Powering a suspended VM off discards the state.
 */
bool vmxsup_is_suspended(const char *config_path, char **vmstate);
int vmxsup_discard_suspended(const char *config_path);

/* The supervisor itself (vela-vmx's main). */
struct vmxsup_opts {
	const char *config_path;
	int ready_fd;        /* write one JSON status line here once on/stuck/failed; -1 = none */
	bool daemonize;
	const char *qemu_binary;
	const char *accel_override;  /* host-level default for engine.accel = auto */
};
int vmxsup_main(const struct vmxsup_opts *opts);

#endif /* VELA_VMX_SUP_H */
