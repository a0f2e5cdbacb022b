/*
 * engine.h - the execution engine: choose the accelerator, build QEMU's
 * command line from a vmx_model, and talk QMP.
 */
#ifndef VELA_ENGINE_H
#define VELA_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "vmx.h"

struct strbuf;

/* ---------------------------------------------------------- accelerator */

enum engine_accel { ENGINE_ACCEL_TCG, ENGINE_ACCEL_KVM };

struct engine_host_virt {
	bool cpu_flag;       /* vmx or svm in /proc/cpuinfo */
	bool kvm_usable;     /* /dev/kvm opens, API version 12, a VM can be created */
	char detail[256];    /* why KVM is or is not usable */
};

/* Probe the host (reads /proc/cpuinfo and tries /dev/kvm). */
void engine_probe_host(struct engine_host_virt *out);
/* Does this /proc/cpuinfo text advertise hardware virtualization? */
bool engine_cpuinfo_has_virt(const char *cpuinfo);
/*
 * Decide the accelerator.  auto: KVM only if both the CPU flag and a usable
 * /dev/kvm are there, else TCG.  kvm requested on a host without it fails with
 * -VELA_E_NOTSUP.  *why explains the choice (for logs and host info).
 */
int engine_choose_accel(enum vmx_accel requested, const struct engine_host_virt *host,
			enum engine_accel *out, char *why, size_t why_len);
const char *engine_accel_name(enum engine_accel a);

/* ------------------------------------------------------------- QEMU argv */

struct engine_runtime {
	const char *qemu_binary;  /* default "qemu-system-x86_64" */
	enum engine_accel accel;
	int qmp_fd;               /* connected socket QEMU gets for QMP */
	int console_fd;           /* connected socket for the serial console, or -1 */
	const char *vnc_socket;   /* UNIX socket path for the graphical console, or NULL */
	const char *name;         /* -name, e.g. the display name */
	/*
	 * Disks the supervisor serves, indexed like the model's disks (NULL
	 * entry or array: QEMU opens the file itself; CD-ROMs always are):
	 * a virtio disk becomes vhost-user-blk on that socket; a disk on an
	 * emulated controller (IDE, SCSI, SATA) keeps its controller and
	 * reads and writes through an NBD client on it (export = disk id).
	 */
	char *const *disk_sockets;
	/* Connected socket for the guest agent's virtio-serial port
	 * (org.vela.guestd.0); 0 or less: no agent channel. */
	int agent_fd;
	/* Start waiting for a saved state (-incoming defer): the supervisor
	 * then feeds it with migrate-incoming.  With incoming_fd > 0, QEMU
	 * reads the state from that descriptor at once (-incoming fd:N). */
	bool incoming;
	int incoming_fd;
};

/* Disk image format by content: "raw", "vmdk", "qcow2", "vpc" (VHD). */
int engine_probe_format(const char *path, const char **format);

/*
 * Build the argv (NULL-terminated; free with engine_argv_free).  Devices that
 * QEMU cannot emulate exactly are mapped to the closest one and a line per
 * approximation is appended to notes.
 *
 * Guest RAM is a shared memfd when a disk is served over vhost-user-blk
 * (the back-end reads and writes it directly).
 */
int engine_build_argv(const struct vmx_model *m, const struct engine_runtime *rt,
		      char ***argv, struct strbuf *notes);
void engine_argv_free(char **argv);
/*
 * The machine the guest sees: QEMU's options for the model with the runtime
 * parts (descriptors, socket paths, the name) left out, as an array of
 * strings.  A saved state can only be loaded into a machine with the same
 * fingerprint.
 */
int engine_machine_fingerprint(const struct vmx_model *m, enum engine_accel accel, json_t **out);
/* Quote argv for logs: a shell-pasteable line (caller frees). */
char *engine_argv_to_string(char *const *argv);

/* ------------------------------------------------------------------ QMP */

enum qmp_msg_kind { QMP_MSG_GREETING, QMP_MSG_RETURN, QMP_MSG_ERROR, QMP_MSG_EVENT };

struct qmp_msg {
	enum qmp_msg_kind kind;
	json_t *json;          /* the whole message (owned) */
	const char *event;     /* QMP_MSG_EVENT: name */
	json_t *data;          /* event data / return value (borrowed from json) */
	const char *err_class; /* QMP_MSG_ERROR */
	const char *err_desc;
	int64_t id;            /* our numeric "id", -1 if absent */
};

/* Parse one message line.  Anything malformed: -VELA_E_PROTOCOL. */
int qmp_parse_message(const char *text, size_t len, struct qmp_msg *out);
void qmp_msg_clear(struct qmp_msg *msg);

struct qmp;

/* Take ownership of a connected socket. */
struct qmp *qmp_new(int fd);
void qmp_free(struct qmp *q);
int qmp_fd(const struct qmp *q);
/* Read the greeting and negotiate capabilities. */
int qmp_handshake(struct qmp *q, int timeout_ms);
/*
 * Run a command synchronously; events arriving meanwhile are queued for
 * qmp_next_event().  *ret (may be NULL) gets the "return" value (caller
 * decrefs).  A QMP error becomes -VELA_E_QMP with QEMU's description.
 */
int qmp_execute(struct qmp *q, const char *command, json_t *args, json_t **ret, int timeout_ms);
/* Read what is available (non-blocking) and parse it; 0, or -VELA_E_CONNRESET
 * when QEMU closed the connection. */
int qmp_read_events(struct qmp *q);
/* Pop a queued event (caller clears it); false if none. */
bool qmp_next_event(struct qmp *q, struct qmp_msg *out);

#endif /* VELA_ENGINE_H */
