/*
 * backup.h - hot backup and restore of whole VMs.
 *
 * A backup is a folder: the VM's .vmx (disks renamed to the copies), one
 * image per hard disk (the disk flattened, sparse: streamOptimized VMDK
 * when compressed, monolithicSparse otherwise), the NVRAM and the logs,
 * and manifest.json with XXH3-128 checksums: of each file, and of a full
 * disk copy's content (taken as it is written, so no second pass).
 *
 * A running VM keeps running: its disks get a redo log (at one instant,
 * with the guest's file systems frozen by its agent when asked), the
 * now-static images under the logs are copied, then the logs are merged
 * back live (consolidation).  Without the agent the copy is
 * crash-consistent, with it application-consistent.
 */
#ifndef VELA_BACKUP_H
#define VELA_BACKUP_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

struct backup_opts {
	bool quiesce;      /* freeze the guest's file systems (agent) for the instant */
	bool compress;     /* streamOptimized images instead of monolithicSparse */
	/* With ctkEnabled: copy only what changed since the newest backup of
	 * the VM in the same folder (a child image of that backup's), when the
	 * changed-block map covers exactly that time; a full copy otherwise. */
	bool incremental;
	/* Progress over all disks, 0-100; return false to cancel. */
	bool (*progress)(unsigned percent, void *opaque);
	void *opaque;
};

/* Back vmx up into a new folder under dir: *out {folder, vm (the display
 * name the folder is named after, for backup_prune and backup_list),
 * disks, bytes, live, quiesced, incremental, changed_blocks, ms}. */
int backup_vm(const char *vmx, const char *dir, const struct backup_opts *o, json_t **out);

/* Recompute every checksum of the manifest: *out {files, bytes, ok}; a
 * mismatch is -VELA_E_CORRUPT naming the file. */
int backup_verify(const char *backup, json_t **out);

/*
 * Restore a backup into a new VM folder dest (must not exist): verified
 * first, disks copied as monolithicSparse VMDKs.  With new_name, the VM
 * gets that display name and a new identity at its first power-on
 * (uuid.action = create); without, it keeps the original's.  *out {vmx}.
 */
int backup_restore(const char *backup, const char *dest, const char *new_name, json_t **out);

/*
 * Single-file restore: the disks of a backup point as read-only raw files
 * in the folder mountpoint (FUSE): <disk>.raw for each disk ("scsi0:0" as
 * scsi0-0.raw) and <disk>-part<N>.raw for each partition of its MBR or
 * GPT, to loop-mount (mount -o ro,loop) and copy files from.  An
 * incremental backup shows its disks at its own instant (through the
 * backups it builds on).  Runs the file system until it is unmounted
 * (backup_unmount, umount, a signal); o->ready is called once it is
 * mounted, with {files: [{name, disk, size, partition?, type?, offset?}]}.
 */
struct backup_mount_opts {
	void (*ready)(json_t *listing, void *opaque);
	void *opaque;
};
int backup_mount(const char *backup, const char *mountpoint, const struct backup_mount_opts *o);
int backup_unmount(const char *mountpoint);

/*
 * Retention: of the backups of the VM called vm_name in dir (folders
 * <name>-<time> with a manifest, as backup_vm names them), keep the keep
 * newest and delete the others.  *removed (may be NULL) lists them.
 */
int backup_prune(const char *dir, const char *vm_name, unsigned keep, json_t **removed);

/* The backups of the VM called vm_name in dir, newest first: [{folder,
 * created, live, quiesced, compressed, incremental, disks, bytes,
 * builds_on (the folder of the backup it builds on, or null)}]. */
int backup_list(const char *dir, const char *vm_name, json_t **out);
/* The name backup_vm gives the folders of vmx's backups (its displayName,
 * or the file's name without .vmx), for backup_list and backup_prune. */
int backup_vm_name(const char *vmx, char **out);

#endif /* VELA_BACKUP_H */
