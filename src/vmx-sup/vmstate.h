/*
 * vmstate.h - the suspended-state file (private to vela-vmx).
 *
 * <stem>.vmss in the VM's folder (or suspend.directory) is QEMU's own
 * migration stream, as QEMU wrote it, followed by Vela's trailer:
 *
 *   JSON metadata (the machine's fingerprint, the disks' stamps, the
 *   guestinfo values, when and by what it was written)
 *   "VELA-VMSTATE-1\n\0" (16 bytes)  the JSON's length (8 bytes, LE)
 *
 * The trailer goes on after QEMU and the disks are closed, then the file
 * is made durable; only then does the .vmx name it (checkpoint.vmState).
 * A file without a valid trailer is an unfinished suspend and never loads.
 */
#ifndef VELA_VMXSUP_VMSTATE_H
#define VELA_VMXSUP_VMSTATE_H

#include <stdint.h>

#include <jansson.h>

#include "vmx.h"

#define VMSTATE_META_MAX (4u << 20)

/* Append the trailer and fsync the file (and its folder). */
int vmstate_finish(const char *path, json_t *meta);
/* Read and check the trailer: *meta (caller decrefs) and the length of
 * QEMU's stream at the start of the file. */
int vmstate_read(const char *path, json_t **meta, uint64_t *stream_len);

/* The stamps of a disk's files as they are now: {addr, base, top, files:
 * [{path, size, mtime_ns}]}. */
json_t *vmstate_disk_stamp(const char *addr, const char *base, const char *top);
/*
 * May the state in meta be loaded into this VM?  fingerprint is the
 * machine's now (engine_machine_fingerprint); disks: the model.  A refusal
 * is -VELA_E_BADSTATE saying what changed.
 */
int vmstate_check(json_t *meta, json_t *fingerprint, const struct vmx_model *m);

#endif
